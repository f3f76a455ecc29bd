//! A worker's handles on its metrics, looked up once: a family lookup
//! clones and hashes the labels, which per request is CPU the receiver's
//! pace cannot spare.

use prometheus_client::metrics::{counter::Counter, gauge::Gauge, histogram::Histogram};

use super::queue::Counts;
use crate::subscription::state::Outcome;
use crate::{
    metrics::{Metrics, OutcomeLabels, SubLabels, SubTableLabels},
    store::Table,
};

pub struct Meters {
    metrics: std::sync::Arc<Metrics>,
    subscription: String,
    attempts: Vec<(Outcome, Counter)>,
    latency: Histogram,
    pending: Gauge,
    waiting: Gauge,
    in_flight: Gauge,
    paused: Gauge,
    filtered: Counter,
}

impl Meters {
    pub fn new(metrics: std::sync::Arc<Metrics>, subscription: &str, t: &Table) -> Meters {
        let labels = SubTableLabels {
            subscription: subscription.to_string(),
            source: t.source.clone(),
            resource: t.resource.clone(),
        };
        let sub = SubLabels {
            subscription: subscription.to_string(),
        };
        let latency = metrics.delivery_latency.get_or_create(&sub).clone();
        let pending = metrics.pending.get_or_create(&labels).clone();
        let waiting = metrics.waiting_retry.get_or_create(&labels).clone();
        let in_flight = metrics.in_flight.get_or_create(&labels).clone();
        let paused = metrics.claims_paused.get_or_create(&labels).clone();
        let filtered = metrics.filtered.get_or_create(&labels).clone();
        Meters {
            metrics,
            subscription: sub.subscription,
            attempts: Vec::new(),
            latency,
            pending,
            waiting,
            in_flight,
            paused,
            filtered,
        }
    }

    /// Counts one attempt and its latency.
    pub fn attempt(&mut self, outcome: Outcome, latency: std::time::Duration) {
        self.latency.observe(latency.as_secs_f64());
        if let Some((_, c)) = self.attempts.iter().find(|(o, _)| *o == outcome) {
            c.inc();
            return;
        }
        let label = outcome.as_str().to_string();
        let counter = self
            .metrics
            .attempts
            .get_or_create(&OutcomeLabels {
                subscription: self.subscription.clone(),
                outcome: label,
            })
            .clone();
        counter.inc();
        self.attempts.push((outcome, counter));
    }

    /// Counts events the subscription's filters passed over.
    pub fn filtered(&self, n: usize) {
        self.filtered.inc_by(n as u64);
    }

    /// Publishes the queue figures; `paused` while the waiting-retry limit
    /// keeps the worker from claiming.
    pub fn show(&self, counts: &Counts, paused: bool) {
        self.pending.set((counts.sendable + counts.waiting) as i64);
        self.waiting.set(counts.waiting as i64);
        self.in_flight.set(counts.in_flight as i64);
        self.paused.set(i64::from(paused));
    }
}
