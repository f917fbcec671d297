//! Accepting client connections without letting hostile clients exhaust the gateway: every
//! listener that accepts from the network (the outbound HTTP listener, the per-service TCP
//! ports, DNS over TCP) goes through [`Listener`].
//!
//! ```text
//!  accept ─ok─▶ slot free? ─yes─▶ Accepted::Conn (holds a slot until the connection ends)
//!    │                     └─no──▶ Accepted::Refused (HTTP: "503 too many client connections";
//!    │                                                 TCP: closed) + refusals_total{reason="max_connections"}
//!    └─err─▶ per-connection error (aborted, reset): next accept at once
//!            EMFILE/ENFILE/ENOMEM/ENOBUFS/other: sleep, doubling 10 ms .. 1 s, until one succeeds
//!            (one aggregated WARN per interval, refusals_total{reason="accept_error"})
//! ```
//!
//! Near the fd limit an accept loop that retries at once spins a core and logs every failure;
//! backing off lets connections close and descriptors come back, and the cap keeps the
//! gateway below the limit in the first place.
//!
//! HTTP connections also get two timers ([`ConnTimer`], a sans-IO state machine): the head of a
//! request must arrive within `header_read_timeout` of its first byte, and a connection with no
//! request in progress is closed after `idle_timeout`. hyper's own `header_read_timeout`
//! (1.x) starts when hyper begins waiting for a head, which includes the idle time between
//! keep-alive requests, so it cannot tell a slow head from an idle connection; hence ours.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

pub(crate) use federation::ratelog::Throttled;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::metrics::{ListenerLabels, Metrics};

const BACKOFF_MIN: Duration = Duration::from_millis(10);
const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// Refused HTTP clients being told so at once; beyond this they are just closed.
const MAX_REFUSING: usize = 32;
/// How long a refused HTTP client may take to read its 503 before the socket closes.
const REFUSE_LINGER: Duration = Duration::from_secs(1);

/// Client connection limits, from the `[dataplane]` config section.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientLimits {
    /// Client connections open at once on the outbound listener and the TCP service ports
    /// together; more are refused.
    pub max_connections: usize,
    /// The head of an HTTP request must arrive within this long of its first byte.
    pub header_read_timeout: Duration,
    /// An HTTP connection with no request in progress is closed after this long.
    pub idle_timeout: Duration,
}

impl Default for ClientLimits {
    fn default() -> Self {
        Self {
            max_connections: 10_000,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
        }
    }
}

/// Descriptors kept back from client connections for everything else the process opens:
/// tunnels, connections to endpoints, the store's files, the admin API and Raft.
const FD_RESERVE: u64 = 256;

/// The client connection cap the gateway can honour: `configured`, lowered if together with
/// `other` (the DNS-over-TCP cap) it would leave fewer than [`FD_RESERVE`] of `fd_limit`
/// descriptors. Running out of descriptors stops more than the listeners (the store stops when
/// it cannot open a file), so the cap must bite first. At least 1.
pub(crate) fn fd_bounded(configured: usize, other: usize, fd_limit: Option<u64>) -> usize {
    let Some(limit) = fd_limit else {
        return configured;
    };
    let other = u64::try_from(other).unwrap_or(u64::MAX);
    let room = limit
        .saturating_sub(FD_RESERVE)
        .saturating_sub(other)
        .max(1);
    configured.min(usize::try_from(room).unwrap_or(usize::MAX))
}

/// The soft limit on open files (`ulimit -n`) from `/proc/self/limits`; none where unlimited
/// or unknown (not Linux).
pub(crate) fn open_files_limit() -> Option<u64> {
    parse_open_files_limit(&std::fs::read_to_string("/proc/self/limits").ok()?)
}

fn parse_open_files_limit(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.trim_start_matches("Max open files")
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Which listener, as the `listener` metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    OutboundHttp,
    OutboundTcp,
    DnsTcp,
    Workload,
}

impl Kind {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Kind::OutboundHttp => "outbound_http",
            Kind::OutboundTcp => "outbound_tcp",
            Kind::DnsTcp => "dns_tcp",
            Kind::Workload => "workload_mtls",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Kind::OutboundHttp => "outbound HTTP listener",
            Kind::OutboundTcp => "outbound TCP service listener",
            Kind::DnsTcp => "DNS TCP listener",
            Kind::Workload => "workload mTLS listener",
        }
    }
}

