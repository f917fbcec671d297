//! Traffic policy takes effect: the Istio examples of `examples/istio/` applied to a
//! three-cluster mesh (east founds it, west and edge join), with real gateways, real QUIC and
//! real backends, and the effect of each measured from east's outbound listener.
//!
//! The service `api.production` runs in west (label `version: stable`) and edge
//! (`version: canary`); east calls it.

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use serde_json::json;
use support::rest::{Api, founder};
use support::{Gateway, Net, Spec, backend, eventually, try_http};

const UP: Duration = Duration::from_secs(30);

fn example(name: &str) -> String {
    let path = format!("{}/examples/istio/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

struct Mesh {
    east: Gateway,
    _west: Gateway,
    _edge: Gateway,
    admin: Api,
    net: Net,
}

fn create_token(admin: &Api, role: &str) -> String {
    let reply = admin.post_json(
        "/v1/tokens",
        &json!({"role": role, "description": "traffic test"}),
    );
    assert_eq!(reply.status, 201, "{}", reply.text);
    reply.json["token"].as_str().expect("token").to_string()
}

/// east founds the mesh; west and edge join it.
fn mesh(net: u8) -> Mesh {
    let net = Net::new(net);
    let (east, admin) = founder(&net, "east", 1);
    let token = create_token(&admin, "join");
    let west = Spec::new("west", 2).join(&east, &token).start(&net);
    let token = create_token(&admin, "join");
    let edge = Spec::new("edge", 3).join(&east, &token).start(&net);
    Mesh {
        east,
        _west: west,
        _edge: edge,
        admin,
        net,
    }
}

impl Mesh {
    /// Registers and exports `name.production` in `cluster` with one endpoint and its labels.
    fn service(&self, cluster: &str, name: &str, endpoint: SocketAddr, labels: &[(&str, &str)]) {
        self.service_on(cluster, name, 80, endpoint, labels);
    }

    /// [`Mesh::service`] on service port `port`.
    fn service_on(
        &self,
        cluster: &str,
        name: &str,
        port: u16,
        endpoint: SocketAddr,
        labels: &[(&str, &str)],
    ) {
        let labels: BTreeMap<&str, &str> = labels.iter().copied().collect();
        let doc = json!([
            {"apiVersion": "causeway.dev/v1alpha1", "kind": "Service",
             "metadata": {"name": name, "namespace": "production", "cluster": cluster},
             "spec": {"ports": [{"port": port, "protocol": "http"}],
                      "endpoints": [{"address": endpoint.to_string(), "labels": labels}]}},
            {"apiVersion": "causeway.dev/v1alpha1", "kind": "ServiceExport",
             "metadata": {"name": name, "namespace": "production", "cluster": cluster},
             "spec": {}},
        ]);
        let yaml = doc
            .as_array()
            .unwrap()
            .iter()
            .map(|d| serde_yaml_ng::to_string(d).unwrap())
            .collect::<Vec<_>>()
            .join("---\n");
        self.apply(&yaml);
    }

    /// `api.production` served by an echo named "west" in west and one named "edge" in edge,
    /// both reachable from east.
    fn api_in_west_and_edge(&self) {
        let west = backend::http_echo(&self.net.ip(2), "west");
        let edge = backend::http_echo(&self.net.ip(3), "edge");
        self.service("west", "api", west, &[]);
        self.service("edge", "api", edge, &[]);
        self.until_served_by("west", "/", &[]);
        self.until_served_by("edge", "/", &[]);
    }

    fn apply(&self, yaml: &str) -> serde_json::Value {
        let reply = self.admin.apply_yaml(yaml, false);
        assert_eq!(reply.status, 200, "{}", reply.text);
        reply.json
    }

    fn get(&self, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
        match try_http(
            self.east.outbound,
            "GET",
            "api.production",
            path,
            headers,
            b"",
        ) {
            Ok((status, _, body)) => (status, body),
            Err(e) => (0, e.to_string()),
        }
    }

    /// Waits until a request with `headers` is answered by `backend`: the policy applied
    /// reached east.
    fn until_served_by(&self, backend: &str, path: &str, headers: &[(&str, &str)]) {
        eventually(&format!("{backend} to answer {path}"), UP, || {
            let (status, body) = self.get(path, headers);
            (status == 200 && body.starts_with(backend)).then_some(())
        });
    }

    /// The sum over east's samples of `name` that carry `labels`.
    fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        support::metric_sum(&self.east.metrics(), name, labels)
    }
}

/// Counts which backend answered each of `n` requests (`status` for non-200 answers).
fn tally(mesh: &Mesh, n: usize, path: &str, headers: &[(&str, &str)]) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    for _ in 0..n {
        let (status, body) = mesh.get(path, headers);
        let who = if status == 200 {
            body.lines().next().unwrap_or("").to_string()
        } else {
            format!("status {status}")
        };
        *seen.entry(who).or_insert(0) += 1;
    }
    seen
}

