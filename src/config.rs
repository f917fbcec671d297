//! Causeway's configuration: one TOML file, overridden by flags and `CAUSEWAY_*` variables.
//!
//! ```text
//!  causeway.toml ─parse─▶ toml::Table ─Reader─▶ file values ─┐
//!                          (every bad field recorded)         ├─▶ defaults ─▶ checks ─▶ Config
//!  flags / CAUSEWAY_* ─clap─▶ Overrides (win over the file) ──┘
//! ```
//!
//! Why not `#[derive(Deserialize)]`: serde stops at the first bad field, and an operator should not
//! have to restart once per typo. So the file is parsed into a plain [`toml::Table`] and walked by
//! a small [`Reader`] that records each problem with its path and keeps going. Keys nobody asked
//! for are reported at the end, which gives `deny_unknown_fields` for the whole tree. The result
//! is fully typed: nothing downstream re-parses or re-validates a string from here.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use federation::identity::SpiffeId;
use federation::model::{
    ClusterName, LocalService, Protocol, ServiceKey, ServicePort, check_dns_label,
};
use rustls::pki_types::ServerName;
use serde::{Serialize, Serializer};
use toml::{Table, Value};

const DEFAULT_CLUSTER: &str = "local";
const DEFAULT_DATA_DIR: &str = "./causeway-data";
const DEFAULT_BIND: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
// Istio's port habits (DESIGN.md "Defaults"), so operators feel at home.
const TUNNEL_PORT: u16 = 15443;
const OUTBOUND_PORT: u16 = 15001;
const WORKLOAD_PORT: u16 = 15008;
const DNS_PORT: u16 = 15053;
const ADMIN_PORT: u16 = 15000;
const RAFT_PORT: u16 = 15012;

/// The effective configuration of one gateway: file, then overrides, then defaults, all checked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Config {
    pub cluster: ClusterName,
    /// Checked here (lowercase `a-z0-9.-_`, 1..=255 chars); the caller turns it into a typed
    /// trust domain.
    pub trust_domain: String,
    /// This gateway's name, a DNS label; its SPIFFE ID is `spiffe://<trust_domain>/gateway/<name>`.
    pub name: String,
    /// Relative paths stay relative to the working directory, as operators expect of a state dir.
    #[serde(serialize_with = "path_lossy")]
    pub data_dir: PathBuf,
    pub listen: Listen,
    pub admin: AdminSettings,
    pub tunnel: TunnelSettings,
    pub identity: IdentitySettings,
    pub shutdown: ShutdownSettings,
    pub dataplane: DataplaneSettings,
    pub security: SecuritySettings,
    /// A fixed Raft group from the file; `None` starts a one-member group (or joins one, with
    /// `join`). Either way the Raft listener is bound.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub store: Option<StoreSettings>,
    /// `--join`: join an existing mesh through one of its gateways instead of founding one.
    /// Never serialized: the token is a secret and this text goes to the log.
    #[serde(skip)]
    pub join: Option<JoinSettings>,
    pub peers: Vec<PeerConfig>,
    /// Serialized in the file's shape (`name`, `namespace`, ...) so `to_toml` output loads again.
    #[serde(serialize_with = "services_as_file")]
    pub services: Vec<LocalService>,
}

/// Where each listener binds. Port 0 is allowed: tests let the OS pick.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Listen {
    /// UDP: QUIC tunnels from other gateways.
    pub tunnel: SocketAddr,
    /// TCP: local clients' outbound traffic.
    pub outbound: SocketAddr,
    /// TCP: workloads of this cluster calling over mutual TLS with their SVID.
    pub workload: SocketAddr,
    /// UDP and TCP: the mesh DNS zone.
    pub dns: SocketAddr,
    /// TCP: admin API and metrics.
    pub admin: SocketAddr,
    /// TCP: Raft between gateways (gRPC over mutual TLS).
    pub raft: SocketAddr,
}

/// The admin API's transport (`[admin]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AdminSettings {
    /// HTTPS with a certificate from the cluster CA (the default); false serves plain HTTP,
    /// where tokens (join tokens too) cross the network in clear text.
    pub tls: bool,
    /// Names the certificate carries besides the defaults (see [`AdminSettings::server_names`]):
    /// the DNS names and addresses clients reach this gateway by.
    #[serde(serialize_with = "server_names")]
    pub names: Vec<ServerName<'static>>,
}

impl Default for AdminSettings {
    fn default() -> Self {
        Self {
            tls: true,
            names: Vec::new(),
        }
    }
}

impl AdminSettings {
    /// Every name the admin certificate carries: the listener's IP (unless unspecified, which
    /// names no address), loopback as 127.0.0.1, ::1 and localhost, the gateway's name, then
    /// `names`; each once.
    pub fn server_names(&self, admin: SocketAddr, gateway_name: &str) -> Vec<ServerName<'static>> {
        let mut all: Vec<ServerName<'static>> = Vec::new();
        let mut add = |name: ServerName<'static>| {
            if !all.contains(&name) {
                all.push(name);
            }
        };
        if !admin.ip().is_unspecified() {
            add(ServerName::from(admin.ip()));
        }
        add(ServerName::from(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        add(ServerName::from(IpAddr::V6(std::net::Ipv6Addr::LOCALHOST)));
        for dns in ["localhost", gateway_name] {
            if let Ok(name) = ServerName::try_from(dns.to_string()) {
                add(name);
            }
        }
        for name in &self.names {
            add(name.clone());
        }
        all
    }
}

/// QUIC tunnel tuning. Invariant: `0 < keep_alive < idle_timeout`, or idle peers would be dropped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TunnelSettings {
    #[serde(serialize_with = "human")]
    pub keep_alive: Duration,
    #[serde(serialize_with = "human")]
    pub idle_timeout: Duration,
    #[serde(serialize_with = "human")]
    pub connect_timeout: Duration,
    #[serde(serialize_with = "human")]
    pub reconnect_backoff_max: Duration,
    /// Concurrent streams per connection, 1..=100000.
    pub max_streams: u32,
    /// Largest stream preamble accepted, 64..=65535.
    pub max_preamble_bytes: u16,
}

