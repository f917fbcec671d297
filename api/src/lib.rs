//! Causeway's admin surface on the admin port: `/metrics`, `/healthz`, `/readyz`; and the Raft
//! transport between gateways ([`raft`]: gRPC over mutual TLS).
//!
//! The REST resources of the mesh arrive with the store; health and metrics stay
//! unauthenticated so that kubelets and Prometheus can reach them.
#![forbid(unsafe_code)]

pub mod raft;
mod readiness;

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::registry::Registry;

pub use readiness::{Blocker, Readiness};

#[derive(Clone)]
pub struct AdminState {
    pub registry: Arc<Registry>,
    pub readiness: Readiness,
}

pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(state)
}

/// Serves the admin API on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AdminState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}

async fn metrics(State(state): State<AdminState>) -> Response {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &state.registry) {
        Ok(()) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "cannot encode metrics");
            (StatusCode::INTERNAL_SERVER_ERROR, "cannot encode metrics\n").into_response()
        }
    }
}

async fn readyz(State(state): State<AdminState>) -> Response {
    let pending = state.readiness.pending();
    if pending.is_empty() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        let body = format!("not ready, waiting for: {}\n", pending.join(", "));
        (StatusCode::SERVICE_UNAVAILABLE, body).into_response()
    }
}
