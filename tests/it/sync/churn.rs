//! Progress under steady churn (poller/walk.rs): creates and renames while
//! a `pages` poll walks keep its union from ever holding the count the last
//! page promised, yet every poll moves the cursor, and nothing is lost.

use stamp_relay::{config::Paging, store::Table};
use stamp_relay_simulator::{Faults, Order, SimConfig};
use tokio_util::sync::CancellationToken;

use crate::harness::{Sim, TestStore, assert_rebuilds, poll_until_quiet, relay, source};
use crate::on_both_stores;

on_both_stores!(the_cursor_advances_every_poll_under_steady_churn);

/// A name-ordered table takes a random write (creates, renames, deletes)
/// before every page after the first, so each walk lands records behind
/// itself, and no walk set may see all the last page counted.
/// Each of ten polls still moves the cursor, and once the writes stop the
/// stream rebuilds the table.
async fn the_cursor_advances_every_poll_under_steady_churn(ts: TestStore) {
    let sim = Sim::start(SimConfig {
        seed: 7,
        order: Order::Name,
        initial: vec![("patients".into(), 400)],
        ..SimConfig::default()
    })
    .await;
    let src = source(&sim.base_url, &["patients"], Paging::Pages, 50);
    let mut relay = relay(&ts, vec![src]);
    let cancel = CancellationToken::new();
    relay.pollers[0].poll_once(&cancel).await.unwrap();
    sim.sim.set_faults(Faults {
        writes_per_page: 1,
        ..Faults::default()
    });
    for poll in 0..10 {
        let r = relay.pollers[0]
            .poll_once(&cancel)
            .await
            .unwrap_or_else(|e| panic!("poll {poll}: {e}"));
        assert!(
            r.after > r.before,
            "poll {poll} did not move the cursor: {r:?}"
        );
    }
    sim.sim.set_faults(Faults::default());
    poll_until_quiet(&mut relay, 5).await;
    assert_rebuilds(ts.store.as_ref(), &Table::new("sim", "patients"), &sim.sim).await;
}
