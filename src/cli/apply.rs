//! `causeway apply -f FILE|DIR|-`: one request per file, so each file applies all or nothing
//! and every error and warning names its file.
//!
//! ```text
//! stdout  virtualservice.networking.istio.io/api-traffic-split created
//! stderr  Warning: vs.yaml: spec.http[0].retries: accepted, not enforced yet
//! ```

use std::path::PathBuf;

use api::client::{ApplyAction, ApplyNamespace, ApplyResponse, ApplyResult, ClientError};

use super::context::{self, ConnectionArgs};
use super::files::{self, Input};
use super::{Failure, Outcome, describe, describe_problem, qualified_api};

#[derive(Debug, clap::Args)]
pub struct ApplyArgs {
    /// A file, a directory (its *.yaml, *.yml and *.json files in name order, not
    /// subdirectories) or `-` for standard input. Repeatable.
    #[arg(
        short = 'f',
        long = "filename",
        value_name = "FILE|DIR|-",
        required = true
    )]
    pub files: Vec<PathBuf>,
    /// Validate and say what would change, without changing anything.
    #[arg(long)]
    pub dry_run: bool,
    /// The namespace of documents that name none; a document naming another is refused
    /// [default: `namespace` in the config file, then `default`].
    #[arg(short = 'n', long, value_name = "NAMESPACE")]
    pub namespace: Option<String>,
    #[command(flatten)]
    pub connection: ConnectionArgs,
}

pub async fn run(args: ApplyArgs, env: &dyn Fn(&str) -> Option<String>) -> Outcome {
    // Every file is read before the first request, so a typo in the last path writes nothing.
    let inputs = files::read_all(&args.files).map_err(Failure::Usage)?;
    let context = context::resolve(&args.connection, env)?;
    let client = context.client()?;
    let namespace = target_namespace(args.namespace.as_deref(), &context);
    let mut refused = false;
    for input in &inputs {
        let documents = files::documents(input).ok().map(|docs| docs.len());
        match client
            .apply_in(
                input.text.clone(),
                input.content_type,
                args.dry_run,
                namespace,
            )
            .await
        {
            Ok(response) => {
                print!("{}", applied_lines(&response));
                eprint!("{}", warning_lines(input, &response.results, documents));
            }
            // Later files would fail the same way; stop and say so once.
            Err(e) if e.is_unreachable() => return Err(Failure::Client(e)),
            Err(e) => {
                refused = true;
                eprint!("{}", refusal(input, &e, documents));
            }
        }
    }
    if refused {
        Err(Failure::Reported)
    } else {
        Ok(())
    }
}

/// kubectl's order: `-n`, then the context's namespace, then the server's `default`.
fn target_namespace<'a>(
    flag: Option<&'a str>,
    context: &'a context::Context,
) -> ApplyNamespace<'a> {
    match (flag, &context.namespace) {
        (Some(ns), _) => ApplyNamespace::Request(ns),
        (None, Some((ns, _))) => ApplyNamespace::Context(ns),
        (None, None) => ApplyNamespace::Server,
    }
}

/// One line per document: `kind.group/name action`.
fn applied_lines(response: &ApplyResponse) -> String {
    let suffix = if response.dry_run { " (dry run)" } else { "" };
    response
        .results
        .iter()
        .map(|r| format!("{} {}{suffix}\n", resource_name(r), r.action))
        .collect()
}

fn resource_name(result: &ApplyResult) -> String {
    format!(
        "{}/{}",
        qualified_api(&result.api_version, &result.kind),
        result.name
    )
}

/// `Warning: <file>: <field>: <message>`, naming the resource when the file has several.
fn warning_lines(input: &Input, results: &[ApplyResult], documents: Option<usize>) -> String {
    let mut out = String::new();
    for result in results {
        for warning in &result.warnings {
            out.push_str(&format!("Warning: {}: {warning}", input.label));
            if documents != Some(1) {
                out.push_str(&format!(" (in {})", resource_name(result)));
            }
            out.push('\n');
        }
    }
    out
}

