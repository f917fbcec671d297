//! Tokens and the audit log (admin only).

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use federation::mesh::{Command, CommandResult, Role, TokenRecord, token};

use super::apply::unexpected;
use super::auth::{Admin, Caller};
use super::input::{Body, Format, Params, Segments};
use super::problem::{Problem, ProblemBody};
use super::wire::{AuditList, TokenCreated, TokenInfo, TokenList, TokenRequest};
use crate::AdminState;

/// A join token's life when the request names none: long enough to start a gateway.
pub const JOIN_TTL_DEFAULT: Duration = Duration::from_secs(3600);
/// The longest a join token may live: it admits a whole gateway.
pub const JOIN_TTL_MAX: Duration = Duration::from_secs(24 * 3600);
/// Audit entries per page when `limit` is not given, and the most a page holds.
pub const AUDIT_LIMIT_DEFAULT: u64 = 100;
pub const AUDIT_LIMIT_MAX: u64 = 1000;

/// A JSON body, as the token and join routes take (YAML is for resources).
pub fn json_body<T: serde::de::DeserializeOwned>(body: &Body) -> Result<T, Problem> {
    if body.format == Format::Yaml {
        return Err(Problem::new(
            super::problem::Slug::UnsupportedMediaType,
            "this route takes application/json",
        )
        .with_field("Content-Type"));
    }
    serde_json::from_slice(&body.bytes).map_err(|e| {
        Problem::bad_request("body", format!("the body is not the expected JSON: {e}"))
    })
}

/// Proposes a token command, whose only success is `Done`. Creating and revoking a token
/// both write this way, so they share the one place that maps any other result to a problem.
pub(super) async fn propose_done(state: &AdminState, command: &Command) -> Result<(), Problem> {
    match state.writer()?.propose(command).await?.1 {
        CommandResult::Done => Ok(()),
        other => Err(unexpected(other)),
    }
}

/// A `ttl` as the OpenAPI document's [`TTL_PATTERN`](super::wire::TTL_PATTERN) says:
/// `<1 to 999999><s|m|h|d>`, e.g. `30m`, `720h`, `7d`. The CLI checks its `--ttl` with this too.
pub fn ttl_duration(text: &str) -> Option<Duration> {
    // ASCII first: the split below is by bytes.
    if !text.is_ascii() {
        return None;
    }
    let (n, unit) = text.split_at(text.len().checked_sub(1)?);
    let valid =
        (1..=6).contains(&n.len()) && !n.starts_with('0') && n.bytes().all(|b| b.is_ascii_digit());
    let n: u64 = n.parse().ok().filter(|_| valid)?;
    let seconds = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return None,
    };
    Some(Duration::from_secs(n * seconds))
}

pub(crate) fn parse_ttl(text: &str) -> Result<Duration, Problem> {
    ttl_duration(text).ok_or_else(|| {
        Problem::bad_request(
            "ttl",
            format!("ttl {text:?} is not 1 to 999999 s, m, h or d (e.g. 30m, 720h, 7d)"),
        )
    })
}

/// Creates a token. The token string is in this answer only; the mesh keeps its hash. Join
/// tokens are single-use and live 1 h unless `ttl` says otherwise (at most 24 h).
#[utoipa::path(
    post,
    path = "/v1/tokens",
    tag = "tokens",
    request_body(content = TokenRequest, content_type = "application/json"),
    responses(
        (status = 201, description = "Created", body = TokenCreated),
        (status = 400, description = "A bad field (`field` names it) or query parameter", body = ProblemBody, content_type = "application/problem+json"),
        (status = 409, description = "A token with the generated id exists already (retry)", body = ProblemBody, content_type = "application/problem+json"),
        (status = 413, description = "Body over 4 MiB", body = ProblemBody, content_type = "application/problem+json"),
        (status = 415, description = "Not JSON", body = ProblemBody, content_type = "application/problem+json"),
    )
)]
pub async fn create_token(
    caller: Caller<Admin>,
    State(state): State<AdminState>,
    params: Params,
    body: Body,
) -> Result<Response, Problem> {
    params.only(&[])?;
    let request: TokenRequest = json_body(&body)?;
    let ttl = request.ttl.as_deref().map(parse_ttl).transpose()?;
    let ttl = match (request.role, ttl) {
        (Role::Join, None) => Some(JOIN_TTL_DEFAULT),
        (Role::Join, Some(t)) if t > JOIN_TTL_MAX => {
            return Err(Problem::bad_request(
                "ttl",
                format!(
                    "a join token lives at most {}",
                    humantime::format_duration(JOIN_TTL_MAX)
                ),
            ));
        }
        (_, ttl) => ttl,
    };
    let now = token::now_rfc3339();
    let expires_at = ttl
        .map(|t| {
            token::rfc3339_after(&now, t.as_secs())
                .ok_or_else(|| Problem::bad_request("ttl", "ttl reaches beyond the year 9999"))
        })
        .transpose()?;
    let (secret_token, id, secret_sha256) = token::generate();
    let record = TokenRecord {
        id: id.clone(),
        secret_sha256,
        role: request.role,
        description: request.description.unwrap_or_default(),
        created_at: now.clone(),
        expires_at: expires_at.clone(),
        single_use: request.role == Role::Join,
        used: false,
    };
    let command = Command::CreateToken {
        token: record,
        actor: caller.principal.actor(),
        at: now,
    };
    propose_done(&state, &command).await?;
    Ok((
        StatusCode::CREATED,
        Json(TokenCreated {
            id,
            token: secret_token,
            role: request.role,
            expires_at,
        }),
    )
        .into_response())
}

