//! A typed client of the admin REST API, for the `causeway` CLI and a joining gateway.
//!
//! ```text
//!  Client::apply/list/get/... ─▶ one HTTP/1.1 request on a fresh TCP connection ─▶ admin port
//!                             ◀─ 2xx: the contract's JSON, typed ◀──────────────────┘
//!                             ◀─ 4xx/5xx: ClientError::Http with the problem+json body
//! ```
//!
//! One connection per request: the CLI makes a handful of calls and exits, so a pool would only
//! add state. `https://` (what gateways serve by default) verifies the gateway's certificate
//! against the CA the caller names (the gateway's cluster CA: admin certificates are issued by
//! it) with the usual host name or IP address check; there is no fallback to the system's roots,
//! which never sign a gateway. `http://` is for gateways run with `[admin] tls = false`.
//! The wire types mirror the REST contract field for field; the server's handlers serialize the
//! same JSON, so a rename here is a protocol change.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use federation::mesh::{JoinRequest, Member, Role};
use federation::model::ClusterName;
use federation::resource::FieldError;
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HOST, USER_AGENT};
use http::{HeaderValue, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// How long to wait for the TCP connection: a gateway that is up accepts at once.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a whole request may take: writes wait up to 5 s for a Raft commit on the server,
/// forwarded writes twice that, so this leaves room without hanging a script forever.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a CA rotation may take: the gateway gives every other gateway a minute to trust
/// the next root before it answers 503, so this waits for that answer.
pub const ROTATE_TIMEOUT: Duration = Duration::from_secs(120);
/// The largest answer we read: a list of every resource of a big mesh stays well below it.
const MAX_RESPONSE: usize = 64 * 1024 * 1024;

/// Why a request did not return what the contract promises.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server address is not an `https://host:port` or `http://host:port` URL.
    #[error("invalid server address {server:?}: {reason}")]
    InvalidServer { server: String, reason: String },
    /// An `https://` server, but no CA certificate to verify it by.
    #[error(
        "{server} needs the CA certificate (PEM) of the gateway's cluster to verify it by \
         (`causeway bundle --cluster <name> --data-dir <dir>` on the gateway prints it)"
    )]
    MissingCa { server: String },
    /// The CA certificate given is not PEM, or holds no usable certificate.
    #[error("unusable CA certificate: {reason}")]
    InvalidCa { reason: String },
    /// Connected, but the TLS handshake failed: most often the gateway's certificate is not
    /// signed by the CA given, or does not name the host dialled.
    #[error("TLS with {server} failed: {reason}")]
    Tls { server: String, reason: String },
    /// The token cannot travel in an HTTP header (whitespace, control characters).
    #[error("invalid token: {reason}")]
    InvalidToken { reason: String },
    /// No connection to the server, or it broke before the answer was complete.
    #[error("cannot connect to {server}: {reason}")]
    Connect { server: String, reason: String },
    /// Connected, but no complete answer in time ([`REQUEST_TIMEOUT`], or the request's own).
    #[error("{server} did not answer within {seconds} s")]
    Timeout { server: String, seconds: u64 },
    /// The server refused the request (status 400 or more) and said why.
    #[error("{problem}")]
    Http { status: u16, problem: Box<Problem> },
    /// The request could not be encoded (our own types always serialize; kept for honesty).
    #[error("cannot encode the request: {0}")]
    Encode(String),
    /// A successful status with a body that is not what the contract says.
    #[error("unexpected response from {server}: {reason}")]
    BadResponse { server: String, reason: String },
}

impl ClientError {
    /// True when the server could not be reached at all (as opposed to refusing).
    pub fn is_unreachable(&self) -> bool {
        matches!(self, Self::Connect { .. } | Self::Timeout { .. })
    }

    /// The problem the server answered with, if it answered with one.
    pub fn problem(&self) -> Option<&Problem> {
        match self {
            Self::Http { problem, .. } => Some(problem),
            _ => None,
        }
    }
}

/// An `application/problem+json` body (RFC 9457) with the contract's extension members.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Problem {
    /// `https://causeway.dev/problems/<slug>`.
    #[serde(rename = "type", default)]
    pub problem_type: String,
    #[serde(default)]
    pub title: String,
    #[serde(default)]
    pub status: u16,
    #[serde(default)]
    pub detail: String,
    /// The one field at fault, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// Every validation error of an apply, with the document it is in.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<ProblemError>,
    /// A refused apply's per-document outcome (409: which documents conflict).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub results: Vec<ApplyResult>,
    /// `no-quorum`: who this node believes leads, if anyone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<Value>,
}

impl Problem {
    /// The last segment of `type`: `invalid`, `conflict`, `not-found`, ...
    pub fn slug(&self) -> &str {
        self.problem_type
            .rsplit('/')
            .next()
            .unwrap_or(&self.problem_type)
    }