/// Why a file was refused, with each conflicting document.
fn refusal(input: &Input, e: &ClientError, documents: Option<usize>) -> String {
    let prefix = format!("{}: ", input.label);
    let Some(problem) = e.problem() else {
        return describe(e, Some(&input.label));
    };
    let mut out = describe_problem(problem, &prefix, documents);
    for result in &problem.results {
        if result.action == ApplyAction::Conflict {
            out.push_str(&format!(
                "  {}: changed since it was read (conflict)\n",
                resource_name(result)
            ));
        }
    }
    if problem.status == 409 || problem.status == 422 {
        out.push_str(&format!("  nothing in {} was applied\n", input.label));
    }
    out
}

#[cfg(test)]
mod tests {
    use api::client::Problem;
    use federation::resource::FieldError;

    use super::*;

    fn result(kind: &str, api: &str, name: &str, action: ApplyAction) -> ApplyResult {
        ApplyResult {
            document: 0,
            kind: kind.into(),
            api_version: api.into(),
            name: name.into(),
            namespace: Some("production".into()),
            cluster: None,
            action,
            resource_version: Some("4".into()),
            warnings: vec![],
        }
    }

    fn input() -> Input {
        Input {
            label: "vs.yaml".into(),
            text: String::new(),
            content_type: files::YAML,
        }
    }

    #[test]
    fn cli_apply_prints_one_line_per_document_and_warnings_per_file() {
        let mut vs = result(
            "VirtualService",
            "networking.istio.io/v1",
            "api-traffic-split",
            ApplyAction::Created,
        );
        vs.warnings.push(FieldError {
            field: "spec.http[0].retries".into(),
            message: "not enforced yet".into(),
        });
        let route = result(
            "Route",
            "causeway.dev/v1alpha1",
            "r",
            ApplyAction::Unchanged,
        );
        let response = ApplyResponse {
            dry_run: false,
            results: vec![vs.clone(), route.clone()],
        };
        assert_eq!(
            applied_lines(&response),
            "virtualservice.networking.istio.io/api-traffic-split created\nroute.causeway.dev/r unchanged\n"
        );
        let dry = ApplyResponse {
            dry_run: true,
            results: vec![route],
        };
        assert_eq!(
            applied_lines(&dry),
            "route.causeway.dev/r unchanged (dry run)\n"
        );

        assert_eq!(
            warning_lines(&input(), std::slice::from_ref(&vs), Some(1)),
            "Warning: vs.yaml: spec.http[0].retries: not enforced yet\n"
        );
        assert_eq!(
            warning_lines(&input(), &[vs], Some(2)),
            "Warning: vs.yaml: spec.http[0].retries: not enforced yet (in virtualservice.networking.istio.io/api-traffic-split)\n"
        );
    }

    #[test]
    fn cli_apply_namespace_is_flag_then_context_then_server() {
        let mut ctx = context::resolve(
            &ConnectionArgs {
                server: Some("http://127.0.0.1:1".into()),
                ..ConnectionArgs::default()
            },
            &|_| None,
        )
        .unwrap();
        assert_eq!(target_namespace(None, &ctx), ApplyNamespace::Server);
        ctx.namespace = Some(("shop".into(), context::Source::Default));
        assert_eq!(
            target_namespace(None, &ctx),
            ApplyNamespace::Context("shop")
        );
        assert_eq!(
            target_namespace(Some("prod"), &ctx),
            ApplyNamespace::Request("prod")
        );
    }

    #[test]
    fn cli_apply_conflicts_name_the_documents() {
        let problem = Problem {
            problem_type: "https://causeway.dev/problems/conflict".into(),
            title: "Conflict".into(),
            status: 409,
            detail: "1 of 2 documents changed since it was read".into(),
            results: vec![
                result("Route", "causeway.dev/v1alpha1", "a", ApplyAction::Updated),
                result("Route", "causeway.dev/v1alpha1", "b", ApplyAction::Conflict),
            ],
            ..Problem::default()
        };
        let e = ClientError::Http {
            status: 409,
            problem: Box::new(problem),
        };
        assert_eq!(
            refusal(&input(), &e, Some(2)),
            "error: vs.yaml: 1 of 2 documents changed since it was read (409 conflict)\n  \
             route.causeway.dev/b: changed since it was read (conflict)\n  \
             nothing in vs.yaml was applied\n"
        );
    }
}
