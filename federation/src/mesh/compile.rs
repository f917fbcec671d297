//! Compiles a [`MeshSnapshot`] from the state: the typed view the data plane and the Raft
//! transport run on.
//!
//! Lenient on purpose: resources were validated before they were committed, so anything that
//! does not parse here is a bug or an older format, and one bad resource must not take the
//! data plane's view of every other one down. It is skipped with a warning instead.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use rustls::pki_types::CertificateDer;
use serde_json::Value;

use super::StoredResource;
use super::{ClusterView, MeshSnapshot, MeshState};
use crate::model::{ClusterName, Labels, LocalService, Protocol, ServiceKey, ServicePort};
use crate::resource::{CROSS_CHECKED, Claims, Kind, ObjectMeta, Resource, ResourceKey};

/// More CA certificates than any sane trust bundle holds; bounds the PEM reader.
const MAX_BUNDLE_CERTS: usize = 256;

/// Compiled resources by key, each with the resourceVersion it was compiled at: a write
/// recompiles only the resources it changed (with ten thousand services, recompiling every
/// one on every write cost each gateway a third of a CPU-second per write).
#[derive(Default)]
pub(crate) struct Cache(Mutex<CacheMaps>);

/// Where a key points within its kind: (namespace, cluster, name).
fn place(k: &ResourceKey) -> (&str, &str, &str) {
    (k.namespace.as_str(), k.cluster.as_str(), k.name.as_str())
}

/// Where a cluster-local resource's key points within its kind, from its metadata, as
/// [`super::resource_key`] makes the key.
fn place_of(meta: &ObjectMeta) -> (&str, &str, &str) {
    (
        meta.namespace.as_deref().unwrap_or_default(),
        meta.cluster.as_deref().unwrap_or_default(),
        meta.name.as_str(),
    )
}

/// A Service as compiled: the stored resource it was compiled from (the state's own `Arc`, so
/// an unchanged service is recognised by pointer, and the cache holds no copy of its key or
/// version), whether it was exported then, and the cluster that runs it with what it became
/// (none if it does not compile).
struct CompiledService {
    from: Arc<StoredResource>,
    export: bool,
    compiled: Option<(ClusterName, Arc<LocalService>)>,
}

type Exports = std::collections::BTreeMap<crate::model::ServiceKey, Vec<crate::model::ServicePort>>;
type ServicesByCluster = std::collections::BTreeMap<ClusterName, Vec<Arc<LocalService>>>;
type ExportsByCluster = std::collections::BTreeMap<ClusterName, Arc<Exports>>;

#[derive(Default)]
pub(crate) struct CacheMaps {
    /// In key order: walked in step with the state's own services.
    services: Vec<CompiledService>,
    /// Each cluster's exports as last compiled, handed on while none of its services changed.
    exports: HashMap<ClusterName, Arc<Exports>>,
    /// The route table as last compiled, handed on while no policy resource changed.
    pub(super) table: Option<Arc<crate::traffic::RouteTable>>,
    /// Set when a policy resource was compiled anew since the table was built.
    pub(super) fresh: bool,
    /// No policy resource was written since the table was built: it stands as it is.
    pub(super) policy_clean: bool,
    /// No Service or ServiceExport was written since `services_compiled`.
    services_clean: bool,
    /// The services and exports of the last compile, by cluster.
    services_compiled: Option<(ServicesByCluster, ExportsByCluster)>,
    /// What apply-time cross-checks need of each stored route table and rule, with the stored
    /// resource it came from.
    claims: foldhash::HashMap<ResourceKey, (Arc<StoredResource>, Arc<Claims>)>,
    /// What each security resource compiled to, with the stored resource it came from.
    pub(super) security:
        foldhash::HashMap<ResourceKey, (Arc<StoredResource>, Arc<dyn std::any::Any + Send + Sync>)>,
    /// No security resource was written since `security_table` was built.
    pub(super) security_clean: bool,
    pub(super) security_table: Option<Arc<super::Security>>,
    /// What each policy resource compiled to, with the stored resource it came from.
    pub(super) routes:
        foldhash::HashMap<ResourceKey, (Arc<StoredResource>, Arc<dyn std::any::Any + Send + Sync>)>,
}

