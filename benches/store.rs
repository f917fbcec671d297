//! What a replicated write costs: a three-member Causeway store group (sled on the real disk,
//! gRPC over mutual TLS) against a three-member etcd 3.4 group, in the same run.
//!
//! ```text
//!   writers (tokio tasks) ──propose──> leader Node ──gRPC+mTLS──> two followers   (this process)
//!   writers (tokio tasks) ──HTTP/1.1 POST /v3/kv/put──> etcd leader ──> two etcd  (child processes)
//! ```
//!
//! Two workloads per system, each closed loop on ~256-byte values: one writer doing sequential
//! writes (latency percentiles, writes/s) and 64 concurrent writers (latency, writes/s). It prints
//! numbers, ratios and whether the issue's targets are met; it never fails on timing. A nonzero
//! exit means the setup (or a whole measurement) failed. If no `etcd` binary is on `PATH`, the
//! baseline is skipped with a note and Causeway's numbers are still reported.
//!
//! Knobs (environment): `BENCH_SECONDS` (per phase, default 5), `BENCH_WRITERS` (concurrent
//! writers of the second phase, default 64).
//!
//! `cargo bench` passes `--bench`; without it (`cargo test --benches` or `--all-targets`) the
//! bench does a quick smoke run instead, so it cannot rot but does not slow test runs down.

#[path = "common/mod.rs"]
mod common;
use common::{Outcomes, cpu_ticks, env_or, ms, percentile, ratio};

use std::collections::{BTreeMap, HashMap};
use std::net::{SocketAddr, TcpListener as StdTcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use api::raft::{ALPN, ClientTls, GrpcTransport, PeerTable, RaftTransportError, serve};
use bytes::Bytes;
use federation::identity::{
    CertificateAuthority, SpiffeId, TrustBundles, TrustDomain, client_config_with_alpn,
    server_config_with_alpn,
};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use store::storage::SledStore;
use store::{Node, NodeConfig, Role, StateMachine};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};
use tokio::task::{JoinHandle, JoinSet};

/// Bytes of each written value.
const VALUE_BYTES: usize = 256;
/// Each writer cycles through this many keys of its own, so the state stays small.
const KEYS_PER_WRITER: u64 = 128;
/// Each phase first runs this long (at most its own length) unmeasured.
const WARMUP: Duration = Duration::from_secs(1);
const SETUP_TIMEOUT: Duration = Duration::from_secs(30);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const SVID_TTL: Duration = Duration::from_secs(3600);
/// One trust domain per member, as in a real federation (and api's Raft transport tests).
const DOMAINS: [(u64, &str); 3] = [(1, "east"), (2, "west"), (3, "north")];

/// Targets from the issue.
const TARGET_P50: Duration = Duration::from_millis(2);

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("store bench: setup or measurement failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    let settings = Settings::from_env()?;
    // On the real disk (not a tmpfs /tmp): the target directory's filesystem is the project's.
    let scratch = scratch_dir()?;
    let machine = Machine::probe(scratch.path());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("runtime")?;
    let report = runtime.block_on(async {
        eprintln!("store bench: starting the Causeway group");
        let causeway = measure_causeway(&settings, &machine, scratch.path()).await?;
        let etcd = match find_etcd() {
            Some(binary) => {
                eprintln!(
                    "store bench: starting the etcd group ({})",
                    binary.display()
                );
                let measured = measure_etcd(&settings, &machine, &binary, scratch.path()).await?;
                Baseline::Measured(Box::new(measured))
            }
            None => Baseline::Skipped(
                "no `etcd` binary on PATH (Debian/Ubuntu: `apt-get install etcd-server`; \
                 or put etcd 3.4's release binary on PATH)"
                    .into(),
            ),
        };
        anyhow::Ok(Report { causeway, etcd })
    })?;
    print_report(&machine, &settings, &report);
    Ok(())
}

/// A tempdir next to the build output if possible (a real disk), else the system's.
fn scratch_dir() -> anyhow::Result<tempfile::TempDir> {
    let near_target = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_path_buf));
    if let Some(dir) = near_target
        && let Ok(tmp) = tempfile::Builder::new()
            .prefix("store-bench-")
            .tempdir_in(dir)
    {
        return Ok(tmp);
    }
    tempfile::Builder::new()
        .prefix("store-bench-")
        .tempdir()
        .context("tempdir")
}

/// The bench's knobs, from the environment.
struct Settings {
    /// Run by `cargo test`: only check that every phase works.
    smoke: bool,
    phase: Duration,
    warmup: Duration,
    writers: usize,
}