impl Default for TunnelSettings {
    fn default() -> Self {
        Self {
            keep_alive: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            reconnect_backoff_max: Duration::from_secs(5),
            max_streams: 1024,
            max_preamble_bytes: 4096,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IdentitySettings {
    /// At least 2s: renewal happens at half-life and needs whole seconds of validity to work with.
    #[serde(serialize_with = "human")]
    pub svid_ttl: Duration,
}

impl Default for IdentitySettings {
    fn default() -> Self {
        Self {
            svid_ttl: Duration::from_secs(3600),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ShutdownSettings {
    /// How long connections may finish after shutdown starts; 0 closes them at once.
    #[serde(serialize_with = "human")]
    pub drain_timeout: Duration,
}

impl Default for ShutdownSettings {
    fn default() -> Self {
        Self {
            drain_timeout: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DataplaneSettings {
    /// Worker threads of the data plane's own runtime. One is fastest on small machines
    /// (fewer cross-thread wake-ups per request); raise it where proxying needs more cores.
    pub worker_threads: u32,
    /// How long the data plane keeps polling instead of sleeping while an answer from a peer
    /// gateway or a local endpoint is awaited, counted from the last request that started or
    /// finished. Spends CPU to save the thread wake-ups that dominate the latency a tunnel
    /// adds on virtual machines; 0 (the default) turns it off. On a 2-core VM 500 µs raised the
    /// tunnel's request rate by a third and cut the added p50, but worsened the added p99 (the
    /// spinning steals CPU from the other processes): a choice for machines with cores to spare.
    #[serde(serialize_with = "human")]
    pub busy_poll: Duration,
    /// Client connections open at once on the outbound listener and the TCP service ports
    /// together; a client beyond it gets a 503 (HTTP) or is closed (TCP). Keep it below the
    /// process's file descriptor limit, with room for tunnels, endpoints and the store.
    pub max_client_connections: u32,
    /// The head of an HTTP request on the outbound listener must arrive within this long of
    /// its first byte, or the connection is closed (slow-header clients).
    #[serde(serialize_with = "human")]
    pub header_read_timeout: Duration,
    /// An outbound HTTP connection with no request in progress is closed after this long.
    #[serde(serialize_with = "human")]
    pub idle_timeout: Duration,
}

/// How the boundary treats callers (`[security]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SecuritySettings {
    /// The mesh's root namespace: its PeerAuthentication and AuthorizationPolicy without a
    /// selector hold for every workload of the mesh (Istio's `istio-system`).
    pub root_namespace: String,
    /// Attribute a plaintext client of the outbound listener to the workload registered at its
    /// source address (an endpoint's `serviceAccount`), as ztunnel trusts the node network.
    /// Only for clusters whose network makes source addresses unforgeable; off by default,
    /// where such a client is anonymous.
    pub trust_source_address: bool,
}

impl Default for SecuritySettings {
    fn default() -> Self {
        Self {
            root_namespace: "istio-system".into(),
            trust_source_address: false,
        }
    }
}

/// Longest `busy_poll` accepted: beyond it a slow upstream would keep a core spinning.
const MAX_BUSY_POLL: Duration = Duration::from_millis(10);

impl Default for DataplaneSettings {
    fn default() -> Self {
        Self {
            worker_threads: 1,
            busy_poll: Duration::ZERO,
            max_client_connections: 10_000,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
        }
    }
}

/// This gateway's membership in the mesh's Raft group.
///
/// Invariants: `node_id >= 1`; `voters` is non-empty, contains `node_id`, and names only this
/// node and `members`; member ids are unique and not `node_id`; member SPIFFE IDs are unique
/// (one ID speaks for one node on the wire).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StoreSettings {
    pub node_id: u64,
    /// The founding voters, used only to bootstrap an empty data dir.
    pub voters: Vec<u64>,
    /// Raft's logical clock period.
    #[serde(serialize_with = "human")]
    pub tick: Duration,
    /// Ticks without a leader before an election; at least 2 (heartbeats go every tick).
    pub election_tick: u32,
    /// Every other member of the group.
    pub members: Vec<StoreMember>,
}

/// Another member of the Raft group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StoreMember {
    pub id: u64,
    /// The member's Raft listener (its `listen.raft`).
    pub address: SocketAddr,
    /// The SPIFFE ID the member's gateway authenticates with; it speaks for `id` only.
    pub gateway: SpiffeId,
}

/// Another cluster's gateway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PeerConfig {
    pub cluster: ClusterName,
    pub trust_domain: String,
    pub address: SocketAddr,
    /// PEM roots of the peer's trust domain, already resolved against the config file's directory.
    #[serde(serialize_with = "path_lossy")]
    pub trust_bundle: PathBuf,
}

/// Overrides from flags and CAUSEWAY_* environment variables (clap fills it, with
/// `env = "CAUSEWAY_..."`); they win over the file.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Overrides {
    /// Configuration file (TOML); without one, defaults start a single-node mesh on loopback
    #[arg(long, env = "CAUSEWAY_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// This cluster's name, a DNS label [default: local]
    #[arg(long, env = "CAUSEWAY_CLUSTER")]
    pub cluster: Option<String>,
    /// This gateway's name, a DNS label [default: <cluster>-1]
    #[arg(long, env = "CAUSEWAY_NAME")]
    pub name: Option<String>,
    /// This cluster's SPIFFE trust domain [default: <cluster>.mesh]
    #[arg(long, env = "CAUSEWAY_TRUST_DOMAIN")]
    pub trust_domain: Option<String>,
    /// Directory for the gateway's state [default: ./causeway-data]
    #[arg(long, env = "CAUSEWAY_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// IP address for every listener not given an explicit address [default: 127.0.0.1]
    #[arg(long, env = "CAUSEWAY_BIND", value_name = "IP")]
    pub bind: Option<IpAddr>,
    /// QUIC tunnel listener (UDP) [default: <bind>:15443]
    #[arg(long, env = "CAUSEWAY_TUNNEL_ADDR", value_name = "ADDR")]
    pub tunnel_addr: Option<SocketAddr>,
    /// Outbound listener for local clients (TCP) [default: <bind>:15001]
    #[arg(long, env = "CAUSEWAY_OUTBOUND_ADDR", value_name = "ADDR")]
    pub outbound_addr: Option<SocketAddr>,
    /// Workload listener: this cluster's workloads call over mutual TLS with their SVID
    /// (TCP) [default: <bind>:15008]
    #[arg(long, env = "CAUSEWAY_WORKLOAD_ADDR", value_name = "ADDR")]
    pub workload_addr: Option<SocketAddr>,
    /// Mesh DNS listener (UDP and TCP) [default: <bind>:15053]
    #[arg(long, env = "CAUSEWAY_DNS_ADDR", value_name = "ADDR")]
    pub dns_addr: Option<SocketAddr>,
    /// Admin API and metrics listener (TCP) [default: <bind>:15000]
    #[arg(long, env = "CAUSEWAY_ADMIN_ADDR", value_name = "ADDR")]
    pub admin_addr: Option<SocketAddr>,
    /// Raft listener between gateways (TCP) [default: <bind>:15012]
    #[arg(long, env = "CAUSEWAY_RAFT_ADDR", value_name = "ADDR")]
    pub raft_addr: Option<SocketAddr>,
    /// Join an existing mesh through this gateway's admin API (https://host:port) instead of
    /// founding a new one; needs a join token (`causeway token create --join gateway`). The
    /// mesh's CAs are fetched from that gateway and checked against the token (or pinned with
    /// --join-ca)
    #[arg(long, env = "CAUSEWAY_JOIN", value_name = "URL")]
    pub join: Option<String>,
    /// Optional: the CA certificate (PEM) of the cluster whose gateway --join goes through, to
    /// verify its admin API by (on that gateway: `causeway bundle --cluster X --data-dir D`).
    /// Without it the joining gateway fetches the mesh's CAs from that gateway and believes
    /// them only if the answer proves that the gateway knows the join token
    #[arg(long, env = "CAUSEWAY_JOIN_CA", value_name = "FILE")]
    pub join_ca: Option<PathBuf>,
    /// The one-time join token for --join
    #[arg(
        long = "token",
        env = "CAUSEWAY_JOIN_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub join_token: Option<String>,
    /// A file holding the join token (instead of --token, which other users can see in `ps`)
    #[arg(
        long = "token-file",
        env = "CAUSEWAY_JOIN_TOKEN_FILE",
        value_name = "FILE"
    )]
    pub join_token_file: Option<PathBuf>,
}

/// How to join an existing mesh (`--join`).
#[derive(Clone, PartialEq, Eq)]
pub struct JoinSettings {
    /// The admin API of any gateway of the mesh, `https://host:port` (or `http://` for a
    /// gateway that serves plain HTTP).
    pub url: String,
    /// The one-time join token.
    pub token: String,
    /// PEM of the CA that signed that gateway's admin certificate (its cluster's CA), holding
    /// at least one certificate; only for `https://`. Without it the CAs are discovered.
    pub ca_pem: Option<Vec<u8>>,
}

impl fmt::Debug for JoinSettings {
    // The token is a secret: never in logs or panics.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinSettings")
            .field("url", &self.url)
            .field("token", &"<redacted>")
            .field("ca", &self.ca_pem.as_ref().map(|_| "<pem>"))
            .finish()
    }
}

/// Every problem found, each with its path.
#[derive(Debug, thiserror::Error)]
#[error("{}", render(&self.errors))]
pub struct ConfigErrors {
    pub errors: Vec<FieldError>,
}

/// One problem: where (`peers[1].address`, `--cluster`; empty for TOML syntax) and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub path: String,
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // toml's syntax errors span several lines (a source excerpt with a caret); keep them
        // indented under their entry.
        let message = self.message.trim_end().replace('\n', "\n    ");
        if self.path.is_empty() {
            f.write_str(&message)
        } else {
            write!(f, "{}: {message}", self.path)
        }
    }
}

fn render(errors: &[FieldError]) -> String {
    let plural = if errors.len() == 1 { "" } else { "s" };
    let mut out = format!("invalid configuration ({} problem{plural}):", errors.len());
    for error in errors {
        out.push_str(&format!("\n  {error}"));
    }
    out
}

impl ConfigErrors {
    fn one(path: &str, message: impl Into<String>) -> Self {
        Self {
            errors: vec![FieldError {
                path: path.to_string(),
                message: message.into(),
            }],
        }
    }
}

impl Config {
    /// Reads `overrides.config` if given (a missing/unreadable file is an error naming it), else
    /// starts from defaults; applies overrides (string overrides are validated like the file's
    /// fields, with the flag name as path, e.g. "--cluster"); resolves defaults; validates
    /// cross-field rules.
    pub fn load(overrides: &Overrides) -> Result<Config, ConfigErrors> {
        let Some(file) = &overrides.config else {
            return Self::from_table(Table::new(), Path::new("."), overrides);
        };
        let text = std::fs::read_to_string(file).map_err(|e| {
            ConfigErrors::one("--config", format!("cannot read {:?}: {e}", file.display()))
        })?;
        // Relative trust bundles follow the file, not the working directory, so a config and its
        // CA files can move together. Absolute paths keep the startup log unambiguous.
        let dir = file.parent().filter(|d| !d.as_os_str().is_empty());
        let dir = dir.unwrap_or(Path::new("."));
        let dir = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
        Self::from_toml_str(&text, &dir, overrides).map_err(|mut errors| {
            for error in errors.errors.iter_mut().filter(|e| e.path.is_empty()) {
                error.path = file.display().to_string();
            }
            errors
        })
    }

    /// Like [`Config::load`] with the file's text in hand; relative `trust_bundle` paths resolve
    /// against `base_dir`. `overrides.config` is ignored.
    pub fn from_toml_str(
        text: &str,
        base_dir: &Path,
        overrides: &Overrides,
    ) -> Result<Config, ConfigErrors> {
        let table: Table = text
            .parse()
            .map_err(|e: toml::de::Error| ConfigErrors::one("", e.to_string()))?;
        Self::from_table(table, base_dir, overrides)
    }

    /// The effective config as TOML, for the startup log. It loads again to an equal `Config`.
    pub fn to_toml(&self) -> String {
        // Nothing in `Config` is secret yet. Anything secret added later (keys, tokens) must be
        // skipped here, e.g. `#[serde(skip_serializing)]`, because this text goes to the log.
        toml::to_string(self).unwrap_or_else(|e| {
            format!("# the effective configuration could not be rendered: {e}\n")
        })
    }