    /// For an error body that is not problem+json (a proxy, an older server): the status's
    /// reason as title, the body's text as detail.
    fn from_text(status: StatusCode, body: &[u8]) -> Self {
        let text = String::from_utf8_lossy(body);
        Problem {
            title: status.canonical_reason().unwrap_or("error").to_string(),
            status: status.as_u16(),
            detail: text.trim().chars().take(500).collect(),
            ..Problem::default()
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.title, self.status)?;
        if !self.detail.is_empty() {
            write!(f, ": {}", self.detail)?;
        }
        if let Some(field) = &self.field {
            write!(f, " [field {field}]")?;
        }
        Ok(())
    }
}

/// One validation error in a problem's `errors`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProblemError {
    /// 0-based position of the document in the request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub document: Option<usize>,
    #[serde(default)]
    pub field: String,
    pub message: String,
}

/// `POST /v1/apply` → 200.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApplyResponse {
    pub dry_run: bool,
    pub results: Vec<ApplyResult>,
}

/// One document's outcome in an apply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApplyResult {
    /// 0-based position of the document in the request.
    pub document: usize,
    pub kind: String,
    pub api_version: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    pub action: ApplyAction,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_version: Option<String>,
    /// Accepted fields the data plane does not enforce yet.
    #[serde(default)]
    pub warnings: Vec<FieldError>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ApplyAction {
    Created,
    Updated,
    Unchanged,
    Conflict,
}

impl fmt::Display for ApplyAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Created => "created",
            Self::Updated => "updated",
            Self::Unchanged => "unchanged",
            Self::Conflict => "conflict",
        })
    }
}

/// `POST /v1/tokens` body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenRequest {
    pub role: Role,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// A humantime duration such as `24h`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<String>,
}

/// `POST /v1/tokens` → 201. `token` is shown this once; the server keeps only its hash.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenCreated {
    pub id: String,
    pub token: String,
    pub role: Role,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
}

/// One token in `GET /v1/tokens`: never its secret or hash.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenInfo {
    pub id: String,
    pub role: Role,
    #[serde(default)]
    pub description: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    #[serde(default)]
    pub single_use: bool,
    #[serde(default)]
    pub used: bool,
}

/// `POST /v1/svids` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SvidRequest {
    pub namespace: String,
    pub service_account: String,
    /// PEM `CERTIFICATE REQUEST`.
    pub csr: String,
    /// E.g. `24h`; at most 24 h, 24 h if absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<String>,
}

/// `POST /v1/clusters/{name}/ca/rotate` → 200: what the rotation did (the server's type).
pub use crate::RotationReport;

/// `POST /v1/svids` → 201: the workload's certificate and its cluster's trust bundle (PEM).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SvidIssued {
    pub spiffe_id: String,
    pub certificate: String,
    pub bundle: String,
    /// RFC 3339.
    pub not_after: String,
}

/// `POST /v1/join` → 200: the new member's id and what it needs to talk to the mesh.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JoinResponse {
    pub node_id: u64,
    pub members: Vec<Member>,
    pub clusters: Vec<JoinCluster>,
}

/// `GET /v1/join/discovery` → 200: the mesh's trust bundles as JSON text, and the server's
/// proof that it knows the join token (see [`Client::discover_trust`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinDiscovery {
    pub document: String,
    pub mac: String,
}

/// What [`JoinDiscovery::document`] holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiscoveryDocument {
    pub clusters: Vec<JoinCluster>,
}

/// A cluster of the mesh as a joining gateway learns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JoinCluster {
    pub name: ClusterName,
    pub trust_domain: String,
    /// PEM of the cluster's CA certificate(s).
    pub trust_bundle: String,
}

