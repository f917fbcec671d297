//! Who the Raft group's members are on the wire.

use std::collections::HashMap;
use std::str::FromStr;

use federation::identity::SpiffeId;
use http::uri::Authority;

use super::RaftTransportError;

/// A Raft member as the transport knows it: the SVID it authenticates with and where it listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// The SPIFFE ID that speaks for this node, and the only one.
    pub id: SpiffeId,
    /// `host:port` of its Raft gRPC listener.
    pub addr: Authority,
}

/// Raft node id ⇄ SPIFFE ID ⇄ address, one to one. The server authorises batches by it; the
/// client dials by it. Includes the local node (its entry is simply not dialled).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerTable {
    by_node: HashMap<u64, Peer>,
    by_id: HashMap<SpiffeId, u64>,
}

impl PeerTable {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds node `node`, replacing its earlier entry. Refuses node 0, an address that is not
    /// `host:port`, and a SPIFFE ID already speaking for another node.
    pub fn insert(
        &mut self,
        node: u64,
        id: SpiffeId,
        addr: &str,
    ) -> Result<(), RaftTransportError> {
        if node == 0 {
            return Err(RaftTransportError::ZeroNode);
        }
        let invalid = |reason: String| RaftTransportError::InvalidAddress {
            node,
            addr: addr.to_owned(),
            reason,
        };
        let addr = Authority::from_str(addr).map_err(|e| invalid(e.to_string()))?;
        if addr.port_u16().is_none() {
            return Err(invalid("no port".to_owned()));
        }
        if addr.as_str().contains('@') {
            return Err(invalid("user info is not an address".to_owned()));
        }
        if let Some(&other) = self.by_id.get(&id)
            && other != node
        {
            return Err(RaftTransportError::IdInUse { id, node: other });
        }
        self.remove(node);
        self.by_id.insert(id.clone(), node);
        self.by_node.insert(node, Peer { id, addr });
        Ok(())
    }

    /// Removes node `node`, returning its entry.
    pub fn remove(&mut self, node: u64) -> Option<Peer> {
        let peer = self.by_node.remove(&node)?;
        self.by_id.remove(&peer.id);
        Some(peer)
    }

    pub fn get(&self, node: u64) -> Option<&Peer> {
        self.by_node.get(&node)
    }

    /// The node `id` speaks for.
    pub fn node_of(&self, id: &SpiffeId) -> Option<u64> {
        self.by_id.get(id).copied()
    }

    pub fn iter(&self) -> impl Iterator<Item = (u64, &Peer)> {
        self.by_node.iter().map(|(&node, peer)| (node, peer))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> SpiffeId {
        SpiffeId::parse(s).unwrap()
    }

    #[test]
    fn one_spiffe_id_speaks_for_one_node() {
        let mut table = PeerTable::new();
        table
            .insert(1, id("spiffe://east/gateway/a"), "10.0.0.1:7000")
            .unwrap();
        table
            .insert(2, id("spiffe://west/gateway/b"), "gw-b.west:7000")
            .unwrap();
        assert!(matches!(
            table.insert(3, id("spiffe://east/gateway/a"), "10.0.0.3:7000"),
            Err(RaftTransportError::IdInUse { node: 1, .. })
        ));
        // Re-inserting a node replaces its identity and address.
        table
            .insert(1, id("spiffe://east/gateway/c"), "[::1]:7001")
            .unwrap();
        assert_eq!(table.node_of(&id("spiffe://east/gateway/a")), None);
        assert_eq!(table.node_of(&id("spiffe://east/gateway/c")), Some(1));
        assert_eq!(table.get(1).unwrap().addr.as_str(), "[::1]:7001");
        assert_eq!(table.remove(2).unwrap().id, id("spiffe://west/gateway/b"));
        assert_eq!(table.node_of(&id("spiffe://west/gateway/b")), None);
    }

    #[test]
    fn bad_entries_are_refused() {
        let mut table = PeerTable::new();
        let a = id("spiffe://east/gateway/a");
        assert!(matches!(
            table.insert(0, a.clone(), "10.0.0.1:7000"),
            Err(RaftTransportError::ZeroNode)
        ));
        for addr in ["10.0.0.1", "", "a b:7000", "user@host:7000", "host:port"] {
            assert!(
                matches!(
                    table.insert(1, a.clone(), addr),
                    Err(RaftTransportError::InvalidAddress { .. })
                ),
                "{addr}"
            );
        }
        assert_eq!(table, PeerTable::new());
    }
}
