//! Subscriptions declared in the configuration file (`[[subscriptions]]`,
//! docs/webhooks.md, "Subscriptions in the configuration file"): checked with the
//! API's own rules, written to the store when the relay starts (created, or
//! updated in place through [`update_subscription`], keeping the delivery
//! position), re-created by the delivery supervisor when they vanish from
//! the store, and marked [`ManagedBy::Config`] so the API leaves them be.
//!
//! One that was declared and is no longer in the file is not deleted:
//! it is disabled with [`REMOVED`] as the reason and loses its mark, so an
//! admin may delete it through the API.

use std::{collections::HashMap, time::Duration};

use crate::{
    events::{StreamId, now_ms},
    store::{Store, StoreResult, Table, update_subscription},
    subscription::{self, ManagedBy, Start, Subscription},
};

mod check;

pub use check::{of, problems};

/// The reason a subscription removed from the file is disabled with.
pub const REMOVED: &str = "removed from the configuration file ([[subscriptions]]); \
    delete it through the API, or add it back to the file and restart";

/// A `[[subscriptions]]` entry checked into the model: the subscription as
/// the file says (no start points or times yet) and where it starts when
/// created.
#[derive(Debug, Clone, PartialEq)]
pub struct Declared {
    pub subscription: Subscription,
    pub start: Start,
    /// `from_oldest_kept`: a start at 0 on a trimmed table is accepted.
    pub from_oldest_kept: bool,
}

/// Writes the declared subscriptions to the store as the relay starts:
/// each created if missing, or updated in place where it differs (its
/// delivery position kept; a changed secret rotated as `rotate-secret`
/// does, the old one signing for `grace`); stored ones the file no longer
/// declares are disabled with [`REMOVED`] and released to the API.
pub async fn apply(
    store: &dyn Store,
    declared: &[Declared],
    known: &[Table],
    grace: Duration,
) -> StoreResult<()> {
    let stored = store.subscriptions().await?;
    let now = last_ids(store, known).await?;
    for d in declared {
        match stored.iter().find(|s| s.id == d.subscription.id) {
            None => create(store, d, known, &now).await?,
            Some(s) if differs(s, &d.subscription) => {
                let until = now_ms() + grace.as_millis() as u64;
                update_subscription(store, &d.subscription.id, |cur| {
                    adopt(cur, &d.subscription, known, &now, until);
                    Ok::<_, crate::store::StoreError>(())
                })
                .await?;
                tracing::info!(subscription = %d.subscription.id, "subscription updated from the configuration file");
            }
            Some(_) => {}
        }
    }
    let gone = stored
        .iter()
        .filter(|s| s.managed_by == Some(ManagedBy::Config))
        .filter(|s| !declared.iter().any(|d| d.subscription.id == s.id));
    for s in gone {
        update_subscription(store, &s.id, |cur| {
            cur.enabled = false;
            cur.disabled_reason = Some(REMOVED.into());
            cur.managed_by = None;
            cur.updated_ms = now_ms();
            Ok::<_, crate::store::StoreError>(())
        })
        .await?;
        tracing::warn!(subscription = %s.id, "subscription removed from the configuration file: disabled, not deleted; delete it through the API");
    }
    Ok(())
}

/// Re-creates the declared subscriptions missing from `stored` (the store
/// lost them: a Redis `FLUSHALL`, a failover to an empty replica).
pub async fn restore(
    store: &dyn Store,
    declared: &[Declared],
    stored: &[Subscription],
    known: &[Table],
) -> StoreResult<()> {
    for d in declared {
        if stored.iter().any(|s| s.id == d.subscription.id)
            || store.subscription(&d.subscription.id).await?.is_some()
        {
            continue;
        }
        let now = last_ids(store, known).await?;
        create(store, d, known, &now).await?;
        tracing::warn!(subscription = %d.subscription.id, "a subscription of the configuration file was missing from the store; re-created it");
    }
    Ok(())
}

