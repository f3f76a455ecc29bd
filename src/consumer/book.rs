//! Where consumers are read and changed: the configuration file's
//! `[[consumers]]` (their description and lists come from the file) over
//! the stored documents (which hold everything of API-made consumers, and
//! the tokens and link generation of every consumer), and the built-in
//! [`DEFAULT`]. Also the portal links' signing key: derived from
//! `STAMP_RELAY_SOURCE_KEY` when set, else a random key stored once as
//! document `portal-links` of kind [`KEYS`] so every instance shares it.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::sync::{Mutex, OnceCell};

use super::{Allow, Consumer, DEFAULT, KIND, tokens::LinkKey};
use crate::{
    config::ConsumerConfig,
    events::now_ms,
    sources::SourceKey,
    store::{Store, StoreError, StoreResult, decode_json, update_document},
    subscription::ManagedBy,
};

/// The document kind of keys the relay makes for itself.
pub const KEYS: &str = "keys";
const LINK_KEY: &str = "portal-links";

/// How long one read of the consumers' version serves every caller of
/// [`Book::version`].
const VERSION_FRESH: Duration = Duration::from_millis(900);

pub struct Book {
    store: Arc<dyn Store>,
    declared: Vec<ConsumerConfig>,
    source_key: Option<SourceKey>,
    link_key: OnceCell<LinkKey>,
    /// The consumers' documents version and when it was read.
    version: Mutex<Option<(Instant, u64)>>,
}

impl Book {
    pub fn new(
        store: Arc<dyn Store>,
        declared: Vec<ConsumerConfig>,
        source_key: Option<SourceKey>,
    ) -> Book {
        Book {
            store,
            declared,
            source_key,
            link_key: OnceCell::new(),
            version: Mutex::new(None),
        }
    }

    /// The consumers' documents version, which every write of a consumer
    /// (its tokens, link generation, allow-list, deletion) raises. One
    /// store read serves all callers within [`VERSION_FRESH`], so a
    /// thousand open live streams checking their access cost one read a
    /// second, not a thousand.
    pub async fn version(&self) -> StoreResult<u64> {
        let mut cached = self.version.lock().await;
        if let Some((at, v)) = *cached
            && at.elapsed() < VERSION_FRESH
        {
            return Ok(v);
        }
        let v = self.store.documents_version(KIND).await?;
        *cached = Some((Instant::now(), v));
        Ok(v)
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Whether the configuration file declares `name`.
    pub fn is_declared(&self, name: &str) -> bool {
        self.declared.iter().any(|c| c.name == name)
    }

    /// Consumer `name` as it is now, or `None`.
    pub async fn get(&self, name: &str) -> StoreResult<Option<Consumer>> {
        let stored = match self.store.document(KIND, name).await? {
            Some(doc) => Some(decode_json::<Consumer>(KIND, &doc.json)?),
            None => None,
        };
        Ok(self.over(name, stored))
    }

    /// The file's definition over the stored state; the built-in default.
    fn over(&self, name: &str, stored: Option<Consumer>) -> Option<Consumer> {
        if let Some(c) = self.declared.iter().find(|c| c.name == name) {
            let mut consumer = stored.unwrap_or_else(|| fresh(name, 0));
            consumer.description = c.description.clone();
            consumer.allow = Allow {
                sources: c.sources.clone(),
                resources: c.resources.clone(),
            };
            consumer.managed_by = Some(ManagedBy::Config);
            return Some(consumer);
        }
        if name == DEFAULT {
            let mut consumer = stored.unwrap_or_else(Consumer::default_consumer);
            consumer.allow = Allow::everything();
            return Some(consumer);
        }
        stored
    }

    /// Every consumer, by name: the default, the file's, the stored.
    pub async fn list(&self) -> StoreResult<Vec<Consumer>> {
        let mut names: Vec<String> = vec![DEFAULT.into()];
        names.extend(self.declared.iter().map(|c| c.name.clone()));
        let docs = self.store.documents(KIND).await?;
        let mut stored = std::collections::BTreeMap::new();
        for doc in docs {
            names.push(doc.name.clone());
            stored.insert(doc.name, decode_json::<Consumer>(KIND, &doc.json)?);
        }
        names.sort();
        names.dedup();
        Ok(names
            .into_iter()
            .filter_map(|n| {
                let s = stored.remove(&n);
                self.over(&n, s)
            })
            .collect())
    }

    /// Applies `change` to consumer `name`'s stored document, creating it
    /// first for the default or a declared consumer. `Ok(None)`: no such
    /// consumer.
    pub async fn update<E: From<StoreError>>(
        &self,
        name: &str,
        change: impl FnMut(&mut Consumer) -> Result<(), E>,
    ) -> Result<Option<Consumer>, E> {
        if name == DEFAULT || self.is_declared(name) {
            let doc = serde_json::to_string(&fresh(name, now_ms()))
                .map_err(|e| StoreError::Corrupt(e.to_string()))?;
            self.store.put_document(KIND, name, &doc, 0).await?;
        }
        let changed = update_document(self.store.as_ref(), KIND, name, change).await?;
        Ok(changed.and_then(|c| self.over(name, Some(c))))
    }

    /// The key portal links are signed with.
    pub async fn link_key(&self) -> StoreResult<LinkKey> {
        let key = self
            .link_key
            .get_or_try_init(|| async {
                if let Some(k) = &self.source_key {
                    return Ok(LinkKey::new(k.derive("stamp-relay portal links")));
                }
                self.stored_link_key().await
            })
            .await?;
        Ok(key.clone())
    }

    async fn stored_link_key(&self) -> StoreResult<LinkKey> {
        for _ in 0..2 {
            if let Some(doc) = self.store.document(KEYS, LINK_KEY).await? {
                let value: String = decode_json(KEYS, &doc.json)?;
                return LinkKey::decode(&value).ok_or_else(|| {
                    StoreError::Corrupt(format!("{KEYS} document {LINK_KEY} is not a key"))
                });
            }
            let json = serde_json::to_string(&LinkKey::generate())
                .map_err(|e| StoreError::Corrupt(e.to_string()))?;
            // Another instance may create it first: then its key is read.
            self.store.put_document(KEYS, LINK_KEY, &json, 0).await?;
        }
        Err(StoreError::Unavailable(format!(
            "{KEYS} document {LINK_KEY} could not be read after it was written"
        )))
    }
}

/// A consumer with nothing set: everything allowed, no tokens.
pub fn fresh(name: &str, at: u64) -> Consumer {
    Consumer {
        name: name.into(),
        created_ms: at,
        updated_ms: at,
        ..Consumer::default_consumer()
    }
}
