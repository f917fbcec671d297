//! `causeway token create|list|revoke`: API tokens (admin).
//!
//! `create` prints only the token on stdout, so `T=$(causeway token create --join gateway)`
//! captures exactly the credential; what it is for goes to stderr.

use std::io::IsTerminal;
use std::time::SystemTime;

use api::client::TokenInfo;
use federation::mesh::Role;

use std::path::Path;

use super::context::{ConnectionArgs, resolve};
use super::get::to_json;
use super::table::{Table, age};
use super::{Failure, Outcome, connect};

#[derive(Debug, clap::Args)]
pub struct TokenArgs {
    #[command(subcommand)]
    pub command: TokenCommand,
    #[command(flatten)]
    pub connection: ConnectionArgs,
}

#[derive(Debug, clap::Subcommand)]
pub enum TokenCommand {
    /// Create a token and print it on stdout; it is shown this once.
    Create(CreateArgs),
    /// List tokens (ids and roles; never the secrets).
    List {
        /// Print the list as JSON instead of a table.
        #[arg(short, long, value_enum)]
        output: Option<ListOutput>,
    },
    /// Revoke a token; requests bearing it are refused from then on. The last admin token that
    /// never expires cannot be revoked (create another first).
    Revoke {
        /// The token's id (or the whole token).
        id: String,
    },
    /// Break glass: create an admin token without one, proving local access to a gateway's data
    /// directory. Run it on the gateway's machine as the user the gateway runs as (or root);
    /// --server must name that gateway's admin API. Single use, audited as recovery@<gateway>.
    #[command(
        after_help = "Example:\n  causeway token recover --data-dir /var/lib/causeway --server https://127.0.0.1:15000"
    )]
    Recover {
        /// The gateway's data directory (its `ca/ca.pem` verifies the server unless --ca-file
        /// is given).
        #[arg(long, value_name = "DIR")]
        data_dir: std::path::PathBuf,
    },
}