#[test]
fn canary_split_and_header_routing_follow_the_examples() {
    let mesh = mesh(111);
    let stable = backend::http_echo(&mesh.net.ip(2), "west-stable");
    let canary = backend::http_echo(&mesh.net.ip(3), "edge-canary");
    mesh.service("west", "api", stable, &[("version", "stable")]);
    mesh.service("edge", "api", canary, &[("version", "canary")]);
    // Without policy both clusters serve.
    mesh.until_served_by("west-stable", "/", &[]);
    mesh.until_served_by("edge-canary", "/", &[]);

    mesh.apply(&example("subsets-destinationrule.yaml"));
    mesh.apply(&example("canary-split-virtualservice.yaml"));
    // The split is in force once a request carries the route's subset; give it a moment by
    // waiting for the first canary answer after the apply.
    mesh.until_served_by("edge-canary", "/", &[]);
    let counts = tally(&mesh, 2000, "/", &[]);
    let canary_share = *counts.get("edge-canary").unwrap_or(&0) as f64 / 2000.0;
    assert_eq!(
        counts.values().sum::<usize>(),
        counts.get("west-stable").unwrap_or(&0) + counts.get("edge-canary").unwrap_or(&0),
        "only the two subsets answer: {counts:?}"
    );
    assert!(
        (0.05..=0.15).contains(&canary_share),
        "canary share {canary_share} not within 10% ± 5%: {counts:?}"
    );
    let canary_requests = mesh.metric(
        "causeway_requests_total",
        &[("reporter", "source"), ("destination_subset", "canary")],
    );
    assert!(canary_requests > 0.0, "destination_subset label missing");

    // Header routing replaces the split (two VirtualServices may not claim one host).
    assert_eq!(
        mesh.admin
            .delete("/v1/namespaces/production/virtualservices/api-traffic-split")
            .status,
        200
    );
    let beta = backend::http_echo(&mesh.net.ip(3), "edge-beta");
    let enterprise = backend::http_echo(&mesh.net.ip(2), "west-enterprise");
    mesh.service("edge", "api-beta-holder", beta, &[]);
    // `beta` is a subset of api: an endpoint labelled for it in edge.
    let doc = format!(
        "apiVersion: causeway.dev/v1alpha1\nkind: Service\nmetadata:\n  name: api\n  namespace: production\n  cluster: edge\nspec:\n  ports: [{{port: 80, protocol: http}}]\n  endpoints:\n    - {{address: \"{canary}\", labels: {{version: canary}}}}\n    - {{address: \"{beta}\", labels: {{version: beta}}}}\n"
    );
    mesh.apply(&doc);
    mesh.apply(
        "apiVersion: networking.istio.io/v1beta1\nkind: DestinationRule\nmetadata:\n  name: api-destination\n  namespace: production\nspec:\n  host: api\n  subsets:\n    - {name: stable, labels: {version: stable}}\n    - {name: canary, labels: {version: canary}}\n    - {name: beta, labels: {version: beta}}\n    - {name: internal, labels: {version: internal}}\n",
    );
    // The route names port 8080 of api-enterprise.
    mesh.service_on("west", "api-enterprise", 8080, enterprise, &[]);
    mesh.apply(&example("header-routing-virtualservice.yaml"));
    mesh.until_served_by("edge-beta", "/", &[("x-beta-features", "true")]);
    for _ in 0..20 {
        let (status, body) = mesh.get("/", &[("x-beta-features", "true")]);
        assert!(
            status == 200 && body.starts_with("edge-beta"),
            "{status} {body}"
        );
        let (status, body) = mesh.get("/", &[]);
        assert!(
            status == 200 && body.starts_with("west-stable"),
            "{status} {body}"
        );
        // Another host entirely, by header.
        let (status, body) = mesh.get("/", &[("x-tenant-tier", "enterprise")]);
        assert!(
            status == 200 && body.starts_with("west-enterprise"),
            "{status} {body}"
        );
    }
}

