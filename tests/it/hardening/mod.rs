//! What hostile or broken peers cannot do (issue 24, the SSRF guard):
//! oversized answers, stalled connections, guessed logins, answers cached or
//! framed, records and positions out of range, cross-site writes, malformed
//! input on every route, the `[api]` limits, and subscription URLs refused at
//! the door.

mod door;
mod exposure;
mod hostile;
mod limits;
mod logins;
mod malformed;
mod odd_records;
mod out_of_range;
mod security;
mod stalls;
