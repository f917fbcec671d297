//! Harness for black-box tests of the `causeway` binary: real processes on 127.x.y.z
//! loopback addresses, real QUIC, real files. Each test takes its own `127.<net>.0.0/24`
//! so tests run in parallel on Istio's default ports without clashing.
#![allow(dead_code)] // each test binary uses a different part of the harness

pub mod backend;
pub mod rest;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_causeway");

/// Polls `check` until it returns `Some`, or panics naming `what` after `timeout`.
pub fn eventually<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A test's private network: cluster `i` lives on `127.<net>.0.<i>`.
pub struct Net {
    pub net: u8,
    pub dir: tempfile::TempDir,
}

impl Net {
    pub fn new(net: u8) -> Self {
        Self {
            net,
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    pub fn ip(&self, host: u8) -> String {
        format!("127.{}.0.{host}", self.net)
    }

    pub fn data_dir(&self, cluster: &str) -> PathBuf {
        self.dir.path().join(cluster)
    }

    /// Gives gateway `name` of `cluster` the cluster's CA (a copy of `<data_dir>/ca` of its
    /// first gateway), as an operator may instead of joining through one of its gateways.
    pub fn share_ca(&self, cluster: &str, name: &str) {
        self.bundle(cluster);
        let from = self.data_dir(cluster).join("ca");
        let to = self.data_dir(name).join("ca");
        std::fs::create_dir_all(&to).expect("create CA dir");
        for entry in std::fs::read_dir(&from).expect("read CA dir") {
            let entry = entry.expect("CA dir entry");
            std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copy CA file");
        }
    }

    /// Creates (once) the cluster's CA with `causeway bundle` and returns its bundle file.
    pub fn bundle(&self, cluster: &str) -> PathBuf {
        let path = self.dir.path().join(format!("{cluster}-bundle.pem"));
        if !path.exists() {
            let out = Command::new(BIN)
                .args(["bundle", "--cluster", cluster, "--data-dir"])
                .arg(self.data_dir(cluster))
                .output()
                .expect("run causeway bundle");
            assert!(
                out.status.success(),
                "causeway bundle failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            std::fs::write(&path, &out.stdout).expect("write bundle");
        }
        path
    }
}

/// One cluster's gateway, as a config file.
pub struct Spec<'a> {
    pub cluster: &'a str,
    /// The gateway's name when it is not its cluster's first (`<cluster>-1`): it then keeps
    /// its data (and config file) under this name instead of the cluster's.
    pub name: Option<&'a str>,
    pub host: u8,
    /// (cluster, host) of peers to dial.
    pub peers: Vec<(&'a str, u8)>,
    /// Extra TOML appended verbatim (services, tunnel settings...).
    pub extra: String,
    /// A `[store]` section, rendered with the net's addresses.
    pub store: Option<StoreSpec<'a>>,
    /// `--join URL --token T [--join-ca CA]`: join a mesh instead of founding one.
    pub join: Option<Join>,
}

/// How a [`Spec`] joins a mesh.
pub struct Join {
    pub url: String,
    pub token: String,
    /// `--join-ca`: the CA of the cluster whose gateway is joined through.
    pub ca: Option<PathBuf>,
}

/// This gateway's Raft membership: its node id, the founding voters, and the other members as
/// (node id, cluster, host). Members listen on `<their ip>:15012` and present the default
/// gateway identity `spiffe://<cluster>.mesh/gateway/<cluster>-1`.
pub struct StoreSpec<'a> {
    pub node_id: u64,
    pub voters: Vec<u64>,
    pub members: Vec<(u64, &'a str, u8)>,
}

impl<'a> Spec<'a> {
    pub fn new(cluster: &'a str, host: u8) -> Self {
        Self {
            cluster,
            name: None,
            host,
            peers: Vec::new(),
            extra: String::new(),
            store: None,
            join: None,
        }
    }
    /// Joins through `via`'s admin API over HTTPS, trusting the CA of `via`'s cluster. Waits
    /// until `via` is ready first: a gateway that joined a moment ago knows no leader yet, and
    /// refuses tokens it cannot check against the committed state.
    /// Joins through `via` once it is ready, with `--join-ca` its cluster's CA.
    pub fn join(self, via: &Gateway, token: &str) -> Self {
        let ca = via.ca.clone();
        self.join_via(via, token, ca.as_deref())
    }
    /// Joins through `via` over HTTPS with no `--join-ca`: the joiner discovers the mesh's
    /// CAs, proven by the token.
    #[allow(dead_code)] // not every test crate uses it
    pub fn join_discovering(self, via: &Gateway, token: &str) -> Self {
        assert!(via.ca.is_some(), "discovery is for HTTPS admin APIs");
        let url = format!("https://{}", via.admin);
        self.join_via(via, token, None).join_url(&url, token, None)
    }
    fn join_via(self, via: &Gateway, token: &str, ca: Option<&Path>) -> Self {
        eventually(
            "the gateway joined through to be ready",
            Duration::from_secs(30),
            || matches!(via.try_admin("GET", "/readyz", &[], b""), Ok((200, _, _))).then_some(()),
        );
        let scheme = if via.ca.is_some() { "https" } else { "http" };
        self.join_url(&format!("{scheme}://{}", via.admin), token, ca)
    }
    /// Joins through `url` as given, with `--join-ca CA` if there is one.
    pub fn join_url(mut self, url: &str, token: &str, ca: Option<&Path>) -> Self {
        self.join = Some(Join {
            url: url.to_string(),
            token: token.to_string(),
            ca: ca.map(Path::to_path_buf),
        });
        self
    }
    /// Another gateway of the cluster, named `name`, with its own data dir. It gets the
    /// cluster's CA by joining through one of the cluster's gateways (or a copy, see
    /// [`Net::share_ca`]).
    pub fn named(mut self, name: &'a str) -> Self {
        self.name = Some(name);
        self
    }
    /// Where this gateway keeps its data: its cluster's dir, or its own name's.
    fn dir_name(&self) -> &'a str {
        self.name.unwrap_or(self.cluster)
    }
    pub fn store(mut self, node_id: u64, voters: &[u64], members: &[(u64, &'a str, u8)]) -> Self {
        self.store = Some(StoreSpec {
            node_id,
            voters: voters.to_vec(),
            members: members.to_vec(),
        });
        self
    }
    pub fn peer(mut self, cluster: &'a str, host: u8) -> Self {
        self.peers.push((cluster, host));
        self
    }
    pub fn http_service(mut self, name: &str, endpoint: SocketAddr) -> Self {
        self.extra += &service_toml(name, endpoint, 80, "http");
        self
    }
    pub fn tcp_service(mut self, name: &str, endpoint: SocketAddr, port: u16) -> Self {
        self.extra += &service_toml(name, endpoint, port, "tcp");
        self
    }
    pub fn toml(mut self, text: &str) -> Self {
        self.extra += text;
        self
    }

    pub fn config(&self, net: &Net) -> String {
        let mut toml = format!(
            "cluster = \"{}\"\ndata_dir = \"{}\"\nbind = \"{}\"\n",
            self.cluster,
            net.data_dir(self.dir_name()).display(),
            net.ip(self.host)
        );
        if let Some(name) = self.name {
            toml += &format!("name = \"{name}\"\n");
        }
        // Tests notice dead peers quickly; production defaults are 1s/5s.
        if !self.extra.contains("[tunnel]") {
            toml += "[tunnel]\nkeep_alive = \"300ms\"\nidle_timeout = \"2s\"\nreconnect_backoff_max = \"500ms\"\nconnect_timeout = \"1s\"\n";
        }
        for (peer, host) in &self.peers {
            toml += &format!(
                "\n[[peers]]\ncluster = \"{peer}\"\naddress = \"{}:15443\"\ntrust_bundle = \"{}\"\n",
                net.ip(*host),
                net.bundle(peer).display()
            );
        }
        if let Some(store) = &self.store {
            toml += &format!(
                "\n[store]\nnode_id = {}\nvoters = {:?}\n",
                store.node_id, store.voters
            );
            for (id, cluster, host) in &store.members {
                toml += &format!(
                    "[[store.members]]\nid = {id}\naddress = \"{}:15012\"\ngateway = \"spiffe://{cluster}.mesh/gateway/{cluster}-1\"\n",
                    net.ip(*host)
                );
            }
        }
        toml + "\n" + &self.extra
    }

    pub fn start(&self, net: &Net) -> Gateway {
        self.start_with_env(net, &[])
    }

    /// [`Spec::start`] with extra environment, e.g. another `CAUSEWAY_LOG` filter.
    pub fn start_with_env(&self, net: &Net, env: &[(&str, &str)]) -> Gateway {
        let args = self.args(net);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut gw = Gateway::start(&args, env);
        gw.token_dir = Some(net.dir.path().to_path_buf());
        // Its admin certificate comes from its own cluster's CA.
        let plain = self.extra.contains("tls = false");
        gw.ca = (!plain).then(|| ca_of(&net.data_dir(self.cluster)));
        gw
    }

    /// Starts the gateway without waiting for it to be ready (for gateways expected to fail).
    pub fn spawn(&self, net: &Net) -> Spawned {
        let args = self.args(net);
        let child = Command::new(BIN)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn causeway");
        Spawned { child }
    }

    fn args(&self, net: &Net) -> Vec<String> {
        // Every cluster's CA must exist before a peer can trust it.
        net.bundle(self.cluster);
        let path = net.dir.path().join(format!("{}.toml", self.dir_name()));
        std::fs::write(&path, self.config(net)).expect("write config");
        let mut args = vec![
            "gateway".to_string(),
            "--config".to_string(),
            path.to_str().expect("utf-8 path").to_string(),
        ];
        if let Some(join) = &self.join {
            args.extend([
                "--join".to_string(),
                join.url.clone(),
                "--token".to_string(),
                join.token.clone(),
            ]);
            if let Some(ca) = &join.ca {
                args.extend([
                    "--join-ca".to_string(),
                    ca.to_str().expect("utf-8 path").to_string(),
                ]);
            }
        }
        args
    }
}

/// A `causeway` process started without waiting for readiness.
pub struct Spawned {
    child: Child,
}

impl Spawned {
    /// Waits for the process to exit; returns its status and everything it wrote to stderr.
    pub fn wait_exit_output(mut self, timeout: Duration) -> (ExitStatus, String) {
        let status = eventually("the process to exit", timeout, || {
            self.child.try_wait().expect("try_wait")
        });
        let mut err = String::new();
        if let Some(mut stderr) = self.child.stderr.take() {
            let _ = stderr.read_to_string(&mut err);
        }
        (status, err)
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The first admin token of a mesh founded with data in `data_dir` (written once the founding
/// entry applied).
pub fn admin_token(data_dir: &Path) -> String {
    let path = data_dir.join("admin-token");
    eventually("the admin token file", Duration::from_secs(30), || {
        std::fs::read_to_string(&path)
            .ok()
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty())
    })
}

fn service_toml(name: &str, endpoint: SocketAddr, port: u16, protocol: &str) -> String {
    let (svc, ns) = name.split_once('.').expect("service is name.namespace");
    format!(
        "\n[[services]]\nname = \"{svc}\"\nnamespace = \"{ns}\"\nendpoints = [\"{endpoint}\"]\nports = [{{ port = {port}, protocol = \"{protocol}\" }}]\n"
    )
}

/// A running `causeway` process; killed when dropped.
pub struct Gateway {
    child: Child,
    log: Arc<Mutex<String>>,
    /// Copies the process's stderr into `log`.
    reader: std::thread::JoinHandle<()>,
    pub tunnel: SocketAddr,
    pub outbound: SocketAddr,
    pub dns: SocketAddr,
    pub admin: SocketAddr,
    /// The workload mTLS listener (15008).
    pub workload: SocketAddr,
    /// The Raft listener, when the gateway runs a store.
    pub raft: Option<SocketAddr>,
    /// Where to look for an admin token (`*/admin-token` below it) for `/metrics`: any founded
    /// mesh member's token works on every member.
    pub token_dir: Option<PathBuf>,
    /// The CA (PEM file) of this gateway's cluster, which signs its admin certificate; `None`
    /// for a gateway whose admin API speaks plain HTTP.
    pub ca: Option<PathBuf>,
}

/// The CA certificate of the cluster whose gateway keeps its data in `data_dir`.
pub fn ca_of(data_dir: &Path) -> PathBuf {
    data_dir.join("ca").join("ca.pem")
}

impl Gateway {
    /// Spawns `causeway ARGS` and waits for its "gateway ready" log line.
    pub fn start(args: &[&str], env: &[(&str, &str)]) -> Self {
        Self::start_in(args, env, None)
    }

    pub fn start_in(args: &[&str], env: &[(&str, &str)], cwd: Option<&Path>) -> Self {
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .env("CAUSEWAY_LOG", "info,gateway=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        if let Some(dir) = cwd {
            cmd.current_dir(dir);
        }
        let mut child = cmd.spawn().expect("spawn causeway");
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().expect("stderr");
        let sink = log.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut log = sink.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        let mut gw = Gateway {
            child,
            log,
            reader,
            tunnel: unspecified(),
            outbound: unspecified(),
            dns: unspecified(),
            admin: unspecified(),
            workload: unspecified(),
            raft: None,
            token_dir: cwd.map(Path::to_path_buf),
            ca: None,
        };
        // Its data dir: as CAUSEWAY_DATA_DIR says, else ./causeway-data (no test combines
        // `start_in` with a config file or --data-dir).
        let cwd_dir = cwd.map(Path::to_path_buf).unwrap_or_default();
        let data_dir = env
            .iter()
            .find(|(k, _)| *k == "CAUSEWAY_DATA_DIR")
            .map(|(_, v)| cwd_dir.join(v))
            .unwrap_or_else(|| cwd_dir.join("causeway-data"));
        gw.ca = Some(ca_of(&data_dir));
        let line = eventually("the gateway ready line", Duration::from_secs(30), || {
            if let Ok(Some(status)) = gw.child.try_wait() {
                panic!(
                    "causeway exited with {status} before it was ready:\n{}",
                    gw.logs()
                );
            }
            gw.logs()
                .lines()
                .find(|l| l.contains("gateway ready"))
                .map(str::to_string)
        });
        gw.tunnel = field(&line, "tunnel");
        gw.outbound = field(&line, "outbound");
        gw.dns = field(&line, "dns");
        gw.admin = field(&line, "admin");
        gw.workload = field(&line, "workload");
        gw.raft = line.contains(" raft=").then(|| field(&line, "raft"));
        gw
    }

    pub fn logs(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.pid().to_string()])
            .status()
            .expect("run kill")
            .success();
        assert!(ok, "kill -{sig} failed");
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits for the process to exit, and for its last log lines to be read.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let status = eventually("the process to exit", timeout, || {
            self.child.try_wait().expect("try_wait")
        });
        // The reader ends at the pipe's end, which the exit just closed.
        eventually("its stderr to be read", Duration::from_secs(10), || {
            self.reader.is_finished().then_some(())
        });
        status
    }

    /// One request to the admin API: HTTPS verified by [`Gateway::ca`], or plain HTTP for a
    /// gateway without one.
    pub fn try_admin(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> std::io::Result<HttpResponse> {
        match &self.ca {
            Some(ca) => try_https(self.admin, ca, method, "admin", path, headers, body),
            None => try_http(self.admin, method, "admin", path, headers, body),
        }
    }

    /// `GET path` on the admin API without a token (`/healthz`, `/readyz`).
    pub fn admin_get(&self, path: &str) -> HttpResponse {
        self.try_admin("GET", path, &[], b"")
            .unwrap_or_else(|e| panic!("GET {}{path}: {e}", self.admin))
    }

    /// `/metrics`, with an admin token of this gateway's mesh (see [`Gateway::token`]).
    pub fn metrics(&self) -> String {
        let token = self.token();
        let auth = format!("Bearer {token}");
        let (status, _, body) = self
            .try_admin("GET", "/metrics", &[("authorization", &auth)], b"")
            .unwrap_or_else(|e| panic!("GET {}/metrics: {e}", self.admin));
        assert_eq!(status, 200, "metrics: {body}");
        body
    }

    /// An admin token this gateway accepts: of the `admin-token` files below `token_dir` (each
    /// founded mesh writes one), the first that `/v1/status` accepts. Separate meshes in one
    /// test each have their own.
    pub fn token(&self) -> String {
        let dir = self
            .token_dir
            .clone()
            .expect("this gateway has no token_dir to find an admin token in");
        eventually(
            "an admin token this gateway accepts",
            Duration::from_secs(30),
            || {
                let mut files = Vec::new();
                find_tokens(&dir, 3, &mut files);
                files.into_iter().find(|token| {
                    let auth = format!("Bearer {token}");
                    matches!(
                        self.try_admin("GET", "/v1/status", &[("authorization", &auth)], b""),
                        Ok((200, _, _))
                    )
                })
            },
        )
    }

    /// The value of the first sample whose line starts with `name{` and contains every label.
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        metric_value(&self.metrics(), name, labels)
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The sum of every sample of `name` whose labels include `labels` (0 when none does).
#[allow(dead_code)] // not every test crate uses it
pub fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .find(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

fn unspecified() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 0))
}

fn field(line: &str, name: &str) -> SocketAddr {
    let start = line
        .find(&format!(" {name}="))
        .unwrap_or_else(|| panic!("no {name}= in {line:?}"))
        + name.len()
        + 2;
    let value = line[start..].split_whitespace().next().unwrap_or_default();
    value
        .parse()
        .unwrap_or_else(|_| panic!("bad {name} address {value:?} in {line:?}"))
}

fn find_tokens(dir: &Path, depth: u8, out: &mut Vec<String>) {
    if let Ok(t) = std::fs::read_to_string(dir.join("admin-token")) {
        let t = t.trim().to_string();
        if !t.is_empty() {
            out.push(t);
        }
    }
    if depth == 0 {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut dirs: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    for d in dirs {
        find_tokens(&d, depth - 1, out);
    }
}

/// Status, headers (names lowercased) and body of an HTTP response.
pub type HttpResponse = (u16, Vec<(String, String)>, String);

/// One HTTP/1.1 request with `Connection: close`.
pub fn http_get(addr: SocketAddr, host: &str, path: &str) -> HttpResponse {
    http_request(addr, "GET", host, path, &[], b"")
}

pub fn http_request(
    addr: SocketAddr,
    method: &str,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> HttpResponse {
    try_http(addr, method, host, path, headers, body)
        .unwrap_or_else(|e| panic!("HTTP {method} {addr}{path}: {e}"))
}

pub fn try_http(
    addr: SocketAddr,
    method: &str,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<HttpResponse> {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    exchange(s, method, host, path, headers, body)
}

/// [`try_http`] over TLS: the server's certificate must chain to the CA in `ca_pem` (a PEM
/// file) and name `addr`'s IP address.
pub fn try_https(
    addr: SocketAddr,
    ca_pem: &Path,
    method: &str,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<HttpResponse> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName};

    let pem = std::fs::read(ca_pem)
        .map_err(|e| std::io::Error::other(format!("{}: {e}", ca_pem.display())))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| std::io::Error::other(format!("{}: {e}", ca_pem.display())))?;
        roots.add(cert).map_err(std::io::Error::other)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(std::io::Error::other)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = ServerName::IpAddress(addr.ip().into());
    let conn =
        rustls::ClientConnection::new(Arc::new(config), name).map_err(std::io::Error::other)?;
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    exchange(
        rustls::StreamOwned::new(conn, s),
        method,
        host,
        path,
        headers,
        body,
    )
}

pub fn exchange(
    mut s: impl Read + Write,
    method: &str,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<HttpResponse> {
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req += &format!("{k}: {v}\r\n");
    }
    req += "\r\n";
    s.write_all(req.as_bytes())?;
    s.write_all(body)?;
    s.flush()?;
    let mut raw = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            // A TLS peer that closes without close_notify, after a whole `connection: close`
            // answer, has still answered.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !raw.is_empty() => break,
            Err(e) => return Err(e),
        }
    }
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, rest) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("no HTTP head in {text:?}")))?;
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line in {head:?}")))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    let body = if chunked {
        dechunk(rest)
    } else {
        rest.to_string()
    };
    Ok((status, headers, body))
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// Whether something accepts TCP connections at `addr`.
pub fn accepts(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok()
}
