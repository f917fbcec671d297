//! RateLimitPolicy with real gateways: three clusters' gateways driven at twice the limit,
//! unevenly (half, three tenths and a fifth of the load), for 30 s. A `local` limit holds at
//! each gateway, a `mesh` limit across all three together, each within 10%.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use support::rest::{Api, founder};
use support::{Gateway, Net, Spec, backend, eventually, try_http};

const UP: Duration = Duration::from_secs(30);
/// Counted over this long, after a second of warm-up.
const WINDOW: Duration = Duration::from_secs(30);
const WARM_UP: Duration = Duration::from_secs(1);

fn token(admin: &Api, role: &str) -> String {
    let reply = admin.post_json(
        "/v1/tokens",
        &json!({"role": role, "description": "rate limit test"}),
    );
    assert_eq!(reply.status, 201, "{}", reply.text);
    reply.json["token"].as_str().expect("token").to_string()
}

fn apply(admin: &Api, docs: serde_json::Value) {
    let yaml = docs
        .as_array()
        .unwrap()
        .iter()
        .map(|d| serde_yaml_ng::to_string(d).unwrap())
        .collect::<Vec<_>>()
        .join("---\n");
    let reply = admin.apply_yaml(&yaml, false);
    assert_eq!(reply.status, 200, "{}", reply.text);
}

/// Requests `host` on `gw` at `per_second` for warm-up plus the window, from two threads;
/// counts the 200s answered within the window.
fn drive(gw: &Gateway, host: &'static str, per_second: u32, start: Instant) -> Arc<AtomicU32> {
    let ok = Arc::new(AtomicU32::new(0));
    let outbound = gw.outbound;
    let total = (per_second as f64 * (WARM_UP + WINDOW).as_secs_f64()) as u32;
    let step = Duration::from_secs(1) / per_second;
    for lane in 0..2u32 {
        let ok = ok.clone();
        std::thread::spawn(move || {
            let mut i = lane;
            while i < total {
                let at = start + step * i;
                if let Some(wait) = at.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                let sent = Instant::now();
                let status = try_http(outbound, "GET", host, "/", &[], b"").map(|r| r.0);
                let elapsed = sent.duration_since(start);
                if status.is_ok_and(|s| s == 200)
                    && elapsed >= WARM_UP
                    && elapsed < WARM_UP + WINDOW
                {
                    ok.fetch_add(1, Ordering::Relaxed);
                }
                i += 2;
            }
        });
    }
    ok
}

fn within(got: u32, want: f64, what: &str) {
    let off = (f64::from(got) - want).abs() / want;
    assert!(
        off <= 0.10,
        "{what}: {got} requests allowed, {want} expected (off by {:.1}%)",
        off * 100.0
    );
    eprintln!(
        "{what}: {got} allowed, {want} expected (off by {:.1}%)",
        off * 100.0
    );
}

#[test]
fn local_and_mesh_rate_limits_hold_at_twice_the_load_unevenly_spread() {
    let net = Net::new(133);
    let (east, admin) = founder(&net, "east", 1);
    let west = Spec::new("west", 2)
        .join(&east, &token(&admin, "join"))
        .start(&net);
    let edge = Spec::new("edge", 3)
        .join(&east, &token(&admin, "join"))
        .start(&net);
    let echo = backend::http_echo(&net.ip(2), "west");
    let mut docs = Vec::new();
    for name in ["api", "web"] {
        docs.push(json!({"apiVersion": "causeway.dev/v1alpha1", "kind": "Service",
            "metadata": {"name": name, "namespace": "production", "cluster": "west"},
            "spec": {"ports": [{"port": 80, "protocol": "http"}], "endpoints": [echo.to_string()]}}));
        docs.push(
            json!({"apiVersion": "causeway.dev/v1alpha1", "kind": "ServiceExport",
            "metadata": {"name": name, "namespace": "production", "cluster": "west"}, "spec": {}}),
        );
    }
    apply(&admin, json!(docs));
    for gw in [&east, &west, &edge] {
        for host in ["api.production", "web.production"] {
            eventually("the services at every gateway", UP, || {
                try_http(gw.outbound, "GET", host, "/", &[], b"")
                    .ok()
                    .filter(|r| r.0 == 200)
            });
        }
    }

    // An EnvoyFilter, as the seed writes rate limits, is refused with a pointer.
    let refused = admin.apply_yaml(
        "apiVersion: networking.istio.io/v1alpha3\nkind: EnvoyFilter\nmetadata: {name: rl, namespace: production}\nspec: {}\n",
        false,
    );
    assert_eq!(refused.status, 422, "{}", refused.text);
    assert!(refused.text.contains("RateLimitPolicy"), "{}", refused.text);

    const LOCAL: u32 = 10;
    const MESH: u32 = 30;
    apply(
        &admin,
        json!([
            {"apiVersion": "causeway.dev/v1alpha1", "kind": "RateLimitPolicy",
             "metadata": {"name": "api-local", "namespace": "production"},
             "spec": {"targetRef": {"service": "api"}, "requestsPerSecond": LOCAL, "burst": LOCAL, "scope": "local"}},
            {"apiVersion": "causeway.dev/v1alpha1", "kind": "RateLimitPolicy",
             "metadata": {"name": "web-mesh", "namespace": "production"},
             "spec": {"targetRef": {"service": "web"}, "requestsPerSecond": MESH, "burst": MESH, "scope": "mesh"}},
        ]),
    );
    // In effect at every gateway: a burst beyond it is answered 429, with when to come back.
    for gw in [&east, &west, &edge] {
        let limited = eventually("the local limit to take effect", UP, || {
            (0..3 * LOCAL)
                .map(|_| try_http(gw.outbound, "GET", "api.production", "/", &[], b"").unwrap())
                .find(|r| r.0 == 429)
        });
        let header = |name: &str| {
            limited
                .1
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.clone())
        };
        assert!(
            header("retry-after").is_some_and(|s| s.parse::<u64>().is_ok_and(|n| n >= 1)),
            "{limited:?}"
        );
        assert_eq!(
            header("x-ratelimit-limit").as_deref(),
            Some("10"),
            "{limited:?}"
        );
        assert!(
            limited.2.contains("RateLimitPolicy production/api-local"),
            "{limited:?}"
        );
    }
    std::thread::sleep(Duration::from_secs(2));

    // Twice each limit, spread 50/30/20 over the three gateways.
    let start = Instant::now() + Duration::from_millis(200);
    let shares = [(&east, 50), (&west, 30), (&edge, 20)];
    let local: Vec<_> = shares
        .iter()
        .map(|(gw, pct)| drive(gw, "api.production", 3 * LOCAL * pct / 100 * 2, start))
        .collect();
    let mesh: Vec<_> = shares
        .iter()
        .map(|(gw, pct)| drive(gw, "web.production", 2 * MESH * pct / 100, start))
        .collect();
    std::thread::sleep(WARM_UP + WINDOW + Duration::from_secs(3));

    let secs = WINDOW.as_secs_f64();
    for ((gw, _), ok) in shares.iter().zip(&local) {
        let name = if std::ptr::eq(*gw, &east) {
            "east"
        } else if std::ptr::eq(*gw, &west) {
            "west"
        } else {
            "edge"
        };
        within(
            ok.load(Ordering::Relaxed),
            f64::from(LOCAL) * secs,
            &format!("local limit at {name}"),
        );
    }
    let together: u32 = mesh.iter().map(|ok| ok.load(Ordering::Relaxed)).sum();
    within(
        together,
        f64::from(MESH) * secs,
        "mesh limit across three gateways",
    );

    let metrics = east.metrics();
    assert!(
        metrics.contains(r#"causeway_rate_limited_total{service="web.production",policy="production/web-mesh",scope="mesh"}"#),
        "{metrics}"
    );
}