impl Settings {
    fn from_env() -> anyhow::Result<Self> {
        let smoke = !std::env::args().any(|a| a == "--bench");
        let seconds: f64 = env_or("BENCH_SECONDS", if smoke { 0.2 } else { 5.0 })?;
        ensure!(
            seconds.is_finite() && seconds > 0.0,
            "BENCH_SECONDS must be positive"
        );
        let writers: usize = env_or("BENCH_WRITERS", 64)?;
        ensure!(writers > 0, "BENCH_WRITERS must be above 0");
        let phase = Duration::from_secs_f64(seconds);
        Ok(Self {
            smoke,
            phase,
            warmup: phase.min(WARMUP),
            writers,
        })
    }
}

/// What the numbers were measured on; a busy or small machine, or a slow disk, explains a lot.
struct Machine {
    cpus: usize,
    model: String,
    kernel: String,
    load: String,
    /// `df -PT` of the scratch directory: device, filesystem type, mount point.
    disk: String,
    /// The block device's name in /proc/diskstats, if the filesystem sits on one.
    device: Option<String>,
}

impl Machine {
    fn probe(dir: &Path) -> Self {
        let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
        let model = read("/proc/cpuinfo")
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|l| l.split_once(':'))
            .map_or_else(|| "unknown CPU".into(), |(_, m)| m.trim().to_string());
        let df = Command::new("df")
            .arg("-PT")
            .arg(dir)
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.lines().nth(1).map(str::to_owned));
        let fields: Vec<String> = df
            .as_deref()
            .unwrap_or_default()
            .split_whitespace()
            .map(str::to_owned)
            .collect();
        let disk = match fields.as_slice() {
            [dev, fstype, .., mount] => {
                // What the kernel says of the device (a virtual disk may not know the truth).
                let queue = |what: &str| {
                    let name = dev.strip_prefix("/dev/")?;
                    let path = format!("/sys/class/block/{name}/queue/{what}");
                    Some(std::fs::read_to_string(path).ok()?.trim().to_owned())
                };
                let rotational = match queue("rotational").as_deref() {
                    Some("1") => ", rotational",
                    Some(_) => ", non-rotational",
                    None => "",
                };
                let cache = queue("write_cache")
                    .map(|c| format!(", {c} cache"))
                    .unwrap_or_default();
                format!("{dev} ({fstype}{rotational}{cache}) mounted on {mount}")
            }
            _ => "unknown (df failed)".into(),
        };
        let device = fields
            .first()
            .and_then(|d| d.strip_prefix("/dev/"))
            .map(str::to_owned)
            .filter(|name| disk_counters(name).is_some());
        Self {
            cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
            model,
            kernel: read("/proc/sys/kernel/osrelease").trim().to_string(),
            load: read("/proc/loadavg")
                .split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" "),
            disk,
            device,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Causeway: three nodes in this process, sled on disk, gRPC over mutual TLS.

/// A trivial key-value state machine: a command is a 2-byte key length, the key, then the value.
#[derive(Default)]
struct Kv(BTreeMap<Vec<u8>, Vec<u8>>);

fn kv_command(key: &[u8], value: &[u8]) -> Vec<u8> {
    let mut command = Vec::with_capacity(2 + key.len() + value.len());
    command.extend_from_slice(&(key.len() as u16).to_be_bytes());
    command.extend_from_slice(key);
    command.extend_from_slice(value);
    command
}

impl StateMachine for Kv {
    fn apply(&mut self, _index: u64, command: &[u8]) -> Vec<u8> {
        if let Some((len, rest)) = command.split_first_chunk::<2>() {
            let len = usize::from(u16::from_be_bytes(*len));
            if let Some((key, value)) = rest.split_at_checked(len) {
                self.0.insert(key.to_vec(), value.to_vec());
                return b"ok".to_vec();
            }
        }
        b"malformed".to_vec()
    }

    fn snapshot(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (key, value) in &self.0 {
            for part in [key, value] {
                out.extend_from_slice(&(part.len() as u32).to_be_bytes());
                out.extend_from_slice(part);
            }
        }
        out
    }

    fn restore(&mut self, mut snapshot: &[u8]) -> Result<(), String> {
        let mut map = BTreeMap::new();
        while !snapshot.is_empty() {
            let key = take_part(&mut snapshot)?;
            map.insert(key, take_part(&mut snapshot)?);
        }
        self.0 = map;
        Ok(())
    }
}

/// Takes one length-prefixed part off the front of a snapshot.
fn take_part(snapshot: &mut &[u8]) -> Result<Vec<u8>, String> {
    let (len, rest) = snapshot
        .split_first_chunk::<4>()
        .ok_or("truncated length")?;
    let len = u32::from_be_bytes(*len) as usize;
    let (part, rest) = rest.split_at_checked(len).ok_or("truncated part")?;
    *snapshot = rest;
    Ok(part.to_vec())
}

