//! The admin REST API through real gateways: Istio YAML applied and read back as written,
//! validation with field paths, roles, optimistic concurrency, a mesh formed by joins, services
//! registered over REST reachable through the tunnels, and writes refused fast without quorum.
//! Every response is checked against the OpenAPI document the gateway serves.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::rest::{Api, founder};
use support::{BIN, Net, Spec, backend, eventually, try_http, try_https};

const UP: Duration = Duration::from_secs(30);

fn examples() -> Vec<(String, String)> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/istio");
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .expect("examples/istio")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 10, "examples missing: {files:?}");
    files
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).expect("read example");
            (p.display().to_string(), text)
        })
        .collect()
}

/// The YAML documents of `text` as JSON values, as a user wrote them.
fn documents(text: &str) -> Vec<Value> {
    use serde::Deserialize;
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|doc| Value::deserialize(doc).expect("example parses"))
        .filter(|v| !v.is_null())
        .collect()
}

fn plural(doc: &Value) -> &'static str {
    let group = doc["apiVersion"]
        .as_str()
        .unwrap()
        .split('/')
        .next()
        .unwrap();
    match (group, doc["kind"].as_str().unwrap()) {
        ("networking.istio.io", "VirtualService") => "virtualservices",
        ("networking.istio.io", "DestinationRule") => "destinationrules",
        ("security.istio.io", "AuthorizationPolicy") => "authorizationpolicies.security.istio.io",
        ("security.istio.io", "PeerAuthentication") => "peerauthentications.security.istio.io",
        other => panic!("no plural for {other:?}"),
    }
}

fn path_of(doc: &Value) -> String {
    format!(
        "/v1/namespaces/{}/{}/{}",
        doc["metadata"]["namespace"].as_str().unwrap(),
        plural(doc),
        doc["metadata"]["name"].as_str().unwrap()
    )
}

fn create_token(admin: &Api, role: &str) -> String {
    let reply = admin.post_json(
        "/v1/tokens",
        &json!({"role": role, "description": format!("test {role}")}),
    );
    assert_eq!(reply.status, 201, "{}", reply.text);
    reply.json["token"].as_str().expect("token").to_string()
}

