//! `causeway get KIND [NAME]`: a kubectl-like table, or the resources as YAML/JSON.
//!
//! Causeway has no default namespace: without `-n` a namespaced kind is listed across all
//! namespaces (with a NAMESPACE column), and fetching one by name needs `-n`.

use std::time::SystemTime;

use federation::resource::{Kind, Scope};
use serde_json::Value;

use super::context::ConnectionArgs;
use super::table::{Table, age};
use super::{Failure, Outcome, connect, lookup_kind, qualified};

#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  causeway get vs -n production\n  causeway get services -A -o wide\n  causeway get cluster east -o yaml"
)]
pub struct GetArgs {
    /// The kind: plural, singular or short name (virtualservices, vs, services, svc, clusters…).
    pub kind: String,
    /// One resource's name; without it, every resource of the kind.
    pub name: Option<String>,
    /// Only this namespace [default: all namespaces].
    #[arg(short, long)]
    pub namespace: Option<String>,
    /// Every namespace (what happens without -n too).
    #[arg(short = 'A', long, conflicts_with = "namespace")]
    pub all_namespaces: bool,
    /// Only resources of this cluster (Service, ServiceExport).
    #[arg(long)]
    pub cluster: Option<String>,
    /// Label selector: `k=v`, `k!=v`, `k`, `!k`, comma-separated.
    #[arg(short = 'l', long, conflicts_with = "name")]
    pub selector: Option<String>,
    /// Output format [default: a table].
    #[arg(short, long, value_enum)]
    pub output: Option<Output>,
    #[command(flatten)]
    pub connection: ConnectionArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Yaml,
    Json,
    /// The table with kind-specific columns.
    Wide,
    /// `kind.group/name`, one per line.
    Name,
}

pub async fn run(args: GetArgs, env: &dyn Fn(&str) -> Option<String>) -> Outcome {
    let kind = lookup_kind(&args.kind)?;
    let info = kind.info();
    if kind.scope() == Scope::Mesh && args.namespace.is_some() {
        return Err(Failure::Usage(format!(
            "{} are not namespaced; drop -n",
            info.plural
        )));
    }
    if kind.scope() != Scope::ClusterLocal && args.cluster.is_some() {
        return Err(Failure::Usage(format!(
            "{} do not belong to one cluster; --cluster applies to services and serviceexports",
            info.plural
        )));
    }
    let namespace = args.namespace.as_deref();
    if args.name.is_some() && kind.scope() != Scope::Mesh && namespace.is_none() {
        return Err(Failure::Usage(format!(
            "{} are namespaced: give the namespace with -n NAMESPACE (Causeway has no default namespace)",
            info.plural
        )));
    }
    let client = connect(&args.connection, env)?;
    let cluster = args.cluster.as_deref();
    let (value, items) = match &args.name {
        Some(name) => {
            let value = client.get(info.plural, namespace, name, cluster).await?;
            (value.clone(), vec![value])
        }
        None => {
            let value = client
                .list(info.plural, namespace, args.selector.as_deref(), cluster)
                .await?;
            let items = match value.get("items") {
                Some(Value::Array(items)) => items.clone(),
                _ => {
                    return Err(Failure::Client(api::client::ClientError::BadResponse {
                        server: client.server().to_string(),
                        reason: "the list has no `items` array".to_string(),
                    }));
                }
            };
            (value, items)
        }
    };
    match args.output {
        Some(Output::Yaml) => print!("{}", to_yaml(&value)?),
        Some(Output::Json) => println!("{}", to_json(&value)),
        Some(Output::Name) => {
            for item in &items {
                println!("{}/{}", qualified(info), text(item, "/metadata/name"));
            }
        }
        None | Some(Output::Wide) => {
            if items.is_empty() {
                match namespace {
                    Some(ns) => eprintln!("No resources found in namespace {ns}."),
                    None => eprintln!("No resources found."),
                }
                return Ok(());
            }
            let columns = Columns {
                kind,
                namespace: namespace.is_none() && kind.scope() != Scope::Mesh,
                wide: args.output == Some(Output::Wide),
            };
            print!("{}", table(&columns, &items, SystemTime::now()).render());
        }
    }
    Ok(())
}

