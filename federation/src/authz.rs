//! Istio's `AuthorizationPolicy`, compiled and evaluated: a sans-IO decision over one request.
//!
//! Evaluation follows Istio's documented order for the policies that apply to a workload:
//! a DENY policy that matches denies; otherwise, with no ALLOW policy the request is allowed;
//! otherwise it is allowed only if an ALLOW policy matches. AUDIT policies never change the
//! decision; the ones that match are reported so the caller can log them. CUSTOM (an external
//! authorizer) is refused at compile time with a reason.
//!
//! A policy matches if any of its rules does; a rule with no `from`, `to` and `when` matches
//! everything, a policy with no rules matches nothing (so `spec: {}`, an ALLOW policy without
//! rules, denies everything). Within a rule every present part must hold: some `from.source`,
//! some `to.operation`, every `when` condition; within a source or operation every present
//! field must hold (`principals` any of, `notPrincipals` none of, and so on).
//!
//! Strings match as Istio matches them: exact, `prefix*`, `*suffix`, and `*` for any non-empty
//! value. Hosts compare without case. Paths are normalized first (dot segments removed, the
//! query dropped), as Envoy does with Istio's default `BASE` normalization, so `/api/../admin`
//! is `/admin`. Principals are Istio's `<trust domain>/ns/<ns>/sa/<sa>`; `cluster.local` stands
//! for any of the trust domains the caller says are local (aliases), and a `spiffe://` prefix
//! in a policy is read away. For TCP traffic (no HTTP request), HTTP-only fields (`hosts`,
//! `methods`, `paths`, request headers) make an ALLOW rule match nothing and are left out of a
//! DENY rule, which so denies more: Istio's rule, so that a TCP workload never gets more access
//! than the policy meant.

use std::net::IpAddr;

use serde_json::Value;

use crate::resource::Resource;

/// What a policy does when it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Allow,
    Deny,
    Audit,
}

/// One compiled `AuthorizationPolicy`.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// `namespace/name`, for logs and metrics.
    pub name: String,
    pub action: Action,
    /// `selector.matchLabels`: the workloads it applies to (all of its namespace when empty).
    pub selector: Vec<(String, String)>,
    pub rules: Vec<Rule>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Rule {
    /// Any of them must hold; none given: no condition.
    pub from: Vec<Source>,
    pub to: Vec<Operation>,
    /// Every one must hold.
    pub when: Vec<Condition>,
}

/// A field's values and its `not` values: some of `values` (when given) and none of `not`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Field {
    pub values: Option<Vec<String>>,
    pub not: Option<Vec<String>>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Source {
    pub principals: Field,
    /// `requestPrincipals`: JWT issuers/subjects. Causeway verifies no JWT, so a request never
    /// has one: Istio's reading of a request without a token.
    pub request_principals: Field,
    pub namespaces: Field,
    /// `serviceAccounts` (`ns/sa`), Istio's newer spelling of a principal in this mesh.
    pub service_accounts: Field,
    /// The calling cluster (native `AuthorizationPolicy` only: `from.clusters`).
    pub clusters: Field,
    pub ip_blocks: Field,
    pub remote_ip_blocks: Field,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Operation {
    pub hosts: Field,
    pub ports: Field,
    pub methods: Field,
    pub paths: Field,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    pub key: String,
    pub field: Field,
}

/// The request as the destination gateway sees it. `http` is none for TCP traffic.
#[derive(Debug, Clone, Default)]
pub struct Request<'a> {
    /// The caller's SPIFFE ID (`spiffe://td/ns/x/sa/y`), when it was authenticated.
    pub principal: Option<&'a str>,
    pub source_ip: Option<IpAddr>,
    /// The original client (`X-Forwarded-For`'s first address), if different.
    pub remote_ip: Option<IpAddr>,
    pub destination_ip: Option<IpAddr>,
    /// The calling cluster.
    pub source_cluster: Option<&'a str>,
    pub port: u16,
    pub http: Option<Http<'a>>,
}

#[derive(Debug, Clone, Default)]
pub struct Http<'a> {
    pub host: &'a str,
    pub method: &'a str,
    /// As received, query included; normalized before matching.
    pub path: &'a str,
    /// Lowercase names.
    pub headers: Vec<(&'a str, &'a str)>,
}

/// What [`decide`] concluded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// The policy that decided: the DENY or ALLOW that matched (none when no policy applied or
    /// no ALLOW matched).
    pub policy: Option<String>,
    /// AUDIT policies that matched.
    pub audited: Vec<String>,
}

