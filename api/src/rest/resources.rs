//! List, get, replace and delete resources of one kind.
//!
//! ```text
//!  /v1/{plural}                                   list, every namespace
//!  /v1/namespaces/{namespace}/{plural}            list, one namespace
//!  /v1/namespaces/{namespace}/{plural}/{name}     get | put | delete  (namespaced, cluster-local)
//!  /v1/{plural}/{name}                            get | put | delete  (mesh-scoped: clusters)
//! ```
//! Cluster-local kinds (services, serviceexports) exist once per cluster: `?cluster=` picks
//! one; without it the name must be unique across clusters.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use federation::mesh::{Command, CommandResult, StoredResource, WriteResult, token};
use federation::resource::{Kind, NATIVE_API_VERSION, Namespacing, ObjectMeta, ResourceKey, Scope};
use serde_json::Value;

use super::apply::{Checked, against_stored, check_one, conflict_message, unexpected};
use super::auth::{Caller, Operator, Viewer};
use super::input::{Body, Params, Segments, documents, off_thread};
use super::problem::{Problem, ProblemBody, ProblemError, Slug};
use super::wire::{ListMeta, ResourceDoc, ResourceList, Warning};
use crate::AdminState;

/// The kind a URL's `{plural}` names; 404 naming the known ones otherwise.
pub fn kind_of(plural: &str) -> Result<Kind, Problem> {
    Kind::from_plural(plural).ok_or_else(|| {
        let known: Vec<&str> = Kind::all().map(|k| k.plural).collect();
        Problem::not_found(format!(
            "no kind {plural:?}; the kinds are {}",
            known.join(", ")
        ))
        .with_field("plural")
    })
}

/// The plurals of the kinds a route serves, for `/v1/openapi.json`.
pub fn plurals(scopes: &[Scope]) -> Vec<&'static str> {
    Kind::all()
        .filter(|k| scopes.contains(&k.scope))
        .map(|k| k.plural)
        .collect()
}

/// The kind a namespaced route's `{plural}` names: 404 for an unknown or mesh-scoped kind.
/// Every route of a scope resolves `{plural}` alike, so this and [`mesh_scoped`] do it once
/// rather than each handler pairing [`kind_of`] with a scope check.
fn namespaced(plural: &str) -> Result<Kind, Problem> {
    let kind = kind_of(plural)?;
    if kind.scope() == Scope::Mesh {
        let plural = kind.info().plural;
        return Err(Problem::not_found(format!(
            "{plural} are not namespaced: use /v1/{plural}/{{name}}"
        ))
        .with_field("namespace"));
    }
    Ok(kind)
}

/// The kind a mesh-scoped route's `{plural}` names: 404 for an unknown or namespaced kind.
fn mesh_scoped(plural: &str) -> Result<Kind, Problem> {
    let kind = kind_of(plural)?;
    if kind.scope() != Scope::Mesh {
        let plural = kind.info().plural;
        return Err(Problem::not_found(format!(
            "{plural} are namespaced: use /v1/namespaces/{{namespace}}/{plural}/{{name}}"
        ))
        .with_field("namespace"));
    }
    Ok(kind)
}

/// `?cluster=` is for cluster-local kinds only.
fn cluster_param(params: &Params, kind: Kind) -> Result<Option<&str>, Problem> {
    let cluster = params.text("cluster")?;
    if cluster.is_some() && kind.scope() != Scope::ClusterLocal {
        return Err(Problem::bad_request(
            "cluster",
            format!(
                "{} are not cluster-local: drop ?cluster=",
                kind.info().plural
            ),
        ));
    }
    Ok(cluster)
}

// ---- list ----

/// What [`parse_selector`] reads, as the OpenAPI document states it (`openapi::complete` sets
/// it as the `pattern` of every `labelSelector`; a test checks it against the parser).
pub const SELECTOR_PATTERN: &str = "^( *(!?[A-Za-z0-9_./-]+|[A-Za-z0-9_./-]+ *(==?|!=) *[A-Za-z0-9_.-]*)? *)(,( *(!?[A-Za-z0-9_./-]+|[A-Za-z0-9_./-]+ *(==?|!=) *[A-Za-z0-9_.-]*)? *))*$";

/// One requirement of a label selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    Exists(String),
    Absent(String),
}

