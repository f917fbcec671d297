//! The REST API end to end: a real one-node Raft group (MemStore, LocalTransport), the router
//! on a real TCP listener, a real HTTP client.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use federation::mesh::{
    Command, CommandResult, JoinRequest, Member, MeshState, Role, TokenRecord, token,
};
use federation::model::ClusterName;
use federation::resource::{NATIVE_API_VERSION, ObjectMeta, Resource};
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use prometheus_client::registry::Registry;
use serde_json::{Value, json};
use store::storage::MemStore;
use tokio::sync::watch;
use tokio::time::{Instant, sleep, timeout};

use super::*;
use crate::{AdminState, Readiness, SharedMesh};

mod ca;
mod schema_limits;
mod svids;
mod traffic_checks;

async fn eventually<T, F: Future<Output = Option<T>>>(
    what: &str,
    mut probe: impl FnMut() -> F,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        sleep(Duration::from_millis(20)).await;
    }
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

struct Api {
    base: String,
    client: Client<HttpConnector, Full<Bytes>>,
    admin: String,
    _node: store::Node,
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    fn content_type(&self) -> &str {
        self.headers
            .get("content-type")
            .map(|v| v.to_str().unwrap())
            .unwrap_or_default()
    }

    /// Asserts a problem+json answer with `status` and `slug`; returns its body.
    fn problem(&self, status: u16, slug: &str) -> Value {
        assert_eq!(
            self.status.as_u16(),
            status,
            "{}",
            String::from_utf8_lossy(&self.body)
        );
        assert_eq!(self.content_type(), PROBLEM_JSON);
        let body = self.json();
        assert_eq!(
            body["type"],
            format!("https://causeway.dev/problems/{slug}"),
            "{body}"
        );
        assert_eq!(body["status"], status);
        body
    }

    fn ok(&self) -> Value {
        assert!(
            self.status.is_success(),
            "{}: {}",
            self.status,
            String::from_utf8_lossy(&self.body)
        );
        self.json()
    }
}

const YAML: &str = "application/yaml";
const JSON: &str = "application/json";

impl Api {
    /// A bootstrapped one-node mesh whose admin token is `self.admin`.
    async fn start() -> Self {
        Self::start_with(MeshState::new()).await
    }

    async fn start_with(state: MeshState) -> Self {
        Self::start_full(state, |s| s).await
    }

    /// [`Api::start`] whose `POST /v1/svids` signs with `signer`.
    async fn start_signing(signer: Arc<dyn SvidSigner>) -> Self {
        Self::start_full(MeshState::new(), |s| s.with_svid_signer(signer)).await
    }

    /// [`Api::start`] whose `POST /v1/clusters/{name}/ca/rotate` rotates with `rotator`.
    async fn start_rotating(rotator: Arc<dyn CaRotator>) -> Self {
        Self::start_full(MeshState::new(), |s| s.with_ca_rotator(rotator)).await
    }

    /// A bootstrapped one-node mesh of cluster east (gateway gw-a) over `state`, its
    /// [`AdminState`] finished by `configure`.
    async fn start_full(
        state: MeshState,
        configure: impl FnOnce(AdminState) -> AdminState,
    ) -> Self {
        let (compiled, _) = watch::channel(Arc::default());
        let mesh = SharedMesh::with_state(state, compiled);
        let transport = store::LocalTransport::new();
        let mut config = store::NodeConfig::new(1, vec![1]);
        config.tick = Duration::from_millis(10);
        let (node, inbox) =
            store::start(config, MemStore::new(), mesh.clone(), transport.clone()).unwrap();
        transport.register(inbox);
        eventually("a leader", || async {
            (node.status().await.ok()?.role == store::Role::Leader).then_some(())
        })
        .await;

        let (admin, id, secret_sha256) = token::generate();
        let bootstrap = Command::Bootstrap {
            member: Member {
                node_id: 1,
                cluster: ClusterName::new("east").unwrap(),
                name: "gw-a".into(),
                spiffe_id: "spiffe://east.mesh/gateway/gw-a".into(),
                tunnel: addr("127.0.0.1:4433"),
                raft: addr("127.0.0.1:7000"),
                admin: addr("127.0.0.1:8080"),
            },
            cluster: Resource {
                api_version: NATIVE_API_VERSION.into(),
                kind: "Cluster".into(),
                metadata: ObjectMeta {
                    name: "east".into(),
                    ..ObjectMeta::default()
                },
                spec: json!({"trustDomain": "east.mesh", "trustBundle": "EAST-PEM"}),
                status: None,
            },
            token: TokenRecord {
                id,
                secret_sha256,
                role: Role::Admin,
                description: "bootstrap".into(),
                created_at: token::now_rfc3339(),
                expires_at: None,
                single_use: false,
                used: false,
            },
            at: token::now_rfc3339(),
        };
        let (_, result) = node
            .propose(serde_json::to_vec(&bootstrap).unwrap())
            .await
            .unwrap();
        let result: CommandResult = serde_json::from_slice(&result).unwrap();
        assert_eq!(result, CommandResult::Done);

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let local = listener.local_addr().unwrap();
        let info = NodeInfo {
            id: 1,
            name: "gw-a".into(),
            cluster: "east".into(),
            spiffe_id: "spiffe://east.mesh/gateway/gw-a".into(),
            admin: local,
        };
        let (_tunnels_tx, tunnels) = watch::channel(vec![TunnelView {
            cluster: "west".into(),
            address: "10.0.1.1:4433".into(),
            up: true,
        }]);
        let state = configure(
            AdminState::new(Arc::new(Registry::default()), Readiness::new(), info)
                .with_store(mesh, node.clone(), None)
                .with_tunnels(tunnels),
        );
        tokio::spawn(async move {
            axum::serve(listener, crate::router(state)).await.unwrap();
        });
        Self {
            base: format!("http://{local}"),
            client: Client::builder(TokioExecutor::new()).build_http(),
            admin,
            _node: node,
        }
    }