#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  causeway token create --role operator --description ci --ttl 720h\n  T=$(causeway token create --join gateway)"
)]
pub struct CreateArgs {
    /// What the token may do: viewer reads, operator also applies and deletes, admin also
    /// manages tokens and reads the audit log.
    #[arg(
        long,
        value_enum,
        required_unless_present = "join",
        conflicts_with = "join"
    )]
    pub role: Option<RoleArg>,
    /// A single-use token that lets one gateway join the mesh (valid 1h unless --ttl, 24h at
    /// most).
    #[arg(long, value_enum, value_name = "WHAT")]
    pub join: Option<JoinArg>,
    /// Who or what the token is for; shown in `token list` and the audit log.
    #[arg(long)]
    pub description: Option<String>,
    /// How long the token is valid: 1 to 999999 and s, m, h or d, e.g. 30m, 24h, 30d [default:
    /// forever; join tokens 1h, at most 24h].
    #[arg(long, value_parser = parse_ttl)]
    pub ttl: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RoleArg {
    Viewer,
    Operator,
    Admin,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum JoinArg {
    Gateway,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ListOutput {
    Json,
}

/// Checks a TTL here by the server's own rule, so a typo is a usage error; the server gets the
/// text as typed.
fn parse_ttl(s: &str) -> Result<String, String> {
    match api::rest::ttl_duration(s) {
        Some(_) => Ok(s.to_string()),
        None => Err("a number from 1 to 999999 and a unit s, m, h or d (e.g. 30m, 24h, 7d)".into()),
    }
}

fn role(args: &CreateArgs) -> Role {
    match (args.join, args.role) {
        (Some(JoinArg::Gateway), _) => Role::Join,
        (None, Some(RoleArg::Admin)) => Role::Admin,
        (None, Some(RoleArg::Operator)) => Role::Operator,
        // clap requires one of --role and --join; viewer is the least a token can do.
        (None, Some(RoleArg::Viewer) | None) => Role::Viewer,
    }
}

pub async fn run(args: TokenArgs, env: &dyn Fn(&str) -> Option<String>) -> Outcome {
    if let TokenCommand::Recover { data_dir } = &args.command {
        return recover(data_dir, &args.connection, env).await;
    }
    let client = connect(&args.connection, env)?;
    match args.command {
        TokenCommand::Create(create) => {
            let created = client
                .create_token(
                    role(&create),
                    create.description.as_deref(),
                    create.ttl.as_deref(),
                )
                .await?;
            println!("{}", created.token);
            if std::io::stderr().is_terminal() {
                let expires = created.expires_at.as_deref().unwrap_or("never");
                eprintln!(
                    "token {} ({}), expires {expires}: keep it now, it cannot be shown again",
                    created.id,
                    role_name(created.role)
                );
            }
        }
        TokenCommand::List { output } => {
            let tokens = client.list_tokens().await?;
            match output {
                Some(ListOutput::Json) => {
                    let value = serde_json::to_value(&tokens)
                        .map_err(|e| Failure::Usage(format!("cannot print tokens: {e}")))?;
                    println!("{}", to_json(&value));
                }
                None => print!("{}", table(&tokens, SystemTime::now()).render()),
            }
        }
        TokenCommand::Revoke { id } => {
            let id = token_id(&id);
            client.revoke_token(id).await?;
            println!("token {id} revoked");
        }
        TokenCommand::Recover { .. } => unreachable!("handled above"),
    }
    Ok(())
}

/// `token recover`: leaves a one-time request in the data directory, then asks the gateway to
/// honour it (see `api::rest::recover`). Prints the new admin token on stdout.
async fn recover(
    data_dir: &Path,
    connection: &ConnectionArgs,
    env: &dyn Fn(&str) -> Option<String>,
) -> Outcome {
    use api::rest::recover::write_request;

    if !data_dir.join("ca").join("ca.pem").is_file() {
        return Err(Failure::Usage(format!(
            "{} is not a gateway's data directory (it has no ca/ca.pem)",
            data_dir.display()
        )));
    }
    let mut context = resolve(connection, env)?;
    if context.ca_pem.is_none() {
        let ca = data_dir.join("ca").join("ca.pem");
        context.ca_pem = Some(
            std::fs::read(&ca)
                .map_err(|e| Failure::Usage(format!("cannot read {}: {e}", ca.display())))?,
        );
    }
    // The request alone proves local access; no bearer token goes with it.
    context.token = None;
    context.token_source = None;
    let client = context.client()?;
    let (secret, _, _) = federation::mesh::token::generate();
    let request = write_request(data_dir, &secret).map_err(|e| {
        Failure::Usage(format!(
            "cannot write the recovery request into {}: {e} (run this as the gateway's user or \
             root)",
            data_dir.display()
        ))
    })?;
    let created = client.recover_token(&secret).await;
    // The gateway consumed a good request; any other outcome leaves nothing behind either.
    let _ = std::fs::remove_file(&request);
    let created = created?;
    println!("{}", created.token);
    if std::io::stderr().is_terminal() {
        eprintln!(
            "admin token {} created by recovery through {}: keep it now, it cannot be shown again",
            created.id, context.server
        );
    }
    Ok(())
}

/// The id part of a whole token (`cw_<id>_<secret>`), so pasting the token works too.
fn token_id(given: &str) -> &str {
    given
        .strip_prefix("cw_")
        .and_then(|rest| rest.split_once('_'))
        .map_or(given, |(id, _)| id)
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Viewer => "viewer",
        Role::Operator => "operator",
        Role::Admin => "admin",
        Role::Join => "join",
    }
}

fn table(tokens: &[TokenInfo], now: SystemTime) -> Table {
    let mut table = Table::new(["ID", "ROLE", "DESCRIPTION", "AGE", "EXPIRES", "STATE"]);
    for t in tokens {
        let expired = t
            .expires_at
            .as_deref()
            .and_then(|e| humantime::parse_rfc3339_weak(e).ok())
            .is_some_and(|at| at <= now);
        let state = if t.used {
            "used"
        } else if expired {
            "expired"
        } else {
            "active"
        };
        table.row(vec![
            t.id.clone(),
            role_name(t.role).to_string(),
            t.description.clone(),
            age(t.created_at.as_deref(), now),
            t.expires_at.clone().unwrap_or_else(|| "never".to_string()),
            state.to_string(),
        ]);
    }
    table
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Harness {
        #[command(flatten)]
        args: CreateArgs,
    }

    fn create(argv: &[&str]) -> Result<CreateArgs, clap::Error> {
        Harness::try_parse_from(std::iter::once("create").chain(argv.iter().copied()))
            .map(|h| h.args)
    }

    #[test]
    fn cli_token_create_takes_a_role_or_join_gateway() {
        assert_eq!(
            role(&create(&["--role", "operator"]).unwrap()),
            Role::Operator
        );
        let join = create(&["--join", "gateway", "--ttl", "2h"]).unwrap();
        assert_eq!((role(&join), join.ttl.as_deref()), (Role::Join, Some("2h")));
        // Usage errors exit 2 through clap.
        for bad in [
            &[][..],
            &["--role", "root"],
            &["--role", "admin", "--join", "gateway"],
            &["--join", "node"],
            &["--role", "viewer", "--ttl", "soon"],
            &["--role", "viewer", "--ttl", "0s"],
            &["--role", "viewer", "--ttl", "1h30m"],
        ] {
            let err = create(bad)
                .err()
                .unwrap_or_else(|| panic!("{bad:?} accepted"));
            assert_eq!(err.exit_code(), 2, "{bad:?}");
        }
    }

    #[test]
    fn cli_token_revoke_accepts_an_id_or_the_whole_token() {
        assert_eq!(token_id("0123456789ab"), "0123456789ab");
        assert_eq!(token_id("cw_0123456789ab_secretpart"), "0123456789ab");
    }

    #[test]
    fn cli_token_list_table() {
        let now = humantime::parse_rfc3339("2025-03-01T12:00:00Z").unwrap();
        let tokens = vec![
            TokenInfo {
                id: "0123456789ab".into(),
                role: Role::Admin,
                description: "bootstrap".into(),
                created_at: Some("2025-03-01T10:00:00Z".into()),
                expires_at: None,
                single_use: false,
                used: false,
            },
            TokenInfo {
                id: "ba9876543210".into(),
                role: Role::Join,
                description: String::new(),
                created_at: Some("2025-03-01T10:00:00Z".into()),
                expires_at: Some("2025-03-01T11:00:00Z".into()),
                single_use: true,
                used: false,
            },
        ];
        assert_eq!(
            table(&tokens, now).render(),
            "ID             ROLE    DESCRIPTION   AGE    EXPIRES                STATE\n\
             0123456789ab   admin   bootstrap     120m   never                  active\n\
             ba9876543210   join    <none>        120m   2025-03-01T11:00:00Z   expired\n"
        );
    }
}
