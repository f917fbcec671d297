//! Keep-alive HTTP/1.1 connections to local endpoints.
//!
//! Without a pool every proxied request pays a TCP connect and close to its endpoint, which
//! dominated the gateway's CPU and latency in the tunnel benchmark. A connection is checked
//! out *before* a stream's verdict (so "no endpoint accepts connections" stays an explicit
//! refusal that lets the caller fail over), and goes back to the pool when its response body
//! has been read to the end. A request that was never sent on a reused connection (the
//! endpoint closed it while idle) is retried once on a fresh one.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use federation::model::LocalService;
use federation::traffic::ConnectionPool;
use hyper::body::{Body as _, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::http::{self, Body, Request, Response};
use crate::spin::Spinner;

/// Idle connections kept per endpoint; more concurrent requests open more, then close them.
const MAX_IDLE_PER_ENDPOINT: usize = 64;
/// Endpoints commonly close idle keep-alive connections after 60 s or more; stay below that.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

pub(crate) struct Pool {
    idle: Mutex<HashMap<SocketAddr, Vec<Idle>>>,
    connect_timeout: Duration,
    next: AtomicUsize,
    spinner: Spinner,
}

struct Idle {
    sender: SendRequest<Body>,
    since: Instant,
    reuse: Reuse,
}

/// How long and how often a connection may be reused (DestinationRule `connectionPool`:
/// `http.idleTimeout`, `http.maxRequestsPerConnection`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Reuse {
    /// Requests served on it so far.
    uses: u32,
    max_uses: Option<u32>,
    idle_timeout: Duration,
}

impl Reuse {
    fn of(pool: &ConnectionPool) -> Self {
        Reuse {
            uses: 0,
            // 0 means unlimited to Istio.
            max_uses: pool.max_requests_per_connection.filter(|&n| n > 0),
            idle_timeout: pool.idle_timeout.unwrap_or(IDLE_TIMEOUT),
        }
    }

    fn fresh(self, since: Instant) -> bool {
        since.elapsed() < self.idle_timeout
    }
}

/// A connection ready for one request.
pub(crate) struct Conn {
    addr: SocketAddr,
    sender: SendRequest<Body>,
    reused: bool,
    reuse: Reuse,
}

impl Conn {
    /// The endpoint it is connected to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Pool {
    /// `spinner` keeps the runtime polling while an endpoint's answer is awaited.
    pub fn new(connect_timeout: Duration, spinner: Spinner) -> Arc<Self> {
        Arc::new(Self {
            idle: Mutex::default(),
            connect_timeout,
            next: AtomicUsize::new(0),
            spinner,
        })
    }

    /// A ready connection to one of `svc`'s endpoints: an idle one if any, else a new one,
    /// trying endpoints in rotation. `None` if no endpoint accepts connections.
    pub async fn checkout(&self, svc: &LocalService) -> Option<Conn> {
        let n = svc.endpoints.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let order: Vec<SocketAddr> = (0..n).map(|i| svc.endpoints[(start + i) % n]).collect();
        self.checkout_in(&svc.key, &order, &ConnectionPool::default())
            .await
    }

    /// [`Pool::checkout`] trying the endpoints in `order` (a load balancer's choice first).
    /// `limits` is the destination rule's pool: connect timeout, reuse per connection.
    pub async fn checkout_in(
        &self,
        service: &federation::model::ServiceKey,
        order: &[SocketAddr],
        limits: &ConnectionPool,
    ) -> Option<Conn> {
        let connect_timeout = limits.connect_timeout.unwrap_or(self.connect_timeout);
        for &addr in order {
            while let Some((mut sender, reuse)) = self.take_idle(addr) {
                // Ready at once unless the endpoint closed it meanwhile.
                if tokio::time::timeout(self.connect_timeout, sender.ready())
                    .await
                    .is_ok_and(|r| r.is_ok())
                {
                    return Some(Conn {
                        addr,
                        sender,
                        reused: true,
                        reuse,
                    });
                }
            }
        }
        for &addr in order {
            match self.connect(addr, connect_timeout).await {
                Ok(sender) => {
                    return Some(Conn {
                        addr,
                        sender,
                        reused: false,
                        reuse: Reuse::of(limits),
                    });
                }
                Err(e) => {
                    tracing::warn!(%service, endpoint = %addr, error = %e, "endpoint unavailable")
                }
            }
        }
        None
    }

    fn take_idle(&self, addr: SocketAddr) -> Option<(SendRequest<Body>, Reuse)> {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        let list = idle.get_mut(&addr)?;
        while let Some(conn) = list.pop() {
            if conn.reuse.fresh(conn.since) && !conn.sender.is_closed() {
                return Some((conn.sender, conn.reuse));
            }
        }
        None
    }