pub fn to_yaml(value: &Value) -> Result<String, Failure> {
    serde_yaml_ng::to_string(value)
        .map_err(|e| Failure::Usage(format!("cannot print the answer as YAML: {e}")))
}

pub fn to_json(value: &Value) -> String {
    // Serializing a `Value` to a string cannot fail; fall back to its compact form regardless.
    serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
}

/// Which columns a table has.
struct Columns {
    kind: Kind,
    /// Listing across namespaces.
    namespace: bool,
    wide: bool,
}

fn table(columns: &Columns, items: &[Value], now: SystemTime) -> Table {
    let cluster_local = columns.kind.scope() == Scope::ClusterLocal;
    let mut headers = Vec::new();
    if columns.namespace {
        headers.push("NAMESPACE");
    }
    headers.push("NAME");
    if cluster_local {
        headers.push("CLUSTER");
    }
    headers.push("AGE");
    if columns.wide {
        headers.extend(wide_headers(columns.kind));
    }
    let mut table = Table::new(headers);
    for item in items {
        let mut row = Vec::new();
        if columns.namespace {
            row.push(text(item, "/metadata/namespace"));
        }
        row.push(text(item, "/metadata/name"));
        if cluster_local {
            row.push(text(item, "/metadata/cluster"));
        }
        let created = item
            .pointer("/metadata/creationTimestamp")
            .and_then(Value::as_str);
        row.push(age(created, now));
        if columns.wide {
            row.extend(wide_cells(columns.kind, item));
        }
        table.row(row);
    }
    table
}

fn wide_headers(kind: Kind) -> &'static [&'static str] {
    match kind {
        Kind::Cluster => &["TRUST DOMAIN", "GATEWAYS", "LOCALITY"],
        Kind::Service => &["PORTS", "ENDPOINTS"],
        Kind::ServiceExport => &[],
        Kind::Route => &["HOSTS"],
        Kind::IstioVirtualService => &["HOSTS", "GATEWAYS"],
        Kind::DestinationPolicy | Kind::IstioDestinationRule => &["HOST", "SUBSETS"],
        Kind::AuthorizationPolicy | Kind::IstioAuthorizationPolicy => &["ACTION", "RULES"],
        Kind::PeerAuthentication | Kind::IstioPeerAuthentication => &["MODE"],
        Kind::RateLimitPolicy => &["SERVICE", "RPS", "BURST"],
        Kind::LinkerdServiceProfile => &["ROUTES", "RETRY RATIO"],
        Kind::SmiTrafficSplit => &["SERVICE", "BACKENDS"],
    }
}

