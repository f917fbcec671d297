//! Early requests: a small, replayable HTTP request sent right behind its stream's preamble.
//!
//! ```text
//!  opener:   preamble | request ──────────────►  receiver: reads preamble, decides,
//!  opener:  ◄──────────── verdict | response     forwards nothing before its verdict
//! ```
//!
//! Waiting for the verdict before sending the request costs a round trip between gateways on
//! every request. A request whose body is buffered can be sent at once, like TLS early data:
//! the receiver still reads and judges the preamble first and forwards nothing before its
//! verdict, and a refusal still arrives as an explicit verdict (read here, ahead of the
//! response) after which the opener replays the request on the next cluster.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use tokio::io::{AsyncRead, ReadBuf};

use crate::http::{self, Body, ClientBody, ClientFault, Request};
use crate::preamble::{self, Verdict, VerdictCode};

/// Bodies up to this size (with a known length) are buffered so the request can be replayed.
pub(crate) const MAX_REPLAYABLE_BODY: u64 = 64 * 1024;

/// A request kept whole so it can be sent more than once.
#[derive(Clone)]
pub(crate) struct Replayable {
    parts: ::http::request::Parts,
    body: Bytes,
}

impl Replayable {
    /// Buffers `req` if its body is small and of known length; otherwise gives it back, with
    /// a handle that tells whether reading the client's body failed on the way.
    pub async fn buffer(
        req: Request<Incoming>,
    ) -> Result<Result<Self, (Request<Body>, ClientFault)>, hyper::Error> {
        let headers = req.headers();
        let chunked = headers.contains_key(::http::header::TRANSFER_ENCODING);
        let length = headers
            .get(::http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        let small = !chunked && length.unwrap_or(0) <= MAX_REPLAYABLE_BODY;
        if !small {
            let (parts, body) = req.into_parts();
            let (body, fault) = ClientBody::new(body);
            return Ok(Err((Request::from_parts(parts, http::boxed(body)), fault)));
        }
        let (parts, body) = req.into_parts();
        let body = body.collect().await?.to_bytes();
        Ok(Ok(Self { parts, body }))
    }

    pub fn request(&self) -> Request<Body> {
        let mut req = Request::new(http::boxed(Full::new(self.body.clone())));
        *req.method_mut() = self.parts.method.clone();
        *req.uri_mut() = self.parts.uri.clone();
        *req.version_mut() = self.parts.version;
        *req.headers_mut() = self.parts.headers.clone();
        req
    }

    /// A copy for a mirror: the same request with `-shadow` appended to its Host, as Envoy
    /// marks mirrored requests.
    pub fn shadow(&self) -> Replayable {
        let mut copy = self.clone();
        if let Some(host) = copy
            .parts
            .headers
            .get(::http::header::HOST)
            .and_then(|h| h.to_str().ok())
        {
            let shadow = match host.rsplit_once(':') {
                Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => {
                    format!("{h}-shadow:{port}")
                }
                _ => format!("{host}-shadow"),
            };
            if let Ok(value) = ::http::HeaderValue::from_str(&shadow) {
                copy.parts.headers.insert(::http::header::HOST, value);
            }
        }
        copy
    }

    /// Whether sending it twice is harmless (RFC 9110 §9.2.2), for failures before any verdict.
    pub fn idempotent(&self) -> bool {
        use ::http::Method;
        matches!(
            self.parts.method,
            Method::GET
                | Method::HEAD
                | Method::OPTIONS
                | Method::TRACE
                | Method::PUT
                | Method::DELETE
        )
    }
}

type VerdictRead = Pin<Box<dyn Future<Output = io::Result<(quinn::RecvStream, Verdict)>> + Send>>;

/// The receive side of an early stream: yields the response only after an accepting verdict,
/// and records the verdict, whatever it was, in `seen`.
pub(crate) struct VerdictFirst {
    state: State,
    seen: Arc<Mutex<Option<Verdict>>>,
}

enum State {
    Waiting(VerdictRead),
    Open(quinn::RecvStream),
    Refused,
}

impl VerdictFirst {
    pub fn new(
        mut recv: quinn::RecvStream,
        timeout: Duration,
    ) -> (Self, Arc<Mutex<Option<Verdict>>>) {
        let read: VerdictRead = Box::pin(async move {
            let verdict = tokio::time::timeout(timeout, preamble::read_verdict(&mut recv))
                .await
                .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no verdict in time"))?
                .map_err(io::Error::other)?;
            Ok((recv, verdict))
        });
        let seen = Arc::new(Mutex::new(None));
        (
            Self {
                state: State::Waiting(read),
                seen: seen.clone(),
            },
            seen,
        )
    }
}

impl AsyncRead for VerdictFirst {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            match &mut this.state {
                State::Waiting(read) => {
                    let (recv, verdict) = ready!(read.as_mut().poll(cx))?;
                    let accepted = verdict.decision() == VerdictCode::Accepted;
                    *this.seen.lock().unwrap_or_else(PoisonError::into_inner) = Some(verdict);
                    this.state = if accepted {
                        State::Open(recv)
                    } else {
                        State::Refused
                    };
                }
                State::Open(recv) => return Pin::new(recv).poll_read(cx, buf),
                State::Refused => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::ConnectionRefused,
                        "stream refused",
                    )));
                }
            }
        }
    }
}
