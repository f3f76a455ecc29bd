//! Store writes taken off the delivery path and applied in order by one
//! task per worker: settles and attempt records. Whatever queued up while
//! the last write ran goes to the store together (one settle, one attempt
//! log write), so the writer keeps up with many requests in flight. A crash
//! before a settle lands re-sends those events (at-least-once); nothing is
//! lost.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use crate::subscription::state::Attempt;
use crate::{
    events::StreamId,
    store::{Store, StoreResult, Table},
};

/// Store writes taken off the delivery path, applied in order.
pub enum Write {
    Settle(String, Vec<StreamId>),
    Attempt(String, Attempt),
    Flush(oneshot::Sender<()>),
}

/// Writes queued at most before they go to the store together.
const GROUP: usize = 1000;

pub async fn writer(store: Arc<dyn Store>, t: Table, mut writes: mpsc::UnboundedReceiver<Write>) {
    let mut queued = Vec::new();
    while writes.recv_many(&mut queued, GROUP).await > 0 {
        // Flushes answer once everything queued before them is stored.
        let mut flushes = Vec::new();
        let mut group = Group::default();
        for w in queued.drain(..) {
            match w {
                Write::Settle(sub, ids) => group.settle(sub, ids),
                Write::Attempt(sub, a) => group.attempt(sub, a),
                Write::Flush(done) => flushes.push(done),
            }
        }
        if let Err(e) = group.store(store.as_ref(), &t).await {
            tracing::warn!(table = %t, error = %e, "cannot record delivery state; affected events may be sent again");
        }
        for done in flushes {
            let _ = done.send(());
        }
    }
}

/// Writes of one round, merged per subscription (a worker has one).
#[derive(Default)]
struct Group {
    settles: Vec<(String, Vec<StreamId>)>,
    attempts: Vec<(String, Vec<Attempt>)>,
}

impl Group {
    fn settle(&mut self, sub_id: String, ids: Vec<StreamId>) {
        match self.settles.iter_mut().find(|(s, _)| *s == sub_id) {
            Some((_, all)) => all.extend(ids),
            None => self.settles.push((sub_id, ids)),
        }
    }

    fn attempt(&mut self, sub_id: String, a: Attempt) {
        match self.attempts.iter_mut().find(|(s, _)| *s == sub_id) {
            Some((_, all)) => all.push(a),
            None => self.attempts.push((sub_id, vec![a])),
        }
    }

    /// Settles and attempt logs go out together: on Redis they share one
    /// connection, so they cost one round trip, not one each.
    async fn store(self, store: &dyn Store, t: &Table) -> StoreResult<()> {
        let settles = async {
            for (sub, ids) in &self.settles {
                store.settle(sub, t, ids).await?;
            }
            Ok(())
        };
        let attempts = async {
            for (sub, attempts) in &self.attempts {
                store.log_attempts(sub, attempts).await?;
            }
            Ok(())
        };
        tokio::try_join!(settles, attempts).map(|_| ())
    }
}