/// One trust domain (and CA) per member, all trusting each other.
struct Identities {
    bundles: Arc<TrustBundles>,
    cas: HashMap<u64, CertificateAuthority>,
}

fn trust_domain(name: &str) -> anyhow::Result<TrustDomain> {
    TrustDomain::parse(name).with_context(|| format!("trust domain {name}"))
}

impl Identities {
    fn create(dir: &Path) -> anyhow::Result<Self> {
        let mut bundles = TrustBundles::new();
        let mut cas = HashMap::new();
        for (node, name) in DOMAINS {
            let td = trust_domain(name)?;
            let ca = CertificateAuthority::load_or_create(&dir.join(name), &td)
                .with_context(|| format!("CA of {name}"))?;
            bundles
                .insert_pem(td, &ca.bundle_pem())
                .with_context(|| format!("bundle of {name}"))?;
            cas.insert(node, ca);
        }
        Ok(Self {
            bundles: Arc::new(bundles),
            cas,
        })
    }

    fn ca(&self, node: u64) -> anyhow::Result<&CertificateAuthority> {
        self.cas
            .get(&node)
            .with_context(|| format!("no CA for node {node}"))
    }

    fn id(&self, node: u64) -> anyhow::Result<SpiffeId> {
        SpiffeId::gateway(self.ca(node)?.trust_domain(), &format!("gw-{node}")).context("SPIFFE ID")
    }
}

struct Member {
    node: Node,
    stop_server: Option<oneshot::Sender<()>>,
    server: JoinHandle<Result<(), RaftTransportError>>,
}

struct Cluster {
    members: Vec<Member>,
}

impl Cluster {
    async fn start(dir: &Path) -> anyhow::Result<Self> {
        let ids = Identities::create(&dir.join("ca"))?;
        let nodes: Vec<u64> = DOMAINS.iter().map(|(node, _)| *node).collect();
        let mut listeners = Vec::new();
        let mut table = PeerTable::new();
        for &node in &nodes {
            let listener = TcpListener::bind("127.0.0.1:0")
                .await
                .context("bind raft listener")?;
            let addr = listener.local_addr()?.to_string();
            table
                .insert(node, ids.id(node)?, &addr)
                .context("peer table")?;
            listeners.push(listener);
        }
        let mut members = Vec::new();
        for (&node, listener) in nodes.iter().zip(listeners) {
            let svid = ids
                .ca(node)?
                .issue_for(&ids.id(node)?, SVID_TTL)
                .context("issue SVID")?;
            let mut client_configs = HashMap::new();
            for (_, name) in DOMAINS {
                let td = trust_domain(name)?;
                let config = client_config_with_alpn(&svid, ids.bundles.clone(), &td, &[ALPN])
                    .context("client TLS config")?;
                client_configs.insert(td, Arc::new(config));
            }
            let client_tls: ClientTls =
                Arc::new(move |domain: &TrustDomain| client_configs.get(domain).cloned());
            let transport = GrpcTransport::new(node, &table, client_tls);
            let storage = SledStore::open(&dir.join(format!("node-{node}")))
                .with_context(|| format!("open sled store of node {node}"))?;
            let (handle, inbox) = store::start(
                NodeConfig::new(node, nodes.clone()),
                storage,
                Kv::default(),
                transport,
            )
            .with_context(|| format!("start node {node}"))?;
            let server_tls = server_config_with_alpn(&svid, ids.bundles.clone(), &[ALPN])
                .context("server TLS config")?;
            let (stop_server, stopped) = oneshot::channel::<()>();
            let server = tokio::spawn(serve(
                listener,
                tokio::sync::watch::channel(Arc::new(server_tls)).1,
                watch::channel(table.clone()).1,
                inbox,
                None,
                async move {
                    let _ = stopped.await;
                },
            ));
            members.push(Member {
                node: handle,
                stop_server: Some(stop_server),
                server,
            });
        }
        Ok(Self { members })
    }

