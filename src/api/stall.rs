//! What hyper does not time on a connection: an answer the client does not
//! take (`api.write_timeout`) and a connection on which nothing moves
//! (`api.idle_timeout`). The socket is wrapped so every read and write
//! notes its progress in an [`Activity`]; a watchdog beside the connection
//! ends it once a write has waited too long or nothing moved for too long.
//! Without this a client that pipelines requests and never reads its
//! answers holds a connection slot forever (the header-read timeout only
//! runs while hyper waits for a request).

use std::{
    io,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    time::Instant,
};
use tokio_util::sync::CancellationToken;

/// Progress of one connection, in milliseconds since the server started.
#[derive(Debug)]
pub struct Activity {
    epoch: Instant,
    /// When a byte last moved, either way.
    last: AtomicU64,
    /// Since when a write has been waiting for the client to read, plus
    /// one (zero: no write waits).
    stalled_since: AtomicU64,
    /// Cancelled to end the connection (timeout or eviction).
    pub end: CancellationToken,
}

impl Activity {
    pub fn new(epoch: Instant) -> Arc<Activity> {
        let a = Activity {
            epoch,
            last: AtomicU64::new(0),
            stalled_since: AtomicU64::new(0),
            end: CancellationToken::new(),
        };
        a.touch();
        Arc::new(a)
    }

    fn now(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn touch(&self) {
        self.last.store(self.now(), Ordering::Relaxed);
    }

    fn wrote(&self) {
        self.stalled_since.store(0, Ordering::Relaxed);
        self.touch();
    }

    fn write_waits(&self) {
        let now = self.now() + 1;
        let _ = self
            .stalled_since
            .compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// How long a write has been waiting for the client, if one is.
    pub fn stalled_for(&self) -> Option<Duration> {
        match self.stalled_since.load(Ordering::Relaxed) {
            0 => None,
            since => Some(Duration::from_millis(self.now().saturating_sub(since - 1))),
        }
    }

    fn idle_for(&self) -> Duration {
        Duration::from_millis(self.now().saturating_sub(self.last.load(Ordering::Relaxed)))
    }
}

/// Ends the connection once a write waited `write_timeout` or nothing
/// moved for `idle_timeout`; returns which.
pub async fn watchdog(
    a: &Activity,
    write_timeout: Duration,
    idle_timeout: Duration,
) -> &'static str {
    let tick = (write_timeout.min(idle_timeout) / 4).max(Duration::from_millis(10));
    loop {
        tokio::select! {
            () = tokio::time::sleep(tick) => {}
            () = a.end.cancelled() => return "evicted",
        }
        if a.stalled_for().is_some_and(|d| d >= write_timeout) {
            return "write_timeout";
        }
        if a.idle_for() >= idle_timeout {
            return "idle_timeout";
        }
    }
}

/// The open connections, so a new one can take the slot of one whose
/// client stopped reading.
#[derive(Debug, Default)]
pub struct Open(Mutex<Vec<std::sync::Weak<Activity>>>);

impl Open {
    pub fn add(&self, a: &Arc<Activity>) {
        let mut v = self.0.lock().unwrap_or_else(|e| e.into_inner());
        v.retain(|w| w.strong_count() > 0);
        v.push(Arc::downgrade(a));
    }

    /// Ends the connection whose write has waited longest, if it waited at
    /// least `grace`; whether one was ended.
    pub fn evict_stalled(&self, grace: Duration) -> bool {
        let v = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let worst = v
            .iter()
            .filter_map(|w| w.upgrade())
            .filter_map(|a| a.stalled_for().map(|d| (d, a)))
            .filter(|(d, a)| *d >= grace && !a.end.is_cancelled())
            .max_by_key(|(d, _)| *d);
        match worst {
            Some((_, a)) => {
                a.end.cancel();
                true
            }
            None => false,
        }
    }
}

/// A socket that reports its progress to an [`Activity`].
pub struct Watched<T> {
    pub io: T,
    pub activity: Arc<Activity>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write(cx, buf);
        self.note(&r);
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.note(&r);
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl<T> Watched<T> {
    fn note<R>(&self, r: &Poll<R>) {
        match r {
            Poll::Pending => self.activity.write_waits(),
            Poll::Ready(_) => self.activity.wrote(),
        }
    }
}
