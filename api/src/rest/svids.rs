//! `POST /v1/svids` (admin): an X.509-SVID `spiffe://<td>/ns/<ns>/sa/<sa>` for a workload of
//! this gateway's cluster, signed by the cluster's CA over the public key of the workload's
//! CSR.
//!
//! ```text
//!  causeway svid issue ── {namespace, serviceAccount, csr, ttl} ──► issue_svid (admin token)
//!   key.pem never leaves          │ checks: DNS labels, ttl ≤ 24 h, PEM CSR
//!   the workload's machine        ▼
//!                           SvidSigner (this gateway's own CA; the key stays in its data dir)
//!                                 │ sign_csr: the CSR's key only, as the ID chosen here
//!  ◄── 201 {spiffeId, certificate, bundle, notAfter} ─┘
//! ```
//!
//! Nothing is written to the replicated log: the CA key is local to the cluster's gateways,
//! and the issuance is logged (token id as the actor) on the gateway that signed.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use federation::identity::{
    CertificateAuthority, IdentityError, SignedSvid, SpiffeId, TrustDomain,
};
use rustls::pki_types::CertificateSigningRequestDer;
use rustls::pki_types::pem::PemObject;

use super::auth::{Admin, Caller};
use super::input::{Body, Params};
use super::problem::{Problem, ProblemBody};
use super::tokens::{json_body, parse_ttl};
use super::wire::{SvidIssued, SvidRequest};
use crate::AdminState;

/// A workload SVID's life when the request names none, and the longest it may ask for: a
/// stolen SVID is good for a day at most, and workloads renew well before.
pub const SVID_TTL_MAX: Duration = Duration::from_secs(24 * 3600);

/// What signs workload SVIDs for `POST /v1/svids`: this gateway's own cluster CA, whose key
/// stays in the gateway's data directory (never in the replicated log, never in an answer).
/// A trait so the composition root decides which CA answers, and tests can bring their own.
pub trait SvidSigner: Send + Sync {
    /// The trust domain every ID it signs is in.
    fn trust_domain(&self) -> &TrustDomain;

    /// PEM of the root certificate(s) its SVIDs chain to.
    fn bundle_pem(&self) -> String;

    /// Certifies the public key of the DER PKCS#10 request `csr_der` as `id` for `ttl`; the
    /// rest of the request is ignored. [`IdentityError::InvalidCsr`] for a request that is
    /// unusable.
    fn sign_csr(
        &self,
        csr_der: &[u8],
        id: &SpiffeId,
        ttl: Duration,
    ) -> Result<SignedSvid, IdentityError>;
}

impl SvidSigner for CertificateAuthority {
    fn trust_domain(&self) -> &TrustDomain {
        CertificateAuthority::trust_domain(self)
    }

    fn bundle_pem(&self) -> String {
        CertificateAuthority::bundle_pem(self)
    }

    fn sign_csr(
        &self,
        csr_der: &[u8],
        id: &SpiffeId,
        ttl: Duration,
    ) -> Result<SignedSvid, IdentityError> {
        CertificateAuthority::sign_csr(self, csr_der, id, ttl)
    }
}

/// Issues an X.509-SVID `spiffe://<trust domain>/ns/<namespace>/sa/<serviceAccount>` for the
/// key of `csr`, signed by this gateway's cluster CA. Only the CSR's public key is used (its
/// subject, SANs and extensions are ignored), once its signature verifies; keys: ECDSA P-256
/// or P-384, Ed25519, RSA of 2048 to 8192 bits. Admin only.
#[utoipa::path(
    post,
    path = "/v1/svids",
    tag = "svids",
    request_body(content = SvidRequest, content_type = "application/json"),
    responses(
        (status = 201, description = "Issued", body = SvidIssued),
        (status = 400, description = "A bad field (`field` names it: namespace, serviceAccount, csr, ttl, body) or query parameter", body = ProblemBody, content_type = "application/problem+json"),
        (status = 413, description = "Body over 4 MiB", body = ProblemBody, content_type = "application/problem+json"),
        (status = 415, description = "Not JSON", body = ProblemBody, content_type = "application/problem+json"),
        (status = 503, description = "This gateway holds no certificate authority to sign with", body = ProblemBody, content_type = "application/problem+json"),
    )
)]
pub async fn issue_svid(
    caller: Caller<Admin>,
    State(state): State<AdminState>,
    params: Params,
    body: Body,
) -> Result<Response, Problem> {
    params.only(&[])?;
    let signer = state.svid_signer.clone().ok_or_else(|| {
        Problem::no_quorum(
            "this gateway has no certificate authority to sign workload SVIDs with; ask a \
             gateway of the workload's cluster",
        )
    })?;
    let request: SvidRequest = json_body(&body)?;
    let label = |field: &str, what: &'static str, value: &str| {
        federation::model::check_dns_label(what, value)
            .map_err(|e| Problem::bad_request(field, e.to_string()))
    };
    label("namespace", "namespace", &request.namespace)?;
    label(
        "serviceAccount",
        "service account",
        &request.service_account,
    )?;
    let ttl = match request.ttl.as_deref() {
        None => SVID_TTL_MAX,
        Some(text) => parse_ttl(text)?,
    };
    if ttl > SVID_TTL_MAX {
        return Err(Problem::bad_request(
            "ttl",
            format!(
                "a workload SVID lives at most {}",
                humantime::format_duration(SVID_TTL_MAX)
            ),
        ));
    }
    let csr =
        CertificateSigningRequestDer::from_pem_slice(request.csr.as_bytes()).map_err(|e| {
            Problem::bad_request(
                "csr",
                match e {
                    rustls::pki_types::pem::Error::NoItemsFound => {
                        "csr holds no PEM `-----BEGIN CERTIFICATE REQUEST-----` block".to_string()
                    }
                    e => format!("csr is not valid PEM: {e}"),
                },
            )
        })?;
    let id = SpiffeId::workload(
        signer.trust_domain(),
        &request.namespace,
        &request.service_account,
    )
    .map_err(|e| Problem::internal(format!("cannot name the workload: {e}")))?;
    let signed = signer.sign_csr(&csr, &id, ttl).map_err(|e| match e {
        IdentityError::InvalidCsr { .. } => Problem::bad_request("csr", e.to_string()),
        other => Problem::internal(format!("signing {id} failed: {other}")),
    })?;
    let not_after = humantime::format_rfc3339_seconds(signed.not_after()).to_string();
    tracing::info!(
        actor = %caller.principal.actor(),
        spiffe_id = %id,
        %not_after,
        "issued a workload SVID"
    );
    Ok((
        StatusCode::CREATED,
        Json(SvidIssued {
            spiffe_id: id.to_string(),
            certificate: signed.chain_pem(),
            bundle: signer.bundle_pem(),
            not_after,
        }),
    )
        .into_response())
}