/// Every token, without secrets or hashes.
#[utoipa::path(
    get,
    path = "/v1/tokens",
    tag = "tokens",
    responses(
        (status = 200, description = "Every token, by id", body = TokenList),
        (status = 400, description = "A query parameter was given (there are none)", body = ProblemBody, content_type = "application/problem+json"),
    )
)]
pub async fn list_tokens(
    _: Caller<Admin>,
    State(state): State<AdminState>,
    params: Params,
) -> Result<Json<TokenList>, Problem> {
    params.only(&[])?;
    let items = state.mesh.read(|s| {
        s.tokens()
            .into_iter()
            .map(|t| TokenInfo {
                id: t.id.clone(),
                role: t.role,
                description: t.description.clone(),
                created_at: t.created_at.clone(),
                expires_at: t.expires_at.clone(),
                single_use: t.single_use,
                used: t.used,
            })
            .collect()
    });
    Ok(Json(TokenList { items }))
}

/// Revokes a token: it stops working on every gateway once the revocation applies there. The
/// last admin token that never expires cannot be revoked, so the mesh always has an admin.
#[utoipa::path(
    delete,
    path = "/v1/tokens/{id}",
    tag = "tokens",
    params(("id" = String, Path, description = "The token's id (the part after `cw_`)")),
    responses(
        (status = 204, description = "Revoked"),
        (status = 400, description = "A query parameter was given (there are none)", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "No such token", body = ProblemBody, content_type = "application/problem+json"),
        (status = 409, description = "The last admin token that never expires; create another admin token first", body = ProblemBody, content_type = "application/problem+json"),
    )
)]
pub async fn revoke_token(
    caller: Caller<Admin>,
    State(state): State<AdminState>,
    Segments(id): Segments<String>,
    params: Params,
) -> Result<Response, Problem> {
    params.only(&[])?;
    if state.mesh.read(|s| s.token(&id).is_none()) {
        return Err(Problem::not_found(format!("no token {id:?}")).with_field("id"));
    }
    let command = Command::RevokeToken {
        id,
        actor: caller.principal.actor(),
        at: token::now_rfc3339(),
    };
    propose_done(&state, &command).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Accepted writes, oldest first (the last 10 000 are kept).
#[utoipa::path(
    get,
    path = "/v1/audit",
    tag = "audit",
    params(
        ("since" = Option<u64>, Query, description = "Only writes with a higher index (default 0)"),
        // minimum and maximum are AUDIT_LIMIT_MAX's range (a test holds them together).
        ("limit" = Option<u64>, Query, minimum = 1, maximum = 1000, description = "At most this many entries (default 100)"),
    ),
    responses(
        (status = 200, description = "Audit entries", body = AuditList),
        (status = 400, description = "A bad query parameter", body = ProblemBody, content_type = "application/problem+json"),
    )
)]
pub async fn audit(
    _: Caller<Admin>,
    State(state): State<AdminState>,
    params: Params,
) -> Result<Json<AuditList>, Problem> {
    params.only(&["since", "limit"])?;
    let since = params.number("since")?.unwrap_or(0);
    let limit = params.number("limit")?.unwrap_or(AUDIT_LIMIT_DEFAULT);
    if !(1..=AUDIT_LIMIT_MAX).contains(&limit) {
        return Err(Problem::bad_request(
            "limit",
            format!("limit must be 1 to {AUDIT_LIMIT_MAX}, not {limit}"),
        ));
    }
    let items = state.mesh.read(|s| {
        s.audit(since, limit as usize)
            .into_iter()
            .cloned()
            .collect()
    });
    Ok(Json(AuditList { items }))
}