/// Parses `k=v,k==v,k!=v,k,!k`.
pub fn parse_selector(text: &str) -> Result<Vec<Requirement>, Problem> {
    let is_key = |k: &str| {
        !k.is_empty()
            && k.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_./-".contains(&b))
    };
    let is_value = |v: &str| {
        v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
    };
    let requirement = |part: &str| -> Option<Requirement> {
        if let Some(k) = part.strip_prefix('!').filter(|k| is_key(k)) {
            return Some(Requirement::Absent(k.to_string()));
        }
        let Some(at) = part.find(['=', '!']) else {
            return is_key(part).then(|| Requirement::Exists(part.to_string()));
        };
        let (key, rest) = part.split_at(at);
        let key = key.trim_end_matches(' ');
        let (equals, value) = if let Some(v) = rest.strip_prefix("!=") {
            (false, v)
        } else if let Some(v) = rest.strip_prefix("==").or_else(|| rest.strip_prefix('=')) {
            (true, v)
        } else {
            return None;
        };
        let value = value.trim_start_matches(' ');
        if !is_key(key) || !is_value(value) {
            return None;
        }
        let (key, value) = (key.to_string(), value.to_string());
        Some(if equals {
            Requirement::Equals(key, value)
        } else {
            Requirement::NotEquals(key, value)
        })
    };
    text.split(',')
        .map(|part| part.trim_matches(' '))
        .filter(|part| !part.is_empty())
        .map(|part| {
            requirement(part).ok_or_else(|| {
                Problem::bad_request(
                    "labelSelector",
                    format!(
                        "labelSelector {part:?} is not k=v, k==v, k!=v, k or !k (keys of A-Z a-z \
                         0-9 _ . / -, values of A-Z a-z 0-9 _ . -), separated by commas"
                    ),
                )
            })
        })
        .collect()
}

pub fn matches(selector: &[Requirement], metadata: &ObjectMeta) -> bool {
    let labels = &metadata.labels;
    selector.iter().all(|r| match r {
        Requirement::Equals(k, v) => labels.get(k) == Some(v),
        Requirement::NotEquals(k, v) => labels.get(k) != Some(v),
        Requirement::Exists(k) => labels.contains_key(k),
        Requirement::Absent(k) => !labels.contains_key(k),
    })
}

async fn list(
    state: &AdminState,
    kind: Kind,
    namespace: Option<&str>,
    params: &Params,
) -> Result<Response, Problem> {
    params.only(&["labelSelector", "cluster", "consistent"])?;
    let selector = parse_selector(params.get("labelSelector").unwrap_or_default())?;
    let cluster = cluster_param(params, kind)?;
    state.fresh(params.flag("consistent")?).await?;
    let (applied, items) = state.mesh.read(|s| {
        // Shared, not copied, under the state's lock; serialized after it is released.
        let items: Vec<Arc<StoredResource>> = s
            .list(kind, namespace, cluster)
            .into_iter()
            .filter(|r| matches(&selector, r.metadata()))
            .cloned()
            .collect();
        (s.applied(), items)
    });
    Ok(Json(ResourceList {
        api_version: NATIVE_API_VERSION,
        kind: "List",
        metadata: ListMeta {
            resource_version: applied.to_string(),
        },
        items,
    })
    .into_response())
}

/// Lists resources of a kind in every namespace.
#[utoipa::path(
    get,
    path = "/v1/{plural}",
    tag = "resources",
    params(
        ("plural" = String, Path, description = "The kind's plural"),
        ("labelSelector" = Option<String>, Query, description = "`k=v`, `k!=v`, `k`, `!k`, comma-separated; all must hold"),
        ("cluster" = Option<String>, Query, min_length = 1, description = "Cluster-local kinds: only this cluster's"),
        ("consistent" = Option<bool>, Query, description = "Confirm with the leader first that this node has every committed write"),
    ),
    responses(
        (status = 200, description = "The resources, ordered by namespace, cluster and name", body = ResourceList),
        (status = 400, description = "A bad query parameter (`field` names it)", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "Unknown kind", body = ProblemBody, content_type = "application/problem+json"),
    )
)]
pub async fn list_all(
    _: Caller<Viewer>,
    State(state): State<AdminState>,
    Segments(plural): Segments<String>,
    params: Params,
) -> Result<Response, Problem> {
    let kind = kind_of(&plural)?;
    list(&state, kind, None, &params).await
}

