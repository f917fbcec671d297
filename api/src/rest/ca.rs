//! CA rotation of this gateway's cluster (`POST /v1/clusters/{name}/ca/rotate`): the contract
//! between the admin API and the gateway that holds the CA key.
//!
//! The gateway runs the rotation (see `src/rotation.rs` of the binary): the next root joins the
//! cluster's trust bundle everywhere, issuance switches once every other gateway of the mesh
//! trusts it (proved by a handshake with an SVID of the next CA), and the old root leaves the
//! bundle by itself after the longest SVID it signed expires.
//!
//! ```text
//!  causeway ca rotate --cluster east ── POST /v1/clusters/east/ca/rotate ──► rotate_ca (admin)
//!                                         │ east is not this gateway's cluster: 409 naming
//!                                         │ east's gateways (404: the mesh has no east)
//!                                         ▼ spawned: a client that hangs up does not stop it
//!                                    CaRotator::rotate(actor): next root trusted everywhere,
//!  ◄── 200 RotationReport ───────────────┘ issuance switched
//!  ◄── 409 Conflict / 503 Unavailable / 500 Internal: problem+json with the rotator's reason
//! ```

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use federation::mesh::MeshState;
use federation::resource::{Kind, ResourceKey};
use futures::future::BoxFuture;
use serde::Serialize;
use utoipa::ToSchema;

use super::auth::{Admin, Caller, Joining};
use super::input::{Body, Params, Segments};
use super::problem::{Problem, ProblemBody, Slug};
use super::tokens::json_body;
use crate::AdminState;

/// Runs rotations of the cluster CA this gateway holds.
pub trait CaRotator: Send + Sync {
    /// The cluster whose CA this gateway holds.
    fn cluster(&self) -> &str;

    /// Rotates up to the switch of issuance and answers then; the old root's retirement
    /// follows on its own. `actor` names who asked (for the audit log).
    fn rotate(
        self: Arc<Self>,
        actor: String,
    ) -> BoxFuture<'static, Result<RotationReport, RotationRefusal>>;

    /// The CA (certificate and private key, PEM) for another gateway of this cluster that is
    /// joining (`POST /v1/join/ca`); refused while a rotation is under way.
    fn export_for_join(&self) -> Result<JoinCa, RotationRefusal>;
}

/// `POST /v1/join/ca` → 200: this cluster's CA, for a gateway of the same cluster that joins.
#[derive(Clone, PartialEq, Eq, Serialize, serde::Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct JoinCa {
    /// PEM of the CA certificate.
    pub ca_certificate: String,
    /// PEM of the CA's private key (PKCS#8). Write it with mode 0600; never log it.
    pub ca_key: String,
}

impl std::fmt::Debug for JoinCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinCa")
            .field("ca_certificate", &self.ca_certificate)
            .field("ca_key", &"<redacted>")
            .finish()
    }
}

/// `POST /v1/join/ca` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JoinCaRequest {
    /// The joining gateway's cluster (an RFC 1123 label).
    #[schema(pattern = "^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")]
    pub cluster: String,
}

/// What a rotation did (also what `api::client::Client::rotate_ca` reads).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RotationReport {
    pub cluster: String,
    /// `switched`: the next CA signs; the old root is still trusted until `oldRootRetiresAt`.
    pub phase: String,
    /// PEM of the new root.
    pub new_root: String,
    /// The gateways that proved they trust the new root before the switch (SPIFFE IDs).
    pub gateways_trusting: Vec<String>,
    /// RFC 3339.
    pub switched_at: String,
    /// RFC 3339: when the old root leaves the cluster's trust bundle.
    pub old_root_retires_at: String,
}

/// Why a rotation did not run or did not finish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RotationRefusal {
    /// Not now: another rotation is under way, or the previous one's old root has not retired.
    Conflict(String),
    /// Not yet: a gateway does not trust the next root in time, or no quorum; the rotation
    /// stays announced and a later call continues it.
    Unavailable(String),
    Internal(String),
}

// ---- POST /v1/clusters/{name}/ca/rotate ----

/// `POST /v1/clusters/{name}/ca/rotate` body: nothing, `{}` or `null` (what an optional body's
/// schema allows). Written out so the schema refuses what the server refuses: any member,
/// anything but an object.
pub struct RotateRequest;

impl utoipa::PartialSchema for RotateRequest {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        let schema = serde_json::json!({
            "description": "`POST /v1/clusters/{name}/ca/rotate` body: none, or an empty object; the rotation takes no parameters.",
            "type": "object",
            "additionalProperties": false,
            "maxProperties": 0,
        });
        serde_json::from_value(schema).expect("a well-formed schema")
    }
}

impl ToSchema for RotateRequest {}

