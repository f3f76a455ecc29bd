//! Prometheus metrics, one registry per relay, handed to the pollers, the
//! delivery workers and the HTTP layer. Names follow Prometheus conventions:
//! units in the name, counters end in `_total`.

use crate::subscription::state::Outcome;
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

use crate::{health::State, store::alerts::Alert};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TableLabels {
    pub source: String,
    pub resource: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabels {
    pub source: String,
    pub resource: String,
    pub op: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub source: String,
    pub resource: String,
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HealthLabels {
    pub source: String,
    /// The state a table entered.
    pub to: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SubLabels {
    pub subscription: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub subscription: String,
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SubTableLabels {
    pub subscription: String,
    pub source: String,
    pub resource: String,
}

fn seconds_histogram() -> Histogram {
    Histogram::new([
        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    ])
}

pub struct Metrics {
    registry: Registry,
    pub cursor: Family<TableLabels, Gauge>,
    pub appended: Family<OpLabels, Counter>,
    pub poll_duration: Family<TableLabels, Histogram, fn() -> Histogram>,
    /// Page walks of the `pages` strategy; above `polls` means rows shifted.
    pub walks: Family<TableLabels, Counter>,
    /// Pages fetched by settle walks (see poller/walk.rs).
    pub settle_pages: Family<TableLabels, Counter>,
    /// Polls that could not settle and committed up to the floor only.
    pub unsettled: Family<TableLabels, Counter>,
    /// Missed versions the reconcile sweep appended.
    pub reconcile_repaired: Family<TableLabels, Counter>,
    /// Record fields seen for the first time after the catalog's first inference.
    pub schema_new_fields: Family<TableLabels, Counter>,
    /// Store resets noticed (the table's epoch gone or changed).
    pub store_resets: Family<TableLabels, Counter>,
    /// One counter per [`Alert`], in the order of `Alert::ALL`.
    alerts: Vec<Family<TableLabels, Counter>>,
    pub upstream_errors: Family<ErrorLabels, Counter>,
    /// Health transitions of tables (health.rs), by source and new state.
    pub health_transitions: Family<HealthLabels, Counter>,
    /// The tables this instance polls, by health state.
    pub health_tables: Family<StateLabels, Gauge>,
    pub rejected: Family<TableLabels, Counter>,
    /// Events removed by retention.
    pub trimmed: Family<TableLabels, Counter>,
    pub attempts: Family<OutcomeLabels, Counter>,
    pub delivery_latency: Family<SubLabels, Histogram, fn() -> Histogram>,
    pub pending: Family<SubTableLabels, Gauge>,
    pub waiting_retry: Family<SubTableLabels, Gauge>,
    pub in_flight: Family<SubTableLabels, Gauge>,
    /// 1 while `delivery.max_waiting_retries` keeps a worker from claiming.
    pub claims_paused: Family<SubTableLabels, Gauge>,
    /// Events a subscription's filters passed over (settled, never sent).
    pub filtered: Family<SubTableLabels, Counter>,
    pub dead_letters: Family<SubLabels, Gauge>,
    /// Dead letters a redrive dropped: a newer version of their record was
    /// delivered since (api/redrive.rs).
    pub superseded: Family<SubLabels, Counter>,
    pub disabled: Family<SubLabels, Gauge>,
    pub live_clients: Gauge,
    /// The subscriptions whose gauges the last scrape set: one gone from
    /// the store by the next scrape has its series removed.
    scraped: std::sync::Mutex<std::collections::HashSet<String>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut r = Registry::with_prefix("stamp_relay");
        let m = Metrics {
            cursor: Family::default(),
            appended: Family::default(),
            poll_duration: Family::new_with_constructor(seconds_histogram),
            walks: Family::default(),
            settle_pages: Family::default(),
            unsettled: Family::default(),
            reconcile_repaired: Family::default(),
            store_resets: Family::default(),
            alerts: Alert::ALL.iter().map(|_| Family::default()).collect(),
            schema_new_fields: Family::default(),
            upstream_errors: Family::default(),
            health_transitions: Family::default(),
            health_tables: Family::default(),
            rejected: Family::default(),
            trimmed: Family::default(),
            attempts: Family::default(),
            delivery_latency: Family::new_with_constructor(seconds_histogram),
            pending: Family::default(),
            waiting_retry: Family::default(),
            in_flight: Family::default(),
            claims_paused: Family::default(),
            filtered: Family::default(),
            dead_letters: Family::default(),
            superseded: Family::default(),
            disabled: Family::default(),
            live_clients: Gauge::default(),
            scraped: Default::default(),
            registry: Registry::default(),
        };
        register_polling(&mut r, &m);
        register_catalog(&mut r, &m);
        register_delivery(&mut r, &m);
        Metrics { registry: r, ..m }
    }

    /// Counts `n` more of `alert` on table `t`.
    pub fn alert(&self, alert: Alert, t: &crate::store::Table, n: u64) {
        let i = Alert::ALL.iter().position(|a| *a == alert).unwrap_or(0);
        self.alerts[i].get_or_create(&table_labels(t)).inc_by(n);
    }

    /// Moves one table this instance polls from state `from` (none: it was
    /// not counted) to `to` (none: no longer counted); a transition between
    /// two states is counted in `health_transitions_total`.
    pub fn health(&self, t: &crate::store::Table, from: Option<State>, to: Option<State>) {
        let gauge = |s: State| {
            self.health_tables.get_or_create(&StateLabels {
                state: s.name().into(),
            })
        };
        if let Some(s) = from {
            gauge(s).dec();
        }
        if let Some(s) = to {
            gauge(s).inc();
        }
        if let (Some(_), Some(to)) = (from, to) {
            let l = HealthLabels {
                source: t.source.clone(),
                to: to.name().into(),
            };
            self.health_transitions.get_or_create(&l).inc();
        }
    }

    /// Removes every series of subscription `sub` (on each of `tables`), so
    /// `/metrics` stops showing a deleted subscription.
    pub fn forget_subscription(&self, sub_id: &str, tables: &[crate::store::Table]) {
        let l = SubLabels {
            subscription: sub_id.to_string(),
        };
        self.delivery_latency.remove(&l);
        self.dead_letters.remove(&l);
        self.superseded.remove(&l);
        self.disabled.remove(&l);
        for outcome in Outcome::ALL {
            self.attempts.remove(&OutcomeLabels {
                subscription: sub_id.to_string(),
                outcome: outcome.as_str().to_string(),
            });
        }
        for t in tables {
            let l = SubTableLabels {
                subscription: sub_id.to_string(),
                source: t.source.clone(),
                resource: t.resource.clone(),
            };
            self.pending.remove(&l);
            self.waiting_retry.remove(&l);
            self.in_flight.remove(&l);
            self.claims_paused.remove(&l);
            self.filtered.remove(&l);
        }
    }

    /// Notes the subscriptions a scrape shows and removes the series of
    /// those the previous scrape showed that are gone.
    pub fn keep_subscriptions(&self, ids: &[String], tables: &[crate::store::Table]) {
        let now: std::collections::HashSet<String> = ids.iter().cloned().collect();
        let before = std::mem::replace(
            &mut *self.scraped.lock().unwrap_or_else(|p| p.into_inner()),
            now.clone(),
        );
        for gone in before.difference(&now) {
            self.forget_subscription(gone, tables);
        }
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
            .expect("writing to a String");
        out
    }
}

pub fn table_labels(t: &crate::store::Table) -> TableLabels {
    TableLabels {
        source: t.source.clone(),
        resource: t.resource.clone(),
    }
}

/// What the pollers and retention count.
fn register_polling(r: &mut Registry, m: &Metrics) {
    r.register(
        "cursor_stamp",
        "Stamp of the last event of each target",
        m.cursor.clone(),
    );
    r.register(
        "events_appended",
        "Events appended, by op",
        m.appended.clone(),
    );
    r.register(
        "poll_duration_seconds",
        "Time one poll of a target took",
        m.poll_duration.clone(),
    );
    r.register(
        "page_walks",
        "Page walks of the pages strategy; more than polls means rows shifted",
        m.walks.clone(),
    );
    r.register(
        "settle_pages",
        "Pages fetched by settle walks after a pages walk",
        m.settle_pages.clone(),
    );
    r.register(
        "polls_unsettled",
        "Polls whose upstream changed too fast to settle (committed up to the floor)",
        m.unsettled.clone(),
    );
    r.register(
        "reconcile_repaired",
        "Missed versions the reconcile sweep appended as late events",
        m.reconcile_repaired.clone(),
    );
    r.register(
        "store_resets",
        "Times the store was found to have lost a table's data (its epoch gone or changed)",
        m.store_resets.clone(),
    );
    register_alerts(r, m);
    r.register(
        "upstream_errors",
        "Failed polls, by kind of failure",
        m.upstream_errors.clone(),
    );
    r.register(
        "health_transitions",
        "Changes of a table's health state (docs/operations.md, \"Health\"), by source and new state",
        m.health_transitions.clone(),
    );
    r.register(
        "health_tables",
        "Tables this instance polls, by health state",
        m.health_tables.clone(),
    );
    r.register(
        "records_rejected",
        "Upstream records sent to the reject stream",
        m.rejected.clone(),
    );
    r.register(
        "events_trimmed",
        "Events removed from the stream by store.retention",
        m.trimmed.clone(),
    );
}

/// One counter per [`Alert`], each under its own name.
fn register_alerts(r: &mut Registry, m: &Metrics) {
    for (alert, family) in Alert::ALL.iter().zip(&m.alerts) {
        let (name, help) = alert.metric();
        r.register(name, help, family.clone());
    }
}

/// What the delivery workers and the live streams count.
/// The event catalog's (catalog/).
fn register_catalog(r: &mut Registry, m: &Metrics) {
    r.register(
        "schema_new_fields",
        "Record fields the upstream sent for the first time after the event catalog first inferred the table's schema",
        m.schema_new_fields.clone(),
    );
}

fn register_delivery(r: &mut Registry, m: &Metrics) {
    r.register(
        "delivery_attempts",
        "Webhook requests, by outcome",
        m.attempts.clone(),
    );
    r.register(
        "delivery_latency_seconds",
        "Webhook request duration",
        m.delivery_latency.clone(),
    );
    r.register(
        "delivery_pending",
        "Events claimed by a subscription but not yet delivered",
        m.pending.clone(),
    );
    r.register(
        "delivery_waiting_retry",
        "Pending events held back by a waiting retry (claiming pauses at delivery.max_waiting_retries)",
        m.waiting_retry.clone(),
    );
    r.register(
        "delivery_claims_paused",
        "1 while delivery.max_waiting_retries events wait for retries and nothing new is claimed",
        m.claims_paused.clone(),
    );
    r.register(
        "delivery_filtered",
        "Events a subscription's filters passed over: its position moves past them, nothing is sent",
        m.filtered.clone(),
    );
    r.register(
        "delivery_in_flight",
        "Pending events in requests not yet answered (at most the subscription's max_in_flight requests)",
        m.in_flight.clone(),
    );
    r.register(
        "delivery_dead_letters",
        "Events in a subscription's dead letters",
        m.dead_letters.clone(),
    );
    r.register(
        "delivery_superseded",
        "Dead letters a redrive dropped because a newer version of their record was delivered since",
        m.superseded.clone(),
    );
    r.register(
        "subscription_disabled",
        "1 when a subscription is disabled",
        m.disabled.clone(),
    );
    r.register(
        "live_stream_clients",
        "Connected live-stream (SSE) clients",
        m.live_clients.clone(),
    );
}
