//! `causeway demo`: three clusters on one machine, each gateway on the default ports of its
//! own loopback address, with an echo service in two of them.
//!
//! ```text
//!   east 127.0.0.1 (clients) ──QUIC──> west 127.0.0.2  echo.demo v1, echo-tcp.demo
//!                             └─QUIC──> edge 127.0.0.3  echo.demo v2
//! ```
//!
//! (`--net 127.B.C` moves the three to `127.B.C.1`–`.3`, e.g. beside a demo already running.)
//!
//! The mesh forms the way an operator would form it: east founds it, west and edge join through
//! east's admin API with one-time join tokens, and the echo services are registered through
//! the REST API (`Service` + `ServiceExport`). The demo then writes a CLI context, so
//! `causeway status` / `get` / `apply` work from another terminal with no flags.
//!
//! The admin APIs speak HTTPS, as every gateway's does by default: each gateway's certificate
//! comes from its own cluster's CA, so the demo's calls (and the joins, and the CLI context)
//! trust east's CA, `<dir>/east/ca/ca.pem`, to reach east.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use tokio::sync::watch;

use crate::config::{Config, JoinSettings, Overrides};
use crate::{app, bootstrap, cli, echo, join, signal};

struct Cluster {
    name: &'static str,
    /// The last octet of its address in the demo's network.
    host: u8,
    /// (service, version) served by this cluster's echo, if any.
    echo: Option<&'static str>,
    tcp_echo: bool,
}

const CLUSTERS: [Cluster; 3] = [
    Cluster {
        name: "east",
        host: 1,
        echo: None,
        tcp_echo: false,
    },
    Cluster {
        name: "west",
        host: 2,
        echo: Some("v1"),
        tcp_echo: true,
    },
    Cluster {
        name: "edge",
        host: 3,
        echo: Some("v2"),
        tcp_echo: false,
    },
];
/// The loopback network the clusters live in, `<prefix>.1` to `.3` (`--net`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Net([u8; 3]);

impl Net {
    fn ip(self, c: &Cluster) -> Ipv4Addr {
        let [a, b, d] = self.0;
        Ipv4Addr::new(a, b, d, c.host)
    }
}

impl Default for Net {
    fn default() -> Self {
        Self([127, 0, 0])
    }
}

impl std::str::FromStr for Net {
    type Err = String;

    /// `127.B.C`: the first three octets of a loopback address.
    fn from_str(s: &str) -> Result<Self, String> {
        let ip: Ipv4Addr = format!("{s}.1").parse().map_err(|_| {
            format!("{s:?} is not the first three octets of an IPv4 address, e.g. 127.0.0")
        })?;
        if !ip.is_loopback() {
            return Err(format!("{s:?} is not a loopback network (127.x.y)"));
        }
        let [a, b, c, _] = ip.octets();
        Ok(Self([a, b, c]))
    }
}

/// The tour's traffic policy, written to `<dir>/policy/` so its commands can apply them.
const POLICY_FILES: [(&str, &str); 5] = [
    ("subsets.yaml", include_str!("demo_policy/subsets.yaml")),
    ("canary.yaml", include_str!("demo_policy/canary.yaml")),
    (
        "header-routing.yaml",
        include_str!("demo_policy/header-routing.yaml"),
    ),
    ("fault.yaml", include_str!("demo_policy/fault.yaml")),
    ("retries.yaml", include_str!("demo_policy/retries.yaml")),
];

