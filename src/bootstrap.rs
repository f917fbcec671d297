//! Founding a mesh: the first leader records itself, its cluster and the first admin token.
//!
//! The token's secret never enters the log (only its SHA-256 does): it is written to
//! `<data_dir>/admin-token` with mode 0600 and printed once on standard output, never logged.

use std::path::{Path, PathBuf};
use std::time::Duration;

use federation::mesh::{self, Command, CommandResult, Member, Role, TokenRecord, token};

/// The file the first admin token is written to, in the data dir.
pub const ADMIN_TOKEN_FILE: &str = "admin-token";

/// How often to check whether this node leads a mesh nobody has founded yet.
const POLL: Duration = Duration::from_millis(100);

/// Everything the founding entry says about this gateway.
pub struct Founder {
    pub member: Member,
    pub trust_domain: String,
    pub trust_bundle_pem: String,
    pub data_dir: PathBuf,
}

/// Waits until this node leads; if the mesh has not been founded yet, founds it. Ends once the
/// mesh is founded (by this node or another), or when `stop` resolves.
pub async fn found_when_leader(
    node: store::Node,
    mesh: api::mesh::SharedMesh,
    founder: Founder,
    stop: impl std::future::Future<Output = ()>,
) {
    let mut stop = std::pin::pin!(stop);
    loop {
        if mesh.read(|s| s.is_bootstrapped()) {
            return;
        }
        let leads = matches!(node.status().await, Ok(s) if s.role == store::Role::Leader);
        if leads {
            match found(&node, &founder).await {
                Ok(true) | Err(FoundError::AlreadyFounded) => return,
                Ok(false) => {}
                Err(FoundError::Other(e)) => {
                    tracing::error!(error = %e, "cannot found the mesh");
                    return;
                }
            }
        }
        tokio::select! {
            () = &mut stop => return,
            () = tokio::time::sleep(POLL) => {}
        }
    }
}

enum FoundError {
    AlreadyFounded,
    Other(String),
}

/// Proposes the founding entry; `Ok(false)` when it should be tried again (leadership moved).
async fn found(node: &store::Node, founder: &Founder) -> Result<bool, FoundError> {
    let (secret_token, id, secret_sha256) = token::generate();
    let at = token::now_rfc3339();
    let command = Command::Bootstrap {
        member: founder.member.clone(),
        cluster: mesh::cluster_resource(
            &founder.member.cluster,
            &founder.trust_domain,
            &founder.trust_bundle_pem,
        ),
        token: TokenRecord {
            id,
            secret_sha256,
            role: Role::Admin,
            description: "bootstrap admin token".to_string(),
            created_at: at.clone(),
            expires_at: None,
            single_use: false,
            used: false,
        },
        at,
    };
    let bytes = serde_json::to_vec(&command).map_err(|e| FoundError::Other(e.to_string()))?;
    let (index, result) = match node.propose(bytes).await {
        Ok(applied) => applied,
        Err(e) => {
            tracing::debug!(error = %e, "founding entry not applied; retrying");
            return Ok(false);
        }
    };
    match serde_json::from_slice::<CommandResult>(&result) {
        Ok(CommandResult::Done) => {}
        Ok(CommandResult::Refused { .. }) => return Err(FoundError::AlreadyFounded),
        Ok(other) => return Err(FoundError::Other(format!("unexpected result {other:?}"))),
        Err(e) => return Err(FoundError::Other(format!("undecodable result: {e}"))),
    }
    let path = founder.data_dir.join(ADMIN_TOKEN_FILE);
    write_secret(&path, &secret_token).map_err(|e| {
        FoundError::Other(format!(
            "mesh founded, but the admin token could not be written to {}: {e}",
            path.display()
        ))
    })?;
    tracing::info!(index, token_file = %path.display(), "mesh founded; the first admin token is in the token file");
    // Printed once, on stdout (never through the log): the operator's copy.
    println!(
        "causeway: mesh founded. Admin token (shown once, also in {}):\n{secret_token}",
        path.display()
    );
    Ok(true)
}

/// Writes a secret to a new file readable only by its owner.
pub fn write_secret(path: &Path, secret: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    // `mode` applies only to a new file: tighten one that already existed too.
    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    file.write_all(secret.as_bytes())?;
    file.write_all(b"\n")?;
    file.sync_all()
}