/// Lists resources of a namespaced or cluster-local kind in one namespace.
#[utoipa::path(
    get,
    path = "/v1/namespaces/{namespace}/{plural}",
    tag = "resources",
    params(
        ("namespace" = String, Path),
        ("plural" = String, Path, description = "The kind's plural"),
        ("labelSelector" = Option<String>, Query, description = "`k=v`, `k!=v`, `k`, `!k`, comma-separated; all must hold"),
        ("cluster" = Option<String>, Query, min_length = 1, description = "Cluster-local kinds: only this cluster's"),
        ("consistent" = Option<bool>, Query, description = "Confirm with the leader first that this node has every committed write"),
    ),
    responses(
        (status = 200, description = "The resources, ordered by cluster and name", body = ResourceList),
        (status = 400, description = "A bad query parameter (`field` names it)", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "Unknown kind, or a kind that is not namespaced", body = ProblemBody, content_type = "application/problem+json"),
    )
)]
pub async fn list_namespaced(
    _: Caller<Viewer>,
    State(state): State<AdminState>,
    Segments((namespace, plural)): Segments<(String, String)>,
    params: Params,
) -> Result<Response, Problem> {
    let kind = namespaced(&plural)?;
    list(&state, kind, Some(&namespace), &params).await
}

// ---- get, put, delete one ----

/// The key a URL names. A cluster-local resource without `?cluster=` must be unique by name.
fn locate(
    state: &AdminState,
    kind: Kind,
    namespace: &str,
    name: &str,
    cluster: Option<&str>,
) -> Result<ResourceKey, Problem> {
    let key = |cluster: &str| ResourceKey {
        kind,
        namespace: namespace.to_string(),
        cluster: cluster.to_string(),
        name: name.to_string(),
    };
    if kind.scope() != Scope::ClusterLocal {
        return Ok(key(""));
    }
    if let Some(cluster) = cluster {
        return Ok(key(cluster));
    }
    let clusters: Vec<String> = state.mesh.read(|s| {
        s.list(kind, Some(namespace), None)
            .into_iter()
            .filter(|r| r.metadata().name == name)
            .filter_map(|r| r.metadata().cluster.clone())
            .collect()
    });
    match clusters.as_slice() {
        [] => Err(absent(&key("?"))),
        [one] => Ok(key(one)),
        many => Err(Problem::bad_request(
            "cluster",
            format!(
                "{namespace}/{name} exists in clusters {}: pick one with ?cluster=",
                many.join(", ")
            ),
        )),
    }
}

fn absent(key: &ResourceKey) -> Problem {
    let what = format!("{} ", key.kind);
    let place = if key.namespace.is_empty() {
        key.name.clone()
    } else {
        format!("{}/{}", key.namespace, key.name)
    };
    let cluster = match key.cluster.as_str() {
        "" | "?" => String::new(),
        c => format!(" in cluster {c}"),
    };
    Problem::not_found(format!("{what}{place}{cluster} does not exist"))
}

async fn get_one(
    state: &AdminState,
    kind: Kind,
    namespace: &str,
    name: &str,
    params: &Params,
) -> Result<Response, Problem> {
    params.only(&["cluster", "consistent"])?;
    let cluster = cluster_param(params, kind)?;
    state.fresh(params.flag("consistent")?).await?;
    let key = locate(state, kind, namespace, name, cluster)?;
    let resource = state
        .mesh
        .read(|s| s.stored(&key).cloned())
        .ok_or_else(|| absent(&key))?;
    Ok(Json(resource).into_response())
}

/// Checks that a PUT's document is the resource its URL names, filling in what the URL says and
/// the document leaves out (namespace, cluster).
fn put_document(
    kind: Kind,
    namespace: &str,
    name: &str,
    cluster: Option<&str>,
    mut doc: Value,
) -> Result<Value, Problem> {
    let Some(object) = doc.as_object_mut() else {
        return Err(Problem::bad_request(
            "body",
            "the document is not an object",
        ));
    };
    let text = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_string);
    let api_version = text(object.get("apiVersion")).unwrap_or_default();
    let doc_kind = text(object.get("kind")).unwrap_or_default();
    if Kind::from_api(&api_version, &doc_kind) != Some(kind) {
        return Err(Problem::bad_request(
            "kind",
            format!(
                "the document is {doc_kind:?} of {api_version:?}, but the URL names {}",
                kind.info().plural
            ),
        ));
    }
    let metadata = object
        .entry("metadata")
        .or_insert_with(|| Value::Object(Default::default()));
    let Some(metadata) = metadata.as_object_mut() else {
        return Err(Problem::bad_request(
            "metadata",
            "metadata is not an object",
        ));
    };
    let mut same = |field: &str, expected: &str, fill: bool| -> Result<(), Problem> {
        match metadata.get(field) {
            None if fill => {
                metadata.insert(field.to_string(), Value::String(expected.to_string()));
                Ok(())
            }
            Some(Value::String(given)) if given == expected => Ok(()),
            given => Err(Problem::bad_request(
                &format!("metadata.{field}"),
                format!(
                    "metadata.{field} is {}, but the URL says {expected:?}",
                    given.map_or("absent".to_string(), Value::to_string)
                ),
            )),
        }
    };
    same("name", name, false)?;
    if kind.scope() != Scope::Mesh {
        same("namespace", namespace, true)?;
    }
    if let Some(cluster) = cluster {
        same("cluster", cluster, true)?;
    }
    Ok(doc)
}

