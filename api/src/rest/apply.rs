//! `POST /v1/apply`: many documents, validated together and written in one Raft entry, all or
//! nothing.

use std::collections::HashMap;

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use federation::mesh::{Command, CommandResult, RefusalCode, WriteResult, token};
use federation::resource::{self, Namespacing, Resource, ResourceKey};

use super::auth::{Caller, Operator};
use super::input::{Body, Params, documents, off_thread};
use super::problem::{Problem, ProblemBody, ProblemError, Slug};
use super::wire::{ApplyAction, ApplyDocuments, ApplyResponse, ApplyResult, Warning};
use crate::AdminState;

/// A document that validated, with what the write must find (`expect`).
pub struct Checked {
    pub resource: Resource,
    pub key: ResourceKey,
    pub warnings: Vec<Warning>,
    /// `metadata.resourceVersion` as given: the version the writer last saw.
    pub expect: Option<u64>,
}

/// Validates every document, collecting every error (with its document's position) before
/// refusing, so one round trip shows them all. Documents without a namespace go where
/// `namespacing` says.
pub fn check_all(
    docs: Vec<Result<serde_json::Value, resource::FieldError>>,
    namespacing: Namespacing<'_>,
) -> Result<Vec<Checked>, Problem> {
    if docs.is_empty() {
        return Err(Problem::bad_request("body", "the body holds no documents"));
    }
    let mut errors = Vec::new();
    let mut checked = Vec::new();
    let mut seen: HashMap<ResourceKey, usize> = HashMap::new();
    for (i, doc) in docs.into_iter().enumerate() {
        let doc = match doc {
            Ok(doc) => doc,
            Err(e) => {
                errors.push(ProblemError::at(i, e));
                continue;
            }
        };
        match check_one(i, doc, namespacing) {
            Ok(one) => {
                if let Some(first) = seen.insert(one.key.clone(), i) {
                    errors.push(ProblemError {
                        document: Some(i),
                        field: "metadata.name".to_string(),
                        message: format!("{} is also document {first}", one.key),
                    });
                }
                checked.push(one);
            }
            Err(mut e) => errors.append(&mut e),
        }
    }
    if errors.is_empty() {
        Ok(checked)
    } else {
        Err(Problem::invalid(errors))
    }
}

/// Validates document `i`.
pub fn check_one(
    i: usize,
    doc: serde_json::Value,
    namespacing: Namespacing<'_>,
) -> Result<Checked, Vec<ProblemError>> {
    let checked = resource::validate_in(doc, namespacing).map_err(|errors| {
        errors
            .into_iter()
            .map(|e| ProblemError::at(i, e))
            .collect::<Vec<_>>()
    })?;
    let expect = match &checked.resource.metadata.resource_version {
        None => None,
        Some(v) => Some(v.parse::<u64>().map_err(|_| {
            vec![ProblemError {
                document: Some(i),
                field: "metadata.resourceVersion".to_string(),
                message: format!("must be a decimal Raft index, not {v:?}"),
            }]
        })?),
    };
    Ok(Checked {
        resource: checked.resource,
        key: checked.key,
        warnings: checked.warnings.into_iter().map(Warning::from).collect(),
        expect,
    })
}

/// Checks the documents against what is stored ([`resource::cross_check`]): adds a warning
/// for each subset no rule defines; 409 when a document routes a host another route table
/// already routes. Run before the write, against this gateway's state; the window before the
/// entry commits is the same as for any validation done here.
pub fn against_stored(state: &AdminState, checked: &mut [Checked]) -> Result<(), Problem> {
    let applied: Vec<Resource> = checked.iter().map(|c| c.resource.clone()).collect();
    let findings = state.mesh.read(|s| {
        let stored = s.stored_claims();
        let stored: Vec<&resource::Claims> = stored.iter().map(AsRef::as_ref).collect();
        resource::cross_check_claims(&applied, &stored)
    });
    if !findings.conflicts.is_empty() {
        let mut problem = Problem::new(
            Slug::Conflict,
            "a document routes a host that another route table already routes; nothing was written",
        );
        problem.errors = findings
            .conflicts
            .into_iter()
            .map(|(i, e)| ProblemError::at(i, e))
            .collect();
        return Err(problem);
    }
    for (i, warning) in findings.warnings {
        if let Some(c) = checked.get_mut(i) {
            c.warnings.push(Warning::from(warning));
        }
    }
    Ok(())
}

