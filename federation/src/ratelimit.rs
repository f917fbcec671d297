//! `RateLimitPolicy` (native), compiled: a token bucket per service, optionally one per
//! distinct value of its descriptors, held per gateway (`local`) or by all gateways together
//! (`mesh`, the gateways sharing the rate by observed demand).
//!
//! ```yaml
//! spec:
//!   targetRef: {service: api}          # a service of the policy's namespace, or name.ns
//!   requestsPerSecond: 100
//!   burst: 20                          # bucket size; default requestsPerSecond
//!   scope: mesh                        # local (default) or mesh
//!   descriptors: [principal, "header:x-api-key", path, sourceCluster, remoteAddress]
//! ```

use serde_json::Value;

use crate::model::ServiceKey;
use crate::resource::Resource;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Each gateway lets `requestsPerSecond` through for its own clients.
    Local,
    /// All gateways together let `requestsPerSecond` through.
    Mesh,
}

/// What a bucket is keyed by, besides the policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Descriptor {
    /// A request header's value (lowercase name); a request without it shares one bucket.
    Header(String),
    /// The request path, query dropped.
    Path,
    /// The caller's workload principal (`-` for an anonymous caller).
    Principal,
    /// The calling cluster.
    SourceCluster,
    /// The client's IP address, as the gateway it called sees it.
    RemoteAddress,
}

impl Descriptor {
    /// Reads one entry of `descriptors`, or why it is none.
    pub fn parse(s: &str) -> Result<Descriptor, String> {
        match s {
            "path" => Ok(Descriptor::Path),
            "principal" => Ok(Descriptor::Principal),
            "sourceCluster" => Ok(Descriptor::SourceCluster),
            "remoteAddress" => Ok(Descriptor::RemoteAddress),
            _ => match s.strip_prefix("header:") {
                Some(name) if !name.is_empty() && http_name_ok(name) => {
                    Ok(Descriptor::Header(name.to_ascii_lowercase()))
                }
                _ => Err(format!(
                    "{s:?} is not a descriptor: path, principal, sourceCluster, remoteAddress or header:<name>"
                )),
            },
        }
    }
}

/// An HTTP header name: RFC 9110 token characters.
fn http_name_ok(name: &str) -> bool {
    name.len() <= 256
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// One compiled `RateLimitPolicy`.
#[derive(Debug, Clone, PartialEq)]
pub struct RateLimit {
    /// `namespace/name`: names the policy's buckets at every gateway alike.
    pub name: String,
    pub service: ServiceKey,
    pub scope: Scope,
    pub requests_per_second: u32,
    pub burst: u32,
    pub descriptors: Vec<Descriptor>,
}

impl RateLimit {
    pub fn compile(resource: &Resource) -> Result<RateLimit, String> {
        let spec = &resource.spec;
        let ns = resource.metadata.namespace.as_deref().unwrap_or("default");
        let service = spec
            .pointer("/targetRef/service")
            .and_then(Value::as_str)
            .and_then(|s| crate::mesh::resolve_host(s, ns))
            .ok_or("spec.targetRef.service: not a service name")?;
        let requests_per_second = spec
            .get("requestsPerSecond")
            .and_then(Value::as_u64)
            .and_then(|n| u32::try_from(n).ok())
            .filter(|n| *n > 0)
            .ok_or("spec.requestsPerSecond: a whole number of at least 1")?;
        let burst = match spec.get("burst").and_then(Value::as_u64) {
            Some(b) => u32::try_from(b).map_err(|_| "spec.burst: too large")?,
            None => requests_per_second,
        };
        let scope = match spec.get("scope").and_then(Value::as_str) {
            None | Some("local") => Scope::Local,
            Some("mesh") => Scope::Mesh,
            Some(other) => return Err(format!("spec.scope: {other:?} is not local or mesh")),
        };
        let descriptors = spec
            .get("descriptors")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .enumerate()
            .map(|(i, d)| {
                d.as_str()
                    .ok_or_else(|| format!("spec.descriptors[{i}]: expected a string"))
                    .and_then(|s| {
                        Descriptor::parse(s).map_err(|e| format!("spec.descriptors[{i}]: {e}"))
                    })
            })
            .collect::<Result<_, _>>()?;
        Ok(RateLimit {
            name: format!("{ns}/{}", resource.metadata.name),
            service,
            scope,
            requests_per_second,
            burst: burst.max(1),
            descriptors,
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn compile(spec: Value) -> Result<RateLimit, String> {
        let r: Resource = serde_json::from_value(json!({
            "apiVersion": "causeway.dev/v1alpha1", "kind": "RateLimitPolicy",
            "metadata": {"name": "limits", "namespace": "shop"}, "spec": spec,
        }))
        .map_err(|e| e.to_string())?;
        RateLimit::compile(&r)
    }

    #[test]
    fn policies_compile_with_defaults_and_descriptors() {
        let p = compile(json!({"targetRef": {"service": "api"}, "requestsPerSecond": 50})).unwrap();
        assert_eq!(p.service.to_string(), "api.shop");
        assert_eq!((p.scope, p.burst), (Scope::Local, 50));
        let p = compile(
            json!({"targetRef": {"service": "api.other"}, "requestsPerSecond": 5,
            "burst": 0, "scope": "mesh", "descriptors": ["principal", "header:X-Key", "path"]}),
        )
        .unwrap();
        assert_eq!(p.service.to_string(), "api.other");
        assert_eq!((p.scope, p.burst), (Scope::Mesh, 1));
        assert_eq!(
            p.descriptors,
            [
                Descriptor::Principal,
                Descriptor::Header("x-key".into()),
                Descriptor::Path
            ]
        );
        for (bad, why) in [
            ("header:", "is not a descriptor"),
            ("header:a b", "is not a descriptor"),
            ("cookie", "is not a descriptor"),
        ] {
            let err = compile(
                json!({"targetRef": {"service": "api"}, "requestsPerSecond": 1,
                "descriptors": [bad]}),
            )
            .unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
            assert!(err.starts_with("spec.descriptors[0]"), "{err}");
        }
    }
}