/// The `#[utoipa::path]` of a PUT of one resource, around the handler given last. The
/// namespaced and the mesh-scoped PUT take the same body and answer alike but for what a 404
/// means, so they share this attribute rather than keep two copies that could drift apart.
macro_rules! put_one_path {
    (
        path = $path:tt,
        params($($params:tt)*),
        not_found = $not_found:tt,
        $($handler:tt)*
    ) => {
        #[utoipa::path(
            put,
            path = $path,
            tag = "resources",
            params($($params)*),
            request_body(
                description = "One document, YAML or JSON; `metadata.resourceVersion`, if given, must be the stored version (`0`: must not exist yet)",
                content(
                    (ResourceDoc = "application/json"),
                    (String = "application/yaml"),
                    (String = "application/x-yaml"),
                    (String = "text/yaml"),
                    (String = "text/plain"),
                )
            ),
            responses(
                (status = 200, description = "Replaced (or unchanged)", body = ResourceDoc,
                    headers(("warning" = String, description = "`299 - \"<field>: <message>\"` per accepted but unenforced field"))),
                (status = 201, description = "Created", body = ResourceDoc,
                    headers(("warning" = String, description = "`299 - \"<field>: <message>\"` per accepted but unenforced field"))),
                (status = 400, description = "The document is not the resource the URL names (`field` says which), or a bad parameter", body = ProblemBody, content_type = "application/problem+json"),
                (status = 404, description = $not_found, body = ProblemBody, content_type = "application/problem+json"),
                (status = 409, description = "`metadata.resourceVersion` is not the stored version", body = ProblemBody, content_type = "application/problem+json"),
                (status = 413, description = "Body over 4 MiB", body = ProblemBody, content_type = "application/problem+json"),
                (status = 415, description = "Unsupported content type", body = ProblemBody, content_type = "application/problem+json"),
                (status = 422, description = "The document does not validate", body = ProblemBody, content_type = "application/problem+json"),
            )
        )]
        $($handler)*
    };
}

async fn put_one(
    caller: Caller<Operator>,
    state: &AdminState,
    kind: Kind,
    namespace: &str,
    name: &str,
    params: &Params,
    body: Body,
) -> Result<Response, Problem> {
    params.only(&["cluster"])?;
    let cluster = cluster_param(params, kind)?;
    let (namespace_owned, name_owned) = (namespace.to_string(), name.to_string());
    let cluster = cluster.map(str::to_string);
    let mut checked = off_thread(move || {
        let mut docs = documents(&body)?;
        if docs.len() != 1 {
            return Err(Problem::bad_request(
                "body",
                format!("a PUT takes exactly one document, not {}", docs.len()),
            ));
        }
        let doc = docs
            .pop()
            .unwrap_or_else(|| Ok(Value::Null))
            .map_err(|e| Problem::invalid(vec![ProblemError::at(0, e)]))?;
        let doc = put_document(kind, &namespace_owned, &name_owned, cluster.as_deref(), doc)?;
        check_one(0, doc, Namespacing::default()).map_err(Problem::invalid)
    })
    .await?;
    against_stored(state, std::slice::from_mut(&mut checked))?;
    let Checked {
        resource,
        warnings,
        expect,
        ..
    } = checked;
    let command = Command::Apply {
        resources: vec![resource],
        expect: vec![expect],
        actor: caller.principal.actor(),
        at: token::now_rfc3339(),
    };
    let write = match state.writer()?.propose(&command).await?.1 {
        CommandResult::Applied { mut results } if results.len() == 1 => results.remove(0),
        other => return Err(unexpected(other)),
    };
    let (status, stored) = match write {
        WriteResult::Created { resource } => (StatusCode::CREATED, resource),
        WriteResult::Updated { resource } | WriteResult::Unchanged { resource } => {
            (StatusCode::OK, resource)
        }
        WriteResult::Conflict { current, .. } => {
            return Err(Problem::new(
                Slug::Conflict,
                conflict_message(expect.unwrap_or_default(), current),
            )
            .with_field("metadata.resourceVersion"));
        }
        other => return Err(Problem::internal(format!("a PUT answered {other:?}"))),
    };
    Ok((status, warning_headers(&warnings), Json(stored)).into_response())
}