    fn request(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<(&str, String)>,
    ) -> Request<Full<Bytes>> {
        let mut builder = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base));
        if let Some(token) = token {
            builder = builder.header("authorization", format!("Bearer {token}"));
        }
        let body = match body {
            Some((content_type, text)) => {
                builder = builder.header("content-type", content_type);
                Bytes::from(text)
            }
            None => Bytes::new(),
        };
        builder.body(Full::new(body)).unwrap()
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<(&str, String)>,
    ) -> Answer {
        let request = self.request(method, path, token, body);
        let response = timeout(Duration::from_secs(15), self.client.request(request))
            .await
            .expect("answer in time")
            .expect("HTTP exchange");
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        Answer {
            status,
            headers,
            body,
        }
    }

    async fn get(&self, path: &str, token: &str) -> Answer {
        self.call(Method::GET, path, Some(token), None).await
    }

    async fn apply(&self, token: &str, content_type: &str, body: &str) -> Answer {
        self.call(
            Method::POST,
            "/v1/apply",
            Some(token),
            Some((content_type, body.to_string())),
        )
        .await
    }

    /// A new token of `role`, created by the admin.
    async fn token(&self, role: &str) -> String {
        let answer = self
            .call(
                Method::POST,
                "/v1/tokens",
                Some(&self.admin),
                Some((
                    JSON,
                    json!({"role": role, "description": format!("{role} for tests")}).to_string(),
                )),
            )
            .await;
        assert_eq!(
            answer.status,
            StatusCode::CREATED,
            "{}",
            String::from_utf8_lossy(&answer.body)
        );
        answer.json()["token"].as_str().unwrap().to_string()
    }
}

const TWO_DOCS: &str = r#"
apiVersion: causeway.dev/v1alpha1
kind: Service
metadata:
  name: api
  namespace: shop
  cluster: east
  labels:
    app: api
    tier: back
spec:
  ports:
    - port: 8080
      protocol: http
  endpoints: ["10.1.0.1:8080", "10.1.0.2:8080"]
---
apiVersion: causeway.dev/v1alpha1
kind: Route
metadata:
  name: api
  namespace: shop
  labels:
    app: api
spec:
  hosts: [api.shop]
  http:
    - destinations:
        - service: api
          weight: 100
      timeout: 2s
"#;

fn service(name: &str, labels: Value, version: Option<&str>) -> Value {
    let mut metadata =
        json!({"name": name, "namespace": "shop", "cluster": "east", "labels": labels});
    if let Some(v) = version {
        metadata["resourceVersion"] = json!(v);
    }
    json!({
        "apiVersion": "causeway.dev/v1alpha1",
        "kind": "Service",
        "metadata": metadata,
        "spec": {"ports": [{"port": 80, "protocol": "tcp"}]}
    })
}

#[tokio::test]
async fn tokens_are_required_and_roles_enforced() {
    let api = Api::start().await;
    let open = api.call(Method::GET, "/healthz", None, None).await;
    assert_eq!(open.status, StatusCode::OK);
    assert_eq!(
        api.call(Method::GET, "/readyz", None, None).await.status,
        StatusCode::OK
    );

    let missing = api.call(Method::GET, "/v1/status", None, None).await;
    let body = missing.problem(401, "unauthorized");
    assert!(
        body["detail"].as_str().unwrap().contains("Bearer"),
        "{body}"
    );
    assert!(missing.headers.contains_key("www-authenticate"));
    let (forged, _, _) = token::generate();
    api.get("/v1/status", &forged)
        .await
        .problem(401, "unauthorized");
    api.get("/v1/status", "not-a-token")
        .await
        .problem(401, "unauthorized");
    api.get("/metrics", &forged)
        .await
        .problem(401, "unauthorized");

    let viewer = api.token("viewer").await;
    assert_eq!(api.get("/metrics", &viewer).await.status, StatusCode::OK);
    let denied = api.apply(&viewer, YAML, TWO_DOCS).await;
    let body = denied.problem(403, "forbidden");
    assert!(
        body["detail"].as_str().unwrap().contains("operator"),
        "{body}"
    );
    api.get("/v1/tokens", &viewer)
        .await
        .problem(403, "forbidden");
    api.get("/v1/audit", &viewer)
        .await
        .problem(403, "forbidden");
    let operator = api.token("operator").await;
    api.get("/v1/audit", &operator)
        .await
        .problem(403, "forbidden");

    // A join token is good for joining only.
    let join = api.token("join").await;
    api.get("/v1/status", &join).await.problem(403, "forbidden");
    let joined = api
        .call(
            Method::POST,
            "/v1/join",
            Some(&operator),
            Some((JSON, "{}".into())),
        )
        .await;
    joined.problem(403, "forbidden");
}