fn wide_cells(kind: Kind, item: &Value) -> Vec<String> {
    let spec = item.get("spec").unwrap_or(&Value::Null);
    let field = |pointer: &str| text(spec, pointer);
    let list = |pointer: &str, inner: &str| -> String {
        let values: Vec<String> = spec
            .pointer(pointer)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|v| text(v, inner))
            .filter(|s| !s.is_empty())
            .collect();
        abbreviate(&values)
    };
    match kind {
        Kind::Cluster => {
            let locality = [field("/locality/region"), field("/locality/zone")]
                .into_iter()
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
                .join("/");
            vec![
                field("/trustDomain"),
                list("/gateways", "/tunnelAddress"),
                locality,
            ]
        }
        Kind::Service => {
            let ports: Vec<String> = spec
                .get("ports")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .map(|p| {
                    let port = text(p, "/port");
                    match p.get("protocol").and_then(Value::as_str) {
                        Some(protocol) => format!("{port}/{protocol}"),
                        None => port,
                    }
                })
                .collect();
            let endpoints: Vec<String> = spec
                .get("endpoints")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .map(endpoint)
                .collect();
            vec![ports.join(","), abbreviate(&endpoints)]
        }
        Kind::ServiceExport => vec![],
        Kind::Route => vec![list("/hosts", "")],
        Kind::IstioVirtualService => vec![list("/hosts", ""), list("/gateways", "")],
        Kind::DestinationPolicy | Kind::IstioDestinationRule => {
            vec![field("/host"), list("/subsets", "/name")]
        }
        Kind::AuthorizationPolicy | Kind::IstioAuthorizationPolicy => {
            let action = match field("/action") {
                // Both APIs default to ALLOW.
                a if a.is_empty() => "ALLOW".to_string(),
                a => a,
            };
            let rules = spec
                .get("rules")
                .and_then(Value::as_array)
                .map_or(0, Vec::len);
            vec![action, rules.to_string()]
        }
        Kind::PeerAuthentication | Kind::IstioPeerAuthentication => vec![field("/mtls/mode")],
        Kind::RateLimitPolicy => vec![
            field("/targetRef/service"),
            field("/requestsPerSecond"),
            field("/burst"),
        ],
        Kind::LinkerdServiceProfile => {
            let routes = spec
                .get("routes")
                .and_then(Value::as_array)
                .map_or(0, Vec::len);
            vec![routes.to_string(), field("/retryBudget/retryRatio")]
        }
        Kind::SmiTrafficSplit => {
            let backends: Vec<String> = spec
                .get("backends")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .map(|b| format!("{}={}", text(b, "/service"), text(b, "/weight")))
                .collect();
            vec![field("/service"), abbreviate(&backends)]
        }
    }
}

/// `ip:port`, with its labels when the endpoint has some: `10.0.0.2:80(version=v2)`.
fn endpoint(value: &Value) -> String {
    let labels: Vec<String> = value
        .get("labels")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
        .collect();
    match value.get("address") {
        Some(address) if labels.is_empty() => text(address, ""),
        Some(address) => format!("{}({})", text(address, ""), labels.join(",")),
        None => text(value, ""),
    }
}

/// The first three, then `+N more`, so one wide cell does not push the table off the screen.
fn abbreviate(values: &[String]) -> String {
    const SHOWN: usize = 3;
    if values.len() <= SHOWN {
        values.join(",")
    } else {
        format!(
            "{} + {} more...",
            values[..SHOWN].join(","),
            values.len() - SHOWN
        )
    }
}

