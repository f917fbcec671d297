//! The demo's echo service: answers every HTTP request with JSON naming its cluster and
//! version and echoing the path and headers it received, so a caller sees which cluster
//! served it and what the gateways added on the way. A raw TCP echo sits beside it.
//!
//! The echo can be told to misbehave, so that the demo can show retries, timeouts and
//! ejections (a query parameter or a header, the header winning):
//!
//! | query / header | effect |
//! | --- | --- |
//! | `fail=503` / `x-echo-fail` | answer that status instead of 200 |
//! | `fail-every=2` / `x-echo-fail-every` | every 2nd request this echo serves fails with 503 |
//! | `delay=300ms` / `x-echo-delay` | wait that long before answering (at most 60 s) |
//! | `fail-version=v2` / `x-echo-fail-version` | answer 503 if this echo is that version |

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Serves the HTTP echo until `stop` turns true.
pub async fn serve_http(
    listener: TcpListener,
    cluster: String,
    version: String,
    stop: watch::Receiver<bool>,
) {
    let served = Arc::new(AtomicU64::new(0));
    loop {
        let mut stopped = stop.clone();
        let (tcp, _) = tokio::select! {
            _ = stopped.wait_for(|s| *s) => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(_) => continue,
            },
        };
        let (cluster, version) = (cluster.clone(), version.clone());
        let served = served.clone();
        tokio::spawn(async move {
            let service =
                hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let n = served.fetch_add(1, Ordering::Relaxed) + 1;
                    let misbehave = Misbehave::of(&req, n, &version);
                    let headers: BTreeMap<String, String> = req
                        .headers()
                        .iter()
                        .map(|(k, v)| {
                            (
                                k.to_string(),
                                String::from_utf8_lossy(v.as_bytes()).into_owned(),
                            )
                        })
                        .collect();
                    let body = serde_json::json!({
                        "cluster": cluster,
                        "version": version,
                        "method": req.method().as_str(),
                        "path": req.uri().path(),
                        "headers": headers,
                    });
                    let mut resp =
                        hyper::Response::new(Full::new(Bytes::from(format!("{body:#}\n"))));
                    resp.headers_mut().insert(
                        hyper::header::CONTENT_TYPE,
                        hyper::header::HeaderValue::from_static("application/json"),
                    );
                    if let Some(status) = misbehave.status {
                        *resp.status_mut() = status;
                    }
                    async move {
                        if let Some(delay) = misbehave.delay {
                            tokio::time::sleep(delay).await;
                        }
                        Ok::<_, Infallible>(resp)
                    }
                });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), service)
                .await;
        });
    }
}

/// How a request asked the echo to misbehave.
#[derive(Debug, Default, PartialEq)]
struct Misbehave {
    status: Option<hyper::StatusCode>,
    delay: Option<Duration>,
}

impl Misbehave {
    /// Reads the controls of `req`, the `n`th request this echo serves.
    fn of<B>(req: &hyper::Request<B>, n: u64, version: &str) -> Self {
        let query: BTreeMap<&str, &str> = req
            .uri()
            .query()
            .unwrap_or_default()
            .split('&')
            .filter_map(|pair| pair.split_once('='))
            .collect();
        let control = |name: &str| {
            req.headers()
                .get(format!("x-echo-{name}"))
                .and_then(|v| v.to_str().ok())
                .or_else(|| query.get(name).copied())
        };
        let mut status = control("fail")
            .and_then(|s| s.parse::<u16>().ok())
            .and_then(|s| hyper::StatusCode::from_u16(s).ok());
        if let Some(every) = control("fail-every").and_then(|s| s.parse::<u64>().ok())
            && every > 0
            && n.is_multiple_of(every)
        {
            status = status.or(Some(hyper::StatusCode::SERVICE_UNAVAILABLE));
        }
        if control("fail-version") == Some(version) {
            status = status.or(Some(hyper::StatusCode::SERVICE_UNAVAILABLE));
        }
        let delay = control("delay")
            .and_then(|d| humantime::parse_duration(d).ok())
            .map(|d| d.min(Duration::from_secs(60)));
        Misbehave { status, delay }
    }
}

/// Serves a TCP echo (each connection gets its bytes back) until `stop` turns true.
pub async fn serve_tcp(listener: TcpListener, stop: watch::Receiver<bool>) {
    loop {
        let mut stopped = stop.clone();
        let (mut tcp, _): (tokio::net::TcpStream, SocketAddr) = tokio::select! {
            _ = stopped.wait_for(|s| *s) => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(_) => continue,
            },
        };
        tokio::spawn(async move {
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                match tcp.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        if tcp.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(uri: &str, headers: &[(&str, &str)]) -> hyper::Request<()> {
        let mut b = hyper::Request::builder().uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    impl Misbehave {
        fn of_v1<B>(req: &hyper::Request<B>, n: u64) -> Self {
            Misbehave::of(req, n, "v1")
        }
    }

    #[test]
    fn echo_misbehaves_as_asked() {
        let v2 = |version| Misbehave::of(&req("/?fail-version=v2", &[]), 1, version).status;
        assert_eq!(v2("v1"), None);
        assert_eq!(v2("v2"), Some(hyper::StatusCode::SERVICE_UNAVAILABLE));
        assert_eq!(Misbehave::of_v1(&req("/", &[]), 1), Misbehave::default());
        let fail = Misbehave::of_v1(&req("/x?fail=500", &[]), 1);
        assert_eq!(fail.status, Some(hyper::StatusCode::INTERNAL_SERVER_ERROR));
        // The header wins over the query.
        let fail = Misbehave::of_v1(&req("/x?fail=500", &[("x-echo-fail", "502")]), 1);
        assert_eq!(fail.status, Some(hyper::StatusCode::BAD_GATEWAY));
        let every = |n| Misbehave::of_v1(&req("/?fail-every=2", &[]), n).status;
        assert_eq!(every(1), None);
        assert_eq!(every(2), Some(hyper::StatusCode::SERVICE_UNAVAILABLE));
        assert_eq!(every(3), None);
        let slow = Misbehave::of_v1(&req("/", &[("x-echo-delay", "250ms")]), 1);
        assert_eq!(slow.delay, Some(Duration::from_millis(250)));
        let capped = Misbehave::of_v1(&req("/?delay=1h", &[]), 1);
        assert_eq!(capped.delay, Some(Duration::from_secs(60)));
    }
}
