//! The mesh's replicated state: the deterministic [`MeshState`] machine the store applies
//! [`Command`]s to, and the immutable [`MeshSnapshot`] compiled from it for the data plane.
//!
//! Everything a command needs to apply deterministically travels inside it: the proposer's
//! clock (`at`), who asked (`actor`), hashes of secrets (never the secrets themselves).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::model::{ClusterName, LocalService, ServiceKey, ServicePort};
use crate::resource::{Resource, ResourceKey};
use crate::traffic::RouteTable;

mod compile;
mod routes;
mod security;
mod state;
mod stored;
pub mod token;

pub use routes::{parse_retry_on, resolve_host};
pub use security::Security;
pub use state::{MeshState, RETAINED, apply_keys, cluster_resource, resource_key};
pub use stored::StoredResource;

/// Who may do what through the admin API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads everything but tokens' hashes.
    Viewer,
    /// Viewer, plus apply and delete resources.
    Operator,
    /// Operator, plus tokens, members and the audit log.
    Admin,
    /// A one-time token that lets one gateway join; good for `POST /v1/join` only.
    Join,
}

/// A bearer token as the state keeps it: its secret only as a SHA-256 hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenRecord {
    /// Public part of the token (`cw_<id>_<secret>`), names it in the audit log.
    pub id: String,
    /// Lowercase hex SHA-256 of the secret part.
    pub secret_sha256: String,
    pub role: Role,
    pub description: String,
    pub created_at: String,
    /// RFC 3339; none = never expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// Consumed by its first use (join tokens).
    pub single_use: bool,
    /// Set once a single-use token was used.
    #[serde(default)]
    pub used: bool,
}

/// A gateway in the Raft group, as the state records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Member {
    /// Raft node id; never reused.
    pub node_id: u64,
    pub cluster: ClusterName,
    /// The gateway's name in its cluster (`spiffe://<td>/gateway/<name>`).
    pub name: String,
    /// The gateway's SPIFFE ID (what its Raft and tunnel certificates carry).
    pub spiffe_id: String,
    pub tunnel: SocketAddr,
    pub raft: SocketAddr,
    pub admin: SocketAddr,
}

/// What a joining gateway says about itself. Only public material: its cluster's CA
/// certificate, never a key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JoinRequest {
    pub cluster: ClusterName,
    pub trust_domain: String,
    /// PEM of the cluster's CA certificate(s).
    pub trust_bundle: String,
    pub name: String,
    pub spiffe_id: String,
    pub tunnel: SocketAddr,
    pub raft: SocketAddr,
    pub admin: SocketAddr,
}

/// A change to the mesh state; one Raft entry. Serialized as JSON.
// Built once per entry and moved, never stored in bulk: variant sizes do not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "op")]
pub enum Command {
    /// Creates or replaces each resource (already validated by the proposer), all or nothing:
    /// if one conflicts, none is written. `expect[i]`: the resourceVersion document `i` must
    /// still have (409 otherwise); `Some(0)` = must not exist yet.
    Apply {
        resources: Vec<Resource>,
        expect: Vec<Option<u64>>,
        actor: String,
        at: String,
    },
    /// Deletes one resource; `expect` as for `Apply`.
    Delete {
        key: ResourceKey,
        expect: Option<u64>,
        actor: String,
        at: String,
    },
    CreateToken {
        token: TokenRecord,
        actor: String,
        at: String,
    },
    RevokeToken {
        id: String,
        actor: String,
        at: String,
    },
    /// The founding member records itself, its cluster and the first admin token.
    Bootstrap {
        member: Member,
        cluster: Resource,
        token: TokenRecord,
        at: String,
    },
    /// Consumes join token `token_id` (must be unused, unexpired at `at`, hash matching),
    /// allocates the next node id, records the member and creates or updates its `Cluster`
    /// (trust bundle, gateway list).
    Join {
        token_id: String,
        secret_sha256: String,
        request: JoinRequest,
        at: String,
    },
    /// Forgets a member (after it left the Raft group).
    RemoveMember {
        node_id: u64,
        actor: String,
        at: String,
    },
    /// Replaces a cluster's trust bundle (a CA rotation: the next root added beside the
    /// current one, later the old one removed). Public certificates only; the cluster must
    /// exist and the bundle hold at least one certificate.
    SetTrustBundle {
        cluster: ClusterName,
        trust_bundle: String,
        actor: String,
        at: String,
    },
}

