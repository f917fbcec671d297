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
use super::wire::{JoinCluster, JoinRequestDoc, JoinResponse};
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
    let (members, clusters) = state.mesh.read(|s| {
        let members = s.members().into_iter().cloned().collect();
        let clusters = s
            .list(Kind::Cluster, None, None)
            .into_iter()
            .map(|c| {
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
            .collect();
        (members, clusters)
    });
    Ok(Json(JoinResponse {
        node_id,
        members,
        clusters,
    }))
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
