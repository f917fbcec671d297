//! Real store nodes talking through real gRPC over real mutual TLS on 127.0.0.1.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use federation::identity::{
    CertificateAuthority, SpiffeId, Svid, TrustBundles, TrustDomain, client_config_with_alpn,
    server_config_with_alpn,
};
use store::storage::MemStore;
use store::{Node, NodeConfig, ProposeError, Role, StateMachine, Transport};
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tonic::Code;

use super::proto::raft_client::RaftClient;
use super::proto::{Batch, Chunk, Proposal, ProposeFailure};
use super::*;

const DEADLINE: Duration = Duration::from_secs(20);
const HOUR: Duration = Duration::from_secs(3600);

/// Polls `check` until it returns `Some`, failing the test after [`DEADLINE`].
async fn eventually<T, F: Future<Output = Option<T>>>(
    what: &str,
    mut check: impl FnMut() -> F,
) -> T {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Applies commands by appending them, answering `applied:` and the command; the snapshot is
/// the list, length-prefixed.
struct Log(Arc<Mutex<Vec<Vec<u8>>>>);

impl StateMachine for Log {
    fn apply(&mut self, _index: u64, command: &[u8]) -> Vec<u8> {
        self.0.lock().unwrap().push(command.to_vec());
        [b"applied:", command].concat()
    }

    fn snapshot(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for command in self.0.lock().unwrap().iter() {
            out.extend_from_slice(&(command.len() as u32).to_be_bytes());
            out.extend_from_slice(command);
        }
        out
    }

    fn restore(&mut self, mut snapshot: &[u8]) -> Result<(), String> {
        let mut commands = Vec::new();
        while !snapshot.is_empty() {
            let (len, rest) = snapshot.split_at_checked(4).ok_or("truncated length")?;
            let len = u32::from_be_bytes(len.try_into().map_err(|_| "bad length")?) as usize;
            let (command, rest) = rest.split_at_checked(len).ok_or("truncated command")?;
            commands.push(command.to_vec());
            snapshot = rest;
        }
        *self.0.lock().map_err(|e| e.to_string())? = commands;
        Ok(())
    }
}

/// Three trust domains (a cluster each, as in a real federation) that trust each other, and
/// one gateway identity per node.
struct Identities {
    _dir: tempfile::TempDir,
    bundles: Arc<TrustBundles>,
    cas: HashMap<u64, CertificateAuthority>,
}

const DOMAINS: [(u64, &str); 3] = [(1, "east"), (2, "west"), (3, "north")];

fn td(name: &str) -> TrustDomain {
    TrustDomain::parse(name).unwrap()
}

fn identities() -> Identities {
    let dir = tempfile::tempdir().unwrap();
    let mut bundles = TrustBundles::new();
    let mut cas = HashMap::new();
    for (node, name) in DOMAINS {
        let ca = CertificateAuthority::load_or_create(&dir.path().join(name), &td(name)).unwrap();
        bundles.insert_pem(td(name), &ca.bundle_pem()).unwrap();
        cas.insert(node, ca);
    }
    Identities {
        _dir: dir,
        bundles: Arc::new(bundles),
        cas,
    }
}

impl Identities {
    fn id(&self, node: u64) -> SpiffeId {
        SpiffeId::gateway(self.cas[&node].trust_domain(), &format!("gw-{node}")).unwrap()
    }

    fn svid(&self, node: u64) -> Svid {
        self.cas[&node].issue_for(&self.id(node), HOUR).unwrap()
    }

    fn client_tls(&self, svid: &Svid) -> ClientTls {
        client_tls(svid, &self.bundles)
    }
}

fn client_tls(svid: &Svid, bundles: &Arc<TrustBundles>) -> ClientTls {
    let configs: HashMap<TrustDomain, Arc<rustls::ClientConfig>> = DOMAINS
        .iter()
        .map(|(_, name)| {
            let config = client_config_with_alpn(svid, bundles.clone(), &td(name), &[ALPN]);
            (td(name), Arc::new(config.unwrap()))
        })
        .collect();
    Arc::new(move |domain: &TrustDomain| configs.get(domain).cloned())
}

struct Member {
    node: Node,
    transport: Arc<GrpcTransport>,
    applied: Arc<Mutex<Vec<Vec<u8>>>>,
    stop_server: Option<oneshot::Sender<()>>,
    server: JoinHandle<Result<(), RaftTransportError>>,
}

impl Member {
    async fn stop(&mut self) {
        if let Some(stop) = self.stop_server.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(DEADLINE, &mut self.server)
            .await
            .expect("server stops")
            .unwrap()
            .unwrap();
        let _ = self.node.shutdown().await;
    }
}

fn config(id: u64, voters: Vec<u64>) -> NodeConfig {
    let mut config = NodeConfig::new(id, voters);
    config.tick = Duration::from_millis(20);
    config
}

/// Starts the nodes `ids` of a group of voters `ids`, each behind its own gRPC server.
async fn cluster(ids: &Identities, nodes: &[u64]) -> (PeerTable, Vec<Member>) {
    let mut listeners = Vec::new();
    let mut table = PeerTable::new();
    for &node in nodes {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        table.insert(node, ids.id(node), &addr).unwrap();
        listeners.push(listener);
    }
    let mut members = Vec::new();
    for (&node, listener) in nodes.iter().zip(listeners) {
        members.push(member(ids, &table, node, nodes.to_vec(), listener));
    }
    (table, members)
}

fn member(
    ids: &Identities,
    table: &PeerTable,
    node: u64,
    voters: Vec<u64>,
    listener: TcpListener,
) -> Member {
    let applied = Arc::default();
    let log = Log(Arc::clone(&applied));
    member_with(ids, table, config(node, voters), log, applied, listener)
}

/// A member with its own config and state machine (`applied` being what it appends to).
fn member_with(
    ids: &Identities,
    table: &PeerTable,
    config: NodeConfig,
    state_machine: impl StateMachine,
    applied: Arc<Mutex<Vec<Vec<u8>>>>,
    listener: TcpListener,
) -> Member {
    let node = config.id;
    let svid = ids.svid(node);
    let transport = GrpcTransport::new(node, table, ids.client_tls(&svid));
    let (handle, inbox) =
        store::start(config, MemStore::new(), state_machine, transport.clone()).unwrap();
    let server_tls = server_config_with_alpn(&svid, ids.bundles.clone(), &[ALPN]).unwrap();
    let (stop_server, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(serve(
        listener,
        watch::channel(Arc::new(server_tls)).1,
        watch::channel(table.clone()).1,
        inbox,
        Some(handle.clone()),
        async move {
            let _ = stopped.await;
        },
    ));
    Member {
        node: handle,
        transport,
        applied,
        stop_server: Some(stop_server),
        server,
    }
}

/// Proposes `command` through whichever member leads, retrying across elections.
async fn propose(members: &[&Member], command: &[u8]) {
    eventually("a leader to commit the proposal", || async {
        for member in members {
            let status = member.node.status().await.ok()?;
            if status.role == Role::Leader {
                return member.node.propose(command.to_vec()).await.ok().map(|_| ());
            }
        }
        None
    })
    .await;
}

async fn applied_everywhere(members: &[&Member], command: &[u8]) {
    eventually("the command to apply on every member", || async {
        let all = members
            .iter()
            .all(|m| m.applied.lock().unwrap().iter().any(|c| c == command));
        all.then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_elect_a_leader_and_replicate_over_mutual_tls() {
    let ids = identities();
    let (_, mut members) = cluster(&ids, &[1, 2, 3]).await;
    let all: Vec<&Member> = members.iter().collect();
    propose(&all, b"hello").await;
    applied_everywhere(&all, b"hello").await;
    for member in &mut members {
        member.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_peer_does_not_stop_the_other_two() {
    let ids = identities();
    let (_, mut members) = cluster(&ids, &[1, 2, 3]).await;
    {
        let all: Vec<&Member> = members.iter().collect();
        propose(&all, b"before").await;
        applied_everywhere(&all, b"before").await;
    }
    // Stop a follower, so the leader keeps sending to a dead peer.
    let mut leader = None;
    for (i, member) in members.iter().enumerate() {
        if member.node.status().await.unwrap().role == Role::Leader {
            leader = Some(i);
        }
    }
    let dead = (leader.unwrap_or(0) + 1) % 3;
    members[dead].stop().await;
    let live: Vec<&Member> = members
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != dead)
        .map(|(_, m)| m)
        .collect();
    for i in 0..5 {
        let command = format!("after-{i}");
        propose(&live, command.as_bytes()).await;
        applied_everywhere(&live, command.as_bytes()).await;
    }
    assert!(
        !members[dead]
            .applied
            .lock()
            .unwrap()
            .iter()
            .any(|c| c.starts_with(b"after")),
        "the dead node applied nothing after it stopped"
    );
    for (i, member) in members.iter_mut().enumerate() {
        if i != dead {
            member.stop().await;
        }
    }
}

/// Records what a node sends instead of sending it.
#[derive(Default)]
struct Recorder(Mutex<Vec<(u64, Vec<u8>)>>);

impl Transport for Recorder {
    fn send(&self, to: u64, msgs: Vec<Vec<u8>>) {
        let mut sent = self.0.lock().unwrap();
        sent.extend(msgs.into_iter().map(|m| (to, m)));
    }
}

/// A genuine Raft message from node 3 to node 1: the pre-vote request node 3 sends when it
/// hears from no leader.
async fn message_from_3_to_1() -> Vec<u8> {
    let recorder = Arc::new(Recorder::default());
    let (node, _inbox) = store::start(
        config(3, vec![1, 2, 3]),
        MemStore::new(),
        Log(Arc::default()),
        recorder.clone(),
    )
    .unwrap();
    let message = eventually("node 3 to campaign", || async {
        let sent = recorder.0.lock().unwrap();
        sent.iter().find(|(to, _)| *to == 1).map(|(_, m)| m.clone())
    })
    .await;
    let _ = node.shutdown().await;
    message
}

/// Node 1 of voters 1, 2, 3 behind its server; nodes 2 and 3 are members whose addresses
/// nothing listens at.
async fn lone_node_1(ids: &Identities) -> (Peer, Member) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let mut table = PeerTable::new();
    table.insert(1, ids.id(1), &addr).unwrap();
    table.insert(2, ids.id(2), "127.0.0.1:1").unwrap();
    table.insert(3, ids.id(3), "127.0.0.1:1").unwrap();
    let member = member(ids, &table, 1, vec![1, 2, 3], listener);
    (table.get(1).unwrap().clone(), member)
}

fn client(peer: &Peer, tls: ClientTls) -> RaftClient<tonic::transport::Channel> {
    RaftClient::new(client::channel(peer.clone(), tls, None))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_from_is_refused_and_nothing_is_delivered() {
    let ids = identities();
    let message = message_from_3_to_1().await;
    let (node1, mut member1) = lone_node_1(&ids).await;

    // Node 2, correctly authenticated, claims to be node 3.
    let mut as_2 = client(&node1, ids.client_tls(&ids.svid(2)));
    let forged = Batch {
        from: 3,
        to: 1,
        messages: vec![message.clone()],
    };
    let status = as_2.send(forged).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");

    // The same bytes from node 3 itself are delivered.
    let mut as_3 = client(&node1, ids.client_tls(&ids.svid(3)));
    let genuine = Batch {
        from: 3,
        to: 1,
        messages: vec![message],
    };
    let ack = as_3.send(genuine).await.unwrap().into_inner();
    assert_eq!(ack.delivered, 1);

    // A batch for another node is refused, and the refusals cost node 2 nothing but the calls.
    let misrouted = Batch {
        from: 2,
        to: 3,
        messages: vec![],
    };
    let status = as_2.send(misrouted).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let empty = Batch {
        from: 2,
        to: 1,
        messages: vec![],
    };
    assert_eq!(as_2.send(empty).await.unwrap().into_inner().delivered, 0);

    // Node 2 speaking as itself at the batch level cannot smuggle node 3's message inside.
    let smuggled = Batch {
        from: 2,
        to: 1,
        messages: vec![message_from_3_to_1().await],
    };
    assert_eq!(as_2.send(smuggled).await.unwrap().into_inner().delivered, 0);
    member1.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_with_a_certificate_from_an_unknown_ca_cannot_connect() {
    let ids = identities();
    let (node1, mut member1) = lone_node_1(&ids).await;
    let elsewhere = tempfile::tempdir().unwrap();

    // An impostor CA for a trusted domain, and a CA of a domain nobody trusts. Each client
    // trusts the real server, so only the server's verdict on the client decides.
    for name in ["west", "south"] {
        let ca =
            CertificateAuthority::load_or_create(&elsewhere.path().join(name), &td(name)).unwrap();
        let id = SpiffeId::gateway(ca.trust_domain(), "gw-2").unwrap();
        let svid = ca.issue_for(&id, HOUR).unwrap();
        let mut impostor = client(&node1, client_tls(&svid, &ids.bundles));
        let batch = Batch {
            from: 2,
            to: 1,
            messages: vec![],
        };
        let status = impostor.send(batch).await.unwrap_err();
        // Refused at the handshake: a transport error, not an answer from the service.
        let transport_error = std::error::Error::source(&status)
            .is_some_and(|source| source.is::<tonic::transport::Error>());
        assert!(transport_error, "{name}: {status:?}");
    }

    // The server still serves genuine peers.
    let mut genuine = client(&node1, ids.client_tls(&ids.svid(2)));
    let batch = Batch {
        from: 2,
        to: 1,
        messages: vec![],
    };
    genuine.send(batch).await.unwrap();
    member1.stop().await;
}

/// `message`, a genuine encoded Raft message, grown to at least `size` bytes by an unknown
/// field appended to it: still the same Raft message to its receiver, but one too large to
/// travel inside a batch.
fn padded(mut message: Vec<u8>, size: usize) -> Vec<u8> {
    fn varint(out: &mut Vec<u8>, mut value: u64) {
        while value >= 0x80 {
            out.push((value as u8) | 0x80);
            value >>= 7;
        }
        out.push(value as u8);
    }
    let padding = size.saturating_sub(message.len());
    varint(&mut message, (1000 << 3) | 2); // field 1000, length-delimited
    varint(&mut message, padding as u64);
    message.extend((0..padding).map(|i| i as u8));
    message
}

/// `message` as a `SendLarge` stream from `from` to `to`, in pieces of `piece` bytes.
fn chunks(from: u64, to: u64, message: &[u8], piece: usize) -> Vec<Chunk> {
    message
        .chunks(piece)
        .map(|data| Chunk {
            from,
            to,
            total: message.len() as u64,
            data: data.to_vec(),
        })
        .collect()
}

fn large_client(peer: &Peer, tls: ClientTls) -> RaftClient<tonic::transport::Channel> {
    client(peer, tls)
        .max_encoding_message_size(64 * 1024 * 1024)
        .max_decoding_message_size(64 * 1024 * 1024)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_message_is_streamed_in_chunks_and_delivered_whole() {
    let ids = identities();
    let large = padded(message_from_3_to_1().await, 5 * CHUNK_BYTES);
    assert!(large.len() > MAX_GRPC_MESSAGE_BYTES);
    let (node1, mut member1) = lone_node_1(&ids).await;
    let mut as_3 = large_client(&node1, ids.client_tls(&ids.svid(3)));

    // Too large for a batch: the server's message limit refuses it.
    let batch = Batch {
        from: 3,
        to: 1,
        messages: vec![large.clone()],
    };
    let status = as_3.send(batch).await.unwrap_err();
    assert_ne!(status.code(), Code::Ok);

    // Streamed, it arrives whole and decodes.
    let stream = futures::stream::iter(chunks(3, 1, &large, CHUNK_BYTES));
    let ack = as_3.send_large(stream).await.unwrap().into_inner();
    assert_eq!(ack.delivered, 1);

    // Chunks need not be of the sender's size; and the bytes must still claim the sender.
    let stream = futures::stream::iter(chunks(3, 1, &large, 300 * 1024 + 7));
    assert_eq!(
        as_3.send_large(stream)
            .await
            .unwrap()
            .into_inner()
            .delivered,
        1
    );
    let mut as_2 = large_client(&node1, ids.client_tls(&ids.svid(2)));
    let stream = futures::stream::iter(chunks(2, 1, &large, CHUNK_BYTES));
    assert_eq!(
        as_2.send_large(stream)
            .await
            .unwrap()
            .into_inner()
            .delivered,
        0
    );
    member1.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_forged_or_oversized_chunk_streams_are_refused() {
    let ids = identities();
    let large = padded(message_from_3_to_1().await, 2 * CHUNK_BYTES);
    let (node1, mut member1) = lone_node_1(&ids).await;
    let mut as_2 = large_client(&node1, ids.client_tls(&ids.svid(2)));
    let mut as_3 = large_client(&node1, ids.client_tls(&ids.svid(3)));
    let chunk = |from, to, total, data: &[u8]| Chunk {
        from,
        to,
        total,
        data: data.to_vec(),
    };

    let cases: Vec<(&str, Vec<Chunk>, Code)> = vec![
        // Refused on the first chunk, before anything is allocated: neither of these could be.
        (
            "just over the cap",
            vec![chunk(3, 1, MAX_LARGE_MESSAGE_BYTES as u64 + 1, b"x")],
            Code::ResourceExhausted,
        ),
        (
            "u64::MAX",
            vec![chunk(3, 1, u64::MAX, b"x")],
            Code::ResourceExhausted,
        ),
        ("empty stream", vec![], Code::InvalidArgument),
        (
            "zero total",
            vec![chunk(3, 1, 0, b"")],
            Code::InvalidArgument,
        ),
        (
            "one overflowing chunk",
            vec![chunk(3, 1, 10, &[0; 11])],
            Code::InvalidArgument,
        ),
        (
            "overflow on a later chunk",
            vec![chunk(3, 1, 10, &[0; 6]), chunk(3, 1, 10, &[0; 6])],
            Code::InvalidArgument,
        ),
        (
            "short stream",
            chunks(3, 1, &large, CHUNK_BYTES)[..1].to_vec(),
            Code::InvalidArgument,
        ),
        (
            "header changes midway",
            vec![chunk(3, 1, 10, &[0; 5]), chunk(3, 1, 11, &[0; 5])],
            Code::InvalidArgument,
        ),
        (
            "for another node",
            chunks(3, 2, &large, CHUNK_BYTES),
            Code::InvalidArgument,
        ),
    ];
    for (what, stream, code) in cases {
        let status = as_3
            .send_large(futures::stream::iter(stream))
            .await
            .unwrap_err();
        assert_eq!(status.code(), code, "{what}: {status:?}");
    }

    // Node 2, correctly authenticated, claims to be node 3.
    let forged = futures::stream::iter(chunks(3, 1, &large, CHUNK_BYTES));
    let status = as_2.send_large(forged).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");

    // The refusals cost only those streams: the genuine one is delivered.
    let genuine = futures::stream::iter(chunks(3, 1, &large, CHUNK_BYTES));
    let ack = as_3.send_large(genuine).await.unwrap().into_inner();
    assert_eq!(ack.delivered, 1);
    member1.stop().await;
}

/// [`Log`], counting the snapshots it restores.
struct Restores(Log, Arc<AtomicUsize>);

impl StateMachine for Restores {
    fn apply(&mut self, index: u64, command: &[u8]) -> Vec<u8> {
        self.0.apply(index, command)
    }

    fn snapshot(&self) -> Vec<u8> {
        self.0.snapshot()
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), String> {
        self.1.fetch_add(1, Ordering::SeqCst);
        self.0.restore(snapshot)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_behind_a_compacted_log_catches_up_through_a_streamed_snapshot() {
    let ids = identities();
    let mut listeners = Vec::new();
    let mut table = PeerTable::new();
    for node in [1, 2, 3] {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        table
            .insert(
                node,
                ids.id(node),
                &listener.local_addr().unwrap().to_string(),
            )
            .unwrap();
        listeners.push(listener);
    }
    // Node 3 is down (nothing listens at its address) while 1 and 2 commit and compact.
    let late_addr = listeners.pop().unwrap().local_addr().unwrap();
    let start = |node: u64, listener, restores: &Arc<AtomicUsize>| {
        let mut config = config(node, vec![1, 2, 3]);
        config.snapshot_every = 4;
        let applied: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
        let state_machine = Restores(Log(Arc::clone(&applied)), Arc::clone(restores));
        member_with(&ids, &table, config, state_machine, applied, listener)
    };
    let restores = Arc::new(AtomicUsize::new(0));
    let mut members = Vec::new();
    for (node, listener) in [1, 2].into_iter().zip(listeners) {
        members.push(start(node, listener, &Arc::new(AtomicUsize::new(0))));
    }
    // 12 commands of 512 KiB: a 6 MiB snapshot, more than a batch may carry.
    let commands: Vec<Vec<u8>> = (0..12u8).map(|i| vec![i; CHUNK_BYTES / 2]).collect();
    {
        let live: Vec<&Member> = members.iter().collect();
        for command in &commands {
            propose(&live, command).await;
        }
        applied_everywhere(&live, commands.last().unwrap()).await;
    }

    let listener = TcpListener::bind(late_addr).await.unwrap();
    members.push(start(3, listener, &restores));
    eventually("node 3 to catch up", || async {
        let applied = members[2].applied.lock().unwrap();
        (*applied == commands).then_some(())
    })
    .await;
    assert!(
        restores.load(Ordering::SeqCst) >= 1,
        "node 3 caught up through a snapshot"
    );
    for member in &mut members {
        member.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_forwards_a_proposal_to_the_leader_and_a_follower_names_the_leader() {
    let ids = identities();
    let (_, mut members) = cluster(&ids, &[1, 2, 3]).await;
    let all: Vec<&Member> = members.iter().collect();

    // A follower forwards to the leader it knows; retried across elections. An attempt that
    // failed other than with NotLeader may have applied all the same.
    let ambiguous = AtomicUsize::new(0);
    let (follower, leader, (index, result)) =
        eventually("a forwarded proposal to apply", || async {
            for member in &members {
                let status = member.node.status().await.ok()?;
                let Some(leader) = status.leader else {
                    continue;
                };
                if status.role != Role::Follower {
                    continue;
                }
                match member
                    .transport
                    .forward(leader, b"forwarded".to_vec())
                    .await
                {
                    Ok(applied) => return Some((status.id, leader, applied)),
                    Err(ProposeError::NotLeader { .. }) => {}
                    Err(_) => {
                        ambiguous.fetch_add(1, Ordering::SeqCst);
                    }
                }
            }
            None
        })
        .await;
    assert_ne!(follower, leader);
    assert_eq!(result, b"applied:forwarded");
    assert!(index > 1, "a real log index: {index}");
    let leader_member = members.iter().find(|m| m.node.id() == leader).unwrap();
    assert!(leader_member.node.status().await.unwrap().applied >= index);
    applied_everywhere(&all, b"forwarded").await;

    // Forwarded to a follower, a proposal is not forwarded again: the follower names the leader.
    let other = [1, 2, 3]
        .into_iter()
        .find(|&n| n != follower && n != leader)
        .unwrap();
    let from = members.iter().find(|m| m.node.id() == follower).unwrap();
    let named = eventually("a follower to name the leader", || async {
        match from.transport.forward(other, b"misdirected".to_vec()).await {
            Err(ProposeError::NotLeader {
                leader: Some(named),
            }) => Some(named),
            _ => None,
        }
    })
    .await;
    assert_ne!(named, other);

    // A node that is not in the peer table, or this node itself, is no leader to forward to.
    for to in [9, 0, follower] {
        assert_eq!(
            from.transport.forward(to, b"nowhere".to_vec()).await,
            Err(ProposeError::NotLeader { leader: None }),
            "{to}"
        );
    }
    let attempts = 1 + ambiguous.load(Ordering::SeqCst);
    for member in &members {
        let applied = member.applied.lock().unwrap();
        let times = applied.iter().filter(|c| *c == b"forwarded").count();
        assert!(
            (1..=attempts).contains(&times),
            "applied {times} times on {} after {attempts} attempts",
            member.node.id()
        );
        assert!(!applied.iter().any(|c| c == b"nowhere"));
    }
    for member in &mut members {
        member.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_proposals_from_non_members_forgers_or_oversized_are_refused() {
    let ids = identities();
    let (node1, mut member1) = lone_node_1(&ids).await;
    let mut table = PeerTable::new();
    table
        .insert(1, node1.id.clone(), node1.addr.as_str())
        .unwrap();
    table.insert(3, ids.id(3), "127.0.0.1:1").unwrap();
    let proposal = |from, command: &[u8]| Proposal {
        from,
        command: command.to_vec(),
    };

    // A gateway of a trusted domain, with a genuine SVID, that is not a member.
    let outsider = SpiffeId::gateway(ids.cas[&2].trust_domain(), "gw-9").unwrap();
    let outsider_svid = ids.cas[&2].issue_for(&outsider, HOUR).unwrap();
    let outsider_tls = ids.client_tls(&outsider_svid);
    for from in [9, 2] {
        let status = client(&node1, outsider_tls.clone())
            .propose(proposal(from, b"outsider"))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::PermissionDenied, "{from}: {status:?}");
    }
    let as_outsider = GrpcTransport::new(9, &table, outsider_tls);
    let refused = as_outsider.forward(1, b"outsider".to_vec()).await;
    assert!(
        matches!(refused, Err(ProposeError::Rejected { .. })),
        "{refused:?}"
    );

    // Node 2, correctly authenticated, claims to be node 3.
    let mut as_2 = large_client(&node1, ids.client_tls(&ids.svid(2)));
    let status = as_2.propose(proposal(3, b"forged")).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");

    // Too large: refused before anything is proposed. At the limit it is proposed, and node 1,
    // which leads nothing (no other member runs), answers that it is not the leader.
    let status = as_2
        .propose(proposal(2, &vec![0; MAX_PROPOSAL_BYTES + 1]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    let answer = as_2
        .propose(proposal(2, &vec![0; MAX_PROPOSAL_BYTES]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.failure(), ProposeFailure::NotLeader);
    assert_eq!(answer.leader, 0);
    let as_member_2 = GrpcTransport::new(2, &table, ids.client_tls(&ids.svid(2)));
    let oversized = as_member_2
        .forward(1, vec![0; MAX_PROPOSAL_BYTES + 1])
        .await;
    assert!(
        matches!(oversized, Err(ProposeError::Rejected { .. })),
        "{oversized:?}"
    );

    // A genuine member's forward to a node that is not the leader: NotLeader, no leader known.
    assert_eq!(
        as_member_2.forward(1, b"genuine".to_vec()).await,
        Err(ProposeError::NotLeader { leader: None })
    );
    // A node nobody answers for: the call fails, which says nothing about the command.
    assert_eq!(
        as_member_2.forward(3, b"unanswered".to_vec()).await,
        Err(ProposeError::Dropped)
    );
    assert!(member1.applied.lock().unwrap().is_empty());
    member1.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_a_proposer_takes_no_proposals_and_only_its_own_node_proposes() {
    let ids = identities();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let mut table = PeerTable::new();
    table.insert(1, ids.id(1), &addr).unwrap();
    table.insert(2, ids.id(2), "127.0.0.1:1").unwrap();
    let start = |node| {
        store::start(
            config(node, vec![1, 2]),
            MemStore::new(),
            Log(Arc::default()),
            Arc::new(Recorder::default()),
        )
        .unwrap()
    };
    let (node1, inbox1) = start(1);
    let (node2, _inbox2) = start(2);
    let server_tls = || {
        let config = server_config_with_alpn(&ids.svid(1), ids.bundles.clone(), &[ALPN]);
        watch::channel(Arc::new(config.unwrap())).1
    };
    let peers = || watch::channel(table.clone()).1;

    // Node 2's handle cannot take node 1's proposals.
    let spare = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mismatched = serve(
        spare,
        server_tls(),
        peers(),
        inbox1.clone(),
        Some(node2.clone()),
        std::future::pending(),
    )
    .await;
    assert!(
        matches!(
            mismatched,
            Err(RaftTransportError::MismatchedProposer {
                proposer: 2,
                inbox: 1
            })
        ),
        "{mismatched:?}"
    );

    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(serve(
        listener,
        server_tls(),
        peers(),
        inbox1,
        None,
        async move {
            let _ = stopped.await;
        },
    ));
    let peer = table.get(1).unwrap().clone();
    let status = client(&peer, ids.client_tls(&ids.svid(2)))
        .propose(Proposal {
            from: 2,
            command: b"nobody takes this".to_vec(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented, "{status:?}");
    let as_2 = GrpcTransport::new(2, &table, ids.client_tls(&ids.svid(2)));
    let refused = as_2.forward(1, b"nobody takes this".to_vec()).await;
    assert!(
        matches!(refused, Err(ProposeError::Rejected { .. })),
        "{refused:?}"
    );

    let _ = stop.send(());
    tokio::time::timeout(DEADLINE, server)
        .await
        .expect("server stops")
        .unwrap()
        .unwrap();
    let _ = node1.shutdown().await;
    let _ = node2.shutdown().await;
}