    /// The leader, once it has committed a write in its term.
    async fn leader(&self) -> anyhow::Result<Node> {
        let deadline = Instant::now() + SETUP_TIMEOUT;
        let mut last_error = String::from("no leader elected");
        loop {
            for member in &self.members {
                let status = member.node.status().await.context("node status")?;
                if status.role == Role::Leader {
                    let command = kv_command(b"bench/ready", b"");
                    match member.node.propose(command).await {
                        Ok(_) => return Ok(member.node.clone()),
                        Err(e) => last_error = e.to_string(),
                    }
                }
            }
            if Instant::now() >= deadline {
                bail!("no Causeway leader within {SETUP_TIMEOUT:?}: {last_error}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn stop(mut self) {
        for member in &mut self.members {
            if let Some(stop) = member.stop_server.take() {
                let _ = stop.send(());
            }
        }
        for member in &mut self.members {
            let _ = tokio::time::timeout(Duration::from_secs(5), &mut member.server).await;
            let _ = member.node.shutdown().await;
        }
    }
}

async fn measure_causeway(
    settings: &Settings,
    machine: &Machine,
    scratch: &Path,
) -> anyhow::Result<Measured> {
    let cluster = Cluster::start(&scratch.join("causeway")).await?;
    let result = async {
        let leader = cluster.leader().await?;
        let writers = |n: usize| {
            (0..n)
                .map(|_| Writer::Causeway(leader.clone()))
                .collect::<Vec<_>>()
        };
        let procs = Procs {
            pids: vec![std::process::id()],
            device: machine.device.clone(),
        };
        eprintln!("store bench: Causeway, 1 writer");
        let one = run_phase(settings, writers(1), &procs).await?;
        eprintln!("store bench: Causeway, {} writers", settings.writers);
        let many = run_phase(settings, writers(settings.writers), &procs).await?;
        anyhow::Ok(Measured { one, many })
    }
    .await;
    cluster.stop().await;
    result
}

// ---------------------------------------------------------------------------------------------
// etcd: three child processes, written to through the v3 JSON gateway.

fn find_etcd() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("etcd"))
        .find(|candidate| candidate.is_file())
}

/// The etcd members; killed when dropped, so a failed or panicking run leaves none behind.
struct EtcdGroup {
    children: Vec<Child>,
    clients: Vec<SocketAddr>,
    logs: Vec<PathBuf>,
}

impl Drop for EtcdGroup {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Ports the kernel hands out now; etcd binds them a moment later.
fn free_ports(n: usize) -> anyhow::Result<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| StdTcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()
        .context("find free ports")?;
    listeners
        .iter()
        .map(|l| Ok(l.local_addr()?.port()))
        .collect()
}

impl EtcdGroup {
    fn start(binary: &Path, dir: &Path) -> anyhow::Result<Self> {
        let ports = free_ports(6)?;
        let (peer_ports, client_ports) = ports.split_at(3);
        let url = |port: u16| format!("http://127.0.0.1:{port}");
        let initial_cluster = peer_ports
            .iter()
            .enumerate()
            .map(|(i, &port)| format!("e{}={}", i + 1, url(port)))
            .collect::<Vec<_>>()
            .join(",");
        let token = format!("causeway-bench-{}", std::process::id());
        let mut group = Self {
            children: Vec::new(),
            clients: Vec::new(),
            logs: Vec::new(),
        };
        for (i, (&peer, &client)) in peer_ports.iter().zip(client_ports).enumerate() {
            let name = format!("e{}", i + 1);
            let log_path = dir.join(format!("{name}.log"));
            let log = std::fs::File::create(&log_path).context("etcd log file")?;
            let child = Command::new(binary)
                .args(["--name", &name])
                .arg("--data-dir")
                .arg(dir.join(&name))
                .args(["--listen-peer-urls", &url(peer)])
                .args(["--initial-advertise-peer-urls", &url(peer)])
                .args(["--listen-client-urls", &url(client)])
                .args(["--advertise-client-urls", &url(client)])
                .args(["--initial-cluster", &initial_cluster])
                .args(["--initial-cluster-state", "new"])
                .args(["--initial-cluster-token", &token])
                .args(["--logger", "zap", "--log-level", "warn"])
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .with_context(|| format!("spawn {}", binary.display()))?;
            group.children.push(child);
            group
                .clients
                .push(SocketAddr::from(([127, 0, 0, 1], client)));
            group.logs.push(log_path);
        }
        Ok(group)
    }

    fn pids(&self) -> Vec<u32> {
        self.children.iter().map(Child::id).collect()
    }

    /// The last lines of every member's log, for an error message.
    fn log_tails(&self) -> String {
        let mut out = String::new();
        for path in &self.logs {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(5)..];
            out.push_str(&format!(
                "\n--- {} ---\n{}",
                path.display(),
                tail.join("\n")
            ));
        }
        out
    }

    fn check_alive(&mut self) -> anyhow::Result<()> {
        for (i, child) in self.children.iter_mut().enumerate() {
            if let Some(status) = child.try_wait()? {
                bail!("etcd member e{} exited: {status}", i + 1);
            }
        }
        Ok(())
    }