/// Writes the tour's policy files under `dir/policy`.
fn write_policy_files(dir: &Path) -> anyhow::Result<PathBuf> {
    let policy = dir.join("policy");
    std::fs::create_dir_all(&policy)
        .with_context(|| format!("cannot create {}", policy.display()))?;
    for (name, text) in POLICY_FILES {
        let path = policy.join(name);
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(policy)
}

const ECHO_PORT: u16 = 18080;
const TCP_ECHO_PORT: u16 = 19000;
const TCP_SERVICE_PORT: u16 = 9000;

pub async fn run(dir: PathBuf, net: Net) -> anyhow::Result<()> {
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let dir = dir
        .canonicalize()
        .with_context(|| format!("cannot resolve {}", dir.display()))?;
    let (stop, stopped) = watch::channel(false);
    let mut backends = tokio::task::JoinSet::new();
    for c in &CLUSTERS {
        if let Some(version) = c.echo {
            let addr = format!("{}:{ECHO_PORT}", net.ip(c));
            let l = tokio::net::TcpListener::bind(&addr)
                .await
                .with_context(|| format!("cannot start the demo echo service on {addr}"))?;
            backends.spawn(echo::serve_http(
                l,
                c.name.into(),
                version.into(),
                stopped.clone(),
            ));
        }
        if c.tcp_echo {
            let addr = format!("{}:{TCP_ECHO_PORT}", net.ip(c));
            let l = tokio::net::TcpListener::bind(&addr)
                .await
                .with_context(|| format!("cannot start the demo TCP echo on {addr}"))?;
            backends.spawn(echo::serve_tcp(l, stopped.clone()));
        }
    }

    let (gateways, token) = match form_mesh(&dir, net).await {
        Ok(formed) => formed,
        Err(e) => {
            let _ = stop.send(true);
            while backends.join_next().await.is_some() {}
            return Err(e);
        }
    };
    // East is where the tour's clients stand.
    let east = (gateways[0].gateway.outbound, gateways[0].admin);
    let east_ca = east_ca(&dir);
    let ready = async {
        let client = east_client(&dir, east.1, &token)?;
        register_services(&client, net).await?;
        wait_for_voters(&client).await?;
        self_check(east.0).await?;
        let context = cli::context::write_context(client.server(), &token, Some(&east_ca))
            .context("cannot write the CLI context")?;
        write_policy_files(&dir)?;
        anyhow::Ok(context)
    };
    let outcome = tokio::select! {
        r = ready => r,
        _ = signal::terminated() => Err(anyhow::anyhow!("interrupted before the demo was ready")),
    };
    match &outcome {
        Ok(context) => {
            println!("{}", tour(&dir, net, east.0, east.1, context, &east_ca));
            signal::terminated().await;
            println!("\nstopping the demo...");
        }
        Err(e) => tracing::error!("{e:#}"),
    }
    // Drain all three at once: each waits for its own in-flight streams only.
    let mut stopping = tokio::task::JoinSet::new();
    for g in gateways {
        stopping.spawn(g.shutdown());
    }
    while stopping.join_next().await.is_some() {}
    let _ = stop.send(true);
    while backends.join_next().await.is_some() {}
    if outcome.is_ok() {
        println!("demo stopped; nothing is left running.");
    }
    outcome.map(|_| ())
}

/// Starts east, which founds the mesh (or restarts it, on a second run), then west and edge,
/// which join through east's admin API. Returns the gateways and the admin token.
async fn form_mesh(dir: &Path, net: Net) -> anyhow::Result<(Vec<app::Bound>, String)> {
    let mut gateways = Vec::new();
    let [east, others @ ..] = &CLUSTERS;
    gateways.push(start(east, net, dir, None).await?);
    let admin = gateways[0].admin;
    let token_file = dir.join(east.name).join(bootstrap::ADMIN_TOKEN_FILE);
    let token = wait_for_token(&token_file).await?;
    let client = east_client(dir, admin, &token)?;
    let ca_pem = std::fs::read(east_ca(dir))?;
    for c in others {
        let data_dir = dir.join(c.name);
        std::fs::create_dir_all(&data_dir)
            .with_context(|| format!("cannot create {}", data_dir.display()))?;
        // A second run finds the gateways already members: they restart, not rejoin.
        let join = if join::load(&data_dir)?.is_some() {
            None
        } else {
            let created = client
                .create_token(
                    federation::mesh::Role::Join,
                    Some(&format!("demo: {}", c.name)),
                    None,
                )
                .await
                .context("cannot create a join token on east")?;
            Some(JoinSettings {
                url: client.server().to_string(),
                token: created.token,
                ca_pem: Some(ca_pem.clone()),
            })
        };
        gateways.push(start(c, net, dir, join).await?);
    }
    Ok((gateways, token))
}

/// East's cluster CA, which signed east's admin certificate.
fn east_ca(dir: &Path) -> PathBuf {
    dir.join(CLUSTERS[0].name).join("ca").join("ca.pem")
}

/// A client of east's admin API over HTTPS, trusting east's CA.
fn east_client(dir: &Path, admin: SocketAddr, token: &str) -> anyhow::Result<api::client::Client> {
    let path = east_ca(dir);
    let pem = std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(api::client::Client::with_ca(
        &format!("https://{admin}"),
        Some(token.to_string()),
        Some(&pem),
    )?)
}

async fn start(
    c: &Cluster,
    net: Net,
    dir: &Path,
    join: Option<JoinSettings>,
) -> anyhow::Result<app::Bound> {
    let mut config = Config::from_toml_str(&config_for(c, net, dir), dir, &Overrides::default())
        .map_err(|e| anyhow::anyhow!("demo config for {}: {e}", c.name))?;
    config.join = join;
    app::build(config).await.with_context(|| {
        format!(
            "cannot start gateway {} on {} (is another demo running? --net picks other addresses)",
            c.name,
            net.ip(c)
        )
    })
}

/// The founding gateway writes the first admin token once its founding entry has applied.
async fn wait_for_token(path: &Path) -> anyhow::Result<String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(token) = std::fs::read_to_string(path) {
            let token = token.trim();
            if !token.is_empty() {
                return Ok(token.to_string());
            }
        }
        if tokio::time::Instant::now() > deadline {
            anyhow::bail!(
                "east did not found the mesh within 20s (no {})",
                path.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until every cluster has its voter (the leader promotes joined gateways once they
/// have caught up), so the tour shows the mesh fully formed.
async fn wait_for_voters(client: &api::client::Client) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let status = client
            .status()
            .await
            .context("cannot read the mesh status")?;
        let voters = status["members"]
            .as_array()
            .map(|m| m.iter().filter(|m| m["role"] == "voter").count())
            .unwrap_or(0);
        if voters >= CLUSTERS.len() {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            anyhow::bail!("the joined gateways were not promoted to voters within 20s: {status}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Registers the echo services through the REST API, as an operator (or a VM agent) would.
/// Applying again on a second run changes nothing.
async fn register_services(client: &api::client::Client, net: Net) -> anyhow::Result<()> {
    let mut yaml = String::new();
    for c in &CLUSTERS {
        if let Some(version) = c.echo {
            yaml += &service_yaml(c, net, "echo", 80, "http", ECHO_PORT, Some(version));
        }
        if c.tcp_echo {
            yaml += &service_yaml(
                c,
                net,
                "echo-tcp",
                TCP_SERVICE_PORT,
                "tcp",
                TCP_ECHO_PORT,
                None,
            );
        }
    }
    client
        .apply(yaml, "application/yaml", false)
        .await
        .context("cannot register the demo services")?;
    Ok(())
}

fn service_yaml(
    c: &Cluster,
    net: Net,
    name: &str,
    port: u16,
    protocol: &str,
    backend: u16,
    version: Option<&str>,
) -> String {
    // The echo's endpoints carry their version, which DestinationRule subsets select.
    let endpoint = match version {
        Some(v) => format!(
            "{{address: \"{}:{backend}\", labels: {{version: {v}}}}}",
            net.ip(c)
        ),
        None => format!("\"{}:{backend}\"", net.ip(c)),
    };
    format!(
        r#"---
apiVersion: causeway.dev/v1alpha1
kind: Service
metadata:
  name: {name}
  namespace: demo
  cluster: {cluster}
spec:
  ports:
    - port: {port}
      protocol: {protocol}
  endpoints: [{endpoint}]
---
apiVersion: causeway.dev/v1alpha1
kind: ServiceExport
metadata:
  name: {name}
  namespace: demo
  cluster: {cluster}
spec: {{}}
"#,
        cluster = c.name,
    )
}

fn config_for(c: &Cluster, net: Net, dir: &Path) -> String {
    format!(
        "cluster = \"{name}\"\ndata_dir = \"{data}\"\nbind = \"{ip}\"\n",
        name = c.name,
        data = dir.join(c.name).display(),
        ip = net.ip(c),
    )
}

/// Waits until east reaches both versions of echo through the tunnels, so the tour printed
/// afterwards works the moment it appears.
async fn self_check(outbound: SocketAddr) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut seen = BTreeSet::new();
    let mut last = String::from("no answer yet");
    while seen.len() < 2 {
        if tokio::time::Instant::now() > deadline {
            anyhow::bail!("the demo federation did not come up within 20s (last answer: {last})");
        }
        match get_echo(outbound).await {
            Ok(body) => {
                if let Some(v) = serde_json::from_str::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|j| j["version"].as_str().map(str::to_string))
                {
                    seen.insert(v);
                }
                last = body;
            }
            Err(e) => {
                last = e.to_string();
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    Ok(())
}

async fn get_echo(outbound: SocketAddr) -> anyhow::Result<String> {
    use http_body_util::BodyExt;
    let tcp = tokio::net::TcpStream::connect(outbound).await?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp)).await?;
    tokio::spawn(conn);
    let req = hyper::Request::get("/")
        .header("host", "echo.demo")
        .body(http_body_util::Empty::<bytes::Bytes>::new())?;
    let resp = sender.send_request(req).await?;
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    let body = String::from_utf8_lossy(&body).into_owned();
    anyhow::ensure!(status.is_success(), "{status}: {body}");
    Ok(body)
}

fn tour(
    dir: &Path,
    net: Net,
    outbound: SocketAddr,
    admin: SocketAddr,
    context: &Path,
    ca: &Path,
) -> String {
    // The CLI commands name this very binary, so they work as printed even when `causeway`
    // is not on the PATH (e.g. under `cargo run`).
    let cli = std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "causeway".to_string());
    let token_file = dir.join("east").join(bootstrap::ADMIN_TOKEN_FILE);
    let example = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples/istio/canary-split-virtualservice.yaml");
    let apply = if example.exists() {
        format!(
            "\n  # apply Istio YAML as written (the result names what is not enforced yet)\n  {cli} apply -f {}\n  {cli} get virtualservices -n production -o yaml\n",
            example.display()
        )
    } else {
        String::new()
    };
    format!(
        r#"
Causeway demo: three clusters federated over QUIC + mTLS on this machine.
east founded the mesh; west and edge joined it with one-time tokens; the echo
services were registered through the REST API.

  cluster  gateway      trust domain  runs
  east     {east:<12} east.mesh     (your clients)
  west     {west:<12} west.mesh     echo.demo v1, echo-tcp.demo
  edge     {edge:<12} edge.mesh     echo.demo v2

Ports on each address: 15001 outbound (HTTP by Host), 15443/udp tunnels,
15012 Raft, 15053 DNS, 15000 admin API over HTTPS (/v1/..., /metrics, /healthz,
/readyz; its certificate comes from the cluster's CA).

Try these from another terminal:

  # east has no echo of its own: the gateway sends you to west or edge, in turn
  curl -H 'Host: echo.demo' http://{outbound}/
  curl -H 'Host: echo.demo' http://{outbound}/

  # pick a cluster by name
  curl -H 'Host: echo.demo.edge.mesh' http://{outbound}/hello

  # TCP services get a port of their own on east's address (type a line: it comes back; Ctrl-C ends)
  curl -sN telnet://{east}:{TCP_SERVICE_PORT}

  # traffic policy takes effect at east within a moment of the apply (files in {policy}):
  # the echo's versions as subsets, with outlier detection
  {cli} apply -f {policy}/subsets.yaml
  # a canary: count the versions of 50 answers (about 40 v1, 10 v2)
  {cli} apply -f {policy}/canary.yaml
  for i in $(seq 50); do curl -s -H 'Host: echo.demo' http://{outbound}/ | grep -o '"version": "v."'; done | sort | uniq -c
  # header routing: x-canary: true reaches v2, everyone else v1
  {cli} apply -f {policy}/header-routing.yaml
  curl -s -H 'Host: echo.demo' -H 'x-canary: true' http://{outbound}/ | grep version
  curl -s -H 'Host: echo.demo' http://{outbound}/ | grep version
  # a fault: about half the answers are 503s east made up itself
  {cli} apply -f {policy}/fault.yaml
  for i in $(seq 20); do curl -s -o /dev/null -w '%{{http_code}}\n' -H 'Host: echo.demo' http://{outbound}/; done | sort | uniq -c
  # retries hide a failing v2 (every v2 answer is a 503 here), then outlier detection ejects it
  {cli} apply -f {policy}/retries.yaml
  for i in $(seq 20); do curl -s -o /dev/null -w '%{{http_code}}\n' -H 'Host: echo.demo' 'http://{outbound}/?fail-version=v2'; done | sort | uniq -c
  curl -s --cacert {ca} -H "Authorization: Bearer $(cat {token_file})" https://{admin}/metrics | grep -E 'causeway_(retries|outlier_ejections)_total'

  # the mesh through the CLI (server, token and CA come from {context})
  {cli} status
  {cli} get clusters -o wide
  {cli} get services -o wide
{apply}
  # the REST API and what the gateways counted, over HTTPS verified by east's CA
  # (the admin token is in {token_file})
  curl -s --cacert {ca} -H "Authorization: Bearer $(cat {token_file})" https://{admin}/v1/status
  curl -s --cacert {ca} -H "Authorization: Bearer $(cat {token_file})" https://{admin}/metrics | grep causeway_requests_total

  # service discovery through the mesh DNS (needs dig)
  dig +short @{east} -p 15053 echo.demo.mesh
  dig +short @{east} -p 15053 SRV echo-tcp.demo.mesh

The gateways keep their data (CAs, keys, Raft logs) under {dir}.
Press Ctrl-C to stop everything."#,
        context = context.display(),
        east = net.ip(&CLUSTERS[0]).to_string(),
        west = net.ip(&CLUSTERS[1]).to_string(),
        edge = net.ip(&CLUSTERS[2]).to_string(),
        token_file = token_file.display(),
        ca = ca.display(),
        dir = dir.display(),
        policy = dir.join("policy").display(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_net_is_a_loopback_prefix() {
        let net: Net = "127.77.0".parse().unwrap();
        assert_eq!(net.ip(&CLUSTERS[2]), Ipv4Addr::new(127, 77, 0, 3));
        assert_eq!(Net::default(), "127.0.0".parse().unwrap());
        for bad in ["10.0.0", "127.0", "127.0.0.1", "127.0.300", ""] {
            assert!(bad.parse::<Net>().is_err(), "{bad}");
        }
    }
}
