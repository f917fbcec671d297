//! The admin CLI: `apply`, `get`, `delete`, `status`, `token`, `svid`, `ca`, all thin clients
//! of a gateway's REST API ([`api::client::Client`]); nothing here touches the store.
//!
//! ```text
//!  flags ─▶ context::resolve (server, token, CA) ─▶ Client ─HTTPS─▶ admin port
//!  stdout: results only (tables, YAML/JSON, `kind/name created`, a token)
//!  stderr: warnings and errors        exit status: see EXIT_CODES
//! ```

use std::process::ExitCode;

use api::client::{ClientError, Problem};
use federation::resource::{Kind, KindInfo};

mod apply;
mod ca;
pub mod context;
mod delete;
mod files;
mod get;
mod status;
mod svid;
mod table;
mod token;

/// The top-level `--help` appendix: what scripts may rely on.
pub const EXIT_CODES: &str = "\
Exit status of apply, get, delete, status, token, svid and ca:
  0  success
  1  the server refused the request (4xx/5xx; its reason is printed on stderr),
     or refused part of an apply or delete
  2  usage error: bad flags or arguments, unknown kind, unreadable -f file or config,
     svid files that exist (without --force) or cannot be written
  3  cannot reach the server (connection refused, timeout)";

/// The admin commands, flattened into the top-level command.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Create or update resources from YAML or JSON files (each file all or nothing).
    Apply(apply::ApplyArgs),
    /// List resources of a kind, or show one.
    Get(get::GetArgs),
    /// Delete a resource by kind and name, or the resources a file describes.
    Delete(delete::DeleteArgs),
    /// Show this gateway's view of the mesh: Raft role, leader, members, tunnels.
    Status(status::StatusArgs),
    /// Create, list and revoke API tokens (needs an admin token).
    Token(token::TokenArgs),
    /// Issue X.509-SVIDs for workloads, signed by the gateway's cluster CA (needs an admin
    /// token).
    Svid(svid::SvidArgs),
    /// Rotate a cluster's CA on one of its gateways (needs an admin token).
    Ca(ca::CaArgs),
}

/// The exit status of an admin command, already reported on stderr. `main` turns it into the
/// process's exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("exit status {0}")]
pub struct Exit(pub u8);

impl Exit {
    pub const REFUSED: Exit = Exit(1);
    pub const USAGE: Exit = Exit(2);
    pub const UNREACHABLE: Exit = Exit(3);

    pub fn code(self) -> ExitCode {
        ExitCode::from(self.0)
    }
}

/// Why an admin command failed.
#[derive(Debug)]
pub enum Failure {
    /// The command line or a local input cannot be used.
    Usage(String),
    /// A request failed.
    Client(ClientError),
    /// Refusals were printed as they happened (per file, per document).
    Reported,
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        Failure::Client(e)
    }
}

impl From<context::ContextError> for Failure {
    fn from(e: context::ContextError) -> Self {
        Failure::Usage(e.message)
    }
}

/// The exit status scripts see for a failure.
pub fn exit_for(failure: &Failure) -> Exit {
    match failure {
        Failure::Usage(_) => Exit::USAGE,
        Failure::Reported => Exit::REFUSED,
        Failure::Client(e) if e.is_unreachable() => Exit::UNREACHABLE,
        Failure::Client(ClientError::InvalidServer { .. } | ClientError::InvalidToken { .. }) => {
            Exit::USAGE
        }
        Failure::Client(_) => Exit::REFUSED,
    }
}

type Outcome = Result<(), Failure>;

/// Runs one admin command; an `Err` is an [`Exit`] whose reason is already on stderr.
pub async fn run(command: Command) -> anyhow::Result<()> {
    let env = |name: &str| std::env::var(name).ok();
    let outcome = match command {
        Command::Apply(args) => apply::run(args, &env).await,
        Command::Get(args) => get::run(args, &env).await,
        Command::Delete(args) => delete::run(args, &env).await,
        Command::Status(args) => status::run(args, &env).await,
        Command::Token(args) => token::run(args, &env).await,
        Command::Svid(args) => svid::run(args, &env).await,
        Command::Ca(args) => ca::run(args, &env).await,
    };
    match outcome {
        Ok(()) => Ok(()),
        Err(failure) => {
            match &failure {
                Failure::Usage(message) => eprintln!("error: {message}"),
                Failure::Client(e) => eprint!("{}", describe(e, None)),
                Failure::Reported => {}
            }
            Err(exit_for(&failure).into())
        }
    }
}

