//! Store writes taken off the delivery path and applied in order by one
//! task per worker: settles and attempt records. A crash before a settle
//! lands re-sends those events (at-least-once); nothing is lost.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::model::Attempt;
use crate::{
    events::StreamId,
    store::{Store, Target},
};

/// Store writes taken off the delivery path, applied in order.
pub enum Write {
    Settle(String, Vec<StreamId>),
    Attempt(String, Attempt),
    Flush(oneshot::Sender<()>),
}

pub async fn writer(store: Arc<dyn Store>, t: Target, mut writes: mpsc::UnboundedReceiver<Write>) {
    while let Some(w) = writes.recv().await {
        let result = match w {
            Write::Settle(sub, ids) => store.settle(&sub, &t, &ids).await,
            Write::Attempt(sub, a) => store.log_attempt(&sub, &a).await,
            Write::Flush(done) => {
                let _ = done.send(());
                Ok(())
            }
        };
        if let Err(e) = result {
            tracing::warn!(target = %t, error = %e, "cannot record delivery state; affected events may be sent again");
        }
    }
}