#[test]
fn every_example_applies_with_warnings_and_reads_back_as_written() {
    let net = Net::new(61);
    let (_gw, api) = founder(&net, "east", 1);

    for (file, text) in examples() {
        // A dry run predicts and changes nothing.
        let dry = api.apply_yaml(&text, true);
        assert_eq!(dry.status, 200, "{file}: {}", dry.text);
        for doc in documents(&text) {
            assert_eq!(api.get(&path_of(&doc)).status, 404, "{file}: dry run wrote");
        }

        let reply = api.apply_yaml(&text, false);
        assert_eq!(reply.status, 200, "{file}: {}", reply.text);
        let results = reply.json["results"].as_array().expect("results");
        let docs = documents(&text);
        assert_eq!(results.len(), docs.len(), "{file}: a result per document");
        for (result, doc) in results.iter().zip(&docs) {
            assert_eq!(result["action"], "created", "{file}: {result}");
            // Traffic and security policy take effect as written: no warnings but one.
            let warnings = result["warnings"].as_array().expect("warnings");
            let security = doc["apiVersion"]
                .as_str()
                .is_some_and(|v| v.starts_with("security.istio.io/"));
            if security {
                assert!(warnings.is_empty(), "{file}: {result}");
            } else {
                // The one warning traffic policy may get here: a subset named before the
                // DestinationRule that defines it was applied (Istio's IST0101).
                assert!(
                    warnings.iter().all(|w| w["message"]
                        .as_str()
                        .is_some_and(|m| m.contains("defined by no DestinationRule"))),
                    "{file}: {result}"
                );
            }
            for w in warnings {
                assert!(
                    w["field"].as_str().is_some_and(|f| f.starts_with("spec")),
                    "{file}: warning without a spec field: {w}"
                );
            }

            let got = api.get(&path_of(doc));
            assert_eq!(got.status, 200, "{file}: {}", got.text);
            assert_eq!(got.json["spec"], doc["spec"], "{file}: spec not as written");
            assert_eq!(got.json["apiVersion"], doc["apiVersion"]);
            assert_eq!(got.json["kind"], doc["kind"]);
            assert_eq!(got.json["metadata"]["name"], doc["metadata"]["name"]);
            let version = got.json["metadata"]["resourceVersion"]
                .as_str()
                .expect("resourceVersion");
            assert!(version.parse::<u64>().unwrap() > 0, "{version}");
            assert!(got.json["metadata"]["creationTimestamp"].is_string());
        }

        // Applying the same file again changes nothing.
        let again = api.apply_yaml(&text, false);
        assert_eq!(again.status, 200, "{}", again.text);
        for result in again.json["results"].as_array().unwrap() {
            assert_eq!(result["action"], "unchanged", "{file}: {result}");
        }
        // Several examples route host `api` in `production`, each its own way; one route
        // table per host, so each goes before the next comes.
        for doc in documents(&text)
            .iter()
            .filter(|d| d["kind"] == "VirtualService")
        {
            assert_eq!(api.delete(&path_of(doc)).status, 200, "{file}");
        }
    }
    let canary = examples()
        .into_iter()
        .find(|(file, _)| file.ends_with("canary-split-virtualservice.yaml"))
        .expect("the canary example")
        .1;
    assert_eq!(api.apply_yaml(&canary, false).status, 200);

    // Lists and label selectors.
    let list = api.get("/v1/namespaces/production/virtualservices");
    assert_eq!(list.status, 200, "{}", list.text);
    assert_eq!(list.json["kind"], "List");
    let names: Vec<&str> = list.json["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["metadata"]["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"api-traffic-split") && !names.contains(&"api-retry-policy"),
        "{names:?}"
    );
    assert!(
        !names.contains(&"api-fault-injection"),
        "staging leaked into production: {names:?}"
    );
    let labelled = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: labelled\n  namespace: production\n  labels:\n    team: payments\nspec:\n  hosts: [payments]\n  http: [{route: [{destination: {host: payments}}]}]\n";
    assert_eq!(api.apply_yaml(labelled, false).status, 200);
    let selected = api.get("/v1/virtualservices?labelSelector=team%3Dpayments");
    assert_eq!(selected.status, 200, "{}", selected.text);
    let items = selected.json["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{}", selected.text);
    assert_eq!(items[0]["metadata"]["name"], "labelled");
    // Linearizable reads answer the same.
    let consistent = api.get("/v1/namespaces/production/virtualservices?consistent=true");
    assert_eq!(consistent.status, 200);
    assert_eq!(
        consistent.json["items"].as_array().unwrap().len(),
        names.len() + 1
    );

    // The audit log names each write.
    let audit = api.get("/v1/audit");
    assert_eq!(audit.status, 200, "{}", audit.text);
    let targets: Vec<String> = audit.json["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["target"].as_str().unwrap_or_default().to_string())
        .collect();
    assert!(
        targets.iter().any(|t| t.contains("api-traffic-split")),
        "{targets:?}"
    );
}