    fn from_table(
        mut root: Table,
        base_dir: &Path,
        ov: &Overrides,
    ) -> Result<Config, ConfigErrors> {
        let mut r = Reader::default();
        let file_cluster = r.take(&mut root, "", "cluster", cluster_name);
        let file_trust_domain = r.take(&mut root, "", "trust_domain", trust_domain);
        let file_name = r.take(&mut root, "", "name", gateway_name);
        let file_data_dir = r.take(&mut root, "", "data_dir", path);
        let file_bind = r.take(&mut root, "", "bind", ip_addr);
        let mut t = r.section(&mut root, "listen");
        let [tunnel, outbound, workload, dns, admin, raft] =
            ["tunnel", "outbound", "workload", "dns", "admin", "raft"]
                .map(|key| r.take(&mut t, "listen", key, socket_addr));
        r.finish(t, "listen");
        let admin_settings = read_admin(&mut r, &mut root);
        let tunnel_settings = read_tunnel(&mut r, &mut root);
        let mut t = r.section(&mut root, "identity");
        let min_ttl = at_least(Duration::from_secs(2));
        let identity = IdentitySettings {
            svid_ttl: r
                .take(&mut t, "identity", "svid_ttl", min_ttl)
                .unwrap_or(IdentitySettings::default().svid_ttl),
        };
        r.finish(t, "identity");
        let mut t = r.section(&mut root, "shutdown");
        let shutdown = ShutdownSettings {
            drain_timeout: r
                .take(&mut t, "shutdown", "drain_timeout", duration)
                .unwrap_or(ShutdownSettings::default().drain_timeout),
        };
        r.finish(t, "shutdown");
        let mut t = r.section(&mut root, "dataplane");
        let dataplane = DataplaneSettings {
            worker_threads: r
                .take(&mut t, "dataplane", "worker_threads", int_in(1u32, 256))
                .unwrap_or(DataplaneSettings::default().worker_threads),
            busy_poll: r
                .take(&mut t, "dataplane", "busy_poll", at_most(MAX_BUSY_POLL))
                .unwrap_or(DataplaneSettings::default().busy_poll),
            max_client_connections: r
                .take(
                    &mut t,
                    "dataplane",
                    "max_client_connections",
                    int_in(1u32, 1_000_000),
                )
                .unwrap_or(DataplaneSettings::default().max_client_connections),
            header_read_timeout: r
                .take(
                    &mut t,
                    "dataplane",
                    "header_read_timeout",
                    duration_in(Duration::from_millis(100), Duration::from_secs(600)),
                )
                .unwrap_or(DataplaneSettings::default().header_read_timeout),
            idle_timeout: r
                .take(
                    &mut t,
                    "dataplane",
                    "idle_timeout",
                    duration_in(Duration::from_millis(100), Duration::from_secs(3600)),
                )
                .unwrap_or(DataplaneSettings::default().idle_timeout),
        };
        r.finish(t, "dataplane");
        let security = read_security(&mut r, &mut root);
        let has_store = root.contains_key("store");
        let store = read_store(&mut r, &mut root);
        let peers = read_peers(&mut r, &mut root, base_dir);
        let services = read_services(&mut r, &mut root);
        r.finish(root, "");

        // Flags and environment win over the file, then defaults fill in. `Err` means whichever
        // source won was invalid (already reported), so checks that depend on it are skipped.
        let cluster = r
            .choose(
                "--cluster",
                &ov.cluster,
                "cluster",
                file_cluster,
                cluster_name,
            )
            .map(|c| c.unwrap_or_else(default_cluster));
        let trust_domain = r
            .choose(
                "--trust-domain",
                &ov.trust_domain,
                "trust_domain",
                file_trust_domain,
                trust_domain,
            )
            .and_then(|td| match (td, &cluster) {
                (Some(td), _) => Ok(td),
                (None, Ok(cluster)) => Ok(format!("{cluster}.mesh")),
                (None, Err(reported)) => Err(*reported),
            });
        let name = r
            .choose("--name", &ov.name, "name", file_name, gateway_name)
            .and_then(|name| match (name, &cluster) {
                (Some(name), _) => Ok(name),
                // A 62- or 63-character cluster name leaves no room for "-1".
                (None, Ok(cluster)) => {
                    let name = format!("{cluster}-1");
                    match check_dns_label("gateway name", &name) {
                        Ok(()) => Ok(name),
                        Err(e) => Err(r.error("name", format!("the default: {e}; set name"))),
                    }
                }
                (None, Err(reported)) => Err(*reported),
            });
        let bind = ov.bind.or(file_bind).unwrap_or(DEFAULT_BIND);
        // `bind` moves only the listeners nobody placed explicitly.
        let at = |flag: Option<SocketAddr>, file: Option<SocketAddr>, port| {
            flag.or(file).unwrap_or(SocketAddr::new(bind, port))
        };
        let listen = Listen {
            tunnel: at(ov.tunnel_addr, tunnel, TUNNEL_PORT),
            outbound: at(ov.outbound_addr, outbound, OUTBOUND_PORT),
            workload: at(ov.workload_addr, workload, WORKLOAD_PORT),
            dns: at(ov.dns_addr, dns, DNS_PORT),
            admin: at(ov.admin_addr, admin, ADMIN_PORT),
            raft: at(ov.raft_addr, raft, RAFT_PORT),
        };
        check_listen(&mut r, &listen);
        let join = read_join(&mut r, ov, has_store);
        check_peers(
            &mut r,
            &peers,
            cluster.as_ref().ok(),
            trust_domain.as_ref().ok(),
        );

        match (cluster, trust_domain, name) {
            (Ok(cluster), Ok(trust_domain), Ok(name)) if r.errors.is_empty() => Ok(Config {
                cluster,
                trust_domain,
                name,
                data_dir: ov
                    .data_dir
                    .clone()
                    .or(file_data_dir)
                    .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR)),
                listen,
                admin: admin_settings,
                tunnel: tunnel_settings,
                identity,
                shutdown,
                dataplane,
                security,
                store,
                join,
                // Entries are `None` only when something in them was reported.
                peers: peers.into_iter().flatten().collect(),
                services: services.into_iter().flatten().collect(),
            }),
            _ => Err(ConfigErrors { errors: r.errors }),
        }
    }
}

fn default_cluster() -> ClusterName {
    // A constant, and the defaults test loads it.
    ClusterName::new(DEFAULT_CLUSTER).expect("the default cluster name is a DNS label")
}

fn read_admin(r: &mut Reader, root: &mut Table) -> AdminSettings {
    let (mut t, p, d) = (r.section(root, "admin"), "admin", AdminSettings::default());
    let tls = r.take(&mut t, p, "tls", boolean).unwrap_or(d.tls);
    let names = r.list(&mut t, p, "names", |r, v, p| r.value(v, p, server_name));
    r.finish(t, p);
    AdminSettings {
        tls,
        // Bad entries are reported, so the config is refused anyway.
        names: names.unwrap_or_default().into_iter().flatten().collect(),
    }
}

fn read_security(r: &mut Reader, root: &mut Table) -> SecuritySettings {
    let (mut t, p, d) = (
        r.section(root, "security"),
        "security",
        SecuritySettings::default(),
    );
    let root_namespace = r
        .take(&mut t, p, "root_namespace", |v| {
            let name = string(v, "a namespace name")?;
            check_dns_label("root namespace", &name).map_err(|e| e.to_string())?;
            Ok(name)
        })
        .unwrap_or(d.root_namespace);
    let trust_source_address = r
        .take(&mut t, p, "trust_source_address", boolean)
        .unwrap_or(d.trust_source_address);
    r.finish(t, p);
    SecuritySettings {
        root_namespace,
        trust_source_address,
    }
}

fn read_tunnel(r: &mut Reader, root: &mut Table) -> TunnelSettings {
    let (mut t, p, d) = (
        r.section(root, "tunnel"),
        "tunnel",
        TunnelSettings::default(),
    );
    let settings = TunnelSettings {
        keep_alive: r
            .take(&mut t, p, "keep_alive", positive)
            .unwrap_or(d.keep_alive),
        idle_timeout: r
            .take(&mut t, p, "idle_timeout", duration)
            .unwrap_or(d.idle_timeout),
        connect_timeout: r
            .take(&mut t, p, "connect_timeout", positive)
            .unwrap_or(d.connect_timeout),
        reconnect_backoff_max: r
            .take(&mut t, p, "reconnect_backoff_max", positive)
            .unwrap_or(d.reconnect_backoff_max),
        max_streams: r
            .take(&mut t, p, "max_streams", int_in(1u32, 100_000))
            .unwrap_or(d.max_streams),
        max_preamble_bytes: r
            .take(&mut t, p, "max_preamble_bytes", int_in(64u16, u16::MAX))
            .unwrap_or(d.max_preamble_bytes),
    };
    r.finish(t, p);
    // A keep-alive at or past the idle timeout lets healthy but quiet tunnels time out.
    let (ka, idle) = (settings.keep_alive, settings.idle_timeout);
    if ka >= idle && !r.failed("tunnel.keep_alive") && !r.failed("tunnel.idle_timeout") {
        r.error(
            "tunnel.keep_alive",
            format!(
                "must be shorter than tunnel.idle_timeout ({}), got {}",
                fmt_duration(idle),
                fmt_duration(ka)
            ),
        );
    }
    settings
}

