//! A cluster's CA rotates under load with no failed request: east's CA is rotated while a
//! client sends requests through east to west at about 1000 per second, until the old root has
//! left the trust bundle; real gateways, real tunnels, real Raft.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use support::rest::Api;
use support::{Net, Spec, backend, eventually};

const UP: Duration = Duration::from_secs(30);

/// One keep-alive client connection; GETs one at a time.
struct KeepAlive(BufReader<TcpStream>);

impl KeepAlive {
    fn open(addr: SocketAddr) -> std::io::Result<Self> {
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        Ok(Self(BufReader::new(s)))
    }

    fn get(&mut self, host: &str) -> std::io::Result<u16> {
        write!(self.0.get_mut(), "GET / HTTP/1.1\r\nHost: {host}\r\n\r\n")?;
        let mut line = String::new();
        self.0.read_line(&mut line)?;
        let status = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
        let mut length = 0;
        loop {
            line.clear();
            self.0.read_line(&mut line)?;
            if line == "\r\n" || line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                length = v.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0; length];
        self.0.read_exact(&mut body)?;
        Ok(status)
    }
}

/// Clients sending `GET api.production` through `outbound` on keep-alive connections: `lanes`
/// of them, each every 8 ms, the lanes `offset` apart; every answer but a 200 is a failure.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    errors: Arc<std::sync::Mutex<Vec<String>>>,
    lanes: Vec<std::thread::JoinHandle<()>>,
    started: Instant,
}