async fn last_ids(store: &dyn Store, known: &[Table]) -> StoreResult<HashMap<Table, StreamId>> {
    let mut now = HashMap::new();
    for t in known {
        now.insert(t.clone(), store.last_id(t).await?);
    }
    Ok(now)
}

async fn create(
    store: &dyn Store,
    d: &Declared,
    known: &[Table],
    now: &HashMap<Table, StreamId>,
) -> StoreResult<()> {
    let mut s = d.subscription.clone();
    s.start = subscription::resolve_start(&d.start, &s.resources.of(known), now);
    (s.created_ms, s.updated_ms) = (now_ms(), now_ms());
    if let Some(reason) = trimmed_start(store, &s, d.from_oldest_kept).await? {
        (s.enabled, s.disabled_reason) = (false, Some(reason));
    }
    store.put_subscription(&s).await?;
    tracing::info!(subscription = %s.id, url = %s.url.for_logs(), "subscription created from the configuration file");
    Ok(())
}

/// The reason to create a subscription disabled when it starts at 0 on a
/// table whose retention removed events, where it would begin at the
/// oldest event kept without a word (docs/replay.md); with
/// `from_oldest_kept` it does, and the log says so.
async fn trimmed_start(
    store: &dyn Store,
    s: &Subscription,
    oldest_kept: bool,
) -> StoreResult<Option<String>> {
    for (t, _) in s.start.iter().filter(|(_, f)| **f == StreamId::ZERO) {
        let through = store.trimmed_through(t).await?;
        if through == StreamId::ZERO {
            continue;
        }
        if oldest_kept {
            tracing::warn!(subscription = %s.id, table = %t, %through, "subscription starts at the oldest event kept: store.retention removed the events before it");
            continue;
        }
        let reason = format!(
            "start = \"beginning\" asks for every event of {t}, but store.retention removed \
             the events up to {through}; to begin at the oldest event kept, enable it \
             (PATCH enabled: true), or set from_oldest_kept = true before it is first created; \
             to see every change, rebuild the receiver from the snapshot (docs/resync.md)"
        );
        tracing::error!(subscription = %s.id, table = %t, %through, "subscription from the configuration file created disabled: {reason}");
        return Ok(Some(reason));
    }
    Ok(None)
}

/// Whether the stored subscription differs from what the file says.
fn differs(stored: &Subscription, want: &Subscription) -> bool {
    let mut adopted = stored.clone();
    adopt(&mut adopted, want, &[], &HashMap::new(), 0);
    adopted.updated_ms = stored.updated_ms;
    adopted.previous_secret = stored.previous_secret.clone();
    adopted != *stored
}

/// The file's settings written over the stored subscription; newly covered
/// tables start at their last event (`now`), covered ones keep their
/// position, and an old secret signs until `until`.
fn adopt(
    cur: &mut Subscription,
    want: &Subscription,
    known: &[Table],
    now: &HashMap<Table, StreamId>,
    until: u64,
) {
    if cur.secret != want.secret {
        let old = std::mem::replace(&mut cur.secret, want.secret.clone());
        cur.previous_secret = Some((old, until));
    }
    for t in want.resources.of(known) {
        let last = now.get(&t).copied().unwrap_or_default();
        cur.start.entry(t).or_insert(last);
    }
    cur.url.clone_from(&want.url);
    cur.resources = want.resources.clone();
    cur.ops.clone_from(&want.ops);
    cur.headers.clone_from(&want.headers);
    (cur.batch_size, cur.max_in_flight) = (want.batch_size, want.max_in_flight);
    cur.rate_limit = want.rate_limit;
    cur.description.clone_from(&want.description);
    cur.previous = want.previous;
    cur.filters.clone_from(&want.filters);
    cur.fields.clone_from(&want.fields);
    cur.managed_by = Some(ManagedBy::Config);
    cur.consumer.clone_from(&want.consumer);
    if cur.disabled_reason.as_deref() == Some(REMOVED) {
        cur.enabled = true;
        cur.disabled_reason = None;
    }
    cur.updated_ms = now_ms();
}

