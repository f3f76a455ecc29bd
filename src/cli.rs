//! The `stamp-relay` command line: parsing and the small commands.

use std::{io::IsTerminal, path::PathBuf, process::ExitCode, time::Duration};

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use stamp_relay_simulator::SimArgs;
use tokio_util::sync::CancellationToken;

use crate::{
    app::Relay, config::Config, demo::DemoArgs, shutdown::shutdown_signal, status::Query,
    telemetry::Telemetry,
};

mod status;

#[derive(Parser)]
#[command(
    name = "stamp-relay",
    version,
    about = "Update-stamp delta feeds to exactly-once change events"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log format on standard error.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Poll every table continuously and serve the HTTP API.
    Serve {
        #[arg(long)]
        config: PathBuf,
    },
    /// Poll every table once, print a summary, exit non-zero on failure.
    Sync {
        /// Required: `sync` always runs one pass (use `serve` to keep polling).
        #[arg(long)]
        once: bool,
        /// Run one reconcile sweep per table instead: a full `sync=0` walk
        /// compared with the record index, appending what the polls missed.
        #[arg(long)]
        reconcile: bool,
        #[arg(long)]
        config: PathBuf,
    },
    /// Run the simulator and the relay together and show events as they land.
    Demo(DemoArgs),
    /// Serve a PainChek-compatible upstream for tests, demos and benchmarks.
    Simulate(Box<SimArgs>),
    /// Show sources and tables by health (failing first) and subscriptions, from the store.
    Status {
        #[arg(long)]
        config: PathBuf,
        /// Only sources whose name contains this.
        #[arg(long)]
        search: Option<String>,
        /// Only sources in this health state (healthy, degraded, failing, ...).
        #[arg(long)]
        state: Option<String>,
        /// The page of sources to show (50 a page).
        #[arg(long)]
        page: Option<String>,
    },
    /// Validate a configuration file and print what is wrong, or "ok".
    CheckConfig {
        #[arg(long)]
        config: PathBuf,
    },
    /// Print the configuration reference: every key with its default and meaning.
    Defaults,
    /// Measure load throughput against a raw baseline and print the figures.
    Bench(crate::bench::BenchArgs),
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let quiet = matches!(
        cli.command,
        Command::Demo(_) | Command::CheckConfig { .. } | Command::Defaults
    );
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let telemetry = {
        let _in_runtime = rt.enter();
        init_logging(
            cli.log_format,
            if quiet { "warn" } else { "info" },
            &cli.command,
        )
    };
    let code = match rt.block_on(run(cli.command)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    };
    if let Some(t) = telemetry {
        t.shutdown();
    }
    code
}

/// Logs on standard error, and spans to `[telemetry] otlp_endpoint` for the
/// commands that poll (a configuration that does not load is reported by
/// the command itself).
fn init_logging(format: LogFormat, default: &str, command: &Command) -> Option<Telemetry> {
    use tracing_subscriber::{EnvFilter, Layer, layer::SubscriberExt, util::SubscriberInitExt};
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let config = match command {
        Command::Serve { config } | Command::Sync { config, .. } => {
            crate::config::load(Some(config), crate::declared::problems).ok()
        }
        _ => None,
    };
    let (telemetry, problem) = match config.map(|c| Telemetry::start(&c.telemetry)) {
        Some(Ok(t)) => (t, None),
        Some(Err(e)) => (None, Some(e)),
        None => (None, None),
    };
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = match format {
        LogFormat::Text => fmt.with_ansi(std::io::stderr().is_terminal()).boxed(),
        LogFormat::Json => fmt.json().boxed(),
    };
    tracing_subscriber::registry()
        .with(telemetry.as_ref().map(|t| t.layer()))
        .with(fmt.with_filter(filter))
        .init();
    if let Some(e) = problem {
        tracing::warn!("no spans are exported: {e:#}");
    }
    telemetry
}

