//! The accept loop, written out instead of `axum::serve` for the limits
//! it lacks: a header-read timeout (hyper enforces one only with a timer),
//! a write and an idle timeout (`stall.rs`) and a cap on open connections.
//! Each connection task holds a semaphore permit, so the cap needs no
//! counter; past it, one more connection is accepted and waits for a slot,
//! and takes the slot of a connection whose client has not taken its
//! answer for a while, so clients that never read cannot keep `/healthz`
//! (or anyone) out; the rest wait in the listen backlog.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use axum::{Extension, Router, extract::ConnectInfo};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::{conn::auto::Builder, graceful::GracefulShutdown},
    service::TowerToHyperService,
};
use tokio::{
    net::TcpListener,
    sync::{OwnedSemaphorePermit, Semaphore},
};
use tokio_util::sync::CancellationToken;
use tower_layer::Layer;

use super::stall::{self, Activity, Open, Watched};

/// The `[api]` limits the accept loop enforces.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub header_read_timeout: Duration,
    pub max_connections: usize,
    /// An answer the client has not taken within this closes the connection.
    pub write_timeout: Duration,
    /// A connection on which nothing moved for this long is closed.
    pub idle_timeout: Duration,
}

impl Limits {
    /// How long a write must have waited before, with every slot taken,
    /// its connection gives its slot to a new one.
    fn evict_after(&self) -> Duration {
        self.write_timeout.min(Duration::from_secs(1))
    }
}

/// Serves `router` on `listener` until `cancel`, then lets open requests
/// finish (live streams end on the same token).
pub async fn run(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let open = Open::default();
    let epoch = tokio::time::Instant::now();
    let builder = http1(&limits);
    let graceful = GracefulShutdown::new();
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = cancel.cancelled() => break,
        };
        let Some(permit) = slot(&permits, &open, &limits, &cancel).await? else {
            break;
        };
        // Live streams and pages go out as soon as they are written, not
        // held back (Nagle) until the client acknowledges the last write.
        let _ = stream.set_nodelay(true);
        // A socket that lost its peer already is about to fail anyway.
        let peer = stream
            .peer_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        let activity = Activity::new(epoch);
        open.add(&activity);
        let io = Watched {
            io: stream,
            activity: activity.clone(),
        };
        // The client's address, for slowing failed logins (auth.rs).
        let service = TowerToHyperService::new(Extension(ConnectInfo(peer)).layer(router.clone()));
        let conn = builder
            .serve_connection(TokioIo::new(io), service)
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            tokio::select! {
                ended = conn => if let Err(e) = ended {
                    tracing::trace!(error = %e, "connection ended with an error");
                },
                why = stall::watchdog(&activity, limits.write_timeout, limits.idle_timeout) => {
                    tracing::debug!(reason = why, "connection closed");
                }
            }
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// HTTP/1 only (and no upgrades, which would ignore that): the auto
/// builder would first wait, with no time limit, for enough bytes to tell
/// HTTP/2 from HTTP/1, a slow client's way around the header timeout.
/// The API's clients speak HTTP/1.
fn http1(limits: &Limits) -> Builder<TokioExecutor> {
    let mut builder = Builder::new(TokioExecutor::new()).http1_only();
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    builder
}

/// A connection slot for an accepted connection: a free one, or, while
/// every slot is taken, the slot of the connection whose answer has waited
/// longest for its client. `None` once the server stops.
async fn slot(
    permits: &Arc<Semaphore>,
    open: &Open,
    limits: &Limits,
    cancel: &CancellationToken,
) -> anyhow::Result<Option<OwnedSemaphorePermit>> {
    let tick = limits.evict_after() / 4;
    loop {
        tokio::select! {
            p = permits.clone().acquire_owned() => return Ok(Some(p?)),
            () = cancel.cancelled() => return Ok(None),
            () = tokio::time::sleep(tick) => {
                open.evict_stalled(limits.evict_after());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use axum::{Router, middleware, routing::get};
    use tokio::net::TcpListener;
    use tokio_util::sync::CancellationToken;

    use crate::api::{server, time_limit};

    #[tokio::test]
    async fn an_answer_past_the_request_timeout_is_a_503_problem() {
        let app = Router::new()
            .route("/never", get(std::future::pending::<&'static str>))
            .layer(middleware::from_fn_with_state(
                Duration::from_millis(50),
                time_limit,
            ));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cancel = CancellationToken::new();
        let limits = server::Limits {
            header_read_timeout: Duration::from_secs(10),
            max_connections: 4,
            write_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
        };
        tokio::spawn(server::run(listener, app, limits, cancel.clone()));
        let http = reqwest::Client::builder().no_proxy().build().unwrap();
        let r = http
            .get(format!("http://{addr}/never"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 503);
        assert_eq!(r.headers()["content-type"], "application/problem+json");
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["code"], "timeout");
        cancel.cancel();
    }
}
