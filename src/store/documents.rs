//! Named JSON documents of a kind (`sources`, …) with compare-and-set on a
//! per-document version, and a counter per kind that every write raises so
//! other instances notice a change with one cheap read. Both backends keep
//! them (Redis: `P:<kind>`, docs/redis-layout.md; SQLite: `documents`).
//! Also here: removing every trace of a table at once (`purge_table`).

use async_trait::async_trait;

use super::{StoreError, StoreResult, Table};

/// One stored document: its name, its version (1 after the first write,
/// raised by every write) and its JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Document {
    pub name: String,
    pub version: u64,
    pub json: String,
}

#[async_trait]
pub trait Documents: Send + Sync {
    async fn document(&self, kind: &str, name: &str) -> StoreResult<Option<Document>>;

    /// Writes `json` as document `name` if its stored version is
    /// `expected` (0: only if there is none); answers the new version, or
    /// `None` when another write came first.
    async fn put_document(
        &self,
        kind: &str,
        name: &str,
        json: &str,
        expected: u64,
    ) -> StoreResult<Option<u64>>;

    /// Removes the document; false when there was none.
    async fn delete_document(&self, kind: &str, name: &str) -> StoreResult<bool>;

    /// Every document of the kind, by name.
    async fn documents(&self, kind: &str) -> StoreResult<Vec<Document>>;

    /// A counter every write of the kind raises: unchanged means nothing
    /// of the kind changed (one cheap read per instance and second).
    async fn documents_version(&self, kind: &str) -> StoreResult<u64>;

    /// Removes everything the store holds about table `t`: its events,
    /// index, kept records, rejects, poll state, epoch, lease, and the
    /// delivery positions, pending sets and delivery leases of
    /// `subscriptions` on it (`DELETE /v1/sources/{name}?purge=true`).
    async fn purge_table(&self, t: &Table, subscriptions: &[String]) -> StoreResult<()>;
}

/// Writes checked against a version, retried this often before giving up.
const TRIES: usize = 16;

/// Reads document `name`, applies `change` and writes it back over the
/// version read, starting over from the newer document on a conflict, so
/// concurrent updates of different fields never lose one another.
/// `Ok(None)` when there is no such document; `change` may refuse.
pub async fn update_document<S, T, E>(
    store: &S,
    kind: &str,
    name: &str,
    mut change: impl FnMut(&mut T) -> Result<(), E>,
) -> Result<Option<T>, E>
where
    S: Documents + ?Sized,
    T: serde::Serialize + serde::de::DeserializeOwned,
    E: From<StoreError>,
{
    for _ in 0..TRIES {
        let Some(doc) = store.document(kind, name).await? else {
            return Ok(None);
        };
        let mut value: T = super::decode_json(kind, &doc.json)?;
        change(&mut value)?;
        let json = serde_json::to_string(&value).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        if store
            .put_document(kind, name, &json, doc.version)
            .await?
            .is_some()
        {
            return Ok(Some(value));
        }
    }
    Err(StoreError::Unavailable(format!(
        "{kind} document {name} changed under {TRIES} updates in a row; try again"
    ))
    .into())
}
