//! A worker following its subscription's changes: the version the
//! supervisor passes on or the worker reads before a claim, its endpoint
//! and its selection (filters and fields), failing closed on a stored
//! selection that no longer parses.

use std::sync::Arc;

use super::{
    sender::Endpoint,
    worker::{Step, Worker, WorkerState},
};
use crate::{
    cloudevents::EventSource, filter::Selection, store::StoreResult, subscription::Subscription,
};

impl Worker {
    /// Takes the change the supervisor passed on, unless the worker has read
    /// a newer version from the store itself (before a claim), and makes the
    /// first selection. `Some` when the step must end there.
    pub(super) async fn follow(&self, st: &mut WorkerState) -> StoreResult<Option<Step>> {
        if st.changes.has_changed().unwrap_or(false) {
            let seen = st.changes.borrow_and_update().clone();
            if seen.version >= st.subscription.version {
                return self.adopt(st, seen).await;
            }
        }
        if st.selection_made {
            return Ok(None);
        }
        self.reselect(st).await
    }

    /// Delivers for `newer` from now on: its endpoint, and its selection.
    pub(super) async fn adopt(
        &self,
        st: &mut WorkerState,
        newer: Subscription,
    ) -> StoreResult<Option<Step>> {
        if newer.previous != st.subscription.previous {
            // Queued events were loaded with or without the versions they
            // replaced: load them again for the new setting.
            if st.sends.is_empty() {
                st.queue = None;
            } else {
                st.requeue = true;
            }
        }
        let asked = newer.retry_requested_ms;
        if asked.is_some() && asked != st.subscription.retry_requested_ms {
            // `POST …/retry` made the stored retries due; so here too.
            if let Some(q) = st.queue.as_mut() {
                q.retry_now(crate::events::now_ms());
            }
        }
        st.subscription = Arc::new(newer);
        if !st.subscription.enabled {
            return Ok(Some(Step::Disabled));
        }
        st.endpoint = Arc::new(Endpoint::of(&st.subscription));
        self.reselect(st).await
    }

    /// The selection of the subscription as last seen; every queued entry
    /// is checked again when it changed. A stored one that no longer parses
    /// disables the subscription.
    async fn reselect(&self, st: &mut WorkerState) -> StoreResult<Option<Step>> {
        match selection_of(&st.subscription, &self.source) {
            Ok(selection) => {
                st.recheck |= st.selection_made && selection != *st.selection;
                st.selection = Arc::new(selection);
                st.selection_made = true;
                Ok(None)
            }
            Err(why) => {
                // Fail closed: neither whole records (the filter may be
                // what keeps health data from this receiver) nor a skip.
                tracing::error!(subscription = %st.subscription.id, error = %why, "stored filters or fields do not parse; disabling the subscription");
                self.disable(&st.subscription, &why).await?;
                Ok(Some(Step::Disabled))
            }
        }
    }
}

/// A subscription's filters and fields over `src` (whose id and stamp
/// fields projections keep). They were checked when stored; one that no
/// longer parses is an error the worker disables the subscription for.
pub fn selection_of(subscription: &Subscription, src: &EventSource) -> Result<Selection, String> {
    let fields = subscription.fields.as_ref().map(|f| serde_json::json!(f));
    Selection::from_json(subscription.filters.as_ref(), fields.as_ref(), &src.fields)
        .map_err(|e| format!("stored filters or fields do not parse ({e}); fix them with PATCH and enable the subscription"))
}
