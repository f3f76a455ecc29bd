//! `stamp-relay demo`: the simulator with a steady change rate, the relay
//! against it (embedded store unless `--redis-url`), and a readable feed of
//! events as they land. Needs nothing installed and no configuration.

use std::{collections::HashMap, net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::Context;
use stamp_relay_simulator::{SimConfig, Simulator};
use tokio::{net::TcpListener, task::JoinHandle};
use tokio_util::sync::CancellationToken;

use crate::{
    app::Relay,
    config::{Config, Paging, RawConfig, Scope, Secret, SourceConfig, StoreConfig, TokenConfig},
    events::{Event, StreamId},
    shutdown::shutdown_signal,
    store::{self, Store, Table},
};

mod receiver;

pub const TABLES: [&str; 5] = ["patients", "assessments", "users", "sites", "comments"];

#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Use Redis instead of the embedded store.
    #[arg(long)]
    pub redis_url: Option<String>,
    /// Keep the embedded store here instead of a temporary folder.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Upstream writes per second.
    #[arg(long, default_value_t = 3.0)]
    pub change_rate: f64,
    /// Patients the simulator starts with.
    #[arg(long, default_value_t = 20)]
    pub patients: usize,
    /// Address of the relay's HTTP server (port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: std::net::SocketAddr,
}

/// The relay configuration the demo runs: every simulator table, polled each second.
pub fn demo_config(base_url: &str, store: StoreConfig) -> RawConfig {
    let source: SourceConfig = serde_json::from_value(serde_json::json!({
        "name": "demo",
        "base_url": base_url,
        "resources": TABLES,
        "poll_interval": "1s",
        "page_size": 100,
    }))
    .expect("the demo source is valid");
    let mut raw = RawConfig {
        store,
        ..RawConfig::default()
    };
    raw.sources.push(SourceConfig {
        paging: Paging::Pages,
        ..source
    });
    raw
}

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let cancel = shutdown_signal();
    let (base_url, sim_task) = start_simulator(&args, &cancel).await?;
    let temp = args.data_dir.is_none() && args.redis_url.is_none();
    let data_dir = args.data_dir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("stamp-relay-demo-{}", std::process::id()))
    });
    let store_cfg = StoreConfig {
        redis_url: args.redis_url.clone(),
        data_dir: data_dir.clone(),
        ..StoreConfig::default()
    };
    let (config, token) = relay_config(&base_url, store_cfg)?;
    let hooks = receiver::start(cancel.clone()).await?;
    let store = store::open(&config.store).await?;
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {} (--listen)", args.listen))?;
    let api = listener.local_addr()?;
    let relay = Relay::with_store(config, store.clone())?;
    let tables: Vec<Table> = relay.pollers.iter().map(|p| p.table.clone()).collect();
    banner(&args, &base_url, &store.describe(), api, &token, &hooks.url);

    let relay_task = tokio::spawn(relay.run(listener, cancel.clone()));
    subscribe(&format!("http://{api}"), &token, &hooks).await?;
    let seen = feed(store.as_ref(), &tables, &cancel).await;
    relay_task.await??;
    sim_task.await??;
    if temp {
        let _ = std::fs::remove_dir_all(&data_dir);
    }
    println!("\nstopped cleanly after {seen} events");
    Ok(())
}

/// The simulator on a free loopback port, with a steady change rate.
async fn start_simulator(
    args: &DemoArgs,
    cancel: &CancellationToken,
) -> anyhow::Result<(String, JoinHandle<std::io::Result<()>>)> {
    let sim = Simulator::new(SimConfig {
        seed: 7,
        initial: vec![
            ("sites".into(), 3),
            ("users".into(), 8),
            ("patients".into(), args.patients),
            ("assessments".into(), args.patients * 2),
            ("comments".into(), args.patients / 2),
        ],
        change_rate: args.change_rate,
        ..SimConfig::default()
    });
    let sim_listener = TcpListener::bind("127.0.0.1:0").await?;
    let base_url = format!("http://{}/api", sim_listener.local_addr()?);
    let sim_task = tokio::spawn(sim.clone().serve(sim_listener, cancel.clone()));

    Ok((base_url, sim_task))
}

