//! HTTPS for the admin port: a listener that hands axum connections whose TLS handshake is
//! already done, so `axum::serve` (and its graceful shutdown) works on them unchanged.
//!
//! ```text
//!  TcpListener ─accept─▶ spawned task per connection (at most MAX_HANDSHAKES at once):
//!                         peek: TLS record? ─no─▶ "400 use https://" and close
//!                           └─yes─▶ TLS handshake (HANDSHAKE_TIMEOUT) ─▶ channel ─▶ TlsListener::accept ─▶ axum
//! ```
//!
//! Handshakes run off the accept path: a slow or garbage client holds one task until its
//! timeout, never the listener. The Raft transport accepts through the same [`accept_loop`].

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub(crate) use federation::ratelog::Throttled;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// A client that has not finished its handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once; beyond this, accepting waits (the kernel backlog queues).
const MAX_HANDSHAKES: usize = 128;
/// An accept error pauses accepting this long, doubling up to [`BACKOFF_MAX`].
const BACKOFF_MIN: Duration = Duration::from_millis(10);
const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// Finished handshakes waiting for the server to take them.
const ACCEPTED_BACKLOG: usize = 64;
/// The first byte of a TLS record carrying a handshake message (a ClientHello).
const TLS_HANDSHAKE_RECORD: u8 = 0x16;
/// What a client speaking plain HTTP to the HTTPS port reads, instead of TLS garbage.
const PLAIN_HTTP_BODY: &str = "this port speaks HTTPS: use https:// and trust the cluster's CA \
(`causeway bundle` prints it)\n";

fn plain_http_answer() -> String {
    format!(
        "HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain; charset=utf-8\r\n\
         connection: close\r\ncontent-length: {}\r\n\r\n{PLAIN_HTTP_BODY}",
        PLAIN_HTTP_BODY.len()
    )
}

/// The admin port's TLS server config: `chain` and `key` from the cluster CA
/// (`CertificateAuthority::issue_server_cert`), TLS 1.2 and 1.3 (curl and browsers alike), no
/// client certificates (tokens authenticate), ALPN `http/1.1` (the admin API's only protocol).
pub fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<rustls::ServerConfig, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// The admin certificate in use, replaceable while the server runs (renewal, a CA switch):
/// each handshake takes the one current at its start.
#[derive(Debug)]
pub struct RotatingCert {
    current: std::sync::RwLock<Arc<rustls::sign::CertifiedKey>>,
}

