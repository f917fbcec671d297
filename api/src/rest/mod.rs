//! The admin REST API: the mesh's resources, tokens, members and status over HTTP/1.1 + JSON.
//!
//! ```text
//!  /healthz /readyz /v1/join/discovery ────────────────────────────► handler
//!  everything else ─► auth::authenticate (bearer token → Principal) ─► handler(Caller<Role>, ..)
//!                                                                       │ reads: SharedMesh::read
//!                                                                       │ writes: Writer::propose
//!  errors: Problem → application/problem+json                            ▼ (Raft, forwarded to the leader)
//! ```
//! Every route is registered with its `#[utoipa::path]` through `utoipa_axum::routes!`, so the
//! OpenAPI document ([`openapi`]) lists exactly what the router serves.

mod apply;
mod auth;
pub mod ca;
mod health;
mod input;
mod join;
mod openapi;
mod problem;
pub mod recover;
mod resources;
mod status;
mod svids;
mod tokens;
pub use tokens::ttl_duration;
mod watch;
mod wire;
mod writer;

#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::sync::OnceLock;

use axum::Router;
use axum::middleware;
use utoipa::OpenApi as _;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use auth::Principal;
pub use ca::{CaRotator, JoinCa, JoinCaRequest, RotationRefusal, RotationReport};
pub use input::MAX_BODY;
pub use problem::{PROBLEM_JSON, Problem, ProblemBody, ProblemError, Slug};
pub use svids::{SVID_TTL_MAX, SvidSigner};
pub use wire::*;
pub use writer::{Forward, WRITE_TIMEOUT, Writer};

use crate::AdminState;

/// Who this gateway is, for `/v1/status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    /// Raft node id (0 on a gateway without the store).
    pub id: u64,
    /// The gateway's name in its cluster.
    pub name: String,
    pub cluster: String,
    pub spiffe_id: String,
    /// Where the admin API listens.
    pub admin: SocketAddr,
}

/// One of this gateway's tunnels as `/v1/status` shows it; the composition root adapts the
/// data plane's view into these.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelView {
    /// The peer cluster.
    pub cluster: String,
    /// The peer gateway's tunnel address.
    pub address: String,
    pub up: bool,
}

/// The routes, unauthenticated ones first, and the document generated from them.
fn parts() -> (
    Router<AdminState>,
    Router<AdminState>,
    utoipa::openapi::OpenApi,
) {
    let (open, open_doc) = OpenApiRouter::<AdminState>::new()
        .routes(routes!(health::healthz))
        .routes(routes!(health::readyz))
        .routes(routes!(join::discovery))
        .routes(routes!(recover::recover))
        .split_for_parts();
    let (authenticated, authenticated_doc) = OpenApiRouter::<AdminState>::new()
        .routes(routes!(health::metrics))
        .routes(routes!(openapi::openapi_json))
        .routes(routes!(apply::apply))
        .routes(routes!(status::status))
        .routes(routes!(watch::watch))
        .routes(routes!(tokens::create_token, tokens::list_tokens))
        .routes(routes!(tokens::revoke_token))
        .routes(routes!(tokens::audit))
        .routes(routes!(svids::issue_svid))
        .routes(routes!(ca::rotate_ca))
        .routes(routes!(ca::join_ca))
        .routes(routes!(join::join))
        .routes(routes!(resources::list_all))
        .routes(routes!(
            resources::get_mesh,
            resources::put_mesh,
            resources::delete_mesh
        ))
        .routes(routes!(resources::list_namespaced))
        .routes(routes!(
            resources::get_namespaced,
            resources::put_namespaced,
            resources::delete_namespaced
        ))
        .split_for_parts();
    let mut doc = openapi::ApiDoc::openapi();
    doc.merge(open_doc);
    doc.merge(authenticated_doc);
    openapi::complete(&mut doc);
    (open, authenticated, doc)
}

/// The OpenAPI document of [`router`].
pub fn openapi() -> &'static utoipa::openapi::OpenApi {
    static DOC: OnceLock<utoipa::openapi::OpenApi> = OnceLock::new();
    DOC.get_or_init(|| parts().2)
}

/// The whole admin API.
pub fn router(state: AdminState) -> Router {
    let (open, authenticated, _) = parts();
    let authenticated = authenticated.route_layer(middleware::from_fn_with_state(
        state.clone(),
        auth::authenticate,
    ));
    open.merge(authenticated)
        .fallback(|| async { Problem::not_found("no such route; GET /v1/openapi.json lists them") })
        .method_not_allowed_fallback(|| async {
            Problem::new(
                Slug::MethodNotAllowed,
                "this route does not take that method",
            )
        })
        .with_state(state)
}

impl AdminState {
    /// The node, or 503 on a gateway without the store.
    pub(crate) fn node(&self) -> Result<&store::Node, Problem> {
        self.node
            .as_ref()
            .ok_or_else(|| Problem::no_quorum("this gateway runs without the replicated store"))
    }

    pub(crate) fn writer(&self) -> Result<&Writer, Problem> {
        self.writer
            .as_ref()
            .ok_or_else(|| Problem::no_quorum("this gateway runs without the replicated store"))
    }

    /// `read` on this node's copy of the state; when it finds nothing, once more after catching
    /// up with what is committed (a read-index round), for what was created a moment ago
    /// through another gateway (a token, say) and has not reached this one yet.
    pub(crate) async fn read_caught_up<T>(
        &self,
        read: impl Fn(&federation::mesh::MeshState) -> Option<T>,
    ) -> Option<T> {
        if let Some(found) = self.mesh.read(&read) {
            return Some(found);
        }
        self.node.as_ref()?.read_index().await.ok()?;
        self.mesh.read(&read)
    }

    /// For `?consistent=true`: waits until this node has applied every write committed before
    /// the request (a read-index round through the leader).
    pub(crate) async fn fresh(&self, consistent: bool) -> Result<(), Problem> {
        if !consistent {
            return Ok(());
        }
        self.node()?.read_index().await.map(drop).map_err(|e| {
            Problem::no_quorum(format!(
                "cannot confirm this node is up to date (consistent=true): {e}"
            ))
        })
    }
}