impl Load {
    fn start(outbound: SocketAddr, lanes: u32, offset: Duration) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let errors = Arc::new(std::sync::Mutex::new(Vec::new()));
        let started = Instant::now();
        let lanes = (0..lanes)
            .map(|lane| {
                let (stop, ok, failed, errors) =
                    (stop.clone(), ok.clone(), failed.clone(), errors.clone());
                std::thread::spawn(move || {
                    let step = Duration::from_millis(8);
                    let mut conn: Option<KeepAlive> = None;
                    let mut i = 0u32;
                    while !stop.load(Ordering::Relaxed) {
                        let at = started + step * i + offset * lane;
                        if let Some(wait) = at.checked_duration_since(Instant::now()) {
                            std::thread::sleep(wait);
                        }
                        i += 1;
                        let outcome = match conn.as_mut() {
                            Some(c) => c.get("api.production"),
                            None => KeepAlive::open(outbound).and_then(|mut c| {
                                let status = c.get("api.production");
                                conn = Some(c);
                                status
                            }),
                        };
                        match outcome {
                            Ok(200) => {
                                ok.fetch_add(1, Ordering::Relaxed);
                            }
                            other => {
                                failed.fetch_add(1, Ordering::Relaxed);
                                errors.lock().unwrap().push(format!("{other:?}"));
                                conn = None;
                            }
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            ok,
            failed,
            errors,
            lanes,
            started,
        }
    }

    /// Stops the clients: the requests answered 200, the failed ones, what failed, and the
    /// seconds it ran.
    fn finish(self) -> (u64, u64, Vec<String>, f64) {
        self.stop.store(true, Ordering::Relaxed);
        for lane in self.lanes {
            lane.join().unwrap();
        }
        let errors = self.errors.lock().unwrap().clone();
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
            errors,
            self.started.elapsed().as_secs_f64(),
        )
    }
}

/// Roots in a PEM bundle.
fn roots(pem: &str) -> Vec<String> {
    pem.split("-----END CERTIFICATE-----")
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

fn bundle_of(admin: &Api, cluster: &str) -> String {
    let reply = admin.get(&format!("/v1/clusters/{cluster}"));
    assert_eq!(reply.status, 200, "{}", reply.text);
    reply.json["spec"]["trustBundle"]
        .as_str()
        .expect("trustBundle")
        .to_string()
}

#[test]
fn a_cas_rotation_under_load_fails_no_request() {
    let net = Net::new(135);
    // Short SVIDs, so that the old root may retire seconds after the switch.
    let east = Spec::new("east", 1)
        .toml("[identity]\nsvid_ttl = \"4s\"\n")
        .start(&net);
    let admin = Api::of(&east, Some(&support::admin_token(&net.data_dir("east"))));
    eventually("the mesh to be founded", UP, || {
        (admin.raw("GET", "/v1/status", None).status == 200).then_some(())
    });
    let reply = admin.post_json(
        "/v1/tokens",
        &json!({"role": "join", "description": "rotation test"}),
    );
    assert_eq!(reply.status, 201, "{}", reply.text);
    let token = reply.json["token"].as_str().unwrap().to_string();
    let west = Spec::new("west", 2).join(&east, &token).start(&net);
    let echo = backend::http_echo(&net.ip(2), "west");
    let docs = [
        json!({"apiVersion": "causeway.dev/v1alpha1", "kind": "Service",
            "metadata": {"name": "api", "namespace": "production", "cluster": "west"},
            "spec": {"ports": [{"port": 80, "protocol": "http"}], "endpoints": [echo.to_string()]}}),
        json!({"apiVersion": "causeway.dev/v1alpha1", "kind": "ServiceExport",
            "metadata": {"name": "api", "namespace": "production", "cluster": "west"}, "spec": {}}),
    ];
    let yaml = docs
        .iter()
        .map(|d| serde_yaml_ng::to_string(d).unwrap())
        .collect::<Vec<_>>()
        .join("---\n");
    assert_eq!(admin.apply_yaml(&yaml, false).status, 200);
    eventually("api.production through east", UP, || {
        support::try_http(east.outbound, "GET", "api.production", "/", &[], b"")
            .ok()
            .filter(|r| r.0 == 200)
    });
    let before = roots(&bundle_of(&admin, "east"));
    assert_eq!(before.len(), 1);

    // About 1000 requests a second through east to west, on 8 keep-alive connections.
    let load = Load::start(east.outbound, 8, Duration::from_millis(1));
    std::thread::sleep(Duration::from_secs(1));

    let reply = admin.call("POST", "/v1/clusters/east/ca/rotate", None);
    assert_eq!(reply.status, 200, "{}", reply.text);
    let report = reply.json;
    assert_eq!(report["phase"], "switched", "{report}");
    assert_eq!(
        report["gatewaysTrusting"],
        json!(["spiffe://west.mesh/gateway/west-1"]),
        "{report}"
    );
    let new_root = roots(report["newRoot"].as_str().unwrap());
    assert_eq!(new_root.len(), 1);
    assert_ne!(new_root, before, "the new root is the old one");
    // Until the old root retires, both are in the bundle everywhere.
    let during = roots(&bundle_of(&admin, "east"));
    assert_eq!(during.len(), 2, "{during:?}");
    // A second rotation waits for the first.
    let again = admin.call("POST", "/v1/clusters/east/ca/rotate", None);
    assert_eq!(again.status, 409, "{}", again.text);

    // The old root leaves once the last SVID it signed expired (svid_ttl 4s).
    eventually("the old root to retire", UP, || {
        (roots(&bundle_of(&admin, "east")) == new_root).then_some(())
    });
    std::thread::sleep(Duration::from_secs(2));
    let (ok, failed, errors, elapsed) = load.finish();
    eprintln!(
        "{ok} requests in {elapsed:.1} s ({:.0}/s), {failed} failed",
        ok as f64 / elapsed
    );
    assert_eq!(failed, 0, "failed requests: {errors:?}");
    assert!(
        ok as f64 > 500.0 * elapsed,
        "only {ok} requests in {elapsed:.1} s"
    );

    // The admin API now serves a certificate of the new CA (this client trusts the CA file,
    // which is the new root now), issuance uses it, and the old CA's key is gone.
    let status = admin.get("/v1/status");
    assert_eq!(status.status, 200, "{}", status.text);
    let ca_file = std::fs::read_to_string(support::ca_of(&net.data_dir("east"))).unwrap();
    assert_eq!(roots(&ca_file), new_root);
    assert!(!net.data_dir("east").join("ca-retired").exists());
    assert!(!net.data_dir("east").join("ca-next").exists());
    // A new tunnel (west restarts and dials east afresh) works with the new identities.
    drop(west);
    let west = Spec::new("west", 2).start(&net);
    eventually("api.production after west restarts", UP, || {
        support::try_http(east.outbound, "GET", "api.production", "/", &[], b"")
            .ok()
            .filter(|r| r.0 == 200)
    });
    assert!(east.logs().contains("CA rotation done"), "{}", east.logs());
    drop(west);
}

/// West runs two gateways, each holding west's CA (the second got it through its join): a
/// rotation started on one hands the next CA to the other, both switch, and the old root
/// retires, with no failed request through either.
#[test]
fn a_cluster_with_two_gateways_rotates_its_ca_with_no_failed_request() {
    let net = Net::new(137);
    let east = Spec::new("east", 1).start(&net);
    let admin = Api::of(&east, Some(&support::admin_token(&net.data_dir("east"))));
    eventually("the mesh to be founded", UP, || {
        (admin.raw("GET", "/v1/status", None).status == 200).then_some(())
    });
    let token = |admin: &Api| {
        let reply = admin.post_json(
            "/v1/tokens",
            &json!({"role": "join", "description": "rotation test"}),
        );
        assert_eq!(reply.status, 201, "{}", reply.text);
        reply.json["token"].as_str().unwrap().to_string()
    };
    let short = "[identity]\nsvid_ttl = \"4s\"\n";
    let west1 = Spec::new("west", 2)
        .toml(short)
        .join(&east, &token(&admin))
        .start(&net);
    let west2 = Spec::new("west", 3)
        .named("west-2")
        .toml(short)
        .join(&west1, &token(&admin))
        .start(&net);
    let echo = backend::http_echo(&net.ip(10), "west");
    let docs = [
        json!({"apiVersion": "causeway.dev/v1alpha1", "kind": "Service",
            "metadata": {"name": "api", "namespace": "production", "cluster": "west"},
            "spec": {"ports": [{"port": 80, "protocol": "http"}], "endpoints": [echo.to_string()]}}),
        json!({"apiVersion": "causeway.dev/v1alpha1", "kind": "ServiceExport",
            "metadata": {"name": "api", "namespace": "production", "cluster": "west"}, "spec": {}}),
    ];
    let yaml = docs
        .iter()
        .map(|d| serde_yaml_ng::to_string(d).unwrap())
        .collect::<Vec<_>>()
        .join("---\n");
    assert_eq!(admin.apply_yaml(&yaml, false).status, 200);
    eventually("api.production through east", UP, || {
        support::try_http(east.outbound, "GET", "api.production", "/", &[], b"")
            .ok()
            .filter(|r| r.0 == 200)
    });
    let before = roots(&bundle_of(&admin, "west"));

    // About 500 requests a second through east, spread over west's two gateways.
    let load = Load::start(east.outbound, 4, Duration::from_millis(2));
    std::thread::sleep(Duration::from_secs(1));

    let west_admin = Api::of(&west1, admin.token.as_deref());
    let reply = west_admin.call("POST", "/v1/clusters/west/ca/rotate", None);
    assert_eq!(reply.status, 200, "{}", reply.text);
    let mut trusting: Vec<String> = reply.json["gatewaysTrusting"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    trusting.sort();
    assert_eq!(
        trusting,
        [
            "spiffe://east.mesh/gateway/east-1",
            "spiffe://west.mesh/gateway/west-2"
        ]
    );
    let new_root = roots(reply.json["newRoot"].as_str().unwrap());
    assert_ne!(new_root, before);
    eventually("the old root to retire", UP, || {
        (roots(&bundle_of(&admin, "west")) == new_root).then_some(())
    });
    std::thread::sleep(Duration::from_secs(2));
    let (ok, failed, errors, _) = load.finish();
    eprintln!("{ok} requests, {failed} failed");
    assert_eq!(failed, 0, "failed requests: {errors:?}");
    assert!(ok > 1000, "only {ok} requests");

    // Both of west's gateways switched: each signs with the new CA, and the old key is gone
    // from both.
    for name in ["west", "west-2"] {
        let dir = net.data_dir(name);
        eventually(&format!("{name}'s retired CA deleted"), UP, || {
            (!dir.join("ca-retired").exists()).then_some(())
        });
        let ca = std::fs::read_to_string(support::ca_of(&dir)).unwrap();
        assert_eq!(roots(&ca), new_root, "{name}");
        assert!(!dir.join("ca-next").exists(), "{name}");
    }
    // West-2 restarts (east dials it afresh, verifying its new SVID) and carries west alone.
    drop(west2);
    let west2 = Spec::new("west", 3).named("west-2").toml(short).start(&net);
    drop(west1);
    eventually("api.production through west-2 alone", UP, || {
        support::try_http(east.outbound, "GET", "api.production", "/", &[], b"")
            .ok()
            .filter(|r| r.0 == 200)
    });
    drop(west2);
}
