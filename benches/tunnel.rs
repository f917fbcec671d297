//! What a trip through the tunnel costs: latency, request rate and bulk throughput, each
//! measured straight to a backend and again through two real gateways.
//!
//! ```text
//!   bench client ──HTTP/TCP──> east 127.250.0.1 ──QUIC──> west 127.250.0.2 ──> backends
//!        └──────────────────────── direct ─────────────────────────────────────┘
//! ```
//!
//! It prints numbers and whether the issue's targets are met; it never fails on timing. A
//! nonzero exit means the setup (or a whole measurement) failed. Knobs (environment):
//! `BENCH_SECONDS` (per phase, default 5), `BENCH_BULK_MB` (default 1024), `BENCH_RATE`
//! (open-loop requests/s, default 1000), `BENCH_CONNS` (open-loop pool, default 16),
//! `BENCH_MAX_CONNS` (closed-loop connections, default 32), `BENCH_BUSY_POLL` (the gateways'
//! `[dataplane] busy_poll`, e.g. `0s`; default: theirs).
//!
//! `cargo bench` passes `--bench`; without it (`cargo test --benches` or `--all-targets`) the
//! bench does a quick smoke run instead, so it cannot rot but does not slow test runs down.

// The harness belongs to the integration tests: rustfmt on this file must not follow the path
// and rewrite it.
#[rustfmt::skip]
#[path = "../tests/support/mod.rs"]
mod support;

#[path = "common/mod.rs"]
mod common;
use common::{Outcomes, cpu_ticks, env_or, ms, percentile, ratio, serve_echo};

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use support::{Gateway, Net, Spec};

/// 127.250.0.0/24: far from the numbers the integration tests use, so both can run at once.
const NET: u8 = 250;
const EAST: u8 = 1;
const WEST: u8 = 2;
const SERVICE: &str = "echo.bench";
const BULK_SERVICE: &str = "bulk.bench";
const BULK_PORT: u16 = 9100;
const BODY_BYTES: usize = 1024;
/// Production tunnel timers, not the harness's fast test ones.
const TUNNEL_TOML: &str = "[tunnel]\nkeep_alive = \"1s\"\nidle_timeout = \"5s\"\n";
/// Gateways log as they would in production (the harness default adds debug lines).
const GATEWAY_LOG: &str = "info";
/// Each phase first runs this long (at most its own length) unmeasured, so connections, caches
/// and QUIC windows settle.
const WARMUP: Duration = Duration::from_secs(1);
const SETUP_TIMEOUT: Duration = Duration::from_secs(30);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Targets from the issue.
const TARGET_ADDED_P99: Duration = Duration::from_micros(500);
const TARGET_BULK_GBITS: f64 = 1.0;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tunnel bench: setup or measurement failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    let settings = Settings::from_env()?;
    let machine = Machine::probe();
    let net = Net::new(NET);
    let backends = Backends::start(&net.ip(WEST))?;
    let toml = settings.gateway_toml();

    let west = start_gateway(
        &net,
        Spec::new("west", WEST)
            .peer("east", EAST)
            .http_service(SERVICE, backends.http)
            .tcp_service(BULK_SERVICE, backends.sink, BULK_PORT)
            .toml(&toml),
    );
    let east = start_gateway(&net, Spec::new("east", EAST).peer("west", WEST).toml(&toml));
    let bulk_via: SocketAddr = format!("{}:{BULK_PORT}", net.ip(EAST))
        .parse()
        .context("east's bulk address")?;

    // The load generator gets one thread; the backends have their own (see `Backends`), and
    // each gateway process runs its own data plane.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("client runtime")?;
    let gateways = Gateways {
        east: &east,
        west: &west,
    };
    let direct = Target {
        name: "direct",
        addr: backends.http,
    };
    let via = Target {
        name: "via tunnel",
        addr: east.outbound,
    };
    let report = runtime.block_on(async {
        wait_until_ready(&gateways, via, bulk_via).await?;
        measure(&settings, &gateways, direct, via, backends.sink, bulk_via).await
    })?;
    print_report(&machine, &settings, &report);
    Ok(())
}