/// `[store]`: absent is `None`. Returns `None` too when anything in it was reported.
fn read_store(r: &mut Reader, root: &mut Table) -> Option<StoreSettings> {
    let p = "store";
    let value = r.take(root, "", p, Ok)?;
    let mut t = r.table(value, p)?;
    let defaults = store::NodeConfig::new(0, Vec::new());
    r.missing(&t, p, &["node_id", "voters"]);
    let node_id = r.take(&mut t, p, "node_id", raft_node_id);
    let voters = r.list(&mut t, p, "voters", |r, v, p| r.value(v, p, raft_node_id));
    let tick = r.take(&mut t, p, "tick", positive);
    let election_tick = r.take(&mut t, p, "election_tick", int_in(2u32, 1000));
    let members = r.list(&mut t, p, "members", |r, value, p| {
        let mut t = r.table(value, p)?;
        r.missing(&t, p, &["id", "address", "gateway"]);
        let id = r.take(&mut t, p, "id", raft_node_id);
        let address = r.take(&mut t, p, "address", socket_addr);
        let gateway = r.take(&mut t, p, "gateway", spiffe_id);
        r.finish(t, p);
        Some(StoreMember {
            id: id?,
            address: address?,
            gateway: gateway?,
        })
    });
    r.finish(t, p);
    let members = members.unwrap_or_default();
    for (i, member) in members.iter().enumerate() {
        let Some(member) = member else { continue };
        if node_id == Some(member.id) {
            r.error(
                format!("store.members[{i}].id"),
                format!("{} is this node's own store.node_id", member.id),
            );
        }
        let earlier = |same: &dyn Fn(&StoreMember) -> bool| {
            members[..i]
                .iter()
                .position(|e| e.as_ref().is_some_and(same))
        };
        if let Some(j) = earlier(&|e| e.id == member.id) {
            r.error(
                format!("store.members[{i}].id"),
                format!("duplicate member {} (also store.members[{j}])", member.id),
            );
        }
        if let Some(j) = earlier(&|e| e.gateway == member.gateway) {
            r.error(
                format!("store.members[{i}].gateway"),
                format!("{} already speaks for store.members[{j}]", member.gateway),
            );
        }
    }
    let listed = voters.as_deref().unwrap_or_default();
    // Against a bad node_id or member, "not a member" would only echo that error.
    let members_known = node_id.is_some() && members.iter().all(Option::is_some);
    if voters.as_ref().is_some_and(Vec::is_empty) {
        r.error("store.voters", "must list at least one voter");
    }
    for (i, voter) in listed.iter().enumerate() {
        let Some(voter) = voter else { continue };
        if listed[..i].contains(&Some(*voter)) {
            r.error(
                format!("store.voters[{i}]"),
                format!("duplicate voter {voter}"),
            );
        } else if members_known
            && node_id != Some(*voter)
            && !members.iter().flatten().any(|m| m.id == *voter)
        {
            r.error(
                format!("store.voters[{i}]"),
                format!("{voter} is neither store.node_id nor in store.members"),
            );
        }
    }
    if let Some(id) = node_id
        && !listed.is_empty()
        && !listed.contains(&Some(id))
    {
        r.error(
            "store.voters",
            format!("must contain this node's store.node_id ({id})"),
        );
    }
    Some(StoreSettings {
        node_id: node_id?,
        voters: voters?.into_iter().collect::<Option<_>>()?,
        tick: tick.unwrap_or(defaults.tick),
        election_tick: election_tick
            .unwrap_or(u32::try_from(defaults.election_tick).unwrap_or(u32::MAX)),
        members: members.into_iter().collect::<Option<_>>()?,
    })
}

fn read_peers(r: &mut Reader, root: &mut Table, base_dir: &Path) -> Vec<Option<PeerConfig>> {
    let peers = r.list(root, "", "peers", |r, value, p| {
        let mut t = r.table(value, p)?;
        r.missing(&t, p, &["cluster", "address", "trust_bundle"]);
        let cluster = r.take(&mut t, p, "cluster", cluster_name);
        let trust_domain = r.take(&mut t, p, "trust_domain", trust_domain);
        let address = r.take(&mut t, p, "address", socket_addr);
        let trust_bundle = r.take(&mut t, p, "trust_bundle", path);
        r.finish(t, p);
        // Defaulting a bad trust domain would only invite confusing follow-up errors.
        if r.failed(&join(p, "trust_domain")) {
            return None;
        }
        let cluster = cluster?;
        Some(PeerConfig {
            trust_domain: trust_domain.unwrap_or_else(|| format!("{cluster}.mesh")),
            cluster,
            address: address?,
            // `join` keeps absolute paths as they are.
            trust_bundle: base_dir.join(trust_bundle?),
        })
    });
    peers.unwrap_or_default()
}

fn check_peers(
    r: &mut Reader,
    peers: &[Option<PeerConfig>],
    own: Option<&ClusterName>,
    own_td: Option<&String>,
) {
    for (i, peer) in peers.iter().enumerate() {
        let Some(peer) = peer else { continue };
        if own == Some(&peer.cluster) {
            r.error(
                format!("peers[{i}].cluster"),
                format!("{:?} is this gateway's own cluster", peer.cluster.as_str()),
            );
        }
        // Sharing a trust domain would let the peer's roots vouch for our own workloads.
        if own_td == Some(&peer.trust_domain) {
            r.error(
                format!("peers[{i}].trust_domain"),
                format!("{:?} is this cluster's own trust domain", peer.trust_domain),
            );
        }
        let earlier = peers[..i]
            .iter()
            .position(|e| e.as_ref().is_some_and(|e| e.cluster == peer.cluster));
        if let Some(j) = earlier {
            r.error(
                format!("peers[{i}].cluster"),
                format!(
                    "duplicate peer {:?} (also peers[{j}])",
                    peer.cluster.as_str()
                ),
            );
        }
    }
}

fn read_services(r: &mut Reader, root: &mut Table) -> Vec<Option<LocalService>> {
    let services = r.list(root, "", "services", |r, value, p| {
        let mut t = r.table(value, p)?;
        r.missing(&t, p, &["name", "namespace", "endpoints", "ports"]);
        let name = r.take(&mut t, p, "name", label("service name"));
        let namespace = r.take(&mut t, p, "namespace", label("namespace"));
        let export = r.take(&mut t, p, "export", boolean);
        let endpoints = r.list(&mut t, p, "endpoints", |r, v, p| r.value(v, p, socket_addr));
        let ports = r.list(&mut t, p, "ports", |r, value, p| {
            let mut t = r.table(value, p)?;
            r.missing(&t, p, &["port", "protocol"]);
            let port = r.take(&mut t, p, "port", int_in(1u16, u16::MAX));
            let protocol = r.take(&mut t, p, "protocol", protocol);
            r.finish(t, p);
            Some(ServicePort {
                port: port?,
                protocol: protocol?,
            })
        });
        r.finish(t, p);
        if endpoints.as_ref().is_some_and(Vec::is_empty) {
            r.error(join(p, "endpoints"), "must list at least one endpoint");
        }
        if ports.as_ref().is_some_and(Vec::is_empty) {
            r.error(join(p, "ports"), "must list at least one port");
        }
        // Listeners are keyed by port, so two entries for one port would be ambiguous.
        let listed = ports.as_deref().unwrap_or_default();
        for (i, port) in listed.iter().enumerate() {
            let Some(port) = port else { continue };
            let earlier = listed[..i]
                .iter()
                .position(|e| e.is_some_and(|e| e.port == port.port));
            if let Some(j) = earlier {
                r.error(
                    format!("{p}.ports[{i}].port"),
                    format!("duplicate port {} (also ports[{j}])", port.port),
                );
            }
        }
        let key = ServiceKey::new(&name?, &namespace?)
            .map_err(|e| r.error(p, e.to_string()))
            .ok()?;
        Some(LocalService {
            endpoint_labels: Default::default(),
            endpoint_accounts: Default::default(),
            key,
            ports: ports?.into_iter().collect::<Option<_>>()?,
            endpoints: endpoints?.into_iter().collect::<Option<_>>()?,
            export: export.unwrap_or(true),
        })
    });
    let services = services.unwrap_or_default();
    for (i, service) in services.iter().enumerate() {
        let Some(service) = service else { continue };
        let earlier = services[..i]
            .iter()
            .position(|e| e.as_ref().is_some_and(|e| e.key == service.key));
        if let Some(j) = earlier {
            r.error(
                format!("services[{i}]"),
                format!("duplicate service {} (also services[{j}])", service.key),
            );
        }
    }
    services
}

/// `--join`, `--token`/`--token-file`: both or neither, a URL we can call, a token that looks
/// like one, and no fixed `[store]` group beside it.
fn read_join(r: &mut Reader, ov: &Overrides, has_store: bool) -> Option<JoinSettings> {
    let token = match (&ov.join_token, &ov.join_token_file) {
        (Some(_), Some(_)) => {
            r.error("--token", "give --token or --token-file, not both");
            return None;
        }
        (Some(token), None) => Some(token.trim().to_string()),
        (None, Some(file)) => match std::fs::read_to_string(file) {
            Ok(text) => Some(text.trim().to_string()),
            Err(e) => {
                r.error(
                    "--token-file",
                    format!("cannot read {}: {e}", file.display()),
                );
                return None;
            }
        },
        (None, None) => None,
    };
    let Some(url) = &ov.join else {
        if token.is_some() {
            r.error(
                "--token",
                "a join token needs --join <url of a gateway's admin API>",
            );
        }
        if ov.join_ca.is_some() {
            r.error(
                "--join-ca",
                "a join CA needs --join <url of a gateway's admin API>",
            );
        }
        return None;
    };
    let mut ok = true;
    let https = url.starts_with("https://");
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"));
    match rest.map(|r| r.trim_end_matches('/')) {
        Some(authority) if !authority.is_empty() && !authority.contains('/') => {}
        _ => {
            ok = false;
            r.error("--join", format!("{url:?} is not https://host:port"));
        }
    }
    let ca_pem = match (&ov.join_ca, https) {
        // A bad URL is reported already; what its CA should be cannot be told.
        _ if !ok => None,
        (Some(file), true) => match std::fs::read(file) {
            Ok(pem) => match join_ca_problem(&pem) {
                None => Some(pem),
                Some(problem) => {
                    ok = false;
                    r.error("--join-ca", format!("{}: {problem}", file.display()));
                    None
                }
            },
            Err(e) => {
                ok = false;
                r.error("--join-ca", format!("cannot read {}: {e}", file.display()));
                None
            }
        },
        // Learnt from the server at join time, with proof that it knows the token.
        (None, true) => None,
        (Some(_), false) => {
            ok = false;
            r.error(
                "--join-ca",
                "only an https:// --join URL is verified by a CA; this one is plain http://",
            );
            None
        }
        (None, false) => None,
    };
    if has_store {
        ok = false;
        r.error(
            "--join",
            "a gateway with a fixed [store] group cannot also join one; remove one of them",
        );
    }
    let token = match token {
        Some(t) if t.starts_with("cw_") && t.len() > 20 => Some(t),
        Some(_) => {
            r.error("--token", "not a Causeway token (cw_...)");
            None
        }
        None => {
            r.error("--join", "needs a join token: --token or --token-file");
            None
        }
    };
    match (ok, token) {
        (true, Some(token)) => Some(JoinSettings {
            url: url.trim_end_matches('/').to_string(),
            token,
            ca_pem,
        }),
        _ => None,
    }
}

