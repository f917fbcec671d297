//! Soak: three gateways in one Raft group carry steady traffic for a long time while the
//! exporting gateways are restarted in turn; reports errors, memory over time and log volume.
//!
//! ```text
//!   load (SOAK_RATE req/s) ──> east 127.251.0.1 ──QUIC──> west 127.251.0.2 ──> echo
//!                                               └─QUIC──> edge 127.251.0.3 ──> echo
//!   every SOAK_RESTART_EVERY: SIGTERM west (then edge, ...), start it again on its data dir
//! ```
//!
//! Both west and edge export `echo.soak`, so while one restarts east should send everything to
//! the other: every error is unexpected, and the report says whether it fell inside a restart
//! window or in steady state. RSS is sampled every 10 s per gateway; "flat after warm-up"
//! compares the last sample with the one after the first restart cycle.
//!
//! `cargo bench --bench soak` runs SOAK_MINUTES (default 30); without `--bench` (`cargo test
//! --benches`) it is a 20-second smoke run with one restart. Knobs: `SOAK_MINUTES`, `SOAK_RATE`
//! (default 2000), `SOAK_CONNS` (default 32), `SOAK_RESTART_EVERY` (seconds, default 180).
//! It fails (nonzero) only when the setup fails; the verdicts are printed.

#[rustfmt::skip]
#[path = "../tests/support/mod.rs"]
mod support;

#[path = "common/mod.rs"]
mod common;
use common::{env_or, serve_echo};

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

use support::{Gateway, Net, Spec, eventually};

const NET: u8 = 251;
const SERVICE: &str = "echo.soak";
const BODY_BYTES: usize = 512;
const SAMPLE_EVERY: Duration = Duration::from_secs(10);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// After a restarted gateway is ready, its tunnel and catalog need a moment; errors this soon
/// after still count as during the restart.
const SETTLE: Duration = Duration::from_secs(5);
/// The three clusters: (name, host, node id).
const CLUSTERS: [(&str, u8, u64); 3] = [("east", 1, 1), ("west", 2, 2), ("edge", 3, 3)];

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("soak: setup failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

struct Settings {
    length: Duration,
    rate: u32,
    conns: u32,
    restart_every: Duration,
}

impl Settings {
    fn from_env() -> anyhow::Result<Self> {
        let smoke = !std::env::args().any(|a| a == "--bench");
        let minutes: f64 = env_or("SOAK_MINUTES", if smoke { 1.0 / 3.0 } else { 30.0 })?;
        let rate: u32 = env_or("SOAK_RATE", if smoke { 200 } else { 2000 })?;
        let conns: u32 = env_or("SOAK_CONNS", 32)?;
        let restart: u64 = env_or("SOAK_RESTART_EVERY", if smoke { 8 } else { 180 })?;
        ensure!(
            minutes > 0.0 && rate > 0 && conns > 0 && restart > 0,
            "SOAK_MINUTES, SOAK_RATE, SOAK_CONNS and SOAK_RESTART_EVERY must be above 0"
        );
        Ok(Self {
            length: Duration::from_secs_f64(minutes * 60.0),
            rate,
            conns,
            restart_every: Duration::from_secs(restart),
        })
    }
}

/// One cluster's gateway, restartable on the same data directory.
struct Member {
    name: &'static str,
    spec: Spec<'static>,
    gateway: Option<Gateway>,
    /// Log bytes and lines of earlier incarnations.
    log_bytes: usize,
    log_lines: usize,
}

impl Member {
    fn start(&mut self, net: &Net) {
        let path = net.dir.path().join(format!("{}.toml", self.name));
        std::fs::write(&path, self.spec.config(net)).expect("write config");
        let gw = Gateway::start(
            &["gateway", "--config", path.to_str().expect("utf-8 path")],
            &[("CAUSEWAY_LOG", "info")],
        );
        self.gateway = Some(gw);
    }

    fn restart(&mut self, net: &Net) {
        if let Some(mut gw) = self.gateway.take() {
            gw.signal("TERM");
            gw.wait_exit(Duration::from_secs(60));
            let logs = gw.logs();
            self.log_bytes += logs.len();
            self.log_lines += logs.lines().count();
        }
        self.start(net);
    }

    fn rss_mb(&self) -> f64 {
        self.gateway
            .as_ref()
            .map_or(0.0, |gw| common::rss_mb(gw.pid()))
    }

    fn logs(&self) -> (usize, usize) {
        let (bytes, lines) = self.gateway.as_ref().map_or((0, 0), |gw| {
            let logs = gw.logs();
            (logs.len(), logs.lines().count())
        });
        (self.log_bytes + bytes, self.log_lines + lines)
    }
}

/// What the load saw: successes, and errors by kind and by when.
#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    errors_steady: AtomicU64,
    errors_restarting: AtomicU64,
    kinds: Mutex<BTreeMap<String, u64>>,
    /// A gateway is restarting (or settling after it).
    restarting: AtomicBool,
}

