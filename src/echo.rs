//! The demo's echo service: answers every HTTP request with JSON naming its cluster and
//! version and echoing the path and headers it received, so a caller sees which cluster
//! served it and what the gateways added on the way. A raw TCP echo sits beside it.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;

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
        tokio::spawn(async move {
            let service =
                hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
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
                    async move { Ok::<_, Infallible>(resp) }
                });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), service)
                .await;
        });
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
