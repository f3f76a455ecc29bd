//! Sources as data (issue 21, items 1 and 8): the document store under
//! `/v1/sources` on both backends, the routes, sealed credentials, pause,
//! resume, delete and purge, a second instance, and the nudge.

use stamp_relay::store::{Target, update_document};

use crate::on_both_stores;
use crate::harness::TestStore;

on_both_stores!(documents_compare_and_set_and_count_writes);

/// `put_document` writes only over the version read (0: only a new one),
/// every write and delete raises the kind's counter, and kinds are apart.
async fn documents_compare_and_set_and_count_writes(ts: TestStore) {
    let s = ts.store.as_ref();
    assert_eq!(s.documents_version("sources").await.unwrap(), 0);
    assert_eq!(s.put_document("sources", "a", "{\"x\":1}", 0).await.unwrap(), Some(1));
    assert_eq!(s.put_document("sources", "a", "{\"x\":2}", 0).await.unwrap(), None, "exists");
    assert_eq!(s.put_document("sources", "a", "{\"x\":2}", 1).await.unwrap(), Some(2));
    assert_eq!(s.put_document("sources", "a", "{\"x\":3}", 1).await.unwrap(), None, "stale");
    s.put_document("sources", "b", "{}", 0).await.unwrap();
    s.put_document("other", "a", "{}", 0).await.unwrap();
    assert_eq!(s.documents_version("sources").await.unwrap(), 3);
    let all = s.documents("sources").await.unwrap();
    let names: Vec<_> = all.iter().map(|d| (d.name.as_str(), d.version)).collect();
    assert_eq!(names, [("a", 2), ("b", 1)]);
    assert_eq!(s.document("sources", "a").await.unwrap().unwrap().json, "{\"x\":2}");
    let updated = update_document(s, "sources", "a", |v: &mut serde_json::Value| {
        v["y"] = 1.into();
        Ok::<_, stamp_relay::store::StoreError>(())
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(updated, serde_json::json!({"x": 2, "y": 1}));
    assert!(s.delete_document("sources", "a").await.unwrap());
    assert!(!s.delete_document("sources", "a").await.unwrap());
    assert_eq!(s.documents_version("sources").await.unwrap(), 5);
    assert!(s.document("sources", "a").await.unwrap().is_none());
    assert_eq!(s.documents("other").await.unwrap().len(), 1);
    // A purge of a table that never existed is a no-op.
    s.purge_table(&Target::new("nope", "r"), &["x".into()]).await.unwrap();
}
