//! `causeway svid issue`: a key and an X.509-SVID for a workload (admin).
//!
//! ```text
//!  here: WorkloadKeyRequest::generate (ECDSA P-256) ── CSR only ──► POST /v1/svids
//!        key.pem (0600, created so) ◄── kept ─┘                       │ the gateway's cluster CA
//!        cert.pem, bundle.pem ◄──────────────── {certificate, bundle} ┘ signs the CSR's key
//! ```
//!
//! The private key is made on this machine and never sent; nothing is written unless the
//! gateway issued the certificate.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use api::client::SvidRequest;
use federation::identity::WorkloadKeyRequest;

use super::context::ConnectionArgs;
use super::{Failure, Outcome, connect};

#[derive(Debug, clap::Args)]
pub struct SvidArgs {
    #[command(subcommand)]
    pub command: SvidCommand,
    #[command(flatten)]
    pub connection: ConnectionArgs,
}

#[derive(Debug, clap::Subcommand)]
pub enum SvidCommand {
    /// Make a key here and have the gateway's cluster CA certify it as the workload's SPIFFE ID
    /// spiffe://<trust domain>/ns/<namespace>/sa/<service account> (needs an admin token).
    /// Writes key.pem (mode 0600), cert.pem and bundle.pem; the key never leaves this machine.
    Issue(IssueArgs),
}

#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  causeway svid issue --namespace shop --service-account web\n  causeway svid issue -n shop --service-account web --ttl 1h --out-dir /etc/web/svid --force"
)]
pub struct IssueArgs {
    /// The workload's Kubernetes namespace (1-63 lowercase letters, digits or '-').
    #[arg(short, long, value_parser = dns_label)]
    pub namespace: String,
    /// The workload's Kubernetes service account (1-63 lowercase letters, digits or '-').
    #[arg(long, value_name = "NAME", value_parser = dns_label)]
    pub service_account: String,
    /// How long the SVID is valid: 1 to 999999 and s, m, h or d, at most 24h (e.g. 30m, 12h)
    /// [default: 24h].
    #[arg(long, value_parser = parse_ttl)]
    pub ttl: Option<String>,
    /// Where to write key.pem, cert.pem and bundle.pem (created mode 0700 if missing)
    /// [default: ./svid-<namespace>-<service account>].
    #[arg(long, value_name = "DIR")]
    pub out_dir: Option<PathBuf>,
    /// Replace key.pem (and cert.pem, bundle.pem) if the directory has them already.
    #[arg(long)]
    pub force: bool,
}

const KEY_FILE: &str = "key.pem";
const CERT_FILE: &str = "cert.pem";
const BUNDLE_FILE: &str = "bundle.pem";

fn dns_label(s: &str) -> Result<String, String> {
    federation::model::check_dns_label("name", s)
        .map(|()| s.to_string())
        .map_err(|_| {
            "not a DNS label: 1-63 lowercase letters, digits or '-', starting and ending with a \
             letter or digit"
                .to_string()
        })
}

/// Checks a TTL here by the server's own rules (its grammar, at most 24 h), so a typo is a
/// usage error; the server gets the text as typed.
fn parse_ttl(s: &str) -> Result<String, String> {
    match api::rest::ttl_duration(s) {
        Some(ttl) if ttl <= api::rest::SVID_TTL_MAX => Ok(s.to_string()),
        Some(_) => Err("a workload SVID lives at most 24h".into()),
        None => Err("a number from 1 to 999999 and a unit s, m, h or d (e.g. 30m, 24h)".into()),
    }
}