/// The connection budget shared by several listeners (the outbound HTTP listener and every TCP
/// service port draw on one).
#[derive(Clone)]
pub(crate) struct Slots {
    semaphore: Arc<Semaphore>,
    max: usize,
    /// Refused clients, logged together.
    refused: Arc<Throttled>,
}

impl Slots {
    pub(crate) fn new(max: usize) -> Self {
        Self {
            semaphore: Arc::new(Semaphore::new(max)),
            max,
            refused: Throttled::new(move |s| {
                tracing::warn!("client connections refused, at most {max} open at once: {s}",)
            }),
        }
    }
}

/// A listener that backs off on accept errors and caps open connections.
pub(crate) struct Listener {
    tcp: TcpListener,
    kind: Kind,
    slots: Slots,
    metrics: Metrics,
    errors: Arc<Throttled>,
    backoff: Duration,
}

/// One accepted connection.
pub(crate) enum Accepted {
    /// Within the cap: serve it, holding the slot until it ends.
    Conn(TcpStream, SocketAddr, Slot),
    /// Over the cap: tell the client (if the protocol can) and close.
    Refused(TcpStream),
}

/// A place among the open connections, given back (and the gauge lowered) on drop.
pub(crate) struct Slot {
    _permit: OwnedSemaphorePermit,
    _open: crate::metrics::OpenConnection,
}

impl Listener {
    pub(crate) fn new(tcp: TcpListener, kind: Kind, slots: Slots, metrics: Metrics) -> Self {
        Self {
            tcp,
            kind,
            slots,
            metrics,
            errors: Throttled::new(move |s| {
                tracing::warn!("{} accept errors: {s}", kind.describe())
            }),
            backoff: BACKOFF_MIN,
        }
    }

    /// The next connection. Accept errors are never returned: they are counted, logged
    /// (aggregated) and waited out.
    pub(crate) async fn accept(&mut self) -> Accepted {
        loop {
            match self.tcp.accept().await {
                Ok((tcp, remote)) => {
                    self.backoff = BACKOFF_MIN;
                    return match self.slots.semaphore.clone().try_acquire_owned() {
                        Ok(permit) => {
                            let open = self.metrics.open_client(self.labels());
                            Accepted::Conn(
                                tcp,
                                remote,
                                Slot {
                                    _permit: permit,
                                    _open: open,
                                },
                            )
                        }
                        Err(_) => {
                            self.refused("max_connections");
                            if self.slots.refused.event(|| format!("from {remote}")) {
                                tracing::warn!(
                                    listener = self.kind.label(),
                                    %remote,
                                    max = self.slots.max,
                                    "client connection refused: too many client connections"
                                );
                            }
                            Accepted::Refused(tcp)
                        }
                    };
                }
                Err(e) if is_connection_error(&e) => {
                    // That client's problem, not ours: the next accept may well succeed.
                    tracing::debug!(listener = self.kind.label(), error = %e, "accept failed");
                }
                Err(e) => {
                    self.refused("accept_error");
                    let backoff = self.backoff;
                    if self.errors.event(|| e.to_string()) {
                        tracing::warn!(
                            listener = self.kind.label(),
                            error = %e,
                            ?backoff,
                            "cannot accept client connections; backing off"
                        );
                    }
                    tokio::time::sleep(backoff).await;
                    self.backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
    }

    fn labels(&self) -> ListenerLabels {
        ListenerLabels {
            listener: self.kind.label(),
        }
    }

    fn refused(&self, reason: &'static str) {
        self.metrics.count_refusal(self.kind.label(), reason);
    }
}

/// Errors that concern one pending connection, not the listener (as hyper and tokio's own
/// servers treat them).
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// What an HTTP client over the cap reads before the connection closes.
const TOO_MANY_BODY: &str = "causeway: the gateway has too many client connections; retry later\n";

/// Answers an HTTP client over the cap with a 503 and closes, off the accept path. At most
/// [`MAX_REFUSING`] at once; beyond that the connection is simply closed.
pub(crate) fn refuse_http(tcp: TcpStream, refusing: &Arc<Semaphore>) {
    let Ok(permit) = refusing.clone().try_acquire_owned() else {
        return;
    };
    tokio::spawn(async move {
        let _permit = permit;
        let mut tcp = tcp;
        let answer = format!(
            "HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\n\
             x-causeway-error: true\r\nretry-after: 1\r\nconnection: close\r\n\
             content-length: {}\r\n\r\n{TOO_MANY_BODY}",
            TOO_MANY_BODY.len()
        );
        let _ = tokio::time::timeout(REFUSE_LINGER, async {
            let _ = tcp.write_all(answer.as_bytes()).await;
            let _ = tcp.shutdown().await;
            // Closing with the request unread would reset the connection, which can destroy
            // the answer before the client reads it: drain a little until they close.
            let mut sink = [0u8; 1024];
            let mut left: usize = 16 * 1024;
            while left > 0 {
                match tcp.read(&mut sink).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => left = left.saturating_sub(n),
                }
            }
        })
        .await;
    });
}

/// A new semaphore for [`refuse_http`].
pub(crate) fn refusing() -> Arc<Semaphore> {
    Arc::new(Semaphore::new(MAX_REFUSING))
}

/// Where an HTTP/1.1 connection is between requests, and when it must be closed.
///
/// ```text
///  Idle{since} ──first byte──▶ Head{since} ──head parsed──▶ Busy ──response sent──▶ Idle{now}
///   └ idle_timeout             └ header_read_timeout         (no timer: the request's own)
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ConnTimer {
    header_read_timeout: Duration,
    idle_timeout: Duration,
    phase: Phase,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Idle { since: std::time::Instant },
    Head { since: std::time::Instant },
    Busy,
}

/// Why a connection was closed by its timer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Expired {
    Idle,
    Header,
}

impl Expired {
    pub(crate) fn reason(self) -> &'static str {
        match self {
            Expired::Idle => "idle_timeout",
            Expired::Header => "header_timeout",
        }
    }
}