impl Clone for Cache {
    /// A copy of a state starts with an empty cache: the two may diverge.
    fn clone(&self) -> Self {
        Cache::default()
    }
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Cache")
    }
}

impl Cache {
    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, CacheMaps> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl CacheMaps {
    /// A resource of `kind` was written or deleted: what derives from its kind is stale.
    pub(super) fn touch(&mut self, kind: Kind) {
        match kind {
            Kind::Service | Kind::ServiceExport => self.services_clean = false,
            Kind::IstioVirtualService
            | Kind::IstioDestinationRule
            | Kind::Route
            | Kind::DestinationPolicy
            | Kind::LinkerdServiceProfile
            | Kind::SmiTrafficSplit => self.policy_clean = false,
            Kind::IstioAuthorizationPolicy
            | Kind::AuthorizationPolicy
            | Kind::IstioPeerAuthentication
            | Kind::PeerAuthentication
            | Kind::RateLimitPolicy => self.security_clean = false,
            _ => {}
        }
    }

    /// `compile(resource)`, or what it gave for the same stored resource: an unchanged
    /// resource is neither parsed nor compiled again.
    pub(super) fn route_entry<T: Send + Sync + 'static>(
        &mut self,
        key: &ResourceKey,
        stored: &Arc<StoredResource>,
        compile: impl FnOnce(&Resource) -> T,
    ) -> Arc<T> {
        if let Some((from, value)) = self.routes.get(key)
            && Arc::ptr_eq(from, stored)
            && let Ok(value) = Arc::clone(value).downcast::<T>()
        {
            return value;
        }
        let value = Arc::new(compile(&stored.resource()));
        self.routes
            .insert(key.clone(), (Arc::clone(stored), value.clone()));
        self.fresh = true;
        value
    }
}

impl MeshState {
    /// What [`crate::resource::cross_check_claims`] needs of every stored resource of the
    /// [`CROSS_CHECKED`] kinds, each derived once per stored version: an apply then reads no
    /// stored route table again.
    pub fn stored_claims(&self) -> Vec<Arc<Claims>> {
        let mut cache = self.compiled.lock();
        let mut old = std::mem::take(&mut cache.claims);
        let mut out = Vec::new();
        for &kind in CROSS_CHECKED {
            for (key, stored) in self.entries(kind) {
                let claims = match old.remove(key) {
                    Some((from, claims)) if Arc::ptr_eq(&from, stored) => claims,
                    _ => Arc::new(Claims::of(key.clone(), &stored.resource())),
                };
                cache
                    .claims
                    .insert(key.clone(), (Arc::clone(stored), Arc::clone(&claims)));
                out.push(claims);
            }
        }
        out
    }

