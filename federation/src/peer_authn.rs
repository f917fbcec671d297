//! Istio's `PeerAuthentication`, compiled and resolved for one workload port.
//!
//! A destination gateway asks which mode holds for the endpoint it is about to call: a policy
//! of the workload's namespace whose selector matches the endpoint's labels (its port-level
//! mode for the endpoint's port first), else the namespace's policy without a selector, else
//! the mesh's (the root namespace's policy without a selector), else PERMISSIVE. `UNSET`
//! inherits from the next level, as in Istio. Where Istio picks the oldest of several policies
//! at one level, Causeway picks the first by name: the store keeps no creation order that
//! every gateway reads the same.
//!
//! At the boundary the modes mean: STRICT admits only callers with an authenticated workload
//! identity (an SVID presented to their own gateway); PERMISSIVE admits every caller the
//! sending gateway vouches for; DISABLE admits every caller and reads none of them as
//! authenticated (no principal for AuthorizationPolicy), as a plaintext Istio server would.

use serde_json::Value;

use crate::model::Labels;
use crate::resource::Resource;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Strict,
    Permissive,
    Disable,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Strict => "STRICT",
            Mode::Permissive => "PERMISSIVE",
            Mode::Disable => "DISABLE",
        }
    }

    /// `None` for `UNSET` (or absent): inherit.
    fn parse(v: Option<&Value>) -> Option<Mode> {
        match v?.get("mode")?.as_str()? {
            "STRICT" => Some(Mode::Strict),
            "PERMISSIVE" => Some(Mode::Permissive),
            "DISABLE" => Some(Mode::Disable),
            _ => None,
        }
    }
}

/// One compiled `PeerAuthentication`.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerAuthn {
    /// `namespace/name`.
    pub name: String,
    pub selector: Vec<(String, String)>,
    pub mode: Option<Mode>,
    pub ports: Vec<(u16, Option<Mode>)>,
}

impl PeerAuthn {
    pub fn compile(resource: &Resource) -> PeerAuthn {
        let spec = &resource.spec;
        let meta = &resource.metadata;
        PeerAuthn {
            name: format!(
                "{}/{}",
                meta.namespace.as_deref().unwrap_or_default(),
                meta.name
            ),
            selector: spec
                .pointer("/selector/matchLabels")
                .and_then(Value::as_object)
                .into_iter()
                .flatten()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect(),
            mode: Mode::parse(spec.get("mtls")),
            ports: spec
                .get("portLevelMtls")
                .and_then(Value::as_object)
                .into_iter()
                .flatten()
                .filter_map(|(port, m)| Some((port.parse().ok()?, Mode::parse(Some(m)))))
                .collect(),
        }
    }

    fn selects(&self, labels: &Labels) -> bool {
        !self.selector.is_empty()
            && self
                .selector
                .iter()
                .all(|(k, v)| labels.get(k) == Some(v.as_str()))
    }
}

impl AsRef<PeerAuthn> for PeerAuthn {
    fn as_ref(&self) -> &PeerAuthn {
        self
    }
}

/// The mode that holds, and the policy that set it (none: the PERMISSIVE default).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resolved<'a> {
    pub mode: Mode,
    pub policy: Option<&'a str>,
}

/// The mode for port `port` of a workload with `labels`, from its namespace's policies and
/// the root namespace's (both in name order).
pub fn resolve<'a>(
    namespace: &'a [impl AsRef<PeerAuthn>],
    root: &'a [impl AsRef<PeerAuthn>],
    labels: &Labels,
    port: u16,
) -> Resolved<'a> {
    let workload = namespace
        .iter()
        .map(AsRef::as_ref)
        .find(|p| p.selects(labels));
    let port_mode = workload.and_then(|p| {
        p.ports
            .iter()
            .find(|(n, _)| *n == port)
            .and_then(|(_, m)| *m)
            .map(|m| (m, p))
    });
    let levels = [
        port_mode,
        workload.and_then(|p| p.mode.map(|m| (m, p))),
        whole(namespace),
        whole(root),
    ];
    match levels.into_iter().flatten().next() {
        Some((mode, p)) => Resolved {
            mode,
            policy: Some(p.name.as_str()),
        },
        None => Resolved {
            mode: Mode::Permissive,
            policy: None,
        },
    }
}

/// The first policy without a selector that sets a mode.
fn whole(policies: &[impl AsRef<PeerAuthn>]) -> Option<(Mode, &PeerAuthn)> {
    policies
        .iter()
        .map(AsRef::as_ref)
        .filter(|p| p.selector.is_empty())
        .find_map(|p| p.mode.map(|m| (m, p)))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn pa(ns: &str, name: &str, spec: Value) -> PeerAuthn {
        let r: Resource = serde_json::from_value(json!({
            "apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
            "metadata": {"name": name, "namespace": ns}, "spec": spec,
        }))
        .unwrap();
        PeerAuthn::compile(&r)
    }

    #[test]
    fn the_most_specific_level_that_sets_a_mode_wins() {
        let labels: Labels = [("app", "db")].into_iter().collect();
        let other: Labels = [("app", "web")].into_iter().collect();
        let root = vec![pa(
            "istio-system",
            "default",
            json!({"mtls": {"mode": "STRICT"}}),
        )];
        let ns = vec![
            pa(
                "shop",
                "db",
                json!({"selector": {"matchLabels": {"app": "db"}}, "mtls": {"mode": "UNSET"},
                       "portLevelMtls": {"5432": {"mode": "DISABLE"}}}),
            ),
            pa("shop", "ns", json!({"mtls": {"mode": "PERMISSIVE"}})),
        ];
        let at = |labels: &Labels, port| {
            let r = resolve(&ns, &root, labels, port);
            (r.mode, r.policy.map(str::to_string))
        };
        assert_eq!(at(&labels, 5432), (Mode::Disable, Some("shop/db".into())));
        // UNSET at the workload inherits the namespace's mode.
        assert_eq!(at(&labels, 80), (Mode::Permissive, Some("shop/ns".into())));
        assert_eq!(at(&other, 5432), (Mode::Permissive, Some("shop/ns".into())));
        // No namespace policy: the mesh's; none at all: PERMISSIVE.
        let none: Vec<PeerAuthn> = Vec::new();
        assert_eq!(resolve(&none, &root, &other, 80).mode, Mode::Strict);
        assert_eq!(
            resolve(&none, &none, &other, 80),
            Resolved {
                mode: Mode::Permissive,
                policy: None
            }
        );
    }
}
