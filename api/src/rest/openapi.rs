//! `/v1/openapi.json`: the document is generated from the handlers' `#[utoipa::path]`
//! attributes as they are registered ([`super::routes`] registers every route through
//! `utoipa_axum::routes!`, so a served route cannot be missing from it), then completed here
//! with what every authenticated route shares: the bearer scheme and the 401/403/500/503
//! problems, and the kinds each `{plural}` takes.

use axum::Json;
use federation::resource::Scope;
use utoipa::OpenApi;
use utoipa::openapi::path::{Operation, PathItem};
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};

use super::auth::{Caller, Viewer};
use super::input::Params;
use super::problem::{PROBLEM_JSON, Problem, ProblemBody};
use super::resources::{SELECTOR_PATTERN, plurals};
use super::wire::{
    AuditEntryDoc, JoinRequestDoc, MemberDoc, ObjectMetaDoc, ResourceDoc, RoleDoc, WatchEventDoc,
    WatchEventType,
};

/// Routes that need no token.
pub const OPEN_PATHS: &[&str] = &[
    "/healthz",
    "/readyz",
    "/v1/join/discovery",
    "/v1/tokens/recover",
];

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Causeway admin API",
        description = "The mesh's resources, tokens, members and status, on every gateway's admin port. \
Every route but /healthz, /readyz and /v1/join/discovery takes `Authorization: Bearer <token>`. Roles: viewer \
reads; operator also applies and deletes; admin also manages tokens, reads the audit log, issues workload SVIDs and rotates its cluster's CA; a join token is \
good for POST /v1/join only. Every error is `application/problem+json` (a `Problem`); a method a route does not have answers 405 \
`method-not-allowed`, an unknown path 404 `not-found`. Writes go through Raft: a follower forwards them to \
the leader and answers once it has applied them itself."
    ),
    components(schemas(
        ProblemBody,
        ResourceDoc,
        ObjectMetaDoc,
        RoleDoc,
        AuditEntryDoc,
        MemberDoc,
        JoinRequestDoc,
        WatchEventDoc,
        WatchEventType
    )),
    security(("bearer" = [])),
    tags(
        (name = "health", description = "Liveness, readiness, metrics"),
        (name = "resources", description = "Apply, list, get, replace, delete and watch the mesh's resources"),
        (name = "status", description = "This node and the Raft group"),
        (name = "tokens", description = "Bearer tokens (admin)"),
        (name = "audit", description = "Accepted writes (admin)"),
        (name = "svids", description = "X.509-SVIDs for workloads, signed by the answering gateway's cluster CA (admin)"),
        (name = "ca", description = "Rotation of the answering gateway's cluster CA (admin)"),
        (name = "members", description = "Gateways joining the mesh"),
        (name = "meta", description = "This document"),
    )
)]
pub struct ApiDoc;

/// This document, as JSON.
#[utoipa::path(
    get,
    path = "/v1/openapi.json",
    tag = "meta",
    responses(
        (status = 200, description = "The OpenAPI 3.1 document of this API", body = Object),
        (status = 400, description = "A query parameter was given (there are none)", body = ProblemBody, content_type = "application/problem+json"),
    )
)]
pub async fn openapi_json(
    _: Caller<Viewer>,
    params: Params,
) -> Result<Json<&'static utoipa::openapi::OpenApi>, Problem> {
    params.only(&[])?;
    Ok(Json(super::openapi()))
}

/// Adds what the handlers' attributes share. `doc` holds every registered route.
pub fn complete(doc: &mut utoipa::openapi::OpenApi) {
    let components = doc.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        "bearer",
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .bearer_format("cw_<id>_<secret>")
                .description(Some("A Causeway token (`POST /v1/tokens`)"))
                .build(),
        ),
    );
    for (path, item) in doc.paths.paths.iter_mut() {
        let open = OPEN_PATHS.contains(&path.as_str());
        let plural_values = plural_values(path);
        for op in operations(item) {
            state_selector_grammar(op);
            if let Some(values) = &plural_values {
                restrict_plural(op, values);
            }
            if open {
                continue;
            }
            op.security = Some(vec![SecurityRequirement::new(
                "bearer",
                Vec::<String>::new(),
            )]);
            add_problem(
                op,
                "401",
                "No valid bearer token: missing, unknown, revoked, expired or used",
            );
            add_problem(op, "403", "The token's role may not do this");
            add_problem(op, "500", "A bug on our side");
            if path != "/metrics" {
                add_problem(
                    op,
                    "503",
                    "No quorum or leader, no commit within 5 s, or no store on this gateway",
                );
            }
        }
    }
}

fn operations(item: &mut PathItem) -> impl Iterator<Item = &mut Operation> {
    [
        &mut item.get,
        &mut item.put,
        &mut item.post,
        &mut item.delete,
        &mut item.patch,
        &mut item.head,
        &mut item.options,
        &mut item.trace,
    ]
    .into_iter()
    .filter_map(Option::as_mut)
}

/// The kinds a route's `{plural}` can name.
fn plural_values(path: &str) -> Option<Vec<&'static str>> {
    if !path.contains("{plural}") {
        return None;
    }
    Some(if path.starts_with("/v1/namespaces/") {
        plurals(&[Scope::Namespaced, Scope::ClusterLocal])
    } else if path == "/v1/{plural}" {
        plurals(&[Scope::Mesh, Scope::Namespaced, Scope::ClusterLocal])
    } else {
        plurals(&[Scope::Mesh])
    })
}

/// The grammar `parse_selector` reads, from the one constant both use.
fn state_selector_grammar(op: &mut Operation) {
    for param in op.parameters.iter_mut().flatten() {
        if param.name == "labelSelector" {
            param.schema = Some(RefOr::T(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .pattern(Some(SELECTOR_PATTERN))
                    .into(),
            ));
        }
    }
}

fn restrict_plural(op: &mut Operation, values: &[&'static str]) {
    for param in op.parameters.iter_mut().flatten() {
        if param.name == "plural" {
            param.schema = Some(RefOr::T(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .enum_values(Some(values.iter().copied()))
                    .into(),
            ));
        }
    }
}

fn add_problem(op: &mut Operation, status: &str, description: &str) {
    op.responses
        .responses
        .entry(status.to_string())
        .or_insert_with(|| {
            ResponseBuilder::new()
                .description(description)
                .content(
                    PROBLEM_JSON,
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name("Problem")))
                        .build(),
                )
                .into()
        });
}