    /// The data plane's view of the state as of [`MeshState::applied`].
    pub fn compile(&self) -> MeshSnapshot {
        let mut snapshot = MeshSnapshot {
            version: self.applied(),
            members: self.members().into_iter().cloned().collect(),
            ..MeshSnapshot::default()
        };
        for resource in self.list(Kind::Cluster, None, None) {
            if let Some(view) = cluster_view(&resource.resource()) {
                snapshot.clusters.insert(view.name.clone(), view);
            }
        }

        let mut cache = self.compiled.lock();
        if cache.services_clean
            && let Some((services, exports)) = &cache.services_compiled
        {
            // No Service or ServiceExport written since: the same lists, shared.
            snapshot.services = services.clone();
            snapshot.exports = exports.clone();
            snapshot.routes = super::routes::compile(self, &mut cache);
            snapshot.security = super::security::compile(self, &mut cache);
            return snapshot;
        }
        drop(cache);
        // Services, their exports and the cache are all in key order (namespace, cluster,
        // name): one walk over the three, with no lookup, hashing or allocation for a
        // service that did not change. This runs on every applied write.
        let mut cache = self.compiled.lock();
        let mut old = std::mem::take(&mut cache.services).into_iter().peekable();
        let mut exports = self.entries(Kind::ServiceExport).map(|(k, _)| k).peekable();
        let mut next = Vec::with_capacity(old.len());
        // Clusters one of whose services was compiled anew, appeared or went away.
        let mut changed: BTreeSet<ClusterName> = BTreeSet::new();
        let gone = |entry: &CompiledService, changed: &mut BTreeSet<ClusterName>| {
            if let Some((cluster, _)) = &entry.compiled {
                changed.insert(cluster.clone());
            }
        };
        for (key, stored) in self.entries(Kind::Service) {
            let here = place(key);
            while let Some(entry) = old.peek() {
                if place_of(entry.from.metadata()) >= here {
                    break;
                }
                gone(entry, &mut changed);
                old.next();
            }
            let cached = old.next_if(|entry| place_of(entry.from.metadata()) == here);
            while exports.next_if(|e| place(e) < here).is_some() {}
            let export = exports.peek().is_some_and(|e| place(e) == here);
            let entry = match cached {
                Some(entry) if Arc::ptr_eq(&entry.from, stored) && entry.export == export => entry,
                cached => {
                    if let Some(entry) = &cached {
                        gone(entry, &mut changed);
                    }
                    // Parsed only here, for the one service that changed.
                    let compiled = local_service(&stored.resource(), export)
                        .map(|(cluster, service)| (cluster, Arc::new(service)));
                    if let Some((cluster, _)) = &compiled {
                        changed.insert(cluster.clone());
                    }
                    CompiledService {
                        from: Arc::clone(stored),
                        export,
                        compiled,
                    }
                }
            };
            if let Some((cluster, service)) = &entry.compiled {
                snapshot
                    .services
                    .entry(cluster.clone())
                    .or_default()
                    .push(service.clone());
            }
            next.push(entry);
        }
        for entry in old {
            gone(&entry, &mut changed);
        }
        cache.services = next;
        for (cluster, services) in snapshot.services.iter_mut() {
            services.sort_by(|a, b| a.key.cmp(&b.key));
            let exports = match cache.exports.get(cluster) {
                Some(exports) if !changed.contains(cluster) => exports.clone(),
                _ => Arc::new(
                    services
                        .iter()
                        .filter(|s| s.export)
                        .map(|s| (s.key.clone(), s.ports.clone()))
                        .collect(),
                ),
            };
            cache.exports.insert(cluster.clone(), exports.clone());
            if !exports.is_empty() {
                snapshot.exports.insert(cluster.clone(), exports);
            }
        }
        cache
            .exports
            .retain(|cluster, _| snapshot.services.contains_key(cluster));
        cache.services_compiled = Some((snapshot.services.clone(), snapshot.exports.clone()));
        cache.services_clean = true;
        snapshot.routes = super::routes::compile(self, &mut cache);
        snapshot.security = super::security::compile(self, &mut cache);
        snapshot
    }
}

fn cluster_view(resource: &Resource) -> Option<ClusterView> {
    let name = &resource.metadata.name;
    let Ok(cluster) = ClusterName::new(name) else {
        tracing::warn!(cluster = %name, "Cluster resource with an invalid name; skipped");
        return None;
    };
    let spec = &resource.spec;
    let Some(trust_domain) = spec.get("trustDomain").and_then(Value::as_str) else {
        tracing::warn!(%cluster, "Cluster resource without spec.trustDomain; skipped");
        return None;
    };
    let bundle = spec
        .get("trustBundle")
        .and_then(Value::as_str)
        .unwrap_or("");
    let gateways = spec
        .get("gateways")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter_map(|g| {
            let address = g.get("tunnelAddress").and_then(Value::as_str)?;
            let parsed = address.parse::<SocketAddr>().ok();
            if parsed.is_none() {
                tracing::warn!(%cluster, address, "gateway tunnelAddress is not ip:port; skipped");
            }
            parsed
        })
        .collect();
    Some(ClusterView {
        trust_bundle: pem_certificates(&cluster, bundle),
        name: cluster,
        trust_domain: trust_domain.to_string(),
        gateways,
        locality: locality(spec.get("locality")),
    })
}

