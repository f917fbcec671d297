//! The sending end: [`GrpcTransport`], one bounded queue and one sender task per peer, and
//! proposals forwarded to the leader over the same channels.

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use federation::identity::{TrustDomain, peer_spiffe_id};
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use store::{ProposeError, Transport};
use tokio::net::TcpStream;
use tokio::runtime::Handle;
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status};

use super::proto::raft_client::RaftClient;
use super::proto::{Batch, Chunk, Proposal};
use super::{
    CHUNK_BYTES, MAX_BATCH_BYTES, MAX_GRPC_MESSAGE_BYTES, MAX_LARGE_MESSAGE_BYTES,
    MAX_PROPOSAL_BYTES, MESSAGE_FRAMING_BYTES, Peer, PeerTable, proposal,
};

/// Batches (one [`Transport::send`] each) queued for one peer before new ones are dropped.
const QUEUE_CAPACITY: usize = 1024;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// A call not answered by then fails, and the sender backs off.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
const INITIAL_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// A forwarded proposal not answered by then counts as dropped, though it may still apply.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(5);
/// Forwarded proposals in flight to one peer at once; more wait (within [`FORWARD_TIMEOUT`]).
/// Well below the streams a server allows a connection, so the Raft sender's calls on the same
/// connection always find a stream: in a group of two, the leader commits nothing without
/// this node's acknowledgements, which must not queue behind proposals waiting to commit.
pub(super) const MAX_FORWARDS_IN_FLIGHT: usize = 32;
const _: () = assert!(MAX_FORWARDS_IN_FLIGHT < super::server::MAX_STREAMS_PER_CONNECTION as usize);

/// The TLS client config to dial a peer of a trust domain with, or `None` if that domain is not
/// trusted. Called on every (re)connect, so renewed SVIDs are picked up by new connections.
/// The configs should come from `federation::identity::client_config_with_alpn` with
/// [`super::ALPN`].
pub type ClientTls = Arc<dyn Fn(&TrustDomain) -> Option<Arc<ClientConfig>> + Send + Sync>;

/// Sends Raft messages to peers over gRPC and mutual TLS.
///
/// Each peer has its own bounded queue and sender task, so a slow or dead peer only loses its
/// own messages (dropped when its queue is full; Raft retransmits) and never delays the others
/// or the node task.
pub struct GrpcTransport {
    local: u64,
    tls: ClientTls,
    runtime: Handle,
    senders: Mutex<HashMap<u64, PeerSender>>,
}

struct PeerSender {
    peer: Peer,
    queue: mpsc::Sender<Vec<Vec<u8>>>,
    /// The sender task's channel, shared by forwarded proposals (calls multiplex over its
    /// connection).
    channel: Channel,
    /// Bounds the forwarded proposals in flight to [`MAX_FORWARDS_IN_FLIGHT`].
    forwards: Arc<Semaphore>,
}

impl GrpcTransport {
    /// A transport for node `local`, dialling the other nodes of `peers`.
    ///
    /// # Panics
    /// Outside a tokio runtime (its sender tasks run on the current one).
    pub fn new(local: u64, peers: &PeerTable, tls: ClientTls) -> Arc<Self> {
        let transport = Arc::new(Self {
            local,
            tls,
            runtime: Handle::current(),
            senders: Mutex::default(),
        });
        transport.set_peers(peers);
        transport
    }

    /// Dials the nodes of `peers` from now on: new peers get a sender, removed ones lose theirs
    /// (after its call in flight), and a peer whose identity or address changed is redialled.
    pub fn set_peers(&self, peers: &PeerTable) {
        // Connections leave from our own Raft listener's IP, so that peers (and firewalls)
        // see the member's address rather than whatever the route picks.
        let source = source_ip(peers.get(self.local));
        let mut senders = self.senders();
        senders.retain(|node, sender| peers.get(*node) == Some(&sender.peer));
        for (node, peer) in peers.iter() {
            if node == self.local || senders.contains_key(&node) {
                continue;
            }
            let (queue, batches) = mpsc::channel(QUEUE_CAPACITY);
            let channel = channel(peer.clone(), self.tls.clone(), source);
            self.runtime.spawn(run_sender(
                self.local,
                node,
                peer.clone(),
                channel.clone(),
                batches,
            ));
            senders.insert(
                node,
                PeerSender {
                    peer: peer.clone(),
                    queue,
                    channel,
                    forwards: Arc::new(Semaphore::new(MAX_FORWARDS_IN_FLIGHT)),
                },
            );
        }
    }

