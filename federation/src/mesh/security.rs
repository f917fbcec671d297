//! Compiles the security kinds (AuthorizationPolicy and PeerAuthentication, Istio's and the
//! native twins) into the [`Security`] table the destination gateways enforce.
//!
//! Each stored resource is compiled once per stored version (recognised by pointer, as the
//! route tables are), and the table is rebuilt only after a write to one of these kinds.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::MeshState;
use super::StoredResource;
use super::compile::CacheMaps;
use crate::authz;
use crate::model::ServiceKey;
use crate::peer_authn::PeerAuthn;
use crate::ratelimit::RateLimit;
use crate::resource::{Kind, ResourceKey};

/// The kinds compiled here.
pub(crate) const KINDS: &[Kind] = &[
    Kind::IstioAuthorizationPolicy,
    Kind::AuthorizationPolicy,
    Kind::IstioPeerAuthentication,
    Kind::PeerAuthentication,
    Kind::RateLimitPolicy,
];

/// The mesh's security policy, by namespace; within a namespace in (kind, name) order.
#[derive(Debug, Default, PartialEq)]
pub struct Security {
    pub authz: BTreeMap<String, Vec<Arc<authz::Policy>>>,
    pub peer_authn: BTreeMap<String, Vec<Arc<PeerAuthn>>>,
    /// RateLimitPolicies by the service they limit.
    pub rate_limits: BTreeMap<ServiceKey, Vec<Arc<RateLimit>>>,
}

impl Security {
    /// The AuthorizationPolicies of `namespace` and of the mesh's `root` namespace.
    pub fn authz_for<'a>(
        &'a self,
        namespace: &str,
        root: &str,
    ) -> impl Iterator<Item = &'a Arc<authz::Policy>> + 'a {
        let own = self.authz.get(namespace);
        let mesh = (namespace != root).then(|| self.authz.get(root)).flatten();
        own.into_iter().chain(mesh).flatten()
    }

    pub fn is_empty(&self) -> bool {
        self.authz.is_empty() && self.peer_authn.is_empty() && self.rate_limits.is_empty()
    }
}

/// A compiled AuthorizationPolicy or RateLimitPolicy, or why it could not be (skipped with a
/// warning: it was validated before it was committed).
type CompiledAuthz = Result<Arc<authz::Policy>, String>;
type CompiledLimit = Result<Arc<RateLimit>, String>;

pub(crate) fn compile(state: &MeshState, cache: &mut CacheMaps) -> Arc<Security> {
    if cache.security_clean
        && let Some(table) = &cache.security_table
    {
        return table.clone();
    }
    let mut old = std::mem::take(&mut cache.security);
    let mut table = Security::default();
    for &kind in KINDS {
        for (key, stored) in state.entries(kind) {
            let ns = key.namespace.clone();
            let authz = matches!(
                kind,
                Kind::IstioAuthorizationPolicy | Kind::AuthorizationPolicy
            );
            let compiled = reuse(&mut old, key, stored, |resource| {
                if authz {
                    let policy: CompiledAuthz = authz::Policy::compile(resource).map(Arc::new);
                    Arc::new(policy) as Arc<dyn std::any::Any + Send + Sync>
                } else if kind == Kind::RateLimitPolicy {
                    let limit: CompiledLimit = RateLimit::compile(resource).map(Arc::new);
                    Arc::new(limit)
                } else {
                    Arc::new(Arc::new(PeerAuthn::compile(resource)))
                }
            });
            if let Some(policy) = compiled.downcast_ref::<CompiledAuthz>() {
                match policy {
                    Ok(p) => table.authz.entry(ns).or_default().push(p.clone()),
                    Err(why) => {
                        tracing::warn!(policy = %key, reason = %why, "AuthorizationPolicy does not compile; skipped")
                    }
                }
            } else if let Some(limit) = compiled.downcast_ref::<CompiledLimit>() {
                match limit {
                    Ok(l) => table
                        .rate_limits
                        .entry(l.service.clone())
                        .or_default()
                        .push(l.clone()),
                    Err(why) => {
                        tracing::warn!(policy = %key, reason = %why, "RateLimitPolicy does not compile; skipped")
                    }
                }
            } else if let Some(p) = compiled.downcast_ref::<Arc<PeerAuthn>>() {
                table.peer_authn.entry(ns).or_default().push(p.clone());
            }
            cache
                .security
                .insert(key.clone(), (Arc::clone(stored), compiled));
        }
    }
    let table = Arc::new(table);
    cache.security_table = Some(table.clone());
    cache.security_clean = true;
    table
}

type Entry = (Arc<StoredResource>, Arc<dyn std::any::Any + Send + Sync>);

fn reuse(
    old: &mut foldhash::HashMap<ResourceKey, Entry>,
    key: &ResourceKey,
    stored: &Arc<StoredResource>,
    compile: impl FnOnce(&crate::resource::Resource) -> Arc<dyn std::any::Any + Send + Sync>,
) -> Arc<dyn std::any::Any + Send + Sync> {
    match old.remove(key) {
        Some((from, compiled)) if Arc::ptr_eq(&from, stored) => compiled,
        _ => compile(&stored.resource()),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::mesh::state::tests::{apply, bootstrapped};
    use crate::resource::Resource;

    fn examples(file: &str) -> Vec<Resource> {
        let text = match file {
            "authz" => include_str!("../../../examples/istio/authorization-policies.yaml"),
            _ => include_str!("../../../examples/istio/strict-mtls-peerauthentication.yaml"),
        };
        serde_yaml_ng::Deserializer::from_str(text)
            .map(|doc| serde::Deserialize::deserialize(doc).unwrap())
            .collect()
    }

    #[test]
    fn security_policy_compiles_by_namespace_and_only_after_a_write_to_it() {
        let mut state = bootstrapped();
        let empty = state.compile();
        assert!(empty.security.is_empty());
        apply(&mut state, 2, examples("authz"), vec![None; 4]);
        let first = state.compile();
        let names: Vec<&str> = first.security.authz["production"]
            .iter()
            .map(|p| p.name.as_str())
            .collect();
        assert_eq!(
            names,
            [
                "production/allow-api-to-database",
                "production/allow-frontend-to-api",
                "production/allow-prometheus-scrape",
                "production/deny-all"
            ]
        );
        apply(&mut state, 3, examples("peer"), vec![None; 2]);
        let second = state.compile();
        assert!(!Arc::ptr_eq(&first.security, &second.security));
        assert_eq!(second.security.peer_authn["istio-system"].len(), 1);
        assert_eq!(second.security.peer_authn["production"].len(), 1);
        // An unchanged policy is the same compiled policy.
        assert!(Arc::ptr_eq(
            &first.security.authz["production"][0],
            &second.security.authz["production"][0]
        ));
        // A compile with no security write between hands on the same table.
        assert!(Arc::ptr_eq(&second.security, &state.compile().security));
    }
}