impl Tally {
    fn error(&self, e: &anyhow::Error) {
        if self.restarting.load(Ordering::Relaxed) {
            self.errors_restarting.fetch_add(1, Ordering::Relaxed);
        } else {
            self.errors_steady.fetch_add(1, Ordering::Relaxed);
        }
        // The error's first line, digits dropped, is its kind.
        let kind: String = format!("{e:#}")
            .lines()
            .next()
            .unwrap_or_default()
            .chars()
            .filter(|c| !c.is_ascii_digit())
            .take(160)
            .collect();
        *self
            .kinds
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(kind)
            .or_default() += 1;
    }
}

fn run() -> anyhow::Result<()> {
    let settings = Settings::from_env()?;
    let net = Net::new(NET);
    let backend_runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut backends = Vec::new();
    for host in [2, 3] {
        let l = std::net::TcpListener::bind((net.ip(host).as_str(), 0))
            .context("bind an echo backend")?;
        l.set_nonblocking(true)?;
        backends.push(l);
    }
    let backend_addrs: Vec<SocketAddr> = backends
        .iter()
        .map(|l| l.local_addr())
        .collect::<Result<_, _>>()?;
    std::thread::spawn(move || {
        backend_runtime.block_on(async move {
            let mut tasks = tokio::task::JoinSet::new();
            for l in backends {
                tasks.spawn(serve_echo(TcpListener::from_std(l).expect("register")));
            }
            while tasks.join_next().await.is_some() {}
        });
    });

    let voters: Vec<u64> = CLUSTERS.iter().map(|c| c.2).collect();
    let mut members: Vec<Member> = CLUSTERS
        .iter()
        .map(|&(name, host, id)| {
            let others: Vec<(u64, &str, u8)> = CLUSTERS
                .iter()
                .filter(|c| c.2 != id)
                .map(|&(n, h, i)| (i, n, h))
                .collect();
            let mut spec = Spec::new(name, host)
                .store(id, &voters, &others)
                // Production tunnel timers.
                .toml("[tunnel]\nkeep_alive = \"1s\"\nidle_timeout = \"5s\"\n");
            for &(peer, peer_host, _) in CLUSTERS.iter().filter(|c| c.0 != name) {
                spec = spec.peer(peer, peer_host);
            }
            if host > 1 {
                spec = spec.http_service(SERVICE, backend_addrs[usize::from(host) - 2]);
            }
            Member {
                name,
                spec,
                gateway: None,
                log_bytes: 0,
                log_lines: 0,
            }
        })
        .collect();
    for member in &members {
        net.bundle(member.name);
    }
    // All three at once: each waits for the group's leader to be ready.
    std::thread::scope(|s| {
        for member in members.iter_mut() {
            let net = &net;
            s.spawn(move || member.start(net));
        }
    });
    let east = members[0].gateway.as_ref().expect("east").outbound;
    eventually("echo.soak through east", Duration::from_secs(60), || {
        matches!(
            support::try_http(east, "GET", SERVICE, "/", &[], b""),
            Ok((200, _, _))
        )
        .then_some(())
    });

    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (tally, stop) = (tally.clone(), stop.clone());
        let (rate, conns) = (settings.rate, settings.conns);
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("load runtime");
            runtime.block_on(generate(east, rate, conns, tally, stop));
        })
    };

    println!(
        "soak: {:.1} min, {} req/s over {} connections to {SERVICE} via east, restart every {} s (west, edge in turn)",
        settings.length.as_secs_f64() / 60.0,
        settings.rate,
        settings.conns,
        settings.restart_every.as_secs()
    );
    println!("   time      ok  err(steady)  err(restart)   RSS MB east/west/edge     log lines");
    let started = Instant::now();
    let mut next_restart = started + settings.restart_every;
    let mut next_sample = started + SAMPLE_EVERY;
    let mut restarts = 0usize;
    let mut rss_samples: Vec<[f64; 3]> = Vec::new();
    let mut first_cycle_sample = None;
    while started.elapsed() < settings.length {
        let now = Instant::now();
        if now >= next_restart {
            let victim = 1 + restarts % 2;
            tally.restarting.store(true, Ordering::Relaxed);
            members[victim].restart(&net);
            std::thread::sleep(SETTLE);
            tally.restarting.store(false, Ordering::Relaxed);
            restarts += 1;
            println!(
                "  {:>5.0}s  restarted {} ({} so far)",
                started.elapsed().as_secs_f64(),
                members[victim].name,
                restarts
            );
            next_restart = Instant::now() + settings.restart_every;
            if restarts == 2 {
                first_cycle_sample = Some(rss_samples.len());
            }
        }
        if now >= next_sample {
            let rss = [0, 1, 2].map(|i| members[i].rss_mb());
            rss_samples.push(rss);
            let lines: usize = members.iter().map(|m| m.logs().1).sum();
            println!(
                "  {:>5.0}s {:>8} {:>12} {:>13}   {:>6.1} {:>6.1} {:>6.1}   {:>12}",
                started.elapsed().as_secs_f64(),
                tally.ok.load(Ordering::Relaxed),
                tally.errors_steady.load(Ordering::Relaxed),
                tally.errors_restarting.load(Ordering::Relaxed),
                rss[0],
                rss[1],
                rss[2],
                lines
            );
            next_sample += SAMPLE_EVERY;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::Relaxed);
    let _ = load.join();

    let ok = tally.ok.load(Ordering::Relaxed);
    let steady = tally.errors_steady.load(Ordering::Relaxed);
    let during = tally.errors_restarting.load(Ordering::Relaxed);
    let elapsed = started.elapsed().as_secs_f64();
    println!();
    println!(
        "requests: {} ok ({:.0}/s), {steady} errors in steady state, {during} during restarts; {restarts} restarts",
        ok,
        ok as f64 / elapsed
    );
    for (kind, n) in tally.kinds.lock().unwrap_or_else(|p| p.into_inner()).iter() {
        println!("  {n:>8} x {kind}");
    }
    for (i, member) in members.iter().enumerate() {
        let (bytes, lines) = member.logs();
        // Warm-up ends after a restart of each exporting gateway (or, in a run too short for
        // that, at the first sample).
        let first = rss_samples
            .get(first_cycle_sample.unwrap_or(0))
            .map_or(0.0, |s| s[i]);
        let last = rss_samples.last().map_or(0.0, |s| s[i]);
        let peak = rss_samples.iter().map(|s| s[i]).fold(0.0, f64::max);
        println!(
            "{:>5}: RSS after warm-up {first:.1} MB, at the end {last:.1} MB, peak {peak:.1} MB; log {lines} lines, {:.1} KiB ({:.1} lines/min)",
            member.name,
            bytes as f64 / 1024.0,
            lines as f64 / (elapsed / 60.0)
        );
    }
    println!(
        "verdict: {} unexpected errors (goal 0)",
        if steady + during == 0 {
            "no".to_string()
        } else {
            (steady + during).to_string()
        }
    );
    Ok(())
}