    /// Asks node `leader` to propose `command` (`Raft.Propose`, over the channel the Raft
    /// messages to it take) and returns what its [`store::Node::propose`] did: the log index and
    /// the state machine's result once the command has applied on it, or its error, the same as
    /// proposing there. It does not forward again: a `leader` that is not the leader answers
    /// [`ProposeError::NotLeader`] with the leader it knows of, for the caller to try next.
    ///
    /// Besides the leader's own answers:
    /// * [`ProposeError::NotLeader`]` { leader: None }` without a call if `leader` is not in
    ///   the peer table (or is this node, whose proposals go to its own [`store::Node`]);
    /// * [`ProposeError::Rejected`] if `command` is over [`MAX_PROPOSAL_BYTES`] (without a
    ///   call), or `leader` refused the call itself: this node is not a member in its eyes, or
    ///   it takes no forwarded proposals;
    /// * [`ProposeError::Dropped`] if the call failed (unreachable, reset) or was not answered
    ///   within 5 seconds (waiting for one of the [`MAX_FORWARDS_IN_FLIGHT`] included). Unlike
    ///   the node's own `Dropped`, that does not promise the command did not apply: the leader
    ///   may have taken it before the call broke, and then it applies all the same. Check
    ///   before retrying a command that is not idempotent.
    ///
    /// The leader's result must fit in a gRPC message (a little over [`MAX_BATCH_BYTES`]), or
    /// the answer is lost and the call counts as dropped.
    pub async fn forward(
        &self,
        leader: u64,
        command: Vec<u8>,
    ) -> Result<(u64, Vec<u8>), ProposeError> {
        let size = command.len();
        if size > MAX_PROPOSAL_BYTES {
            return Err(ProposeError::Rejected {
                reason: format!(
                    "a command of {size} bytes exceeds the limit of {MAX_PROPOSAL_BYTES} for forwarding"
                ),
            });
        }
        let (channel, forwards) = {
            let senders = self.senders();
            let Some(sender) = senders.get(&leader) else {
                return Err(ProposeError::NotLeader { leader: None });
            };
            (sender.channel.clone(), Arc::clone(&sender.forwards))
        };
        let call = async {
            // The semaphore is never closed.
            let _permit = forwards.acquire_owned().await;
            let mut client = RaftClient::new(channel)
                .max_encoding_message_size(MAX_GRPC_MESSAGE_BYTES)
                .max_decoding_message_size(MAX_GRPC_MESSAGE_BYTES);
            let mut request = Request::new(Proposal {
                from: self.local,
                command,
            });
            // The leader stops waiting for the command to apply when we stop waiting for it.
            request.set_timeout(FORWARD_TIMEOUT);
            client.propose(request).await
        };
        match tokio::time::timeout(FORWARD_TIMEOUT, call).await {
            Ok(Ok(answer)) => proposal::from_wire(answer.into_inner()),
            Ok(Err(status)) => Err(forward_failed(leader, &status)),
            Err(_) => {
                tracing::debug!(leader, "forwarded proposal timed out");
                Err(ProposeError::Dropped)
            }
        }
    }