impl Policy {
    /// Compiles a validated `AuthorizationPolicy`; refuses what cannot be enforced as written.
    pub fn compile(resource: &Resource) -> Result<Policy, String> {
        let spec = &resource.spec;
        let action = match spec
            .get("action")
            .and_then(Value::as_str)
            .unwrap_or("ALLOW")
        {
            "ALLOW" => Action::Allow,
            "DENY" => Action::Deny,
            "AUDIT" => Action::Audit,
            "CUSTOM" => {
                return Err(
                    "spec.action: CUSTOM needs an external authorizer, which Causeway \
                            does not call; use ALLOW or DENY"
                        .into(),
                );
            }
            other => {
                return Err(format!(
                    "spec.action: {other:?} is not ALLOW, DENY or AUDIT"
                ));
            }
        };
        // The native kind holds the source and the operation directly in `from` and `to`.
        let native = !resource.api_version.starts_with("security.istio.io/");
        let selector = spec
            .pointer("/selector/matchLabels")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
            .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
            .collect();
        let rules = items(spec.get("rules"))
            .iter()
            .map(|rule| Rule {
                from: items(rule.get("from"))
                    .iter()
                    .filter_map(|f| if native { Some(f) } else { f.get("source") })
                    .map(|s| Source {
                        principals: principals(s, "principals", "notPrincipals"),
                        request_principals: field(s, "requestPrincipals", "notRequestPrincipals"),
                        namespaces: field(s, "namespaces", "notNamespaces"),
                        service_accounts: field(s, "serviceAccounts", "notServiceAccounts"),
                        clusters: field(s, "clusters", "notClusters"),
                        ip_blocks: field(s, "ipBlocks", "notIpBlocks"),
                        remote_ip_blocks: field(s, "remoteIpBlocks", "notRemoteIpBlocks"),
                    })
                    .collect(),
                to: items(rule.get("to"))
                    .iter()
                    .filter_map(|t| if native { Some(t) } else { t.get("operation") })
                    .map(|o| Operation {
                        hosts: field(o, "hosts", "notHosts"),
                        ports: field(o, "ports", "notPorts"),
                        methods: field(o, "methods", "notMethods"),
                        paths: field(o, "paths", "notPaths"),
                    })
                    .collect(),
                when: items(rule.get("when"))
                    .iter()
                    .filter_map(|c| {
                        Some(Condition {
                            key: c.get("key")?.as_str()?.to_string(),
                            field: field(c, "values", "notValues"),
                        })
                    })
                    .collect(),
            })
            .collect();
        let meta = &resource.metadata;
        Ok(Policy {
            name: format!(
                "{}/{}",
                meta.namespace.as_deref().unwrap_or_default(),
                meta.name
            ),
            action,
            selector,
            rules,
        })
    }

    /// Whether the policy applies to a workload with these labels.
    pub fn selects(&self, labels: &[(&str, &str)]) -> bool {
        self.selector
            .iter()
            .all(|(k, v)| labels.iter().any(|(lk, lv)| lk == k && lv == v))
    }

    /// Whether the policy applies to an endpoint with these labels.
    pub fn applies_to(&self, labels: &crate::model::Labels) -> bool {
        self.selector
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v.as_str()))
    }

    fn matches(&self, req: &Request<'_>, local_domains: &[&str]) -> bool {
        let deny = self.action == Action::Deny;
        self.rules
            .iter()
            .any(|rule| rule.matches(req, local_domains, deny))
    }
}

impl Rule {
    /// `relaxed`: a DENY rule on TCP traffic, whose HTTP-only fields are left out.
    fn matches(&self, req: &Request<'_>, local_domains: &[&str], relaxed: bool) -> bool {
        let from = self.from.is_empty() || self.from.iter().any(|s| s.matches(req, local_domains));
        let to = self.to.is_empty() || self.to.iter().any(|o| o.matches(req, relaxed));
        let when = self
            .when
            .iter()
            .all(|c| c.matches(req, local_domains, relaxed));
        from && to && when
    }
}

impl Field {
    fn is_set(&self) -> bool {
        self.values.is_some() || self.not.is_some()
    }

    /// Some of `values` (when given) and none of `not` match, by `matches`; an absent value
    /// matches no pattern.
    fn holds(&self, value: Option<&str>, matches: impl Fn(&str, &str) -> bool) -> bool {
        let any =
            |patterns: &Vec<String>| value.is_some_and(|v| patterns.iter().any(|p| matches(p, v)));
        self.values.as_ref().is_none_or(any) && !self.not.as_ref().is_some_and(any)
    }
}