/// A client of one gateway's admin API.
#[derive(Clone)]
pub struct Client {
    /// `https://host:port` or `http://host:port`, as errors name it.
    base: String,
    /// `host:port` to connect to (port 443 or 80 filled in).
    connect_to: String,
    /// For `https://`: the connector trusting the given CA, and the name the certificate must
    /// carry (the URL's host).
    tls: Option<(TlsConnector, ServerName<'static>)>,
    /// The `Host` header: the authority as given.
    host: HeaderValue,
    /// `Bearer <token>`, marked sensitive so it never shows in debug output.
    authorization: Option<HeaderValue>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("server", &self.base)
            .field("token", &self.authorization.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl Client {
    /// `server` is `http://host:port` (a bare `host:port` means `http://`). An `https://`
    /// server needs a CA: use [`Client::with_ca`].
    pub fn new(server: &str, token: Option<String>) -> Result<Self, ClientError> {
        Self::with_ca(server, token, None)
    }

    /// `server` is `https://host:port` or `http://host:port` (a bare `host:port` means
    /// `http://`). For `https://`, `ca_pem` holds the CA certificate(s) the gateway's
    /// certificate must chain to (its cluster's CA); it is required there and ignored for
    /// `http://`.
    pub fn with_ca(
        server: &str,
        token: Option<String>,
        ca_pem: Option<&[u8]>,
    ) -> Result<Self, ClientError> {
        let parsed = parse_server(server)?;
        let tls = match (&parsed.server_name, ca_pem) {
            (None, _) => None,
            (Some(_), None) => {
                return Err(ClientError::MissingCa {
                    server: parsed.base,
                });
            }
            (Some(name), Some(pem)) => Some((tls_connector(pem)?, name.clone())),
        };
        let authorization = token.map(|t| bearer(&t)).transpose()?;
        Ok(Self {
            base: parsed.base,
            connect_to: parsed.connect_to,
            tls,
            host: parsed.host,
            authorization,
        })
    }

    /// The mesh's trust bundles from `server` (`https://`), for a gateway about to join that
    /// has no CA to verify the server by: asks `GET /v1/join/discovery` with the join token's
    /// id over TLS *without* verifying the server, sends no secret, and accepts the answer only
    /// if its proof checks out with the token's secret (only the mesh's members can make it).
    /// Returns the clusters; their bundles then verify the server for the join itself.
    pub async fn discover_trust(
        server: &str,
        join_token: &str,
    ) -> Result<Vec<JoinCluster>, ClientError> {
        let parsed = parse_server(server)?;
        let Some(name) = parsed.server_name.clone() else {
            return Err(ClientError::InvalidServer {
                server: parsed.base,
                reason: "trust discovery is for https:// servers".to_string(),
            });
        };
        let Some((id, secret)) = federation::mesh::token::parse(join_token) else {
            return Err(ClientError::InvalidToken {
                reason: "not a Causeway token (cw_<id>_<secret>)".to_string(),
            });
        };
        let client = Self {
            base: parsed.base,
            connect_to: parsed.connect_to,
            tls: Some((unverified_tls_connector()?, name)),
            host: parsed.host,
            authorization: None,
        };
        let path = format!("/v1/join/discovery?token={}", encode(id));
        let answer: JoinDiscovery = client.call(Method::GET, &path, None, None).await?;
        if !federation::mesh::token::verify_discovery_mac(
            secret,
            answer.document.as_bytes(),
            &answer.mac,
        ) {
            return Err(client.bad_response(
                "its trust bundles carry no valid proof of the join token: it is not a gateway \
                 of the mesh that made the token, or something in between answered"
                    .to_string(),
            ));
        }
        let document: DiscoveryDocument = serde_json::from_str(&answer.document)
            .map_err(|e| client.bad_response(format!("the discovery document: {e}")))?;
        Ok(document.clusters)
    }

    /// Whether requests go over TLS (`https://`).
    pub fn is_https(&self) -> bool {
        self.tls.is_some()
    }

    /// The server's base URL, `https://host:port` or `http://host:port`.
    pub fn server(&self) -> &str {
        &self.base
    }

    /// `POST /v1/apply`: `body` is YAML (multi-document) or JSON, as `content_type` says.
    /// Documents without a namespace go to `default`.
    pub async fn apply(
        &self,
        body: String,
        content_type: &str,
        dry_run: bool,
    ) -> Result<ApplyResponse, ClientError> {
        self.apply_in(body, content_type, dry_run, ApplyNamespace::Server)
            .await
    }

    /// [`Client::apply`], saying where documents without a namespace go.
    pub async fn apply_in(
        &self,
        body: String,
        content_type: &str,
        dry_run: bool,
        namespace: ApplyNamespace<'_>,
    ) -> Result<ApplyResponse, ClientError> {
        let mut path = "/v1/apply".to_string();
        let (enforced, fallback) = match namespace {
            ApplyNamespace::Server => (None, None),
            ApplyNamespace::Request(ns) => (Some(ns), None),
            ApplyNamespace::Context(ns) => (None, Some(ns)),
        };
        push_query(
            &mut path,
            &[
                ("dryRun", dry_run.then_some("true")),
                ("namespace", enforced),
                ("defaultNamespace", fallback),
            ],
        );
        let body = Some((Bytes::from(body), content_type));
        self.call(Method::POST, &path, body, self.authorization.as_ref())
            .await
    }

    /// `GET /v1/{plural}` or `/v1/namespaces/{ns}/{plural}`: a `List`.
    pub async fn list(
        &self,
        plural: &str,
        namespace: Option<&str>,
        selector: Option<&str>,
        cluster: Option<&str>,
    ) -> Result<Value, ClientError> {
        let mut path = collection_path(plural, namespace);
        push_query(
            &mut path,
            &[("labelSelector", selector), ("cluster", cluster)],
        );
        self.get_json(&path).await
    }

    /// `GET` one resource; `namespace` is `None` only for mesh-scoped kinds (`clusters`).
    pub async fn get(
        &self,
        plural: &str,
        namespace: Option<&str>,
        name: &str,
        cluster: Option<&str>,
    ) -> Result<Value, ClientError> {
        let mut path = item_path(plural, namespace, name);
        push_query(&mut path, &[("cluster", cluster)]);
        self.get_json(&path).await
    }

    /// `DELETE` one resource, optionally only if it is still at `resource_version`. Returns the
    /// server's answer (the deleted resource), or `null` for an empty body.
    pub async fn delete(
        &self,
        plural: &str,
        namespace: Option<&str>,
        name: &str,
        cluster: Option<&str>,
        resource_version: Option<&str>,
    ) -> Result<Value, ClientError> {
        let mut path = item_path(plural, namespace, name);
        push_query(
            &mut path,
            &[("cluster", cluster), ("resourceVersion", resource_version)],
        );
        self.call_optional(Method::DELETE, &path).await
    }

    /// `GET /v1/status`.
    pub async fn status(&self) -> Result<Value, ClientError> {
        self.get_json("/v1/status").await
    }

    /// `POST /v1/tokens` (admin).
    pub async fn create_token(
        &self,
        role: Role,
        description: Option<&str>,
        ttl: Option<&str>,
    ) -> Result<TokenCreated, ClientError> {
        let request = TokenRequest {
            role,
            description: description.map(str::to_string),
            ttl: ttl.map(str::to_string),
        };
        let body = json_body(&request)?;
        self.call(
            Method::POST,
            "/v1/tokens",
            Some((body, "application/json")),
            self.authorization.as_ref(),
        )
        .await
    }

    /// `POST /v1/svids` (admin): an X.509-SVID for the key of `request.csr`, signed by the
    /// answering gateway's cluster CA.
    pub async fn issue_svid(&self, request: &SvidRequest) -> Result<SvidIssued, ClientError> {
        let body = json_body(request)?;
        self.call(
            Method::POST,
            "/v1/svids",
            Some((body, "application/json")),
            self.authorization.as_ref(),
        )
        .await
    }

    /// `POST /v1/clusters/{cluster}/ca/rotate` (admin): rotates the CA of `cluster`, which must
    /// be the answering gateway's own; answers once issuance has switched to the next root
    /// (waits up to [`ROTATE_TIMEOUT`]).
    pub async fn rotate_ca(&self, cluster: &str) -> Result<RotationReport, ClientError> {
        let path = format!("/v1/clusters/{}/ca/rotate", encode(cluster));
        let body = self
            .send_within(
                Method::POST,
                &path,
                None,
                self.authorization.as_ref(),
                ROTATE_TIMEOUT,
            )
            .await?;
        serde_json::from_slice(&body).map_err(|e| self.bad_response(format!("{path}: {e}")))
    }

    /// `POST /v1/tokens/recover`: an admin token for the secret whose hash `causeway token
    /// recover` left in the gateway's data directory (no bearer token).
    pub async fn recover_token(&self, secret: &str) -> Result<TokenCreated, ClientError> {
        let body = json_body(&serde_json::json!({ "secret": secret }))?;
        self.call(
            Method::POST,
            "/v1/tokens/recover",
            Some((body, "application/json")),
            None,
        )
        .await
    }

    /// `GET /v1/tokens` (admin). Takes `{"items": [...]}` or a bare array.
    pub async fn list_tokens(&self) -> Result<Vec<TokenInfo>, ClientError> {
        let value = self.get_json("/v1/tokens").await?;
        let items = match value {
            Value::Object(mut map) => map.remove("items").unwrap_or(Value::Null),
            other => other,
        };
        serde_json::from_value(items).map_err(|e| self.bad_response(format!("token list: {e}")))
    }

    /// `DELETE /v1/tokens/{id}` (admin).
    pub async fn revoke_token(&self, id: &str) -> Result<(), ClientError> {
        let path = format!("/v1/tokens/{}", encode(id));
        self.call_optional(Method::DELETE, &path).await.map(drop)
    }

    /// `POST /v1/join` with a join token (not this client's token, if it has one).
    /// `POST /v1/join/ca` with a join token: the CA of `cluster`, from one of its gateways, for
    /// a gateway of that cluster about to join; `None` when the mesh has no such cluster yet.
    pub async fn join_ca(
        &self,
        cluster: &str,
        token: &str,
    ) -> Result<Option<crate::JoinCa>, ClientError> {
        let authorization = bearer(token)?;
        let body = json_body(&crate::JoinCaRequest {
            cluster: cluster.to_string(),
        })?;
        match self
            .call(
                Method::POST,
                "/v1/join/ca",
                Some((body, "application/json")),
                Some(&authorization),
            )
            .await
        {
            Ok(ca) => Ok(Some(ca)),
            Err(ClientError::Http { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub async fn join(
        &self,
        request: &JoinRequest,
        token: &str,
    ) -> Result<JoinResponse, ClientError> {
        let authorization = bearer(token)?;
        let body = json_body(request)?;
        self.call(
            Method::POST,
            "/v1/join",
            Some((body, "application/json")),
            Some(&authorization),
        )
        .await
    }

    /// `GET` any path (with its query string), as JSON.
    pub async fn get_json(&self, path: &str) -> Result<Value, ClientError> {
        self.call(Method::GET, path, None, self.authorization.as_ref())
            .await
    }

    /// A request whose success may come with an empty body (`DELETE`: 200 or 204).
    async fn call_optional(&self, method: Method, path: &str) -> Result<Value, ClientError> {
        let body = self
            .send(method, path, None, self.authorization.as_ref())
            .await?;
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&body).map_err(|e| self.bad_response(format!("{path}: {e}")))
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<(Bytes, &str)>,
        authorization: Option<&HeaderValue>,
    ) -> Result<T, ClientError> {
        let body = self.send(method, path, body, authorization).await?;
        serde_json::from_slice(&body).map_err(|e| self.bad_response(format!("{path}: {e}")))
    }

    /// Sends one request; a success status returns the body, any other the problem.
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<(Bytes, &str)>,
        authorization: Option<&HeaderValue>,
    ) -> Result<Bytes, ClientError> {
        self.send_within(method, path, body, authorization, REQUEST_TIMEOUT)
            .await
    }

    /// [`Client::send`], answered within `limit`.
    async fn send_within(
        &self,
        method: Method,
        path: &str,
        body: Option<(Bytes, &str)>,
        authorization: Option<&HeaderValue>,
        limit: Duration,
    ) -> Result<Bytes, ClientError> {
        let uri: Uri = path
            .parse()
            .map_err(|e| self.bad_response(format!("cannot build a request for {path}: {e}")))?;
        let mut builder = Request::builder()
            .method(method)
            .uri(uri)
            .header(HOST, self.host.clone())
            .header(ACCEPT, "application/json, application/problem+json")
            .header(USER_AGENT, concat!("causeway/", env!("CARGO_PKG_VERSION")));
        if let Some(value) = authorization {
            builder = builder.header(AUTHORIZATION, value.clone());
        }
        let payload = match body {
            Some((bytes, content_type)) => {
                builder = builder.header(CONTENT_TYPE, content_type);
                bytes
            }
            None => Bytes::new(),
        };
        let request = builder
            .body(Full::new(payload))
            .map_err(|e| self.bad_response(format!("cannot build a request for {path}: {e}")))?;

        let stream =
            match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&self.connect_to)).await
            {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => return Err(self.connect_error(e.to_string())),
                Err(_) => {
                    return Err(self.connect_error(format!(
                        "no connection within {} s",
                        CONNECT_TIMEOUT.as_secs()
                    )));
                }
            };
        let exchange = async {
            match &self.tls {
                Some((connector, name)) => {
                    let stream = connector
                        .connect(name.clone(), stream)
                        .await
                        .map_err(|e| self.tls_error(&e))?;
                    self.exchange(stream, request).await
                }
                None => self.exchange(stream, request).await,
            }
        };
        match tokio::time::timeout(limit, exchange).await {
            Ok(result) => result,
            Err(_) => Err(ClientError::Timeout {
                server: self.base.clone(),
                seconds: limit.as_secs(),
            }),
        }
    }

    async fn exchange<S>(
        &self,
        stream: S,
        request: Request<Full<Bytes>>,
    ) -> Result<Bytes, ClientError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| self.connect_error(e.to_string()))?;
        // The connection future does the I/O; it ends when `sender` is dropped.
        let driver = tokio::spawn(connection);
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| self.connect_error(format!("connection lost: {e}")))?;
        let status = response.status();
        let body = Limited::new(response.into_body(), MAX_RESPONSE)
            .collect()
            .await
            .map_err(|e| self.connect_error(format!("reading the answer: {e}")))?
            .to_bytes();
        drop(sender);
        driver.abort();
        if status.is_success() {
            return Ok(body);
        }
        let problem = serde_json::from_slice::<Problem>(&body)
            .ok()
            .filter(|p| !p.title.is_empty() || !p.detail.is_empty())
            .map(|mut p| {
                p.status = status.as_u16();
                p
            })
            .unwrap_or_else(|| Problem::from_text(status, &body));
        Err(ClientError::Http {
            status: status.as_u16(),
            problem: Box::new(problem),
        })
    }

