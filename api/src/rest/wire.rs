//! The JSON the REST API reads and writes, with the schemas `/v1/openapi.json` publishes.
//!
//! `federation`'s types (resources, members, audit entries, watch events) travel as they
//! serialize; since that crate has no `utoipa`, their schemas are the `*Doc` mirrors here, which
//! stand in for them only in the document (`value_type`). A test serializes each federation
//! type and checks it against its mirror, so the two cannot drift apart silently.

use std::collections::BTreeMap;
use std::sync::Arc;

use federation::mesh::{AuditEntry, Member, Role, StoredResource};
use federation::resource::FieldError;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// `POST /v1/apply` → 200.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApplyResponse {
    /// True when nothing was written (`?dryRun=true`): the actions are predictions.
    pub dry_run: bool,
    /// One per document, in the order of the request.
    pub results: Vec<ApplyResult>,
}

/// One document's outcome in an apply.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApplyResult {
    /// 0-based position of the document in the request.
    pub document: usize,
    pub kind: String,
    pub api_version: String,
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    pub action: ApplyAction,
    /// The version written (absent in a dry run's predictions and for conflicts).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource_version: Option<String>,
    /// Accepted fields the data plane does not enforce yet.
    pub warnings: Vec<Warning>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ApplyAction {
    Created,
    Updated,
    Unchanged,
    Conflict,
}

/// A field that was accepted but is not enforced (or another caution), at its path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct Warning {
    /// Dotted path from the document's root.
    pub field: String,
    pub message: String,
}

impl From<FieldError> for Warning {
    fn from(e: FieldError) -> Self {
        Self {
            field: e.field,
            message: e.message,
        }
    }
}

/// A `List` of resources of one kind.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResourceList {
    /// Always `causeway.dev/v1alpha1`.
    pub api_version: &'static str,
    /// Always `List`.
    pub kind: &'static str,
    pub metadata: ListMeta,
    /// Ordered by namespace, cluster and name.
    #[schema(value_type = Vec<ResourceDoc>)]
    pub items: Vec<Arc<StoredResource>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ListMeta {
    /// The index this node had applied when it read the list (decimal string); a watch
    /// started `from` it sees every later change.
    pub resource_version: String,
}

/// `GET /v1/status` → 200.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StatusView {
    pub node: NodeView,
    pub role: RaftRole,
    /// The leader this node knows of; null when there is none (an election is under way).
    pub leader: Option<LeaderView>,
    pub term: u64,
    pub commit_index: u64,
    pub applied_index: u64,
    pub members: Vec<MemberStatus>,
    pub tunnels: Vec<TunnelStatus>,
}

/// Who this gateway is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeView {
    pub id: u64,
    pub name: String,
    pub cluster: String,
    pub spiffe_id: String,
    /// The admin API's address (`ip:port`).
    pub admin: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum RaftRole {
    Leader,
    Follower,
    Candidate,
    Precandidate,
}

impl From<store::Role> for RaftRole {
    fn from(role: store::Role) -> Self {
        match role {
            store::Role::Leader => Self::Leader,
            store::Role::Follower => Self::Follower,
            store::Role::Candidate => Self::Candidate,
            store::Role::PreCandidate => Self::Precandidate,
        }
    }
}

/// The Raft leader, with its name and admin address when it is a recorded member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct LeaderView {
    pub id: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Where to send writes (`ip:port` of its admin API).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin: Option<String>,
}

/// A member of the Raft group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MemberStatus {
    pub id: u64,
    pub name: String,
    pub cluster: String,
    pub role: MemberRole,
    /// Raft transport address.
    pub raft: String,
    /// Admin API address.
    pub admin: String,
    /// On the leader only: the highest index known replicated on the member.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub match_index: Option<u64>,
    /// On the leader only: entries the member is behind the commit index.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lag: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum MemberRole {
    Voter,
    Learner,
    /// Recorded by a join, not in the Raft group (yet).
    Pending,
}

