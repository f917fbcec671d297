//! Joining an existing mesh (`causeway gateway --join https://HOST:PORT --join-ca CA.pem
//! --token T`).
//!
//! The join token crosses to the gateway joined through, so that gateway is verified first:
//! its admin certificate must chain to `--join-ca` (its cluster's CA) and name the host of the
//! URL. `http://` is still accepted for gateways run with `[admin] tls = false`, with a warning.
//!
//! ```text
//!  new gateway: own CA + SVID (local, keys never leave) ─► bind listeners
//!     ─► POST /v1/join {cluster, trust domain, CA certificate, name, SPIFFE ID, addresses}
//!        (any gateway: a follower forwards the write to the leader)
//!     ◄─ node id, members (raft addresses, SPIFFE IDs), clusters (trust bundles)
//!     ─► <data_dir>/member.json, so a restart does not join again
//!     ─► store starts with no voters: the leader adds it as a learner, sends a snapshot,
//!        and promotes it when the placement rule allows (see `membership`)
//! ```

use std::path::{Path, PathBuf};

use api::client::{Client, JoinResponse};
use federation::mesh::JoinRequest;
use serde::{Deserialize, Serialize};

use crate::config::JoinSettings;

/// Where a gateway that joined records its node id, in its data dir.
const MEMBER_FILE: &str = "member.json";

/// What a gateway remembers of having joined.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Membership {
    pub node_id: u64,
    /// The admin API it joined through (for the log only).
    pub joined_via: String,
}

/// Why joining failed.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error("cannot join through {url}: {source}")]
    Refused {
        url: String,
        #[source]
        source: api::client::ClientError,
    },
    #[error("{path}: {reason}")]
    MemberFile { path: PathBuf, reason: String },
}

/// The membership recorded by an earlier join, if this data dir has one.
pub fn load(data_dir: &Path) -> Result<Option<Membership>, JoinError> {
    let path = data_dir.join(MEMBER_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(JoinError::MemberFile {
                path,
                reason: e.to_string(),
            });
        }
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| JoinError::MemberFile {
            path,
            reason: format!("corrupt ({e}); remove the data dir to join again"),
        })
}

/// The admin API joined through, verified by `--join-ca`, or by the mesh's CAs learnt with
/// proof of the join token.
async fn verified_client(settings: &JoinSettings) -> Result<Client, JoinError> {
    let refused = |source| JoinError::Refused {
        url: settings.url.clone(),
        source,
    };
    let ca_pem = match (&settings.ca_pem, settings.url.starts_with("https://")) {
        (Some(pem), _) => Some(pem.clone()),
        // No CA given: learn the mesh's CAs from the server, which must prove it knows the
        // join token before they are believed (see `Client::discover_trust`).
        (None, true) => {
            let clusters = Client::discover_trust(&settings.url, &settings.token)
                .await
                .map_err(refused)?;
            tracing::info!(
                url = %settings.url,
                clusters = ?clusters.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(),
                "trusting the mesh's CAs: the gateway joined through proved it knows the join token"
            );
            let bundles: Vec<&str> = clusters.iter().map(|c| c.trust_bundle.as_str()).collect();
            Some(bundles.join("\n").into_bytes())
        }
        (None, false) => None,
    };
    let client = Client::with_ca(&settings.url, None, ca_pem.as_deref()).map_err(refused)?;
    if !client.is_https() {
        tracing::warn!(url = %settings.url, "joining over plain HTTP: the join token crosses the network in clear text");
    }
    Ok(client)
}

/// Before this gateway makes a CA of its own: if its cluster is already in the mesh, gets the
/// cluster's CA from the gateway joined through (which must be of the same cluster) over the
/// join's TLS channel, and writes it to `<data_dir>/ca` (key mode 0600). Returns whether it
/// did; false when the mesh has no such cluster yet (this gateway founds it with its own CA).
pub async fn fetch_cluster_ca(
    data_dir: &Path,
    settings: &JoinSettings,
    cluster: &str,
) -> Result<bool, JoinError> {
    let client = verified_client(settings).await?;
    let ca = client
        .join_ca(cluster, &settings.token)
        .await
        .map_err(|source| JoinError::Refused {
            url: settings.url.clone(),
            source,
        })?;
    let Some(ca) = ca else {
        return Ok(false);
    };
    let dir = data_dir.join("ca");
    let failed = |path: &Path, e: std::io::Error| JoinError::MemberFile {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    std::fs::create_dir_all(&dir).map_err(|e| failed(&dir, e))?;
    // The key first, created with its mode: it is never readable by others, not even briefly.
    let key = dir.join("ca-key.pem");
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&key)
            .map_err(|e| failed(&key, e))?;
        file.write_all(ca.ca_key.as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(|e| failed(&key, e))?;
    }
    let cert = dir.join("ca.pem");
    std::fs::write(&cert, ca.ca_certificate.as_bytes()).map_err(|e| failed(&cert, e))?;
    tracing::info!(%cluster, via = %settings.url, "got this cluster's CA from one of its gateways over the join's TLS channel");
    Ok(true)
}

/// Asks the mesh to admit this gateway, and records the node id it was given.
pub async fn join(
    data_dir: &Path,
    settings: &JoinSettings,
    request: &JoinRequest,
) -> Result<JoinResponse, JoinError> {
    let refused = |source| JoinError::Refused {
        url: settings.url.clone(),
        source,
    };
    let client = verified_client(settings).await?;
    let response = client
        .join(request, &settings.token)
        .await
        .map_err(refused)?;
    let membership = Membership {
        node_id: response.node_id,
        joined_via: settings.url.clone(),
    };
    let path = data_dir.join(MEMBER_FILE);
    let text = serde_json::to_string_pretty(&membership).map_err(|e| JoinError::MemberFile {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    std::fs::write(&path, text).map_err(|e| JoinError::MemberFile {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    tracing::info!(
        node_id = response.node_id,
        members = response.members.len(),
        clusters = response.clusters.len(),
        via = %settings.url,
        "joined the mesh"
    );
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn membership_round_trips_and_corruption_is_named() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load(dir.path()).unwrap(), None);
        let m = Membership {
            node_id: 4,
            joined_via: "http://127.0.0.1:15000".into(),
        };
        std::fs::write(
            dir.path().join(MEMBER_FILE),
            serde_json::to_string(&m).unwrap(),
        )
        .unwrap();
        assert_eq!(load(dir.path()).unwrap(), Some(m));
        std::fs::write(dir.path().join(MEMBER_FILE), "{not json").unwrap();
        let err = load(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("member.json") && err.contains("corrupt"),
            "{err}"
        );
    }
}
