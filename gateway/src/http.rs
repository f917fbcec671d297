//! Small HTTP/1.1 helpers shared by the outbound listener and the tunnel inbound.

use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};

pub use http::{Request, Response, StatusCode};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type Body = BoxBody<Bytes, BoxError>;

pub fn boxed<B>(body: B) -> Body
where
    B: hyper::body::Body<Data = Bytes> + Send + Sync + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed()
}

/// A client's request body that remembers whether reading it failed (a malformed chunk, a
/// connection cut mid-body), so that a failed forward can be blamed right: the client's body
/// (400) or the upstream (502).
pub struct ClientBody {
    inner: Incoming,
    fault: ClientFault,
}

/// Set once the client's body failed to read; see [`ClientBody`].
#[derive(Clone, Default)]
pub struct ClientFault(std::sync::Arc<std::sync::OnceLock<String>>);

impl ClientFault {
    /// Why the client's body could not be read, if it could not.
    pub fn get(&self) -> Option<&str> {
        self.0.get().map(String::as_str)
    }
}

impl ClientBody {
    pub fn new(inner: Incoming) -> (Self, ClientFault) {
        let fault = ClientFault::default();
        (
            Self {
                inner,
                fault: fault.clone(),
            },
            fault,
        )
    }
}

impl hyper::body::Body for ClientBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, hyper::Error>>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        if let std::task::Poll::Ready(Some(Err(e))) = &polled {
            let _ = self.fault.0.set(e.to_string());
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// A plain-text answer from the gateway itself, marked so it is never mistaken for the
/// application's own error page.
pub fn error_response(status: StatusCode, message: &str) -> Response<Body> {
    let mut resp = Response::new(boxed(Full::new(Bytes::from(format!(
        "causeway: {message}\n"
    )))));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp.headers_mut()
        .insert("x-causeway-error", http::HeaderValue::from_static("true"));
    resp
}

/// Headers that describe one hop, never the request (RFC 9110 §7.6.1).
const HOP_BY_HOP: [&str; 7] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "upgrade",
];

/// Removes hop-by-hop headers: the fixed set, and every header the `Connection` header names.
pub fn strip_hop_by_hop(headers: &mut http::HeaderMap) {
    let named: Vec<http::HeaderName> = headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| http::HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

/// Sends one request over a fresh HTTP/1.1 connection on `io` and returns the response head;
/// the connection task keeps running until the response body is consumed.
pub async fn send(
    io: impl AsyncRead + AsyncWrite + Unpin + Send + 'static,
    mut req: Request<Body>,
) -> Result<Response<Incoming>, hyper::Error> {
    strip_hop_by_hop(req.headers_mut());
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "upstream HTTP connection ended with an error");
        }
    });
    let mut resp = sender.send_request(req).await?;
    strip_hop_by_hop(resp.headers_mut());
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_are_removed() {
        let mut h = http::HeaderMap::new();
        h.insert("connection", "keep-alive, X-Secret".parse().unwrap());
        h.insert("x-secret", "1".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("x-kept", "1".parse().unwrap());
        strip_hop_by_hop(&mut h);
        let left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["x-kept"]);
    }
}