#[test]
fn retries_turn_an_echo_that_fails_every_other_request_into_success() {
    let mesh = mesh(112);
    let flaky = backend::http_echo(&mesh.net.ip(2), "west-flaky");
    mesh.service("west", "api", flaky, &[]);
    mesh.until_served_by("west-flaky", "/", &[]);
    // Without retries every other request fails.
    let counts = tally(&mesh, 40, "/fail-every/2", &[]);
    assert_eq!(counts.get("status 503"), Some(&20), "{counts:?}");

    mesh.apply(&example("retries-virtualservice.yaml"));
    eventually("the retry policy to reach east", UP, || {
        (mesh.metric("causeway_retries_total", &[("reason", "retry")]) > 0.0
            || tally(&mesh, 4, "/fail-every/2", &[]).len() == 1)
            .then_some(())
    });
    let before = mesh.metric("causeway_retries_total", &[("reason", "retry")]);
    let counts = tally(&mesh, 100, "/fail-every/2", &[]);
    assert_eq!(counts.get("west-flaky"), Some(&100), "{counts:?}");
    // Once one request failed, every first attempt lands on a failing turn of the echo and
    // its one retry on a good one.
    let retried = mesh.metric("causeway_retries_total", &[("reason", "retry")]) - before;
    assert!(
        (99.0..=100.0).contains(&retried),
        "retries counted: {retried}"
    );
}

#[test]
fn timeouts_answer_504_and_faults_inject_delays_and_aborts() {
    let mesh = mesh(113);
    let echo = backend::http_echo(&mesh.net.ip(2), "west");
    mesh.service("west", "api", echo, &[]);
    mesh.until_served_by("west", "/", &[]);

    mesh.apply(
        "apiVersion: networking.istio.io/v1beta1\nkind: VirtualService\nmetadata:\n  name: api\n  namespace: production\nspec:\n  hosts: [api]\n  http:\n    - route: [{destination: {host: api}}]\n      timeout: 300ms\n",
    );
    eventually("the route timeout", UP, || {
        (mesh.get("/slow/2000", &[]).0 == 504).then_some(())
    });
    let (status, body) = mesh.get("/slow/2000", &[]);
    assert_eq!(status, 504, "{body}");
    // East's own timer answers; west, which got the deadline with the call, waits a moment
    // longer (DEADLINE_GRACE), and answers only if east was stalled past it.
    assert!(
        body.contains("upstream request timeout") || body.contains("caller's deadline"),
        "{body}"
    );
    assert!(
        mesh.metric(
            "causeway_requests_total",
            &[("response_code", "504"), ("response_flags", "UT")]
        ) > 0.0
    );
    // Fast requests still pass.
    assert_eq!(mesh.get("/slow/10", &[]).0, 200);

    // Aborts: 50% answered 500 by the source gateway itself.
    mesh.apply(
        "apiVersion: networking.istio.io/v1beta1\nkind: VirtualService\nmetadata:\n  name: api\n  namespace: production\nspec:\n  hosts: [api]\n  http:\n    - fault: {abort: {percentage: {value: 50}, httpStatus: 500}}\n      route: [{destination: {host: api}}]\n",
    );
    eventually("the abort fault", UP, || {
        (mesh.get("/", &[]).0 == 500).then_some(())
    });
    let counts = tally(&mesh, 400, "/", &[]);
    let aborted = *counts.get("status 500").unwrap_or(&0) as f64 / 400.0;
    assert!(
        (0.4..=0.6).contains(&aborted),
        "aborted share {aborted}: {counts:?}"
    );
    assert_eq!(counts.len(), 2, "{counts:?}");
    assert!(
        mesh.metric(
            "causeway_requests_total",
            &[("response_code", "500"), ("response_flags", "FI")]
        ) > 0.0
    );

    // Delays: 30% of the calls held 50 ms at east, counted by their flag.
    mesh.apply(
        "apiVersion: networking.istio.io/v1beta1\nkind: VirtualService\nmetadata:\n  name: api\n  namespace: production\nspec:\n  hosts: [api]\n  http:\n    - fault: {delay: {percentage: {value: 30}, fixedDelay: 50ms}}\n      route: [{destination: {host: api}}]\n",
    );
    eventually("the delay fault", UP, || {
        (mesh.get("/", &[]).0 == 200).then_some(())
    });
    let delayed = |m: &Mesh| m.metric("causeway_requests_total", &[("response_flags", "DI")]);
    eventually("the first delayed call", UP, || {
        let _ = mesh.get("/", &[]);
        (delayed(&mesh) > 0.0).then_some(())
    });
    let before = delayed(&mesh);
    let counts = tally(&mesh, 300, "/", &[]);
    assert_eq!(
        counts.get("west"),
        Some(&300),
        "a delay is no failure: {counts:?}"
    );
    let share = (delayed(&mesh) - before) / 300.0;
    assert!((0.2..=0.4).contains(&share), "delayed share {share}");
}