impl ConnTimer {
    pub(crate) fn new(limits: &ClientLimits, now: std::time::Instant) -> Self {
        Self {
            header_read_timeout: limits.header_read_timeout,
            idle_timeout: limits.idle_timeout,
            phase: Phase::Idle { since: now },
        }
    }

    /// Bytes arrived from the client.
    pub(crate) fn read(&mut self, now: std::time::Instant) {
        if let Phase::Idle { .. } = self.phase {
            self.phase = Phase::Head { since: now };
        }
    }

    /// A request's head has been parsed.
    pub(crate) fn request(&mut self) {
        self.phase = Phase::Busy;
    }

    /// The response to the request in progress has been sent (or abandoned).
    pub(crate) fn responded(&mut self, now: std::time::Instant) {
        self.phase = Phase::Idle { since: now };
    }

    /// When the connection must close, and why; none while a request is in progress.
    pub(crate) fn deadline(&self) -> Option<(std::time::Instant, Expired)> {
        match self.phase {
            Phase::Idle { since } => Some((since + self.idle_timeout, Expired::Idle)),
            Phase::Head { since } => Some((since + self.header_read_timeout, Expired::Header)),
            Phase::Busy => None,
        }
    }

    /// Whether the connection must close at `now`.
    pub(crate) fn expired(&self, now: std::time::Instant) -> Option<Expired> {
        self.deadline()
            .and_then(|(at, why)| (now >= at).then_some(why))
    }
}

/// A [`ConnTimer`] shared by a connection's IO, its service and its watchdog.
#[derive(Clone)]
pub(crate) struct SharedTimer(Arc<(Mutex<ConnTimer>, Notify)>);

impl SharedTimer {
    pub(crate) fn new(limits: &ClientLimits) -> Self {
        let timer = ConnTimer::new(limits, Instant::now().into_std());
        Self(Arc::new((Mutex::new(timer), Notify::new())))
    }

    fn update(&self, f: impl FnOnce(&mut ConnTimer)) {
        let changed = {
            let mut timer = self.0.0.lock().unwrap_or_else(PoisonError::into_inner);
            let before = *timer;
            f(&mut timer);
            *timer != before
        };
        if changed {
            self.0.1.notify_one();
        }
    }

    /// Marks a request in progress until the returned guard drops (put it in the response
    /// body, so it drops when the response has been sent).
    pub(crate) fn request(&self) -> Busy {
        self.update(ConnTimer::request);
        Busy(self.clone())
    }

    /// Resolves when the connection must close, with the reason.
    pub(crate) async fn expired(&self) -> Expired {
        loop {
            let deadline = self
                .0
                .0
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .deadline();
            let changed = self.0.1.notified();
            match deadline {
                Some((at, _)) => {
                    tokio::select! {
                        () = tokio::time::sleep_until(Instant::from_std(at)) => {}
                        () = changed => continue,
                    }
                }
                None => {
                    changed.await;
                    continue;
                }
            }
            let now = Instant::now().into_std();
            let expired = self
                .0
                .0
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .expired(now);
            if let Some(why) = expired {
                return why;
            }
        }
    }
}

