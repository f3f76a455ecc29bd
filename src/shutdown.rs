//! Process shutdown: one `CancellationToken` cancelled by Ctrl-C or SIGTERM,
//! handed down to everything that runs (the relay, the simulator, the demo).

use tokio_util::sync::CancellationToken;

/// A token cancelled by Ctrl-C or SIGTERM.
pub fn shutdown_signal() -> CancellationToken {
    let cancel = CancellationToken::new();
    let c = cancel.clone();
    tokio::spawn(async move {
        let term = async {
            #[cfg(unix)]
            if let Ok(mut s) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            {
                s.recv().await;
                return;
            }
            std::future::pending::<()>().await
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term => {}
        }
        tracing::info!("stopping: finishing the current chunk and in-flight work");
        c.cancel();
    });
    cancel
}