#[test]
fn outlier_detection_ejects_a_failing_cluster_and_takes_it_back() {
    let mesh = mesh(114);
    let broken = backend::http_failing(&mesh.net.ip(2), "west", 503);
    let healthy = backend::http_echo(&mesh.net.ip(3), "edge");
    mesh.service("west", "api", broken, &[]);
    mesh.service("edge", "api", healthy, &[]);
    mesh.until_served_by("edge", "/", &[]);
    // Without outlier detection west's 503s reach the caller.
    let counts = tally(&mesh, 20, "/", &[]);
    assert!(counts.contains_key("status 503"), "{counts:?}");
    mesh.apply(
        "apiVersion: networking.istio.io/v1beta1\nkind: DestinationRule\nmetadata:\n  name: api\n  namespace: production\nspec:\n  host: api\n  trafficPolicy:\n    outlierDetection: {consecutive5xxErrors: 3, interval: 1s, baseEjectionTime: 3s, maxEjectionPercent: 100}\n",
    );
    eventually("west to be ejected", UP, || {
        let _ = mesh.get("/", &[]);
        (mesh.metric("causeway_outlier_ejections_total", &[]) >= 1.0).then_some(())
    });
    // While ejected (3 s), every request goes to edge.
    let counts = tally(&mesh, 30, "/", &[]);
    assert_eq!(counts.get("edge"), Some(&30), "{counts:?}");
    // After baseEjectionTime west is back, fails again and is ejected a second time.
    eventually("west's second ejection", UP, || {
        let _ = mesh.get("/", &[]);
        (mesh.metric("causeway_outlier_ejections_total", &[]) >= 2.0).then_some(())
    });
}

