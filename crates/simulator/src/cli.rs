//! `stamp-relay simulate`: the simulator as a command, with demo defaults.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;

use crate::{Faults, Order, SimAuth, SimConfig, Simulator};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AuthKind {
    None,
    Oauth,
    Basic,
    Bearer,
}

/// Serve a PainChek-compatible upstream for tests, the demo and benchmarks.
#[derive(Debug, Clone, clap::Args)]
pub struct SimArgs {
    /// Address to listen on (port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:8900")]
    pub listen: SocketAddr,
    /// Seed of the data, the writes and the fault draws.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Order of results in list answers.
    #[arg(long, value_enum, default_value_t = Order::Name)]
    pub order: Order,
    /// Larger page_size requests are capped to this.
    #[arg(long, default_value_t = 1000)]
    pub max_page_size: usize,
    /// Page size when a request gives none.
    #[arg(long, default_value_t = 50)]
    pub default_page_size: usize,
    /// Initial patients.
    #[arg(long, default_value_t = 200)]
    pub patients: usize,
    /// Initial assessments.
    #[arg(long, default_value_t = 1000)]
    pub assessments: usize,
    /// Initial users.
    #[arg(long, default_value_t = 40)]
    pub users: usize,
    /// Initial sites.
    #[arg(long, default_value_t = 5)]
    pub sites: usize,
    /// Initial comments.
    #[arg(long, default_value_t = 300)]
    pub comments: usize,
    /// Background random writes per second across tables (0 = none).
    #[arg(long, default_value_t = 0.0)]
    pub change_rate: f64,
    /// Probability that a write skips 1-3 stamps.
    #[arg(long, default_value_t = 0.0, value_parser = parse_rate)]
    pub stamp_gap_rate: f64,
    /// Records per stamp, as bulk updates give them (1 = a stamp per write).
    #[arg(long, default_value_t = 1)]
    pub stamp_group: usize,
    /// Authentication the list endpoints require.
    #[arg(long, value_enum, default_value_t = AuthKind::None)]
    pub auth: AuthKind,
    /// OAuth client id (with --auth oauth).
    #[arg(long, default_value = "demo-client")]
    pub client_id: String,
    /// OAuth client secret (with --auth oauth).
    #[arg(long, default_value = "demo-secret")]
    pub client_secret: String,
    /// Lifetime of issued OAuth tokens, e.g. "1h" or "30s".
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    pub token_ttl: Duration,
    /// Basic auth user name (with --auth basic).
    #[arg(long, default_value = "demo")]
    pub username: String,
    /// Basic auth password (with --auth basic).
    #[arg(long, default_value = "demo-password")]
    pub password: String,
    /// Static bearer token (with --auth bearer).
    #[arg(long, default_value = "demo-token")]
    pub token: String,
    /// Share of list requests answering 500, 502 or 503.
    #[arg(long, default_value_t = 0.0, value_parser = parse_rate)]
    pub error_rate: f64,
    /// Share of list requests answering 429 with Retry-After: 1.
    #[arg(long, default_value_t = 0.0, value_parser = parse_rate)]
    pub rate_limit_rate: f64,
    /// Share of list requests answered after --slow-ms.
    #[arg(long, default_value_t = 0.0, value_parser = parse_rate)]
    pub slow_rate: f64,
    /// Delay of slow answers, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub slow_ms: u64,
    /// Share of list requests whose JSON body is cut off halfway.
    #[arg(long, default_value_t = 0.0, value_parser = parse_rate)]
    pub truncate_rate: f64,
    /// Random writes to the table before answering each page after the first.
    #[arg(long, default_value_t = 0)]
    pub writes_per_page: usize,
    /// Updates in place to random records of the table before answering every page.
    #[arg(long, default_value_t = 0)]
    pub edits_per_page: usize,
    /// Share of writes that become visible only after --late-after more writes.
    #[arg(long, default_value_t = 0.0, value_parser = parse_rate)]
    pub late_rate: f64,
    /// Further writes to a table before a late write becomes visible.
    #[arg(long, default_value_t = 5)]
    pub late_after: u32,
}