    /// Waits until every member reports healthy, then returns the leader's client address.
    async fn leader(&mut self) -> anyhow::Result<SocketAddr> {
        let deadline = Instant::now() + SETUP_TIMEOUT;
        loop {
            self.check_alive()?;
            match self.try_leader().await {
                Ok(leader) => return Ok(leader),
                Err(e) if Instant::now() >= deadline => {
                    return Err(e.context(format!("etcd not ready within {SETUP_TIMEOUT:?}")));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    async fn try_leader(&self) -> anyhow::Result<SocketAddr> {
        for &addr in &self.clients {
            let (status, body) = one_request(addr, "GET", "/health", Bytes::new()).await?;
            let health: serde_json::Value = serde_json::from_slice(&body)?;
            ensure!(
                status.is_success() && health["health"] == "true",
                "{addr} unhealthy: {status} {health}"
            );
        }
        for &addr in &self.clients {
            let (status, body) = one_request(
                addr,
                "POST",
                "/v3/maintenance/status",
                Bytes::from_static(b"{}"),
            )
            .await?;
            ensure!(status.is_success(), "{addr} status: {status}");
            let status: serde_json::Value = serde_json::from_slice(&body)?;
            let member = &status["header"]["member_id"];
            if !member.is_null() && status["leader"] == *member {
                // The leader must also take a write.
                let mut conn = EtcdConn::open(addr).await?;
                conn.put(b"bench/ready", b"").await?;
                return Ok(addr);
            }
        }
        bail!("no etcd leader yet")
    }
}

async fn measure_etcd(
    settings: &Settings,
    machine: &Machine,
    binary: &Path,
    scratch: &Path,
) -> anyhow::Result<Measured> {
    let dir = scratch.join("etcd");
    std::fs::create_dir_all(&dir).context("etcd scratch dir")?;
    let mut group = EtcdGroup::start(binary, &dir)?;
    let result = async {
        let leader = group.leader().await?;
        let procs = Procs {
            pids: std::iter::once(std::process::id())
                .chain(group.pids())
                .collect(),
            device: machine.device.clone(),
        };
        let writers = |n: usize| async move {
            let mut writers = Vec::new();
            for _ in 0..n {
                writers.push(Writer::Etcd(EtcdConn::open(leader).await?));
            }
            anyhow::Ok(writers)
        };
        eprintln!("store bench: etcd, 1 writer");
        let one = run_phase(settings, writers(1).await?, &procs).await?;
        eprintln!("store bench: etcd, {} writers", settings.writers);
        let many = run_phase(settings, writers(settings.writers).await?, &procs).await?;
        anyhow::Ok(Measured { one, many })
    }
    .await;
    let result = result.map_err(|e| e.context(format!("etcd baseline{}", group.log_tails())));
    drop(group);
    result
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn connect(addr: SocketAddr) -> anyhow::Result<Sender> {
    let tcp = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connect to etcd at {addr}"))?;
    tcp.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

async fn send(
    sender: &mut Sender,
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Bytes,
) -> anyhow::Result<(hyper::StatusCode, Bytes)> {
    sender.ready().await?;
    let req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, addr.to_string())
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(body))?;
    let resp = sender.send_request(req).await?;
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, body))
}

/// One request on a fresh connection (setup only).
async fn one_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Bytes,
) -> anyhow::Result<(hyper::StatusCode, Bytes)> {
    let mut sender = connect(addr).await?;
    tokio::time::timeout(REQUEST_TIMEOUT, send(&mut sender, addr, method, path, body))
        .await
        .unwrap_or_else(|_| Err(anyhow::anyhow!("no response within {REQUEST_TIMEOUT:?}")))
}

/// One keep-alive HTTP/1.1 connection to etcd's JSON gateway, reopened after a failure.
struct EtcdConn {
    addr: SocketAddr,
    sender: Option<Sender>,
}

impl EtcdConn {
    async fn open(addr: SocketAddr) -> anyhow::Result<Self> {
        Ok(Self {
            addr,
            sender: Some(connect(addr).await?),
        })
    }