    fn put(&self, addr: SocketAddr, sender: SendRequest<Body>, mut reuse: Reuse) {
        reuse.uses = reuse.uses.saturating_add(1);
        if sender.is_closed() || reuse.max_uses.is_some_and(|max| reuse.uses >= max) {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        let list = idle.entry(addr).or_default();
        list.retain(|c| c.reuse.fresh(c.since) && !c.sender.is_closed());
        if list.len() < MAX_IDLE_PER_ENDPOINT {
            list.push(Idle {
                sender,
                since: Instant::now(),
                reuse,
            });
        }
    }

    async fn connect(
        &self,
        addr: SocketAddr,
        timeout: Duration,
    ) -> std::io::Result<SendRequest<Body>> {
        let tcp = tokio::time::timeout(timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out")
            })??;
        let _ = tcp.set_nodelay(true);
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(std::io::Error::other)?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "endpoint connection ended with an error");
            }
        });
        Ok(sender)
    }

    /// Sends `req` on `conn`; the connection returns to the pool when the response body ends.
    pub async fn send(
        self: &Arc<Self>,
        conn: Conn,
        mut req: Request<Body>,
    ) -> Result<Response<Body>, hyper::Error> {
        http::strip_hop_by_hop(req.headers_mut());
        let Conn {
            addr,
            mut sender,
            reused,
            reuse,
        } = conn;
        let awaiting = self.spinner.awaiting();
        let resp = match sender.try_send_request(req).await {
            Ok(resp) => resp,
            Err(mut e) => match e.take_message() {
                // Never sent: the idle connection died under us. One fresh try is safe for
                // any method, since the endpoint saw nothing.
                Some(req) if reused => {
                    sender = self
                        .connect(addr, self.connect_timeout)
                        .await
                        .map_err(|_| e.into_error())?;
                    sender.send_request(req).await?
                }
                _ => return Err(e.into_error()),
            },
        };
        drop(awaiting);
        let (mut parts, body) = resp.into_parts();
        http::strip_hop_by_hop(&mut parts.headers);
        let body = Returning {
            inner: body,
            back: Some((self.clone(), addr, sender, reuse)),
        };
        Ok(Response::from_parts(parts, http::boxed(body)))
    }
}

/// A response body that hands its connection back to the pool once read to the end.
struct Returning {
    inner: Incoming,
    back: Option<(Arc<Pool>, SocketAddr, SendRequest<Body>, Reuse)>,
}

impl Returning {
    fn give_back(&mut self) {
        if let Some((pool, addr, sender, reuse)) = self.back.take() {
            pool.put(addr, sender, reuse);
        }
    }
}

impl hyper::body::Body for Returning {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.give_back(),
            // A broken body means a broken connection: never reuse it.
            Poll::Ready(Some(Err(_))) => self.back = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Returning {
    fn drop(&mut self) {
        // Bodies known to be empty (HEAD, 204, content-length: 0) may never be polled.
        if self.inner.is_end_stream() {
            self.give_back();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Empty};
    use std::sync::atomic::AtomicUsize;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// An HTTP/1.1 endpoint that counts the connections it accepted and answers each request
    /// with `ok`; it closes a connection after `per_conn` requests.
    async fn endpoint(per_conn: usize) -> (SocketAddr, Arc<AtomicUsize>) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    for _ in 0..per_conn {
                        let mut got = Vec::new();
                        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                            match s.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => got.extend_from_slice(&buf[..n]),
                            }
                        }
                        let _ = s
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                            .await;
                    }
                });
            }
        });
        (addr, accepted)
    }

    fn service(addr: SocketAddr) -> LocalService {
        LocalService {
            endpoint_labels: Default::default(),
            endpoint_accounts: Default::default(),
            key: "web.demo".parse().unwrap(),
            ports: vec![],
            endpoints: vec![addr],
            export: true,
        }
    }

    async fn get(pool: &Arc<Pool>, svc: &LocalService) -> String {
        let conn = pool.checkout(svc).await.expect("an endpoint");
        let req = Request::get("/")
            .header("host", "web.demo")
            .body(http::boxed(Empty::<Bytes>::new()))
            .unwrap();
        let resp = pool.send(conn, req).await.unwrap();
        String::from_utf8(
            resp.into_body()
                .collect()
                .await
                .unwrap()
                .to_bytes()
                .to_vec(),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn connections_are_reused_after_the_body_is_read() {
        let (addr, accepted) = endpoint(usize::MAX).await;
        let pool = Pool::new(Duration::from_secs(1), Spinner::new(Duration::ZERO));
        let svc = service(addr);
        for _ in 0..5 {
            assert_eq!(get(&pool, &svc).await, "ok");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_connection_the_endpoint_closed_is_replaced() {
        // The endpoint closes each connection after one request, as some servers do.
        let (addr, accepted) = endpoint(1).await;
        let pool = Pool::new(Duration::from_secs(1), Spinner::new(Duration::ZERO));
        let svc = service(addr);
        for _ in 0..3 {
            assert_eq!(get(&pool, &svc).await, "ok");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn no_endpoint_no_connection() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        let pool = Pool::new(Duration::from_millis(500), Spinner::new(Duration::ZERO));
        assert!(pool.checkout(&service(addr)).await.is_none());
    }
}