/// The validated configuration, with a fresh admin token per run (so the
/// API can be tried at once) and the receiver's loopback allowed.
fn relay_config(base_url: &str, store: StoreConfig) -> anyhow::Result<(Config, String)> {
    let mut config = demo_config(base_url, store)
        .validate(&|_| None)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let token = format!("demo-{}", uuid::Uuid::new_v4().simple());
    config.api_tokens.push((
        TokenConfig::new("demo", Scope::Admin, "STAMP_RELAY_DEMO_TOKEN"),
        Secret::new(token.clone()),
    ));
    // Webhooks go to the built-in receiver on loopback; the SSRF guard
    // stays on for everything else.
    config.delivery.allowed_cidrs = vec!["127.0.0.1/32".parse().expect("a valid block")];
    Ok((config, token))
}

/// What runs where, with commands to try.
fn banner(args: &DemoArgs, base_url: &str, store: &str, api: SocketAddr, token: &str, hooks: &str) {
    println!("stamp-relay demo");
    println!(
        "  upstream   {base_url}  (simulated PainChek, {} changes/s)",
        args.change_rate
    );
    println!("  store      {}", store);
    println!("  health     curl http://{api}/readyz");
    println!(
        "  replay     curl -H 'Authorization: Bearer {token}' 'http://{api}/v1/resources/demo/patients/events?after=0&limit=5'"
    );
    println!(
        "  live       curl -N -H 'Authorization: Bearer {token}' -H 'Accept: text/event-stream' http://{api}/v1/resources/demo/patients/events"
    );
    println!("  upstream   curl '{base_url}/patients/?sync=0&page_size=2'");
    println!(
        "  webhooks   a built-in receiver at {} is subscribed to every resource",
        hooks
    );
    println!(
        "Events follow as they land (time, op, resource, record, stamp), then their webhooks. Ctrl-C stops.\n"
    );
}

/// Subscribes the built-in receiver to everything through the API, as a
/// user would.
async fn subscribe(api: &str, token: &str, hooks: &receiver::Receiver) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    let body = serde_json::json!({"url": hooks.url, "resources": ["*"], "start": "beginning", "description": "demo receiver"});
    for _ in 0..100 {
        if let Ok(r) = http
            .post(format!("{api}/v1/subscriptions"))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
        {
            let created: serde_json::Value = r.error_for_status()?.json().await?;
            *hooks.secret.lock().unwrap_or_else(|p| p.into_inner()) =
                created["secret"].as_str().map(str::to_string);
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::bail!("the relay's API at {api} did not come up")
}

/// Prints events of every table as they land, until cancelled.
async fn feed(
    store: &dyn Store,
    tables: &[Table],
    cancel: &tokio_util::sync::CancellationToken,
) -> u64 {
    let mut after: HashMap<&Table, StreamId> = tables.iter().map(|t| (t, StreamId::ZERO)).collect();
    let mut seen = 0;
    while !cancel.is_cancelled() {
        for t in tables {
            let from = after[t];
            match store.read(t, from, 1000).await {
                Ok(events) => {
                    for e in &events {
                        println!("{}", feed_line(&t.resource, e));
                        seen += 1;
                    }
                    if let Some(last) = events.last() {
                        after.insert(t, last.id);
                    }
                }
                Err(e) => tracing::warn!(table = %t, error = %e, "cannot read events"),
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => {}
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
    seen
}

pub fn feed_line(resource: &str, e: &Event) -> String {
    let at = std::time::UNIX_EPOCH + Duration::from_millis(e.observed);
    let ts = humantime::format_rfc3339_millis(at).to_string();
    format!(
        "{}  {:<8}  {:<11}  {}  stamp {:<5} {}{}",
        &ts[11..23],
        e.op.as_str(),
        resource,
        e.record,
        e.stamp,
        label(&e.data),
        if e.snapshot { "  (initial load)" } else { "" }
    )
}

/// A human name for the record when it has one: "Last, First" or "name".
fn label(data: &str) -> String {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(data) else {
        return String::new();
    };
    let s = |k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or("");
    match (s("last_name"), s("first_name"), s("name")) {
        ("", _, "") => String::new(),
        ("", _, name) => name.to_string(),
        (last, first, _) => format!("{last}, {first}"),
    }
}