/// `check-config`: "ok" with what the file declares, or every problem.
fn check_config(path: &std::path::Path) -> ExitCode {
    let refused = |c: &crate::config::Config| {
        let problems = crate::delivery::Supervisor::policy(c).declared_problems(c);
        match problems.is_empty() {
            true => Ok(()),
            false => Err(crate::config::ConfigError { problems }),
        }
    };
    let c = match crate::config::load(Some(path), crate::declared::problems)
        .and_then(|c| refused(&c).map(|()| c))
    {
        Ok(c) => c,
        Err(e) => {
            println!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let tables: usize = c.sources.iter().map(|s| s.settings.resources.len()).sum();
    println!(
        "ok: {} source(s), {tables} target(s), {} subscription(s) from the file",
        c.sources.len(),
        c.subscriptions.len()
    );
    if c.api_tokens.is_empty() {
        println!(
            "warning: api.tokens: no [[api.tokens]], so every /v1 and /compat route and the \
             status page answer 401; add one (name, scope = \"admin\" or \"read\", token_env)"
        );
    }
    for s in &c.subscriptions {
        let url = crate::subscription::url_for_logs(&s.settings.url);
        let resources = s.settings.resources.join(", ");
        println!("  subscription {}: {url} ({resources})", s.settings.id);
    }
    ExitCode::SUCCESS
}

async fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::CheckConfig { config } => Ok(check_config(&config)),
        Command::Defaults => {
            print!("{}", crate::config::REFERENCE);
            Ok(ExitCode::SUCCESS)
        }
        Command::Serve { config } => {
            let config = crate::config::load(Some(&config), crate::declared::problems)?;
            let listener = tokio::net::TcpListener::bind(config.api.listen)
                .await
                .with_context(|| format!("cannot listen on {} (api.listen)", config.api.listen))?;
            let relay = Relay::build(config).await?;
            tracing::info!(store = %relay.store.describe(), listen = %listener.local_addr()?,
                tables = relay.pollers.len(), "stamp-relay serving");
            relay.run(listener, shutdown_signal()).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Sync {
            once,
            reconcile,
            config,
        } => {
            if reconcile {
                return reconcile_once(crate::config::load(
                    Some(&config),
                    crate::declared::problems,
                )?)
                .await;
            }
            if !once {
                anyhow::bail!(
                    "sync runs one pass and needs --once (or --reconcile); use `serve` to keep polling"
                );
            }
            sync_once(crate::config::load(
                Some(&config),
                crate::declared::problems,
            )?)
            .await
        }
        Command::Status {
            config,
            search,
            state,
            page,
        } => {
            let query = Query::parse(search.as_deref(), state.as_deref(), page.as_deref())
                .map_err(|(field, e)| anyhow::anyhow!("--{field}: {e}"))?;
            let config = crate::config::load_for_store(Some(&config))?;
            status::run(config, &query).await
        }
        Command::Demo(args) => crate::demo::run(args).await.map(|()| ExitCode::SUCCESS),
        Command::Simulate(args) => {
            stamp_relay_simulator::run(*args, shutdown_signal()).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench(args) => crate::bench::run(args).await.map(|()| ExitCode::SUCCESS),
    }
}

async fn sync_once(mut config: Config) -> anyhow::Result<ExitCode> {
    config.store.instance_id = crate::app::one_off_id(&config.store.instance_id);
    let mut relay = Relay::build(config).await?;
    let cancel = shutdown_signal();
    let bars = progress_bars(&relay);
    let results = relay.sync_once(&cancel).await;
    if let Some((stop, task)) = bars {
        stop.cancel();
        let _ = task.await;
    }
    println!(
        "{:<32} {:>8} {:>8} {:>9} {:>8} {:>8} {:>6} {:>6} {:>7}  cursor / error",
        "target",
        "fetched",
        "created",
        "updated",
        "deleted",
        "restored",
        "walks",
        "pages",
        "settle"
    );
    let mut failed = false;
    for (t, r) in &results {
        match r {
            Ok(r) => println!(
                "{:<32} {:>8} {:>8} {:>9} {:>8} {:>8} {:>6} {:>6} {:>7}  {}",
                t.to_string(),
                r.fetched,
                r.outcome.created,
                r.outcome.updated,
                r.outcome.deleted,
                r.outcome.restored,
                r.walks,
                r.pages,
                r.settle_pages,
                if r.leased {
                    r.after.to_string()
                } else {
                    "skipped: another instance holds the lease".into()
                }
            ),
            Err(e) => {
                failed = true;
                error_row(t, &[8, 8, 9, 8, 8, 6, 6, 7], e);
            }
        }
    }
    Ok(exit_code(failed))
}

/// A summary row for a table that failed: dashes in columns of `widths`.
fn error_row(t: &crate::store::Table, widths: &[usize], e: &dyn std::fmt::Display) {
    let dashes: Vec<String> = widths.iter().map(|w| format!("{:>w$}", "-")).collect();
    println!("{:<32} {}  error: {e}", t.to_string(), dashes.join(" "));
}

fn exit_code(failed: bool) -> ExitCode {
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// `sync --reconcile`: one reconcile sweep of every table.
async fn reconcile_once(mut config: Config) -> anyhow::Result<ExitCode> {
    config.store.instance_id = crate::app::one_off_id(&config.store.instance_id);
    let mut relay = Relay::build(config).await?;
    let results = relay.reconcile_once(&shutdown_signal()).await;
    println!(
        "{:<32} {:>6} {:>9} {:>9}  note",
        "target", "pages", "compared", "repaired"
    );
    let mut failed = false;
    for (t, r) in &results {
        match r {
            Ok(r) if r.swept => println!(
                "{:<32} {:>6} {:>9} {:>9}",
                t.to_string(),
                r.pages,
                r.compared,
                r.repaired
            ),
            Ok(r) => {
                let note = if r.leased {
                    "skipped: the initial load has not completed"
                } else {
                    // A serving relay holds the lease: it sweeps after its next poll.
                    relay.store.request_reconcile(t).await?;
                    "requested: the instance polling it sweeps after its next poll"
                };
                println!(
                    "{:<32} {:>6} {:>9} {:>9}  {note}",
                    t.to_string(),
                    "-",
                    "-",
                    "-"
                );
            }
            Err(e) => {
                failed = true;
                error_row(t, &[6, 9, 9], e);
            }
        }
    }
    Ok(exit_code(failed))
}

/// A spinner per table while `sync --once` runs, only on a terminal.
fn progress_bars(relay: &Relay) -> Option<(CancellationToken, tokio::task::JoinHandle<()>)> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let multi = indicatif::MultiProgress::new();
    let style = indicatif::ProgressStyle::with_template("{spinner} {prefix:<32} {msg}").ok()?;
    let bars: Vec<_> = relay
        .pollers
        .iter()
        .map(|p| {
            let bar = multi.add(indicatif::ProgressBar::new_spinner().with_style(style.clone()));
            bar.set_prefix(p.table.to_string());
            (bar, p.status.clone())
        })
        .collect();
    let stop = CancellationToken::new();
    let s = stop.clone();
    let task = tokio::spawn(async move {
        use std::sync::atomic::Ordering::Relaxed;
        loop {
            for (bar, st) in &bars {
                bar.set_message(format!(
                    "{} pages, {} records fetched, {} events appended",
                    st.pages.load(Relaxed),
                    st.fetched.load(Relaxed),
                    st.appended.load(Relaxed)
                ));
                bar.tick();
            }
            tokio::select! {
                _ = s.cancelled() => break,
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
        for (bar, _) in &bars {
            bar.finish_and_clear();
        }
    });
    Some((stop, task))
}