/// Warnings as RFC 7234 `Warning: 299 - "<field>: <message>"` headers, as Kubernetes sends them.
fn warning_headers(warnings: &[Warning]) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for w in warnings {
        let text = format!("{}: {}", w.field, w.message).replace(['"', '\\'], "'");
        if let Ok(value) = HeaderValue::from_str(&format!("299 - \"{text}\"")) {
            headers.append("warning", value);
        }
    }
    headers
}

async fn delete_one(
    caller: Caller<Operator>,
    state: &AdminState,
    kind: Kind,
    namespace: &str,
    name: &str,
    params: &Params,
) -> Result<Response, Problem> {
    params.only(&["cluster", "resourceVersion"])?;
    let cluster = cluster_param(params, kind)?;
    let expect = params.number("resourceVersion")?;
    let key = locate(state, kind, namespace, name, cluster)?;
    let command = Command::Delete {
        key: key.clone(),
        expect,
        actor: caller.principal.actor(),
        at: token::now_rfc3339(),
    };
    match state.writer()?.propose(&command).await?.1 {
        CommandResult::Deleted {
            result: WriteResult::Deleted { resource },
        } => Ok(Json(resource).into_response()),
        CommandResult::Deleted {
            result: WriteResult::NotFound { .. },
        } => Err(absent(&key)),
        CommandResult::Deleted {
            result: WriteResult::Conflict { current, .. },
        } => Err(Problem::new(
            Slug::Conflict,
            conflict_message(expect.unwrap_or_default(), current),
        )
        .with_field("resourceVersion")),
        other => Err(unexpected(other)),
    }
}

/// Reads one namespaced or cluster-local resource.
#[utoipa::path(
    get,
    path = "/v1/namespaces/{namespace}/{plural}/{name}",
    tag = "resources",
    params(
        ("namespace" = String, Path),
        ("plural" = String, Path, description = "The kind's plural"),
        ("name" = String, Path),
        ("cluster" = Option<String>, Query, min_length = 1, description = "Cluster-local kinds: the cluster; without it the name must be unique across clusters"),
        ("consistent" = Option<bool>, Query, description = "Confirm with the leader first that this node has every committed write"),
    ),
    responses(
        (status = 200, description = "The resource as stored", body = ResourceDoc),
        (status = 400, description = "A bad query parameter, or a cluster-local name in several clusters without `cluster`", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "No such resource or kind", body = ProblemBody, content_type = "application/problem+json"),
    )
)]
pub async fn get_namespaced(
    _: Caller<Viewer>,
    State(state): State<AdminState>,
    Segments((namespace, plural, name)): Segments<(String, String, String)>,
    params: Params,
) -> Result<Response, Problem> {
    let kind = namespaced(&plural)?;
    get_one(&state, kind, &namespace, &name, &params).await
}

put_one_path! {
    path = "/v1/namespaces/{namespace}/{plural}/{name}",
    params(
        ("namespace" = String, Path),
        ("plural" = String, Path, description = "The kind's plural"),
        ("name" = String, Path),
        ("cluster" = Option<String>, Query, min_length = 1, description = "Cluster-local kinds: the cluster"),
    ),
    not_found = "Unknown kind",
    /// Creates or replaces one namespaced or cluster-local resource. The document's kind, name
    /// and namespace (and `metadata.cluster`, given `?cluster=`) must be the URL's; a missing
    /// namespace or cluster is taken from the URL. Warnings come back as `Warning` headers.
    pub async fn put_namespaced(
        caller: Caller<Operator>,
        State(state): State<AdminState>,
        Segments((namespace, plural, name)): Segments<(String, String, String)>,
        params: Params,
        body: Body,
    ) -> Result<Response, Problem> {
        let kind = namespaced(&plural)?;
        put_one(caller, &state, kind, &namespace, &name, &params, body).await
    }
}