#[cfg(test)]
mod tests {
    use super::check::check;
    use super::*;
    use crate::config::{ConsumerConfig, SourceConfig, SubscriptionConfig};

    fn declared(filters: &str) -> Subscription {
        let c: SubscriptionConfig = serde_json::from_value(serde_json::json!({
            "id": "care", "url": "https://care.example/hook", "resources": ["pc/patients", "pc/users"],
            "secret_env": "X", "filters": serde_json::from_str::<serde_json::Value>(filters).unwrap(),
        }))
        .unwrap();
        let source: SourceConfig = serde_json::from_value(serde_json::json!({
            "name": "pc", "base_url": "https://pc.example/api", "resources": ["patients", "users"],
        }))
        .unwrap();
        let mut d = check(0, &c, &[source], &[]).unwrap();
        d.subscription.secret = "whsec_new".into();
        d.subscription
    }

    #[test]
    fn an_entry_stays_within_its_consumer() {
        let c = |consumer: &str| -> SubscriptionConfig {
            serde_json::from_value(serde_json::json!({
                "id": "care", "url": "https://care.example/hook", "resources": ["pc/patients"],
                "secret_env": "X", "consumer": consumer,
            }))
            .unwrap()
        };
        let source: SourceConfig = serde_json::from_value(serde_json::json!({
            "name": "pc", "base_url": "https://pc.example/api", "resources": ["patients", "users"],
        }))
        .unwrap();
        let lab = |resources: &str| ConsumerConfig {
            name: "lab".into(),
            description: String::new(),
            sources: vec!["*".into()],
            resources: vec![resources.into()],
        };
        let sources = std::slice::from_ref(&source);
        let ok = check(0, &c("lab"), sources, &[lab("pc/patients")]).unwrap();
        assert_eq!(ok.subscription.consumer, "lab");
        let e = check(0, &c("lab"), sources, &[lab("pc/users")]).unwrap_err();
        assert!(e[0].starts_with("subscriptions[0].resources"), "{e:?}");
        let e = check(0, &c("nope"), sources, &[]).unwrap_err();
        assert!(e[0].starts_with("subscriptions[0].consumer"), "{e:?}");
        assert!(check(0, &c("default"), sources, &[]).is_ok());
    }

    #[test]
    fn the_file_is_adopted_keeping_positions_and_rotating_the_secret() {
        let (patients, users) = (Table::new("pc", "patients"), Table::new("pc", "users"));
        let mut stored = declared(r#"[{"exact": {"type": "a"}}]"#);
        stored.resources = subscription::Coverage::Only(vec![patients.clone()]);
        stored.start = [(patients.clone(), StreamId::new(7, 0))].into();
        stored.secret = "whsec_old".into();
        (stored.enabled, stored.disabled_reason) = (false, Some(REMOVED.into()));
        stored.managed_by = None;
        let want = declared(r#"[{"exact": {"type": "b"}}]"#);
        assert!(differs(&stored, &want));
        let now = [(users.clone(), StreamId::new(40, 0))].into();
        let mut cur = stored.clone();
        adopt(
            &mut cur,
            &want,
            &[patients.clone(), users.clone()],
            &now,
            99,
        );
        assert_eq!(cur.start_of(&patients), StreamId::new(7, 0), "kept");
        assert_eq!(
            cur.start_of(&users),
            StreamId::new(40, 0),
            "newly covered: now"
        );
        assert_eq!(cur.previous_secret, Some(("whsec_old".into(), 99)));
        assert_eq!((cur.secret.as_str(), cur.enabled), ("whsec_new", true));
        assert_eq!(
            (cur.filters, cur.managed_by),
            (want.filters.clone(), Some(ManagedBy::Config))
        );
        let mut same = want.clone();
        same.start = [(patients, StreamId::new(3, 0))].into();
        (same.version, same.updated_ms) = (4, 1);
        assert!(
            !differs(&same, &want),
            "positions, versions and times are the store's"
        );
    }
}