impl RotatingCert {
    pub fn new(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Self, rustls::Error> {
        Ok(Self {
            current: std::sync::RwLock::new(Arc::new(certified(chain, key)?)),
        })
    }

    /// Serves `chain` and `key` from the next handshake on.
    pub fn replace(
        &self,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<(), rustls::Error> {
        let next = Arc::new(certified(chain, key)?);
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = next;
        Ok(())
    }
}

fn certified(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<rustls::sign::CertifiedKey, rustls::Error> {
    let provider = rustls::crypto::ring::default_provider();
    let key = provider.key_provider.load_private_key(key)?;
    Ok(rustls::sign::CertifiedKey::new(chain, key))
}

impl rustls::server::ResolvesServerCert for RotatingCert {
    fn resolve(
        &self,
        _: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        )
    }
}

/// [`server_config`] serving whatever `cert` holds at each handshake.
pub fn rotating_server_config(
    cert: Arc<RotatingCert>,
) -> Result<rustls::ServerConfig, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(cert);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Connections whose TLS handshake has completed, for `axum::serve`.
pub(crate) struct TlsListener {
    accepted: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
    /// Aborted when the listener is dropped (axum drops it when serving ends).
    acceptor: tokio::task::JoinHandle<()>,
}

impl TlsListener {
    pub(crate) fn new(
        listener: TcpListener,
        tls: Arc<rustls::ServerConfig>,
        metrics: crate::AdminMetrics,
    ) -> io::Result<Self> {
        let local = listener.local_addr()?;
        let (accepted_tx, accepted) = mpsc::channel(ACCEPTED_BACKLOG);
        let tls = TlsAcceptor::from(tls);
        let plain =
            Throttled::new(|s| tracing::warn!("plain HTTP on the HTTPS admin port refused: {s}"));
        let acceptor = tokio::spawn(accept_loop(
            listener,
            "admin API",
            MAX_HANDSHAKES,
            accepted_tx,
            move |tcp, remote| {
                let handshake = tokio::time::timeout(
                    HANDSHAKE_TIMEOUT,
                    handshake(tls.clone(), tcp, remote, plain.clone(), metrics.clone()),
                );
                let metrics = metrics.clone();
                async move {
                    let stream = handshake.await.unwrap_or_else(|_| {
                        metrics.refused("tls_handshake");
                        tracing::debug!(%remote, "admin TLS handshake timed out");
                        None
                    });
                    stream.map(|s| (s, remote))
                }
            },
        ));
        Ok(Self {
            accepted,
            local,
            acceptor,
        })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.acceptor.abort();
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.accepted.recv().await {
            Some(conn) => conn,
            // The acceptor ended (it never does while we hold the receiver, short of a panic):
            // take no more connections, and let the graceful shutdown end the server.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local)
    }
}

/// Accepts TCP connections and runs `handshake` on each in a task of its own, at most
/// `max_handshakes` at once (beyond that, accepting waits and the kernel backlog queues), so a
/// slow or hostile handshake delays no one else; passes on what the handshakes yield. Ends
/// once `accepted` is closed (the server stopped taking connections). Shared by the admin API
/// and the Raft transport; `what` names the listener in logs.
pub(crate) async fn accept_loop<T, H, F>(
    listener: TcpListener,
    what: &'static str,
    max_handshakes: usize,
    accepted: mpsc::Sender<T>,
    mut handshake: H,
) where
    T: Send + 'static,
    H: FnMut(TcpStream, SocketAddr) -> F,
    F: Future<Output = Option<T>> + Send + 'static,
{
    let handshakes = Arc::new(Semaphore::new(max_handshakes));
    let errors = Throttled::new(move |s| tracing::warn!("{what} accept errors: {s}"));
    let mut backoff = BACKOFF_MIN;
    loop {
        let Ok(permit) = handshakes.clone().acquire_owned().await else {
            return;
        };
        let (tcp, remote) = tokio::select! {
            () = accepted.closed() => return,
            result = listener.accept() => match result {
                Ok(conn) => {
                    backoff = BACKOFF_MIN;
                    conn
                }
                Err(e) => {
                    // Out of file descriptors and the like: pause rather than spin, and say so
                    // once per interval, not once per attempt.
                    if errors.event(|| e.to_string()) {
                        tracing::warn!(error = %e, ?backoff, "{what} cannot accept; backing off");
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    continue;
                }
            },
        };
        let done = handshake(tcp, remote);
        let accepted = accepted.clone();
        tokio::spawn(async move {
            let _permit = permit;
            if let Some(conn) = done.await {
                // Fails only when the server is shutting down.
                let _ = accepted.send(conn).await;
            }
        });
    }
}

async fn handshake(
    tls: TlsAcceptor,
    mut tcp: TcpStream,
    remote: SocketAddr,
    plain: Arc<Throttled>,
    metrics: crate::AdminMetrics,
) -> Option<TlsStream<TcpStream>> {
    let _ = tcp.set_nodelay(true);
    let mut first = [0u8; 1];
    match tcp.peek(&mut first).await {
        Ok(1) if first[0] == TLS_HANDSHAKE_RECORD => {}
        Ok(1) => {
            // Someone used http://. What they sent (a token, perhaps) has crossed in clear
            // already; all we can do is not answer it, and say how to do it right.
            metrics.refused("plain_http");
            if plain.event(|| format!("from {remote}")) {
                tracing::warn!(%remote, "plain HTTP on the HTTPS admin port refused");
            }
            let _ = tcp.write_all(plain_http_answer().as_bytes()).await;
            let _ = tcp.shutdown().await;
            // Closing with their request unread would reset the connection, and the reset can
            // destroy our answer before they read it: drain until they close (bounded by the
            // handshake timeout around us, and by size).
            let mut sink = [0u8; 4096];
            let mut left: usize = 64 * 1024;
            while left > 0 {
                match tcp.read(&mut sink).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => left = left.saturating_sub(n),
                }
            }
            return None;
        }
        _ => return None,
    }
    match tls.accept(tcp).await {
        Ok(stream) => Some(stream),
        Err(e) => {
            metrics.refused("tls_handshake");
            tracing::debug!(%remote, error = %e, "admin TLS handshake failed");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_answer_has_the_length_it_announces() {
        let text = plain_http_answer();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(
            head.contains(&format!("content-length: {}", body.len())),
            "{head}\n{body:?}"
        );
    }
}