impl Source {
    fn matches(&self, req: &Request<'_>, local_domains: &[&str]) -> bool {
        let principal = req
            .principal
            .map(|p| p.strip_prefix("spiffe://").unwrap_or(p));
        let namespace = principal.and_then(namespace_of);
        // `ns/sa` of `td/ns/<ns>/sa/<sa>`.
        let account = principal
            .and_then(|p| p.split_once('/'))
            .and_then(|(_, path)| path.strip_prefix("ns/"))
            .map(|rest| rest.replacen("/sa/", "/", 1));
        self.principals
            .holds(principal, |p, v| principal_matches(p, v, local_domains))
            && self.request_principals.holds(None, string_matches)
            && self.namespaces.holds(namespace, string_matches)
            && self
                .service_accounts
                .holds(account.as_deref(), |p, v| p == v)
            && self.clusters.holds(req.source_cluster, string_matches)
            && ip_holds(&self.ip_blocks, req.source_ip)
            && ip_holds(&self.remote_ip_blocks, req.remote_ip.or(req.source_ip))
    }
}

impl Operation {
    fn matches(&self, req: &Request<'_>, relaxed: bool) -> bool {
        let port = req.port.to_string();
        let ports = self.ports.holds(Some(&port), |p, v| p == v);
        let Some(http) = &req.http else {
            // TCP: an HTTP-only field makes an ALLOW rule match nothing; a DENY rule ignores it.
            let http_only = self.hosts.is_set() || self.methods.is_set() || self.paths.is_set();
            return ports && (relaxed || !http_only);
        };
        let path = normalize_path(http.path);
        ports
            && self.hosts.holds(Some(http.host), |p, v| {
                string_matches(&p.to_ascii_lowercase(), &v.to_ascii_lowercase())
            })
            && self.methods.holds(Some(http.method), string_matches)
            && self.paths.holds(Some(&path), string_matches)
    }
}

impl Condition {
    fn matches(&self, req: &Request<'_>, local_domains: &[&str], relaxed: bool) -> bool {
        let key = self.key.as_str();
        if let Some(name) = key
            .strip_prefix("request.headers[")
            .and_then(|k| k.strip_suffix(']'))
        {
            let Some(http) = &req.http else {
                return relaxed;
            };
            let name = name.to_ascii_lowercase();
            let value = http
                .headers
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| *v);
            return self.field.holds(value, string_matches);
        }
        let principal = req
            .principal
            .map(|p| p.strip_prefix("spiffe://").unwrap_or(p));
        match key {
            "source.principal" => self
                .field
                .holds(principal, |p, v| principal_matches(p, v, local_domains)),
            "source.namespace" => self
                .field
                .holds(principal.and_then(namespace_of), string_matches),
            "source.ip" => ip_holds(&self.field, req.source_ip),
            // No JWT is ever verified: a request has no claims and no request principal.
            "request.auth.principal" | "request.auth.audiences" | "request.auth.presenter" => {
                self.field.holds(None, string_matches)
            }
            "remote.ip" => ip_holds(&self.field, req.remote_ip.or(req.source_ip)),
            "destination.ip" => ip_holds(&self.field, req.destination_ip),
            "destination.port" => self.field.holds(Some(&req.port.to_string()), |p, v| p == v),
            // Keys Causeway cannot read (JWT claims, SNI, Envoy filter state) never hold, so
            // an ALLOW with them grants nothing; validation warns about them at apply time.
            _ => false,
        }
    }
}

/// The decision for `req` over the policies that apply to its workload (already chosen by
/// namespace and [`Policy::selects`]). `local_domains` are the trust domains `cluster.local`
/// stands for.
pub fn decide(policies: &[&Policy], req: &Request<'_>, local_domains: &[&str]) -> Decision {
    let audited = policies
        .iter()
        .filter(|p| p.action == Action::Audit && p.matches(req, local_domains))
        .map(|p| p.name.clone())
        .collect();
    let decided = |allowed, policy: Option<&&Policy>| Decision {
        allowed,
        policy: policy.map(|p| p.name.clone()),
        audited,
    };
    let of = |action| policies.iter().filter(move |p| p.action == action);
    if let Some(deny) = of(Action::Deny).find(|p| p.matches(req, local_domains)) {
        return decided(false, Some(deny));
    }
    if of(Action::Allow).next().is_none() {
        return decided(true, None);
    }
    match of(Action::Allow).find(|p| p.matches(req, local_domains)) {
        Some(allow) => decided(true, Some(allow)),
        None => decided(false, None),
    }
}

