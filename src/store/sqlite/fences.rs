//! The fences of an append in the embedded store: the poll lease and the
//! table's epoch, checked inside the append's transaction.

use rusqlite::{Connection, OptionalExtension, params};

use super::Failed;
use crate::events;
use crate::store::{Refusal, StoreError, Table};

pub(super) fn epoch(c: &Connection, t: &Table) -> rusqlite::Result<Option<String>> {
    c.query_row(
        "SELECT epoch FROM epochs WHERE source = ?1 AND resource = ?2",
        params![t.source, t.resource],
        |r| r.get(0),
    )
    .optional()
}

/// Refuses an append by another lease holder than `holder`, or under
/// another epoch than `want` (the store lost the table since the poll began).
pub(super) fn check_fences(
    c: &Connection,
    t: &Table,
    holder: &str,
    want: &str,
) -> Result<(), Failed> {
    let owner: Option<(String, i64)> = c
        .query_row(
            "SELECT holder, expires_ms FROM leases WHERE source = ?1 AND resource = ?2",
            params![t.source, t.resource],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    if !owner.is_some_and(|(h, exp)| h == holder && exp as u64 > events::now_ms()) {
        return Err(Failed::Store(StoreError::refused(t, Refusal::LeaseLost)));
    }
    if epoch(c, t)?.as_deref() != Some(want) {
        return Err(Failed::Store(StoreError::refused(t, Refusal::EpochChanged)));
    }
    Ok(())
}