/// One tunnel of this gateway to a peer cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct TunnelStatus {
    pub cluster: String,
    pub address: String,
    pub state: TunnelState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TunnelState {
    Up,
    Down,
}

/// `GET /v1/audit` → 200.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct AuditList {
    /// Oldest first.
    #[schema(value_type = Vec<AuditEntryDoc>)]
    pub items: Vec<AuditEntry>,
}

/// `POST /v1/tokens` body. Its schema is written out below: the `ttl` a join token may have
/// depends on the role, which only a `oneOf` can say.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TokenRequest {
    pub role: Role,
    #[serde(default)]
    pub description: Option<String>,
    /// How long the token is valid ([`TTL_PATTERN`]). Join tokens: default 1 h, at most 24 h;
    /// other roles: no expiry by default.
    #[serde(default)]
    pub ttl: Option<String>,
}

/// A token's `ttl`: 1 to 999999 seconds, minutes, hours or days, e.g. `90s`, `30m`, `720h`,
/// `7d` (the bound keeps every expiry a real date). `tokens::parse_ttl` reads exactly this.
pub const TTL_PATTERN: &str = "^[1-9][0-9]{0,5}[smhd]$";

/// A join token's `ttl`: [`TTL_PATTERN`], at most 24 h (`tokens::JOIN_TTL_MAX`).
pub const JOIN_TTL_PATTERN: &str = "^(([1-9][0-9]{0,3}|[1-7][0-9]{4}|8[0-5][0-9]{3}|86[0-3][0-9]{2}|86400)s|([1-9][0-9]{0,2}|1[0-3][0-9]{2}|14[0-3][0-9]|1440)m|([1-9]|1[0-9]|2[0-4])h|1d)$";

impl utoipa::PartialSchema for TokenRequest {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        let variant = |roles: &[&str], pattern: &str, ttl: &str| {
            serde_json::json!({
                "type": "object",
                "required": ["role"],
                "additionalProperties": false,
                "properties": {
                    "role": {"type": "string", "enum": roles},
                    "description": {"type": ["string", "null"]},
                    "ttl": {"type": ["string", "null"], "pattern": pattern, "description": ttl, "example": "1h"},
                },
            })
        };
        let schema = serde_json::json!({
            "description": "`POST /v1/tokens` body.",
            "oneOf": [
                variant(
                    &["viewer", "operator", "admin"],
                    TTL_PATTERN,
                    "How long the token is valid: 1 to 999999 s, m, h or d (`30m`, `720h`, `7d`); no expiry if absent",
                ),
                variant(
                    &["join"],
                    JOIN_TTL_PATTERN,
                    "How long the join token is valid: as for other roles, at most 24 h (`86400s`, `1440m`, `24h`, `1d`); 1 h if absent",
                ),
            ],
        });
        serde_json::from_value(schema).expect("a well-formed schema")
    }
}

impl ToSchema for TokenRequest {}

/// `POST /v1/tokens` → 201. `token` is shown this once; the mesh keeps only its hash.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TokenCreated {
    pub id: String,
    /// `cw_<id>_<secret>`: present it as `Authorization: Bearer <token>`.
    pub token: String,
    #[schema(value_type = RoleDoc)]
    pub role: Role,
    /// RFC 3339.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
}

/// One token, never its secret or hash.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TokenInfo {
    pub id: String,
    #[schema(value_type = RoleDoc)]
    pub role: Role,
    pub description: String,
    pub created_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// Join tokens: consumed by their first use.
    pub single_use: bool,
    pub used: bool,
}

/// `GET /v1/tokens` → 200.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct TokenList {
    pub items: Vec<TokenInfo>,
}

/// `POST /v1/svids` body. Its schema is written out below, from the patterns the server's own
/// checks match (a test holds them together).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SvidRequest {
    /// A Kubernetes namespace ([`DNS_LABEL_PATTERN`]).
    pub namespace: String,
    /// A Kubernetes service account ([`DNS_LABEL_PATTERN`]).
    pub service_account: String,
    /// PEM `CERTIFICATE REQUEST` (PKCS#10): only its public key is used.
    pub csr: String,
    /// [`SVID_TTL_PATTERN`]; 24 h if absent.
    #[serde(default)]
    pub ttl: Option<String>,
}

