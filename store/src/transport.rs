//! How Raft messages leave one node and reach another.
//!
//! ```text
//!  node task A ── Transport::send(to: B, msgs) ──► wire (gRPC later; in-process here)
//!                                                        │
//!  node task B ◄── bounded channel ◄── NodeInbox(B)::deliver ◄──┘
//! ```
//!
//! Sending is best effort and never waits: Raft retransmits whatever is lost (heartbeats, probes,
//! snapshots), so a slow or dead peer must cost only dropped messages, never a stalled node task
//! that would also starve the healthy peers. Both ends drop rather than block: `send` returns at
//! once and a full inbox refuses the message.
//!
//! Messages cross this boundary encoded, so Raft's protobuf types never leave the crate: a
//! network transport (gRPC, in `api`) carries opaque bytes from [`Transport::send`] to the
//! peer's [`NodeInbox::deliver_encoded`].

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use protobuf::Message as _;
use raft::eraftpb::Message;
use tokio::sync::mpsc;

/// Carries Raft messages to peers.
pub trait Transport: Send + Sync + 'static {
    /// Hands `msgs` (encoded Raft messages, all addressed to node `to`, in the order Raft
    /// produced them) to the wire. Must not block or wait for the peer; drop what cannot be
    /// sent now.
    fn send(&self, to: u64, msgs: Vec<Vec<u8>>);
}

/// Why a message was not delivered to a node. All of these are dropped messages, which Raft
/// tolerates; they are reported so a transport can count them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeliverError {
    /// The bytes are not a Raft message.
    #[error("not a raft message: {0}")]
    Decode(String),
    /// The message is addressed to another node.
    #[error("message for node {to} reached node {node}")]
    Misrouted { to: u64, node: u64 },
    /// The node's inbox is full (it is falling behind); Raft will retransmit.
    #[error("inbox of node {0} is full")]
    Full(u64),
    /// The node has stopped.
    #[error("node {0} has stopped")]
    Stopped(u64),
    /// The message claims to come from another node than the authenticated sender.
    #[error("message claims to come from node {claimed} but was sent by node {sender}")]
    Forged { claimed: u64, sender: u64 },
}

/// Where a transport delivers the messages addressed to one node. Cheap to clone.
#[derive(Debug, Clone)]
pub struct NodeInbox {
    node: u64,
    tx: mpsc::Sender<Message>,
}

impl NodeInbox {
    pub(crate) fn new(node: u64, capacity: usize) -> (Self, mpsc::Receiver<Message>) {
        let (tx, rx) = mpsc::channel(capacity);
        (Self { node, tx }, rx)
    }

    /// The node this inbox belongs to.
    pub fn node(&self) -> u64 {
        self.node
    }

    /// Queues `msg` for the node without waiting.
    pub(crate) fn deliver(&self, msg: Message) -> Result<(), DeliverError> {
        if msg.to != self.node {
            return Err(DeliverError::Misrouted {
                to: msg.to,
                node: self.node,
            });
        }
        self.tx.try_send(msg).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => DeliverError::Full(self.node),
            mpsc::error::TrySendError::Closed(_) => DeliverError::Stopped(self.node),
        })
    }

    /// Decodes a message received from the network and queues it without waiting.
    /// Like [`Self::deliver_encoded`], for a network transport that authenticated the sending
    /// node: a message claiming any other sender is refused, so one member cannot forge
    /// another's votes or appends.
    pub fn deliver_encoded_from(&self, bytes: &[u8], sender: u64) -> Result<(), DeliverError> {
        let msg =
            Message::parse_from_bytes(bytes).map_err(|e| DeliverError::Decode(e.to_string()))?;
        if msg.from != sender {
            return Err(DeliverError::Forged {
                claimed: msg.from,
                sender,
            });
        }
        self.deliver(msg)
    }

    pub fn deliver_encoded(&self, bytes: &[u8]) -> Result<(), DeliverError> {
        let msg =
            Message::parse_from_bytes(bytes).map_err(|e| DeliverError::Decode(e.to_string()))?;
        self.deliver(msg)
    }
}

/// An in-process transport for tests and single-process clusters: every node registers its
/// inbox, and messages go through the same encoding a network transport uses. A node can be cut
/// off (all messages to and from it dropped) to simulate a partition.
#[derive(Default)]
pub struct LocalTransport {
    routes: Mutex<Routes>,
}

#[derive(Default)]
struct Routes {
    inboxes: HashMap<u64, NodeInbox>,
    isolated: HashSet<u64>,
}