    async fn put(&mut self, key: &[u8], value: &[u8]) -> anyhow::Result<()> {
        let mut sender = match self.sender.take() {
            Some(s) if !s.is_closed() => s,
            _ => connect(self.addr).await?,
        };
        let body = format!(r#"{{"key":"{}","value":"{}"}}"#, base64(key), base64(value));
        let (status, reply) = send(&mut sender, self.addr, "POST", "/v3/kv/put", body.into())
            .await
            .context("PUT /v3/kv/put")?;
        ensure!(
            status == hyper::StatusCode::OK && reply.starts_with(b"{\"header\""),
            "etcd answered {status}: {:?}",
            String::from_utf8_lossy(&reply[..reply.len().min(200)])
        );
        // A failed request may leave the connection mid-message: the next one starts afresh.
        self.sender = Some(sender);
        Ok(())
    }
}

/// Standard base64 with padding, as protobuf's JSON mapping wants for `bytes`.
fn base64(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Workloads.

enum Writer {
    Causeway(Node),
    Etcd(EtcdConn),
}

impl Writer {
    async fn put(&mut self, key: &[u8], value: &[u8]) -> anyhow::Result<()> {
        match self {
            Writer::Causeway(node) => {
                let (_, result) = node.propose(kv_command(key, value)).await?;
                ensure!(result == b"ok", "state machine answered {result:?}");
                Ok(())
            }
            Writer::Etcd(conn) => conn.put(key, value).await,
        }
    }
}

/// The processes whose CPU time and disk writes a phase accounts, and the disk it writes to.
struct Procs {
    pids: Vec<u32>,
    device: Option<String>,
}

struct Measured {
    one: Phase,
    many: Phase,
}

enum Baseline {
    Measured(Box<Measured>),
    Skipped(String),
}

struct Report {
    causeway: Measured,
    etcd: Baseline,
}

#[derive(Default)]
struct Phase {
    writers: usize,
    outcomes: Outcomes,
    elapsed: Duration,
    usage: Usage,
}

impl Phase {
    fn record(&mut self, result: anyhow::Result<()>, latency: Duration) {
        self.outcomes.record(result, latency);
    }

    fn merge(&mut self, other: Phase) {
        self.outcomes.merge(other.outcomes);
    }

    fn pct(&self, p: f64) -> Duration {
        percentile(&self.outcomes.latencies, p)
    }

    fn rate(&self) -> f64 {
        self.outcomes.latencies.len() as f64 / self.elapsed.as_secs_f64()
    }

    fn per_write(&self, total: Option<u64>) -> f64 {
        match total {
            Some(total) if !self.outcomes.latencies.is_empty() => {
                total as f64 / self.outcomes.latencies.len() as f64
            }
            _ => f64::NAN,
        }
    }
}

/// Closed loop: every writer writes back to back, for the warm-up and then the measured phase.
/// A write counts if it started in the measured window.
async fn run_phase(
    settings: &Settings,
    writers: Vec<Writer>,
    procs: &Procs,
) -> anyhow::Result<Phase> {
    let count = writers.len();
    let start = Instant::now();
    let measure_from = start + settings.warmup;
    let end = measure_from + settings.phase;
    let mut tasks = JoinSet::new();
    for (w, mut writer) in writers.into_iter().enumerate() {
        tasks.spawn(async move {
            let mut phase = Phase::default();
            let value: Vec<u8> = (0..VALUE_BYTES).map(|i| (i + w) as u8).collect();
            let mut seq = 0u64;
            loop {
                let sent = Instant::now();
                if sent >= end {
                    break;
                }
                let key = format!("bench/{w:03}/{:04}", seq % KEYS_PER_WRITER);
                seq += 1;
                let result =
                    tokio::time::timeout(REQUEST_TIMEOUT, writer.put(key.as_bytes(), &value))
                        .await
                        .unwrap_or_else(|_| {
                            Err(anyhow::anyhow!("no answer within {REQUEST_TIMEOUT:?}"))
                        });
                if sent >= measure_from {
                    phase.record(result, sent.elapsed());
                }
            }
            phase
        });
    }
    tokio::time::sleep_until(measure_from.into()).await;
    let clock = UsageClock::start(procs);
    tokio::time::sleep_until(end.into()).await;
    let usage = clock.stop(settings.phase);
    let mut phase = Phase {
        writers: count,
        ..Phase::default()
    };
    while let Some(done) = tasks.join_next().await {
        phase.merge(done.context("writer task")?);
    }
    phase.outcomes.latencies.sort_unstable();
    phase.elapsed = settings.phase;
    phase.usage = usage;
    if phase.outcomes.latencies.is_empty() {
        bail!(
            "no write succeeded ({} errors; first: {})",
            phase.outcomes.errors,
            phase.outcomes.first_error.as_deref().unwrap_or("none")
        );
    }
    Ok(phase)
}

// ---------------------------------------------------------------------------------------------
// Resource usage during a phase.

#[derive(Default)]
struct Usage {
    /// % of one core used by this process (client, and for Causeway the three nodes too).
    bench: f64,
    /// % of one core used by the etcd processes (NaN when there are none).
    servers: f64,
    /// Bytes the accounted processes caused to be written to storage (/proc/PID/io).
    write_bytes: Option<u64>,
    /// Write requests and cache flushes the disk completed (/proc/diskstats), whoever asked.
    disk_writes: Option<u64>,
    disk_flushes: Option<u64>,
}

struct UsageClock {
    pids: Vec<u32>,
    device: Option<String>,
    ticks: Vec<Option<u64>>,
    write_bytes: Option<u64>,
    disk: Option<(u64, u64)>,
}

impl UsageClock {
    fn start(procs: &Procs) -> Self {
        Self {
            pids: procs.pids.clone(),
            device: procs.device.clone(),
            ticks: procs.pids.iter().map(|&p| cpu_ticks(p)).collect(),
            write_bytes: total_write_bytes(&procs.pids),
            disk: procs.device.as_deref().and_then(disk_counters),
        }
    }

    fn stop(&self, elapsed: Duration) -> Usage {
        let percent =
            |ticks: u64| ticks as f64 / clock_ticks_per_second() / elapsed.as_secs_f64() * 100.0;
        let used: Vec<Option<u64>> = self
            .pids
            .iter()
            .zip(&self.ticks)
            .map(|(&pid, &start)| Some(cpu_ticks(pid)?.saturating_sub(start?)))
            .collect();
        let bench = used.first().copied().flatten().map_or(f64::NAN, percent);
        let servers = if used.len() > 1 {
            used[1..]
                .iter()
                .copied()
                .sum::<Option<u64>>()
                .map_or(f64::NAN, percent)
        } else {
            f64::NAN
        };
        let disk_end = self.device.as_deref().and_then(disk_counters);
        let disk = self
            .disk
            .zip(disk_end)
            .map(|((w0, f0), (w1, f1))| (w1.saturating_sub(w0), f1.saturating_sub(f0)));
        Usage {
            bench,
            servers,
            write_bytes: self
                .write_bytes
                .zip(total_write_bytes(&self.pids))
                .map(|(a, b)| b.saturating_sub(a)),
            disk_writes: disk.map(|d| d.0),
            disk_flushes: disk.map(|d| d.1),
        }
    }
}

/// Sum of `write_bytes` from /proc/PID/io.
fn total_write_bytes(pids: &[u32]) -> Option<u64> {
    pids.iter()
        .map(|pid| {
            let io = std::fs::read_to_string(format!("/proc/{pid}/io")).ok()?;
            io.lines()
                .find_map(|l| l.strip_prefix("write_bytes:"))?
                .trim()
                .parse::<u64>()
                .ok()
        })
        .sum()
}

/// Completed writes and cache flushes of a block device, from /proc/diskstats.
fn disk_counters(device: &str) -> Option<(u64, u64)> {
    let stats = std::fs::read_to_string("/proc/diskstats").ok()?;
    let line = stats
        .lines()
        .find(|l| l.split_whitespace().nth(2) == Some(device))?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(3)
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    // Field 5 is writes completed; field 16 (kernels >= 5.5) flush requests completed.
    Some((*fields.get(4)?, *fields.get(15)?))
}

fn clock_ticks_per_second() -> f64 {
    // USER_HZ is 100 on every mainstream Linux; asking getconf costs a process spawn.
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

// ---------------------------------------------------------------------------------------------
// Output.

fn verdict(settings: &Settings, met: bool) -> &'static str {
    match (settings.smoke, met) {
        (true, _) => "n/a (smoke run)",
        (false, true) => "MET",
        (false, false) => "MISSED",
    }
}

fn print_table(rows: &[(&str, &Phase)]) {
    println!(
        "{:<9} {:>7} {:>8} {:>6} {:>9} {:>8} {:>8} {:>8} {:>8}  {:>6} {:>6} {:>9} {:>9} {:>9}",
        "system",
        "writers",
        "ok",
        "errors",
        "writes/s",
        "p50",
        "p90",
        "p99",
        "max",
        "%bench",
        "%etcd",
        "KiB/write",
        "dev-w/wr",
        "flush/wr"
    );
    for (name, p) in rows {
        println!(
            "{:<9} {:>7} {:>8} {:>6} {:>9.0} {:>8} {:>8} {:>8} {:>8}  {:>6} {:>6} {:>9.2} {:>9.2} {:>9.2}",
            name,
            p.writers,
            p.outcomes.latencies.len(),
            p.outcomes.errors,
            p.rate(),
            ms(p.pct(0.5)),
            ms(p.pct(0.9)),
            ms(p.pct(0.99)),
            ms(p.pct(1.0)),
            whole(p.usage.bench),
            whole(p.usage.servers),
            p.per_write(p.usage.write_bytes) / 1024.0,
            p.per_write(p.usage.disk_writes),
            p.per_write(p.usage.disk_flushes),
        );
    }
}

/// A percentage rounded to a whole number, or "-" where it does not apply (no separate
/// server processes) or could not be read.
fn whole(percent: f64) -> String {
    if percent.is_finite() {
        format!("{percent:.0}")
    } else {
        "-".to_string()
    }
}

fn print_report(machine: &Machine, settings: &Settings, r: &Report) {
    let secs = settings.phase.as_secs_f64();
    println!();
    println!("Causeway store benchmark");
    println!("========================");
    println!(
        "machine:  {} CPUs ({}), Linux {}, load average at start {}",
        machine.cpus, machine.model, machine.kernel, machine.load
    );
    println!("disk:     {}", machine.disk);
    println!(
        "settings: {secs} s per phase after {:?} warm-up, closed loop; {VALUE_BYTES} B values, \
         {KEYS_PER_WRITER} keys per writer; writers: 1, then {}",
        settings.warmup, settings.writers
    );
    if settings.smoke {
        println!(
            "SMOKE RUN (no --bench argument, so started by cargo test): numbers are not \
             meaningful; use `cargo bench --bench store`"
        );
    }
    println!(
        "causeway: 3 store nodes in this process (NodeConfig::new defaults: 100 ms tick), SledStore \
         each (flushed before every write returns), gRPC over mutual TLS on 127.0.0.1, one trust \
         domain per member; writes are Node::propose on the leader, done when applied there"
    );
    match &r.etcd {
        Baseline::Measured(_) => println!(
            "etcd:     3 etcd processes on 127.0.0.1 (default settings), writes are \
             POST /v3/kv/put (JSON gateway) to the leader, one keep-alive HTTP/1.1 connection \
             per writer"
        ),
        Baseline::Skipped(why) => println!("etcd:     BASELINE SKIPPED: {why}"),
    }
    println!(
        "columns:  latency in ms; %bench/%etcd = % of one core used by this process (client, and \
         the Causeway nodes) / by the etcd processes; KiB/write = bytes those processes sent to \
         storage per write; dev-w/wr and flush/wr = write requests and cache flushes the disk \
         completed per write (whole device)"
    );

    let c = &r.causeway;
    println!();
    println!("1. One writer, sequential writes");
    let mut rows = vec![("causeway", &c.one)];
    if let Baseline::Measured(e) = &r.etcd {
        rows.push(("etcd", &e.one));
    }
    print_table(&rows);
    println!();
    println!("2. {} concurrent writers", settings.writers);
    let mut rows = vec![("causeway", &c.many)];
    if let Baseline::Measured(e) = &r.etcd {
        rows.push(("etcd", &e.many));
    }
    print_table(&rows);

    let mut all = vec![("causeway, 1 writer", &c.one), ("causeway, many", &c.many)];
    if let Baseline::Measured(e) = &r.etcd {
        all.extend([("etcd, 1 writer", &e.one), ("etcd, many", &e.many)]);
    }
    for (name, p) in all {
        if let Some(e) = &p.outcomes.first_error {
            println!("first error ({name}, {} in all): {e}", p.outcomes.errors);
        }
    }

    println!();
    if let Baseline::Measured(e) = &r.etcd {
        println!(
            "causeway / etcd: throughput with {} writers {}; p50 with 1 writer {} \
             (throughput with 1 writer {})",
            settings.writers,
            ratio(c.many.rate(), e.many.rate()),
            ratio(c.one.pct(0.5).as_secs_f64(), e.one.pct(0.5).as_secs_f64()),
            ratio(c.one.rate(), e.one.rate()),
        );
    } else {
        println!("causeway / etcd: n/a (baseline skipped)");
    }

    println!();
    println!("Targets");
    println!(
        "  p50 with one writer <= {:.1} ms: {:<6} ({} ms)",
        TARGET_P50.as_secs_f64() * 1e3,
        verdict(settings, c.one.pct(0.5) <= TARGET_P50),
        ms(c.one.pct(0.5))
    );
    match &r.etcd {
        Baseline::Measured(e) => println!(
            "  throughput with {} writers >= etcd's: {:<6} ({:.0} vs {:.0} writes/s)",
            settings.writers,
            verdict(settings, c.many.rate() >= e.many.rate()),
            c.many.rate(),
            e.many.rate()
        ),
        Baseline::Skipped(_) => println!(
            "  throughput with {} writers >= etcd's: n/a (etcd baseline skipped; {:.0} writes/s)",
            settings.writers,
            c.many.rate()
        ),
    }
    println!(
        "(Measurements, not assertions: the writers, the three Causeway nodes (or the three etcd \
         processes) share these {} CPUs and one disk, so other load on the machine shows up in \
         the numbers.)",
        machine.cpus
    );
}
