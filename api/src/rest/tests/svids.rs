//! `POST /v1/svids`: admins get a workload SVID for their CSR's key from the gateway's CA;
//! nobody else does, and every bad field is named.

use std::time::SystemTime;

use federation::identity::{
    CertificateAuthority, SpiffeId, TrustBundles, TrustDomain, TrustStore, WorkloadKeyRequest,
    fuzzing, peer_spiffe_id,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, UnixTime};

use super::*;
use crate::rest::wire::{DNS_LABEL_PATTERN, SVID_TTL_PATTERN};

struct Signing {
    api: Api,
    ca: Arc<CertificateAuthority>,
}

async fn signing() -> Signing {
    let dir = tempfile::tempdir().unwrap();
    let td = TrustDomain::parse("east.mesh").unwrap();
    // Loaded into memory: the directory may go once the CA exists.
    let ca = Arc::new(CertificateAuthority::load_or_create(dir.path(), &td).unwrap());
    let api = Api::start_signing(ca.clone()).await;
    Signing { api, ca }
}

fn csr() -> String {
    WorkloadKeyRequest::generate()
        .unwrap()
        .csr_pem()
        .to_string()
}

async fn issue(api: &Api, token: &str, body: Value) -> Answer {
    api.call(
        Method::POST,
        "/v1/svids",
        Some(token),
        Some((JSON, body.to_string())),
    )
    .await
}

/// The certificate of a 201, checked against `bundle` as a gateway checks a workload's.
fn verified_id(answer: &Value) -> SpiffeId {
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(answer["certificate"].as_str().unwrap().as_bytes())
            .collect::<Result<_, _>>()
            .unwrap();
    assert_eq!(chain.len(), 1, "the leaf alone");
    let mut bundles = TrustBundles::new();
    bundles
        .insert_pem(
            TrustDomain::parse("east.mesh").unwrap(),
            answer["bundle"].as_str().unwrap(),
        )
        .unwrap();
    fuzzing::verify_client_chain(&TrustStore::new(bundles), &chain, UnixTime::now()).unwrap();
    peer_spiffe_id(&chain).unwrap()
}

fn expires_in(answer: &Value) -> Duration {
    humantime::parse_rfc3339(answer["notAfter"].as_str().unwrap())
        .unwrap()
        .duration_since(SystemTime::now())
        .unwrap()
}