    /// A failed TLS handshake. A certificate the CA does not vouch for is not a network
    /// problem; anything else (the peer hung up) may be one.
    fn tls_error(&self, e: &std::io::Error) -> ClientError {
        let certificate = e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            .is_some_and(|e| {
                matches!(
                    e,
                    rustls::Error::InvalidCertificate(_) | rustls::Error::AlertReceived(_)
                )
            });
        if certificate {
            ClientError::Tls {
                server: self.base.clone(),
                reason: e.to_string(),
            }
        } else {
            self.connect_error(format!("TLS handshake: {e}"))
        }
    }

    fn connect_error(&self, reason: String) -> ClientError {
        ClientError::Connect {
            server: self.base.clone(),
            reason,
        }
    }

    fn bad_response(&self, reason: String) -> ClientError {
        ClientError::BadResponse {
            server: self.base.clone(),
            reason,
        }
    }
}

/// What a server address says.
struct Server {
    /// `scheme://authority`, as errors name it.
    base: String,
    /// `host:port` to connect to (the scheme's port filled in).
    connect_to: String,
    /// The `Host` header: the authority as given.
    host: HeaderValue,
    /// For `https://`: the name the server's certificate must carry.
    server_name: Option<ServerName<'static>>,
}

/// Parses `https://host[:port][/]` or `http://host[:port][/]` (no scheme: `http://`).
fn parse_server(server: &str) -> Result<Server, ClientError> {
    const EXPECTED: &str = "expected https://host:port or http://host:port";
    let invalid = |reason: &str| ClientError::InvalidServer {
        server: server.to_string(),
        reason: reason.to_string(),
    };
    let trimmed = server.trim();
    let with_scheme = if trimmed.contains("://") {
        trimmed.to_string()
    } else {
        format!("http://{trimmed}")
    };
    let uri: Uri = with_scheme
        .parse()
        .map_err(|e: http::uri::InvalidUri| invalid(&e.to_string()))?;
    let (scheme, default_port, https) = match uri.scheme_str() {
        Some("https") => ("https", 443, true),
        Some("http") => ("http", 80, false),
        _ => return Err(invalid(EXPECTED)),
    };
    let authority = uri
        .authority()
        .filter(|a| !a.host().is_empty())
        .ok_or_else(|| invalid(EXPECTED))?;
    if authority.as_str().contains('@') {
        return Err(invalid(
            "credentials in the URL are not supported; use a token",
        ));
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(invalid(&format!("expected no path: {scheme}://host:port")));
    }
    let connect_to = match authority.port_u16() {
        Some(_) => authority.as_str().to_string(),
        None => format!("{}:{default_port}", authority.host()),
    };
    let host = HeaderValue::from_str(authority.as_str()).map_err(|e| invalid(&e.to_string()))?;
    let server_name = if https {
        // `[::1]` in a URL is the IP address ::1 to the certificate check.
        let bare = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        let name = ServerName::try_from(bare.to_string())
            .map_err(|e| invalid(&format!("{bare:?} is not a host name or IP address: {e}")))?;
        Some(name)
    } else {
        None
    };
    Ok(Server {
        base: format!("{scheme}://{authority}"),
        connect_to,
        host,
        server_name,
    })
}