#[test]
fn invalid_documents_are_refused_with_their_field_paths_and_change_nothing() {
    let net = Net::new(62);
    let (_gw, api) = founder(&net, "east", 1);
    let vs = |spec: &str| {
        format!(
            "apiVersion: networking.istio.io/v1beta1\nkind: VirtualService\nmetadata:\n  name: bad\n  namespace: production\nspec:\n{spec}"
        )
    };
    let cases = [
        (vs("  hosts: [api]\n  http:\n    - route:\n        - destination:\n            host: api\n          weight: 150\n"), "spec.http[0].route[0].weight"),
        (vs("  hosts: [api]\n  http:\n    - timeout: 5 seconds\n      route:\n        - destination:\n            host: api\n"), "spec.http[0].timeout"),
        (vs("  hosts: [api]\n  http:\n    - route:\n        - destination:\n            host: api\n            hots: typo\n"), "spec.http[0].route[0].destination.hots"),
        (vs("  hosts: api\n"), "spec.hosts"),
        ("apiVersion: networking.istio.io/v2\nkind: VirtualService\nmetadata:\n  name: bad\n  namespace: production\nspec: {}\n".to_string(), "apiVersion"),
        ("apiVersion: causeway.dev/v1alpha1\nkind: Service\nmetadata:\n  name: bad\n  namespace: demo\nspec:\n  ports: [{port: 80, protocol: http}]\n  endpoints: [\"10.0.0.1:80\"]\n".to_string(), "metadata.cluster"),
        ("apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata:\n  namespace: production\nspec:\n  mtls:\n    mode: STRICT\n".to_string(), "metadata.name"),
    ];
    for (doc, field) in &cases {
        let reply = api.apply_yaml(doc, false);
        assert_eq!(reply.status, 422, "{field}: {}", reply.text);
        assert!(
            reply.content_type.starts_with("application/problem+json"),
            "{}",
            reply.content_type
        );
        assert_eq!(reply.problem_type(), Some("invalid"), "{}", reply.text);
        let fields: Vec<&str> = reply.json["errors"]
            .as_array()
            .expect("errors")
            .iter()
            .filter_map(|e| e["field"].as_str())
            .collect();
        assert!(fields.contains(field), "expected {field} in {fields:?}");
    }
    // Every problem of one document at once, and a good document beside a bad one is not
    // applied either.
    let many = format!(
        "{}---\n{}",
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: fine\n  namespace: production\nspec:\n  hosts: [api]\n",
        vs(
            "  hosts: [api]\n  bogus: 1\n  http:\n    - retries:\n        attempts: -1\n      route:\n        - destination:\n            host: api\n          weight: 101\n"
        )
    );
    let reply = api.apply_yaml(&many, false);
    assert_eq!(reply.status, 422, "{}", reply.text);
    let errors = reply.json["errors"].as_array().unwrap();
    assert!(errors.len() >= 3, "every error at once: {errors:?}");
    assert!(errors.iter().all(|e| e["document"] == 1), "{errors:?}");
    // Nothing changed.
    let list = api.get("/v1/virtualservices");
    assert_eq!(list.status, 200);
    assert_eq!(
        list.json["items"].as_array().unwrap().len(),
        0,
        "{}",
        list.text
    );
    // Not YAML at all.
    let garbage = api.call(
        "POST",
        "/v1/apply",
        Some(("application/yaml", b"a: [unclosed\n")),
    );
    assert!(matches!(garbage.status, 400 | 422), "{}", garbage.text);
}

#[test]
fn roles_limit_what_each_token_may_do() {
    let net = Net::new(63);
    let (gw, admin) = founder(&net, "east", 1);
    let viewer = admin.with_token(Some(&create_token(&admin, "viewer")));
    let operator = admin.with_token(Some(&create_token(&admin, "operator")));
    let anonymous = admin.with_token(None);
    let forged = admin.with_token(Some(
        "cw_000000000000_notarealsecretnotarealsecretnotarealsecre",
    ));
    let doc = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: r\n  namespace: production\nspec:\n  hosts: [api]\n";

    // Health needs nothing; everything else a token.
    let (status, _, body) = gw.admin_get("/healthz");
    assert_eq!(status, 200, "/healthz: {body}");
    // Readiness follows the store a moment later (it is polled).
    eventually("/readyz without a token", UP, || {
        (gw.admin_get("/readyz").0 == 200).then_some(())
    });
    for api in [&anonymous, &forged] {
        for path in ["/v1/status", "/v1/virtualservices", "/metrics"] {
            let reply = api.call("GET", path, None);
            assert_eq!(reply.status, 401, "{path}: {}", reply.text);
            assert_eq!(reply.problem_type(), Some("unauthorized"));
        }
    }
    // Viewers read, and nothing else.
    assert_eq!(viewer.get("/v1/status").status, 200);
    assert_eq!(viewer.get("/v1/virtualservices").status, 200);
    assert_eq!(viewer.raw("GET", "/metrics", None).status, 200);
    let refused = viewer.apply_yaml(doc, false);
    assert_eq!(refused.status, 403, "{}", refused.text);
    assert_eq!(refused.problem_type(), Some("forbidden"));
    assert_eq!(viewer.get("/v1/audit").status, 403);
    // Operators write resources, but not tokens or the audit log.
    assert_eq!(operator.apply_yaml(doc, false).status, 200);
    assert_eq!(
        operator
            .delete("/v1/namespaces/production/virtualservices/r")
            .status,
        200
    );
    assert_eq!(
        operator
            .post_json("/v1/tokens", &json!({"role": "admin"}))
            .status,
        403
    );
    assert_eq!(operator.get("/v1/audit").status, 403);
    // A join token joins and does nothing else.
    let join = admin.with_token(Some(&create_token(&admin, "join")));
    assert_eq!(join.get("/v1/status").status, 403);
    assert_eq!(join.apply_yaml(doc, false).status, 403);
    // Revoked tokens stop working.
    let listed = admin.get("/v1/tokens");
    assert_eq!(listed.status, 200);
    assert!(
        !listed.text.contains(viewer.token.as_deref().unwrap()),
        "secrets listed"
    );
    let viewer_id = viewer
        .token
        .as_deref()
        .unwrap()
        .split('_')
        .nth(1)
        .unwrap()
        .to_string();
    assert_eq!(admin.delete(&format!("/v1/tokens/{viewer_id}")).status, 204);
    assert_eq!(viewer.get("/v1/status").status, 401);
    // Who did what is on record.
    let audit = admin.get("/v1/audit");
    assert!(audit.text.contains("test operator"), "{}", audit.text);
}