/// Why `pem` cannot serve as a CA bundle, if it cannot.
fn join_ca_problem(pem: &[u8]) -> Option<String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    match CertificateDer::pem_slice_iter(pem).collect::<Result<Vec<_>, _>>() {
        Ok(certs) if certs.is_empty() => Some("no CERTIFICATE in it (expected PEM)".to_string()),
        Ok(_) => None,
        Err(e) => Some(format!("bad PEM: {e}")),
    }
}

fn check_listen(r: &mut Reader, listen: &Listen) {
    // UDP and TCP listeners could share an address, but doing so is almost always a copy-paste
    // slip. Port 0 is exempt: every such listener gets its own free port.
    let all = [
        ("listen.tunnel", listen.tunnel),
        ("listen.outbound", listen.outbound),
        ("listen.workload", listen.workload),
        ("listen.dns", listen.dns),
        ("listen.admin", listen.admin),
        ("listen.raft", listen.raft),
    ];
    for (i, (path, addr)) in all.iter().enumerate() {
        if let Some((other, _)) = all[..i].iter().find(|(_, a)| a == addr && addr.port() != 0) {
            r.error(*path, format!("{addr} is also {other}"));
        }
    }
}

/// Marks that an error has been recorded in the [`Reader`]; whoever holds one has nothing to add.
#[derive(Debug, Clone, Copy)]
struct Reported;

/// Walks a `toml::Table`, recording every problem with its path instead of stopping at the first.
#[derive(Default)]
struct Reader {
    errors: Vec<FieldError>,
    /// Keys asked for, by table path, so leftovers can be reported with what was expected.
    known: Vec<(String, &'static str)>,
}

impl Reader {
    fn error(&mut self, path: impl Into<String>, message: impl Into<String>) -> Reported {
        self.errors.push(FieldError {
            path: path.into(),
            message: message.into(),
        });
        Reported
    }

    fn failed(&self, path: &str) -> bool {
        self.errors.iter().any(|e| e.path == path)
    }

    fn value<T>(
        &mut self,
        value: Value,
        path: &str,
        parse: impl FnOnce(Value) -> Result<T, String>,
    ) -> Option<T> {
        parse(value)
            .map_err(|message| self.error(path, message))
            .ok()
    }

    /// Removes `key` from `table` and parses it: `None` if absent or bad (bad is reported).
    fn take<T>(
        &mut self,
        table: &mut Table,
        path: &str,
        key: &'static str,
        parse: impl FnOnce(Value) -> Result<T, String>,
    ) -> Option<T> {
        self.known.push((path.to_string(), key));
        let value = table.remove(key)?;
        self.value(value, &join(path, key), parse)
    }

    fn table(&mut self, value: Value, path: &str) -> Option<Table> {
        self.value(value, path, |v| match v {
            Value::Table(t) => Ok(t),
            other => Err(format!("expected a table, got {}", other.type_str())),
        })
    }

    /// A top-level `[section]`; absent means all defaults.
    fn section(&mut self, root: &mut Table, key: &'static str) -> Table {
        self.take(root, "", key, Ok)
            .and_then(|v| self.table(v, key))
            .unwrap_or_default()
    }

    /// An array whose items `item` parses; `None` if absent. Items keep their index (`None` for
    /// bad ones) so later checks can name `services[2]`.
    fn list<T>(
        &mut self,
        table: &mut Table,
        path: &str,
        key: &'static str,
        mut item: impl FnMut(&mut Self, Value, &str) -> Option<T>,
    ) -> Option<Vec<Option<T>>> {
        let items = self.take(table, path, key, |v| match v {
            Value::Array(items) => Ok(items),
            other => Err(format!("expected an array, got {}", other.type_str())),
        })?;
        let path = join(path, key);
        let items = items.into_iter().enumerate();
        Some(
            items
                .map(|(i, v)| item(self, v, &format!("{path}[{i}]")))
                .collect(),
        )
    }

    fn missing(&mut self, table: &Table, path: &str, required: &[&str]) {
        for key in required.iter().filter(|k| !table.contains_key(**k)) {
            self.error(join(path, key), "missing required field");
        }
    }

    /// Reports every key of `table` that no `take` asked for.
    fn finish(&mut self, table: Table, path: &str) {
        let known: Vec<&str> = self
            .known
            .iter()
            .filter(|(p, _)| p == path)
            .map(|(_, k)| *k)
            .collect();
        for key in table.keys() {
            self.error(
                join(path, key),
                format!("unknown field (expected one of: {})", known.join(", ")),
            );
        }
    }

    /// The flag's value if given (checked like the file's field), else the file's.
    fn choose<T>(
        &mut self,
        flag: &str,
        flag_value: &Option<String>,
        file_key: &str,
        file_value: Option<T>,
        parse: impl FnOnce(Value) -> Result<T, String>,
    ) -> Result<Option<T>, Reported> {
        match flag_value {
            Some(s) => self
                .value(Value::String(s.clone()), flag, parse)
                .map(Some)
                .ok_or(Reported),
            None if self.failed(file_key) => Err(Reported),
            None => Ok(file_value),
        }
    }
}

fn join(path: &str, key: &str) -> String {
    // Quote keys that would make the path ambiguous (dots, spaces, ...), as TOML itself would.
    let bare = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    let key = if bare {
        key.to_string()
    } else {
        format!("{key:?}")
    };
    if path.is_empty() {
        key
    } else {
        format!("{path}.{key}")
    }
}

// Field parsers: one per type, each turning a TOML value into a typed one or a message.

fn string(value: Value, expected: &str) -> Result<String, String> {
    match value {
        Value::String(s) => Ok(s),
        other => Err(format!("expected {expected}, got {}", other.type_str())),
    }
}

fn socket_addr(value: Value) -> Result<SocketAddr, String> {
    let s = string(value, "a socket address like \"127.0.0.1:15443\"")?;
    s.parse()
        .map_err(|_| format!("invalid socket address {s:?}"))
}

/// A Raft node id: 0 means "none" to Raft.
fn raft_node_id(value: Value) -> Result<u64, String> {
    match value {
        Value::Integer(n) if n >= 1 => Ok(n as u64),
        Value::Integer(n) => Err(format!("must be at least 1, got {n}")),
        other => Err(format!(
            "expected a node id (an integer), got {}",
            other.type_str()
        )),
    }
}

fn spiffe_id(value: Value) -> Result<SpiffeId, String> {
    let s = string(
        value,
        "a SPIFFE ID like \"spiffe://west.mesh/gateway/west-1\"",
    )?;
    SpiffeId::parse(&s).map_err(|e| e.to_string())
}

/// An IP address or a DNS name, as a certificate names a server.
fn server_name(value: Value) -> Result<ServerName<'static>, String> {
    let s = string(value, "a DNS name or IP address like \"gw.example.com\"")?;
    ServerName::try_from(s.clone())
        .map_err(|_| format!("{s:?} is neither an IP address nor a DNS name"))
}

fn ip_addr(value: Value) -> Result<IpAddr, String> {
    let s = string(value, "an IP address like \"127.0.0.1\"")?;
    s.parse().map_err(|_| format!("invalid IP address {s:?}"))
}

fn duration(value: Value) -> Result<Duration, String> {
    let s = string(value, "a duration like \"1s\"")?;
    humantime::parse_duration(&s)
        .map_err(|e| format!("expected a duration like \"1s\", got {s:?} ({e})"))
}

fn positive(value: Value) -> Result<Duration, String> {
    match duration(value)? {
        Duration::ZERO => Err("must be greater than 0".to_string()),
        d => Ok(d),
    }
}

fn at_least(min: Duration) -> impl Fn(Value) -> Result<Duration, String> {
    move |value| match duration(value)? {
        d if d < min => Err(format!(
            "must be at least {}, got {}",
            fmt_duration(min),
            fmt_duration(d)
        )),
        d => Ok(d),
    }
}

fn at_most(max: Duration) -> impl Fn(Value) -> Result<Duration, String> {
    move |value| match duration(value)? {
        d if d > max => Err(format!(
            "must be at most {}, got {}",
            fmt_duration(max),
            fmt_duration(d)
        )),
        d => Ok(d),
    }
}

fn duration_in(min: Duration, max: Duration) -> impl Fn(Value) -> Result<Duration, String> {
    move |value| match duration(value)? {
        d if d < min || d > max => Err(format!(
            "must be between {} and {}, got {}",
            fmt_duration(min),
            fmt_duration(max),
            fmt_duration(d)
        )),
        d => Ok(d),
    }
}

fn int_in<T>(min: T, max: T) -> impl Fn(Value) -> Result<T, String>
where
    T: TryFrom<i64> + Into<i64> + Copy + fmt::Display,
{
    move |value| match value {
        Value::Integer(n) if (min.into()..=max.into()).contains(&n) => {
            T::try_from(n).map_err(|_| format!("must be between {min} and {max}, got {n}"))
        }
        Value::Integer(n) => Err(format!("must be between {min} and {max}, got {n}")),
        other => Err(format!("expected an integer, got {}", other.type_str())),
    }
}

fn boolean(value: Value) -> Result<bool, String> {
    match value {
        Value::Boolean(b) => Ok(b),
        other => Err(format!("expected true or false, got {}", other.type_str())),
    }
}

fn path(value: Value) -> Result<PathBuf, String> {
    match string(value, "a path")? {
        s if s.is_empty() => Err("must not be empty".to_string()),
        s => Ok(PathBuf::from(s)),
    }
}

