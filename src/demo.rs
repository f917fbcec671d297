//! `causeway demo`: three clusters on one machine, each gateway on the default ports of its
//! own loopback address, with an echo service in two of them.
//!
//! ```text
//!   east 127.0.0.1 (clients) ──QUIC──> west 127.0.0.2  echo.demo v1, echo-tcp.demo
//!                             └─QUIC──> edge 127.0.0.3  echo.demo v2
//! ```

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use tokio::sync::watch;

use crate::config::{Config, Overrides};
use crate::{app, echo, signal};

struct Cluster {
    name: &'static str,
    ip: &'static str,
    /// (service, version) served by this cluster's echo, if any.
    echo: Option<&'static str>,
    tcp_echo: bool,
}

const CLUSTERS: [Cluster; 3] = [
    Cluster {
        name: "east",
        ip: "127.0.0.1",
        echo: None,
        tcp_echo: false,
    },
    Cluster {
        name: "west",
        ip: "127.0.0.2",
        echo: Some("v1"),
        tcp_echo: true,
    },
    Cluster {
        name: "edge",
        ip: "127.0.0.3",
        echo: Some("v2"),
        tcp_echo: false,
    },
];
const ECHO_PORT: u16 = 18080;
const TCP_ECHO_PORT: u16 = 19000;
const TCP_SERVICE_PORT: u16 = 9000;

pub async fn run(dir: PathBuf) -> anyhow::Result<()> {
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let dir = dir
        .canonicalize()
        .with_context(|| format!("cannot resolve {}", dir.display()))?;
    // Each cluster's CA exists before any gateway starts, so every config can name its peers'
    // trust bundles.
    for c in &CLUSTERS {
        let td = federation::identity::TrustDomain::parse(&format!("{}.mesh", c.name))?;
        federation::identity::CertificateAuthority::load_or_create(&ca_dir(&dir, c.name), &td)?;
    }

    let (stop, stopped) = watch::channel(false);
    let mut backends = tokio::task::JoinSet::new();
    for c in &CLUSTERS {
        if let Some(version) = c.echo {
            let addr = format!("{}:{ECHO_PORT}", c.ip);
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
            let addr = format!("{}:{TCP_ECHO_PORT}", c.ip);
            let l = tokio::net::TcpListener::bind(&addr)
                .await
                .with_context(|| format!("cannot start the demo TCP echo on {addr}"))?;
            backends.spawn(echo::serve_tcp(l, stopped.clone()));
        }
    }

    let mut gateways = Vec::new();
    for c in &CLUSTERS {
        let config = Config::from_toml_str(&config_for(c, &dir), &dir, &Overrides::default())
            .map_err(|e| anyhow::anyhow!("demo config for {}: {e}", c.name))?;
        let bound = app::build(config).await.with_context(|| {
            format!(
                "cannot start gateway {} on {} (is another demo running?)",
                c.name, c.ip
            )
        })?;
        gateways.push(bound);
    }

    // East is where the tour's clients stand.
    let east = (gateways[0].gateway.outbound, gateways[0].admin);
    let outcome = tokio::select! {
        r = self_check(east.0) => r,
        _ = signal::terminated() => Err(anyhow::anyhow!("interrupted before the demo was ready")),
    };
    match &outcome {
        Ok(()) => {
            println!("{}", tour(&dir, east.0, east.1));
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
    outcome
}

fn ca_dir(base: &Path, cluster: &str) -> PathBuf {
    base.join(cluster).join("ca")
}

fn config_for(c: &Cluster, dir: &Path) -> String {
    let mut toml = format!(
        "cluster = \"{name}\"\ndata_dir = \"{data}\"\nbind = \"{ip}\"\n",
        name = c.name,
        data = dir.join(c.name).display(),
        ip = c.ip,
    );
    for p in CLUSTERS.iter().filter(|p| p.name != c.name) {
        toml += &format!(
            "\n[[peers]]\ncluster = \"{}\"\naddress = \"{}:15443\"\ntrust_bundle = \"{}\"\n",
            p.name,
            p.ip,
            ca_dir(dir, p.name).join("ca.pem").display()
        );
    }
    if c.echo.is_some() {
        toml += &format!(
            "\n[[services]]\nname = \"echo\"\nnamespace = \"demo\"\nendpoints = [\"{}:{ECHO_PORT}\"]\nports = [{{ port = 80, protocol = \"http\" }}]\n",
            c.ip
        );
    }
    if c.tcp_echo {
        toml += &format!(
            "\n[[services]]\nname = \"echo-tcp\"\nnamespace = \"demo\"\nendpoints = [\"{}:{TCP_ECHO_PORT}\"]\nports = [{{ port = {TCP_SERVICE_PORT}, protocol = \"tcp\" }}]\n",
            c.ip
        );
    }
    toml
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

fn tour(dir: &Path, outbound: SocketAddr, admin: SocketAddr) -> String {
    format!(
        r#"
Causeway demo: three clusters federated over QUIC + mTLS on this machine.

  cluster  gateway      trust domain  runs
  east     127.0.0.1    east.mesh     (your clients)
  west     127.0.0.2    west.mesh     echo.demo v1, echo-tcp.demo
  edge     127.0.0.3    edge.mesh     echo.demo v2

Ports on each address: 15001 outbound (HTTP by Host), 15443/udp tunnels,
15053 DNS, 15000 admin (/metrics, /healthz, /readyz).

Try these from another terminal:

  # east has no echo of its own: the gateway sends you to west or edge, in turn
  curl -H 'Host: echo.demo' http://{outbound}/
  curl -H 'Host: echo.demo' http://{outbound}/

  # pick a cluster by name
  curl -H 'Host: echo.demo.edge.mesh' http://{outbound}/hello

  # TCP services get a port of their own on east's address (type a line: it comes back; Ctrl-C ends)
  curl -sN telnet://127.0.0.1:{TCP_SERVICE_PORT}

  # what the gateways counted
  curl -s http://{admin}/metrics | grep causeway_requests_total

  # service discovery through the mesh DNS (needs dig)
  dig +short @127.0.0.1 -p 15053 echo.demo.mesh
  dig +short @127.0.0.1 -p 15053 SRV echo-tcp.demo.mesh

The gateways keep their CAs and keys under {dir}.
Press Ctrl-C to stop everything."#,
        dir = dir.display()
    )
}
