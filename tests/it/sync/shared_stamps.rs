//! Rows that share a stamp, as a bulk update leaves them (docs/sync.md,
//! "Shared stamps"): keyset pages that end inside a stamp, a stamp with more
//! rows than a page, and `pages` walks whose count no longer bounds the top.
//! `overlap = 0` throughout, so no re-read window hides a skipped row.

use std::time::Duration;

use stamp_relay::{app::Relay, config::Paging, store::Table};
use stamp_relay_simulator::{Change, Faults, Op, Order, SimConfig, Simulator};
use tokio_util::sync::CancellationToken;

use crate::harness::{Sim, TestStore, assert_rebuilds, poll_until_quiet, seeds, source};
use crate::on_both_stores;

on_both_stores!(
    keyset_stamps_shared_across_a_page_boundary,
    keyset_a_stamp_with_more_rows_than_a_page,
    keyset_groups_of_three_under_writes,
    pages_groups_of_five_with_overlap_zero,
);

/// A stamp-sorted upstream whose rows share stamps in groups of `group`.
async fn grouped(table: &str, rows: usize, group: usize, seed: u64) -> Sim {
    Sim::start(SimConfig {
        seed,
        order: Order::Stamp,
        initial: vec![(table.into(), rows)],
        stamp_group: group,
        ..SimConfig::default()
    })
    .await
}

/// A relay with `overlap = 0` on a store of its own (`tag` names it), so
/// one test can load several upstreams.
async fn relay_for(
    ts: &TestStore,
    sim: &Sim,
    table: &str,
    (paging, page_size): (Paging, u32),
    tag: &str,
) -> Relay {
    let mut src = source(&sim.base_url, &[table], paging, page_size);
    src.overlap = 0;
    let mut store = ts.config.clone();
    store.key_prefix = format!("shared-{tag}");
    store.data_dir = ts.dir.path().join(format!("shared-{tag}"));
    Relay::with_store(
        crate::harness::config(&store, vec![src]),
        stamp_relay::store::open(&store).await.unwrap(),
    )
    .unwrap()
}

/// Stamps 1,1,2,2 at page size 3: the first page ends inside stamp 2, and
/// the fourth row must still be read (it was never emitted before).
async fn keyset_stamps_shared_across_a_page_boundary(ts: TestStore) {
    let sim = grouped("sites", 4, 2, 1).await;
    let mut relay = relay_for(&ts, &sim, "sites", (Paging::Keyset, 3), "boundary").await;
    let r = relay.pollers[0]
        .poll_once(&CancellationToken::new())
        .await
        .unwrap();
    // Archived rows of a load are `deleted` (src/events.rs).
    assert_eq!(r.outcome.created + r.outcome.deleted, 4, "{r:?}");
    assert_rebuilds(relay.store.as_ref(), &Table::new("sim", "sites"), &sim.sim).await;
}

/// More rows on one stamp than a page holds (4 rows at page size 3, 150 at
/// 100) are read with offset pages instead of stalling the table, and the
/// writes after them arrive.
async fn keyset_a_stamp_with_more_rows_than_a_page(ts: TestStore) {
    for (rows, page_size) in [(4, 3), (150, 100)] {
        let sim = grouped("sites", rows, rows, 2).await;
        let tag = format!("fuller{rows}");
        let mut relay = relay_for(&ts, &sim, "sites", (Paging::Keyset, page_size), &tag).await;
        let cancel = CancellationToken::new();
        let r = relay.pollers[0].poll_once(&cancel).await.unwrap();
        let loaded = r.outcome.created + r.outcome.deleted;
        assert_eq!(loaded, rows as u64, "{r:?}");
        for _ in 0..5 {
            sim.sim.apply(Change::new("sites", Op::Update)).unwrap();
            sim.sim.apply(Change::new("sites", Op::Create)).unwrap();
        }
        poll_until_quiet(&mut relay, 5).await;
        let t = Table::new("sim", "sites");
        assert_rebuilds(relay.store.as_ref(), &t, &sim.sim).await;
    }
}

/// 4,000 rows in groups of 3 per stamp, with grouped writes while the polls
/// run: keyset pages end inside groups all the time, and nothing is lost.
async fn keyset_groups_of_three_under_writes(ts: TestStore) {
    let sim = grouped("patients", 4000, 3, 3).await;
    let mut relay = relay_for(&ts, &sim, "patients", (Paging::Keyset, 100), "threes").await;
    poll_while_writing(&mut relay, &sim.sim, "patients", 3).await;
    poll_until_quiet(&mut relay, 5).await;
    let t = Table::new("sim", "patients");
    assert_rebuilds(relay.store.as_ref(), &t, &sim.sim).await;
}

/// A few polls with grouped random writes landing while they page.
async fn poll_while_writing(relay: &mut Relay, sim: &Simulator, table: &str, writes: usize) {
    let cancel = CancellationToken::new();
    for _ in 0..4 {
        let writer = async {
            for _ in 0..10 {
                tokio::time::sleep(Duration::from_millis(2)).await;
                sim.random_writes(Some(table), writes);
            }
        };
        let (polled, ()) = tokio::join!(relay.pollers[0].poll_once(&cancel), writer);
        polled.unwrap();
    }
}

/// `pages` on an upstream in random order whose rows share stamps five to
/// one, editing records in place while the relay pages, with `overlap = 0`:
/// a page's count holds five rows per stamp, so `sync + count` overstates
/// the top, and a floor built on it would let the cursor pass versions
/// written behind the walk. Across seeds, the stream rebuilds the final
/// state.
async fn pages_groups_of_five_with_overlap_zero(ts: TestStore) {
    for seed in 0..seeds() {
        let sim = Sim::start(SimConfig {
            seed,
            order: Order::Random,
            initial: vec![("patients".into(), 300)],
            stamp_group: 5,
            ..SimConfig::default()
        })
        .await;
        let tag = format!("fives{seed}");
        let mut relay = relay_for(&ts, &sim, "patients", (Paging::Pages, 20), &tag).await;
        sim.sim.set_faults(Faults {
            edits_per_page: 2,
            slow_rate: 1.0,
            slow_ms: 2,
            ..Faults::default()
        });
        let cancel = CancellationToken::new();
        for _ in 0..3 {
            // Under this churn a poll may fail to see its whole set; that
            // moves nothing, and the next one tries again.
            let _ = relay.pollers[0].poll_once(&cancel).await;
            sim.sim.random_writes(Some("patients"), 10);
        }
        sim.sim.set_faults(Faults::default());
        poll_until_quiet(&mut relay, 5).await;
        let t = Table::new("sim", "patients");
        assert_rebuilds(relay.store.as_ref(), &t, &sim.sim).await;
    }
}