#[test]
fn pool_overflow_is_answered_503_at_once_and_a_mirror_never_slows_the_primary() {
    let mesh = mesh(115);
    let (slow, _seen) = backend::http_echo_reporting(&mesh.net.ip(2), "west");
    mesh.service("west", "api", slow, &[("version", "stable")]);
    mesh.until_served_by("west", "/", &[]);

    // One connection and one pending request: of six calls at once, at most two are in
    // flight; the rest are refused at east without waiting.
    mesh.apply(
        "apiVersion: networking.istio.io/v1beta1\nkind: DestinationRule\nmetadata:\n  name: api\n  namespace: production\nspec:\n  host: api\n  trafficPolicy:\n    connectionPool:\n      tcp: {maxConnections: 1}\n      http: {http1MaxPendingRequests: 1}\n",
    );
    let overflowed = eventually("the pool limit to reach east", UP, || {
        let answers: Vec<(u16, String)> = std::thread::scope(|s| {
            let calls: Vec<_> = (0..6)
                .map(|_| s.spawn(|| mesh.get("/slow/1500", &[])))
                .collect();
            calls.into_iter().map(|c| c.join().unwrap()).collect()
        });
        let refused = answers.iter().filter(|(status, _)| *status == 503).count();
        (refused >= 4).then_some(answers)
    });
    let ok = overflowed
        .iter()
        .filter(|(status, _)| *status == 200)
        .count();
    assert!(
        ok >= 1,
        "the calls within the limit were served: {overflowed:?}"
    );
    assert!(
        overflowed
            .iter()
            .any(|(status, body)| *status == 503 && body.contains("connection pool")),
        "{overflowed:?}"
    );
    assert!(
        mesh.metric(
            "causeway_requests_total",
            &[("response_code", "503"), ("response_flags", "UO")]
        ) >= 4.0
    );
    assert!(mesh.metric("causeway_overflows_total", &[]) >= 4.0);

    // The mirror example: a copy of 10% of the calls goes to api-shadow's subset `test`,
    // whose endpoint takes 2 s; the primary answers at once all the same.
    let (shadow, copies) = silent_backend(&mesh.net.ip(3));
    mesh.service("edge", "api-shadow", shadow, &[("version", "test")]);
    mesh.apply(
        "apiVersion: networking.istio.io/v1beta1\nkind: DestinationRule\nmetadata:\n  name: api-shadow\n  namespace: production\nspec:\n  host: api-shadow\n  subsets: [{name: test, labels: {version: test}}]\n---\napiVersion: networking.istio.io/v1beta1\nkind: DestinationRule\nmetadata:\n  name: api\n  namespace: production\nspec:\n  host: api\n  subsets: [{name: stable, labels: {version: stable}}]\n",
    );
    mesh.apply(&example("mirror-virtualservice.yaml"));
    eventually("the first mirrored copy", UP, || {
        let _ = mesh.get("/warm-up", &[]);
        copies.try_recv().ok()
    });
    while copies.try_recv().is_ok() {}
    let started = std::time::Instant::now();
    let mut served = 0;
    for _ in 0..200 {
        let (status, body) = mesh.get("/mirror", &[]);
        assert!(status == 200 && body.starts_with("west"), "{status} {body}");
        served += 1;
    }
    let took = started.elapsed();
    let mut mirrored = 0;
    while let Ok(path) = copies.recv_timeout(Duration::from_secs(3)) {
        if path == "/mirror" {
            mirrored += 1;
        }
    }
    // 10% of 200, give or take chance (binomial: 99.9% of runs fall in 6..=36).
    assert!(
        (6..=36).contains(&mirrored),
        "{mirrored} copies of {served}"
    );
    assert!(mesh.metric("causeway_mirrored_requests_total", &[("reason", "sent")]) >= 6.0);
    // The shadow never answers: had the primary waited for its copies, each of the (at
    // least 6) mirrored calls would have taken the mirror's 10 s deadline.
    assert!(took < Duration::from_secs(60), "{took:?}");
}

/// A backend that reads each request, reports its path, and never answers: a shadow as slow
/// as a shadow can be.
fn silent_backend(ip: &str) -> (SocketAddr, std::sync::mpsc::Receiver<String>) {
    use std::io::BufRead;
    let listener = std::net::TcpListener::bind((ip, 0)).expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let tx = tx.clone();
            std::thread::spawn(move || {
                let mut reader = std::io::BufReader::new(&stream);
                let mut line = String::new();
                if reader.read_line(&mut line).is_ok() {
                    let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
                    let _ = tx.send(path);
                }
                // Hold the connection open, unanswered, until the peer gives up.
                let mut rest = Vec::new();
                let _ = std::io::Read::read_to_end(&mut reader, &mut rest);
            });
        }
    });
    (addr, rx)
}