/// Rotates the CA of cluster `name`, which must be the answering gateway's own: the next root
/// joins the cluster's trust bundle everywhere, issuance switches once every other gateway of
/// the mesh has proved it trusts the next root, and the old root leaves the bundle by itself
/// after the longest SVID it signed expires (`oldRootRetiresAt`). Answers at the switch, which
/// may take up to a minute while other gateways catch up. Admin only.
// The name's pattern is `wire::DNS_LABEL_PATTERN` (the attribute takes a literal only; a test
// holds the two together).
#[utoipa::path(
    post,
    path = "/v1/clusters/{name}/ca/rotate",
    tag = "ca",
    params(
        ("name" = String, Path, pattern = "^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$", description = "The cluster whose CA rotates (an RFC 1123 label): the answering gateway's own"),
    ),
    request_body(content = Option<RotateRequest>, content_type = "application/json", description = "None, `{}` or `null`: the rotation takes no parameters"),
    responses(
        (status = 200, description = "Issuance switched to the next CA; the old root stays trusted until `oldRootRetiresAt`", body = RotationReport),
        (status = 400, description = "A bad cluster name (`field`: name), a body other than `{}`, or a query parameter", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "No cluster of that name in the mesh", body = ProblemBody, content_type = "application/problem+json"),
        (status = 409, description = "The cluster is not this gateway's (the detail names its gateways' admin addresses), or the rotation cannot run now: another is under way, the previous rotation's old root has not retired yet", body = ProblemBody, content_type = "application/problem+json"),
        (status = 413, description = "Body over 4 MiB", body = ProblemBody, content_type = "application/problem+json"),
        (status = 415, description = "Not JSON", body = ProblemBody, content_type = "application/problem+json"),
        (status = 503, description = "This gateway holds no CA to rotate, or not every gateway trusted the next root in time, or no quorum (the rotation stays announced; calling again continues it)", body = ProblemBody, content_type = "application/problem+json"),
    )
)]
pub async fn rotate_ca(
    caller: Caller<Admin>,
    State(state): State<AdminState>,
    Segments(name): Segments<String>,
    params: Params,
    body: Body,
) -> Result<Json<RotationReport>, Problem> {
    params.only(&[])?;
    empty_body(&body)?;
    federation::model::check_dns_label("cluster name", &name)
        .map_err(|e| Problem::bad_request("name", e.to_string()))?;
    let rotator = state.ca_rotator.clone().ok_or_else(|| {
        Problem::no_quorum(format!(
            "this gateway holds no certificate authority to rotate; ask a gateway that holds \
             cluster {name}'s CA"
        ))
    })?;
    let own = rotator.cluster().to_string();
    if name != own {
        return Err(elsewhere(&state, &own, &name).await);
    }
    let actor = caller.principal.actor();
    tracing::info!(%actor, cluster = %name, "CA rotation asked");
    // Spawned, so that a client that hangs up (or times out) does not drop the rotation
    // halfway between announcing the next root and switching to it.
    let outcome = tokio::spawn(rotator.rotate(actor.clone()))
        .await
        .unwrap_or_else(|e| {
            Err(RotationRefusal::Internal(format!(
                "the rotation task failed: {e}"
            )))
        });
    match outcome {
        Ok(report) => {
            tracing::info!(
                %actor,
                cluster = %name,
                switched_at = %report.switched_at,
                old_root_retires_at = %report.old_root_retires_at,
                gateways = report.gateways_trusting.len(),
                "CA rotation switched issuance to the next root"
            );
            Ok(Json(report))
        }
        Err(refusal) => {
            let (slug, reason) = match refusal {
                RotationRefusal::Conflict(reason) => (Slug::Conflict, reason),
                RotationRefusal::Unavailable(reason) => (Slug::NoQuorum, reason),
                RotationRefusal::Internal(reason) => (Slug::Internal, reason),
            };
            if slug == Slug::Internal {
                tracing::error!(%actor, cluster = %name, %reason, "CA rotation failed");
            } else {
                tracing::info!(%actor, cluster = %name, %reason, outcome = slug.as_str(), "CA rotation refused");
            }
            Err(Problem::new(slug, reason))
        }
    }
}

/// Nothing, `{}` or `null`: anything else is a mistake worth naming (the rotation takes no
/// options).
fn empty_body(body: &Body) -> Result<(), Problem> {
    if body.bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(());
    }
    match json_body::<serde_json::Value>(body)? {
        serde_json::Value::Null => Ok(()),
        serde_json::Value::Object(members) if members.is_empty() => Ok(()),
        _ => Err(Problem::bad_request(
            "body",
            "this route takes no body (or `{}`): the rotation has no options",
        )),
    }
}

// ---- POST /v1/join/ca ----

