//! The receiving end: a gRPC server behind our own TLS accept, so every request carries the
//! SPIFFE ID its connection authenticated with.

use std::collections::HashSet;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use federation::identity::{SpiffeId, peer_spiffe_id};
use store::{Node, NodeInbox};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tonic::transport::server::Connected;
use tonic::{Request, Response, Status, Streaming};

use super::proto::raft_server::{Raft, RaftServer};
use super::proto::{Ack, Batch, Chunk, Proposal, Proposed};
use super::{
    MAX_GRPC_MESSAGE_BYTES, MAX_LARGE_MESSAGE_BYTES, MAX_PROPOSAL_BYTES, PeerTable,
    RaftTransportError, proposal,
};
use crate::tls::Throttled;

/// A peer that has not finished its handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once; beyond this, accepting waits (the kernel backlog queues).
const MAX_HANDSHAKES: usize = 64;
/// Established connections at once: a handful per member is normal (a unary channel and a
/// snapshot stream each way, reconnects overlapping).
const MAX_CONNECTIONS: usize = 256;
/// Authenticated connections waiting for the gRPC server to take them.
const ACCEPTED_BACKLOG: usize = 64;
/// Concurrent calls on one connection: a peer's Raft sender has one call in flight and its
/// forwarded proposals at most [`super::client::MAX_FORWARDS_IN_FLIGHT`], so this only caps a
/// misbehaving peer.
pub(super) const MAX_STREAMS_PER_CONNECTION: u32 = 64;
/// A call not answered by then is cancelled (delivery never waits, so only a stalled upload
/// takes this long).
const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// What a `SendLarge` reassembly reserves up front; it grows as chunks arrive.
const INITIAL_REASSEMBLY_BYTES: usize = 16 * 1024 * 1024;
/// Pings on idle connections find peers that vanished without closing.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Who is on the other end of a connection, as its TLS handshake proved. Tonic puts it in
/// every request's extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    /// From the peer's verified X.509-SVID.
    pub spiffe_id: SpiffeId,
    pub remote: SocketAddr,
}

/// Serves the Raft transport for the node behind `inbox` on `listener` until `shutdown`
/// resolves, then finishes the calls in flight.
///
/// `tls` must require client certificates and verify them as SVIDs
/// (`federation::identity::server_config_with_alpn` with [`super::ALPN`]). `peers` says which
/// SPIFFE ID speaks for which node; send a new table to change the membership.
///
/// `proposer`, the same node as `inbox`'s, takes the proposals members forward
/// (`Raft.Propose`, see [`super::GrpcTransport::forward`]); without one they are answered
/// `UNIMPLEMENTED`. The server holds its handle until it stops. Fails at once with
/// [`RaftTransportError::MismatchedProposer`] if `proposer` is another node.
pub async fn serve(
    listener: TcpListener,
    tls: watch::Receiver<Arc<rustls::ServerConfig>>,
    peers: watch::Receiver<PeerTable>,
    inbox: NodeInbox,
    proposer: Option<Node>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RaftTransportError> {
    if let Some(node) = &proposer
        && node.id() != inbox.node()
    {
        return Err(RaftTransportError::MismatchedProposer {
            proposer: node.id(),
            inbox: inbox.node(),
        });
    }
    let (accepted_tx, accepted) = mpsc::channel(ACCEPTED_BACKLOG);
    // Each connection is accepted with the newest TLS config, so a rotated SVID reaches every
    // new handshake while established connections keep theirs.
    // Anyone who can reach the Raft port can fail a handshake: log those aggregated.
    let refused = Throttled::new(|s| tracing::warn!("raft peers refused: {s}"));
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let acceptor = tokio::spawn(crate::tls::accept_loop(
        listener,
        "raft transport",
        MAX_HANDSHAKES,
        accepted_tx,
        move |tcp, remote| {
            handshake(
                TlsAcceptor::from(tls.borrow().clone()),
                tcp,
                remote,
                refused.clone(),
                slots.clone(),
            )
        },
    ));
    let incoming = futures::stream::unfold(accepted, |mut accepted| async move {
        let conn = accepted.recv().await?;
        Some((Ok::<_, io::Error>(conn), accepted))
    });
    let service = RaftServer::new(RaftService {
        peers,
        inbox,
        proposer,
        streaming: Arc::default(),
    })
    .max_decoding_message_size(MAX_GRPC_MESSAGE_BYTES)
    .max_encoding_message_size(MAX_GRPC_MESSAGE_BYTES);
    let served = tonic::transport::Server::builder()
        .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
        .timeout(CALL_TIMEOUT)
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .add_service(service)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await;
    acceptor.abort();
    Ok(served?)
}

async fn handshake(
    tls: TlsAcceptor,
    tcp: TcpStream,
    remote: SocketAddr,
    refused: Arc<Throttled>,
    slots: Arc<tokio::sync::Semaphore>,
) -> Option<TlsConn> {
    if let Err(e) = tcp.set_nodelay(true) {
        tracing::debug!(%remote, error = %e, "cannot set TCP_NODELAY");
    }
    let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(tcp)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            if refused.event(|| format!("from {remote}: TLS handshake failed: {e}")) {
                tracing::warn!(%remote, error = %e, "refused raft peer: TLS handshake failed");
            }
            return None;
        }
        Err(_) => {
            if refused.event(|| format!("from {remote}: TLS handshake timed out")) {
                tracing::warn!(%remote, "refused raft peer: TLS handshake timed out");
            }
            return None;
        }
    };
    // The verifier has accepted the chain, so this only fails if rustls and we disagree.
    let spiffe_id = match stream.get_ref().1.peer_certificates().map(peer_spiffe_id) {
        Some(Ok(id)) => id,
        Some(Err(e)) => {
            tracing::warn!(%remote, error = %e, "refused raft peer: no SPIFFE ID");
            return None;
        }
        None => {
            tracing::warn!(%remote, "refused raft peer: no client certificate");
            return None;
        }
    };
    // Only holders of a trusted SVID get this far, but one of them must not be able to take
    // every descriptor either.
    let Ok(slot) = slots.try_acquire_owned() else {
        if refused
            .event(|| format!("from {remote} ({spiffe_id}): {MAX_CONNECTIONS} connections open"))
        {
            tracing::warn!(%remote, peer = %spiffe_id, max = MAX_CONNECTIONS, "refused raft peer: too many connections");
        }
        return None;
    };
    tracing::info!(%remote, peer = %spiffe_id, "raft peer connected");
    Some(TlsConn {
        stream,
        peer: PeerIdentity { spiffe_id, remote },
        _slot: slot,
    })
}