/// Sends `rate` requests per second over `conns` keep-alive connections until `stop`.
async fn generate(
    target: SocketAddr,
    rate: u32,
    conns: u32,
    tally: Arc<Tally>,
    stop: Arc<AtomicBool>,
) {
    let body = Bytes::from(vec![b's'; BODY_BYTES]);
    let period = Duration::from_secs_f64(f64::from(conns) / f64::from(rate));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..conns {
        let (tally, stop, body) = (tally.clone(), stop.clone(), body.clone());
        tasks.spawn(async move {
            // Spread the connections' ticks over one period.
            tokio::time::sleep(period * i / conns).await;
            let mut ticks = tokio::time::interval(period);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut sender = None;
            while !stop.load(Ordering::Relaxed) {
                ticks.tick().await;
                match tokio::time::timeout(REQUEST_TIMEOUT, exchange(target, &mut sender, &body))
                    .await
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("no answer in time")))
                {
                    Ok(()) => {
                        tally.ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        sender = None;
                        tally.error(&e);
                    }
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn exchange(
    target: SocketAddr,
    sender: &mut Option<Sender>,
    body: &Bytes,
) -> anyhow::Result<()> {
    let mut s = match sender.take() {
        Some(s) if !s.is_closed() => s,
        _ => {
            let tcp = TcpStream::connect(target)
                .await
                .context("connect to east")?;
            tcp.set_nodelay(true)?;
            let (s, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
            tokio::spawn(conn);
            s
        }
    };
    s.ready().await.context("connection")?;
    let req = hyper::Request::post("/")
        .header(hyper::header::HOST, SERVICE)
        .body(Full::new(body.clone()))?;
    let resp = s.send_request(req).await.context("request")?;
    let status = resp.status();
    let got = resp.into_body().collect().await?.to_bytes();
    ensure!(
        status == hyper::StatusCode::OK && got.len() == body.len(),
        "{status}: {}",
        String::from_utf8_lossy(&got[..got.len().min(120)]).trim()
    );
    *sender = Some(s);
    Ok(())
}
