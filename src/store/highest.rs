//! The highest stream ID this process appended per table, by which both
//! stores find a tail the store lost (a Redis failover to a replica that was
//! behind; the embedded file replaced by an older copy). IDs only grow, and
//! another writer only appends above them, so a last entry below this one
//! means acknowledged appends are gone. Kept under the table's epoch: a
//! store reset starts a new stream, which is not a lost tail.

use std::{collections::HashMap, sync::Mutex};

use super::Table;
use crate::events::StreamId;

#[derive(Debug, Default)]
pub struct Highest(Mutex<HashMap<Table, (String, StreamId)>>);

impl Highest {
    /// The highest ID appended to `t` under `epoch`, if any.
    pub fn get(&self, t: &Table, epoch: &str) -> Option<StreamId> {
        let map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.get(t).filter(|(e, _)| e == epoch).map(|(_, id)| *id)
    }

    /// Notes that `t`'s stream reached `id` under `epoch`.
    pub fn raise(&self, t: &Table, epoch: &str, id: StreamId) {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match map.get_mut(t) {
            Some((e, have)) if e == epoch => *have = (*have).max(id),
            _ => {
                map.insert(t.clone(), (epoch.to_string(), id));
            }
        }
    }

    /// Sets `t`'s highest ID to `id`, lower or not: after a lost tail was
    /// reported, the stream's real end.
    pub fn set(&self, t: &Table, epoch: &str, id: StreamId) {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.insert(t.clone(), (epoch.to_string(), id));
    }
}
