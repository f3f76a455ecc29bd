//! Appending to a store directly, as the suites of the store's own promises
//! do: a record as an upstream sends it, a table with its epoch made and
//! its lease held, and an append under a given holder and epoch. The
//! helpers of the store contract suite (`stamp_relay::store::contract`),
//! over a test store.

use stamp_relay::store::{Table, contract};

use super::TestStore;

pub use contract::record;

/// Table `source/resource` with its epoch made and the lease held by `me`,
/// for suites that append to the store directly; answers the epoch.
pub async fn leased_table(ts: &TestStore, source: &str, resource: &str) -> (Table, String) {
    contract::leased_table(&*ts.store, source, resource).await
}

/// Appends `records` to `t` as `holder` under `epoch`, observed at 7 ms.
pub async fn append_as(
    ts: &TestStore,
    t: &Table,
    holder: &str,
    epoch: &str,
    records: &[stamp_relay::record::UpstreamRecord],
) -> Result<stamp_relay::events::AppendOutcome, stamp_relay::store::StoreError> {
    contract::append_as(&*ts.store, t, holder, epoch, records).await
}
