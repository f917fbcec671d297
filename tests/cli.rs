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

/// `causeway svid issue` against a real gateway: the key is made and kept here (0600 from
/// creation), the certificate names the workload and chains to the bundle written beside it,
/// an existing key is replaced only with --force, and only admins get SVIDs.
#[test]
fn svid_issue_writes_a_key_and_an_svid_of_the_gateways_cluster() {
    use federation::identity::{TrustBundles, TrustDomain, TrustStore, fuzzing, peer_spiffe_id};
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};

    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start_in(&["gateway", "--bind", "127.41.0.3"], &[], Some(dir.path()));
    let data = dir.path().join("causeway-data");
    let token = support::admin_token(&data);
    let ca = data.join("ca/ca.pem");
    let work = dir.path().join("work");
    std::fs::create_dir(&work).unwrap();
    let config_home = tempfile::tempdir().unwrap();
    let server = format!("https://{}", gw.admin);
    let cli = |token: &str, args: &[&str]| {
        let out = Command::new(BIN)
            .args(args)
            .args(["--server", &server, "--token", token, "--ca-file"])
            .arg(&ca)
            .current_dir(&work)
            .env("XDG_CONFIG_HOME", config_home.path())
            .env_remove("CAUSEWAY_SERVER")
            .env_remove("CAUSEWAY_TOKEN")
            .env_remove("CAUSEWAY_CA_FILE")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        (out.status.code(), stdout, stderr)
    };
    let issue = [
        "svid",
        "issue",
        "--namespace",
        "shop",
        "--service-account",
        "web",
    ];

    let (code, stdout, stderr) = cli(&token, &issue);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    let out_dir = work.join("svid-shop-web");
    let (key, cert, bundle) = (
        out_dir.join("key.pem"),
        out_dir.join("cert.pem"),
        out_dir.join("bundle.pem"),
    );
    let id = "spiffe://local.mesh/ns/shop/sa/web";
    for expected in [
        id,
        "Not after:",
        "svid-shop-web/key.pem",
        "svid-shop-web/cert.pem",
    ] {
        assert!(
            stdout.contains(expected),
            "{expected} missing from:\n{stdout}"
        );
    }
    assert!(stdout.contains("svid-shop-web/bundle.pem"), "{stdout}");
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&key), 0o600);
    assert_eq!(mode(&out_dir), 0o700);

    // The certificate names the workload, chains to bundle.pem (the cluster's CA), is accepted
    // by the gateways' own SPIFFE verifier, and certifies the key written beside it.
    let bundle_pem = std::fs::read_to_string(&bundle).unwrap();
    assert_eq!(bundle_pem, std::fs::read_to_string(&ca).unwrap());
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(peer_spiffe_id(&chain).unwrap().as_str(), id);
    let mut bundles = TrustBundles::new();
    bundles
        .insert_pem(TrustDomain::parse("local.mesh").unwrap(), &bundle_pem)
        .unwrap();
    fuzzing::verify_client_chain(&TrustStore::new(bundles), &chain, UnixTime::now()).unwrap();
    let key_matches = |key: &std::path::Path| {
        let der = PrivateKeyDer::from_pem_file(key).unwrap();
        let signer = rustls::crypto::ring::sign::any_supported_type(&der).unwrap();
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert)
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        rustls::sign::CertifiedKey::new(chain, signer).keys_match()
    };
    key_matches(&key).unwrap();

    // The gateway logged who issued what, naming the token by its id only.
    let token_id = token
        .strip_prefix("cw_")
        .unwrap()
        .split('_')
        .next()
        .unwrap();
    eventually("the issuance in the log", Duration::from_secs(10), || {
        gw.logs()
            .lines()
            .find(|l| l.contains("issued a workload SVID") && l.contains(id))
            .map(str::to_string)
    });
    let logs = gw.logs();
    assert!(logs.contains(token_id), "{logs}");
    assert!(!logs.contains(&token), "the token was logged");
    assert!(!logs.contains("BEGIN PRIVATE KEY"), "a key was logged");

    // An existing key stays unless --force.
    let before = std::fs::read(&key).unwrap();
    let (code, stdout, stderr) = cli(&token, &issue);
    assert_eq!(code, Some(2), "{stdout}{stderr}");
    assert!(
        stderr.contains("key.pem exists") && stderr.contains("--force"),
        "{stderr}"
    );
    assert_eq!(std::fs::read(&key).unwrap(), before);
    let forced = [&issue[..], &["--force", "--ttl", "1h"]].concat();
    let (code, stdout, stderr) = cli(&token, &forced);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert_ne!(std::fs::read(&key).unwrap(), before, "a new key");
    assert_eq!(mode(&key), 0o600);
    key_matches(&key).unwrap();

    // Usage errors are caught here; refusals come from the server; either way nothing is
    // written.
    let elsewhere = ["--out-dir", "other"];
    let (code, _, stderr) = cli(
        &token,
        &[&issue[..], &["--ttl", "48h"], &elsewhere].concat(),
    );
    assert_eq!(code, Some(2), "{stderr}");
    let (code, stdout, _) = cli(&token, &["token", "create", "--role", "operator"]);
    assert_eq!(code, Some(0));
    let operator = stdout.trim().to_string();
    let (code, _, stderr) = cli(&operator, &[&issue[..], &elsewhere].concat());
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("403 forbidden"), "{stderr}");
    assert!(!work.join("other").exists());
}
