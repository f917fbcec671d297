//! `causeway ca rotate --cluster X`: rotates cluster X's CA on one of X's gateways (admin).
//!
//! ```text
//!  causeway ca rotate --cluster east ── POST /v1/clusters/east/ca/rotate ──► a gateway of east
//!                                          (waits up to 2 min: every other gateway must
//!                                           prove it trusts the next root before the switch)
//!  ◄── the report: who trusts the new root, when issuance switched, when the old root retires
//! ```
//!
//! The rotation runs on the gateway; a client that gives up waiting does not stop it.

use api::client::{ClientError, ROTATE_TIMEOUT, RotationReport};

use super::context::ConnectionArgs;
use super::get::to_json;
use super::{Failure, Outcome, connect};

#[derive(Debug, clap::Args)]
pub struct CaArgs {
    #[command(subcommand)]
    pub command: CaCommand,
    #[command(flatten)]
    pub connection: ConnectionArgs,
}

#[derive(Debug, clap::Subcommand)]
pub enum CaCommand {
    /// Rotate a cluster's CA with no failed request (needs an admin token).
    ///
    /// The next root joins the cluster's trust bundle everywhere, issuance switches once every
    /// other gateway trusts it, and the old root leaves the bundle after the longest SVID it
    /// signed expires. --server must be a gateway of that cluster.
    Rotate(RotateArgs),
}

#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  causeway ca rotate --cluster east --server https://east-1.example:15000\n  causeway ca rotate --cluster east -o json"
)]
pub struct RotateArgs {
    /// The cluster whose CA rotates: the cluster of the gateway --server names (1-63
    /// lowercase letters, digits or '-').
    #[arg(long, value_name = "NAME", value_parser = cluster_name)]
    pub cluster: String,
    /// Print the server's report as JSON instead of a summary.
    #[arg(short, long, value_enum)]
    pub output: Option<Output>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Json,
}

fn cluster_name(s: &str) -> Result<String, String> {
    federation::model::check_dns_label("cluster name", s)
        .map(|()| s.to_string())
        .map_err(|_| {
            "not a cluster name: 1-63 lowercase letters, digits or '-', starting and ending with \
             a letter or digit"
                .to_string()
        })
}

pub async fn run(args: CaArgs, env: &dyn Fn(&str) -> Option<String>) -> Outcome {
    let CaCommand::Rotate(rotate) = args.command;
    let client = connect(&args.connection, env)?;
    let report = client.rotate_ca(&rotate.cluster).await.inspect_err(|e| {
        if matches!(e, ClientError::Timeout { .. }) {
            eprintln!(
                "note: the gateway goes on with the rotation (it waited up to {} s for \
                     every gateway to trust the next root); run this again to continue it or \
                     to learn that it is under way",
                ROTATE_TIMEOUT.as_secs()
            );
        }
    })?;
    match rotate.output {
        Some(Output::Json) => {
            let value = serde_json::to_value(&report)
                .map_err(|e| Failure::Usage(format!("cannot print the report: {e}")))?;
            println!("{}", to_json(&value));
        }
        None => print!("{}", summary(&report)),
    }
    Ok(())
}

/// The report for a person: who proved trust, when issuance switched, when the old root
/// goes, and what holders of the old bundle should do before then.
fn summary(report: &RotationReport) -> String {
    let retires = &report.old_root_retires_at;
    let mut out = format!(
        "Cluster {}: CA rotated ({}).\n",
        report.cluster, report.phase
    );
    if report.gateways_trusting.is_empty() {
        out.push_str("No other gateway had to prove it trusts the new root.\n");
    } else {
        out.push_str(&format!(
            "Every other gateway proved it trusts the new root ({}):\n",
            report.gateways_trusting.len()
        ));
        for gateway in &report.gateways_trusting {
            out.push_str(&format!("  {gateway}\n"));
        }
    }
    out.push_str(&format!(
        "Issuance switched:  {} (the new root signs every SVID since)\n",
        report.switched_at
    ));
    out.push_str(&format!(
        "Old root retires:   {retires} (it leaves the trust bundle then; both are trusted \
         until then)\n"
    ));
    out.push_str(&format!(
        "\nWorkloads holding bundle.pem from before should fetch the new bundle (causeway svid \
         issue) before {retires}; admin clients: `causeway bundle` / the cluster's trustBundle \
         now holds both roots.\n"
    ));
    out
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Harness {
        #[command(flatten)]
        args: RotateArgs,
    }

    fn parse(argv: &[&str]) -> Result<RotateArgs, clap::Error> {
        Harness::try_parse_from(std::iter::once("rotate").chain(argv.iter().copied()))
            .map(|h| h.args)
    }

    #[test]
    fn cli_ca_rotate_checks_its_flags_before_asking() {
        let args = parse(&["--cluster", "east"]).unwrap();
        assert_eq!((args.cluster.as_str(), args.output), ("east", None));
        let args = parse(&["--cluster", "east-2", "-o", "json"]).unwrap();
        assert_eq!(args.output, Some(Output::Json));
        for bad in [
            &[][..],
            &["--cluster"],
            &["--cluster", ""],
            &["--cluster", "East"],
            &["--cluster", "east_1"],
            &["--cluster", "-east"],
            &["--cluster", "east", "-o", "yaml"],
            &["--cluster", "east", "west"],
        ] {
            let err = parse(bad)
                .err()
                .unwrap_or_else(|| panic!("{bad:?} accepted"));
            assert_eq!(err.exit_code(), 2, "{bad:?}");
        }
    }

    #[test]
    fn cli_ca_rotate_summary_says_who_trusts_and_when_the_old_root_goes() {
        let mut report = RotationReport {
            cluster: "east".into(),
            phase: "switched".into(),
            new_root: "PEM".into(),
            gateways_trusting: vec![
                "spiffe://east.mesh/gateway/east-2".into(),
                "spiffe://west.mesh/gateway/west-1".into(),
            ],
            switched_at: "2025-01-01T00:00:00Z".into(),
            old_root_retires_at: "2025-01-02T00:00:05Z".into(),
        };
        let text = summary(&report);
        for part in [
            "Cluster east: CA rotated (switched)",
            "Every other gateway proved it trusts the new root (2):\n  spiffe://east.mesh/gateway/east-2\n  spiffe://west.mesh/gateway/west-1\n",
            "Issuance switched:  2025-01-01T00:00:00Z",
            "Old root retires:   2025-01-02T00:00:05Z",
            "fetch the new bundle (causeway svid issue) before 2025-01-02T00:00:05Z; admin clients: `causeway bundle` / the cluster's trustBundle now holds both roots",
        ] {
            assert!(text.contains(part), "{part:?} missing:\n{text}");
        }
        assert!(!text.contains("PEM"), "the root itself is for -o json");
        report.gateways_trusting.clear();
        assert!(summary(&report).contains("No other gateway had to prove"));
    }
}