impl LocalTransport {
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    /// Routes messages for `inbox.node()` to `inbox`, replacing the inbox of an earlier
    /// incarnation of the same node (a restart).
    pub fn register(&self, inbox: NodeInbox) {
        self.routes().inboxes.insert(inbox.node(), inbox);
    }

    /// Stops routing to `node`; its messages are dropped from now on.
    pub fn unregister(&self, node: u64) {
        self.routes().inboxes.remove(&node);
    }

    /// Cuts `node` off: messages to and from it are dropped until [`Self::heal`].
    pub fn isolate(&self, node: u64) {
        self.routes().isolated.insert(node);
    }

    /// Reconnects a node cut off by [`Self::isolate`].
    pub fn heal(&self, node: u64) {
        self.routes().isolated.remove(&node);
    }

    fn routes(&self) -> MutexGuard<'_, Routes> {
        // The routes stay consistent even if a holder panicked: every update is one insert or
        // remove.
        self.routes.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Transport for LocalTransport {
    fn send(&self, to: u64, msgs: Vec<Vec<u8>>) {
        let routes = self.routes();
        if routes.isolated.contains(&to) {
            return;
        }
        let Some(inbox) = routes.inboxes.get(&to).cloned() else {
            return;
        };
        for bytes in msgs {
            // Decoded here only to honour isolation of the sender; delivery is by bytes, as a
            // network transport's would be.
            let from_isolated = Message::parse_from_bytes(&bytes)
                .map(|m| routes.isolated.contains(&m.from))
                .unwrap_or(false);
            if from_isolated {
                continue;
            }
            if let Err(e) = inbox.deliver_encoded(&bytes) {
                tracing::trace!(to, error = %e, "dropped raft message");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use raft::eraftpb::MessageType;

    use super::*;

    fn heartbeat(from: u64, to: u64) -> Message {
        let mut msg = Message::default();
        msg.set_msg_type(MessageType::MsgHeartbeat);
        msg.from = from;
        msg.to = to;
        msg.term = 4;
        msg
    }

    fn encoded(from: u64, to: u64) -> Vec<u8> {
        heartbeat(from, to).write_to_bytes().unwrap()
    }

    #[test]
    fn routes_messages_and_drops_them_to_and_from_an_isolated_node() {
        let transport = LocalTransport::new();
        let (inbox1, mut rx1) = NodeInbox::new(1, 8);
        let (inbox2, mut rx2) = NodeInbox::new(2, 8);
        transport.register(inbox1);
        transport.register(inbox2);

        transport.send(2, vec![encoded(1, 2)]);
        let got = rx2.try_recv().expect("delivered");
        assert_eq!((got.from, got.to, got.term), (1, 2, 4));

        transport.isolate(1);
        transport.send(2, vec![encoded(1, 2)]);
        transport.send(1, vec![encoded(2, 1)]);
        assert!(rx2.try_recv().is_err(), "from an isolated node");
        assert!(rx1.try_recv().is_err(), "to an isolated node");

        transport.heal(1);
        transport.send(1, vec![encoded(2, 1)]);
        assert!(rx1.try_recv().is_ok());
    }

    #[test]
    fn a_full_inbox_drops_instead_of_blocking() {
        let transport = LocalTransport::new();
        let (inbox, mut rx) = NodeInbox::new(2, 2);
        transport.register(inbox.clone());
        transport.send(2, (0..5).map(|_| encoded(1, 2)).collect());
        assert!(rx.try_recv().is_ok());
        assert!(rx.try_recv().is_ok());
        assert!(rx.try_recv().is_err());
        assert_eq!(inbox.deliver(heartbeat(1, 2)), Ok(()));
        drop(rx);
        assert_eq!(
            inbox.deliver(heartbeat(1, 2)),
            Err(DeliverError::Stopped(2))
        );
    }

    #[test]
    fn garbage_and_misrouted_messages_are_refused() {
        let (inbox, _rx) = NodeInbox::new(2, 2);
        assert!(matches!(
            inbox.deliver_encoded(&[0xff, 0xff, 0xff]),
            Err(DeliverError::Decode(_))
        ));
        assert_eq!(
            inbox.deliver(heartbeat(1, 3)),
            Err(DeliverError::Misrouted { to: 3, node: 2 })
        );
        assert_eq!(
            inbox.deliver_encoded_from(&encoded(3, 2), 1),
            Err(DeliverError::Forged {
                claimed: 3,
                sender: 1
            })
        );
        assert_eq!(inbox.deliver_encoded_from(&encoded(1, 2), 1), Ok(()));
    }
}