/// Where documents without `metadata.namespace` go: `?namespace=NS` is kubectl's `-n` (fills
/// in, and refuses a document naming another), `?defaultNamespace=NS` a CLI context's
/// namespace (fills in only); with neither, `default`.
fn namespacing(params: &Params) -> Result<Option<(String, bool)>, Problem> {
    let given = match (params.text("namespace")?, params.text("defaultNamespace")?) {
        (Some(_), Some(_)) => {
            return Err(Problem::bad_request(
                "defaultNamespace",
                "give namespace or defaultNamespace, not both",
            ));
        }
        (Some(ns), None) => ("namespace", ns, true),
        (None, Some(ns)) => ("defaultNamespace", ns, false),
        (None, None) => return Ok(None),
    };
    let (name, namespace, enforce) = given;
    federation::model::check_dns_label("namespace", namespace)
        .map_err(|e| Problem::bad_request(name, e.to_string()))?;
    Ok(Some((namespace.to_string(), enforce)))
}

/// Creates or replaces every resource in the body, or none: YAML documents separated by `---`,
/// a JSON object, or a JSON array of objects. Any invalid document → 422 listing every error;
/// any `metadata.resourceVersion` that no longer matches, or a host another route table
/// already routes → 409 with every document's outcome.
#[utoipa::path(
    post,
    path = "/v1/apply",
    tag = "resources",
    params(
        ("dryRun" = Option<bool>, Query, description = "Validate and predict each action; write nothing"),
        ("namespace" = Option<String>, Query, pattern = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$", description = "For documents without metadata.namespace (kubectl's -n); a document naming another namespace is refused (422)"),
        ("defaultNamespace" = Option<String>, Query, pattern = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$", description = "For documents without metadata.namespace, like a kubectl context's namespace; documents naming one keep it. Without either parameter: `default`"),
    ),
    request_body(
        description = "One or more resource documents (at most 4 MiB). JSON when it starts with `{` or `[`, YAML otherwise.",
        content(
            (String = "application/yaml"),
            (String = "application/x-yaml"),
            (String = "text/yaml"),
            (String = "text/plain"),
            (ApplyDocuments = "application/json"),
        )
    ),
    responses(
        (status = 200, description = "Every document applied (or, in a dry run, would apply)", body = ApplyResponse),
        (status = 400, description = "No documents, or a bad query parameter", body = ProblemBody, content_type = "application/problem+json"),
        (status = 409, description = "A resourceVersion precondition failed (`results` shows each document's outcome), or a document routes a host another VirtualService or Route in its namespace routes; nothing was written", body = ProblemBody, content_type = "application/problem+json"),
        (status = 413, description = "Body over 4 MiB", body = ProblemBody, content_type = "application/problem+json"),
        (status = 415, description = "Unsupported content type", body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "Invalid documents; `errors` lists every error with its document and field", body = ProblemBody, content_type = "application/problem+json"),
    )
)]
pub async fn apply(
    caller: Caller<Operator>,
    State(state): State<AdminState>,
    params: Params,
    body: Body,
) -> Result<Response, Problem> {
    params.only(&["dryRun", "namespace", "defaultNamespace"])?;
    let dry_run = params.flag("dryRun")?;
    let namespacing = namespacing(&params)?;
    let mut checked = off_thread(move || {
        let namespacing = match &namespacing {
            Some((namespace, enforce)) => Namespacing {
                namespace,
                enforce: *enforce,
            },
            None => Namespacing::default(),
        };
        check_all(documents(&body)?, namespacing)
    })
    .await?;
    against_stored(&state, &mut checked)?;
    let resources: Vec<Resource> = checked.iter().map(|c| c.resource.clone()).collect();
    let expect: Vec<Option<u64>> = checked.iter().map(|c| c.expect).collect();
    let writes = if dry_run {
        state.mesh.read(|s| s.preview(&resources, &expect))
    } else {
        let command = Command::Apply {
            resources,
            expect,
            actor: caller.principal.actor(),
            at: token::now_rfc3339(),
        };
        match state.writer()?.propose(&command).await?.1 {
            CommandResult::Applied { results } => results,
            other => return Err(unexpected(other)),
        }
    };
    let results = results(&checked, &writes)?;
    if results.iter().any(|r| r.action == ApplyAction::Conflict) {
        let mut problem = Problem::new(
            Slug::Conflict,
            "a metadata.resourceVersion no longer matches the stored version; nothing was written",
        );
        problem.errors = conflicts(&checked, &writes);
        problem.results = Some(results);
        return Err(problem);
    }
    Ok(Json(ApplyResponse { dry_run, results }).into_response())
}

/// Pairs each document with its write's outcome.
pub fn results(checked: &[Checked], writes: &[WriteResult]) -> Result<Vec<ApplyResult>, Problem> {
    if checked.len() != writes.len() {
        return Err(Problem::internal(format!(
            "{} documents but {} results",
            checked.len(),
            writes.len()
        )));
    }
    checked
        .iter()
        .zip(writes)
        .enumerate()
        .map(|(i, (c, w))| result(i, c, w))
        .collect()
}

fn result(document: usize, checked: &Checked, write: &WriteResult) -> Result<ApplyResult, Problem> {
    let (action, stored) = match write {
        WriteResult::Created { resource } => (ApplyAction::Created, Some(resource)),
        WriteResult::Updated { resource } => (ApplyAction::Updated, Some(resource)),
        WriteResult::Unchanged { resource } => (ApplyAction::Unchanged, Some(resource)),
        WriteResult::Conflict { .. } => (ApplyAction::Conflict, None),
        other => {
            return Err(Problem::internal(format!(
                "an apply answered {other:?} for document {document}"
            )));
        }
    };
    let given = &checked.resource;
    Ok(ApplyResult {
        document,
        kind: given.kind.clone(),
        api_version: given.api_version.clone(),
        name: given.metadata.name.clone(),
        namespace: given.metadata.namespace.clone(),
        cluster: given.metadata.cluster.clone(),
        action,
        resource_version: stored.and_then(|r| r.metadata.resource_version.clone()),
        warnings: checked.warnings.clone(),
    })
}

/// What each conflicting document expected and what is stored.
pub fn conflicts(checked: &[Checked], writes: &[WriteResult]) -> Vec<ProblemError> {
    checked
        .iter()
        .zip(writes)
        .enumerate()
        .filter_map(|(i, (c, w))| match w {
            WriteResult::Conflict { current, .. } => Some(ProblemError {
                document: Some(i),
                field: "metadata.resourceVersion".to_string(),
                message: conflict_message(c.expect.unwrap_or_default(), *current),
            }),
            _ => None,
        })
        .collect()
}

pub fn conflict_message(expected: u64, current: u64) -> String {
    match (expected, current) {
        (0, _) => format!("expected the resource not to exist, but it is at version {current}"),
        (_, 0) => format!("expected version {expected}, but the resource does not exist"),
        _ => format!("expected version {expected}, but the stored version is {current}"),
    }
}

/// A command refused as a whole by the state machine.
pub fn refusal(reason: String, code: RefusalCode) -> Problem {
    match code {
        RefusalCode::Unauthorized => Problem::new(Slug::Unauthorized, reason),
        RefusalCode::Conflict => Problem::new(Slug::Conflict, reason),
        RefusalCode::Invalid => Problem::new(Slug::Invalid, reason),
        RefusalCode::NotFound => Problem::not_found(reason),
    }
}

/// A result that does not belong to the command: a refusal, or a bug.
pub fn unexpected(result: CommandResult) -> Problem {
    match result {
        CommandResult::Refused { reason, code } => refusal(reason, code),
        other => Problem::internal(format!(
            "unexpected result from the state machine: {other:?}"
        )),
    }
}