/// A gateway joining a cluster that already has gateways gets the cluster's CA here, from a
/// gateway of that cluster, over this TLS connection (verified as for `POST /v1/join`), with
/// its join token as the bearer token (the token is not used up: `POST /v1/join` does that).
/// The CA's key never enters the replicated log. 404 when the mesh has no such cluster (the
/// joiner then makes a CA of its own); 409 when the cluster is another gateway's (the detail
/// names its gateways to join through instead).
#[utoipa::path(
    post,
    path = "/v1/join/ca",
    tag = "members",
    request_body(content = JoinCaRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "This cluster's CA (certificate and key), for the joining gateway", body = JoinCa),
        (status = 400, description = "The body is not `{cluster}`, a bad cluster name (`field`: cluster), or a query parameter", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "No cluster of that name in the mesh: the joiner makes its own CA", body = ProblemBody, content_type = "application/problem+json"),
        (status = 409, description = "The cluster is not this gateway's (the detail names its gateways), or its CA is being rotated", body = ProblemBody, content_type = "application/problem+json"),
        (status = 413, description = "Body over 4 MiB", body = ProblemBody, content_type = "application/problem+json"),
        (status = 415, description = "Not JSON", body = ProblemBody, content_type = "application/problem+json"),
        (status = 503, description = "This gateway holds no CA to hand on", body = ProblemBody, content_type = "application/problem+json"),
    )
)]
pub async fn join_ca(
    caller: Caller<Joining>,
    State(state): State<AdminState>,
    params: Params,
    body: Body,
) -> Result<Response, Problem> {
    params.only(&[])?;
    let request: JoinCaRequest = json_body(&body)?;
    federation::model::check_dns_label("cluster name", &request.cluster)
        .map_err(|e| Problem::bad_request("cluster", e.to_string()))?;
    let holder = state.ca_rotator.clone().ok_or_else(|| {
        Problem::no_quorum("this gateway holds no certificate authority to hand on")
    })?;
    let own = holder.cluster().to_string();
    let name = request.cluster;
    if name != own {
        return Err(match elsewhere(&state, &own, &name).await {
            p if p.status == 404 => p,
            _ => {
                let gateways = state
                    .read_caught_up(|s| cluster_gateways(s, &name))
                    .await
                    .unwrap_or_default();
                Problem::new(
                    Slug::Conflict,
                    format!(
                        "cluster {name} already has a CA, held by its gateways; join through one of them to get it: {}",
                        if gateways.is_empty() {
                            "(the mesh records none yet)".to_string()
                        } else {
                            gateways.join(", ")
                        }
                    ),
                )
            }
        });
    }
    let ca = holder.export_for_join().map_err(|refusal| match refusal {
        RotationRefusal::Conflict(why) => Problem::new(Slug::Conflict, why),
        RotationRefusal::Unavailable(why) => Problem::no_quorum(why),
        RotationRefusal::Internal(why) => Problem::internal(why),
    })?;
    tracing::info!(token = %caller.principal.id, cluster = %name, "handed this cluster's CA to a joining gateway");
    let mut response = Json(ca).into_response();
    // A private key: no cache on the way may keep it.
    response.headers_mut().insert(
        axum::http::header::CACHE_CONTROL,
        axum::http::HeaderValue::from_static("no-store"),
    );
    Ok(response)
}

/// The answer for a cluster that is not this gateway's: 409 naming where its CA rotates,
/// or 404 if the mesh has no such cluster.
async fn elsewhere(state: &AdminState, own: &str, name: &str) -> Problem {
    // A cluster that joined a moment ago through another gateway may not be here yet.
    let gateways = state.read_caught_up(|s| cluster_gateways(s, name)).await;
    let Some(gateways) = gateways else {
        return Problem::not_found(format!(
            "the mesh has no cluster {name}; this gateway holds the CA of cluster {own}"
        ));
    };
    let ask = if gateways.is_empty() {
        format!("the mesh records no gateway of {name} yet")
    } else {
        format!("ask one of them: {}", gateways.join(", "))
    };
    Problem::new(
        Slug::Conflict,
        format!(
            "this gateway holds the CA of cluster {own}; cluster {name}'s CA rotates on one of \
             {name}'s gateways: {ask}"
        ),
    )
}

/// `name <admin address>` of each member of cluster `name`, or `None` when the mesh knows no
/// such cluster (neither a `Cluster` resource nor a member).
fn cluster_gateways(state: &MeshState, name: &str) -> Option<Vec<String>> {
    let gateways: Vec<String> = state
        .members()
        .into_iter()
        .filter(|m| m.cluster.as_str() == name)
        .map(|m| format!("{} (admin {})", m.name, m.admin))
        .collect();
    let resource = ResourceKey {
        kind: Kind::Cluster,
        namespace: String::new(),
        cluster: String::new(),
        name: name.to_string(),
    };
    (!gateways.is_empty() || state.get(&resource).is_some()).then_some(gateways)
}