/// Istio's string match: exact, `prefix*`, `*suffix`, or `*` for any non-empty value.
fn string_matches(pattern: &str, value: &str) -> bool {
    if pattern == "*" {
        return !value.is_empty();
    }
    if let Some(prefix) = pattern.strip_suffix('*') {
        return value.starts_with(prefix);
    }
    if let Some(suffix) = pattern.strip_prefix('*') {
        return value.ends_with(suffix);
    }
    pattern == value
}

/// A principal pattern against a caller's (both without `spiffe://`): `cluster.local` in the
/// pattern's trust domain stands for any of `local_domains`.
fn principal_matches(pattern: &str, principal: &str, local_domains: &[&str]) -> bool {
    let pattern = pattern.strip_prefix("spiffe://").unwrap_or(pattern);
    if string_matches(pattern, principal) {
        return true;
    }
    let (Some(rest), Some((domain, path))) = (
        pattern.strip_prefix("cluster.local/"),
        principal.split_once('/'),
    ) else {
        return false;
    };
    local_domains.contains(&domain) && string_matches(rest, path)
}

/// The namespace of `td/ns/<ns>/sa/<sa>`.
fn namespace_of(principal: &str) -> Option<&str> {
    let mut parts = principal.split('/');
    parts.next()?;
    (parts.next()? == "ns").then_some(())?;
    parts.next()
}

fn ip_holds(field: &Field, ip: Option<IpAddr>) -> bool {
    field.holds(ip.map(|ip| ip.to_string()).as_deref(), |block, value| {
        value.parse::<IpAddr>().is_ok_and(|ip| in_block(block, ip))
    })
}

/// Whether `ip` is in `block` (`10.0.0.0/8`, or one address).
fn in_block(block: &str, ip: IpAddr) -> bool {
    let (addr, bits) = match block.split_once('/') {
        Some((addr, bits)) => (addr, bits.parse::<u32>().ok()),
        None => (block, None),
    };
    match (addr.parse::<IpAddr>(), ip) {
        (Ok(IpAddr::V4(net)), IpAddr::V4(ip)) => {
            let bits = bits.unwrap_or(32).min(32);
            let mask = u32::MAX.checked_shl(32 - bits).unwrap_or(0);
            u32::from(net) & mask == u32::from(ip) & mask
        }
        (Ok(IpAddr::V6(net)), IpAddr::V6(ip)) => {
            let bits = bits.unwrap_or(128).min(128);
            let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
            u128::from(net) & mask == u128::from(ip) & mask
        }
        _ => false,
    }
}

/// The path as Envoy normalizes it before Istio's policy sees it: the query dropped and dot
/// segments removed (RFC 3986 5.2.4), never above the root.
pub fn normalize_path(path: &str) -> String {
    let path = path.split(['?', '#']).next().unwrap_or_default();
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    let last = segments.len().saturating_sub(1);
    for (i, segment) in segments.iter().enumerate() {
        match *segment {
            "." => {
                if i == last {
                    out.push("");
                }
            }
            ".." => {
                out.pop();
                if i == last {
                    out.push("");
                }
            }
            s => out.push(s),
        }
    }
    format!("/{}", out.join("/"))
}

fn items(value: Option<&Value>) -> &[Value] {
    value.and_then(Value::as_array).map_or(&[], Vec::as_slice)
}

/// A list of strings; numbers (the native kind's ports) read as their decimal text.
fn strings(value: Option<&Value>) -> Option<Vec<String>> {
    value.and_then(Value::as_array).map(|a| {
        a.iter()
            .filter_map(|v| match v {
                Value::String(s) => Some(s.clone()),
                Value::Number(n) => Some(n.to_string()),
                _ => None,
            })
            .collect()
    })
}

fn field(value: &Value, name: &str, not: &str) -> Field {
    Field {
        values: strings(value.get(name)),
        not: strings(value.get(not)),
    }
}

/// Principals with a `spiffe://` prefix read away, so that one never silently matches nothing.
fn principals(value: &Value, name: &str, not: &str) -> Field {
    let strip = |list: Option<Vec<String>>| {
        list.map(|l| {
            l.into_iter()
                .map(|p| {
                    p.strip_prefix("spiffe://")
                        .map_or(p.clone(), str::to_string)
                })
                .collect()
        })
    };
    Field {
        values: strip(strings(value.get(name))),
        not: strip(strings(value.get(not))),
    }
}

#[cfg(test)]
mod tests;