/// A request in progress; its drop returns the connection to idle.
pub(crate) struct Busy(SharedTimer);

impl Drop for Busy {
    fn drop(&mut self) {
        let now = Instant::now().into_std();
        self.0.update(|t| t.responded(now));
    }
}

/// A response body that holds its connection's [`Busy`] guard until it has been sent.
pub(crate) struct Tracked<B> {
    pub inner: B,
    pub _busy: Busy,
}

impl<B> hyper::body::Body for Tracked<B>
where
    B: hyper::body::Body + Unpin,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// A client connection's IO, reporting arriving bytes to its timer.
pub(crate) struct TimedIo<T> {
    inner: T,
    timer: SharedTimer,
}

impl<T> TimedIo<T> {
    pub(crate) fn new(inner: T, timer: SharedTimer) -> Self {
        Self { inner, timer }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for TimedIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            let now = Instant::now().into_std();
            self.timer.update(|t| t.read(now));
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for TimedIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> ClientLimits {
        ClientLimits {
            max_connections: 4,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
        }
    }

    #[test]
    fn the_client_cap_leaves_descriptors_for_the_rest_of_the_process() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max open files            1024                 524288               files     \n";
        assert_eq!(parse_open_files_limit(limits), Some(1024));
        assert_eq!(
            parse_open_files_limit("Max open files  unlimited  unlimited  files"),
            None
        );
        // 1024 - 256 reserved - 512 for DNS.
        assert_eq!(fd_bounded(10_000, 512, Some(1024)), 256);
        assert_eq!(fd_bounded(100, 512, Some(1024)), 100);
        assert_eq!(fd_bounded(10_000, 512, Some(20_000)), 10_000);
        assert_eq!(fd_bounded(10_000, 512, Some(300)), 1);
        assert_eq!(fd_bounded(10_000, 512, None), 10_000);
    }

    #[test]
    fn idle_connection_expires_after_the_idle_timeout() {
        let t0 = std::time::Instant::now();
        let timer = ConnTimer::new(&limits(), t0);
        assert_eq!(timer.expired(t0 + Duration::from_secs(59)), None);
        assert_eq!(
            timer.expired(t0 + Duration::from_secs(60)),
            Some(Expired::Idle)
        );
    }

    #[test]
    fn a_trickled_head_expires_after_the_header_timeout_counted_from_its_first_byte() {
        let t0 = std::time::Instant::now();
        let mut timer = ConnTimer::new(&limits(), t0);
        let first_byte = t0 + Duration::from_secs(30);
        timer.read(first_byte);
        // More bytes do not restart the clock.
        timer.read(first_byte + Duration::from_secs(5));
        assert_eq!(timer.expired(first_byte + Duration::from_secs(9)), None);
        assert_eq!(
            timer.deadline(),
            Some((first_byte + Duration::from_secs(10), Expired::Header))
        );
    }

    #[test]
    fn a_request_in_progress_never_expires_and_idle_restarts_after_the_response() {
        let t0 = std::time::Instant::now();
        let mut timer = ConnTimer::new(&limits(), t0);
        timer.read(t0);
        timer.request();
        // Body bytes while busy do not start a head.
        timer.read(t0 + Duration::from_secs(1));
        assert_eq!(timer.expired(t0 + Duration::from_secs(3600)), None);
        let sent = t0 + Duration::from_secs(3600);
        timer.responded(sent);
        assert_eq!(
            timer.deadline(),
            Some((sent + Duration::from_secs(60), Expired::Idle))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn shared_timer_wakes_on_the_earlier_header_deadline() {
        let timer = SharedTimer::new(&limits());
        let started = Instant::now();
        let watch = tokio::spawn({
            let timer = timer.clone();
            async move { timer.expired().await }
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        timer.update(|t| t.read(Instant::now().into_std()));
        let why = watch.await.unwrap();
        assert_eq!(why, Expired::Header);
        assert_eq!(started.elapsed(), Duration::from_secs(11));
    }

    #[tokio::test(start_paused = true)]
    async fn shared_timer_waits_out_a_busy_request() {
        let timer = SharedTimer::new(&limits());
        let busy = timer.request();
        let started = Instant::now();
        let watch = tokio::spawn({
            let timer = timer.clone();
            async move { timer.expired().await }
        });
        tokio::time::sleep(Duration::from_secs(600)).await;
        assert!(!watch.is_finished());
        drop(busy);
        assert_eq!(watch.await.unwrap(), Expired::Idle);
        assert_eq!(started.elapsed(), Duration::from_secs(660));
    }
}
