//! Real store nodes talking through real gRPC over real mutual TLS on 127.0.0.1.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use federation::identity::{
    CertificateAuthority, SpiffeId, Svid, TrustBundles, TrustDomain, client_config_with_alpn,
    server_config_with_alpn,
};
use store::storage::MemStore;
use store::{Node, NodeConfig, Role, StateMachine, Transport};
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tonic::Code;

use super::proto::Batch;
use super::proto::raft_client::RaftClient;
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

/// Applies commands by appending them; the snapshot is the list, length-prefixed.
struct Log(Arc<Mutex<Vec<Vec<u8>>>>);

impl StateMachine for Log {
    fn apply(&mut self, _index: u64, command: &[u8]) -> Vec<u8> {
        self.0.lock().unwrap().push(command.to_vec());
        Vec::new()
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
    let svid = ids.svid(node);
    let transport = GrpcTransport::new(node, table, ids.client_tls(&svid));
    let applied = Arc::default();
    let (handle, inbox) = store::start(
        config(node, voters),
        MemStore::new(),
        Log(Arc::clone(&applied)),
        transport,
    )
    .unwrap();
    let server_tls = server_config_with_alpn(&svid, ids.bundles.clone(), &[ALPN]).unwrap();
    let (stop_server, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(serve(
        listener,
        watch::channel(Arc::new(server_tls)).1,
        watch::channel(table.clone()).1,
        inbox,
        async move {
            let _ = stopped.await;
        },
    ));
    Member {
        node: handle,
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
    RaftClient::new(client::channel(peer.clone(), tls))
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