fn cluster_name(value: Value) -> Result<ClusterName, String> {
    ClusterName::new(&string(value, "a cluster name")?).map_err(|e| e.to_string())
}

fn label(what: &'static str) -> impl Fn(Value) -> Result<String, String> {
    move |value| {
        let s = string(value, "a DNS label")?;
        check_dns_label(what, &s)
            .map(|()| s)
            .map_err(|e| e.to_string())
    }
}

fn gateway_name(value: Value) -> Result<String, String> {
    label("gateway name")(value)
}

fn protocol(value: Value) -> Result<Protocol, String> {
    string(value, "\"http\" or \"tcp\"")?
        .parse()
        .map_err(|e: federation::model::ModelError| e.to_string())
}

/// SPIFFE's trust domain alphabet; the typed trust domain is built from this by the caller.
fn trust_domain(value: Value) -> Result<String, String> {
    let s = string(value, "a trust domain")?;
    let ok = (1..=255).contains(&s.len())
        && s.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_')
        });
    if ok {
        Ok(s)
    } else {
        Err(format!(
            "trust domain {s:?} is invalid (1-255 lowercase letters, digits, '.', '-' or '_')"
        ))
    }
}

// Serialization in the file's own shape, so `to_toml` is both readable and loadable.

fn fmt_duration(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

fn human<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&fmt_duration(*d))
}

/// Paths from flags may not be UTF-8; a lossy rendering beats a log line that fails.
fn path_lossy<S: Serializer>(p: &Path, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&p.display())
}

fn server_names<S: Serializer>(names: &[ServerName<'static>], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(names.iter().map(ServerName::to_str))
}

fn services_as_file<S: Serializer>(services: &[LocalService], s: S) -> Result<S::Ok, S::Error> {
    #[derive(Serialize)]
    struct Entry<'a> {
        name: &'a str,
        namespace: &'a str,
        export: bool,
        endpoints: &'a [SocketAddr],
        ports: &'a [ServicePort],
    }
    s.collect_seq(services.iter().map(|svc| Entry {
        name: svc.key.name(),
        namespace: svc.key.namespace(),
        export: svc.export,
        endpoints: &svc.endpoints,
        ports: &svc.ports,
    }))
}

