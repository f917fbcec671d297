//! `causeway demo` works as its tour says, and Ctrl-C leaves nothing running.
//! It runs on `--net 127.77.0` (the default ports of 127.77.0.1-3), so a demo running on the
//! machine's 127.0.0.x does not get in its way.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::{BIN, accepts, eventually, http_get};

#[test]
fn the_demo_federates_three_clusters_and_stops_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    // The demo writes a CLI context; keep it out of the real home.
    let config_home = tempfile::tempdir().unwrap();
    let mut child = Command::new(BIN)
        .args(["demo", "--net", "127.77.0", "--dir"])
        .arg(dir.path())
        .env("XDG_CONFIG_HOME", config_home.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = Arc::new(Mutex::new(String::new()));
    let sink = out.clone();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            sink.lock().unwrap().push_str(&(line + "\n"));
        }
    });
    eventually("the tour", Duration::from_secs(60), || {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("demo exited early with {status}: {}", out.lock().unwrap());
        }
        out.lock().unwrap().contains("Press Ctrl-C").then_some(())
    });
    let tour = out.lock().unwrap().clone();
    assert!(
        tour.contains("curl -H 'Host: echo.demo' http://127.77.0.1:15001/"),
        "{tour}"
    );

    // The tour's first command, as printed: answered by west (v1) and edge (v2) in turn.
    let east: SocketAddr = "127.77.0.1:15001".parse().unwrap();
    let versions: Vec<String> = (0..4)
        .map(|_| {
            let (status, _, body) = http_get(east, "echo.demo", "/");
            assert_eq!(status, 200, "{body}");
            let json: serde_json::Value = serde_json::from_str(&body).unwrap();
            json["version"].as_str().unwrap().to_string()
        })
        .collect();
    assert!(
        versions.contains(&"v1".into()) && versions.contains(&"v2".into()),
        "{versions:?}"
    );
    let (_, _, body) = http_get(east, "echo.demo.edge.mesh", "/hello");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (json["cluster"].as_str(), json["path"].as_str()),
        (Some("edge"), Some("/hello"))
    );
    assert_eq!(json["headers"]["x-causeway-source-cluster"], "east");

    // The TCP listeners follow the mesh in a task of their own.
    let mut tcp = eventually("east's TCP port 9000", Duration::from_secs(20), || {
        TcpStream::connect_timeout(&"127.77.0.1:9000".parse().unwrap(), Duration::from_secs(5)).ok()
    });
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    tcp.write_all(b"hello over the tunnel\n").unwrap();
    let mut got = [0u8; 22];
    tcp.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"hello over the tunnel\n");
    drop(tcp);

    // The CLI works from another terminal with no flags: the demo wrote its context.
    let cli = |args: &[&str]| {
        let out = Command::new(BIN)
            .args(args)
            .env("XDG_CONFIG_HOME", config_home.path())
            .env_remove("CAUSEWAY_SERVER")
            .env_remove("CAUSEWAY_TOKEN")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "causeway {args:?}: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        text
    };
    let status: serde_json::Value = serde_json::from_str(&cli(&["status", "-o", "json"])).unwrap();
    let voters = status["members"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["role"] == "voter")
        .count();
    assert_eq!(voters, 3, "three clusters, one voter each: {status}");
    let services = cli(&["get", "services"]);
    for cluster in ["west", "edge"] {
        assert!(services.contains(cluster), "{services}");
    }
    let example = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/istio/canary-split-virtualservice.yaml"
    );
    assert!(tour.contains(example), "{tour}");
    let applied = cli(&["apply", "-f", example]);
    assert!(applied.contains("api-traffic-split"), "{applied}");
    let got = cli(&["get", "vs", "-n", "production", "-o", "json"]);
    assert!(got.contains("\"canary\""), "{got}");

    // The tour's traffic policy, applied as printed, takes effect at east.
    let policy_file = |name: &str| {
        tour.split_whitespace()
            .find(|w| w.ends_with(&format!("/policy/{name}")))
            .unwrap_or_else(|| panic!("the tour names no {name}: {tour}"))
            .to_string()
    };
    let version = |headers: &[(&str, &str)], path: &str| {
        let (status, _, body) = support::http_request(east, "GET", "echo.demo", path, headers, b"");
        let json: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        (status, json["version"].as_str().unwrap_or("").to_string())
    };
    cli(&["apply", "-f", &policy_file("subsets.yaml")]);
    cli(&["apply", "-f", &policy_file("header-routing.yaml")]);
    eventually(
        "header routing in the demo",
        Duration::from_secs(20),
        || (version(&[("x-canary", "true")], "/") == (200, "v2".to_string())).then_some(()),
    );
    for _ in 0..10 {
        assert_eq!(version(&[("x-canary", "true")], "/"), (200, "v2".into()));
        assert_eq!(version(&[], "/"), (200, "v1".into()));
    }
    // Retries hide a failing v2: every call succeeds, answered by v1.
    cli(&["apply", "-f", &policy_file("retries.yaml")]);
    eventually("retries in the demo", Duration::from_secs(20), || {
        (0..6)
            .all(|_| version(&[], "/?fail-version=v2").0 == 200)
            .then_some(())
    });
    for _ in 0..20 {
        assert_eq!(version(&[], "/?fail-version=v2"), (200, "v1".into()));
    }

    let ok = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
    let status = eventually("the demo to stop", Duration::from_secs(20), || {
        child.try_wait().unwrap()
    });
    assert!(status.success(), "{status}: {}", out.lock().unwrap());
    assert!(out.lock().unwrap().contains("nothing is left running"));
    for addr in [
        "127.77.0.1:15001",
        "127.77.0.2:15000",
        "127.77.0.3:18080",
        "127.77.0.1:9000",
    ] {
        assert!(
            !accepts(addr.parse().unwrap()),
            "{addr} still accepts connections"
        );
    }
}