#[test]
fn consistent_hashing_sticks_and_locality_failover_prefers_the_closer_cluster() {
    let mesh = mesh(116);
    mesh.api_in_west_and_edge();

    mesh.apply(
        "apiVersion: networking.istio.io/v1beta1\nkind: DestinationRule\nmetadata:\n  name: api\n  namespace: production\nspec:\n  host: api\n  trafficPolicy:\n    loadBalancer:\n      consistentHash: {httpHeaderName: x-user}\n",
    );
    // Each user sticks to one cluster; different users spread over both.
    let mut clusters_seen = std::collections::BTreeSet::new();
    eventually("hashing to take effect", UP, || {
        let first = tally(&mesh, 10, "/", &[("x-user", "alice")]);
        (first.len() == 1).then_some(())
    });
    for user in [
        "alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi",
    ] {
        let counts = tally(&mesh, 10, "/", &[("x-user", user)]);
        assert_eq!(counts.len(), 1, "{user} moved between clusters: {counts:?}");
        clusters_seen.extend(counts.into_keys());
    }
    assert_eq!(clusters_seen.len(), 2, "{clusters_seen:?}");

    // Localities: east and west in us-east, edge in eu-west. With outlier detection on,
    // east keeps its calls in its region (west) and fails over to edge only when west fails.
    for (cluster, region) in [
        ("east", "us-east"),
        ("west", "us-east"),
        ("edge", "eu-west"),
    ] {
        let reply = mesh.admin.get(&format!("/v1/clusters/{cluster}"));
        assert_eq!(reply.status, 200, "{}", reply.text);
        let mut doc = reply.json.clone();
        doc["spec"]["locality"] = json!({"region": region});
        let yaml = serde_yaml_ng::to_string(&doc).unwrap();
        mesh.apply(&yaml);
    }
    let rule = |locality: &str| {
        format!(
            "apiVersion: networking.istio.io/v1beta1\nkind: DestinationRule\nmetadata:\n  name: api\n  namespace: production\nspec:\n  host: api\n  trafficPolicy:\n    outlierDetection: {{consecutive5xxErrors: 2, interval: 1s, baseEjectionTime: 30s, maxEjectionPercent: 100}}\n    loadBalancer:\n      localityLbSetting:\n        {locality}\n"
        )
    };
    // failoverPriority ranks clusters by labels before localities: a region pinned by value
    // comes first even though the caller's own region is healthy.
    mesh.apply(&rule(
        "failoverPriority: [topology.kubernetes.io/region=eu-west, topology.istio.io/cluster]",
    ));
    eventually("failoverPriority to prefer eu-west", UP, || {
        (tally(&mesh, 20, "/", &[]).get("edge") == Some(&20)).then_some(())
    });
    mesh.apply(&rule("failover: [{from: us-east, to: eu-west}]"));
    eventually("calls to stay in us-east", UP, || {
        (tally(&mesh, 20, "/", &[]).get("west") == Some(&20)).then_some(())
    });
    // west's endpoint goes away: its gateway refuses, outlier detection ejects west, and
    // the calls fail over to edge.
    mesh.service("west", "api", "127.0.0.1:9".parse().unwrap(), &[]);
    eventually("failover to eu-west", UP, || {
        (tally(&mesh, 10, "/", &[]).get("edge") == Some(&10)).then_some(())
    });
    assert!(mesh.metric("causeway_outlier_ejections_total", &[]) >= 1.0);
}

#[test]
fn per_try_timeouts_retry_elsewhere_and_profiles_and_splits_take_effect() {
    let mesh = mesh(117);
    mesh.api_in_west_and_edge();

    // A per-try timeout of 300 ms: a slow answer is abandoned and retried on the other
    // cluster, where it is just as slow; the overall timeout then answers 504.
    mesh.apply(
        "apiVersion: networking.istio.io/v1beta1\nkind: VirtualService\nmetadata:\n  name: api\n  namespace: production\nspec:\n  hosts: [api]\n  http:\n    - route: [{destination: {host: api}}]\n      retries: {attempts: 1, perTryTimeout: 300ms, retryOn: 5xx}\n      timeout: 5s\n",
    );
    eventually("the per-try timeout", UP, || {
        (mesh.get("/slow/2000", &[]).0 == 504).then_some(())
    });
    let before = mesh.metric("causeway_retries_total", &[("reason", "retry")]);
    let (status, body) = mesh.get("/slow/2000", &[]);
    assert_eq!(status, 504, "{body}");
    assert!(body.contains("per-try timeout"), "{body}");
    assert!(mesh.metric("causeway_retries_total", &[("reason", "retry")]) > before);
    assert_eq!(mesh.get("/slow/10", &[]).0, 200);
    assert_eq!(
        mesh.admin
            .delete("/v1/namespaces/production/virtualservices/api")
            .status,
        200
    );

    // SMI TrafficSplit: `api` split 1:3 over api-a (west) and api-b (edge).
    let a = backend::http_echo(&mesh.net.ip(2), "west-a");
    let b = backend::http_echo(&mesh.net.ip(3), "edge-b");
    mesh.service("west", "api-a", a, &[]);
    mesh.service("edge", "api-b", b, &[]);
    mesh.apply(
        "apiVersion: split.smi-spec.io/v1alpha2\nkind: TrafficSplit\nmetadata: {name: api, namespace: production}\nspec:\n  service: api\n  backends:\n  - {service: api-a, weight: 250}\n  - {service: api-b, weight: 750}\n",
    );
    mesh.until_served_by("edge-b", "/", &[]);
    let counts = tally(&mesh, 400, "/", &[]);
    let b_share = *counts.get("edge-b").unwrap_or(&0) as f64 / 400.0;
    assert!((0.68..=0.82).contains(&b_share), "{counts:?}");
    assert_eq!(counts.len(), 2, "{counts:?}");
    assert_eq!(
        mesh.admin
            .delete("/v1/namespaces/production/trafficsplits/api")
            .status,
        200
    );

    // Linkerd ServiceProfile: GET /items/* is retryable with a 1 s timeout; the echo fails
    // every other call and the route's retries hide it.
    let flaky = backend::http_echo(&mesh.net.ip(2), "west-flaky");
    mesh.service("west", "flaky", flaky, &[]);
    mesh.apply(
        "apiVersion: linkerd.io/v1alpha2\nkind: ServiceProfile\nmetadata: {name: flaky.production.svc.cluster.local, namespace: production}\nspec:\n  routes:\n  - name: GET /fail-every/2/items\n    condition: {method: GET, pathRegex: /fail-every/2/items/.*}\n    isRetryable: true\n    timeout: 1s\n  retryBudget: {retryRatio: 0.5, minRetriesPerSecond: 20, ttl: 10s}\n",
    );
    let get = |path: &str| match try_http(
        mesh.east.outbound,
        "GET",
        "flaky.production",
        path,
        &[],
        b"",
    ) {
        Ok((status, _, _)) => status,
        Err(_) => 0,
    };
    eventually("the profile's retries", UP, || {
        (0..6)
            .all(|_| get("/fail-every/2/items/1") == 200)
            .then_some(())
    });
    assert!((0..40).all(|_| get("/fail-every/2/items/7") == 200));
    // A path the profile does not call retryable is not retried.
    let failed = (0..40)
        .filter(|_| get("/fail-every/2/other") == 503)
        .count();
    assert!(failed >= 15, "{failed} of 40 failed without retries");
}