// The path is explicit so that fuzz/fuzz_targets/config.rs, which includes this file by
// `#[path]`, resolves it the same way (rustfmt follows it even where cfg(test) is off).
#[cfg(test)]
#[path = "config/proptests.rs"]
mod proptests;

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../deploy/causeway.example.toml");

    fn parse(text: &str) -> Result<Config, ConfigErrors> {
        Config::from_toml_str(text, Path::new("/etc/causeway"), &Overrides::default())
    }

    fn paths(result: Result<Config, ConfigErrors>) -> Vec<String> {
        let mut paths: Vec<String> = match result {
            Ok(config) => panic!("accepted: {config:?}"),
            Err(e) => e.errors.into_iter().map(|e| e.path).collect(),
        };
        paths.sort();
        paths
    }

    fn message(result: Result<Config, ConfigErrors>, path: &str) -> String {
        let errors = result.expect_err("should be rejected").errors;
        let found = errors.iter().find(|e| e.path == path);
        found
            .unwrap_or_else(|| panic!("no error at {path}: {errors:?}"))
            .message
            .clone()
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn client_connection_limits_are_typed_and_range_checked() {
        let config = parse(
            "[dataplane]\nmax_client_connections = 200\nheader_read_timeout = \"1s\"\nidle_timeout = \"2s\"\n",
        )
        .expect("valid limits");
        assert_eq!(config.dataplane.max_client_connections, 200);
        assert_eq!(config.dataplane.header_read_timeout, Duration::from_secs(1));
        assert_eq!(config.dataplane.idle_timeout, Duration::from_secs(2));
        // The effective config loads back the same.
        assert_eq!(parse(&config.to_toml()).unwrap(), config);
        let errors = parse(
            "[dataplane]\nmax_client_connections = 0\nheader_read_timeout = \"0s\"\nidle_timeout = 60\n",
        )
        .expect_err("bad limits accepted")
        .errors;
        let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "dataplane.max_client_connections",
                "dataplane.header_read_timeout",
                "dataplane.idle_timeout"
            ],
            "{errors:?}"
        );
        assert!(
            errors[0].message.contains("between 1 and 1000000"),
            "{}",
            errors[0].message
        );
        assert!(
            errors[1].message.contains("between 100ms and 10m"),
            "{}",
            errors[1].message
        );
        assert!(
            errors[2].message.contains("duration"),
            "{}",
            errors[2].message
        );
    }

    #[test]
    fn empty_file_gives_defaults() {
        let config = parse("").unwrap();
        assert_eq!(config.cluster.as_str(), "local");
        assert_eq!(config.trust_domain, "local.mesh");
        assert_eq!(config.name, "local-1");
        assert_eq!(config.data_dir, Path::new("./causeway-data"));
        assert_eq!(
            config.listen,
            Listen {
                tunnel: addr("127.0.0.1:15443"),
                outbound: addr("127.0.0.1:15001"),
                workload: addr("127.0.0.1:15008"),
                dns: addr("127.0.0.1:15053"),
                admin: addr("127.0.0.1:15000"),
                raft: addr("127.0.0.1:15012"),
            }
        );
        assert_eq!(config.store, None);
        assert!(config.admin.tls && config.admin.names.is_empty());
        assert_eq!(config.tunnel, TunnelSettings::default());
        assert_eq!(config.identity.svid_ttl, Duration::from_secs(3600));
        assert_eq!(config.shutdown.drain_timeout, Duration::from_secs(10));
        assert_eq!(config.dataplane.worker_threads, 1);
        assert_eq!(config.dataplane.busy_poll, Duration::ZERO);
        let zero = Config::from_toml_str(
            "[dataplane]\nworker_threads = 0\n",
            Path::new("."),
            &Overrides::default(),
        );
        let errors = zero.expect_err("0 worker threads accepted").errors;
        assert_eq!(errors[0].path, "dataplane.worker_threads");
        let spinning = Config::from_toml_str(
            "[dataplane]\nbusy_poll = \"1s\"\n",
            Path::new("."),
            &Overrides::default(),
        );
        let errors = spinning.expect_err("a 1 s busy poll accepted").errors;
        assert_eq!(errors[0].path, "dataplane.busy_poll");
        assert!(
            errors[0].message.contains("at most 10ms"),
            "{}",
            errors[0].message
        );
        assert_eq!(config.dataplane.max_client_connections, 10_000);
        assert_eq!(
            config.dataplane.header_read_timeout,
            Duration::from_secs(10)
        );
        assert_eq!(config.dataplane.idle_timeout, Duration::from_secs(60));
        assert!(config.peers.is_empty() && config.services.is_empty());
        // No file at all is the same as an empty one.
        assert_eq!(Config::load(&Overrides::default()).unwrap(), config);
    }

    #[test]
    fn example_file_parses() {
        let config = parse(EXAMPLE).unwrap();
        assert_eq!(config.cluster.as_str(), "east");
        assert_eq!(
            (config.trust_domain.as_str(), config.name.as_str()),
            ("east.mesh", "east-1")
        );
        assert_eq!(config.tunnel.max_streams, 1024);
        assert_eq!(config.listen.tunnel, addr("127.0.0.1:15443"));
        assert!(config.admin.tls);
        assert_eq!(
            config.admin.names,
            [
                ServerName::try_from("gw-east.example.com").unwrap(),
                ServerName::try_from("10.0.0.5").unwrap()
            ]
        );
        let west = &config.peers[0];
        assert_eq!(
            (west.cluster.as_str(), west.trust_domain.as_str()),
            ("west", "west.mesh")
        );
        assert_eq!(west.address, addr("127.0.0.2:15443"));
        assert_eq!(west.trust_bundle, Path::new("/etc/causeway/west-ca.pem"));
        let echo = &config.services[0];
        assert_eq!(echo.key.to_string(), "echo.demo");
        assert_eq!(
            echo.port(80),
            Some(ServicePort {
                port: 80,
                protocol: Protocol::Http
            })
        );
        assert_eq!(echo.endpoints.len(), 2);
        assert!(echo.export && !config.services[1].export);
        assert_eq!(config.services[1].ports[0].protocol, Protocol::Tcp);
    }

    #[test]
    fn every_bad_field_is_reported_with_its_path() {
        let text = r#"
            cluster = "East"
            bind = "localhost"
            [listen]
            dns = 15053
            [tunnel]
            keep_alive = "soon"
            max_streams = 0
            max_preamble_bytes = 70000
            [identity]
            svid_ttl = "1s"
            [[peers]]
            cluster = "west"
            address = "127.0.0.2:15443"
            trust_bundle = "west.pem"
            [[peers]]
            cluster = "north"
            address = "x"
            [[services]]
            name = "echo"
            namespace = "demo"
            endpoints = []
            ports = [{ port = 80, protocol = "udp" }, { port = 0, protocol = "tcp" }]
        "#;
        let result = parse(text);
        let errors = result.as_ref().map(|_| ()).expect_err("rejected");
        assert!(
            errors
                .errors
                .iter()
                .any(|e| e.to_string() == r#"peers[1].address: invalid socket address "x""#)
        );
        assert_eq!(
            paths(result),
            [
                "bind",
                "cluster",
                "identity.svid_ttl",
                "listen.dns",
                "peers[1].address",
                "peers[1].trust_bundle",
                "services[0].endpoints",
                "services[0].ports[0].protocol",
                "services[0].ports[1].port",
                "tunnel.keep_alive",
                "tunnel.max_preamble_bytes",
                "tunnel.max_streams",
            ]
        );
        assert!(
            message(
                parse("[tunnel]\nkeep_alive = \"soon\""),
                "tunnel.keep_alive"
            )
            .starts_with("expected a duration like \"1s\"")
        );
        assert_eq!(
            message(parse("[tunnel]\nkeep_alive = \"0s\""), "tunnel.keep_alive"),
            "must be greater than 0"
        );
    }

    #[test]
    fn unknown_fields_are_reported_with_their_paths() {
        let text = r#"
            clutser = "east"
            [listen]
            dsn = "127.0.0.1:53"
            [[services]]
            name = "echo"
            namespace = "demo"
            endpoints = ["127.0.0.1:80"]
            ports = [{ port = 80, protocol = "tcp", weight = 1 }]
            [metrics]
        "#;
        assert_eq!(
            paths(parse(text)),
            [
                "clutser",
                "listen.dsn",
                "metrics",
                "services[0].ports[0].weight"
            ]
        );
        let message = message(parse("[listen]\ndsn = \"x\""), "listen.dsn");
        assert_eq!(
            message,
            "unknown field (expected one of: tunnel, outbound, workload, dns, admin, raft)"
        );
    }

    #[test]
    fn security_settings_default_to_istio_system_and_no_trust_in_addresses() {
        let config = parse("").unwrap();
        assert_eq!(config.security, SecuritySettings::default());
        assert_eq!(config.security.root_namespace, "istio-system");
        assert!(!config.security.trust_source_address);
        let config =
            parse("[security]\nroot_namespace = \"mesh-root\"\ntrust_source_address = true\n")
                .unwrap();
        assert_eq!(config.security.root_namespace, "mesh-root");
        assert!(config.security.trust_source_address);
        assert_eq!(
            paths(parse(
                "[security]\nroot_namespace = \"Not_A_Label\"\ntrust_source_address = \"yes\"\n"
            )),
            ["security.root_namespace", "security.trust_source_address"]
        );
    }

    #[test]
    fn overrides_beat_the_file_and_bind_moves_only_defaults() {
        let text = r#"
            cluster = "east"
            name = "east-7"
            bind = "127.0.0.5"
            [listen]
            admin = "127.0.0.9:9000"
        "#;
        let from_file = parse(text).unwrap();
        assert_eq!(from_file.listen.tunnel, addr("127.0.0.5:15443"));
        assert_eq!(from_file.listen.admin, addr("127.0.0.9:9000"));

        let overrides = Overrides {
            cluster: Some("south".into()),
            data_dir: Some("/var/lib/causeway".into()),
            bind: Some("0.0.0.0".parse().unwrap()),
            dns_addr: Some(addr("127.0.0.1:0")),
            ..Overrides::default()
        };
        let config = Config::from_toml_str(text, Path::new("."), &overrides).unwrap();
        assert_eq!(config.cluster.as_str(), "south");
        // Defaults derived from the cluster follow the override; explicit file values stay.
        assert_eq!(config.trust_domain, "south.mesh");
        assert_eq!(config.name, "east-7");
        assert_eq!(config.data_dir, Path::new("/var/lib/causeway"));
        assert_eq!(config.listen.tunnel, addr("0.0.0.0:15443"));
        assert_eq!(config.listen.outbound, addr("0.0.0.0:15001"));
        assert_eq!(config.listen.dns, addr("127.0.0.1:0"));
        assert_eq!(config.listen.admin, addr("127.0.0.9:9000"));
    }

    #[test]
    fn bad_overrides_are_reported_by_flag_name() {
        let overrides = Overrides {
            cluster: Some("South".into()),
            name: Some("a.b".into()),
            trust_domain: Some("Mesh!".into()),
            ..Overrides::default()
        };
        let result = Config::from_toml_str("", Path::new("."), &overrides);
        assert_eq!(paths(result), ["--cluster", "--name", "--trust-domain"]);
    }

    #[test]
    fn overrides_come_from_flags() {
        use clap::{CommandFactory, Parser};
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            overrides: Overrides,
        }
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from([
            "causeway",
            "--cluster",
            "east",
            "--bind",
            "0.0.0.0",
            "--admin-addr",
            "127.0.0.1:0",
        ])
        .unwrap();
        assert_eq!(cli.overrides.cluster.as_deref(), Some("east"));
        assert_eq!(cli.overrides.admin_addr, Some(addr("127.0.0.1:0")));
        assert!(Cli::try_parse_from(["causeway", "--bind", "nowhere"]).is_err());
    }

    #[test]
    fn relative_trust_bundles_resolve_against_the_config_dir() {
        let text = r#"
            [[peers]]
            cluster = "west"
            address = "127.0.0.2:15443"
            trust_bundle = "bundles/west.pem"
            [[peers]]
            cluster = "north"
            address = "127.0.0.3:15443"
            trust_bundle = "/pki/north.pem"
        "#;
        let config =
            Config::from_toml_str(text, Path::new("/srv/mesh"), &Overrides::default()).unwrap();
        assert_eq!(
            config.peers[0].trust_bundle,
            Path::new("/srv/mesh/bundles/west.pem")
        );
        assert_eq!(config.peers[1].trust_bundle, Path::new("/pki/north.pem"));
        assert_eq!(config.peers[1].trust_domain, "north.mesh");
    }

    #[test]
    fn load_reads_the_file_and_resolves_against_its_directory() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("causeway.toml");
        std::fs::write(
            &file,
            "[[peers]]\ncluster = \"west\"\naddress = \"127.0.0.2:1\"\ntrust_bundle = \"w.pem\"\n",
        )
        .unwrap();
        let overrides = Overrides {
            config: Some(file.clone()),
            ..Overrides::default()
        };
        let config = Config::load(&overrides).unwrap();
        assert_eq!(config.peers[0].trust_bundle, dir.path().join("w.pem"));

        std::fs::write(&file, "cluster = ").unwrap();
        assert_eq!(
            paths(Config::load(&overrides)),
            [file.display().to_string()]
        );

        let missing = Overrides {
            config: Some(dir.path().join("nope.toml")),
            ..Overrides::default()
        };
        let message = message(Config::load(&missing), "--config");
        assert!(message.contains("nope.toml"), "{message}");
    }

    #[test]
    fn duplicates_and_self_references_are_rejected() {
        let service = r#"
            [[services]]
            name = "echo"
            namespace = "demo"
            endpoints = ["127.0.0.1:80"]
            ports = [{ port = 80, protocol = "http" }, { port = 80, protocol = "tcp" }]
        "#;
        let text = format!("{service}{service}");
        let result = parse(&text);
        assert_eq!(
            message(parse(&text), "services[1]"),
            "duplicate service echo.demo (also services[0])"
        );
        assert_eq!(
            paths(result),
            [
                "services[0].ports[1].port",
                "services[1]",
                "services[1].ports[1].port"
            ]
        );

        let text = r#"
            cluster = "east"
            trust_domain = "mesh.example"
            [[peers]]
            cluster = "east"
            address = "127.0.0.2:15443"
            trust_bundle = "a.pem"
            [[peers]]
            cluster = "west"
            trust_domain = "mesh.example"
            address = "127.0.0.3:15443"
            trust_bundle = "b.pem"
            [[peers]]
            cluster = "west"
            address = "127.0.0.4:15443"
            trust_bundle = "c.pem"
        "#;
        assert_eq!(
            message(parse(text), "peers[0].cluster"),
            "\"east\" is this gateway's own cluster"
        );
        assert_eq!(
            paths(parse(text)),
            [
                "peers[0].cluster",
                "peers[1].trust_domain",
                "peers[2].cluster"
            ]
        );

        let text = "[listen]\ntunnel = \"127.0.0.1:9000\"\nadmin = \"127.0.0.1:9000\"\n";
        assert_eq!(
            message(parse(text), "listen.admin"),
            "127.0.0.1:9000 is also listen.tunnel"
        );
    }

    const STORE: &str = r#"
        [store]
        node_id = 1
        voters = [1, 2, 3]
        [[store.members]]
        id = 2
        address = "127.0.0.2:15012"
        gateway = "spiffe://west.mesh/gateway/west-1"
        [[store.members]]
        id = 3
        address = "127.0.0.3:15012"
        gateway = "spiffe://edge.mesh/gateway/edge-1"
    "#;

    #[test]
    fn store_section_parses_with_defaults() {
        let config = parse(STORE).unwrap();
        let store = config.store.as_ref().expect("a store");
        let defaults = store::NodeConfig::new(1, vec![1]);
        assert_eq!(
            (store.node_id, store.voters.as_slice()),
            (1, &[1, 2, 3][..])
        );
        assert_eq!(store.tick, defaults.tick);
        assert_eq!(store.election_tick as usize, defaults.election_tick);
        assert_eq!(store.members.len(), 2);
        assert_eq!(store.members[1].address, addr("127.0.0.3:15012"));
        assert_eq!(
            store.members[0].gateway.as_str(),
            "spiffe://west.mesh/gateway/west-1"
        );
        assert_eq!(config.listen.raft, addr("127.0.0.1:15012"));
        assert_eq!(parse(&config.to_toml()).unwrap(), config);

        let tuned =
            parse("[store]\nnode_id = 7\nvoters = [7]\ntick = \"50ms\"\nelection_tick = 4\n")
                .unwrap()
                .store
                .unwrap();
        assert_eq!(tuned.tick, Duration::from_millis(50));
        assert_eq!(tuned.election_tick, 4);
        assert!(tuned.members.is_empty());
        let zero = parse("[listen]\nraft = \"127.0.0.1:0\"\n[store]\nnode_id = 1\nvoters = [1]\n");
        assert_eq!(zero.unwrap().listen.raft, addr("127.0.0.1:0"));
    }

    /// The example's commented-out `[store]` block, uncommented, is a valid store section.
    #[test]
    fn example_store_block_parses_when_uncommented() {
        let start = EXAMPLE.find("# [store]\n").expect("a [store] example");
        let block: String = EXAMPLE[start..]
            .lines()
            .take_while(|l| !l.is_empty())
            .map(|l| l.strip_prefix("# ").unwrap_or(l.trim_start_matches('#')))
            .map(|l| format!("{l}\n"))
            .collect();
        let config = parse(&format!("{EXAMPLE}\n{block}")).unwrap();
        let store = config.store.expect("the store block");
        assert_eq!((store.node_id, store.voters), (1, vec![1, 2, 3]));
        assert_eq!(store.members.len(), 2);
        assert_eq!(config.listen.raft, addr("127.0.0.1:15012"));
    }

    #[test]
    fn every_bad_store_field_is_reported_with_its_path() {
        let text = r#"
            [listen]
            admin = "127.0.0.1:15012"
            [store]
            voters = [2, 2, 0, 9]
            tick = "0s"
            election_tick = 1
            colour = "blue"
            [[store.members]]
            id = 2
            address = "nowhere"
            gateway = "https://west"
            [[store.members]]
            id = 3
            address = "127.0.0.3:15012"
            gateway = "spiffe://edge.mesh/gateway/edge-1"
            [[store.members]]
            id = 3
            address = "127.0.0.4:15012"
            gateway = "spiffe://edge.mesh/gateway/edge-1"
        "#;
        assert_eq!(
            paths(parse(text)),
            [
                "listen.raft",
                "store.colour",
                "store.election_tick",
                "store.members[0].address",
                "store.members[0].gateway",
                "store.members[2].gateway",
                "store.members[2].id",
                "store.node_id",
                "store.tick",
                "store.voters[1]",
                "store.voters[2]",
            ]
        );
        assert_eq!(
            message(parse(text), "store.node_id"),
            "missing required field"
        );
        assert_eq!(
            message(parse(text), "listen.raft"),
            "127.0.0.1:15012 is also listen.admin"
        );

        let text = r#"
            [store]
            node_id = 1
            voters = [2]
            [[store.members]]
            id = 1
            address = "127.0.0.2:15012"
            gateway = "spiffe://west.mesh/gateway/west-1"
        "#;
        assert_eq!(
            paths(parse(text)),
            ["store.members[0].id", "store.voters", "store.voters[0]"]
        );
        assert_eq!(
            message(parse(text), "store.voters"),
            "must contain this node's store.node_id (1)"
        );
        assert_eq!(
            message(parse(text), "store.voters[0]"),
            "2 is neither store.node_id nor in store.members"
        );
        assert_eq!(
            message(parse(text), "store.members[0].id"),
            "1 is this node's own store.node_id"
        );
        assert_eq!(
            paths(parse("[store]\nnode_id = 1\nvoters = []\n")),
            ["store.voters"]
        );
        assert_eq!(paths(parse("store = 1\n")), ["store"]);
    }

    #[test]
    fn admin_section_is_checked_and_names_the_certificate() {
        let text = r#"
            [admin]
            tls = "yes"
            names = ["gw.example.com", "not a name", 7]
            colour = "blue"
        "#;
        assert_eq!(
            paths(parse(text)),
            [
                "admin.colour",
                "admin.names[1]",
                "admin.names[2]",
                "admin.tls"
            ]
        );
        assert_eq!(
            message(parse(text), "admin.names[1]"),
            "\"not a name\" is neither an IP address nor a DNS name"
        );
        assert_eq!(paths(parse("admin = 1\n")), ["admin"]);

        let config =
            parse("[admin]\ntls = false\nnames = [\"10.0.0.5\", \"127.0.0.1\"]\n").unwrap();
        assert!(!config.admin.tls);
        assert_eq!(parse(&config.to_toml()).unwrap(), config);
        let shown = |names: Vec<ServerName<'static>>| -> Vec<String> {
            names.iter().map(|n| n.to_str().into_owned()).collect()
        };
        assert_eq!(
            shown(config.admin.server_names(addr("127.0.0.5:15000"), "east-1")),
            [
                "127.0.0.5",
                "127.0.0.1",
                "::1",
                "localhost",
                "east-1",
                "10.0.0.5"
            ]
        );
        // An unspecified address names nothing a client could dial.
        assert_eq!(
            shown(config.admin.server_names(addr("0.0.0.0:15000"), "east-1")),
            ["127.0.0.1", "::1", "localhost", "east-1", "10.0.0.5"]
        );
    }

    #[test]
    fn joining_over_https_takes_the_ca_of_the_gateway_joined_through_or_discovers_it() {
        let dir = tempfile::tempdir().unwrap();
        let td = federation::identity::TrustDomain::parse("east.mesh").unwrap();
        federation::identity::CertificateAuthority::load_or_create(&dir.path().join("ca"), &td)
            .unwrap();
        let ca = dir.path().join("ca/ca.pem");
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not pem").unwrap();
        let token = "cw_0123456789ab_0123456789abcdef";
        let join = |url: &str, ca: Option<&Path>| Overrides {
            join: Some(url.to_string()),
            join_token: Some(token.to_string()),
            join_ca: ca.map(Path::to_path_buf),
            ..Overrides::default()
        };
        let load = |ov: &Overrides| Config::from_toml_str("", Path::new("."), ov);

        let config = load(&join("https://127.0.0.1:15000/", Some(&ca))).unwrap();
        let settings = config.join.expect("join settings");
        assert_eq!(settings.url, "https://127.0.0.1:15000");
        assert_eq!(settings.ca_pem, Some(std::fs::read(&ca).unwrap()));
        assert!(!format!("{settings:?}").contains(token));
        // Plain HTTP stays possible, for meshes run with [admin] tls = false.
        let plain = load(&join("http://127.0.0.1:15000", None)).unwrap();
        assert_eq!(plain.join.unwrap().ca_pem, None);

        // Without a CA the joiner discovers the mesh's CAs (checked by the token) at join time.
        let discover = load(&join("https://127.0.0.1:15000", None)).unwrap();
        assert_eq!(discover.join.unwrap().ca_pem, None);
        assert_eq!(
            paths(load(&join("https://127.0.0.1:15000", Some(&junk)))),
            ["--join-ca"]
        );
        assert_eq!(
            paths(load(&join(
                "https://127.0.0.1:15000",
                Some(&dir.path().join("nope.pem"))
            ))),
            ["--join-ca"]
        );
        assert_eq!(
            paths(load(&join("http://127.0.0.1:15000", Some(&ca)))),
            ["--join-ca"]
        );
        assert_eq!(paths(load(&join("ftp://gw", Some(&ca)))), ["--join"]);
        let stray = Overrides {
            join_ca: Some(ca.clone()),
            ..Overrides::default()
        };
        assert_eq!(paths(load(&stray)), ["--join-ca"]);
    }

    #[test]
    fn keep_alive_must_be_shorter_than_idle_timeout() {
        let result = parse("[tunnel]\nkeep_alive = \"5s\"\n");
        assert_eq!(
            message(result, "tunnel.keep_alive"),
            "must be shorter than tunnel.idle_timeout (5s), got 5s"
        );
        assert!(parse("[tunnel]\nkeep_alive = \"10s\"\nidle_timeout = \"30s\"\n").is_ok());
        // A bad idle_timeout is reported once, not again as a keep_alive problem.
        assert_eq!(
            paths(parse("[tunnel]\nidle_timeout = \"x\"\n")),
            ["tunnel.idle_timeout"]
        );
    }

    #[test]
    fn syntax_errors_name_the_line() {
        let errors = parse("cluster = \"east\"\n[tunnel\n").unwrap_err();
        assert_eq!(errors.errors.len(), 1);
        let shown = errors.to_string();
        assert!(
            shown.starts_with("invalid configuration (1 problem):\n  "),
            "{shown}"
        );
        assert!(shown.contains("line 2"), "{shown}");
    }

    #[test]
    fn errors_display_one_per_line() {
        let errors = parse("cluster = 1\nname = \"-\"\n")
            .unwrap_err()
            .to_string();
        let lines: Vec<&str> = errors.lines().collect();
        assert_eq!(lines[0], "invalid configuration (2 problems):");
        assert_eq!(lines[1], "  cluster: expected a cluster name, got integer");
        assert!(
            lines[2].starts_with("  name: gateway name \"-\" is not a DNS label"),
            "{errors}"
        );
    }

    #[test]
    fn to_toml_round_trips() {
        let config = parse(EXAMPLE).unwrap();
        let text = config.to_toml();
        assert!(
            text.contains("keep_alive = \"1s\"") && text.contains("svid_ttl = \"1h\""),
            "{text}"
        );
        assert_eq!(parse(&text).unwrap(), config, "{text}");
        let defaults = parse("").unwrap();
        assert_eq!(parse(&defaults.to_toml()).unwrap(), defaults);
    }

    /// Fuzz-style: mutations of the example file never panic the parser; every refusal names
    /// at least one problem, each with a message.
    #[test]
    fn mutated_files_parse_or_report_never_panic() {
        let example = include_str!("../deploy/causeway.example.toml")
            .as_bytes()
            .to_vec();
        let mut state: u64 = 0xc0ffee;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let noise = b"=\"[]{}.,0123456789azAZ_- \n#:";
        for _ in 0..3_000 {
            let mut bytes = example.clone();
            for _ in 0..1 + next() % 4 {
                let at = (next() % bytes.len() as u64) as usize;
                bytes[at] = noise[(next() % noise.len() as u64) as usize];
            }
            let text = String::from_utf8_lossy(&bytes);
            if let Err(e) =
                Config::from_toml_str(&text, Path::new("/etc/causeway"), &Overrides::default())
            {
                assert!(!e.errors.is_empty());
                assert!(e.errors.iter().all(|f| !f.message.is_empty()), "{e}");
            }
        }
    }
}
