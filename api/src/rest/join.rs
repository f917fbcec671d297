//! `POST /v1/join`: a new gateway, holding a join token, records itself in the mesh.
//!
//! The token's hash travels in the `Join` command, so the state machine consumes the token in
//! the same entry that admits the member: two gateways racing with one token cannot both join.

use axum::Json;
use axum::extract::State;
use federation::identity::{SpiffeId, TrustDomain};
use federation::mesh::{Command, CommandResult, JoinRequest, token};
use federation::resource::{self, Kind, NATIVE_API_VERSION};
use serde_json::json;

use super::apply::unexpected;
use super::auth::{Caller, Joining};
use super::input::{Body, Params};
use super::problem::{Problem, ProblemBody, ProblemError};
use super::tokens::json_body;
use super::wire::{DiscoveryDocument, JoinCluster, JoinDiscovery, JoinRequestDoc, JoinResponse};
use crate::AdminState;

/// Joins the mesh with a join token (single-use): records the gateway as a member with the
/// next node id and creates or updates its `Cluster`. Answers with the members and every
/// cluster's trust material, as this node has them once the join applied.
#[utoipa::path(
    post,
    path = "/v1/join",
    tag = "members",
    request_body(content = JoinRequestDoc, content_type = "application/json"),
    responses(
        (status = 200, description = "Joined", body = JoinResponse),
        (status = 400, description = "The body is not a join request, or a query parameter was given", body = ProblemBody, content_type = "application/problem+json"),
        (status = 409, description = "The join clashes with the mesh (the gateway name is taken, or the cluster has another trust domain)", body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "The request's trust material or identity is invalid; `errors` names each field", body = ProblemBody, content_type = "application/problem+json"),
        (status = 413, description = "Body over 4 MiB", body = ProblemBody, content_type = "application/problem+json"),
        (status = 415, description = "Not JSON", body = ProblemBody, content_type = "application/problem+json"),
    )
)]
pub async fn join(
    caller: Caller<Joining>,
    State(state): State<AdminState>,
    params: Params,
    body: Body,
) -> Result<Json<JoinResponse>, Problem> {
    params.only(&[])?;
    let request: JoinRequest = json_body(&body)?;
    check(&request)?;
    let command = Command::Join {
        token_id: caller.principal.id.clone(),
        secret_sha256: caller.principal.secret_sha256.clone(),
        request,
        at: token::now_rfc3339(),
    };
    let node_id = match state.writer()?.propose(&command).await?.1 {
        CommandResult::Joined { node_id } => node_id,
        other => return Err(unexpected(other)),
    };
    let members = state
        .mesh
        .read(|s| s.members().into_iter().cloned().collect());
    Ok(Json(JoinResponse {
        node_id,
        members,
        clusters: clusters(&state),
    }))
}

/// The mesh's trust bundles for a gateway about to join that has no CA yet to verify this
/// server by (`causeway gateway --join URL --token T` without `--join-ca`). Needs no bearer
/// token: the joiner must not send its secret before it trusts the server. Instead the answer
/// proves that this server knows the join token's secret (an HMAC keyed with the secret's
/// hash, which only members hold); the joiner checks it, then trusts these bundles, and
/// verifies this server's certificate by them before it sends the token to `POST /v1/join`.
#[utoipa::path(
    get,
    path = "/v1/join/discovery",
    tag = "members",
    security(()),
    params(
        ("token" = String, Query, min_length = 1, description = "The join token's id: the part between `cw_` and the next `_`. Never the secret."),
    ),
    responses(
        (status = 200, description = "The trust bundles, and the proof", body = JoinDiscovery),
        (status = 400, description = "No token id, or another query parameter", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "No usable join token has this id (unknown, already used, expired, or of another role)", body = ProblemBody, content_type = "application/problem+json"),
        (status = 503, description = "This gateway runs without the replicated store", body = ProblemBody, content_type = "application/problem+json"),
    )
)]
pub async fn discovery(
    State(state): State<AdminState>,
    params: Params,
) -> Result<Json<JoinDiscovery>, Problem> {
    params.only(&["token"])?;
    state.node()?;
    let id = params
        .text("token")?
        .ok_or_else(|| Problem::bad_request("token", "give the join token's id: ?token=<id>"))?;
    let now = token::now_rfc3339();
    // Created a moment ago through another gateway: caught up with what is committed.
    let secret_sha256 = state
        .read_caught_up(|s| s.join_token(id, &now).map(|r| r.secret_sha256.clone()))
        .await;
    let secret_sha256 = secret_sha256.ok_or_else(|| {
        Problem::not_found(
            "no usable join token has this id (unknown, already used, expired, or not a join token)",
        )
    })?;
    let document = serde_json::to_string(&DiscoveryDocument {
        clusters: clusters(&state),
    })
    .map_err(|e| Problem::internal(format!("cannot encode the trust bundles: {e}")))?;
    Ok(Json(JoinDiscovery {
        mac: token::discovery_mac(&secret_sha256, document.as_bytes()),
        document,
    }))
}

/// Every cluster's name and trust material, as this node has them.
fn clusters(state: &AdminState) -> Vec<JoinCluster> {
    state.mesh.read(|s| {
        s.list(Kind::Cluster, None, None)
            .into_iter()
            .map(|c| {
                let c = c.resource();
                let text = |field: &str| {
                    c.spec
                        .get(field)
                        .and_then(serde_json::Value::as_str)
                        .unwrap_or_default()
                        .to_string()
                };
                JoinCluster {
                    name: c.metadata.name.clone(),
                    trust_domain: text("trustDomain"),
                    trust_bundle: text("trustBundle"),
                }
            })
            .collect()
    })
}

/// What the state machine takes on trust from the proposer: the cluster's trust material must
/// be what a `Cluster` resource accepts, and the gateway's SPIFFE ID the one its name and trust
/// domain give (`spiffe://<trust domain>/gateway/<name>`), as its certificates will carry.
fn check(request: &JoinRequest) -> Result<(), Problem> {
    let error = |field: &str, message: String| ProblemError {
        document: None,
        field: field.to_string(),
        message,
    };
    let cluster = json!({
        "apiVersion": NATIVE_API_VERSION,
        "kind": "Cluster",
        "metadata": {"name": request.cluster.as_str()},
        "spec": {"trustDomain": request.trust_domain, "trustBundle": request.trust_bundle},
    });
    let mut errors: Vec<ProblemError> = match resource::validate(cluster) {
        Ok(_) => Vec::new(),
        Err(errors) => errors
            .into_iter()
            .map(|e| {
                let field = match e.field.as_str() {
                    "metadata.name" => "cluster".to_string(),
                    other => other.strip_prefix("spec.").unwrap_or(other).to_string(),
                };
                error(&field, e.message)
            })
            .collect(),
    };
    if let Ok(td) = TrustDomain::parse(&request.trust_domain) {
        match SpiffeId::gateway(&td, &request.name) {
            Ok(expected) if expected.as_str() == request.spiffe_id => {}
            Ok(expected) => errors.push(error(
                "spiffeId",
                format!("must be {expected} (the gateway's name in its trust domain)"),
            )),
            Err(e) => errors.push(error("name", e.to_string())),
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(Problem::invalid(errors))
    }
}