/// A TLS client that accepts any server certificate (still checking that the server holds its
/// key): only for [`Client::discover_trust`], whose answer carries its own proof and which
/// sends nothing secret.
fn unverified_tls_connector() -> Result<TlsConnector, ClientError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(AnyServer(provider.clone()));
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError::InvalidCa {
            reason: e.to_string(),
        })?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsConnector::from(Arc::new(config)))
}

/// Accepts any certificate chain; verifies handshake signatures with the provider's algorithms.
#[derive(Debug)]
struct AnyServer(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A TLS client trusting only the CA certificates in `pem`, checking names as usual.
fn tls_connector(pem: &[u8]) -> Result<TlsConnector, ClientError> {
    let invalid = |reason: String| ClientError::InvalidCa { reason };
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(format!("bad PEM: {e}")))?;
    if certs.is_empty() {
        return Err(invalid("no CERTIFICATE in the PEM".to_string()));
    }
    let mut roots = rustls::RootCertStore::empty();
    for cert in certs {
        roots
            .add(cert)
            .map_err(|e| invalid(format!("not a usable CA certificate: {e}")))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsConnector::from(Arc::new(config)))
}

fn bearer(token: &str) -> Result<HeaderValue, ClientError> {
    if token.is_empty() {
        return Err(ClientError::InvalidToken {
            reason: "it is empty".to_string(),
        });
    }
    if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(ClientError::InvalidToken {
            reason: "it contains whitespace or control characters".to_string(),
        });
    }
    let mut value = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|e| {
        ClientError::InvalidToken {
            reason: e.to_string(),
        }
    })?;
    value.set_sensitive(true);
    Ok(value)
}

