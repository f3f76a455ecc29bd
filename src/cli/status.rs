//! `stamp-relay status`: sources and tables by health, the page of sources
//! a search picks, their tables, and the subscriptions, as text from the
//! store (`crate::status`).

use std::process::ExitCode;

use crate::{
    status::{Overview, Query, SubscriptionView},
    store::{self, Table},
};

/// Reads the store only: needs no upstream, API or webhook secret.
pub(super) async fn run(
    config: crate::config::RawConfig,
    query: &Query,
) -> anyhow::Result<ExitCode> {
    let store = store::open(&config.store).await?;
    let tables: Vec<Table> = config
        .sources
        .iter()
        .flat_map(|s| s.resources.iter().map(|r| Table::new(&s.name, r)))
        .collect();
    let overview = crate::status::overview(store.as_ref(), &tables, query).await?;
    let limit = config.delivery.max_waiting_retries;
    let subscriptions = crate::status::subscriptions(store.as_ref(), &tables, limit).await?;
    println!("store: {}", store.describe());
    print_sources(&overview);
    print_tables(&overview);
    print_subscriptions(&subscriptions, limit);
    Ok(ExitCode::SUCCESS)
}

/// The counts by state, then the page of sources, worst first.
fn print_sources(o: &Overview) {
    let counts = |counts: &[(crate::health::State, usize)]| -> String {
        let words: Vec<String> = counts.iter().map(|(s, n)| format!("{s} {n}")).collect();
        words.join(", ")
    };
    println!("sources: {}", counts(&o.sources_by_state));
    println!("tables:  {}", counts(&o.tables_by_state));
    println!(
        "\n{} sources match; page {} of {} (--page N; --search, --state narrow)",
        o.matching, o.page, o.pages
    );
    println!("{:<32} {:<12} {:<28} reason", "source", "state", "tables");
    for s in &o.sources {
        println!(
            "{:<32} {:<12} {:<28} {}",
            s.name,
            s.health.state.name(),
            s.health.tables_in_words(),
            s.health.reason.as_deref().unwrap_or("")
        );
    }
}

/// One row per table of the sources shown.
fn print_tables(o: &Overview) {
    println!();
    println!(
        "{:<32} {:>14} {:>10} {:>10} {:>10} {:>10}  state",
        "target", "cursor", "events", "records", "events/min", "last poll"
    );
    let now = crate::events::now_ms();
    for v in o.sources.iter().flat_map(|s| &s.tables) {
        let last = &v.poll;
        let polled = if last.finished_ms == 0 {
            "never".to_string()
        } else {
            format!("{}s ago", now.saturating_sub(last.finished_ms) / 1000)
        };
        let state = match (&last.error, last.ok_ms) {
            (Some(e), _) => format!("failing: {e}"),
            (None, Some(_)) => format!("in sync (polled by {})", last.holder),
            (None, None) => "not polled yet".to_string(),
        };
        let alerts = crate::store::alerts::describe(&last.alerts);
        let state = if alerts.is_empty() {
            state
        } else {
            format!("{state}; alerts: {alerts}")
        };
        println!(
            "{:<32} {:>14} {:>10} {:>10} {:>10} {:>10}  {state}",
            v.table.to_string(),
            v.last_id.to_string(),
            v.stream_length,
            v.records,
            last.rate_shown(),
            polled,
        );
    }
}

/// The subscription rows of `stamp-relay status`; `(config)` marks those
/// the configuration file declares.
fn print_subscriptions(subscriptions: &[SubscriptionView], limit: usize) {
    println!(
        "\n{:<38} {:<9} {:>8} {:>8} {:>12} {:>12}  url",
        "subscription", "state", "pending", "waiting", "lag (stamps)", "dead letters"
    );
    for v in subscriptions {
        println!(
            "{:<38} {:<9} {:>8} {:>8} {:>12} {:>12}  {}",
            match v.subscription.managed_by {
                Some(_) => format!("{} (config)", v.subscription.id),
                None => v.subscription.id.clone(),
            },
            if v.subscription.enabled {
                "enabled"
            } else {
                "disabled"
            },
            v.pending,
            v.waiting_retries,
            v.lag,
            v.dead_letters,
            v.subscription.url
        );
        if let Some(note) = v.delivery_note(crate::events::now_ms()) {
            println!("  {note}");
        }
        if !v.paused.is_empty() {
            let paused: Vec<String> = v.paused.iter().map(|t| t.to_string()).collect();
            println!(
                "  claiming paused on {}: {limit} events wait for retries there (delivery.max_waiting_retries)",
                paused.join(", ")
            );
        }
    }
    if subscriptions.is_empty() {
        println!("(none)");
    }
}