/// A scalar at `pointer` as text ("" when absent); `pointer` "" is the value itself.
fn text(value: &Value, pointer: &str) -> String {
    match value.pointer(pointer) {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn now() -> SystemTime {
        humantime::parse_rfc3339("2025-03-01T12:00:00Z").unwrap()
    }

    #[test]
    fn cli_get_wide_shows_labelled_endpoints_profiles_and_splits() {
        let wide = |kind| Columns {
            kind,
            namespace: false,
            wide: true,
        };
        let service = json!({"metadata": {"name": "reviews", "cluster": "east"},
            "spec": {"ports": [{"port": 9080, "protocol": "http"}],
                     "endpoints": ["10.0.0.1:9080", {"address": "10.0.0.2:9080", "labels": {"version": "v2"}}]}});
        assert_eq!(
            table(&wide(Kind::Service), &[service], now()).render(),
            "NAME      CLUSTER   AGE         PORTS       ENDPOINTS\n\
             reviews   east      <unknown>   9080/http   10.0.0.1:9080,10.0.0.2:9080(version=v2)\n"
        );
        let profile = json!({"metadata": {"name": "web.shop.svc.cluster.local"},
            "spec": {"routes": [{"name": "a"}, {"name": "b"}], "retryBudget": {"retryRatio": 0.2}}});
        assert_eq!(
            table(&wide(Kind::LinkerdServiceProfile), &[profile], now()).render(),
            "NAME                         AGE         ROUTES   RETRY RATIO\n\
             web.shop.svc.cluster.local   <unknown>   2        0.2\n"
        );
        let split = json!({"metadata": {"name": "web"},
            "spec": {"service": "web", "backends": [{"service": "web-v1", "weight": "900m"}, {"service": "web-v2", "weight": 100}]}});
        assert_eq!(
            table(&wide(Kind::SmiTrafficSplit), &[split], now()).render(),
            "NAME   AGE         SERVICE   BACKENDS\n\
             web    <unknown>   web       web-v1=900m,web-v2=100\n"
        );
    }

    #[test]
    fn cli_get_table_has_namespace_cluster_and_wide_columns() {
        let items = vec![
            json!({"metadata": {"name": "web", "namespace": "shop", "cluster": "east",
                                "creationTimestamp": "2025-03-01T11:00:00Z"},
                   "spec": {"ports": [{"port": 80, "protocol": "http"}, {"port": 9000, "protocol": "tcp"}],
                            "endpoints": ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80", "10.0.0.4:80"]}}),
            json!({"metadata": {"name": "db", "namespace": "shop", "cluster": "west"}, "spec": {"ports": [{"port": 5432}]}}),
        ];
        let columns = Columns {
            kind: Kind::Service,
            namespace: true,
            wide: true,
        };
        assert_eq!(
            table(&columns, &items, now()).render(),
            "NAMESPACE   NAME   CLUSTER   AGE         PORTS              ENDPOINTS\n\
             shop        web    east      60m         80/http,9000/tcp   10.0.0.1:80,10.0.0.2:80,10.0.0.3:80 + 1 more...\n\
             shop        db     west      <unknown>   5432               <none>\n"
        );

        let vs = vec![
            json!({"metadata": {"name": "api", "namespace": "production",
                                          "creationTimestamp": "2025-03-01T11:59:00Z"},
                             "spec": {"hosts": ["api", "api.example.com"]}}),
        ];
        let narrow = Columns {
            kind: Kind::IstioVirtualService,
            namespace: false,
            wide: false,
        };
        assert_eq!(
            table(&narrow, &vs, now()).render(),
            "NAME   AGE\napi    60s\n"
        );
        let wide = Columns {
            wide: true,
            ..narrow
        };
        assert_eq!(
            table(&wide, &vs, now()).render(),
            "NAME   AGE   HOSTS                 GATEWAYS\napi    60s   api,api.example.com   <none>\n"
        );
    }

    #[test]
    fn cli_get_wide_cells_per_kind() {
        let cluster = json!({"spec": {"trustDomain": "east.local",
            "gateways": [{"name": "gw1", "tunnelAddress": "10.0.0.1:15443"}],
            "locality": {"region": "eu", "zone": "a"}}});
        assert_eq!(
            wide_cells(Kind::Cluster, &cluster),
            ["east.local", "10.0.0.1:15443", "eu/a"]
        );
        let dr = json!({"spec": {"host": "api", "subsets": [{"name": "v1"}, {"name": "v2"}]}});
        assert_eq!(
            wide_cells(Kind::IstioDestinationRule, &dr),
            ["api", "v1,v2"]
        );
        let authz = json!({"spec": {"rules": [{}, {}]}});
        assert_eq!(
            wide_cells(Kind::IstioAuthorizationPolicy, &authz),
            ["ALLOW", "2"]
        );
        let rl = json!({"spec": {"targetRef": {"service": "api"}, "requestsPerSecond": 100}});
        assert_eq!(wide_cells(Kind::RateLimitPolicy, &rl), ["api", "100", ""]);
        for info in Kind::all() {
            assert_eq!(
                wide_headers(info.kind).len(),
                wide_cells(info.kind, &json!({})).len(),
                "{}",
                info.plural
            );
        }
    }
}