    fn senders(&self) -> MutexGuard<'_, HashMap<u64, PeerSender>> {
        // Every update is one insert or remove, so a panicked holder leaves a consistent map.
        self.senders.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Transport for GrpcTransport {
    fn send(&self, to: u64, msgs: Vec<Vec<u8>>) {
        if msgs.is_empty() {
            return;
        }
        let senders = self.senders();
        let Some(sender) = senders.get(&to) else {
            tracing::trace!(to, "dropped raft messages for a node not in the peer table");
            return;
        };
        if let Err(e) = sender.queue.try_send(msgs) {
            tracing::trace!(to, error = %e, "dropped raft messages");
        }
    }
}

/// What a forwarded proposal's failed call means: refusals by the leader's server, which come
/// before it proposes anything, are [`ProposeError::Rejected`]; anything else is a failed call
/// (which may have reached the leader), [`ProposeError::Dropped`].
fn forward_failed(leader: u64, status: &Status) -> ProposeError {
    match status.code() {
        Code::PermissionDenied
        | Code::Unauthenticated
        | Code::InvalidArgument
        | Code::ResourceExhausted
        | Code::Unimplemented => {
            tracing::warn!(leader, code = ?status.code(), message = status.message(), "raft node refused a forwarded proposal");
            ProposeError::Rejected {
                reason: format!(
                    "raft node {leader} refused the forwarded proposal: {}",
                    status.message()
                ),
            }
        }
        code => {
            tracing::debug!(
                leader,
                ?code,
                message = status.message(),
                "forwarded proposal failed"
            );
            ProposeError::Dropped
        }
    }
}

/// The IP our own Raft listener is on, if it is a specific one (not 0.0.0.0 or ::).
fn source_ip(own: Option<&Peer>) -> Option<std::net::IpAddr> {
    let host = own?
        .addr
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    host.parse::<std::net::IpAddr>()
        .ok()
        .filter(|ip| !ip.is_unspecified())
}

/// A lazily connected channel to `peer` over our TLS, leaving from `source` if given; tonic
/// redials it after a failure.
pub(super) fn channel(peer: Peer, tls: ClientTls, source: Option<std::net::IpAddr>) -> Channel {
    // The URI only names the authority for HTTP/2; the connector below does the dialling.
    let endpoint = Endpoint::from(
        http::Uri::builder()
            .scheme("http")
            .authority(peer.addr.clone())
            .path_and_query("/")
            .build()
            .unwrap_or_default(),
    )
    .connect_timeout(CONNECT_TIMEOUT)
    .timeout(CALL_TIMEOUT)
    .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
    .keep_alive_timeout(KEEPALIVE_TIMEOUT)
    .keep_alive_while_idle(true);
    endpoint.connect_with_connector_lazy(tower::service_fn(move |_: http::Uri| {
        let peer = peer.clone();
        let tls = tls.clone();
        async move { connect(&peer, &tls, source).await }
    }))
}

/// A TCP connection to `addr`, bound to `source` when it is of the same family.
async fn dial(addr: &str, source: Option<std::net::IpAddr>) -> io::Result<TcpStream> {
    let mut last = io::Error::new(
        io::ErrorKind::NotFound,
        format!("{addr} resolves to nothing"),
    );
    for target in tokio::net::lookup_host(addr).await? {
        let socket = if target.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        if let Some(ip) = source.filter(|ip| ip.is_ipv4() == target.is_ipv4()) {
            socket.bind(std::net::SocketAddr::new(ip, 0))?;
        }
        match socket.connect(target).await {
            Ok(stream) => return Ok(stream),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// TCP, then TLS with the client config for the peer's trust domain, then a check that the
/// server is the very SPIFFE ID the peer table names (the verifier checked only its domain).
async fn connect(
    peer: &Peer,
    tls: &ClientTls,
    source: Option<std::net::IpAddr>,
) -> io::Result<TokioIo<TlsStream<TcpStream>>> {
    let result = async {
        let domain = peer.id.trust_domain();
        let config = tls(domain).ok_or_else(|| {
            io::Error::other(format!("no TLS client config for trust domain {domain}"))
        })?;
        let host = peer
            .addr
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        // The SPIFFE verifier ignores the name; rustls needs one for SNI.
        let name = ServerName::try_from(host.to_owned())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let tcp = dial(peer.addr.as_str(), source).await?;
        tcp.set_nodelay(true)?;
        let stream = TlsConnector::from(config).connect(name, tcp).await?;
        let answered = stream
            .get_ref()
            .1
            .peer_certificates()
            .map(peer_spiffe_id)
            .transpose()
            .map_err(io::Error::other)?;
        if answered.as_ref() != Some(&peer.id) {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("{answered:?} answered where {} was expected", peer.id),
            ));
        }
        Ok(TokioIo::new(stream))
    }
    .await;
    match &result {
        Ok(_) => tracing::info!(peer = %peer.id, addr = %peer.addr, "connected to raft peer"),
        Err(e) => {
            tracing::debug!(peer = %peer.id, addr = %peer.addr, error = %e, "cannot connect to raft peer");
        }
    }
    result
}

/// Sends what is queued for one peer, one call at a time, folding whatever queued while a call
/// was in flight into the next. Ends when the transport drops the peer's queue.
async fn run_sender(
    local: u64,
    to: u64,
    peer: Peer,
    channel: Channel,
    mut queue: mpsc::Receiver<Vec<Vec<u8>>>,
) {
    let mut client = RaftClient::new(channel)
        .max_encoding_message_size(MAX_GRPC_MESSAGE_BYTES)
        .max_decoding_message_size(MAX_GRPC_MESSAGE_BYTES);
    let mut backoff = INITIAL_BACKOFF;
    let mut healthy = true;
    // A batch taken from the queue that did not fit into the previous round.
    let mut carried: Option<Vec<Vec<u8>>> = None;
    loop {
        let first = match carried.take() {
            Some(batch) => batch,
            None => match queue.recv().await {
                Some(batch) => batch,
                None => return,
            },
        };
        // A round: what queued meanwhile, up to about a batch's worth of bytes (large messages
        // included, so a round holds few of them), sent in Raft's order.
        let mut messages = Vec::new();
        let mut size = 0;
        for batch in std::iter::once(first).chain(std::iter::from_fn(|| queue.try_recv().ok())) {
            let batch_size: usize = batch.iter().map(|m| m.len() + MESSAGE_FRAMING_BYTES).sum();
            if size > 0 && size + batch_size > MAX_BATCH_BYTES {
                carried = Some(batch);
                break;
            }
            size += batch_size;
            messages.extend(batch);
        }
        match send_round(&mut client, local, to, messages).await {
            Ok(()) => {
                if !healthy {
                    tracing::info!(to, peer = %peer.id, "raft peer reachable again");
                }
                healthy = true;
                backoff = INITIAL_BACKOFF;
            }
            Err(status) => {
                if healthy {
                    tracing::warn!(
                        to, peer = %peer.id, code = ?status.code(), message = status.message(),
                        "raft peer unreachable or refusing; backing off"
                    );
                }
                healthy = false;
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                // What queued meanwhile is stale; Raft resends what still matters.
                carried = None;
                while queue.try_recv().is_ok() {}
            }
        }
    }
}

/// Sends `messages` in order: runs of small ones as batches of at most [`MAX_BATCH_BYTES`],
/// each large one (over [`CHUNK_BYTES`]) alone through `SendLarge`, after the batch of the
/// small ones before it. Stops at the first failed call; the rest of the round is dropped.
async fn send_round(
    client: &mut RaftClient<Channel>,
    local: u64,
    to: u64,
    messages: Vec<Vec<u8>>,
) -> Result<(), Status> {
    let mut pending = Vec::new();
    let mut pending_size = 0;
    for message in messages {
        if message.len() > CHUNK_BYTES {
            send_batch(client, local, to, std::mem::take(&mut pending)).await?;
            pending_size = 0;
            send_large(client, local, to, message).await?;
            continue;
        }
        let size = message.len() + MESSAGE_FRAMING_BYTES;
        if pending_size + size > MAX_BATCH_BYTES {
            send_batch(client, local, to, std::mem::take(&mut pending)).await?;
            pending_size = 0;
        }
        pending_size += size;
        pending.push(message);
    }
    send_batch(client, local, to, pending).await
}

async fn send_batch(
    client: &mut RaftClient<Channel>,
    local: u64,
    to: u64,
    messages: Vec<Vec<u8>>,
) -> Result<(), Status> {
    if messages.is_empty() {
        return Ok(());
    }
    let batch = Batch {
        from: local,
        to,
        messages,
    };
    client.send(batch).await.map(drop)
}

/// Streams one large message in [`CHUNK_BYTES`] pieces, each copied out only as the stream
/// asks for it.
async fn send_large(
    client: &mut RaftClient<Channel>,
    local: u64,
    to: u64,
    message: Vec<u8>,
) -> Result<(), Status> {
    let total = message.len();
    if total > MAX_LARGE_MESSAGE_BYTES {
        // The peer would refuse it; Raft will have to do without (and log compaction keeps it
        // trying, so say so loudly).
        tracing::warn!(
            to,
            size = total,
            "dropped a raft message larger than a peer accepts"
        );
        return Ok(());
    }
    let chunks = futures::stream::iter((0..total).step_by(CHUNK_BYTES).map(move |start| Chunk {
        from: local,
        to,
        total: total as u64,
        data: message[start..(start + CHUNK_BYTES).min(total)].to_vec(),
    }));
    let ack = client.send_large(chunks).await?.into_inner();
    if ack.delivered == 0 {
        tracing::debug!(to, size = total, "peer dropped a large raft message");
    }
    Ok(())
}
