//! `causeway delete KIND NAME` and `causeway delete -f FILE` (what the file's documents name).

use std::path::PathBuf;

use federation::resource::{DEFAULT_NAMESPACE, Scope};

use super::context::{self, ConnectionArgs};
use super::files::{self, Target};
use super::{Failure, Outcome, describe, lookup_kind, qualified};

#[derive(Debug, clap::Args)]
pub struct DeleteArgs {
    /// The kind: plural, singular or short name.
    #[arg(required_unless_present = "files", conflicts_with = "files")]
    pub kind: Option<String>,
    /// The resource's name.
    #[arg(required_unless_present = "files", conflicts_with = "files")]
    pub name: Option<String>,
    /// The resource's namespace (required for namespaced kinds named on the command line; a
    /// file's documents without one are in the config file's `namespace`, else `default`, as
    /// apply put them).
    #[arg(short, long)]
    pub namespace: Option<String>,
    /// The cluster of a Service or ServiceExport (needed when several clusters have one).
    #[arg(long)]
    pub cluster: Option<String>,
    /// Delete what these files describe (as for apply: FILE, DIR or -). Repeatable.
    #[arg(short = 'f', long = "filename", value_name = "FILE|DIR|-")]
    pub files: Vec<PathBuf>,
    /// Succeed when the resource does not exist.
    #[arg(long)]
    pub ignore_not_found: bool,
    #[command(flatten)]
    pub connection: ConnectionArgs,
}

pub async fn run(args: DeleteArgs, env: &dyn Fn(&str) -> Option<String>) -> Outcome {
    let context = context::resolve(&args.connection, env)?;
    let namespace = context
        .namespace
        .as_ref()
        .map_or(DEFAULT_NAMESPACE, |(ns, _)| ns.as_str());
    let targets = targets(&args, namespace)?;
    let client = context.client()?;
    let mut refused = false;
    for target in &targets {
        let info = target.kind.info();
        let shown = format!("{}/{}", qualified(info), target.name);
        let deleted = client
            .delete(
                info.plural,
                target.namespace.as_deref(),
                &target.name,
                target.cluster.as_deref(),
                None,
            )
            .await;
        match deleted {
            Ok(_) => println!("{shown} deleted"),
            Err(e) if e.is_unreachable() => return Err(Failure::Client(e)),
            Err(e) if args.ignore_not_found && e.problem().is_some_and(|p| p.status == 404) => {}
            Err(e) => {
                refused = true;
                eprint!("{}", describe(&e, Some(&shown)));
            }
        }
    }
    if refused {
        Err(Failure::Reported)
    } else {
        Ok(())
    }
}

/// What to delete, checked before the first request. `namespace` is where documents without
/// one are.
fn targets(args: &DeleteArgs, namespace: &str) -> Result<Vec<Target>, Failure> {
    if !args.files.is_empty() {
        if args.namespace.is_some() || args.cluster.is_some() {
            return Err(Failure::Usage(
                "with -f the files name namespaces and clusters; drop -n and --cluster".into(),
            ));
        }
        let mut targets = Vec::new();
        for input in files::read_all(&args.files).map_err(Failure::Usage)? {
            let documents = files::documents(&input).map_err(Failure::Usage)?;
            for (i, doc) in documents.iter().enumerate() {
                let target = files::target(doc, namespace).map_err(|e| {
                    Failure::Usage(format!("{}: document {}: {e}", input.label, i + 1))
                })?;
                targets.push(target);
            }
        }
        return Ok(targets);
    }
    let (Some(kind), Some(name)) = (&args.kind, &args.name) else {
        return Err(Failure::Usage("give KIND NAME or -f FILE".into()));
    };
    let kind = lookup_kind(kind)?;
    let plural = kind.info().plural;
    match (kind.scope(), &args.namespace) {
        (Scope::Mesh, Some(_)) => {
            return Err(Failure::Usage(format!(
                "{plural} are not namespaced; drop -n"
            )));
        }
        (Scope::Namespaced | Scope::ClusterLocal, None) => {
            return Err(Failure::Usage(format!(
                "{plural} are namespaced: give the namespace with -n NAMESPACE (only apply fills in a default namespace)"
            )));
        }
        _ => {}
    }
    if kind.scope() != Scope::ClusterLocal && args.cluster.is_some() {
        return Err(Failure::Usage(format!(
            "{plural} do not belong to one cluster; --cluster applies to services and serviceexports"
        )));
    }
    Ok(vec![Target {
        kind,
        name: name.clone(),
        namespace: args.namespace.clone(),
        cluster: args.cluster.clone(),
    }])
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use federation::resource::Kind;

    use super::*;

    #[derive(Parser)]
    struct Harness {
        #[command(flatten)]
        args: DeleteArgs,
    }

    fn parse(argv: &[&str]) -> Result<Vec<Target>, String> {
        let harness =
            Harness::try_parse_from(std::iter::once("delete").chain(argv.iter().copied()))
                .map_err(|e| e.kind().to_string())?;
        targets(&harness.args, "default").map_err(|f| match f {
            Failure::Usage(m) => m,
            other => format!("{other:?}"),
        })
    }

    #[test]
    fn cli_delete_needs_a_namespace_for_namespaced_kinds() {
        let t = parse(&["vs", "api", "-n", "production"]).unwrap();
        assert_eq!(
            (t[0].kind, t[0].namespace.as_deref()),
            (Kind::IstioVirtualService, Some("production"))
        );
        assert!(parse(&["vs", "api"]).unwrap_err().contains("-n NAMESPACE"));
        assert!(
            parse(&["cluster", "east", "-n", "x"])
                .unwrap_err()
                .contains("not namespaced")
        );
        assert!(
            parse(&["routes", "r", "-n", "x", "--cluster", "east"])
                .unwrap_err()
                .contains("--cluster")
        );
        let t = parse(&["svc", "web", "-n", "shop", "--cluster", "east"]).unwrap();
        assert_eq!(t[0].cluster.as_deref(), Some("east"));
        assert!(
            parse(&["pods", "x", "-n", "y"])
                .unwrap_err()
                .contains("unknown kind")
        );
        // clap: a name is required, and KIND NAME and -f exclude each other.
        assert!(parse(&["vs"]).is_err());
        assert!(parse(&["vs", "api", "-f", "x.yaml"]).is_err());
    }

    #[test]
    fn cli_delete_reads_targets_from_files() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("r.yaml");
        std::fs::write(
            &file,
            "apiVersion: causeway.dev/v1alpha1\nkind: Route\nmetadata: {name: a, namespace: prod}\n---\n\
             apiVersion: causeway.dev/v1alpha1\nkind: Route\nmetadata: {name: b}\n",
        )
        .unwrap();
        let targets = parse(&["-f", file.to_str().unwrap()]).unwrap();
        let namespaces: Vec<_> = targets.iter().map(|t| t.namespace.as_deref()).collect();
        // As apply put it: a document without a namespace is in the default one.
        assert_eq!(namespaces, [Some("prod"), Some("default")]);
    }
}
