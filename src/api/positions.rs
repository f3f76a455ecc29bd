//! Honest positions (docs/replay.md): a position a reader hands the relay
//! (replay's `after`, the live stream's `Last-Event-ID`, a subscription's
//! `start` or a replay's `from`) is refused when following it would skip
//! events without a word: past the table's last event (409: the events
//! stamped up to it would be passed over when they arrive), or before what
//! retention removed (410). `0`, "from the beginning", counts as before
//! what was removed unless the reader says `from_oldest_kept`.

use super::{
    ApiState,
    problem::{ApiResult, Problem},
};
use crate::{events::StreamId, store::Table};

/// The `from_oldest_kept` query flag: `0` may start at the oldest event
/// kept on a table whose retention removed events.
pub(super) fn oldest_kept_flag(raw: Option<&str>) -> ApiResult<bool> {
    match raw {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(v) => Err(Problem::invalid(
            "from_oldest_kept",
            format!("{v:?} must be true or false"),
        )),
    }
}

/// Refuses `after` past the table's last event or before what retention
/// removed. `Some(warning)` when `after` is 0 on a table whose retention
/// removed events and the reader accepted the oldest event kept.
pub async fn check_position(
    s: &ApiState,
    t: &Table,
    after: StreamId,
    field: &str,
    oldest_kept: bool,
) -> ApiResult<Option<String>> {
    let store = s.shared.store.as_ref();
    let top = store.last_id(t).await?;
    if after > top && after > store.issued_id(t).await? {
        return Err(Problem::ahead(field, t, after, top));
    }
    let through = store.trimmed_through(t).await?;
    if refused(after, through, oldest_kept) {
        return Err(Problem::trimmed(
            field,
            t,
            after,
            through,
            s.compat.keeps(t),
        ));
    }
    Ok(
        (after == StreamId::ZERO && through > StreamId::ZERO).then(|| {
            format!(
                "{t}: store.retention removed the events up to {through}; {field} starts at the \
             oldest event kept, so records whose last change was removed are not sent"
            )
        }),
    )
}

/// Whether a position is before what retention removed (the last removed
/// ID `through`): 0 is, on a trimmed table, unless the reader accepted the
/// oldest event kept.
fn refused(after: StreamId, through: StreamId, oldest_kept: bool) -> bool {
    if after == StreamId::ZERO {
        through > StreamId::ZERO && !oldest_kept
    } else {
        after < through
    }
}

/// Reads up to `limit` events after `after`, and the last ID retention
/// removed if it removed events the reader has not seen: the marker is read
/// before the read (a trim that already ran) and after it (one that raced
/// it), since it only ever rises.
pub(super) async fn read_checked(
    store: &dyn crate::store::Store,
    t: &Table,
    after: StreamId,
    limit: usize,
    oldest_kept: bool,
) -> crate::store::StoreResult<(Vec<crate::events::Event>, Option<StreamId>)> {
    let (before, page, later) = store.read_between_trims(t, after, limit).await?;
    let accepted = after == StreamId::ZERO && oldest_kept;
    let gap = !accepted && (after < before || skipped(after, later, page.first().map(|e| e.id)));
    Ok((page, gap.then_some(later)))
}

/// A replay page: up to `limit` events after `after`, refused when `after`
/// is past the last event or the read skipped what retention removed.
pub(super) async fn read_page(
    s: &ApiState,
    t: &Table,
    after: StreamId,
    limit: usize,
    oldest_kept: bool,
) -> ApiResult<Vec<crate::events::Event>> {
    let store = s.shared.store.as_ref();
    let (page, gap) = match s.read_ahead.take(t, after, limit, oldest_kept).await {
        Some(read) => read,
        None => read_checked(store, t, after, limit, oldest_kept).await?,
    };
    if page.is_empty() {
        // Nothing after it: it may be past the last event, and the events
        // stamped up to it would be passed over when they arrive.
        // A position up to the highest ID issued is one a reader may hold
        // after a failover lost a tail: its versions come back above it.
        let top = store.last_id(t).await?;
        if after > top && after > store.issued_id(t).await? {
            return Err(Problem::ahead("after", t, after, top));
        }
    }
    match gap {
        Some(through) => Err(Problem::trimmed(
            "after",
            t,
            after,
            through,
            s.compat.keeps(t),
        )),
        None => Ok(page),
    }
}

/// Whether a read after `after` whose first event is `first` skipped events
/// retention removed (the last of them `through`): only when the removed
/// ones lie between the cursor and what was read. A trim that ran after the
/// read removed events the reader already has.
fn skipped(after: StreamId, through: StreamId, first: Option<StreamId>) -> bool {
    after < through && first.is_some_and(|f| through < f)
}

#[cfg(test)]
mod tests {
    use super::{refused, skipped};
    use crate::events::StreamId;

    #[test]
    fn a_gap_only_where_removed_events_lie_between_cursor_and_read() {
        let id = |s| StreamId::new(s, 0);
        // Removed up to 50 before the read: the page starts at 51, 6..50 are gone.
        assert!(skipped(id(5), id(50), Some(id(51))));
        // Removed up to 50 after the read: the reader has 6.. already.
        assert!(!skipped(id(5), id(50), Some(id(6))));
        // Nothing removed after the cursor.
        assert!(!skipped(id(60), id(50), Some(id(61))));
        // "From the beginning" misses what was removed too; an empty read
        // misses nothing.
        assert!(skipped(StreamId::ZERO, id(50), Some(id(51))));
        assert!(!skipped(id(5), id(50), None));
    }

    #[test]
    fn the_beginning_of_a_trimmed_table_needs_consent() {
        let id = |s| StreamId::new(s, 0);
        assert!(refused(StreamId::ZERO, id(50), false));
        assert!(!refused(StreamId::ZERO, id(50), true));
        assert!(!refused(StreamId::ZERO, StreamId::ZERO, false));
        assert!(refused(id(49), id(50), true));
        assert!(!refused(id(50), id(50), false));
    }
}