#[tokio::test]
async fn apply_get_list_put_delete() {
    let api = Api::start().await;
    let operator = api.token("operator").await;

    let applied = api.apply(&operator, YAML, TWO_DOCS).await.ok();
    assert_eq!(applied["dryRun"], false);
    let results = applied["results"].as_array().unwrap();
    assert_eq!(results.len(), 2);
    assert_eq!(results[0]["document"], 0);
    assert_eq!(results[0]["kind"], "Service");
    assert_eq!(results[0]["cluster"], "east");
    assert_eq!(results[0]["action"], "created");
    assert_eq!(results[1]["kind"], "Route");
    assert_eq!(results[1]["action"], "created");
    let version = results[0]["resourceVersion"].as_str().unwrap().to_string();
    assert_eq!(results[1]["resourceVersion"], version.as_str(), "one entry");
    // Routes take effect: nothing to warn about.
    assert_eq!(results[1]["warnings"], json!([]), "{applied}");
    // Applying the same again changes nothing.
    let again = api.apply(&operator, YAML, TWO_DOCS).await.ok();
    assert_eq!(again["results"][0]["action"], "unchanged", "{again}");
    assert_eq!(again["results"][0]["resourceVersion"], version.as_str());

    // Get returns the spec as written; cluster-local names resolve without ?cluster= when unique.
    let got = api
        .get("/v1/namespaces/shop/services/api", &operator)
        .await
        .ok();
    assert_eq!(
        got["spec"],
        json!({"ports": [{"port": 8080, "protocol": "http"}], "endpoints": ["10.1.0.1:8080", "10.1.0.2:8080"]})
    );
    assert_eq!(got["metadata"]["resourceVersion"], version.as_str());
    let route = api
        .get("/v1/namespaces/shop/routes/api?consistent=true", &operator)
        .await
        .ok();
    assert_eq!(route["spec"]["http"][0]["timeout"], "2s");
    api.get("/v1/namespaces/shop/services/api?cluster=west", &operator)
        .await
        .problem(404, "not-found");

    // Lists, with label selectors.
    let more = format!(
        "{}\n---\n{}",
        service("web", json!({"app": "web", "tier": "front"}), None),
        service("db", json!({"app": "db"}), None)
    );
    api.apply(&operator, "text/plain", &more).await.ok();
    let names = |list: Value| -> Vec<String> {
        assert_eq!(list["kind"], "List");
        assert!(
            list["metadata"]["resourceVersion"]
                .as_str()
                .unwrap()
                .parse::<u64>()
                .is_ok()
        );
        list["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["metadata"]["name"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        names(api.get("/v1/services", &operator).await.ok()),
        ["api", "db", "web"]
    );
    assert_eq!(
        names(
            api.get("/v1/namespaces/shop/services?labelSelector=tier", &operator)
                .await
                .ok()
        ),
        ["api", "web"]
    );
    assert_eq!(
        names(
            api.get("/v1/services?labelSelector=app!%3Dapi,!tier", &operator)
                .await
                .ok()
        ),
        ["db"]
    );
    assert_eq!(
        names(
            api.get(
                "/v1/services?labelSelector=app%3Dweb&cluster=east",
                &operator
            )
            .await
            .ok()
        ),
        ["web"]
    );
    assert!(
        names(
            api.get("/v1/namespaces/other/services", &operator)
                .await
                .ok()
        )
        .is_empty()
    );
    let bad = api.get("/v1/services?labelSelector=a%20b", &operator).await;
    assert_eq!(bad.problem(400, "bad-request")["field"], "labelSelector");

    // PUT with a stale resourceVersion conflicts; with the current one it replaces.
    let web = api
        .get("/v1/namespaces/shop/services/web", &operator)
        .await
        .ok();
    let current = web["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    let stale = service("web", json!({"app": "web"}), Some("1"));
    let conflict = api
        .call(
            Method::PUT,
            "/v1/namespaces/shop/services/web?cluster=east",
            Some(&operator),
            Some((JSON, stale.to_string())),
        )
        .await;
    assert_eq!(
        conflict.problem(409, "conflict")["field"],
        "metadata.resourceVersion"
    );
    let fresh = service("web", json!({"app": "web", "tier": "edge"}), Some(&current));
    let replaced = api
        .call(
            Method::PUT,
            "/v1/namespaces/shop/services/web",
            Some(&operator),
            Some((JSON, fresh.to_string())),
        )
        .await;
    assert_eq!(replaced.status, StatusCode::OK);
    assert_eq!(replaced.json()["metadata"]["labels"]["tier"], "edge");
    assert_ne!(
        replaced.json()["metadata"]["resourceVersion"],
        current.as_str()
    );
    // A PUT whose document is not the URL's resource.
    let wrong = api
        .call(
            Method::PUT,
            "/v1/namespaces/shop/services/other",
            Some(&operator),
            Some((JSON, fresh.to_string())),
        )
        .await;
    assert_eq!(wrong.problem(400, "bad-request")["field"], "metadata.name");
    // Created by PUT: 201, namespace and cluster taken from the URL.
    let mut new = service("cache", json!({}), None);
    new["metadata"].as_object_mut().unwrap().remove("namespace");
    new["metadata"].as_object_mut().unwrap().remove("cluster");
    let created = api
        .call(
            Method::PUT,
            "/v1/namespaces/shop/services/cache?cluster=east",
            Some(&operator),
            Some((JSON, new.to_string())),
        )
        .await;
    assert_eq!(
        created.status,
        StatusCode::CREATED,
        "{}",
        String::from_utf8_lossy(&created.body)
    );
    assert_eq!(created.json()["metadata"]["cluster"], "east");

    // A stale DELETE precondition conflicts; then DELETE, then GET is 404.
    let stale_delete = api
        .call(
            Method::DELETE,
            "/v1/namespaces/shop/services/db?resourceVersion=1",
            Some(&operator),
            None,
        )
        .await;
    stale_delete.problem(409, "conflict");
    let deleted = api
        .call(
            Method::DELETE,
            "/v1/namespaces/shop/services/db",
            Some(&operator),
            None,
        )
        .await
        .ok();
    assert_eq!(deleted["metadata"]["name"], "db");
    api.get("/v1/namespaces/shop/services/db", &operator)
        .await
        .problem(404, "not-found");
    api.call(
        Method::DELETE,
        "/v1/namespaces/shop/services/db",
        Some(&operator),
        None,
    )
    .await
    .problem(404, "not-found");

    // The founding cluster is mesh-scoped.
    let east = api.get("/v1/clusters/east", &operator).await.ok();
    assert_eq!(east["spec"]["trustDomain"], "east.mesh");
    api.get("/v1/namespaces/shop/clusters/east", &operator)
        .await
        .problem(404, "not-found");
    api.get("/v1/routes/api", &operator)
        .await
        .problem(404, "not-found");
}

#[tokio::test]
async fn apply_conflicts_dry_runs_and_refuses_invalid_documents() {
    let api = Api::start().await;
    let operator = api.token("operator").await;

    // A dry run predicts and writes nothing.
    let before = api.get("/v1/audit", &api.admin).await.ok()["items"]
        .as_array()
        .unwrap()
        .len();
    let dry = api
        .call(
            Method::POST,
            "/v1/apply?dryRun=true",
            Some(&operator),
            Some((YAML, TWO_DOCS.into())),
        )
        .await
        .ok();
    assert_eq!(dry["dryRun"], true);
    assert_eq!(dry["results"][0]["action"], "created");
    assert_eq!(dry["results"][1]["action"], "created");
    api.get("/v1/namespaces/shop/services/api", &operator)
        .await
        .problem(404, "not-found");
    let after = api.get("/v1/audit", &api.admin).await.ok()["items"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(before, after, "a dry run writes nothing");

    // All or nothing: one stale document and nothing applies.
    let docs = json!([
        service("a", json!({}), None),
        service("b", json!({}), Some("99"))
    ]);
    let conflict = api.apply(&operator, JSON, &docs.to_string()).await;
    let body = conflict.problem(409, "conflict");
    assert_eq!(body["results"][1]["action"], "conflict", "{body}");
    assert_eq!(body["errors"][0]["document"], 1);
    api.get("/v1/namespaces/shop/services/a", &operator)
        .await
        .problem(404, "not-found");

    // Every error of every document, with its field path.
    let invalid = r#"
apiVersion: causeway.dev/v1alpha1
kind: Service
metadata: {name: ok, namespace: shop, cluster: east}
spec: {ports: [{port: 80, protocol: tcp}]}
---
apiVersion: causeway.dev/v1alpha1
kind: Service
metadata: {name: bad, namespace: shop, cluster: east}
spec:
  ports: [{port: 70000, protocol: udp}]
  color: blue
---
apiVersion: causeway.dev/v1alpha1
kind: Gizmo
metadata: {name: x}
spec: {}
"#;
    let refused = api.apply(&operator, YAML, invalid).await;
    let body = refused.problem(422, "invalid");
    let errors = body["errors"].as_array().unwrap();
    let at = |doc: u64, field: &str| {
        errors
            .iter()
            .any(|e| e["document"] == doc && e["field"] == field)
    };
    assert!(at(1, "spec.ports[0].port"), "{body}");
    assert!(at(1, "spec.ports[0].protocol"), "{body}");
    assert!(at(1, "spec.color"), "{body}");
    assert!(errors.iter().any(|e| e["document"] == 2), "{body}");
    assert!(!errors.iter().any(|e| e["document"] == 0), "{body}");
    api.get("/v1/namespaces/shop/services/ok", &operator)
        .await
        .problem(404, "not-found");

    // Framing problems.
    api.apply(&operator, "application/xml", "<a/>")
        .await
        .problem(415, "unsupported-media-type");
    api.apply(&operator, YAML, "")
        .await
        .problem(400, "bad-request");
    let huge = "#".repeat(MAX_BODY + 1);
    api.apply(&operator, YAML, &huge)
        .await
        .problem(413, "payload-too-large");
    let typo = api
        .call(
            Method::POST,
            "/v1/apply?dryrun=true",
            Some(&operator),
            Some((YAML, TWO_DOCS.into())),
        )
        .await;
    assert_eq!(typo.problem(400, "bad-request")["field"], "dryrun");
    let flag = api
        .call(
            Method::POST,
            "/v1/apply?dryRun=maybe",
            Some(&operator),
            Some((YAML, TWO_DOCS.into())),
        )
        .await;
    assert_eq!(flag.problem(400, "bad-request")["field"], "dryRun");

    // Unknown kinds and routes.
    let unknown = api.get("/v1/gizmos", &operator).await;
    let body = unknown.problem(404, "not-found");
    assert!(
        body["detail"].as_str().unwrap().contains("virtualservices"),
        "{body}"
    );
    api.get("/v2/nothing", &operator)
        .await
        .problem(404, "not-found");
    api.call(Method::PATCH, "/v1/apply", Some(&operator), None)
        .await
        .problem(405, "method-not-allowed");
}

#[tokio::test]
async fn tokens_audit_status_and_join() {
    let api = Api::start().await;
    let created = api
        .call(
            Method::POST,
            "/v1/tokens",
            Some(&api.admin),
            Some((
                JSON,
                json!({"role": "viewer", "description": "ci", "ttl": "2h"}).to_string(),
            )),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED);
    let created = created.json();
    let viewer = created["token"].as_str().unwrap().to_string();
    let id = created["id"].as_str().unwrap().to_string();
    assert!(created["expiresAt"].is_string());
    assert_eq!(api.get("/v1/status", &viewer).await.status, StatusCode::OK);

    let listed = api.get("/v1/tokens", &api.admin).await.ok();
    let mine = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == id.as_str())
        .cloned()
        .expect("listed");
    assert_eq!(mine["role"], "viewer");
    assert_eq!(mine["description"], "ci");
    assert!(
        !listed.to_string().contains("secret"),
        "no hashes: {listed}"
    );
    let too_long = api
        .call(
            Method::POST,
            "/v1/tokens",
            Some(&api.admin),
            Some((JSON, json!({"role": "join", "ttl": "48h"}).to_string())),
        )
        .await;
    assert_eq!(too_long.problem(400, "bad-request")["field"], "ttl");

    let revoked = api
        .call(
            Method::DELETE,
            &format!("/v1/tokens/{id}"),
            Some(&api.admin),
            None,
        )
        .await;
    assert_eq!(revoked.status, StatusCode::NO_CONTENT);
    api.get("/v1/status", &viewer)
        .await
        .problem(401, "unauthorized");
    api.call(
        Method::DELETE,
        "/v1/tokens/000000000000",
        Some(&api.admin),
        None,
    )
    .await
    .problem(404, "not-found");

    let audit = api
        .get("/v1/audit?since=0&limit=100", &api.admin)
        .await
        .ok();
    let actions: Vec<&str> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert!(actions.contains(&"bootstrap"), "{audit}");
    assert!(actions.contains(&"token.create"), "{audit}");
    assert!(actions.contains(&"token.revoke"), "{audit}");
    assert!(
        audit.to_string().contains("bootstrap"),
        "the actor names the admin token: {audit}"
    );
    let bad = api.get("/v1/audit?limit=0", &api.admin).await;
    assert_eq!(bad.problem(400, "bad-request")["field"], "limit");

    let status = api.get("/v1/status", &api.admin).await.ok();
    assert_eq!(status["node"]["name"], "gw-a");
    assert_eq!(status["role"], "leader");
    assert_eq!(status["leader"]["id"], 1);
    assert_eq!(status["leader"]["name"], "gw-a");
    assert_eq!(status["members"][0]["role"], "voter");
    assert_eq!(status["members"][0]["cluster"], "east");
    assert_eq!(status["tunnels"][0]["state"], "up");
    assert!(status["appliedIndex"].as_u64().unwrap() >= 1);

    // Join: once per token.
    let join = api.token("join").await;
    let dir = tempfile::tempdir().unwrap();
    let west = federation::identity::TrustDomain::parse("west.mesh").unwrap();
    let ca = federation::identity::CertificateAuthority::load_or_create(dir.path(), &west).unwrap();
    let mut request = JoinRequest {
        cluster: ClusterName::new("west").unwrap(),
        trust_domain: "west.mesh".into(),
        trust_bundle: "WEST-PEM".into(),
        name: "gw-w".into(),
        spiffe_id: "spiffe://west.mesh/gateway/gw-w".into(),
        tunnel: addr("127.0.0.2:4433"),
        raft: addr("127.0.0.2:7000"),
        admin: addr("127.0.0.2:8080"),
    };
    let invalid = api
        .call(
            Method::POST,
            "/v1/join",
            Some(&join),
            Some((
                JSON,
                serde_json::to_string(&JoinRequest {
                    spiffe_id: "spiffe://west.mesh/x".into(),
                    ..request.clone()
                })
                .unwrap(),
            )),
        )
        .await;
    let body = invalid.problem(422, "invalid");
    let fields: Vec<&str> = body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["trustBundle", "spiffeId"], "{body}");
    request.trust_bundle = ca.bundle_pem();
    let body = serde_json::to_string(&request).unwrap();

    // Discovery, before the join uses the token: no bearer token, the id only; the answer's
    // proof checks out with the token's secret.
    let (id, secret) = federation::mesh::token::parse(&join).unwrap();
    let found = api
        .call(
            Method::GET,
            &format!("/v1/join/discovery?token={id}"),
            None,
            None,
        )
        .await
        .ok();
    let document = found["document"].as_str().unwrap();
    let mac = found["mac"].as_str().unwrap();
    assert!(federation::mesh::token::verify_discovery_mac(
        secret,
        document.as_bytes(),
        mac
    ));
    let document: Value = serde_json::from_str(document).unwrap();
    assert_eq!(document["clusters"][0]["name"], "east");
    assert!(
        !document["clusters"][0]["trustBundle"]
            .as_str()
            .unwrap()
            .is_empty(),
        "{document}"
    );
    api.call(
        Method::GET,
        "/v1/join/discovery?token=000000000000",
        None,
        None,
    )
    .await
    .problem(404, "not-found");
    api.call(Method::GET, "/v1/join/discovery", None, None)
        .await
        .problem(400, "bad-request");
    // Only join tokens: an operator token's id gets nothing.
    let operator = api.token("operator").await;
    let (operator_id, _) = federation::mesh::token::parse(&operator).unwrap();
    api.call(
        Method::GET,
        &format!("/v1/join/discovery?token={operator_id}"),
        None,
        None,
    )
    .await
    .problem(404, "not-found");

    let joined = api
        .call(
            Method::POST,
            "/v1/join",
            Some(&join),
            Some((JSON, body.clone())),
        )
        .await
        .ok();
    assert_eq!(joined["nodeId"], 2);
    assert_eq!(joined["members"].as_array().unwrap().len(), 2);
    let clusters: Vec<&str> = joined["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(clusters, ["east", "west"]);
    assert_eq!(joined["clusters"][1]["trustDomain"], "west.mesh");
    api.call(Method::POST, "/v1/join", Some(&join), Some((JSON, body)))
        .await
        .problem(401, "unauthorized");
    // A used join token discovers nothing either.
    api.call(
        Method::GET,
        &format!("/v1/join/discovery?token={id}"),
        None,
        None,
    )
    .await
    .problem(404, "not-found");
}

/// Reads server-sent events from `body` until `want` holds for the text so far.
async fn read_events(
    body: &mut hyper::body::Incoming,
    text: &mut String,
    want: impl Fn(&str) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !want(text) {
        let frame = timeout(deadline - Instant::now(), body.frame())
            .await
            .unwrap_or_else(|_| panic!("no event in time; got {text:?}"))
            .expect("stream open")
            .expect("frame");
        if let Ok(data) = frame.into_data() {
            text.push_str(&String::from_utf8_lossy(&data));
        }
    }
}

#[tokio::test]
async fn watch_streams_later_writes_and_refuses_forgotten_ones() {
    let api = Api::start_with(MeshState::with_retention(3)).await;
    let operator = api.token("operator").await;
    let request = api.request(
        Method::GET,
        "/v1/watch?kind=services",
        Some(&operator),
        None,
    );
    let response = api.client.request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let mut body = response.into_body();

    // Written after connecting: the route is filtered out, the service comes through.
    api.apply(&operator, YAML, TWO_DOCS).await.ok();
    let mut text = String::new();
    read_events(&mut body, &mut text, |t| t.contains("\n\n")).await;
    assert!(text.contains("event: ADDED"), "{text}");
    assert!(text.contains("\"kind\":\"Service\""), "{text}");
    assert!(!text.contains("\"kind\":\"Route\""), "{text}");
    let id = text
        .lines()
        .find_map(|l| l.strip_prefix("id: "))
        .expect("an id")
        .to_string();
    let data = text
        .lines()
        .find_map(|l| l.strip_prefix("data: "))
        .expect("data");
    let event: Value = serde_json::from_str(data).unwrap();
    assert_eq!(event["index"].to_string(), id);
    assert_eq!(event["type"], "ADDED");
    assert_eq!(event["resource"]["metadata"]["name"], "api");

    api.call(
        Method::DELETE,
        "/v1/namespaces/shop/services/api",
        Some(&operator),
        None,
    )
    .await
    .ok();
    read_events(&mut body, &mut text, |t| t.contains("event: DELETED")).await;

    // With 3 events kept, more writes push index 0's successors out.
    for name in ["a", "b", "c", "d"] {
        api.apply(&operator, JSON, &service(name, json!({}), None).to_string())
            .await
            .ok();
    }
    let gone = api.get("/v1/watch?from=1", &operator).await;
    let body = gone.problem(410, "gone");
    assert!(body["oldest"].as_u64().unwrap() > 1, "{body}");
    api.get("/v1/watch?kind=gizmos", &operator)
        .await
        .problem(404, "not-found");
    let bad = api.get("/v1/watch?from=x", &operator).await;
    assert_eq!(bad.problem(400, "bad-request")["field"], "from");
}

/// A concrete URL for a documented path: parameters filled with values the route takes.
fn concrete(path: &str) -> String {
    path.replace("{namespace}", "shop")
        .replace("/v1/{plural}/{name}", "/v1/clusters/east")
        .replace("{plural}", "services")
        .replace("{name}", "api")
        .replace("{id}", "000000000000")
}

#[tokio::test]
async fn openapi_document_lists_exactly_what_is_served() {
    let api = Api::start().await;
    let viewer = api.token("viewer").await;
    let doc = api.get("/v1/openapi.json", &viewer).await.ok();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc["paths"].as_object().unwrap();
    let expected = [
        "/healthz",
        "/readyz",
        "/metrics",
        "/v1/openapi.json",
        "/v1/apply",
        "/v1/status",
        "/v1/watch",
        "/v1/tokens",
        "/v1/tokens/{id}",
        "/v1/tokens/recover",
        "/v1/audit",
        "/v1/svids",
        "/v1/clusters/{name}/ca/rotate",
        "/v1/join/ca",
        "/v1/join",
        "/v1/join/discovery",
        "/v1/{plural}",
        "/v1/{plural}/{name}",
        "/v1/namespaces/{namespace}/{plural}",
        "/v1/namespaces/{namespace}/{plural}/{name}",
    ];
    let mut documented: Vec<&str> = paths.keys().map(String::as_str).collect();
    documented.sort();
    let mut expected_sorted = expected.to_vec();
    expected_sorted.sort();
    assert_eq!(documented, expected_sorted);

    // Every documented operation is routed: without a token, an authenticated route says 401
    // (never the router's 404 or 405), an open one answers.
    for (path, item) in paths {
        for method in ["get", "put", "post", "delete"] {
            let Some(op) = item.get(method) else {
                let answer = api
                    .call(
                        method.to_uppercase().parse().unwrap(),
                        &concrete(path),
                        None,
                        None,
                    )
                    .await;
                assert!(
                    answer.status == StatusCode::METHOD_NOT_ALLOWED,
                    "{method} {path} is not documented but answered {}",
                    answer.status
                );
                continue;
            };
            let answer = api
                .call(
                    method.to_uppercase().parse().unwrap(),
                    &concrete(path),
                    None,
                    None,
                )
                .await;
            let open = op["security"] == json!([{}]);
            if open {
                // Answered by the handler (discovery without its parameter says 400), with a
                // documented status.
                assert!(
                    op["responses"][answer.status.as_str()].is_object()
                        && answer.status != StatusCode::UNAUTHORIZED,
                    "{method} {path}: {}",
                    answer.status
                );
            } else {
                assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{method} {path}");
                for status in ["401", "403", "500"] {
                    let response = &op["responses"][status];
                    assert!(
                        response["content"][PROBLEM_JSON].is_object(),
                        "{method} {path} documents {status}: {response}"
                    );
                }
            }
            // Every parameter the route reads is documented.
            for param in path
                .split('{')
                .skip(1)
                .map(|p| p.split('}').next().unwrap())
            {
                let documented = op["parameters"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|p| p["name"] == param && p["in"] == "path");
                assert!(documented, "{method} {path} documents {{{param}}}");
            }
        }
    }
    // The kinds each {plural} takes.
    let plural = &paths["/v1/{plural}/{name}"]["get"]["parameters"][0];
    assert_eq!(plural["name"], "plural");
    assert_eq!(plural["schema"]["enum"], json!(["clusters"]));
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    for name in [
        "Problem",
        "Resource",
        "ObjectMeta",
        "WatchEvent",
        "Member",
        "JoinRequest",
        "ApplyResponse",
    ] {
        assert!(schemas.contains_key(name), "schema {name}");
    }
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
}

/// Each federation type serializes with exactly the properties its schema mirror documents.
#[test]
fn schema_mirrors_match_what_is_serialized() {
    let doc = serde_json::to_value(openapi()).unwrap();
    let schemas = &doc["components"]["schemas"];
    let check = |name: &str, sample: Value| {
        let properties = schemas[name]["properties"]
            .as_object()
            .unwrap_or_else(|| panic!("schema {name}"));
        for key in sample.as_object().unwrap().keys() {
            assert!(
                properties.contains_key(key),
                "{name} does not document {key}"
            );
        }
        for required in schemas[name]["required"].as_array().into_iter().flatten() {
            let required = required.as_str().unwrap();
            assert!(
                sample.get(required).is_some(),
                "{name} requires {required}, not serialized"
            );
        }
    };
    let member = Member {
        node_id: 1,
        cluster: ClusterName::new("east").unwrap(),
        name: "gw".into(),
        spiffe_id: "spiffe://east.mesh/gateway/gw".into(),
        tunnel: addr("10.0.0.1:1"),
        raft: addr("10.0.0.1:2"),
        admin: addr("10.0.0.1:3"),
    };
    check("Member", serde_json::to_value(&member).unwrap());
    let join = JoinRequest {
        cluster: ClusterName::new("east").unwrap(),
        trust_domain: "east.mesh".into(),
        trust_bundle: "PEM".into(),
        name: "gw".into(),
        spiffe_id: "spiffe://east.mesh/gateway/gw".into(),
        tunnel: addr("10.0.0.1:1"),
        raft: addr("10.0.0.1:2"),
        admin: addr("10.0.0.1:3"),
    };
    check("JoinRequest", serde_json::to_value(&join).unwrap());
    let resource = Resource {
        api_version: NATIVE_API_VERSION.into(),
        kind: "Service".into(),
        metadata: ObjectMeta {
            name: "api".into(),
            namespace: Some("shop".into()),
            cluster: Some("east".into()),
            labels: [("a".to_string(), "b".to_string())].into(),
            annotations: [("c".to_string(), "d".to_string())].into(),
            resource_version: Some("3".into()),
            creation_timestamp: Some("2026-01-01T00:00:00Z".into()),
            update_timestamp: Some("2026-01-01T00:00:00Z".into()),
        },
        spec: json!({}),
        status: Some(json!({})),
    };
    let value = serde_json::to_value(&resource).unwrap();
    check("Resource", value.clone());
    check("ObjectMeta", value["metadata"].clone());
    let event = federation::mesh::WatchEvent {
        index: 3,
        kind: "ADDED".into(),
        resource: std::sync::Arc::new(resource.into()),
    };
    check("WatchEvent", serde_json::to_value(&event).unwrap());
    let entry = federation::mesh::AuditEntry {
        index: 3,
        at: "2026-01-01T00:00:00Z".into(),
        actor: "x".into(),
        action: "apply".into(),
        target: "y".into(),
    };
    check("AuditEntry", serde_json::to_value(&entry).unwrap());
    for role in [Role::Viewer, Role::Operator, Role::Admin, Role::Join] {
        let value = serde_json::to_value(role).unwrap();
        assert!(
            schemas["Role"]["enum"].as_array().unwrap().contains(&value),
            "Role documents {value}"
        );
    }
}

/// A follower's write travels to the leader through `Forward` and answers once applied here.
#[tokio::test]
async fn a_follower_forwards_writes_to_the_leader() {
    struct ToNode(store::Node);
    impl Forward for ToNode {
        fn forward(
            &self,
            _leader: u64,
            command: Vec<u8>,
        ) -> futures::future::BoxFuture<'_, Result<(u64, Vec<u8>), store::ProposeError>> {
            Box::pin(self.0.propose(command))
        }
    }

    let transport = store::LocalTransport::new();
    let mut nodes = Vec::new();
    for id in [1, 2] {
        let (compiled, _) = watch::channel(Arc::default());
        let mesh = SharedMesh::new(compiled);
        let mut config = store::NodeConfig::new(id, vec![1, 2]);
        config.tick = Duration::from_millis(10);
        let (node, inbox) =
            store::start(config, MemStore::new(), mesh.clone(), transport.clone()).unwrap();
        transport.register(inbox);
        nodes.push((node, mesh));
    }
    let leader = eventually("a leader", || async {
        nodes[0].0.status().await.ok()?.leader
    })
    .await;
    let (leader_node, _) = &nodes[(leader - 1) as usize];
    let (follower, follower_mesh) = &nodes[(2 - leader) as usize];
    eventually("the follower knows the leader", || async {
        (follower.status().await.ok()?.leader == Some(leader)).then_some(())
    })
    .await;

    let command = Command::CreateToken {
        token: TokenRecord {
            id: "abcdefabcdef".into(),
            secret_sha256: token::hash("x"),
            role: Role::Viewer,
            description: String::new(),
            created_at: token::now_rfc3339(),
            expires_at: None,
            single_use: false,
            used: false,
        },
        actor: "test".into(),
        at: token::now_rfc3339(),
    };
    let without = Writer::new(follower.clone(), None, follower_mesh.clone());
    let refused = without.propose(&command).await.unwrap_err();
    assert_eq!(refused.slug(), Some(Slug::NoQuorum));
    assert_eq!(refused.leader.as_ref().map(|l| l.id), Some(leader));

    let forward: Arc<dyn Forward> = Arc::new(ToNode(leader_node.clone()));
    let writer = Writer::new(follower.clone(), Some(forward), follower_mesh.clone());
    let (index, result) = writer.propose(&command).await.unwrap();
    assert_eq!(result, CommandResult::Done);
    assert!(*follower.watch_applied().borrow() >= index);
    assert!(
        follower_mesh.read(|s| s.token("abcdefabcdef").is_some()),
        "applied here before answering"
    );
}