fn json_body<T: Serialize>(value: &T) -> Result<Bytes, ClientError> {
    serde_json::to_vec(value)
        .map(Bytes::from)
        .map_err(|e| ClientError::Encode(e.to_string()))
}

fn collection_path(plural: &str, namespace: Option<&str>) -> String {
    match namespace {
        Some(ns) => format!("/v1/namespaces/{}/{}", encode(ns), encode(plural)),
        None => format!("/v1/{}", encode(plural)),
    }
}

fn item_path(plural: &str, namespace: Option<&str>, name: &str) -> String {
    format!("{}/{}", collection_path(plural, namespace), encode(name))
}

/// Appends `?k=v&...` for the parameters that are set.
/// Where `apply` puts documents without `metadata.namespace`, as kubectl decides it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApplyNamespace<'a> {
    /// The server's default namespace, `default`.
    Server,
    /// `-n`: documents without a namespace go here, and one naming another is refused.
    Request(&'a str),
    /// The CLI context's namespace: documents without a namespace go here; others keep theirs.
    Context(&'a str),
}

fn push_query(path: &mut String, params: &[(&str, Option<&str>)]) {
    let mut separator = if path.contains('?') { '&' } else { '?' };
    for (key, value) in params {
        if let Some(value) = value {
            path.push(separator);
            path.push_str(key);
            path.push('=');
            path.push_str(&encode(value));
            separator = '&';
        }
    }
}

/// Percent-encodes everything but RFC 3986's unreserved characters, so a path segment or query
/// value (`app=web,tier!=db`) arrives exactly as given.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    use axum::Router;
    use axum::extract::RawQuery;
    use axum::http::HeaderMap;
    use axum::response::IntoResponse;
    use axum::routing::{get, post};

    /// A fake of the server's side of the contract: canned answers, just enough to check that
    /// the client sends what the contract says and reads what it returns.
    async fn fake_server() -> String {
        async fn apply(
            RawQuery(query): RawQuery,
            headers: HeaderMap,
            body: String,
        ) -> impl IntoResponse {
            let auth = headers.get("authorization").and_then(|v| v.to_str().ok());
            let ct = headers.get("content-type").and_then(|v| v.to_str().ok());
            assert_eq!(auth, Some("Bearer cw_0123456789ab_secret"));
            assert_eq!(ct, Some("application/yaml"));
            if body.contains("conflicting") {
                let problem = serde_json::json!({
                    "type": "https://causeway.dev/problems/conflict", "title": "Conflict",
                    "status": 409, "detail": "1 document conflicts",
                    "results": [{"document": 0, "kind": "Route", "apiVersion": "causeway.dev/v1alpha1",
                                 "name": "r", "namespace": "prod", "action": "conflict", "warnings": []}]});
                return (
                    StatusCode::CONFLICT,
                    [("content-type", "application/problem+json")],
                    problem.to_string(),
                );
            }
            let dry = query.as_deref() == Some("dryRun=true");
            let answer = serde_json::json!({"dryRun": dry, "results": [{
                "document": 0, "kind": "VirtualService", "apiVersion": "networking.istio.io/v1",
                "name": "api", "namespace": "production", "action": "created",
                "resourceVersion": "7",
                "warnings": [{"field": "spec.http[0].retries", "message": "not enforced yet"}]}]});
            (
                StatusCode::OK,
                [("content-type", "application/json")],
                answer.to_string(),
            )
        }
        async fn missing(RawQuery(query): RawQuery) -> impl IntoResponse {
            let problem = serde_json::json!({
                "type": "https://causeway.dev/problems/not-found", "title": "Not Found",
                "status": 404, "detail": format!("query {}", query.unwrap_or_default())});
            (StatusCode::NOT_FOUND, problem.to_string())
        }
        let app = Router::new()
            .route("/v1/apply", post(apply))
            .route("/v1/namespaces/{ns}/virtualservices/{name}", get(missing))
            .route(
                "/v1/tokens",
                get(|| async {
                    axum::Json(serde_json::json!({"items": [
                {"id": "0123456789ab", "role": "admin", "description": "bootstrap",
                 "createdAt": "2025-01-01T00:00:00Z", "singleUse": false, "used": false}]}))
                }),
            )
            .route(
                "/v1/status",
                get(|| async { (StatusCode::BAD_GATEWAY, "upstream down") }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}")
    }

    fn client(server: &str) -> Client {
        Client::new(server, Some("cw_0123456789ab_secret".to_string())).unwrap()
    }

    #[tokio::test]
    async fn client_reads_apply_results_and_warnings() {
        let c = client(&fake_server().await);
        let yaml = "kind: VirtualService\n".to_string();
        let applied = c
            .apply(yaml.clone(), "application/yaml", true)
            .await
            .unwrap();
        assert!(applied.dry_run);
        let result = &applied.results[0];
        assert_eq!(result.action, ApplyAction::Created);
        assert_eq!(result.namespace.as_deref(), Some("production"));
        assert_eq!(result.resource_version.as_deref(), Some("7"));
        assert_eq!(result.warnings[0].field, "spec.http[0].retries");
        assert!(
            !c.apply(yaml, "application/yaml", false)
                .await
                .unwrap()
                .dry_run
        );
    }

    #[tokio::test]
    async fn client_turns_refusals_into_problems() {
        let c = client(&fake_server().await);
        let err = c
            .apply("conflicting".to_string(), "application/yaml", false)
            .await
            .unwrap_err();
        let problem = err.problem().expect("a problem");
        assert_eq!(problem.slug(), "conflict");
        assert_eq!(problem.results[0].action, ApplyAction::Conflict);
        assert!(!err.is_unreachable());

        // Names and query values are percent-encoded; the problem says what arrived.
        let err = c
            .get("virtualservices", Some("production"), "api", Some("a b"))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, ClientError::Http { status: 404, .. }),
            "{err:?}"
        );
        assert_eq!(err.problem().unwrap().detail, "query cluster=a%20b");

        // Not problem+json: the status's reason and the text.
        let err = c.status().await.unwrap_err();
        let problem = err.problem().unwrap();
        assert_eq!(
            (problem.status, problem.detail.as_str()),
            (502, "upstream down")
        );

        let tokens = c.list_tokens().await.unwrap();
        assert_eq!(
            (tokens[0].id.as_str(), tokens[0].role),
            ("0123456789ab", Role::Admin)
        );
    }

    #[tokio::test]
    async fn client_names_the_server_it_cannot_reach() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let err = Client::new(&addr.to_string(), None)
            .unwrap()
            .status()
            .await
            .unwrap_err();
        assert!(err.is_unreachable());
        assert!(err.to_string().contains(&format!("http://{addr}")), "{err}");
    }

    #[test]
    fn client_checks_server_addresses_and_header_safe_tokens() {
        assert_eq!(
            Client::new("127.0.0.1:15000", None).unwrap().server(),
            "http://127.0.0.1:15000"
        );
        assert_eq!(
            Client::new("http://gw.example/", None).unwrap().connect_to,
            "gw.example:80"
        );
        for bad in ["ftp://gw", "http://gw:1/api", "http://", "http://u:p@gw"] {
            assert!(
                matches!(
                    Client::new(bad, None),
                    Err(ClientError::InvalidServer { .. })
                ),
                "{bad} accepted"
            );
        }
        assert!(matches!(
            Client::new("http://gw:1", Some("two words".to_string())),
            Err(ClientError::InvalidToken { .. })
        ));
        let debug = format!("{:?}", client("http://gw:1"));
        assert!(!debug.contains("secret"), "{debug}");
    }

    #[test]
    fn https_needs_a_ca_and_a_usable_one() {
        let err = Client::new("https://gw:15000", None).unwrap_err();
        assert!(matches!(err, ClientError::MissingCa { .. }), "{err}");
        assert!(err.to_string().contains("https://gw:15000"), "{err}");
        for junk in [&b"not pem"[..], b""] {
            let err = Client::with_ca("https://gw:15000", None, Some(junk)).unwrap_err();
            assert!(matches!(err, ClientError::InvalidCa { .. }), "{err}");
        }
        let (_dir, ca) = test_ca("east");
        let pem = ca.bundle_pem();
        let c = Client::with_ca("https://gw.example", None, Some(pem.as_bytes())).unwrap();
        assert_eq!(
            (c.server(), c.connect_to.as_str()),
            ("https://gw.example", "gw.example:443")
        );
        assert!(c.is_https());
        let c = Client::with_ca("https://[::1]:9", None, Some(pem.as_bytes())).unwrap();
        assert_eq!(c.tls.unwrap().1, ServerName::try_from("::1").unwrap());
        // A CA given for plain http is not needed, and not an error.
        assert!(
            !Client::with_ca("http://gw:1", None, Some(b"x"))
                .unwrap()
                .is_https()
        );
    }

    fn test_ca(
        td: &str,
    ) -> (
        tempfile::TempDir,
        federation::identity::CertificateAuthority,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let td = federation::identity::TrustDomain::parse(td).unwrap();
        let ca =
            federation::identity::CertificateAuthority::load_or_create(dir.path(), &td).unwrap();
        (dir, ca)
    }

    #[tokio::test]
    async fn https_verifies_the_gateway_against_the_given_ca_and_name() {
        let (_dir, ca) = test_ca("east");
        let (_other_dir, other) = test_ca("west");
        let cert = ca
            .issue_server_cert(
                &[ServerName::try_from("127.0.0.1").unwrap()],
                Duration::from_secs(600),
            )
            .unwrap();
        let tls = crate::tls_server_config(cert.chain().to_vec(), cert.key()).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Router::new().route(
            "/v1/status",
            get(|| async { axum::Json(serde_json::json!({"ok": true})) }),
        );
        let listener =
            crate::tls::TlsListener::new(listener, Arc::new(tls), crate::AdminMetrics::default())
                .unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });

        let pem = ca.bundle_pem();
        let good = Client::with_ca(&format!("https://{addr}"), None, Some(pem.as_bytes())).unwrap();
        assert_eq!(good.status().await.unwrap()["ok"], true);

        // Another CA, or a name the certificate does not carry: refused, and not "unreachable".
        let stranger = other.bundle_pem();
        let wrong_ca =
            Client::with_ca(&format!("https://{addr}"), None, Some(stranger.as_bytes())).unwrap();
        let wrong_name = Client::with_ca(
            &format!("https://localhost:{}", addr.port()),
            None,
            Some(pem.as_bytes()),
        )
        .unwrap();
        for (c, what) in [
            (wrong_ca, "UnknownIssuer"),
            (wrong_name, "not valid for name"),
        ] {
            let err = c.status().await.unwrap_err();
            assert!(matches!(err, ClientError::Tls { .. }), "{err:?}");
            assert!(!err.is_unreachable());
            assert!(err.to_string().contains(what), "{err}");
        }

        // Plain HTTP to the HTTPS port is answered with a refusal that says what to do.
        let err = Client::new(&format!("http://{addr}"), None)
            .unwrap()
            .status()
            .await
            .unwrap_err();
        let problem = err.problem().expect("an answer");
        assert_eq!(problem.status, 400);
        assert!(problem.detail.contains("https://"), "{problem}");
    }
}