/// An authenticated connection, handed to tonic with the identity its handshake proved.
struct TlsConn {
    stream: TlsStream<TcpStream>,
    peer: PeerIdentity,
    /// Its place among [`MAX_CONNECTIONS`], given back when the connection closes.
    _slot: tokio::sync::OwnedSemaphorePermit,
}

impl Drop for TlsConn {
    fn drop(&mut self) {
        tracing::info!(remote = %self.peer.remote, peer = %self.peer.spiffe_id, "raft peer disconnected");
    }
}

impl Connected for TlsConn {
    type ConnectInfo = PeerIdentity;

    fn connect_info(&self) -> PeerIdentity {
        self.peer.clone()
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

struct RaftService {
    peers: watch::Receiver<PeerTable>,
    inbox: NodeInbox,
    /// Takes forwarded proposals, if this server does.
    proposer: Option<Node>,
    /// The sending nodes with a `SendLarge` stream open: one each, so a member can make this
    /// node hold at most one [`MAX_LARGE_MESSAGE_BYTES`] reassembly at a time.
    streaming: Arc<Mutex<HashSet<u64>>>,
}

impl RaftService {
    /// Refuses a call unless `peer` speaks for node `from` and the call is for this node.
    fn authorize(&self, peer: &PeerIdentity, from: u64, to: u64) -> Result<(), Status> {
        self.authorize_member(peer, from)?;
        let node = self.inbox.node();
        if to != node {
            return Err(Status::invalid_argument(format!(
                "raft messages for node {to} reached node {node}"
            )));
        }
        Ok(())
    }

    /// Refuses a call unless `peer` speaks for node `from`, a member.
    fn authorize_member(&self, peer: &PeerIdentity, from: u64) -> Result<(), Status> {
        let speaks_for = self.peers.borrow().node_of(&peer.spiffe_id);
        match speaks_for {
            Some(node) if node == from => {}
            Some(node) => {
                tracing::warn!(
                    peer = %peer.spiffe_id, remote = %peer.remote, node, claimed = from,
                    "refused raft call: peer speaks for another node"
                );
                return Err(Status::permission_denied(format!(
                    "{} speaks for raft node {node}, not {from}",
                    peer.spiffe_id
                )));
            }
            None => {
                tracing::warn!(
                    peer = %peer.spiffe_id, remote = %peer.remote, claimed = from,
                    "refused raft call: peer is not a member"
                );
                return Err(Status::permission_denied(format!(
                    "{} is not a raft member",
                    peer.spiffe_id
                )));
            }
        }
        Ok(())
    }
}

fn authenticated<T>(request: &Request<T>) -> Result<PeerIdentity, Status> {
    // Missing only if the server were wired without our TLS accept.
    request
        .extensions()
        .get::<PeerIdentity>()
        .cloned()
        .ok_or_else(|| Status::unauthenticated("no authenticated peer"))
}

/// Marks a node's `SendLarge` stream open until dropped.
struct StreamSlot {
    streaming: Arc<Mutex<HashSet<u64>>>,
    from: u64,
}

impl StreamSlot {
    fn take(streaming: &Arc<Mutex<HashSet<u64>>>, from: u64) -> Option<Self> {
        let mut open = streaming.lock().unwrap_or_else(PoisonError::into_inner);
        open.insert(from).then(|| Self {
            streaming: Arc::clone(streaming),
            from,
        })
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut open = self
            .streaming
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        open.remove(&self.from);
    }
}

#[tonic::async_trait]
impl Raft for RaftService {
    async fn send(&self, request: Request<Batch>) -> Result<Response<Ack>, Status> {
        let peer = authenticated(&request)?;
        let batch = request.into_inner();
        self.authorize(&peer, batch.from, batch.to)?;
        let mut delivered: u32 = 0;
        for bytes in &batch.messages {
            // batch.from is the authenticated sender (checked above); every message inside
            // must claim it too.
            match self.inbox.deliver_encoded_from(bytes, batch.from) {
                Ok(()) => delivered = delivered.saturating_add(1),
                Err(e) => tracing::debug!(from = batch.from, error = %e, "dropped raft message"),
            }
        }
        Ok(Response::new(Ack { delivered }))
    }

    async fn send_large(
        &self,
        request: Request<Streaming<Chunk>>,
    ) -> Result<Response<Ack>, Status> {
        let peer = authenticated(&request)?;
        let mut chunks = request.into_inner();
        let Some(first) = chunks.message().await? else {
            return Err(Status::invalid_argument("empty chunk stream"));
        };
        let (from, to, total) = (first.from, first.to, first.total);
        self.authorize(&peer, from, to)?;
        if total == 0 {
            return Err(Status::invalid_argument(
                "a chunked raft message of 0 bytes",
            ));
        }
        let total = match usize::try_from(total) {
            Ok(total) if total <= MAX_LARGE_MESSAGE_BYTES => total,
            _ => {
                tracing::warn!(peer = %peer.spiffe_id, from, total, "refused an oversized raft message");
                return Err(Status::resource_exhausted(format!(
                    "a raft message of {total} bytes exceeds the limit of {MAX_LARGE_MESSAGE_BYTES}"
                )));
            }
        };
        let Some(_slot) = StreamSlot::take(&self.streaming, from) else {
            return Err(Status::resource_exhausted(format!(
                "raft node {from} already has a large message streaming"
            )));
        };
        // Grown as chunks arrive rather than reserved whole, so a stream that announces a big
        // message and then stalls holds little.
        let mut message = Vec::with_capacity(total.min(INITIAL_REASSEMBLY_BYTES));
        let mut next = Some(first);
        while let Some(chunk) = next {
            if (chunk.from, chunk.to, chunk.total) != (from, to, total as u64) {
                return Err(Status::invalid_argument(
                    "chunk header differs from the stream's first chunk",
                ));
            }
            if chunk.data.len() > total - message.len() {
                return Err(Status::invalid_argument(format!(
                    "chunks overflow the announced {total} bytes"
                )));
            }
            message.extend_from_slice(&chunk.data);
            next = chunks.message().await?;
        }
        if message.len() != total {
            return Err(Status::invalid_argument(format!(
                "chunk stream ended after {} of {total} bytes",
                message.len()
            )));
        }
        // Like a batch's messages, the message itself must claim the authenticated sender.
        let delivered = match self.inbox.deliver_encoded_from(&message, from) {
            Ok(()) => 1,
            Err(e) => {
                tracing::debug!(from, error = %e, "dropped large raft message");
                0
            }
        };
        Ok(Response::new(Ack { delivered }))
    }

    async fn propose(&self, request: Request<Proposal>) -> Result<Response<Proposed>, Status> {
        let peer = authenticated(&request)?;
        let forwarded = request.into_inner();
        self.authorize_member(&peer, forwarded.from)?;
        let Some(node) = &self.proposer else {
            return Err(Status::unimplemented(format!(
                "raft node {} takes no forwarded proposals",
                self.inbox.node()
            )));
        };
        let size = forwarded.command.len();
        if size > MAX_PROPOSAL_BYTES {
            tracing::warn!(peer = %peer.spiffe_id, from = forwarded.from, size, "refused an oversized proposal");
            return Err(Status::resource_exhausted(format!(
                "a command of {size} bytes exceeds the limit of {MAX_PROPOSAL_BYTES}"
            )));
        }
        // Only this node's own: one that is not the leader answers NotLeader rather than
        // forwarding again. If the caller gives up first, the proposal stays proposed.
        let outcome = node.propose(forwarded.command).await;
        if let Err(e) = &outcome {
            tracing::debug!(from = forwarded.from, error = %e, "forwarded proposal failed");
        }
        Ok(Response::new(proposal::to_wire(outcome)))
    }
}
