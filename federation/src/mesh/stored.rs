//! A resource as [`MeshState`](super::MeshState) keeps it.
//!
//! A parsed `serde_json::Value` costs about ten times the bytes of its JSON text: every object
//! is an index map with a hash table of its own. A large mesh holds tens of thousands of
//! services and thousands of route tables, and each is read whole only when it changes (to
//! compile it) or when someone asks for it. So resources keep their metadata parsed (keys,
//! versions and labels are read on every write and list) and their spec and status as compact
//! JSON text, parsed on demand. What reads many of them on every write (the compile, the
//! apply-time cross-checks) keeps what it derived from each, recognised by the stored
//! resource's pointer, so an unchanged resource is never parsed again. Clusters, a handful read
//! by every compile, stay parsed.

use std::borrow::Cow;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;

use crate::resource::{Kind, ObjectMeta, Resource};

/// One stored resource: see the module docs for its two forms.
pub struct StoredResource(Form);

enum Form {
    Parsed(Resource),
    Compact(Compact),
}

/// A resource with its spec and status as JSON text; fields named as [`Resource`]'s so that
/// both serialize alike.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Compact {
    api_version: String,
    kind: String,
    metadata: ObjectMeta,
    spec: Box<RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<Box<RawValue>>,
}

/// Whether the state keeps resources of `kind` as compact text (see the module docs).
fn compact(kind: Kind) -> bool {
    kind != Kind::Cluster
}

impl StoredResource {
    /// `resource`, stored as its kind is (see the module docs).
    pub fn new(resource: Resource) -> Self {
        let kind = Kind::from_api(&resource.api_version, &resource.kind);
        if !kind.is_some_and(compact) {
            return StoredResource(Form::Parsed(resource));
        }
        let text = |value: &serde_json::Value| serde_json::value::to_raw_value(value);
        match (
            text(&resource.spec),
            resource.status.as_ref().map(text).transpose(),
        ) {
            (Ok(spec), Ok(status)) => StoredResource(Form::Compact(Compact {
                api_version: resource.api_version,
                kind: resource.kind,
                metadata: resource.metadata,
                spec,
                status,
            })),
            // A `Value` always serializes; were it ever not to, parsed still works.
            _ => StoredResource(Form::Parsed(resource)),
        }
    }

    pub fn metadata(&self) -> &ObjectMeta {
        match &self.0 {
            Form::Parsed(r) => &r.metadata,
            Form::Compact(c) => &c.metadata,
        }
    }

    pub fn api_version(&self) -> &str {
        match &self.0 {
            Form::Parsed(r) => &r.api_version,
            Form::Compact(c) => &c.api_version,
        }
    }

    pub fn kind(&self) -> &str {
        match &self.0 {
            Form::Parsed(r) => &r.kind,
            Form::Compact(c) => &c.kind,
        }
    }

    /// The whole resource: borrowed when kept parsed, parsed from its text otherwise.
    pub fn resource(&self) -> Cow<'_, Resource> {
        match &self.0 {
            Form::Parsed(r) => Cow::Borrowed(r),
            Form::Compact(c) => {
                let parse = |raw: &RawValue| {
                    // Text this module wrote from a `Value`: it parses back to that `Value`.
                    serde_json::from_str(raw.get()).unwrap_or(serde_json::Value::Null)
                };
                Cow::Owned(Resource {
                    api_version: c.api_version.clone(),
                    kind: c.kind.clone(),
                    metadata: c.metadata.clone(),
                    spec: parse(&c.spec),
                    status: c.status.as_deref().map(parse),
                })
            }
        }
    }
}

impl From<Resource> for StoredResource {
    fn from(resource: Resource) -> Self {
        StoredResource::new(resource)
    }
}

impl fmt::Debug for StoredResource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.resource().fmt(f)
    }
}

impl PartialEq for StoredResource {
    fn eq(&self, other: &Self) -> bool {
        self.resource() == other.resource()
    }
}

/// Exactly as the [`Resource`] would. The compact form writes its text as it is, which only
/// serde_json understands; every serialization of stored resources (REST answers, watch
/// events, snapshots) is JSON.
impl Serialize for StoredResource {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match &self.0 {
            Form::Parsed(r) => r.serialize(serializer),
            Form::Compact(c) => c.serialize(serializer),
        }
    }
}

impl<'de> Deserialize<'de> for StoredResource {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Resource::deserialize(deserializer).map(StoredResource::new)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn resource(value: serde_json::Value) -> Resource {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn both_forms_give_back_the_resource_and_serialize_as_it_does() {
        let service = resource(json!({
            "apiVersion": "causeway.dev/v1alpha1", "kind": "Service",
            "metadata": {"name": "api", "namespace": "prod", "cluster": "east",
                         "labels": {"app": "api"}, "resourceVersion": "7"},
            "spec": {"ports": [{"port": 80, "protocol": "http"}],
                     "endpoints": [{"address": "10.0.0.1:80", "labels": {"version": "v2"}}],
                     "weight": 0.25, "big": 18446744073709551615u64, "neg": -3},
            "status": {"note": "ünïcode \"quoted\""},
        }));
        let route = resource(json!({
            "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": "api", "namespace": "prod"},
            "spec": {"hosts": ["api"], "http": [{"route": [{"destination": {"host": "api"}}]}]},
        }));
        let cluster = crate::mesh::cluster_resource(&"east".parse().unwrap(), "east.mesh", "PEM");
        for (original, compact) in [(service, true), (route, true), (cluster, false)] {
            let stored = StoredResource::new(original.clone());
            assert_eq!(matches!(stored.0, Form::Compact(_)), compact);
            assert_eq!(*stored.resource(), original);
            assert_eq!(stored.metadata(), &original.metadata);
            assert_eq!(
                (stored.api_version(), stored.kind()),
                (original.api_version.as_str(), original.kind.as_str())
            );
            // Byte for byte what the resource itself serializes to, key order included.
            assert_eq!(
                serde_json::to_string(&stored).unwrap(),
                serde_json::to_string(&original).unwrap()
            );
            let back: StoredResource =
                serde_json::from_slice(&serde_json::to_vec(&stored).unwrap()).unwrap();
            assert_eq!(back, stored);
        }
    }
}
