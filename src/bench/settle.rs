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