#[tokio::test]
async fn svids_are_issued_to_admins_for_the_workload_named() {
    let Signing { api, ca } = signing().await;
    let body = json!({"namespace": "shop", "serviceAccount": "web", "csr": csr()});
    let answer = issue(&api, &api.admin, body.clone()).await;
    assert_eq!(
        answer.status,
        StatusCode::CREATED,
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
    let issued = answer.json();
    assert_eq!(issued["spiffeId"], "spiffe://east.mesh/ns/shop/sa/web");
    assert_eq!(
        verified_id(&issued).as_str(),
        "spiffe://east.mesh/ns/shop/sa/web"
    );
    assert_eq!(issued["bundle"], ca.bundle_pem());
    // 24 h unless asked for less.
    let left = expires_in(&issued);
    assert!(
        left > Duration::from_secs(24 * 3600 - 60) && left <= SVID_TTL_MAX,
        "{left:?}"
    );
    let text = String::from_utf8_lossy(&answer.body);
    assert!(!text.contains("PRIVATE KEY"), "{text}");

    let short = issue(
        &api,
        &api.admin,
        json!({"namespace": "a-1", "serviceAccount": "b", "csr": csr(), "ttl": "30m"}),
    )
    .await
    .ok();
    assert_eq!(
        verified_id(&short).as_str(),
        "spiffe://east.mesh/ns/a-1/sa/b"
    );
    assert!(expires_in(&short) <= Duration::from_secs(1800));
    let null_ttl = issue(
        &api,
        &api.admin,
        json!({"namespace": "shop", "serviceAccount": "web", "csr": csr(), "ttl": null}),
    )
    .await;
    assert_eq!(null_ttl.status, StatusCode::CREATED);

    for role in ["operator", "viewer"] {
        let token = api.token(role).await;
        let answer = issue(&api, &token, body.clone()).await;
        let problem = answer.problem(403, "forbidden");
        assert!(
            problem["detail"]
                .as_str()
                .unwrap()
                .contains("needs role admin"),
            "{problem}"
        );
    }
    let answer = api
        .call(
            Method::POST,
            "/v1/svids",
            None,
            Some((JSON, body.to_string())),
        )
        .await;
    answer.problem(401, "unauthorized");
}

#[tokio::test]
async fn svid_requests_name_the_field_at_fault() {
    let Signing { api, .. } = signing().await;
    let good = || json!({"namespace": "shop", "serviceAccount": "web", "csr": csr()});
    let with = |field: &str, value: Value| {
        let mut body = good();
        body[field] = value;
        body
    };
    let a_certificate = {
        let dir = tempfile::tempdir().unwrap();
        let td = TrustDomain::parse("east.mesh").unwrap();
        CertificateAuthority::load_or_create(dir.path(), &td)
            .unwrap()
            .bundle_pem()
    };
    let cases = [
        (with("namespace", json!("Shop")), "namespace"),
        (with("namespace", json!("-shop")), "namespace"),
        (with("namespace", json!("a/b")), "namespace"),
        (with("namespace", json!("a".repeat(64))), "namespace"),
        (with("namespace", json!("")), "namespace"),
        (with("serviceAccount", json!("web_1")), "serviceAccount"),
        (with("serviceAccount", json!("web.1")), "serviceAccount"),
        (with("csr", json!("")), "csr"),
        (with("csr", json!("garbage")), "csr"),
        (with("csr", json!(a_certificate)), "csr"),
        (
            with(
                "csr",
                json!(
                    "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"
                ),
            ),
            "csr",
        ),
        (with("ttl", json!("48h")), "ttl"),
        (with("ttl", json!("25h")), "ttl"),
        (with("ttl", json!("86401s")), "ttl"),
        (with("ttl", json!("2d")), "ttl"),
        (with("ttl", json!("1h30m")), "ttl"),
        (with("ttl", json!("0s")), "ttl"),
        (with("extra", json!(1)), "body"),
        (
            json!({"namespace": "shop", "serviceAccount": "web"}),
            "body",
        ),
        (with("namespace", json!(7)), "body"),
    ];
    for (body, field) in cases {
        let answer = issue(&api, &api.admin, body.clone()).await;
        let problem = answer.problem(400, "bad-request");
        assert_eq!(problem["field"], field, "{body}: {problem}");
    }
    let answer = issue(&api, &api.admin, with("ttl", json!("48h"))).await;
    let problem = answer.problem(400, "bad-request");
    assert!(
        problem["detail"].as_str().unwrap().contains("at most 1day"),
        "{problem}"
    );
    let answer = issue(&api, &api.admin, with("csr", json!("garbage"))).await;
    let detail = answer.problem(400, "bad-request")["detail"].clone();
    assert!(
        detail.as_str().unwrap().contains("CERTIFICATE REQUEST"),
        "{detail}"
    );
    let answer = issue(&api, &api.admin, with("namespace", json!("Shop"))).await;
    let detail = answer.problem(400, "bad-request")["detail"].clone();
    assert!(detail.as_str().unwrap().contains("\"Shop\""), "{detail}");
    // The longest TTL is taken, in each unit.
    for ttl in ["86400s", "1440m", "24h", "1d"] {
        let answer = issue(&api, &api.admin, with("ttl", json!(ttl))).await;
        assert_eq!(answer.status, StatusCode::CREATED, "{ttl}");
    }
}

#[tokio::test]
async fn without_a_signer_svids_are_unavailable() {
    let api = Api::start().await;
    let answer = issue(
        &api,
        &api.admin,
        json!({"namespace": "shop", "serviceAccount": "web", "csr": csr()}),
    )
    .await;
    let problem = answer.problem(503, "no-quorum");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("no certificate authority"),
        "{problem}"
    );
}

/// The document states what the server checks: DNS labels and a TTL of at most 24 h.
#[test]
fn svid_request_schema_is_what_the_server_checks() {
    let doc = serde_json::to_value(openapi()).unwrap();
    let schema = &doc["components"]["schemas"]["SvidRequest"];
    assert_eq!(schema["additionalProperties"], false);
    assert_eq!(
        schema["required"],
        json!(["namespace", "serviceAccount", "csr"])
    );
    for field in ["namespace", "serviceAccount"] {
        assert_eq!(schema["properties"][field]["pattern"], DNS_LABEL_PATTERN);
    }
    assert_eq!(schema["properties"]["ttl"]["pattern"], SVID_TTL_PATTERN);
    let op = &doc["paths"]["/v1/svids"]["post"];
    assert!(op["responses"]["201"].is_object(), "{op}");
    assert!(op["responses"]["503"].is_object(), "{op}");

    let label = regex::Regex::new(DNS_LABEL_PATTERN).unwrap();
    let mut texts: Vec<String> = [
        "", "a", "0", "a-b", "-a", "a-", "A", "a_b", "a.b", "a b", "a\n", "\u{e9}", "web-1",
    ]
    .map(String::from)
    .into();
    texts.extend((60..66).map(|n| "a".repeat(n)));
    texts.extend((60..66).map(|n| format!("a{}a", "-".repeat(n))));
    for text in &texts {
        let checked = federation::model::check_dns_label("namespace", text).is_ok();
        assert_eq!(label.is_match(text), checked, "{text:?}");
    }
}
