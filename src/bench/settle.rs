//! The settle cost (poller/walk.rs): a `pages` initial load of the same
//! records, whose settle walks add upstream requests to the plain walk. The
//! share is printed next to the load's rate, in the throughput table.

use super::load_once;
use crate::config::{Paging, StoreConfig};

/// Loads everything with `paging = "pages"` into a fresh key prefix and
/// prints the rate against `raw_rate` and the settle walks' requests as a
/// share of the walk's.
pub async fn run(store: StoreConfig, base_url: &str, raw_rate: f64) -> anyhow::Result<()> {
    let (report, secs) = load_once(&store, base_url, Paging::Pages).await?;
    let rate = report.outcome.appended() as f64 / secs;
    let walk = report.pages - report.settle_pages;
    println!(
        "{:<44} {:>12.0} {:>10.2}   settle: +{} of {} requests ({:.2} %)",
        "relay -> redis, paging = pages (walk + settle)",
        rate,
        rate / raw_rate,
        report.settle_pages,
        walk,
        100.0 * f64::from(report.settle_pages) / f64::from(walk.max(1))
    );
    Ok(())
}

/// Polls measured per write rate in [`churn`].
const CHURN_POLLS: u32 = 5;

/// Progress under steady churn: for rising write rates on one name-ordered
/// table of `records` patients (creates and renames move rows between
/// pages), `pages` polls at page size 100 and the default overlap, one a
/// second; prints how many of them moved the cursor, and the highest rate
/// at which every poll did.
pub async fn churn(store: StoreConfig, records: usize) -> anyhow::Result<()> {
    println!(
        "pages under churn ({records} name-ordered records, page size 100, default overlap, a poll a second):"
    );
    let mut highest = None;
    for rate in [10.0, 20.0, 40.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0] {
        let advanced = polls_advancing(&store, records, rate).await?;
        println!("  {rate:>6.0} writes/s: the cursor moved in {advanced} of {CHURN_POLLS} polls");
        if advanced < CHURN_POLLS {
            break;
        }
        highest = Some(rate);
    }
    match highest {
        Some(rate) => println!(
            "{:<44} {:>12.0} writes/s per table",
            "pages: cursor advances every poll up to", rate
        ),
        None => println!("pages: the cursor stalled even at 10 writes/s"),
    }
    Ok(())
}

/// Loads a fresh simulator, then counts the polls that moved the cursor
/// while `rate` random writes a second land on the table.
async fn polls_advancing(store: &StoreConfig, records: usize, rate: f64) -> anyhow::Result<u32> {
    use stamp_relay_simulator::{Order, SimConfig, Simulator};
    let sim = Simulator::new(SimConfig {
        order: Order::Name,
        initial: vec![("patients".into(), records)],
        ..SimConfig::default()
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base_url = format!("http://{}/api", listener.local_addr()?);
    let stop = tokio_util::sync::CancellationToken::new();
    tokio::spawn(sim.clone().serve(listener, stop.clone()));
    let store = StoreConfig {
        key_prefix: format!("{}-churn{rate}", store.key_prefix),
        ..store.clone()
    };
    let config = crate::config::RawConfig {
        store: store.clone(),
        sources: vec![super::source(&base_url, 100, Paging::Pages)?],
        ..crate::config::RawConfig::default()
    }
    .validate(&|_| None)?;
    let mut relay = crate::app::Relay::with_store(config, crate::store::open(&store).await?)?;
    let poller = &mut relay.pollers[0];
    let cancel = tokio_util::sync::CancellationToken::new();
    poller.poll_once(&cancel).await?;
    let writer = tokio::spawn({
        let (sim, stop) = (sim.clone(), stop.clone());
        async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_millis(20));
            let mut owed = 0.0;
            while !stop.is_cancelled() {
                tick.tick().await;
                owed += rate / 50.0;
                sim.random_writes(Some("patients"), owed as usize);
                owed -= owed.floor();
            }
        }
    });
    let mut advanced = 0;
    for _ in 0..CHURN_POLLS {
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        if let Ok(r) = poller.poll_once(&cancel).await
            && r.after > r.before
        {
            advanced += 1;
        }
    }
    stop.cancel();
    writer.await?;
    Ok(advanced)
}