/// Gateways of one cluster have no tunnel between them; they share a mesh limit over a
/// connection kept for demand reports alone.
#[test]
fn a_mesh_limit_holds_across_two_gateways_of_one_cluster_too() {
    let net = Net::new(136);
    let (east, admin) = founder(&net, "east", 1);
    let west1 = Spec::new("west", 2)
        .join(&east, &token(&admin, "join"))
        .start(&net);
    // West's second gateway joins through west's first (and gets the cluster's CA from it).
    let west2 = Spec::new("west", 3)
        .named("west-2")
        .join(&west1, &token(&admin, "join"))
        .start(&net);
    let echo = backend::http_echo(&net.ip(2), "west");
    apply(
        &admin,
        json!([
            {"apiVersion": "causeway.dev/v1alpha1", "kind": "Service",
             "metadata": {"name": "web", "namespace": "production", "cluster": "west"},
             "spec": {"ports": [{"port": 80, "protocol": "http"}], "endpoints": [echo.to_string()]}},
            {"apiVersion": "causeway.dev/v1alpha1", "kind": "ServiceExport",
             "metadata": {"name": "web", "namespace": "production", "cluster": "west"}, "spec": {}},
        ]),
    );
    for gw in [&east, &west1, &west2] {
        eventually("web.production at every gateway", UP, || {
            try_http(gw.outbound, "GET", "web.production", "/", &[], b"")
                .ok()
                .filter(|r| r.0 == 200)
        });
    }
    const MESH: u32 = 30;
    apply(
        &admin,
        json!([
            {"apiVersion": "causeway.dev/v1alpha1", "kind": "RateLimitPolicy",
             "metadata": {"name": "web-mesh", "namespace": "production"},
             "spec": {"targetRef": {"service": "web"}, "requestsPerSecond": MESH, "burst": MESH, "scope": "mesh"}},
        ]),
    );
    for gw in [&east, &west1, &west2] {
        eventually("the mesh limit to take effect", UP, || {
            (0..3 * MESH)
                .map(|_| try_http(gw.outbound, "GET", "web.production", "/", &[], b"").unwrap())
                .find(|r| r.0 == 429)
        });
    }
    std::thread::sleep(Duration::from_secs(2));

    // Twice the limit: half through west-1, three tenths through west-2, a fifth through east.
    let start = Instant::now() + Duration::from_millis(200);
    let counts: Vec<_> = [(&west1, 50), (&west2, 30), (&east, 20)]
        .iter()
        .map(|(gw, pct)| drive(gw, "web.production", 2 * MESH * pct / 100, start))
        .collect();
    std::thread::sleep(WARM_UP + WINDOW + Duration::from_secs(3));
    let together: u32 = counts.iter().map(|ok| ok.load(Ordering::Relaxed)).sum();
    within(
        together,
        f64::from(MESH) * WINDOW.as_secs_f64(),
        "mesh limit across two gateways of west and one of east",
    );
}