/// An RFC 1123 label, as `federation::model::check_dns_label` checks it: what Kubernetes
/// namespaces and service accounts are.
pub const DNS_LABEL_PATTERN: &str = "^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$";

/// A workload SVID's `ttl`: [`TTL_PATTERN`], at most 24 h (`svids::SVID_TTL_MAX`), the same
/// bound as a join token's.
pub const SVID_TTL_PATTERN: &str = JOIN_TTL_PATTERN;

impl utoipa::PartialSchema for SvidRequest {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        let label = |what: &str| {
            serde_json::json!({
                "type": "string",
                "pattern": DNS_LABEL_PATTERN,
                "description": format!("The workload's Kubernetes {what} (an RFC 1123 label)"),
                "example": if what == "namespace" { "shop" } else { "web" },
            })
        };
        let schema = serde_json::json!({
            "description": "`POST /v1/svids` body: the workload's namespace and service account, and a CSR for its key.",
            "type": "object",
            "required": ["namespace", "serviceAccount", "csr"],
            "additionalProperties": false,
            "properties": {
                "namespace": label("namespace"),
                "serviceAccount": label("service account"),
                "csr": {
                    "type": "string",
                    "description": "PEM `CERTIFICATE REQUEST` (PKCS#10) for the workload's key: ECDSA P-256 or P-384, Ed25519, or RSA of 2048 to 8192 bits. Only its public key is used; its subject, SANs and extensions are ignored",
                },
                "ttl": {
                    "type": ["string", "null"],
                    "pattern": SVID_TTL_PATTERN,
                    "description": "How long the SVID is valid: 1 to 999999 s, m, h or d, at most 24 h (`86400s`, `1440m`, `24h`, `1d`); 24 h if absent",
                    "example": "24h",
                },
            },
        });
        serde_json::from_value(schema).expect("a well-formed schema")
    }
}

impl ToSchema for SvidRequest {}

/// `POST /v1/svids` → 201: the workload's X.509-SVID and what it chains to. No private key:
/// that stayed with the workload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SvidIssued {
    /// `spiffe://<trust domain>/ns/<namespace>/sa/<serviceAccount>`.
    #[schema(example = "spiffe://east.mesh/ns/shop/sa/web")]
    pub spiffe_id: String,
    /// PEM of the leaf certificate (its only URI SAN is `spiffeId`).
    pub certificate: String,
    /// PEM of the cluster's CA certificate(s): the trust bundle `certificate` chains to.
    pub bundle: String,
    /// When the certificate expires, RFC 3339.
    #[schema(example = "2025-03-02T12:00:00Z")]
    pub not_after: String,
}

/// `POST /v1/join` → 200: the new member's node id and what it needs to talk to the mesh.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct JoinResponse {
    pub node_id: u64,
    #[schema(value_type = Vec<MemberDoc>)]
    pub members: Vec<Member>,
    pub clusters: Vec<JoinCluster>,
}

/// `GET /v1/join/discovery` → 200: the mesh's trust bundles, with a proof that the server
/// knows the join token's secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct JoinDiscovery {
    /// JSON text of a [`DiscoveryDocument`] (`{"clusters": [...]}`), exactly the bytes `mac`
    /// covers: parse it only after checking `mac`.
    pub document: String,
    /// Lowercase hex HMAC-SHA256 of `document`, keyed with the lowercase hex SHA-256 of the
    /// join token's secret part.
    pub mac: String,
}

/// What [`JoinDiscovery::document`] holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct DiscoveryDocument {
    pub clusters: Vec<JoinCluster>,
}

/// A cluster of the mesh as a joining gateway learns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct JoinCluster {
    pub name: String,
    pub trust_domain: String,
    /// PEM of the cluster's CA certificate(s).
    pub trust_bundle: String,
}

