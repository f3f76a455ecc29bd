//! Appending to a store directly, as the suites of the store's own promises
//! do: a record as an upstream sends it, a table with its epoch made and
//! its lease held, and an append under a given holder and epoch.

use std::time::Duration;

use stamp_relay::store::Target;

use super::TestStore;

/// Record `id` at `stamp`, as an upstream would send it.
pub fn record(id: &str, stamp: u64) -> stamp_relay::record::UpstreamRecord {
    let raw = format!(r#"{{"uuid":"{id}","update_stamp":{stamp}}}"#);
    stamp_relay::record::UpstreamRecord {
        id: id.into(),
        stamp,
        deleted: false,
        raw: serde_json::value::RawValue::from_string(raw).unwrap(),
    }
}

/// Table `source/resource` with its epoch made and the lease held by `me`,
/// for suites that append to the store directly; answers the epoch.
pub async fn leased_table(ts: &TestStore, source: &str, resource: &str) -> (Target, String) {
    let t = Target::new(source, resource);
    let epoch = ts.store.init_epoch(&t, "e1").await.unwrap();
    let leased = ts.store.lease(&t, "me", Duration::from_secs(30));
    assert!(leased.await.unwrap(), "{t}: a new table's lease is free");
    (t, epoch)
}

/// Appends `records` to `t` as `holder` under `epoch`, observed at 7 ms.
pub async fn append_as(
    ts: &TestStore,
    t: &Target,
    holder: &str,
    epoch: &str,
    records: &[stamp_relay::record::UpstreamRecord],
) -> Result<stamp_relay::events::AppendOutcome, stamp_relay::store::StoreError> {
    let batch = stamp_relay::store::AppendBatch {
        holder,
        epoch,
        snapshot: false,
        observed: 7,
        records,
        rebase: false,
    };
    ts.store.append(t, batch).await
}
