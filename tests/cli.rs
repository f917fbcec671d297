//! The binary's own surface: config errors, defaults with no file, overrides, port 0.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;

use support::{BIN, Gateway, eventually};

#[test]
fn every_bad_config_field_is_reported_at_once_and_nothing_starts() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "cluster = \"East\"\nbogus = 1\n[tunnel]\nkeep_alive = \"soon\"\n[[peers]]\ncluster = \"west\"\naddress = \"nowhere\"\ntrust_bundle = \"w.pem\"\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["gateway", "--config"])
        .arg(&path)
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for path in [
        "cluster:",
        "bogus:",
        "tunnel.keep_alive:",
        "peers[0].address:",
    ] {
        assert!(stderr.contains(path), "{path} missing from:\n{stderr}");
    }
    assert!(
        !dir.path().join("causeway-data").exists(),
        "a refused config still created state"
    );

    let out = Command::new(BIN)
        .args(["gateway", "--config", "/nonexistent/causeway.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/causeway.toml"));
}

#[test]
fn with_no_file_a_single_gateway_starts_with_its_data_in_the_current_folder() {
    let dir = tempfile::tempdir().unwrap();
    let mut gw = Gateway::start_in(&["gateway", "--bind", "127.41.0.1"], &[], Some(dir.path()));
    // Istio's default ports on the chosen address.
    assert_eq!(gw.tunnel.to_string(), "127.41.0.1:15443");
    assert_eq!(gw.outbound.to_string(), "127.41.0.1:15001");
    assert_eq!(gw.dns.to_string(), "127.41.0.1:15053");
    assert_eq!(gw.admin.to_string(), "127.41.0.1:15000");
    let key = dir.path().join("causeway-data/ca/ca-key.pem");
    let mode = std::fs::metadata(&key)
        .expect("CA key in ./causeway-data")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let logs = gw.logs();
    assert!(
        logs.contains("spiffe://local.mesh/gateway/local-1"),
        "{logs}"
    );
    assert!(logs.contains("effective configuration"), "{logs}");
    assert!(!logs.contains("BEGIN PRIVATE KEY"), "a key was logged");

    assert_eq!(gw.admin_get("/healthz").0, 200);
    // Ready once its one-member store has elected itself and caught up.
    eventually("readiness", Duration::from_secs(20), || {
        let (status, _, body) = gw.admin_get("/readyz");
        (status == 200 && body == "ready\n").then_some(())
    });
    // It founded a mesh of its own: the first admin token is a secret file, never logged.
    let token_file = dir.path().join("causeway-data/admin-token");
    let token = support::admin_token(&dir.path().join("causeway-data"));
    let mode = std::fs::metadata(&token_file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    assert!(!gw.logs().contains(&token), "the admin token was logged");
    gw.signal("TERM");
    assert!(gw.wait_exit(Duration::from_secs(10)).success());
}

#[test]
fn port_zero_works_and_flags_beat_environment() {
    let args = [
        "gateway",
        "--tunnel-addr",
        "127.41.0.2:0",
        "--outbound-addr",
        "127.41.0.2:0",
        "--dns-addr",
        "127.41.0.2:0",
        "--admin-addr",
        "127.41.0.2:0",
        "--raft-addr",
        "127.41.0.2:0",
        "--cluster",
        "south",
    ];
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let gw = Gateway::start_in(
        &args,
        &[
            ("CAUSEWAY_CLUSTER", "north"),
            ("CAUSEWAY_DATA_DIR", data.to_str().unwrap()),
        ],
        Some(dir.path()),
    );
    let raft = gw.raft.expect("the ready line names the Raft listener");
    assert_eq!(raft.ip().to_string(), "127.41.0.2");
    for addr in [gw.tunnel, gw.outbound, gw.dns, gw.admin, raft] {
        assert_ne!(addr.port(), 0, "port 0 logged instead of the bound port");
    }
    assert_eq!(gw.admin_get("/healthz").0, 200);
    assert!(
        gw.logs().contains("spiffe://south.mesh/gateway/south-1"),
        "{}",
        gw.logs()
    );
    assert!(data.join("ca/ca.pem").exists(), "CAUSEWAY_DATA_DIR ignored");
    // The gateway serves its own metrics registry.
    let metrics = gw.metrics();
    assert!(
        metrics.contains("causeway_svid_expiry_timestamp_seconds"),
        "{metrics}"
    );
}

#[test]
fn help_names_the_commands() {
    let out = Command::new(BIN).arg("--help").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for cmd in ["gateway", "demo", "bundle"] {
        assert!(text.contains(cmd), "{cmd} missing from --help:\n{text}");
    }
    let out = Command::new(BIN)
        .args(["gateway", "--help"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("CAUSEWAY_CLUSTER"), "{text}");
}