// ---- Schemas of federation's types (document only; see the module docs) ----

/// A resource in the Kubernetes shape. `spec` is kept exactly as written.
#[derive(ToSchema)]
#[schema(as = Resource)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)]
pub struct ResourceDoc {
    /// `causeway.dev/v1alpha1`, or an Istio group/version such as `networking.istio.io/v1`.
    #[schema(example = "causeway.dev/v1alpha1")]
    api_version: String,
    #[schema(example = "Service")]
    kind: String,
    metadata: ObjectMetaDoc,
    /// The kind's specification; its fields depend on the kind.
    #[schema(value_type = Object)]
    spec: serde_json::Value,
    /// Server-owned; currently never set.
    #[schema(value_type = Option<Object>)]
    status: Option<serde_json::Value>,
}

#[derive(ToSchema)]
#[schema(as = ObjectMeta)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)]
pub struct ObjectMetaDoc {
    name: String,
    /// Required except for `Cluster`.
    namespace: Option<String>,
    /// The cluster that runs a `Service` or `ServiceExport`.
    cluster: Option<String>,
    labels: Option<BTreeMap<String, String>>,
    annotations: Option<BTreeMap<String, String>>,
    /// Raft index of the last write (decimal). On a write: the version the writer last saw.
    resource_version: Option<String>,
    /// RFC 3339, server-set.
    creation_timestamp: Option<String>,
    /// RFC 3339, server-set.
    update_timestamp: Option<String>,
}

#[derive(ToSchema)]
#[schema(as = Role)]
#[serde(rename_all = "lowercase")]
#[allow(dead_code)]
pub enum RoleDoc {
    Viewer,
    Operator,
    Admin,
    Join,
}

/// One accepted write in the audit log.
#[derive(ToSchema)]
#[schema(as = AuditEntry)]
#[allow(dead_code)]
pub struct AuditEntryDoc {
    /// Raft index of the write.
    index: u64,
    /// RFC 3339.
    at: String,
    /// Token id and description, `join:<token id>` or `bootstrap`.
    actor: String,
    /// `apply`, `delete`, `token.create`, `token.revoke`, `join`, `bootstrap`, `member.remove`.
    action: String,
    target: String,
}

/// A gateway in the Raft group.
#[derive(ToSchema)]
#[schema(as = Member)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)]
pub struct MemberDoc {
    node_id: u64,
    cluster: String,
    name: String,
    spiffe_id: String,
    /// `ip:port`.
    tunnel: String,
    /// `ip:port`.
    raft: String,
    /// `ip:port`.
    admin: String,
}

/// What a joining gateway says about itself (public material only).
#[derive(ToSchema)]
#[schema(as = JoinRequest)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)]
pub struct JoinRequestDoc {
    cluster: String,
    trust_domain: String,
    /// PEM of the cluster's CA certificate(s).
    trust_bundle: String,
    name: String,
    spiffe_id: String,
    /// `ip:port`.
    tunnel: String,
    /// `ip:port`.
    raft: String,
    /// `ip:port`.
    admin: String,
}

/// The JSON form of an apply's body: one document, or an array of them.
#[derive(ToSchema)]
#[serde(untagged)]
#[allow(dead_code)]
pub enum ApplyDocuments {
    One(Box<ResourceDoc>),
    Many(Vec<ResourceDoc>),
}

/// One change, as the `data` of a watch's server-sent event.
#[derive(ToSchema)]
#[schema(as = WatchEvent)]
#[allow(dead_code)]
pub struct WatchEventDoc {
    /// Raft index of the write (also the event's `id`).
    index: u64,
    /// `ADDED`, `MODIFIED` or `DELETED` (also the event's name).
    #[serde(rename = "type")]
    kind: WatchEventType,
    resource: ResourceDoc,
}

#[derive(ToSchema)]
#[allow(dead_code, clippy::upper_case_acronyms)]
pub enum WatchEventType {
    ADDED,
    MODIFIED,
    DELETED,
}