pub async fn run(args: SvidArgs, env: &dyn Fn(&str) -> Option<String>) -> Outcome {
    let SvidCommand::Issue(issue) = args.command;
    let dir = issue.out_dir.clone().unwrap_or_else(|| {
        PathBuf::from(format!(
            "svid-{}-{}",
            issue.namespace, issue.service_account
        ))
    });
    let key_path = dir.join(KEY_FILE);
    // Before anything is asked of the server: an existing key may be the one a workload runs on.
    if !issue.force && key_path.symlink_metadata().is_ok() {
        return Err(Failure::Usage(format!(
            "{} exists; pass --force to replace it (or choose another --out-dir)",
            key_path.display()
        )));
    }
    let client = connect(&args.connection, env)?;
    let request = WorkloadKeyRequest::generate()
        .map_err(|e| Failure::Usage(format!("cannot make a key: {e}")))?;
    let issued = client
        .issue_svid(&SvidRequest {
            namespace: issue.namespace.clone(),
            service_account: issue.service_account.clone(),
            csr: request.csr_pem().to_string(),
            ttl: issue.ttl.clone(),
        })
        .await?;

    let write_failed = |path: &Path, e: std::io::Error| {
        Failure::Usage(format!(
            "the SVID was issued but cannot be written: {}: {e}",
            path.display()
        ))
    };
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .map_err(|e| write_failed(&dir, e))?;
    // The key first: if it cannot be written (say, another run wrote one meanwhile), the
    // certificates next to it would certify a key nobody has.
    write_file(&key_path, request.key_pem(), 0o600, issue.force)
        .map_err(|e| write_failed(&key_path, e))?;
    let cert_path = dir.join(CERT_FILE);
    write_file(&cert_path, &issued.certificate, 0o644, true)
        .map_err(|e| write_failed(&cert_path, e))?;
    let bundle_path = dir.join(BUNDLE_FILE);
    write_file(&bundle_path, &issued.bundle, 0o644, true)
        .map_err(|e| write_failed(&bundle_path, e))?;

    println!("SPIFFE ID:   {}", issued.spiffe_id);
    println!("Not after:   {}", issued.not_after);
    println!("Key:         {} (mode 0600)", key_path.display());
    println!("Certificate: {}", cert_path.display());
    println!("Bundle:      {}", bundle_path.display());
    Ok(())
}

/// Writes `contents` to `path`, a file that is created with `mode` (never loosened, then
/// tightened). Without `replace`, an existing `path` is an error; with it, the new file is
/// written whole beside it and renamed over it, so readers see the old file or the new one.
fn write_file(path: &Path, contents: &str, mode: u32, replace: bool) -> std::io::Result<()> {
    let create = |at: &Path| -> std::io::Result<()> {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(at)?;
        file.write_all(contents.as_bytes())?;
        file.sync_all()
    };
    if !replace {
        return create(path);
    }
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    // A leftover from an interrupted run may carry other permissions: start from nothing.
    match fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    create(&tmp)?;
    fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Harness {
        #[command(flatten)]
        args: IssueArgs,
    }

    fn parse(argv: &[&str]) -> Result<IssueArgs, clap::Error> {
        Harness::try_parse_from(std::iter::once("issue").chain(argv.iter().copied()))
            .map(|h| h.args)
    }

    #[test]
    fn cli_svid_issue_checks_its_flags_before_asking() {
        let args = parse(&["-n", "shop", "--service-account", "web", "--ttl", "1d"]).unwrap();
        assert_eq!(
            (
                args.namespace.as_str(),
                args.service_account.as_str(),
                args.ttl.as_deref()
            ),
            ("shop", "web", Some("1d"))
        );
        assert!(!args.force && args.out_dir.is_none());
        for bad in [
            &["--service-account", "web"][..],
            &["--namespace", "shop"],
            &["--namespace", "Shop", "--service-account", "web"],
            &["--namespace", "shop", "--service-account", "web_1"],
            &[
                "--namespace",
                "shop",
                "--service-account",
                "web",
                "--ttl",
                "25h",
            ],
            &[
                "--namespace",
                "shop",
                "--service-account",
                "web",
                "--ttl",
                "soon",
            ],
        ] {
            let err = parse(bad)
                .err()
                .unwrap_or_else(|| panic!("{bad:?} accepted"));
            assert_eq!(err.exit_code(), 2, "{bad:?}");
        }
    }

    #[test]
    fn cli_svid_files_are_created_with_their_mode_and_replaced_only_when_asked() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join(KEY_FILE);
        write_file(&key, "one", 0o600, false).unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&key), 0o600);
        let err = write_file(&key, "two", 0o600, false).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::AlreadyExists);
        assert_eq!(fs::read_to_string(&key).unwrap(), "one");

        // A loose leftover temporary does not lend its mode to the new key.
        let tmp = dir.path().join(".key.pem.tmp");
        fs::write(&tmp, "stale").unwrap();
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o666)).unwrap();
        fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
        write_file(&key, "two", 0o600, true).unwrap();
        assert_eq!(fs::read_to_string(&key).unwrap(), "two");
        assert_eq!(mode(&key), 0o600);
        assert!(!tmp.exists());
    }
}