/// The bench's knobs, from the environment.
struct Settings {
    /// Run by `cargo test`: only check that every phase works.
    smoke: bool,
    phase: Duration,
    warmup: Duration,
    rate: u32,
    latency_conns: usize,
    max_conns: usize,
    bulk_bytes: u64,
    /// `[dataplane] busy_poll` for both gateways; `None` keeps their default.
    busy_poll: Option<String>,
}

impl Settings {
    /// The config both gateways share beyond their own cluster, peers and services.
    fn gateway_toml(&self) -> String {
        match &self.busy_poll {
            Some(poll) => format!("{TUNNEL_TOML}[dataplane]\nbusy_poll = {poll:?}\n"),
            None => TUNNEL_TOML.to_string(),
        }
    }

    fn from_env() -> anyhow::Result<Self> {
        let smoke = !std::env::args().any(|a| a == "--bench");
        let seconds: f64 = env_or("BENCH_SECONDS", if smoke { 0.2 } else { 5.0 })?;
        ensure!(
            seconds.is_finite() && seconds > 0.0,
            "BENCH_SECONDS must be positive"
        );
        let rate: u32 = env_or("BENCH_RATE", 1000)?;
        let latency_conns: usize = env_or("BENCH_CONNS", 16)?;
        let max_conns: usize = env_or("BENCH_MAX_CONNS", 32)?;
        let bulk_mb: u64 = env_or("BENCH_BULK_MB", if smoke { 16 } else { 1024 })?;
        ensure!(
            rate > 0 && latency_conns > 0 && max_conns > 0 && bulk_mb > 0,
            "BENCH_RATE, BENCH_CONNS, BENCH_MAX_CONNS and BENCH_BULK_MB must be above 0"
        );
        let phase = Duration::from_secs_f64(seconds);
        Ok(Self {
            smoke,
            phase,
            warmup: phase.min(WARMUP),
            rate,
            latency_conns,
            max_conns,
            bulk_bytes: bulk_mb << 20,
            busy_poll: std::env::var("BENCH_BUSY_POLL").ok(),
        })
    }
}

/// What the numbers were measured on; a busy or small machine explains a lot.
struct Machine {
    cpus: usize,
    model: String,
    kernel: String,
    load: String,
}

impl Machine {
    fn probe() -> Self {
        let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
        let model = read("/proc/cpuinfo")
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|l| l.split_once(':'))
            .map_or_else(|| "unknown CPU".into(), |(_, m)| m.trim().to_string());
        Self {
            cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
            model,
            kernel: read("/proc/sys/kernel/osrelease").trim().to_string(),
            load: read("/proc/loadavg")
                .split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" "),
        }
    }
}

/// Starts a gateway like `Spec::start`, but with production log verbosity.
fn start_gateway(net: &Net, spec: Spec<'_>) -> Gateway {
    // Every cluster's CA must exist before a peer can trust it.
    net.bundle(spec.cluster);
    let path = net.dir.path().join(format!("{}.toml", spec.cluster));
    std::fs::write(&path, spec.config(net)).expect("write the gateway config");
    Gateway::start(
        &[
            "gateway",
            "--config",
            path.to_str().expect("temp dir path is UTF-8"),
        ],
        &[("CAUSEWAY_LOG", GATEWAY_LOG)],
    )
}

struct Gateways<'a> {
    east: &'a Gateway,
    west: &'a Gateway,
}

impl Gateways<'_> {
    fn logs(&self) -> String {
        let tail = |logs: String| {
            let lines: Vec<&str> = logs.lines().collect();
            lines[lines.len().saturating_sub(20)..].join("\n")
        };
        format!(
            "east's last log lines:\n{}\nwest's last log lines:\n{}",
            tail(self.east.logs()),
            tail(self.west.logs())
        )
    }
}

/// The in-process backends west exports: an HTTP echo and a TCP byte counter.
struct Backends {
    http: SocketAddr,
    sink: SocketAddr,
}