/// Deletes one namespaced or cluster-local resource; returns it as it was.
#[utoipa::path(
    delete,
    path = "/v1/namespaces/{namespace}/{plural}/{name}",
    tag = "resources",
    params(
        ("namespace" = String, Path),
        ("plural" = String, Path, description = "The kind's plural"),
        ("name" = String, Path),
        ("cluster" = Option<String>, Query, min_length = 1, description = "Cluster-local kinds: the cluster; without it the name must be unique across clusters"),
        ("resourceVersion" = Option<u64>, Query, description = "Delete only if this is still the stored version"),
    ),
    responses(
        (status = 200, description = "Deleted; the resource as it was", body = ResourceDoc),
        (status = 400, description = "A bad query parameter, or a cluster-local name in several clusters without `cluster`", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "No such resource or kind", body = ProblemBody, content_type = "application/problem+json"),
        (status = 409, description = "`resourceVersion` is not the stored version", body = ProblemBody, content_type = "application/problem+json"),
    )
)]
pub async fn delete_namespaced(
    caller: Caller<Operator>,
    State(state): State<AdminState>,
    Segments((namespace, plural, name)): Segments<(String, String, String)>,
    params: Params,
) -> Result<Response, Problem> {
    let kind = namespaced(&plural)?;
    delete_one(caller, &state, kind, &namespace, &name, &params).await
}

/// Reads one mesh-scoped resource (a `Cluster`).
#[utoipa::path(
    get,
    path = "/v1/{plural}/{name}",
    tag = "resources",
    params(
        ("plural" = String, Path, description = "The plural of a mesh-scoped kind"),
        ("name" = String, Path),
        ("consistent" = Option<bool>, Query, description = "Confirm with the leader first that this node has every committed write"),
    ),
    responses(
        (status = 200, description = "The resource as stored", body = ResourceDoc),
        (status = 400, description = "A bad query parameter", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "No such resource, or a kind that is not mesh-scoped", body = ProblemBody, content_type = "application/problem+json"),
    )
)]
pub async fn get_mesh(
    _: Caller<Viewer>,
    State(state): State<AdminState>,
    Segments((plural, name)): Segments<(String, String)>,
    params: Params,
) -> Result<Response, Problem> {
    let kind = mesh_scoped(&plural)?;
    get_one(&state, kind, "", &name, &params).await
}

put_one_path! {
    path = "/v1/{plural}/{name}",
    params(
        ("plural" = String, Path, description = "The plural of a mesh-scoped kind"),
        ("name" = String, Path),
    ),
    not_found = "Unknown kind, or one that is not mesh-scoped",
    /// Creates or replaces one mesh-scoped resource (a `Cluster`).
    pub async fn put_mesh(
        caller: Caller<Operator>,
        State(state): State<AdminState>,
        Segments((plural, name)): Segments<(String, String)>,
        params: Params,
        body: Body,
    ) -> Result<Response, Problem> {
        let kind = mesh_scoped(&plural)?;
        put_one(caller, &state, kind, "", &name, &params, body).await
    }
}

/// Deletes one mesh-scoped resource (a `Cluster`); returns it as it was.
#[utoipa::path(
    delete,
    path = "/v1/{plural}/{name}",
    tag = "resources",
    params(
        ("plural" = String, Path, description = "The plural of a mesh-scoped kind"),
        ("name" = String, Path),
        ("resourceVersion" = Option<u64>, Query, description = "Delete only if this is still the stored version"),
    ),
    responses(
        (status = 200, description = "Deleted; the resource as it was", body = ResourceDoc),
        (status = 400, description = "A bad query parameter", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "No such resource, or a kind that is not mesh-scoped", body = ProblemBody, content_type = "application/problem+json"),
        (status = 409, description = "`resourceVersion` is not the stored version", body = ProblemBody, content_type = "application/problem+json"),
    )
)]
pub async fn delete_mesh(
    caller: Caller<Operator>,
    State(state): State<AdminState>,
    Segments((plural, name)): Segments<(String, String)>,
    params: Params,
) -> Result<Response, Problem> {
    let kind = mesh_scoped(&plural)?;
    delete_one(caller, &state, kind, "", &name, &params).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_parse_every_form() {
        use Requirement::*;
        let parsed = parse_selector("app=web, tier==front,env!=prod,canary,!legacy").unwrap();
        assert_eq!(
            parsed,
            vec![
                Equals("app".into(), "web".into()),
                Equals("tier".into(), "front".into()),
                NotEquals("env".into(), "prod".into()),
                Exists("canary".into()),
                Absent("legacy".into()),
            ]
        );
        assert!(parse_selector("").unwrap().is_empty());
        let e = parse_selector("a b=c").unwrap_err();
        assert_eq!(e.field.as_deref(), Some("labelSelector"));
    }
}