/// DER of each certificate in `pem`, up to the first malformed section.
fn pem_certificates(cluster: &ClusterName, pem: &str) -> Vec<Vec<u8>> {
    let mut reader = pem.as_bytes();
    let mut certs = Vec::new();
    for item in rustls_pemfile::certs(&mut reader).take(MAX_BUNDLE_CERTS) {
        match item {
            Ok(cert) => certs.push(CertificateDer::as_ref(&cert).to_vec()),
            Err(e) => {
                tracing::warn!(%cluster, error = %e, "trust bundle PEM is malformed; kept the certificates before it");
                break;
            }
        }
    }
    if certs.is_empty() {
        tracing::warn!(%cluster, "trust bundle holds no certificate");
    }
    certs
}

/// `region/zone`, `region`, or none.
fn locality(locality: Option<&Value>) -> Option<String> {
    let region = locality?.get("region").and_then(Value::as_str)?;
    let zone = locality?.get("zone").and_then(Value::as_str);
    Some(match zone {
        Some(zone) if !zone.is_empty() => format!("{region}/{zone}"),
        _ => region.to_string(),
    })
}

fn local_service(resource: &Resource, export: bool) -> Option<(ClusterName, LocalService)> {
    let meta = &resource.metadata;
    let (cluster_name, namespace) = (meta.cluster.as_deref()?, meta.namespace.as_deref()?);
    let (Ok(cluster), Ok(key)) = (
        ClusterName::new(cluster_name),
        ServiceKey::new(&meta.name, namespace),
    ) else {
        tracing::warn!(service = %meta.name, namespace, cluster = cluster_name, "Service with an invalid name, namespace or cluster; skipped");
        return None;
    };
    let spec = &resource.spec;
    let mut ports: Vec<ServicePort> = spec
        .get("ports")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter_map(|p| {
            let port = p
                .get("port")
                .and_then(Value::as_u64)
                .and_then(|n| u16::try_from(n).ok())
                .filter(|&n| n != 0)?;
            // Opaque TCP is the safe reading of an unnamed protocol: it proxies anything.
            let protocol = match p.get("protocol").and_then(Value::as_str) {
                None => Protocol::Tcp,
                Some(name) => name.parse().ok()?,
            };
            Some(ServicePort { port, protocol })
        })
        .collect();
    if ports.is_empty() {
        tracing::warn!(service = %key, %cluster, "Service has no usable port; skipped");
        return None;
    }
    // `"ip:port"`, or `{address: "ip:port", labels: {...}}` for an endpoint with labels.
    let mut endpoints = Vec::new();
    let mut endpoint_labels = Vec::new();
    let mut endpoint_accounts = Vec::new();
    for e in spec
        .get("endpoints")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        let address = e.as_str().or_else(|| e.get("address")?.as_str());
        let Some(addr) = address.and_then(|a| a.parse::<SocketAddr>().ok()) else {
            continue;
        };
        endpoints.push(addr);
        if let Some(account) = e.get("serviceAccount").and_then(Value::as_str) {
            endpoint_accounts.push((addr, Box::from(account)));
        }
        let labels: Labels = e
            .get("labels")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
            .filter_map(|(k, v)| Some((k.as_str(), v.as_str()?)))
            .collect();
        if !labels.is_empty() {
            endpoint_labels.push((addr, labels));
        }
    }
    // One entry per address, the last one listed winning (as a map would), sorted for lookup.
    endpoint_labels.reverse();
    endpoint_labels.sort_by_key(|(addr, _)| *addr);
    endpoint_labels.dedup_by_key(|(addr, _)| *addr);
    endpoint_accounts.reverse();
    endpoint_accounts.sort_by_key(|(addr, _)| *addr);
    endpoint_accounts.dedup_by_key(|(addr, _)| *addr);
    endpoint_accounts.shrink_to_fit();
    // Kept for as long as the service is unchanged, beside thousands of others: no slack.
    endpoints.shrink_to_fit();
    ports.shrink_to_fit();
    endpoint_labels.shrink_to_fit();
    Some((
        cluster,
        LocalService {
            key,
            ports,
            endpoints,
            endpoint_labels,
            endpoint_accounts,
            export,
        },
    ))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::mesh::state::tests::{addr, apply, bootstrapped, res};
    use crate::resource::NATIVE_API_VERSION;

    /// PEM of two fake "certificates" (the compiler does not parse DER, it only unwraps PEM).
    const BUNDLE: &str = "-----BEGIN CERTIFICATE-----\nAQID\n-----END CERTIFICATE-----\n\
                          -----BEGIN CERTIFICATE-----\nBAUG\n-----END CERTIFICATE-----\n";

    fn service(cluster: &str, ns: &str, name: &str, spec: serde_json::Value) -> Resource {
        res(
            NATIVE_API_VERSION,
            "Service",
            Some(ns),
            Some(cluster),
            name,
            spec,
        )
    }

    fn export(cluster: &str, ns: &str, name: &str) -> Resource {
        res(
            NATIVE_API_VERSION,
            "ServiceExport",
            Some(ns),
            Some(cluster),
            name,
            json!({}),
        )
    }

    fn key(s: &str) -> ServiceKey {
        s.parse().unwrap()
    }

    #[test]
    fn compiles_clusters_services_and_exports() {
        let mut state = bootstrapped();
        let west = res(
            NATIVE_API_VERSION,
            "Cluster",
            None,
            None,
            "west",
            json!({
                "trustDomain": "west.mesh",
                "trustBundle": BUNDLE,
                "gateways": [
                    {"name": "gw-1", "tunnelAddress": "10.1.0.1:4433"},
                    {"name": "gw-2", "tunnelAddress": "not an address"},
                ],
                "locality": {"region": "eu", "zone": "eu-1a"},
            }),
        );
        let docs = vec![
            west,
            service(
                "west",
                "prod",
                "api",
                json!({
                    "ports": [{"port": 80, "protocol": "http"}, {"port": 5432, "protocol": "tcp"}, {"port": 0, "protocol": "tcp"}],
                    "endpoints": ["10.1.1.1:8080", "bad", "10.1.1.2:8080"],
                }),
            ),
            service(
                "west",
                "prod",
                "db",
                json!({"ports": [{"port": 5432, "protocol": "tcp"}], "endpoints": []}),
            ),
            service("west", "dev", "api", json!({"ports": [{"port": 81}]})),
            service(
                "east",
                "prod",
                "api",
                json!({"ports": [{"port": 80, "protocol": "http"}]}),
            ),
            // No usable port: skipped.
            service(
                "east",
                "prod",
                "broken",
                json!({"ports": [{"port": 70000}]}),
            ),
            export("west", "prod", "api"),
            export("west", "dev", "api"),
            // Exports name a service in their own cluster only.
            export("east", "prod", "db"),
        ];
        apply(&mut state, 2, docs, vec![]);
        let snapshot = state.compile();
        assert_eq!(snapshot.version, 2);
        assert_eq!(snapshot.members.len(), 1);

        let east = &snapshot.clusters[&ClusterName::new("east").unwrap()];
        assert_eq!(east.trust_domain, "east.mesh");
        // Bootstrap's bundle is not PEM: no certificates, but the cluster stays.
        assert!(east.trust_bundle.is_empty());
        assert_eq!(east.gateways, [addr("10.0.0.1:4433")]);
        assert_eq!(east.locality, None);
        let west_name = ClusterName::new("west").unwrap();
        let west = &snapshot.clusters[&west_name];
        assert_eq!(west.trust_bundle, [vec![1, 2, 3], vec![4, 5, 6]]);
        assert_eq!(west.gateways, [addr("10.1.0.1:4433")]);
        assert_eq!(west.locality.as_deref(), Some("eu/eu-1a"));

        let west_services = &snapshot.services[&west_name];
        let keys: Vec<_> = west_services
            .iter()
            .map(|s| (s.key.to_string(), s.export))
            .collect();
        assert_eq!(
            keys,
            [
                ("api.dev".into(), true),
                ("api.prod".into(), true),
                ("db.prod".into(), false)
            ]
        );
        let api = &west_services[1];
        assert_eq!(
            api.ports,
            [
                ServicePort {
                    port: 80,
                    protocol: Protocol::Http
                },
                ServicePort {
                    port: 5432,
                    protocol: Protocol::Tcp
                },
            ]
        );
        assert_eq!(
            api.endpoints,
            [addr("10.1.1.1:8080"), addr("10.1.1.2:8080")]
        );
        assert_eq!(
            west_services[0].ports,
            [ServicePort {
                port: 81,
                protocol: Protocol::Tcp
            }]
        );

        let east_services = &snapshot.services[&ClusterName::new("east").unwrap()];
        assert_eq!(east_services.len(), 1);
        assert!(!east_services[0].export);

        assert_eq!(snapshot.exports.len(), 1);
        let west_exports = &snapshot.exports[&west_name];
        assert_eq!(
            west_exports.keys().cloned().collect::<Vec<_>>(),
            [key("api.dev"), key("api.prod")]
        );
        assert_eq!(west_exports[&key("api.prod")], api.ports);
    }

    #[test]
    fn a_write_recompiles_only_the_services_it_touched() {
        let mut state = bootstrapped();
        let spec =
            json!({"ports": [{"port": 80, "protocol": "http"}], "endpoints": ["10.0.0.1:80"]});
        apply(
            &mut state,
            2,
            vec![
                service("west", "shop", "a", spec.clone()),
                service("west", "shop", "b", spec.clone()),
                service("edge", "shop", "c", spec.clone()),
            ],
            vec![],
        );
        let first = state.compile();
        let west = ClusterName::new("west").unwrap();
        let edge = ClusterName::new("edge").unwrap();
        assert!(first.exports.is_empty());

        // Exporting `b` flips its flag and gives west exports; edge's service is untouched.
        apply(&mut state, 3, vec![export("west", "shop", "b")], vec![]);
        let second = state.compile();
        let find = |snap: &MeshSnapshot, cluster: &ClusterName, name: &str| {
            snap.services[cluster]
                .iter()
                .find(|s| s.key == key(name))
                .cloned()
                .unwrap()
        };
        assert!(find(&second, &west, "b.shop").export);
        assert!(!find(&second, &west, "a.shop").export);
        assert!(Arc::ptr_eq(
            &find(&first, &west, "a.shop"),
            &find(&second, &west, "a.shop")
        ));
        assert!(Arc::ptr_eq(
            &find(&first, &edge, "c.shop"),
            &find(&second, &edge, "c.shop")
        ));
        assert_eq!(
            second.exports[&west].keys().collect::<Vec<_>>(),
            [&key("b.shop")]
        );

        // A write elsewhere hands on west's exports as they were.
        apply(
            &mut state,
            4,
            vec![service("edge", "shop", "d", spec.clone())],
            vec![],
        );
        let third = state.compile();
        assert!(Arc::ptr_eq(&second.exports[&west], &third.exports[&west]));

        // A deleted service is gone, and its cluster's exports with it.
        let key_b = crate::mesh::resource_key(&service("west", "shop", "b", spec)).unwrap();
        crate::mesh::state::tests::delete_for_tests(&mut state, 5, key_b);
        let fourth = state.compile();
        assert_eq!(fourth.services[&west].len(), 1);
        assert!(!fourth.exports.contains_key(&west));
    }

    #[test]
    fn policy_is_parsed_and_derived_again_only_where_it_changed() {
        let mut state = bootstrapped();
        let vs = |name: &str, body: &str| {
            res(
                "networking.istio.io/v1",
                "VirtualService",
                Some("shop"),
                None,
                name,
                json!({"hosts": [name], "http": [{"directResponse": {"status": 200, "body": {"string": body}}}]}),
            )
        };
        let rule = res(
            "networking.istio.io/v1",
            "DestinationRule",
            Some("shop"),
            None,
            "a",
            json!({"host": "a", "subsets": [{"name": "v1", "labels": {"version": "v1"}}]}),
        );
        apply(
            &mut state,
            2,
            vec![vs("a", "one"), vs("b", "one"), rule],
            vec![],
        );
        let (first, first_claims) = (state.compile(), state.stored_claims());
        apply(&mut state, 3, vec![vs("b", "two")], vec![]);
        let (second, second_claims) = (state.compile(), state.stored_claims());

        let routes =
            |snap: &MeshSnapshot, name: &str| snap.routes.get(&key(name)).unwrap().routes.clone();
        assert!(Arc::ptr_eq(
            &routes(&first, "a.shop"),
            &routes(&second, "a.shop")
        ));
        assert!(!Arc::ptr_eq(
            &routes(&first, "b.shop"),
            &routes(&second, "b.shop")
        ));
        let rule = |snap: &MeshSnapshot| {
            snap.routes
                .get(&key("a.shop"))
                .unwrap()
                .destination
                .clone()
                .unwrap()
        };
        assert!(Arc::ptr_eq(&rule(&first), &rule(&second)));
        assert_eq!(rule(&second).subset("v1").unwrap().labels["version"], "v1");

        // The apply-time claims: the same for what did not change, derived again for `b`.
        let claims = |all: &[Arc<Claims>], name: &str| {
            all.iter()
                .find(|c| c.key.kind == Kind::IstioVirtualService && c.key.name == name)
                .cloned()
                .unwrap()
        };
        assert_eq!(first_claims.len(), 3);
        assert!(Arc::ptr_eq(
            &claims(&first_claims, "a"),
            &claims(&second_claims, "a")
        ));
        assert!(!Arc::ptr_eq(
            &claims(&first_claims, "b"),
            &claims(&second_claims, "b")
        ));
        assert_eq!(claims(&first_claims, "b"), claims(&second_claims, "b"));
    }

    #[test]
    fn malformed_resources_are_skipped() {
        let mut state = crate::mesh::MeshState::new();
        let docs = vec![
            res(
                NATIVE_API_VERSION,
                "Cluster",
                None,
                None,
                "Not_A_Label",
                json!({"trustDomain": "x"}),
            ),
            res(
                NATIVE_API_VERSION,
                "Cluster",
                None,
                None,
                "no-td",
                json!({"trustBundle": BUNDLE}),
            ),
            res(
                NATIVE_API_VERSION,
                "Cluster",
                None,
                None,
                "odd",
                json!({
                    "trustDomain": "odd.mesh",
                    "trustBundle": "-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n",
                    "gateways": "none",
                }),
            ),
            res(
                NATIVE_API_VERSION,
                "Cluster",
                None,
                None,
                "null-spec",
                serde_json::Value::Null,
            ),
            service(
                "west",
                "prod",
                "Bad_Name",
                json!({"ports": [{"port": 80, "protocol": "http"}]}),
            ),
            service(
                "west",
                "prod",
                "udp",
                json!({"ports": [{"port": 53, "protocol": "udp"}]}),
            ),
            service("west", "prod", "nulls", serde_json::Value::Null),
        ];
        apply(&mut state, 1, docs, vec![]);
        let snapshot = state.compile();
        let names: Vec<_> = snapshot.clusters.keys().map(|c| c.to_string()).collect();
        assert_eq!(names, ["odd"]);
        let odd = &snapshot.clusters[&ClusterName::new("odd").unwrap()];
        assert!(odd.trust_bundle.is_empty() && odd.gateways.is_empty());
        assert!(snapshot.services.is_empty());
        assert!(snapshot.exports.is_empty());
        let empty = MeshState::new().compile();
        assert!(empty.clusters.is_empty() && empty.services.is_empty());
        assert!(empty.members.is_empty() && empty.routes.services.is_empty());
    }
}
