//! The Scheduler: each instance polls the tables of the topology from one
//! due-time schedule, with a bounded pool of polls at once
//! (`poll.max_concurrent`), instead of a task and a timer per table.
//!
//! A table is due at its last poll's end plus its interval (after a failed
//! poll, a backoff). At start each table's first due time comes from the
//! last poll the store remembers (resume.rs): at once for a table never
//! loaded, at that poll's end plus the interval otherwise, so a restart
//! neither polls everything at once nor delays it by an interval. A table
//! added later is due at once, and a nudge makes a source's tables due now. Between polls a table is one
//! entry in a heap: no task, no timer. [`Poller::poll_once`] stays the unit
//! of work; the pool runs one at a time per table.

use std::{
    cmp::Reverse,
    collections::{BinaryHeap, HashMap},
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use tokio::{task::JoinSet, time::Instant};
use tokio_util::sync::CancellationToken;

mod resume;
mod share;
use share::Share;

use crate::{
    metrics::Metrics,
    poller::{PollError, PollReport, PollSettings, Poller},
    store::{Store, Table},
    topology::{TableEntry, Topology},
};

/// What the scheduler needs besides the topology.
#[derive(Clone)]
pub struct Scheduler {
    pub topology: Arc<Topology>,
    pub store: Arc<dyn Store>,
    pub holder: String,
    pub lease_ttl: Duration,
    pub metrics: Arc<Metrics>,
    /// Polls running at once at most (`poll.max_concurrent`).
    pub max_concurrent: usize,
    /// Where the pollers send their health transitions (`_relay/health`).
    pub health_log: Option<crate::poller::HealthLog>,
}

/// One scheduled table.
struct Slot {
    /// The topology's entry it was scheduled from: a new entry (a pause,
    /// a source replaced) reschedules it.
    table: Arc<TableEntry>,
    /// None while its poll runs.
    poller: Option<Poller>,
    due: Instant,
    /// Nudged while its poll ran: due again as soon as it ends.
    nudged: bool,
    /// Its poll runs to take a table this instance did not hold: counted
    /// as held until the poll says otherwise, so the polls started while
    /// others run do not take more than the share.
    taking: bool,
    /// Its last poll here found another instance's lease: taking it is a
    /// move, made only well below this instance's part (share.rs).
    elsewhere: bool,
    /// Its interval is longer than the lease TTL: its lease lapses
    /// between polls, so a take may be a move from a live instance.
    lapses: bool,
}

type Done = (Poller, Result<PollReport, PollError>);

impl Scheduler {
    /// The poller of a polled table of the topology, sharing its status.
    pub fn poller_of(&self, table: &TableEntry) -> Option<Poller> {
        let source = table.source.as_ref()?;
        let settings = PollSettings::new(&source.config.settings, self.lease_ttl);
        let mut poller = Poller::new(
            table.table.clone(),
            self.store.clone(),
            source.upstream.clone(),
            &self.holder,
            settings,
            self.metrics.clone(),
        );
        poller.status = table.status.clone();
        if let Some(log) = &self.health_log {
            poller.report_health(log.clone());
        }
        Some(poller)
    }

    /// Polls the topology's tables until `cancel`; `built` are pollers made
    /// ahead (by `Relay::build`), used for their tables. On the way out it
    /// lets running polls end between chunks and releases every lease.
    pub async fn run(self, built: Vec<Poller>, cancel: CancellationToken) {
        let mut built: HashMap<Table, Poller> =
            built.into_iter().map(|p| (p.table.clone(), p)).collect();
        let mut slots: HashMap<Table, Slot> = HashMap::new();
        let mut queue: BinaryHeap<Reverse<(Instant, Table)>> = BinaryHeap::new();
        let mut running: JoinSet<Done> = JoinSet::new();
        let mut changes = self.topology.subscribe();
        let start = Instant::now();
        let mut share = Share::new(start);
        // First due times, read from the store for every table scheduled.
        let (found_tx, mut found_rx) = tokio::sync::mpsc::unbounded_channel();
        let found = self.follow(&mut slots, &mut queue, &mut built);
        resume::look_up(self.store.clone(), found, found_tx.clone());
        self.beat(&mut share, &mut slots, &mut queue).await;
        while !cancel.is_cancelled() {
            self.start_due(&mut slots, &mut queue, &mut running, &share, &cancel);
            let room = running.len() < self.max_concurrent.max(1);
            let next = queue.peek().map(|Reverse((due, _))| *due).filter(|_| room);
            tokio::select! {
                _ = cancel.cancelled() => break,
                Some(done) = running.join_next() => match done {
                    Ok(done) => self.finished(done, &mut slots, &mut queue, &share),
                    Err(e) => tracing::error!(error = %e, "a poll task panicked; its table is not polled until a restart"),
                },
                _ = sleep_until(next) => {}
                _ = tokio::time::sleep_until(share.next_beat) => {
                    self.beat(&mut share, &mut slots, &mut queue).await;
                }
                changed = changes.changed() => if changed.is_ok() {
                    let found = self.follow(&mut slots, &mut queue, &mut built);
                    resume::look_up(self.store.clone(), found, found_tx.clone());
                },
                () = self.topology.nudged() => self.nudges(&mut slots, &mut queue),
                Some((t, due)) = found_rx.recv() => resume(&mut slots, &mut queue, t, due),
            }
        }
        let mut stopped: Vec<Poller> = Vec::new();
        while let Some(done) = running.join_next().await {
            stopped.extend(done.ok().map(|(poller, _)| poller));
        }
        for slot in slots.into_values() {
            slot.table.status.running.store(false, Ordering::Relaxed);
            stopped.extend(slot.poller);
        }
        let releases = stopped.iter().map(|p| {
            p.status.holds_lease.store(false, Ordering::Relaxed);
            self.store.release(&p.table, &self.holder)
        });
        futures_util::future::join_all(releases).await;
    }

    /// Starts every due poll the pool has room for. A table this instance
    /// does not hold waits while it holds its part already (share.rs).
    fn start_due(
        &self,
        slots: &mut HashMap<Table, Slot>,
        queue: &mut BinaryHeap<Reverse<(Instant, Table)>>,
        running: &mut JoinSet<Done>,
        share: &Share,
        cancel: &CancellationToken,
    ) {
        let now = Instant::now();
        let part = share.part(slots.len());
        let mut held = None;
        while running.len() < self.max_concurrent.max(1) {
            let Some(Reverse((due, _))) = queue.peek() else {
                return;
            };
            if *due > now {
                return;
            }
            let Some(Reverse((due, t))) = queue.pop() else {
                return;
            };
            // An entry left behind by a reschedule, a removal or a poll
            // still running is skipped.
            let Some(slot) = slots.get_mut(&t).filter(|s| s.due == due) else {
                continue;
            };
            if slot.poller.is_none() {
                continue;
            }
            let taking = !slot.table.status.holds_lease.load(Ordering::Relaxed);
            // In a takeover window a dead instance's tables go up to the part.
            let limit = if slot.elsewhere && slot.lapses && !share.taking_over(now) {
                share::settled(part)
            } else {
                part
            };
            if taking && *held.get_or_insert_with(|| holding(slots)) >= limit {
                // Its share is full: not this instance's table for now.
                let Some(slot) = slots.get_mut(&t) else {
                    continue;
                };
                let interval = slot
                    .poller
                    .as_ref()
                    .map_or(Duration::ZERO, Poller::interval);
                slot.due = now + share.retry(now, interval);
                queue.push(Reverse((slot.due, t)));
                continue;
            }
            if taking {
                held = held.map(|h| h + 1);
            }
            let Some(slot) = slots.get_mut(&t) else {
                continue;
            };
            let Some(mut poller) = slot.poller.take() else {
                continue;
            };
            slot.nudged = false;
            slot.taking = taking;
            let cancel = cancel.clone();
            // Every log line of a poll carries its source and resource.
            let span = tracing::info_span!("poll", source = %t.source, resource = %t.resource);
            running.spawn(tracing::Instrument::instrument(
                async move {
                    let result = poller.step(&cancel).await;
                    (poller, result)
                },
                span,
            ));
        }
    }

    /// Files a finished poll: the table is due again after its interval
    /// (or a backoff), unless it left the schedule meanwhile.
    fn finished(
        &self,
        (poller, result): Done,
        slots: &mut HashMap<Table, Slot>,
        queue: &mut BinaryHeap<Reverse<(Instant, Table)>>,
        share: &Share,
    ) {
        let Some(slot) = slots.get_mut(&poller.table) else {
            // Removed or paused while it ran.
            self.retire(poller);
            return;
        };
        slot.taking = false;
        if matches!(result, Err(PollError::Cancelled)) {
            slot.poller = Some(poller);
            return;
        }
        let now = Instant::now();
        // The poller's own wait (the interval, or a backoff after failures),
        // which its health shows as the next attempt; a table another
        // instance holds is tried again on the share's schedule.
        let wait = if slot.nudged {
            Duration::ZERO
        } else if matches!(result, Ok(PollReport { leased: false, .. })) {
            slot.elsewhere = true;
            share.retry(now, poller.interval())
        } else {
            slot.elsewhere &= result.is_err();
            poller.wait()
        };
        slot.due = now + wait;
        queue.push(Reverse((slot.due, poller.table.clone())));
        slot.poller = Some(poller);
    }

    /// Writes this instance's heartbeat and keeps its share: when an
    /// instance vanished, the tables it does not hold are due now; over
    /// its cap, it releases idle tables for the others to take.
    async fn beat(
        &self,
        share: &mut Share,
        slots: &mut HashMap<Table, Slot>,
        queue: &mut BinaryHeap<Reverse<(Instant, Table)>>,
    ) {
        let ttl = self.lease_ttl;
        let beat = share::beat_ttl(ttl);
        let hb = match self.store.heartbeat(&self.holder, &share.nonce, beat).await {
            Ok(hb) => hb,
            Err(e) => {
                tracing::warn!(error = %e, "cannot write this instance's heartbeat; trying again");
                share.next_beat = Instant::now() + share::beat_every(ttl);
                return;
            }
        };
        let now = Instant::now();
        if share.observe(&hb, &self.holder, now, ttl) {
            for (t, slot) in slots.iter_mut() {
                if slot.poller.is_some() && !slot.table.status.holds_lease.load(Ordering::Relaxed) {
                    slot.due = now;
                    queue.push(Reverse((now, t.clone())));
                }
            }
        }
        let lapsing = slots.values().any(|s| s.lapses);
        let over = holding(slots).saturating_sub(share.cap(slots.len(), lapsing));
        let idle_held = slots
            .values()
            .filter(|s| s.poller.is_some() && s.table.status.holds_lease.load(Ordering::Relaxed));
        for slot in idle_held.take(over) {
            let status = &slot.table.status;
            status.holds_lease.store(false, Ordering::Relaxed);
            let (store, holder, t) = (
                self.store.clone(),
                self.holder.clone(),
                slot.table.table.clone(),
            );
            tokio::spawn(async move {
                let _ = store.release(&t, &holder).await;
            });
        }
    }

    /// Brings the schedule in line with the topology: new polled tables
    /// are scheduled, parked until their stored last poll tells when they
    /// are due (the tables it returns, with their intervals); removed and
    /// paused ones leave it. A table whose source changed is scheduled
    /// anew, from its last poll too.
    fn follow(
        &self,
        slots: &mut HashMap<Table, Slot>,
        queue: &mut BinaryHeap<Reverse<(Instant, Table)>>,
        built: &mut HashMap<Table, Poller>,
    ) -> Vec<(Table, Duration)> {
        let now = self.topology.snapshot();
        let leaving: Vec<Table> = slots
            .iter()
            .filter(|(t, slot)| {
                now.tables
                    .get(*t)
                    .is_none_or(|table| !table.polled() || !Arc::ptr_eq(table, &slot.table))
            })
            .map(|(t, _)| t.clone())
            .collect();
        for t in leaving {
            let Some(slot) = slots.remove(&t) else {
                continue;
            };
            slot.table.status.running.store(false, Ordering::Relaxed);
            if let Some(poller) = slot.poller {
                self.retire(poller);
            }
        }
        let mut found = Vec::new();
        for (t, table) in now.tables.iter().filter(|(_, table)| table.polled()) {
            if slots.contains_key(t) {
                continue;
            }
            let poller = built.remove(t).or_else(|| self.poller_of(table));
            let Some(poller) = poller else { continue };
            // Parked past any due time its last poll can give.
            found.push((t.clone(), poller.interval()));
            let lapses = poller.interval() > self.lease_ttl;
            let due = Instant::now() + 2 * poller.interval() + Duration::from_secs(1);
            // Ready from the start: readiness must not race the first poll.
            table.status.running.store(true, Ordering::Relaxed);
            queue.push(Reverse((due, t.clone())));
            let table = table.clone();
            let slot = Slot {
                table,
                poller: Some(poller),
                due,
                nudged: false,
                taking: false,
                elsewhere: false,
                lapses,
            };
            slots.insert(t.clone(), slot);
        }
        found
    }

    /// Makes the tables of every nudged source due now.
    fn nudges(
        &self,
        slots: &mut HashMap<Table, Slot>,
        queue: &mut BinaryHeap<Reverse<(Instant, Table)>>,
    ) {
        let now = Instant::now();
        for source in self.topology.take_nudges() {
            for (t, slot) in slots.iter_mut().filter(|(t, _)| t.source == source) {
                if slot.poller.is_none() {
                    // Its poll runs now: another follows at once.
                    slot.nudged = true;
                    continue;
                }
                slot.due = now;
                queue.push(Reverse((now, t.clone())));
            }
        }
    }

    /// A poller that leaves the schedule: its lease is released so
    /// another instance (or this one, later) goes on at once.
    fn retire(&self, mut poller: Poller) {
        poller.status.holds_lease.store(false, Ordering::Relaxed);
        let (store, holder) = (self.store.clone(), self.holder.clone());
        // A table of a paused source, rather than one removed.
        let paused = self
            .topology
            .table(&poller.table)
            .and_then(|t| t.source.as_ref().map(|s| s.paused))
            .unwrap_or(false);
        tokio::spawn(async move {
            poller.retire_health(paused).await;
            let _ = store.release(&poller.table, &holder).await;
        });
    }
}

/// How many tables this instance holds, or is taking now.
fn holding(slots: &HashMap<Table, Slot>) -> usize {
    slots
        .values()
        .filter(|s| s.taking || s.table.status.holds_lease.load(Ordering::Relaxed))
        .count()
}

/// Files the first due time of a table just scheduled, unless it is
/// due sooner already (a nudge, a takeover) or its poll runs.
fn resume(
    slots: &mut HashMap<Table, Slot>,
    queue: &mut BinaryHeap<Reverse<(Instant, Table)>>,
    t: Table,
    due: Instant,
) {
    let Some(slot) = slots.get_mut(&t) else {
        return;
    };
    if slot.poller.is_some() && due < slot.due {
        slot.due = due;
        queue.push(Reverse((due, t)));
    }
}

async fn sleep_until(due: Option<Instant>) {
    match due {
        Some(due) => tokio::time::sleep_until(due).await,
        None => std::future::pending().await,
    }
}