/// What applying a [`Command`] returned to its proposer. Serialized as JSON.
// One per entry, on its way to the proposer: variant sizes do not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "outcome")]
pub enum CommandResult {
    /// One entry per resource of an `Apply`.
    Applied {
        results: Vec<WriteResult>,
    },
    Deleted {
        result: WriteResult,
    },
    /// Tokens, bootstrap, member removal.
    Done,
    /// A join: the new member's node id.
    Joined {
        node_id: u64,
    },
    /// Refused as a whole; nothing changed.
    Refused {
        reason: String,
        code: RefusalCode,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum RefusalCode {
    /// The token is unknown, used, expired or of the wrong role.
    Unauthorized,
    /// The command conflicts with the state (e.g. a gateway name already taken).
    Conflict,
    /// Something the proposer should have validated.
    Invalid,
    /// The token or member the command names does not exist.
    NotFound,
}

/// One resource's fate in a write.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "result")]
pub enum WriteResult {
    Created {
        resource: Resource,
    },
    Updated {
        resource: Resource,
    },
    /// The same content as stored: nothing changed, the version stays.
    Unchanged {
        resource: Resource,
    },
    Deleted {
        resource: Resource,
    },
    /// `expect` did not match; `current` is the stored version (0 = absent).
    Conflict {
        key: ResourceKey,
        current: u64,
    },
    NotFound {
        key: ResourceKey,
    },
}

/// What the audit log says about one accepted write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditEntry {
    /// The Raft index of the write.
    pub index: u64,
    pub at: String,
    /// Token id (and its description), or `join:<token id>`, `bootstrap`.
    pub actor: String,
    /// `apply`, `delete`, `token.create`, `token.revoke`, `join`, `bootstrap`, `member.remove`.
    pub action: String,
    /// What it touched, e.g. `VirtualService.networking.istio.io production/api (created)`.
    pub target: String,
}

/// A change to one resource, for `GET /v1/watch`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WatchEvent {
    /// The Raft index of the write.
    pub index: u64,
    /// `ADDED`, `MODIFIED` or `DELETED`, as Kubernetes watches say.
    #[serde(rename = "type")]
    pub kind: String,
    /// Shared with the state's copy of the same version (and with later events' until a write
    /// replaces it), so retaining thousands of events costs pointers, not resources.
    pub resource: Arc<StoredResource>,
}

/// One cluster as the data plane needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterView {
    pub name: ClusterName,
    pub trust_domain: String,
    /// DER of each CA certificate in the cluster's trust bundle.
    pub trust_bundle: Vec<Vec<u8>>,
    /// Tunnel addresses of the cluster's gateways.
    pub gateways: Vec<SocketAddr>,
    pub locality: Option<String>,
}

/// What the data plane and the Raft transport run on, compiled from the state after every
/// applied write. Immutable; swapped in whole.
#[derive(Debug, Clone, Default)]
pub struct MeshSnapshot {
    /// The Raft index it was compiled at.
    pub version: u64,
    pub clusters: BTreeMap<ClusterName, ClusterView>,
    /// Each cluster's services with their endpoints; `export` set where a `ServiceExport`
    /// names them.
    pub services: BTreeMap<ClusterName, Vec<Arc<LocalService>>>,
    /// What each cluster exports, by service (for importers: names and ports only). Shared:
    /// a write that changes none of a cluster's services hands on the same map.
    pub exports: BTreeMap<ClusterName, Arc<BTreeMap<ServiceKey, Vec<ServicePort>>>>,
    pub members: Vec<Member>,
    /// Compiled traffic policy, by service.
    pub routes: Arc<RouteTable>,
    /// Compiled AuthorizationPolicy and PeerAuthentication, by namespace.
    pub security: Arc<Security>,
}