#[test]
fn bookinfo_reviews_route_applies_as_published_and_takes_effect() {
    let mesh = mesh(118);
    let v1 = backend::http_echo(&mesh.net.ip(2), "reviews-v1");
    let v2 = backend::http_echo(&mesh.net.ip(3), "reviews-v2");
    let v3 = backend::http_echo(&mesh.net.ip(3), "reviews-v3");
    // Bookinfo lives in `default`, the namespace its samples get.
    let doc = |cluster: &str, endpoints: &str| {
        format!(
            "apiVersion: causeway.dev/v1alpha1\nkind: Service\nmetadata: {{name: reviews, namespace: default, cluster: {cluster}}}\nspec:\n  ports: [{{port: 9080, protocol: http}}]\n  endpoints: [{endpoints}]\n---\napiVersion: causeway.dev/v1alpha1\nkind: ServiceExport\nmetadata: {{name: reviews, namespace: default, cluster: {cluster}}}\nspec: {{}}\n"
        )
    };
    mesh.apply(&doc(
        "west",
        &format!("{{address: \"{v1}\", labels: {{version: v1}}}}"),
    ));
    mesh.apply(&doc(
        "edge",
        &format!("{{address: \"{v2}\", labels: {{version: v2}}}}, {{address: \"{v3}\", labels: {{version: v3}}}}"),
    ));
    let sample = |name: &str| {
        let path = format!("{}/examples/bookinfo/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    };
    for file in [
        "destination-rule-all.yaml",
        "virtual-service-reviews-jason-v2-v3.yaml",
    ] {
        let applied = mesh.apply(&sample(file));
        assert!(
            !applied.to_string().contains("not enforced"),
            "{file}: {applied}"
        );
    }
    let get = |headers: &[(&str, &str)]| match try_http(
        mesh.east.outbound,
        "GET",
        "reviews.default",
        "/",
        headers,
        b"",
    ) {
        Ok((200, _, body)) => body.lines().next().unwrap_or("").to_string(),
        other => format!("{other:?}"),
    };
    eventually("jason to reach reviews v2", UP, || {
        (get(&[("end-user", "jason")]) == "reviews-v2").then_some(())
    });
    for _ in 0..20 {
        assert_eq!(get(&[("end-user", "jason")]), "reviews-v2");
        assert_eq!(get(&[]), "reviews-v3");
    }
}

#[test]
fn timeout_circuit_breaker_and_fault_examples_take_effect_as_written() {
    let mesh = mesh(119);
    // cascading-timeouts.yaml: inventory-service answers within 10 s or not at all.
    let inventory = backend::http_echo(&mesh.net.ip(2), "west-inventory");
    mesh.service("west", "inventory-service", inventory, &[]);
    mesh.apply(&example("cascading-timeouts.yaml"));
    let get =
        |host: &str, path: &str| match try_http(mesh.east.outbound, "GET", host, path, &[], b"") {
            Ok((status, _, body)) => (status, body),
            Err(e) => (0, e.to_string()),
        };
    eventually("inventory-service through east", UP, || {
        (get("inventory-service.production", "/").0 == 200).then_some(())
    });
    let (status, body) = get("inventory-service.production", "/slow/12000");
    assert_eq!(status, 504, "{body}");
    // East's own timer answers (or west's, a moment later, if east was stalled).
    assert!(
        body.contains("within 10s") || body.contains("caller's deadline"),
        "{body}"
    );

    // circuit-breaker-destinationrule.yaml: west's api fails every call; after five in a row
    // it is ejected (at most 50% of two clusters) and edge takes every call.
    let broken = backend::http_failing(&mesh.net.ip(2), "west", 503);
    let healthy = backend::http_echo(&mesh.net.ip(3), "edge");
    mesh.service("west", "api", broken, &[]);
    mesh.service("edge", "api", healthy, &[]);
    mesh.until_served_by("edge", "/", &[]);
    mesh.apply(&example("circuit-breaker-destinationrule.yaml"));
    eventually("west's api to be ejected", UP, || {
        let _ = mesh.get("/", &[]);
        (mesh.metric(
            "causeway_outlier_ejections_total",
            &[("service", "api.production")],
        ) >= 1.0)
            .then_some(())
    });
    let counts = tally(&mesh, 40, "/", &[]);
    assert_eq!(counts.get("edge"), Some(&40), "{counts:?}");

    // fault-injection-virtualservice.yaml (namespace staging): 5% aborted with 500, 10%
    // delayed 5 s; 200 calls, 20 at a time.
    let staging = backend::http_echo(&mesh.net.ip(2), "west-staging");
    let doc = format!(
        "apiVersion: causeway.dev/v1alpha1\nkind: Service\nmetadata: {{name: api, namespace: staging, cluster: west}}\nspec:\n  ports: [{{port: 80, protocol: http}}]\n  endpoints: [\"{staging}\"]\n---\napiVersion: causeway.dev/v1alpha1\nkind: ServiceExport\nmetadata: {{name: api, namespace: staging, cluster: west}}\nspec: {{}}\n"
    );
    mesh.apply(&doc);
    mesh.apply(&example("fault-injection-virtualservice.yaml"));
    // A call may be both delayed and aborted (Envoy draws each): its flags read `DI,FI`.
    let flagged = |m: &Mesh, flags: &str| {
        m.metric(
            "causeway_requests_total",
            &[("service", "api.staging"), ("response_flags", flags)],
        )
    };
    let aborted = |m: &Mesh| flagged(m, "FI") + flagged(m, "DI,FI");
    let delayed = |m: &Mesh| flagged(m, "DI") + flagged(m, "DI,FI");
    eventually("the staging faults", UP, || {
        let _ = get("api.staging", "/");
        (aborted(&mesh) + delayed(&mesh) > 0.0).then_some(())
    });
    let (aborts_before, delays_before) = (aborted(&mesh), delayed(&mesh));
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..20)
            .map(|_| {
                s.spawn(|| {
                    (0..10)
                        .map(|_| get("api.staging", "/").0)
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect()
    });
    let aborts = statuses.iter().filter(|&&s| s == 500).count();
    assert_eq!(aborts + statuses.iter().filter(|&&s| s == 200).count(), 200);
    // 5% of 200 is 10: binomial bounds that hold in 99.9% of runs.
    assert!((1..=22).contains(&aborts), "{aborts} aborted of 200");
    assert_eq!(aborted(&mesh) - aborts_before, aborts as f64);
    let delays = delayed(&mesh) - delays_before;
    assert!((6.0..=36.0).contains(&delays), "{delays} delayed of 200");
}
