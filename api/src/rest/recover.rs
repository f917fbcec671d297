//! Break-glass recovery of an admin token, for a mesh whose admin tokens are all lost.
//!
//! Proof is local access to a gateway's data directory, as with Consul's ACL bootstrap reset:
//!
//! ```text
//!   causeway token recover --data-dir D            gateway whose data dir is D
//!     secret = random; D/recovery-request = sha256(secret), mode 0600
//!     POST /v1/tokens/recover {"secret"} ───────▶ reads D/recovery-request: private, fresh
//!                                                 (RECOVERY_MAX_AGE), hash matches; deletes it
//!                                                 proposes a new admin token, audited as
//!                                                 `recovery@<gateway>`
//!     prints the token ◀──────────────────────── 201 {id, token, role: admin}
//! ```
//!
//! No bearer token is needed: the secret in a file only root (or the gateway's user) can write
//! is the credential, and it works once.

use std::path::Path;
use std::time::{Duration, SystemTime};

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use federation::mesh::{Command, Role, TokenRecord, token};
use serde::Deserialize;
use utoipa::ToSchema;

use super::input::{Body, Params};
use super::problem::{Problem, ProblemBody, Slug};
use super::tokens::{json_body, propose_done};
use super::wire::TokenCreated;
use crate::AdminState;

/// The request file `causeway token recover` writes into the data directory.
pub const RECOVERY_FILE: &str = "recovery-request";

/// How long a request file stays good: long enough to run the command, short enough that a
/// forgotten file is no standing credential.
pub const RECOVERY_MAX_AGE: Duration = Duration::from_secs(600);

/// `POST /v1/tokens/recover`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RecoverRequest {
    /// The secret whose SHA-256 (hex) `causeway token recover` wrote to
    /// `<data_dir>/recovery-request`.
    #[schema(min_length = 1, max_length = 256)]
    pub secret: String,
}

/// Creates an admin token for whoever proves local access to this gateway's data directory
/// (`causeway token recover --data-dir D` on the gateway's machine). Single use; audited.
#[utoipa::path(
    post,
    path = "/v1/tokens/recover",
    tag = "tokens",
    request_body(content = RecoverRequest, content_type = "application/json"),
    security(()),
    responses(
        (status = 201, description = "A new admin token", body = TokenCreated),
        (status = 400, description = "A bad body or query parameter", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "No valid recovery request on this gateway", body = ProblemBody, content_type = "application/problem+json"),
        (status = 413, description = "Body over 4 MiB", body = ProblemBody, content_type = "application/problem+json"),
        (status = 415, description = "Not JSON", body = ProblemBody, content_type = "application/problem+json"),
        (status = 503, description = "No quorum to write the token", body = ProblemBody, content_type = "application/problem+json"),
    )
)]
pub async fn recover(
    State(state): State<AdminState>,
    params: Params,
    body: Body,
) -> Result<Response, Problem> {
    params.only(&[])?;
    let request: RecoverRequest = json_body(&body)?;
    let Some(dir) = state.data_dir.as_deref() else {
        return Err(forbidden("this gateway does not take recovery requests"));
    };
    check_request(dir, &request.secret, SystemTime::now())?;
    let now = token::now_rfc3339();
    let (secret_token, id, secret_sha256) = token::generate();
    let actor = format!("recovery@{}", state.info.name);
    let command = Command::CreateToken {
        token: TokenRecord {
            id: id.clone(),
            secret_sha256,
            role: Role::Admin,
            description: format!(
                "break-glass recovery through the data directory of {}",
                state.info.name
            ),
            created_at: now.clone(),
            expires_at: None,
            single_use: false,
            used: false,
        },
        actor: actor.clone(),
        at: now,
    };
    propose_done(&state, &command).await?;
    tracing::warn!(
        token = %id,
        %actor,
        "admin token created by break-glass recovery (local access to the data directory)"
    );
    Ok((
        StatusCode::CREATED,
        Json(TokenCreated {
            id,
            token: secret_token,
            role: Role::Admin,
            expires_at: None,
        }),
    )
        .into_response())
}

