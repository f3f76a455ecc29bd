//! The Lua helpers the scripts share (`lib.lua`: stream IDs, the
//! index-entry grammar, kept copies, the trimmed marker), written once and
//! put in front of each script that uses them.

use redis::Script;

/// The script `lib.lua` followed by `body`. The helpers are local
/// functions, so defining them adds no command and no read to a call.
pub(super) fn with_lib(body: &str) -> Script {
    Script::new(&[include_str!("lib.lua"), body].concat())
}