fn parse_rate(text: &str) -> Result<f64, String> {
    let rate: f64 = text
        .parse()
        .map_err(|_| format!("'{text}' is not a number"))?;
    if (0.0..=1.0).contains(&rate) {
        Ok(rate)
    } else {
        Err(format!("{rate} is not a probability between 0 and 1"))
    }
}

impl SimArgs {
    pub fn to_config(&self) -> SimConfig {
        let auth = match self.auth {
            AuthKind::None => SimAuth::None,
            AuthKind::Oauth => SimAuth::OAuth {
                client_id: self.client_id.clone(),
                client_secret: self.client_secret.clone(),
                token_ttl: self.token_ttl,
            },
            AuthKind::Basic => SimAuth::Basic {
                username: self.username.clone(),
                password: self.password.clone(),
            },
            AuthKind::Bearer => SimAuth::Bearer {
                token: self.token.clone(),
            },
        };
        let initial = [
            ("sites", self.sites),
            ("users", self.users),
            ("patients", self.patients),
            ("assessments", self.assessments),
            ("comments", self.comments),
        ];
        SimConfig {
            seed: self.seed,
            order: self.order,
            max_page_size: self.max_page_size,
            default_page_size: self.default_page_size,
            auth,
            initial: initial
                .iter()
                .map(|&(table, n)| (table.to_owned(), n))
                .collect(),
            change_rate: self.change_rate,
            faults: Faults {
                error_rate: self.error_rate,
                rate_limit_rate: self.rate_limit_rate,
                slow_rate: self.slow_rate,
                slow_ms: self.slow_ms,
                truncate_rate: self.truncate_rate,
                writes_per_page: self.writes_per_page,
                edits_per_page: self.edits_per_page,
                late_rate: self.late_rate,
                late_after: self.late_after,
                ..Faults::default()
            },
            stamp_gap_rate: self.stamp_gap_rate,
            stamp_group: self.stamp_group,
        }
    }
}

/// Generates the records, binds, announces the base URL on stdout, and
/// serves until `shutdown`. Binding comes last so that an open port means
/// the simulator is ready, which is what scripts and the bench wait for.
pub async fn run(args: SimArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    // A million records take seconds to generate: keep that off the runtime's threads.
    let config = args.to_config();
    let sim = tokio::task::spawn_blocking(move || Simulator::new(config))
        .await
        .context("generating the simulator's records failed")?;
    tracing::info!(elapsed = ?started.elapsed(), "simulator generated its initial records");
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {}; pick another address with --listen",
                args.listen
            )
        })?;
    let addr = listener
        .local_addr()
        .context("cannot read the simulator's bound address")?;
    println!("simulator listening on http://{addr}/api");
    sim.serve(listener, shutdown)
        .await
        .context("simulator stopped serving")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        sim: SimArgs,
    }

    #[test]
    fn flags_become_a_config() {
        let args = [
            "simulate",
            "--auth",
            "oauth",
            "--token-ttl",
            "30s",
            "--patients",
            "7",
        ];
        let config = Cli::try_parse_from(args.into_iter().chain(["--error-rate", "0.5"]))
            .unwrap()
            .sim
            .to_config();
        let expected = SimAuth::OAuth {
            client_id: "demo-client".into(),
            client_secret: "demo-secret".into(),
            token_ttl: Duration::from_secs(30),
        };
        assert_eq!(config.auth, expected);
        assert!(config.initial.contains(&("patients".to_owned(), 7)));
        assert_eq!(
            (config.faults.error_rate, config.faults.late_after),
            (0.5, 5)
        );
        assert_eq!(config.order, Order::Name);
        assert!(Cli::try_parse_from(["simulate", "--late-rate", "2"]).is_err());
    }

    #[tokio::test]
    async fn run_serves_until_shutdown() {
        let cli = Cli::try_parse_from(["simulate", "--listen", "127.0.0.1:0", "--patients", "3"]);
        let shutdown = CancellationToken::new();
        let running = tokio::spawn(run(cli.unwrap().sim, shutdown.clone()));
        tokio::time::sleep(Duration::from_millis(50)).await;
        shutdown.cancel();
        running.await.unwrap().unwrap();
    }
}