fn forbidden(detail: impl Into<String>) -> Problem {
    Problem::new(Slug::Forbidden, detail)
}

/// Checks `secret` against the request file in `dir` and consumes the file when it matches
/// (or when it is stale). A wrong secret leaves it, so guessing cannot spoil a real recovery.
fn check_request(dir: &Path, secret: &str, now: SystemTime) -> Result<(), Problem> {
    let path = dir.join(RECOVERY_FILE);
    let no_request = || {
        forbidden(format!(
            "no recovery request on this gateway: run `causeway token recover --data-dir {}` \
             on its machine",
            dir.display()
        ))
    };
    let metadata = std::fs::symlink_metadata(&path).map_err(|_| no_request())?;
    if !metadata.is_file() || private_mode(&metadata) == Some(false) {
        let _ = std::fs::remove_file(&path);
        return Err(forbidden(format!(
            "{} must be a regular file readable only by its owner (mode 0600); it was removed",
            path.display()
        )));
    }
    let age = metadata
        .modified()
        .ok()
        .and_then(|at| now.duration_since(at).ok())
        .unwrap_or_default();
    if age > RECOVERY_MAX_AGE {
        let _ = std::fs::remove_file(&path);
        return Err(forbidden(format!(
            "the recovery request is older than {}; it was removed, run the command again",
            humantime::format_duration(RECOVERY_MAX_AGE)
        )));
    }
    let stored = std::fs::read_to_string(&path).map_err(|_| no_request())?;
    if !token::hashes_equal(stored.trim(), &token::hash(secret)) {
        return Err(forbidden(
            "the secret does not match this gateway's recovery request",
        ));
    }
    // Consumed before the write: a second use fails even if the write below fails.
    std::fs::remove_file(&path)
        .map_err(|e| Problem::internal(format!("cannot remove {}: {e}", path.display())))?;
    Ok(())
}

#[cfg(unix)]
fn private_mode(metadata: &std::fs::Metadata) -> Option<bool> {
    use std::os::unix::fs::PermissionsExt;
    Some(metadata.permissions().mode() & 0o077 == 0)
}

#[cfg(not(unix))]
fn private_mode(_: &std::fs::Metadata) -> Option<bool> {
    None
}

/// Writes a recovery request for `secret` into `dir` (mode 0600), replacing any earlier one.
/// The CLI's half; here so both halves share the file's name and format.
pub fn write_request(dir: &Path, secret: &str) -> std::io::Result<std::path::PathBuf> {
    let path = dir.join(RECOVERY_FILE);
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&path)?;
    std::io::Write::write_all(&mut file, format!("{}\n", token::hash(secret)).as_bytes())?;
    file.sync_all()?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_is_good_once_and_only_with_its_secret() {
        let dir = tempfile::tempdir().unwrap();
        let now = SystemTime::now();
        let err = check_request(dir.path(), "s3cret", now).unwrap_err();
        assert!(err.detail.contains("no recovery request"), "{}", err.detail);

        write_request(dir.path(), "s3cret").unwrap();
        let err = check_request(dir.path(), "guess", now).unwrap_err();
        assert!(err.detail.contains("does not match"), "{}", err.detail);
        check_request(dir.path(), "s3cret", now).expect("the right secret");
        assert!(
            check_request(dir.path(), "s3cret", now).is_err(),
            "used twice"
        );
    }

    #[test]
    fn stale_or_public_requests_are_refused_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_request(dir.path(), "s3cret").unwrap();
        let later = SystemTime::now() + RECOVERY_MAX_AGE + Duration::from_secs(5);
        let err = check_request(dir.path(), "s3cret", later).unwrap_err();
        assert!(err.detail.contains("older than"), "{}", err.detail);
        assert!(!path.exists());

        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            write_request(dir.path(), "s3cret").unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
            let err = check_request(dir.path(), "s3cret", SystemTime::now()).unwrap_err();
            assert!(err.detail.contains("mode 0600"), "{}", err.detail);
            assert!(!path.exists());
        }
    }
}
