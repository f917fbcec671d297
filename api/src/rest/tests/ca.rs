//! `POST /v1/clusters/{name}/ca/rotate`: admins rotate the CA of the answering gateway's own
//! cluster; another cluster's name points at that cluster's gateways; the rotator's refusals
//! keep their meaning. A fake [`CaRotator`] stands in for the gateway's (tested end to end in
//! the binary's tests).

use std::sync::Mutex;

use futures::future::BoxFuture;

use super::*;
use crate::rest::wire::DNS_LABEL_PATTERN;

/// Answers every rotation with `answer` and remembers who asked.
struct FakeRotator {
    cluster: String,
    answer: Result<RotationReport, RotationRefusal>,
    asked: Mutex<Vec<String>>,
}

impl FakeRotator {
    fn new(cluster: &str, answer: Result<RotationReport, RotationRefusal>) -> Arc<Self> {
        Arc::new(Self {
            cluster: cluster.to_string(),
            answer,
            asked: Mutex::new(Vec::new()),
        })
    }

    fn asked(&self) -> Vec<String> {
        self.asked.lock().unwrap().clone()
    }
}

impl CaRotator for FakeRotator {
    fn cluster(&self) -> &str {
        &self.cluster
    }

    fn rotate(
        self: Arc<Self>,
        actor: String,
    ) -> BoxFuture<'static, Result<RotationReport, RotationRefusal>> {
        Box::pin(async move {
            self.asked.lock().unwrap().push(actor);
            self.answer.clone()
        })
    }

    fn export_for_join(&self) -> Result<crate::JoinCa, RotationRefusal> {
        Ok(crate::JoinCa {
            ca_certificate: "-----BEGIN CERTIFICATE-----\nCA\n-----END CERTIFICATE-----\n".into(),
            ca_key: "-----BEGIN PRIVATE KEY-----\nKEY\n-----END PRIVATE KEY-----\n".into(),
        })
    }
}

fn report() -> RotationReport {
    RotationReport {
        cluster: "east".into(),
        phase: "switched".into(),
        new_root: "-----BEGIN CERTIFICATE-----\nNEW\n-----END CERTIFICATE-----\n".into(),
        gateways_trusting: vec!["spiffe://west.mesh/gateway/gw-w".into()],
        switched_at: "2025-01-01T00:00:00Z".into(),
        old_root_retires_at: "2025-01-02T00:00:05Z".into(),
    }
}

const ROTATE: &str = "/v1/clusters/east/ca/rotate";

async fn rotate(api: &Api, path: &str, token: &str, body: Option<(&str, String)>) -> Answer {
    api.call(Method::POST, path, Some(token), body).await
}

fn detail(problem: &Value) -> &str {
    problem["detail"].as_str().unwrap()
}

#[tokio::test]
async fn admins_rotate_their_own_clusters_ca() {
    let rotator = FakeRotator::new("east", Ok(report()));
    let api = Api::start_rotating(rotator.clone()).await;

    let answer = rotate(&api, ROTATE, &api.admin, None).await;
    assert_eq!(answer.content_type(), "application/json");
    let body = answer.ok();
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(
        body,
        json!({
            "cluster": "east",
            "phase": "switched",
            "newRoot": "-----BEGIN CERTIFICATE-----\nNEW\n-----END CERTIFICATE-----\n",
            "gatewaysTrusting": ["spiffe://west.mesh/gateway/gw-w"],
            "switchedAt": "2025-01-01T00:00:00Z",
            "oldRootRetiresAt": "2025-01-02T00:00:05Z",
        })
    );
    // `{}` and `null` are the same as nothing.
    for body in ["{}", "null"] {
        rotate(&api, ROTATE, &api.admin, Some((JSON, body.into())))
            .await
            .ok();
    }
    // The actor is the token's id and description, as the audit log names writers.
    let (id, _) = token::parse(&api.admin).unwrap();
    assert_eq!(rotator.asked(), vec![format!("{id} (bootstrap)"); 3]);

    for role in ["operator", "viewer"] {
        let token = api.token(role).await;
        let problem = rotate(&api, ROTATE, &token, None)
            .await
            .problem(403, "forbidden");
        assert!(detail(&problem).contains("needs role admin"), "{problem}");
    }
    api.call(Method::POST, ROTATE, None, None)
        .await
        .problem(401, "unauthorized");
    assert_eq!(rotator.asked().len(), 3, "only the admin's calls rotate");
}