#[test]
fn stale_resource_versions_conflict() {
    let net = Net::new(64);
    let (_gw, api) = founder(&net, "east", 1);
    let path = "/v1/namespaces/production/destinationrules/api";
    let doc = json!({
        "apiVersion": "networking.istio.io/v1",
        "kind": "DestinationRule",
        "metadata": {"name": "api", "namespace": "production"},
        "spec": {"host": "api", "subsets": [{"name": "v1", "labels": {"version": "v1"}}]},
    });
    let created = api.put_json(path, &doc);
    assert!(matches!(created.status, 200 | 201), "{}", created.text);
    let v1 = api.get(path).json["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();

    let mut update = doc.clone();
    update["metadata"]["resourceVersion"] = json!(v1);
    update["spec"]["host"] = json!("api.production.svc.cluster.local");
    let updated = api.put_json(path, &update);
    assert_eq!(updated.status, 200, "{}", updated.text);
    let v2 = api.get(path).json["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(v1, v2);

    // Someone who read v1 and writes now loses, and changes nothing.
    let mut stale = doc.clone();
    stale["metadata"]["resourceVersion"] = json!(v1);
    stale["spec"]["host"] = json!("lost-update");
    let conflict = api.put_json(path, &stale);
    assert_eq!(conflict.status, 409, "{}", conflict.text);
    assert_eq!(conflict.problem_type(), Some("conflict"));
    assert_eq!(
        api.get(path).json["spec"]["host"],
        "api.production.svc.cluster.local"
    );
    let delete = api.delete(&format!("{path}?resourceVersion={v1}"));
    assert_eq!(delete.status, 409, "{}", delete.text);
    assert_eq!(
        api.delete(&format!("{path}?resourceVersion={v2}")).status,
        200
    );
    assert_eq!(api.get(path).status, 404);
}

#[test]
fn a_mesh_formed_by_joins_shares_state_routes_services_and_refuses_writes_without_quorum() {
    let net = Net::new(65);
    let (mut east, admin) = founder(&net, "east", 1);

    // west joins through east, edge through west (a follower forwards the write to the leader).
    let token = create_token(&admin, "join");
    let mut west = Spec::new("west", 2).join(&east, &token).start(&net);
    // A join token is single-use.
    let reuse = Spec::new("reuse", 9).join(&east, &token).spawn(&net);
    let refused = reuse.wait_exit_output(UP);
    assert!(!refused.0.success(), "a used join token was accepted");
    assert!(
        refused.1.contains("401") || refused.1.to_lowercase().contains("token"),
        "{}",
        refused.1
    );

    let token = create_token(&admin, "join");
    let mut edge = Spec::new("edge", 3).join(&west, &token).start(&net);

    // Three clusters, one voter each.
    let status = eventually("three voters", UP, || {
        let s = admin.get("/v1/status");
        let voters = s.json["members"]
            .as_array()?
            .iter()
            .filter(|m| m["role"] == "voter")
            .count();
        (voters == 3).then_some(s.json)
    });
    let clusters: Vec<&str> = status["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["cluster"].as_str().unwrap())
        .collect();
    assert!(
        ["east", "west", "edge"]
            .iter()
            .all(|c| clusters.contains(c)),
        "{clusters:?}"
    );
    // Every cluster's trust bundle is replicated: each Cluster resource carries its CA.
    let listed = admin.get("/v1/clusters");
    assert_eq!(
        listed.json["items"].as_array().unwrap().len(),
        3,
        "{}",
        listed.text
    );
    assert!(
        !listed.text.contains("PRIVATE KEY"),
        "a private key entered the log"
    );

    // State written anywhere is seen everywhere. (Several examples route host `api` each
    // their own way, and one host has one route table: the rules and policies, and one
    // VirtualService. The mesh-wide STRICT PeerAuthentication would refuse this test's
    // plaintext callers, as it should: tests/security.rs applies it.)
    for (file, text) in examples() {
        if text.contains("kind: VirtualService")
            && !file.ends_with("canary-split-virtualservice.yaml")
            || text.contains("kind: PeerAuthentication")
        {
            continue;
        }
        let reply = admin.apply_yaml(&text, false);
        assert_eq!(reply.status, 200, "{file}: {}", reply.text);
    }
    // West's admin certificate comes from west's own CA, not east's.
    let west_api = Api::of(&west, admin.token.as_deref());
    let wrote = west_api.apply_yaml(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: via-west\n  namespace: production\nspec:\n  hosts: [via-west]\n  http: [{route: [{destination: {host: via-west}}]}]\n",
        false,
    );
    assert_eq!(wrote.status, 200, "write on a follower: {}", wrote.text);
    assert_eq!(
        admin
            .get("/v1/namespaces/production/virtualservices/via-west?consistent=true")
            .status,
        200
    );

    // A service registered over REST in west is reachable from east through the tunnels.
    let echo = backend::http_echo(&net.ip(2), "west-rest");
    let service = format!(
        "apiVersion: causeway.dev/v1alpha1\nkind: Service\nmetadata:\n  name: echo\n  namespace: demo\n  cluster: west\nspec:\n  ports:\n    - port: 80\n      protocol: http\n  endpoints: [\"{echo}\"]\n---\napiVersion: causeway.dev/v1alpha1\nkind: ServiceExport\nmetadata:\n  name: echo\n  namespace: demo\n  cluster: west\nspec: {{}}\n"
    );
    let registered = admin.apply_yaml(&service, false);
    assert_eq!(registered.status, 200, "{}", registered.text);
    let body = eventually("echo.demo through the tunnel", UP, || {
        match try_http(east.outbound, "GET", "echo.demo", "/via-rest", &[], b"") {
            Ok((200, _, body)) => Some(body),
            _ => None,
        }
    });
    assert!(body.starts_with("west-rest\nGET /via-rest"), "{body}");

    // A fourth gateway joins with no CA to verify the gateway it joins through: it learns the
    // mesh's CAs from it and believes them only with proof of the join token. A token with
    // the right id and a wrong secret gets no such proof, and the join stops before the
    // token is sent (the real token stays unused).
    let token = create_token(&admin, "join");
    let (id, secret) = token.trim_start_matches("cw_").split_once('_').unwrap();
    let wrong: String = secret.chars().rev().collect();
    let forged = Spec::new("forged", 9)
        .join_discovering(&edge, &format!("cw_{id}_{wrong}"))
        .spawn(&net);
    let (status, log) = forged.wait_exit_output(UP);
    assert!(!status.success(), "joined with a forged token:\n{log}");
    assert!(log.contains("no valid proof of the join token"), "{log}");
    let north = Spec::new("north", 4)
        .join_discovering(&edge, &token)
        .start(&net);
    assert!(
        north.logs().contains("trusting the mesh's CAs"),
        "{}",
        north.logs()
    );
    let north_api = Api::of(&north, admin.token.as_deref());
    // Until its copy of the state has caught up, north does not know our token yet.
    eventually("north to catch up", UP, || {
        let r = north_api.raw(
            "GET",
            "/v1/namespaces/production/virtualservices/via-west",
            None,
        );
        (r.status == 200).then_some(())
    });
    let mine = admin.get("/v1/virtualservices").json["items"]
        .as_array()
        .unwrap()
        .len();
    let theirs = north_api.get("/v1/virtualservices").json["items"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(mine, theirs);
    let north_status = north_api.get("/v1/status");
    assert_eq!(north_status.status, 200, "{}", north_status.text);
    assert_eq!(north_status.json["node"]["cluster"], "north");
    // The same leader as the founder sees (an election may have happened since `status`).
    eventually("north to follow the founder's leader", UP, || {
        let mine = admin.get("/v1/status").json["leader"]["id"].clone();
        let theirs = north_api.get("/v1/status").json["leader"]["id"].clone();
        (!mine.is_null() && mine == theirs).then_some(())
    });
    // It caught up by a snapshot streamed from the leader (a new member's log starts empty,
    // and the leader's log starts after the founding snapshot).
    let snapshots = north
        .metric("causeway_raft_snapshots_received_total", &[])
        .unwrap_or(0.0);
    assert!(snapshots >= 1.0, "north caught up without a snapshot");

    // Without a quorum a write fails fast and says so; reads still answer.
    west.kill();
    edge.kill();
    let reply = admin.apply_yaml(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: no-quorum\n  namespace: production\nspec:\n  hosts: [api]\n",
        false,
    );
    assert_eq!(reply.status, 503, "{}", reply.text);
    assert_eq!(reply.problem_type(), Some("no-quorum"), "{}", reply.text);
    assert_eq!(admin.get("/v1/virtualservices").status, 200);
    east.kill();
}

#[test]
fn the_admin_port_speaks_https_to_clients_that_trust_its_cluster_ca_only() {
    let net = Net::new(66);
    let (gw, admin) = founder(&net, "east", 1);
    let token = admin.token.clone().unwrap();
    let auth = format!("Bearer {token}");
    let east_ca = gw.ca.clone().expect("east's CA");

    // Plain HTTP is answered with a refusal that says what to do, and nothing else.
    let (status, _, body) = try_http(
        gw.admin,
        "GET",
        "admin",
        "/v1/status",
        &[("authorization", &auth)],
        b"",
    )
    .unwrap();
    assert_eq!(status, 400, "{body}");
    assert!(
        body.contains("https://") && !body.contains("\"node\""),
        "{body}"
    );
    // The refusal is logged by the connection's task, which may finish after the answer.
    eventually("the refusal in the log", UP, || {
        gw.logs()
            .contains("plain HTTP on the HTTPS admin port refused")
            .then_some(())
    });

    // A client that trusts another cluster's CA refuses the gateway at the handshake.
    let stranger = net.bundle("west");
    let err = try_https(gw.admin, &stranger, "GET", "admin", "/healthz", &[], b"").unwrap_err();
    assert!(err.to_string().contains("UnknownIssuer"), "{err}");

    // The CLI: the cluster's CA works; another CA, no CA or plain HTTP each fail and say why.
    let config_home = tempfile::tempdir().unwrap();
    let server = format!("https://{}", gw.admin);
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(BIN)
            .args(args)
            .args(["--token", &token])
            .env("XDG_CONFIG_HOME", config_home.path())
            .env_remove("CAUSEWAY_SERVER")
            .env_remove("CAUSEWAY_TOKEN")
            .env_remove("CAUSEWAY_CA_FILE")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.code(), text)
    };
    let east_ca = east_ca.to_str().unwrap();
    let (code, text) = cli(&["status", "--server", &server, "--ca-file", east_ca]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("east"), "{text}");
    let (code, text) = cli(&[
        "status",
        "--server",
        &server,
        "--ca-file",
        stranger.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("TLS") && text.contains("UnknownIssuer"),
        "{text}"
    );
    let (code, text) = cli(&["status", "--server", &server]);
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("--ca-file"), "{text}");
    let (code, text) = cli(&["status", "--server", &format!("http://{}", gw.admin)]);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("https://"), "{text}");
}