/// Builds the client for a command's connection flags.
fn connect(
    flags: &context::ConnectionArgs,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<api::client::Client, Failure> {
    Ok(context::resolve(flags, env)?.client()?)
}

/// An error as lines for stderr: `error: [<label>: ]<what>` and, for a refusal, the field and
/// every validation error the server listed.
fn describe(e: &ClientError, label: Option<&str>) -> String {
    let prefix = label.map(|l| format!("{l}: ")).unwrap_or_default();
    match e.problem() {
        Some(problem) => describe_problem(problem, &prefix, None),
        None => format!("error: {prefix}{e}\n"),
    }
}

/// `documents`: how many documents the request had, when known; a single document's errors
/// need no position.
fn describe_problem(problem: &Problem, prefix: &str, documents: Option<usize>) -> String {
    let what = if problem.detail.is_empty() {
        &problem.title
    } else {
        &problem.detail
    };
    let mut out = format!(
        "error: {prefix}{what} ({} {})\n",
        problem.status,
        problem.slug()
    );
    if let Some(field) = &problem.field {
        out.push_str(&format!("  field: {field}\n"));
    }
    for error in &problem.errors {
        out.push_str("  ");
        if let Some(doc) = error.document
            && documents != Some(1)
        {
            // 1-based, as editors number things.
            out.push_str(&format!("document {}: ", doc + 1));
        }
        if !error.field.is_empty() {
            out.push_str(&format!("{}: ", error.field));
        }
        out.push_str(&error.message);
        out.push('\n');
    }
    if problem.status == 401 {
        out.push_str(
            "hint: give a valid token with --token, --token-file, $CAUSEWAY_TOKEN or \
             ~/.config/causeway/config.toml\n",
        );
    }
    out
}

/// `virtualservice.networking.istio.io`, `service.causeway.dev`: kubectl's `kind.group` form.
fn qualified(info: &KindInfo) -> String {
    format!("{}.{}", info.name.to_ascii_lowercase(), info.group)
}

/// `kind.group` for a wire `apiVersion` + `kind`, even for a kind this CLI does not know.
fn qualified_api(api_version: &str, kind: &str) -> String {
    match Kind::from_api(api_version, kind) {
        Some(known) => qualified(known.info()),
        None => {
            let group = api_version.split_once('/').map_or("", |(g, _)| g);
            if group.is_empty() {
                kind.to_ascii_lowercase()
            } else {
                format!("{}.{group}", kind.to_ascii_lowercase())
            }
        }
    }
}

/// The kind a user typed, or a usage error that lists the known ones.
fn lookup_kind(name: &str) -> Result<Kind, Failure> {
    Kind::lookup(name).ok_or_else(|| {
        let known: Vec<String> = Kind::all()
            .map(|info| match info.aliases.iter().find(|a| a.len() <= 3) {
                Some(short) => format!("{} ({short})", info.plural),
                None => info.plural.to_string(),
            })
            .collect();
        Failure::Usage(format!(
            "unknown kind {name:?}; known kinds: {}",
            known.join(", ")
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    use api::client::ProblemError;

    #[test]
    fn cli_exit_codes_tell_refusal_usage_and_unreachable_apart() {
        let http = ClientError::Http {
            status: 422,
            problem: Box::default(),
        };
        let connect = ClientError::Connect {
            server: "http://127.0.0.1:1".into(),
            reason: "refused".into(),
        };
        let timeout = ClientError::Timeout {
            server: "http://127.0.0.1:1".into(),
            seconds: 30,
        };
        let bad = ClientError::BadResponse {
            server: "s".into(),
            reason: "r".into(),
        };
        let invalid = ClientError::InvalidServer {
            server: "s".into(),
            reason: "r".into(),
        };
        let cases = [
            (Failure::Client(http), 1),
            (Failure::Client(bad), 1),
            (Failure::Reported, 1),
            (Failure::Usage("x".into()), 2),
            (Failure::Client(invalid), 2),
            (Failure::Client(connect), 3),
            (Failure::Client(timeout), 3),
        ];
        for (failure, code) in cases {
            assert_eq!(exit_for(&failure), Exit(code), "{failure:?}");
        }
        // main finds the code behind anyhow.
        let e: anyhow::Error = Exit::UNREACHABLE.into();
        assert_eq!(e.downcast_ref::<Exit>(), Some(&Exit(3)));
        assert!(EXIT_CODES.contains("3  cannot reach"));
    }

    #[test]
    fn cli_kind_lookup_errors_list_the_known_kinds() {
        assert_eq!(lookup_kind("vs").unwrap(), Kind::IstioVirtualService);
        assert_eq!(lookup_kind("Services").unwrap(), Kind::Service);
        let Err(Failure::Usage(message)) = lookup_kind("pods") else {
            panic!("pods accepted");
        };
        assert!(message.contains("\"pods\""), "{message}");
        for known in [
            "clusters",
            "services (svc)",
            "virtualservices (vs)",
            "destinationrules (dr)",
        ] {
            assert!(message.contains(known), "{known} missing: {message}");
        }
    }

    #[test]
    fn cli_names_and_problems_read_like_kubectl() {
        assert_eq!(
            qualified_api("networking.istio.io/v1beta1", "VirtualService"),
            "virtualservice.networking.istio.io"
        );
        assert_eq!(
            qualified_api("causeway.dev/v1alpha1", "Route"),
            "route.causeway.dev"
        );
        assert_eq!(qualified_api("v1", "Pod"), "pod");

        let problem = Problem {
            problem_type: "https://causeway.dev/problems/invalid".into(),
            title: "Invalid".into(),
            status: 422,
            detail: "2 errors".into(),
            errors: vec![
                ProblemError {
                    document: Some(0),
                    field: "spec.hosts".into(),
                    message: "required".into(),
                },
                ProblemError {
                    document: Some(1),
                    field: String::new(),
                    message: "unknown kind".into(),
                },
            ],
            ..Problem::default()
        };
        assert_eq!(
            describe_problem(&problem, "vs.yaml: ", None),
            "error: vs.yaml: 2 errors (422 invalid)\n  document 1: spec.hosts: required\n  document 2: unknown kind\n"
        );
        assert!(describe_problem(&problem, "", Some(1)).contains("\n  spec.hosts: required\n"));
    }
}
