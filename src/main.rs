//! The `causeway` binary: parses the command line, sets up logging and hands over to the
//! composition root in [`app`].
#![forbid(unsafe_code)]

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod admin_cert;
mod app;
mod bootstrap;
mod ca;
mod cli;
mod config;
mod demo;
mod echo;
mod identity;
mod join;
mod membership;
mod mesh_sync;
mod rotation;
mod seed;
mod signal;

/// A gateway is long-running and its allocations come in bursts (an apply of hundreds of
/// documents, a snapshot sent to a joining member): glibc's malloc keeps the holes those leave
/// resident, jemalloc returns freed pages to the system within seconds (its decay), which
/// keeps a gateway holding 10,000 services under 60 MB. It is also what a static musl build
/// needs, whose own malloc is slow.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Causeway: a federation gateway for service meshes.
#[derive(Parser)]
#[command(version, about, long_about = None, after_help = cli::EXIT_CODES)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a gateway at the edge of one cluster. With no config file it starts a single-node
    /// gateway on loopback with its data in ./causeway-data.
    Gateway {
        #[command(flatten)]
        overrides: config::Overrides,
    },
    /// Print this cluster's trust bundle (its CA root, PEM), creating the CA if it does not
    /// exist yet. Give the output to the other clusters' gateways as `peers[].trust_bundle`,
    /// and to clients of this cluster's admin APIs (`--ca-file`, `--join-ca`, `curl --cacert`).
    Bundle {
        #[command(flatten)]
        overrides: config::Overrides,
    },
    /// Start a three-cluster federation (east, west, edge) on 127.0.0.1-3 and print a tour.
    Demo {
        /// Where the demo keeps its gateways' data (CAs, keys).
        #[arg(long, default_value = "./causeway-demo", env = "CAUSEWAY_DEMO_DIR")]
        dir: PathBuf,
        /// The loopback network the clusters get: east <NET>.1, west .2, edge .3 (each on the
        /// default ports); another value runs a second demo beside one on 127.0.0.x
        #[arg(long, default_value = "127.0.0", value_name = "NET")]
        net: demo::Net,
    },
    /// The admin CLI: apply, get, delete, status, token (clients of a gateway's REST API).
    #[command(flatten)]
    Admin(cli::Command),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    // The control plane (admin API, identity, signals) runs here; the data plane gets its own
    // runtime per gateway (see `app`), so proxied bytes never share workers with them.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("control")
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("causeway: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Gateway { overrides } => run_gateway(overrides).await,
            Command::Bundle { overrides } => print_bundle(overrides),
            Command::Demo { dir, net } => demo::run(dir, net).await,
            Command::Admin(command) => cli::run(command).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // The admin CLI already said why, and picked the status scripts rely on.
            if let Some(exit) = e.downcast_ref::<cli::Exit>() {
                return exit.code();
            }
            let message = error_chain(&e);
            tracing::error!("{message}");
            eprintln!("causeway: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn run_gateway(overrides: config::Overrides) -> anyhow::Result<()> {
    let config = config::Config::load(&overrides)?;
    tracing::info!("effective configuration:\n{}", config.to_toml());
    let bound = app::build(config).await?;
    signal::terminated().await;
    tracing::info!("shutting down: draining in-flight streams");
    bound.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}

fn print_bundle(overrides: config::Overrides) -> anyhow::Result<()> {
    let config = config::Config::load(&overrides)?;
    let td = federation::identity::TrustDomain::parse(&config.trust_domain)?;
    let ca = federation::identity::CertificateAuthority::load_or_create(
        &config.data_dir.join("ca"),
        &td,
    )?;
    print!("{}", ca.bundle_pem());
    Ok(())
}

/// The error and its causes on one line, skipping a cause its parent already spelled out.
fn error_chain(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

/// hickory's server logs every DNS query at INFO, and a WARN for every datagram from a source
/// it cannot answer (port 0, a multicast address: spoofable): anyone who can send queries could
/// fill the disk. Our handler logs what matters. Applies unless the filter names hickory itself.
const QUIET_DEPENDENCIES: &str = "hickory_server=error";

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let spec = std::env::var("CAUSEWAY_LOG")
        .or_else(|_| std::env::var(EnvFilter::DEFAULT_ENV))
        .ok()
        .filter(|spec| EnvFilter::try_new(spec).is_ok())
        .unwrap_or_else(|| "info".to_string());
    let spec = if spec.contains("hickory") {
        spec
    } else {
        format!("{spec},{QUIET_DEPENDENCIES}")
    };
    let filter = EnvFilter::try_new(&spec).unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}