impl Backends {
    /// Serves both on a runtime of their own, so backend work never waits behind the load
    /// generator's (and vice versa) beyond what the two CPUs impose.
    fn start(ip: &str) -> anyhow::Result<Self> {
        let bind = |what: &str| -> anyhow::Result<std::net::TcpListener> {
            let l = std::net::TcpListener::bind((ip, 0))
                .with_context(|| format!("bind the {what} backend on {ip}"))?;
            l.set_nonblocking(true)?;
            Ok(l)
        };
        let (http, sink) = (bind("HTTP echo")?, bind("TCP sink")?);
        let addrs = Self {
            http: http.local_addr()?,
            sink: sink.local_addr()?,
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("backend runtime")?;
        std::thread::Builder::new()
            .name("backends".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let http = TcpListener::from_std(http).expect("register the HTTP listener");
                    let sink = TcpListener::from_std(sink).expect("register the sink listener");
                    tokio::join!(serve_echo(http), serve_sink(sink));
                });
            })
            .context("backend thread")?;
        Ok(addrs)
    }
}

/// Counts what a connection sends until the writer half-closes, then answers the count (u64,
/// big-endian). The writer's clock stops on the answer, so only one direction is timed.
async fn serve_sink(listener: TcpListener) {
    loop {
        let Ok((mut tcp, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(1)).await;
            continue;
        };
        tokio::spawn(async move {
            let mut buf = vec![0u8; 256 * 1024];
            let mut total = 0u64;
            loop {
                match tcp.read(&mut buf).await {
                    Ok(0) => break,
                    Ok(n) => total += n as u64,
                    Err(_) => return,
                }
            }
            let _ = tcp.write_all(&total.to_be_bytes()).await;
            let _ = tcp.shutdown().await;
        });
    }
}

/// Where a client sends its HTTP requests; the `Host` header is always the mesh name, which
/// the backend ignores and east routes by.
#[derive(Clone, Copy)]
struct Target {
    name: &'static str,
    addr: SocketAddr,
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

/// One keep-alive client connection, reopened after a failure.
struct Conn {
    target: Target,
    sender: Option<Sender>,
}

impl Conn {
    async fn open(target: Target) -> anyhow::Result<Self> {
        let sender = connect(target).await?;
        Ok(Self {
            target,
            sender: Some(sender),
        })
    }