#[tokio::test]
async fn another_clusters_ca_rotates_on_that_clusters_gateways() {
    let rotator = FakeRotator::new("east", Ok(report()));
    let api = Api::start_rotating(rotator.clone()).await;

    let problem = rotate(&api, "/v1/clusters/nowhere/ca/rotate", &api.admin, None)
        .await
        .problem(404, "not-found");
    assert!(detail(&problem).contains("no cluster nowhere"), "{problem}");
    let problem = rotate(&api, "/v1/clusters/Not_A_Label/ca/rotate", &api.admin, None)
        .await
        .problem(400, "bad-request");
    assert_eq!(problem["field"], "name");

    // Cluster west joins with gateway gw-w, whose admin API is 127.0.0.2:8080.
    let join = api.token("join").await;
    let dir = tempfile::tempdir().unwrap();
    let west = federation::identity::TrustDomain::parse("west.mesh").unwrap();
    let ca = federation::identity::CertificateAuthority::load_or_create(dir.path(), &west).unwrap();
    let request = JoinRequest {
        cluster: ClusterName::new("west").unwrap(),
        trust_domain: "west.mesh".into(),
        trust_bundle: ca.bundle_pem(),
        name: "gw-w".into(),
        spiffe_id: "spiffe://west.mesh/gateway/gw-w".into(),
        tunnel: addr("127.0.0.2:4433"),
        raft: addr("127.0.0.2:7000"),
        admin: addr("127.0.0.2:8080"),
    };
    api.call(
        Method::POST,
        "/v1/join",
        Some(&join),
        Some((JSON, serde_json::to_string(&request).unwrap())),
    )
    .await
    .ok();

    let problem = rotate(&api, "/v1/clusters/west/ca/rotate", &api.admin, None)
        .await
        .problem(409, "conflict");
    let text = detail(&problem);
    for part in [
        "this gateway holds the CA of cluster east",
        "cluster west's CA rotates on one of west's gateways",
        "gw-w (admin 127.0.0.2:8080)",
    ] {
        assert!(text.contains(part), "{part:?} missing: {problem}");
    }
    assert!(
        !text.contains("127.0.0.1:8080"),
        "east's own gateway: {problem}"
    );
    assert!(rotator.asked().is_empty(), "nothing rotated");
}

#[tokio::test]
async fn rotation_refusals_keep_their_meaning() {
    for (refusal, status, slug) in [
        (
            RotationRefusal::Conflict("a rotation is under way".into()),
            409,
            "conflict",
        ),
        (
            RotationRefusal::Unavailable("gateway gw-w does not trust the next root yet".into()),
            503,
            "no-quorum",
        ),
        (
            RotationRefusal::Internal("cannot write ca-next".into()),
            500,
            "internal",
        ),
    ] {
        let reason = match &refusal {
            RotationRefusal::Conflict(r)
            | RotationRefusal::Unavailable(r)
            | RotationRefusal::Internal(r) => r.clone(),
        };
        let api = Api::start_rotating(FakeRotator::new("east", Err(refusal))).await;
        let problem = rotate(&api, ROTATE, &api.admin, None)
            .await
            .problem(status, slug);
        assert_eq!(detail(&problem), reason);
    }
}

#[tokio::test]
async fn without_a_rotator_rotation_is_unavailable() {
    let api = Api::start().await;
    let problem = rotate(&api, ROTATE, &api.admin, None)
        .await
        .problem(503, "no-quorum");
    assert!(
        detail(&problem).contains("no certificate authority to rotate"),
        "{problem}"
    );
}

#[tokio::test]
async fn rotation_takes_no_body_and_no_parameters() {
    let rotator = FakeRotator::new("east", Ok(report()));
    let api = Api::start_rotating(rotator.clone()).await;
    for body in [r#"{"force": true}"#, "[]", "0", "\"\"", "not json"] {
        let problem = rotate(&api, ROTATE, &api.admin, Some((JSON, body.into())))
            .await
            .problem(400, "bad-request");
        assert_eq!(problem["field"], "body", "{body}");
    }
    rotate(&api, ROTATE, &api.admin, Some((YAML, "force: true".into())))
        .await
        .problem(415, "unsupported-media-type");
    let problem = rotate(&api, &format!("{ROTATE}?force=true"), &api.admin, None)
        .await
        .problem(400, "bad-request");
    assert_eq!(problem["field"], "force");
    assert!(rotator.asked().is_empty(), "nothing rotated");
}

/// The document says what the server answers and takes: the name's grammar, an optional empty
/// body, the report, and each refusal.
#[test]
fn rotation_is_documented_as_served() {
    let doc = serde_json::to_value(openapi()).unwrap();
    let op = &doc["paths"]["/v1/clusters/{name}/ca/rotate"]["post"];
    assert_eq!(op["tags"], json!(["ca"]), "{op}");
    assert_eq!(op["operationId"], "rotate_ca");
    let name = &op["parameters"][0];
    assert_eq!(
        (&name["name"], &name["in"]),
        (&json!("name"), &json!("path"))
    );
    assert_eq!(name["schema"]["pattern"], DNS_LABEL_PATTERN);
    assert_ne!(op["requestBody"]["required"], true, "{op}");
    for status in [
        "200", "400", "401", "403", "404", "409", "413", "415", "500", "503",
    ] {
        assert!(op["responses"][status].is_object(), "{status}: {op}");
    }
    let schemas = &doc["components"]["schemas"];
    let properties: Vec<&str> = schemas["RotationReport"]["properties"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let serialized = serde_json::to_value(report()).unwrap();
    let fields: Vec<&str> = serialized
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(properties, fields);
    let body = &schemas["RotateRequest"];
    assert_eq!(body["additionalProperties"], false, "{body}");
    assert_eq!(body["maxProperties"], 0, "{body}");
}

/// The CLI's client reads what the server answers: the report field for field, and refusals
/// as problems.
#[tokio::test]
async fn the_client_reads_the_report_and_the_refusals() {
    let api = Api::start_rotating(FakeRotator::new("east", Ok(report()))).await;
    let client = crate::client::Client::new(&api.base, Some(api.admin.clone())).unwrap();
    let got = client.rotate_ca("east").await.unwrap();
    let expected = report();
    assert_eq!(
        serde_json::to_value(&got).unwrap(),
        serde_json::to_value(&expected).unwrap()
    );
    assert_eq!(got.gateways_trusting, expected.gateways_trusting);
    let err = client.rotate_ca("nowhere").await.unwrap_err();
    assert_eq!(err.problem().map(|p| p.status), Some(404), "{err}");
}