    /// POSTs `body` and checks that it comes back whole.
    async fn exchange(&mut self, body: &Bytes) -> anyhow::Result<()> {
        let mut sender = match self.sender.take() {
            Some(s) if !s.is_closed() => s,
            _ => connect(self.target).await?,
        };
        // A stuck request counts as an error instead of stalling the whole bench.
        let result = tokio::time::timeout(REQUEST_TIMEOUT, exchange(&mut sender, body))
            .await
            .unwrap_or_else(|_| Err(anyhow::anyhow!("no response within {REQUEST_TIMEOUT:?}")));
        // A failed exchange may leave the connection mid-message: start the next one afresh.
        if result.is_ok() {
            self.sender = Some(sender);
        }
        result
    }
}

async fn connect(target: Target) -> anyhow::Result<Sender> {
    let tcp = TcpStream::connect(target.addr)
        .await
        .with_context(|| format!("connect to {} ({})", target.name, target.addr))?;
    tcp.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

async fn exchange(sender: &mut Sender, body: &Bytes) -> anyhow::Result<()> {
    sender.ready().await?;
    let req = hyper::Request::post("/")
        .header(hyper::header::HOST, SERVICE)
        .body(Full::new(body.clone()))?;
    let resp = sender.send_request(req).await?;
    let status = resp.status();
    let got = resp.into_body().collect().await?.to_bytes();
    ensure!(
        status == hyper::StatusCode::OK && got.len() == body.len(),
        "got {status} with {} bytes: {:?}",
        got.len(),
        String::from_utf8_lossy(&got[..got.len().min(200)])
    );
    Ok(())
}

/// Retries `attempt` until it succeeds or the setup deadline passes.
async fn retry<F, Fut>(what: &str, gateways: &Gateways<'_>, mut attempt: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let deadline = Instant::now() + SETUP_TIMEOUT;
    loop {
        let last = match attempt().await {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        if Instant::now() > deadline {
            bail!(
                "{what}: not within {SETUP_TIMEOUT:?} (last error: {last:#})\n{}",
                gateways.logs()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_until_ready(
    gateways: &Gateways<'_>,
    via: Target,
    bulk_via: SocketAddr,
) -> anyhow::Result<()> {
    let body = Bytes::from(vec![b'x'; BODY_BYTES]);
    retry(
        "east to reach echo.bench through the tunnel",
        gateways,
        || {
            let body = body.clone();
            async move { Conn::open(via).await?.exchange(&body).await }
        },
    )
    .await?;
    retry(
        "east to carry bulk.bench through the tunnel",
        gateways,
        || async { bulk(bulk_via, 64 * 1024).await.map(|_| ()) },
    )
    .await
}

/// Everything measured, for the report.
struct Report {
    latency: [Phase; 2],
    max: [Phase; 2],
    bulk: [Bulk; 2],
}

/// One run of requests against one target.
#[derive(Default)]
struct Phase {
    /// Successes and failures. A success's latency runs, for open loop, from its scheduled send
    /// time to the last byte of the response; for closed loop, from the actual send.
    outcomes: Outcomes,
    /// Open loop only: how late requests left (pacer wake-up, then the client waiting for a CPU
    /// or a free connection).
    send_delays: Vec<Duration>,
    /// Open loop only: how late the pacer itself woke for each request (part of `send_delays`).
    pacer_delays: Vec<Duration>,
    /// Open loop only: per successful request, from its actual send. Set against the latencies,
    /// it separates time spent on the path from time the client waited to send.
    service: Vec<Duration>,
    elapsed: Duration,
    usage: Usage,
}

impl Phase {
    fn record(&mut self, result: anyhow::Result<()>, latency: Duration) {
        self.outcomes.record(result, latency);
    }

    fn merge(&mut self, other: Phase) {
        self.outcomes.merge(other.outcomes);
        self.send_delays.extend(other.send_delays);
        self.service.extend(other.service);
    }

    fn finish(&mut self, elapsed: Duration, usage: Usage) -> anyhow::Result<()> {
        self.outcomes.latencies.sort_unstable();
        self.send_delays.sort_unstable();
        self.pacer_delays.sort_unstable();
        self.service.sort_unstable();
        self.elapsed = elapsed;
        self.usage = usage;
        // A few errors are numbers to report; none succeeding means nothing was measured.
        if self.outcomes.latencies.is_empty() {
            bail!(
                "no request succeeded ({} errors; first: {})",
                self.outcomes.errors,
                self.outcomes.first_error.as_deref().unwrap_or("none")
            );
        }
        Ok(())
    }

    fn pct(&self, p: f64) -> Duration {
        percentile(&self.outcomes.latencies, p)
    }

    fn rate(&self) -> f64 {
        self.outcomes.latencies.len() as f64 / self.elapsed.as_secs_f64()
    }
}

struct Bulk {
    elapsed: Duration,
    usage: Usage,
}

impl Bulk {
    fn gbits(&self, bytes: u64) -> f64 {
        bytes as f64 * 8.0 / self.elapsed.as_secs_f64() / 1e9
    }
}

async fn measure(
    settings: &Settings,
    gateways: &Gateways<'_>,
    direct: Target,
    via: Target,
    sink: SocketAddr,
    bulk_via: SocketAddr,
) -> anyhow::Result<Report> {
    let body = Bytes::from(vec![b'x'; BODY_BYTES]);
    let mut latency = Vec::new();
    let mut max = Vec::new();
    let mut bulks = Vec::new();
    for target in [direct, via] {
        eprintln!(
            "measuring {}: latency at {} req/s...",
            target.name, settings.rate
        );
        let phase = open_loop(settings, gateways, target, &body)
            .await
            .with_context(|| format!("latency {}", target.name))?;
        latency.push(phase);
    }
    for target in [direct, via] {
        eprintln!(
            "measuring {}: max rate over {} connections...",
            target.name, settings.max_conns
        );
        let phase = closed_loop(settings, gateways, target, &body)
            .await
            .with_context(|| format!("max rate {}", target.name))?;
        max.push(phase);
    }
    for (name, addr) in [("direct", sink), ("via tunnel", bulk_via)] {
        eprintln!(
            "measuring {name}: {} MiB over one TCP connection...",
            settings.bulk_bytes >> 20
        );
        let clock = UsageClock::start(gateways);
        let elapsed = bulk(addr, settings.bulk_bytes)
            .await
            .with_context(|| format!("bulk {name}"))?;
        bulks.push(Bulk {
            elapsed,
            usage: clock.stop(elapsed),
        });
    }
    Ok(Report {
        latency: two(latency, "latency")?,
        max: two(max, "max rate")?,
        bulk: two(bulks, "bulk")?,
    })
}

fn two<T>(runs: Vec<T>, what: &str) -> anyhow::Result<[T; 2]> {
    runs.try_into()
        .map_err(|_| anyhow::anyhow!("{what}: expected two runs"))
}

async fn open_pool(target: Target, n: usize) -> anyhow::Result<Vec<Conn>> {
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        conns.push(Conn::open(target).await?);
    }
    Ok(conns)
}

/// Fixed-rate load: requests are due on a schedule whether or not earlier ones have finished,
/// and each is timed from when it was due, so a stall shows up in full in the percentiles
/// (no coordinated omission).
async fn open_loop(
    settings: &Settings,
    gateways: &Gateways<'_>,
    target: Target,
    body: &Bytes,
) -> anyhow::Result<Phase> {
    let pool = open_pool(target, settings.latency_conns).await?;
    let (pool, _) = run_open_loop(pool, settings.rate, settings.warmup, body).await?;
    let clock = UsageClock::start(gateways);
    let started = Instant::now();
    let (_, mut phase) = run_open_loop(pool, settings.rate, settings.phase, body).await?;
    let elapsed = started.elapsed();
    phase.finish(elapsed, clock.stop(elapsed))?;
    Ok(phase)
}

async fn run_open_loop(
    pool: Vec<Conn>,
    rate: u32,
    duration: Duration,
    body: &Bytes,
) -> anyhow::Result<(Vec<Conn>, Phase)> {
    let interval = Duration::from_secs_f64(1.0 / f64::from(rate));
    let total = (duration.as_secs_f64() * f64::from(rate)).round() as u32;
    let (due_tx, due_rx) = mpsc::unbounded_channel::<Instant>();
    // The pacer is a plain thread: std sleeps wake within tens of microseconds, where tokio's
    // timer only has millisecond resolution, which would blur the very numbers measured here.
    let pacer = std::thread::Builder::new()
        .name("pacer".into())
        .spawn(move || {
            let start = Instant::now() + Duration::from_millis(1);
            let mut late = Vec::with_capacity(total as usize);
            for i in 0..total {
                let due = start + interval * i;
                let now = Instant::now();
                if due > now {
                    std::thread::sleep(due - now);
                }
                late.push(due.elapsed());
                if due_tx.send(due).is_err() {
                    break;
                }
            }
            late
        })
        .context("pacer thread")?;
    // Whichever connection is idle takes the next due request; if none is, the request waits
    // and that wait counts towards its latency.
    let due_rx = Arc::new(tokio::sync::Mutex::new(due_rx));
    let mut workers = JoinSet::new();
    for mut conn in pool {
        let due_rx = due_rx.clone();
        let body = body.clone();
        workers.spawn(async move {
            let mut phase = Phase::default();
            loop {
                // Its own statement, so the lock is released before the request goes out: in a
                // `while let` the guard would live through the body and serialise the pool.
                let next = due_rx.lock().await.recv().await;
                let Some(due) = next else { break };
                phase.send_delays.push(due.elapsed());
                let sent = Instant::now();
                let result = conn.exchange(&body).await;
                if result.is_ok() {
                    phase.service.push(sent.elapsed());
                }
                phase.record(result, due.elapsed());
            }
            (conn, phase)
        });
    }
    let mut pool = Vec::new();
    let mut total_phase = Phase::default();
    while let Some(joined) = workers.join_next().await {
        let (conn, phase) = joined.context("open-loop worker")?;
        pool.push(conn);
        total_phase.merge(phase);
    }
    match pacer.join() {
        Ok(late) => total_phase.pacer_delays = late,
        Err(_) => bail!("the pacer thread panicked"),
    }
    Ok((pool, total_phase))
}

/// As many requests as `max_conns` connections can carry back to back.
async fn closed_loop(
    settings: &Settings,
    gateways: &Gateways<'_>,
    target: Target,
    body: &Bytes,
) -> anyhow::Result<Phase> {
    let pool = open_pool(target, settings.max_conns).await?;
    let (pool, _) = run_closed_loop(pool, settings.warmup, body).await?;
    let clock = UsageClock::start(gateways);
    let started = Instant::now();
    let (_, mut phase) = run_closed_loop(pool, settings.phase, body).await?;
    let elapsed = started.elapsed();
    phase.finish(elapsed, clock.stop(elapsed))?;
    Ok(phase)
}

async fn run_closed_loop(
    pool: Vec<Conn>,
    duration: Duration,
    body: &Bytes,
) -> anyhow::Result<(Vec<Conn>, Phase)> {
    let deadline = Instant::now() + duration;
    let mut workers = JoinSet::new();
    for mut conn in pool {
        let body = body.clone();
        workers.spawn(async move {
            let mut phase = Phase::default();
            while Instant::now() < deadline {
                let sent = Instant::now();
                let result = conn.exchange(&body).await;
                let failed = result.is_err();
                phase.record(result, sent.elapsed());
                if failed {
                    // Do not spin on a target that refuses outright.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            (conn, phase)
        });
    }
    let mut pool = Vec::new();
    let mut total_phase = Phase::default();
    while let Some(joined) = workers.join_next().await {
        let (conn, phase) = joined.context("closed-loop worker")?;
        pool.push(conn);
        total_phase.merge(phase);
    }
    Ok((pool, total_phase))
}

/// Streams `bytes` one way over one TCP connection and returns the time until the sink has
/// counted them all.
async fn bulk(addr: SocketAddr, bytes: u64) -> anyhow::Result<Duration> {
    // Generous: a gigabyte at 20 MB/s, plus setup.
    let limit = Duration::from_secs(30 + bytes / 20_000_000);
    tokio::time::timeout(limit, async {
        let mut tcp = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connect to {addr}"))?;
        let chunk = vec![0x5au8; 256 * 1024];
        let started = Instant::now();
        let mut left = bytes;
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            tcp.write_all(&chunk[..n]).await.context("write")?;
            left -= n as u64;
        }
        tcp.shutdown().await.context("half-close")?;
        let mut count = [0u8; 8];
        tcp.read_exact(&mut count)
            .await
            .context("no byte count back from the sink")?;
        let elapsed = started.elapsed();
        let counted = u64::from_be_bytes(count);
        ensure!(
            counted == bytes,
            "the sink counted {counted} of {bytes} bytes"
        );
        Ok(elapsed)
    })
    .await
    .map_err(|_| anyhow::anyhow!("{bytes} bytes to {addr} took over {limit:?}"))?
}

/// What a phase cost the machine. CPU time is in percent of one core: this bench process
/// (client and backends), east, west, and everything else on the machine (a build, a test run),
/// which would otherwise silently skew the numbers.
#[derive(Default, Clone, Copy)]
struct Usage {
    bench: f64,
    east: f64,
    west: f64,
    other: f64,
    /// UDP datagrams the kernel dropped for want of receive buffer, machine-wide: on loopback
    /// these are tunnel packets, which QUIC must then detect as lost and resend.
    udp_drops: Option<u64>,
}

struct UsageClock {
    pids: [u32; 3],
    start: [Option<u64>; 3],
    machine: Option<u64>,
    udp_drops: Option<u64>,
}

impl UsageClock {
    fn start(gateways: &Gateways<'_>) -> Self {
        let pids = [std::process::id(), gateways.east.pid(), gateways.west.pid()];
        Self {
            pids,
            start: pids.map(cpu_ticks),
            machine: machine_ticks(),
            udp_drops: udp_receive_drops(),
        }
    }

    fn stop(&self, elapsed: Duration) -> Usage {
        let percent =
            |ticks: u64| ticks as f64 / clock_ticks_per_second() / elapsed.as_secs_f64() * 100.0;
        let used = |start: Option<u64>, end: Option<u64>| Some(end?.saturating_sub(start?));
        let ours = [0, 1, 2].map(|i| used(self.start[i], cpu_ticks(self.pids[i])));
        let other = used(self.machine, machine_ticks()).and_then(|all| {
            let ours: u64 = ours.iter().copied().sum::<Option<u64>>()?;
            Some(all.saturating_sub(ours))
        });
        let [bench, east, west] = ours.map(|t| t.map_or(f64::NAN, percent));
        Usage {
            bench,
            east,
            west,
            other: other.map_or(f64::NAN, percent),
            udp_drops: used(self.udp_drops, udp_receive_drops()),
        }
    }
}

/// `Udp: RcvbufErrors` from /proc/net/snmp.
fn udp_receive_drops() -> Option<u64> {
    let snmp = std::fs::read_to_string("/proc/net/snmp").ok()?;
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp: "));
    let (names, values) = (udp.next()?, udp.next()?);
    let column = names.split_whitespace().position(|n| n == "RcvbufErrors")?;
    values.split_whitespace().nth(column)?.parse().ok()
}

/// user + nice + system time of the whole machine, in clock ticks: the same kinds of time as
/// `cpu_ticks` counts, so the difference is other processes' share.
fn machine_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let cpu = stat.lines().next()?.strip_prefix("cpu ")?;
    let fields: Vec<u64> = cpu
        .split_whitespace()
        .take(3)
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    Some(fields.iter().sum())
}

fn clock_ticks_per_second() -> f64 {
    // USER_HZ is 100 on every mainstream Linux; asking getconf costs a process spawn.
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// Signed difference in milliseconds.
fn added_ms(via: Duration, direct: Duration) -> f64 {
    (via.as_secs_f64() - direct.as_secs_f64()) * 1e3
}

fn usage_columns(u: &Usage) -> String {
    let drops = u.udp_drops.map_or_else(|| "?".into(), |d| d.to_string());
    format!(
        "{:>6.0} {:>6.0} {:>6.0} {:>6.0} {:>9}",
        u.bench, u.east, u.west, u.other, drops
    )
}

fn verdict(settings: &Settings, met: bool) -> &'static str {
    match (settings.smoke, met) {
        (true, _) => "n/a (smoke run)",
        (false, true) => "MET",
        (false, false) => "MISSED",
    }
}

/// Headings for `usage_columns`.
fn usage_headings() -> String {
    format!(
        "{:>6} {:>6} {:>6} {:>6} {:>9}",
        "bench", "east", "west", "other", "udp-drops"
    )
}

fn print_requests(rows: [(&str, &Phase); 2]) {
    println!(
        "{:<11} {:>8} {:>6} {:>8} {:>8} {:>8} {:>8} {:>8}  {}",
        "path",
        "ok",
        "errors",
        "req/s",
        "p50",
        "p90",
        "p99",
        "max",
        usage_headings()
    );
    for (name, p) in rows {
        println!(
            "{:<11} {:>8} {:>6} {:>8.0} {:>8} {:>8} {:>8} {:>8}  {}",
            name,
            p.outcomes.latencies.len(),
            p.outcomes.errors,
            p.rate(),
            ms(p.pct(0.5)),
            ms(p.pct(0.9)),
            ms(p.pct(0.99)),
            ms(p.pct(1.0)),
            usage_columns(&p.usage)
        );
    }
}

fn print_report(machine: &Machine, settings: &Settings, r: &Report) {
    let secs = settings.phase.as_secs_f64();
    println!();
    println!("Causeway tunnel benchmark");
    println!("=========================");
    println!(
        "machine:  {} CPUs ({}), Linux {}, load average at start {}",
        machine.cpus, machine.model, machine.kernel, machine.load
    );
    println!(
        "settings: {secs} s per phase after {:?} warm-up; {BODY_BYTES} B POST bodies echoed back; \
         tunnel keep_alive 1s, idle_timeout 5s; gateway log level {GATEWAY_LOG}; \
         dataplane busy_poll {}",
        settings.warmup,
        settings.busy_poll.as_deref().unwrap_or("default (0s)")
    );
    if settings.smoke {
        println!(
            "SMOKE RUN (no --bench argument, so started by cargo test): numbers are not \
             meaningful; use `cargo bench --bench tunnel`"
        );
    }
    println!(
        "paths:    direct = client -> backend; via tunnel = client -> east outbound (Host: {SERVICE}) \
         -> QUIC -> west -> backend"
    );
    println!(
        "usage:    % of one core used during the phase by this process (client + backends), east, \
         west and all other processes (if high, something else skewed the run); udp-drops: \
         datagrams the kernel dropped for a full receive buffer (tunnel packets QUIC must resend)"
    );

    let [ld, lv] = &r.latency;
    println!();
    println!(
        "1. Latency at {} req/s, open loop over {} keep-alive connections \
         (timed from each request's scheduled send; ms)",
        settings.rate, settings.latency_conns
    );
    print_requests([("direct", ld), ("via tunnel", lv)]);
    let added_p50 = added_ms(lv.pct(0.5), ld.pct(0.5));
    let added_p99 = added_ms(lv.pct(0.99), ld.pct(0.99));
    println!(
        "added by the tunnel: p50 {added_p50:+.3} ms (via/direct {}), p99 {added_p99:+.3} ms (via/direct {})",
        ratio(lv.pct(0.5).as_secs_f64(), ld.pct(0.5).as_secs_f64()),
        ratio(lv.pct(0.99).as_secs_f64(), ld.pct(0.99).as_secs_f64()),
    );
    let service = |p: &Phase, q| percentile(&p.service, q);
    println!(
        "timed from the actual send instead: p50 direct {} via {} ({:+.3}), \
         p99 direct {} via {} ({:+.3}) ms",
        ms(service(ld, 0.5)),
        ms(service(lv, 0.5)),
        added_ms(service(lv, 0.5), service(ld, 0.5)),
        ms(service(ld, 0.99)),
        ms(service(lv, 0.99)),
        added_ms(service(lv, 0.99), service(ld, 0.99)),
    );
    let delays = |p: &Phase| {
        format!(
            "p50 {} p99 {} (pacer's own wake-up p50 {} p99 {})",
            ms(percentile(&p.send_delays, 0.5)),
            ms(percentile(&p.send_delays, 0.99)),
            ms(percentile(&p.pacer_delays, 0.5)),
            ms(percentile(&p.pacer_delays, 0.99)),
        )
    };
    println!(
        "requests left late (pacer wake-up, client waiting for a CPU or an idle connection; ms): \
         direct {}, via {}",
        delays(ld),
        delays(lv)
    );

    let [md, mv] = &r.max;
    println!();
    println!(
        "2. Max request rate, closed loop over {} keep-alive connections (latency from actual send; ms)",
        settings.max_conns
    );
    print_requests([("direct", md), ("via tunnel", mv)]);
    println!(
        "via tunnel / direct: {} of the request rate",
        ratio(mv.rate(), md.rate())
    );
    for (name, p) in [
        ("latency direct", ld),
        ("latency via", lv),
        ("max direct", md),
        ("max via", mv),
    ] {
        if let Some(e) = &p.outcomes.first_error {
            println!("first error ({name}, {} in all): {e}", p.outcomes.errors);
        }
    }

    let [bd, bv] = &r.bulk;
    let bytes = settings.bulk_bytes;
    println!();
    println!(
        "3. Bulk TCP: {} MiB one way over one connection, timed until the sink has counted every byte",
        bytes >> 20
    );
    println!(
        "{:<11} {:>10} {:>8}  {}",
        "path",
        "seconds",
        "Gbit/s",
        usage_headings()
    );
    for (name, b) in [("direct", bd), ("via tunnel", bv)] {
        println!(
            "{:<11} {:>10.3} {:>8.2}  {}",
            name,
            b.elapsed.as_secs_f64(),
            b.gbits(bytes),
            usage_columns(&b.usage)
        );
    }
    println!(
        "via tunnel / direct: {} of the throughput",
        ratio(bv.gbits(bytes), bd.gbits(bytes))
    );

    println!();
    println!("Targets");
    // A tail below the baseline's means the direct phase was disturbed (a stall of the
    // machine), not that the tunnel is free: no verdict from such a run.
    let p99_verdict = if added_p99 < 0.0 && !settings.smoke {
        "INCONCLUSIVE (the direct p99 exceeds the tunnel's: the baseline was disturbed; run again)"
    } else {
        verdict(settings, added_p99 <= TARGET_ADDED_P99.as_secs_f64() * 1e3)
    };
    println!(
        "  added p99 latency at {} req/s <= {:.1} ms: {:<6} ({added_p99:+.3} ms)",
        settings.rate,
        TARGET_ADDED_P99.as_secs_f64() * 1e3,
        p99_verdict
    );
    println!(
        "  one TCP connection through the tunnel >= {TARGET_BULK_GBITS:.1} Gbit/s: {:<6} ({:.2} Gbit/s)",
        verdict(settings, bv.gbits(bytes) >= TARGET_BULK_GBITS),
        bv.gbits(bytes)
    );
    println!(
        "(Measurements, not assertions: the client, backends and both gateways share these {} CPUs, \
         so other load on the machine shows up in the numbers.)",
        machine.cpus
    );
}
