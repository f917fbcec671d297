//! The deterministic mesh state machine (see `mesh/mod.rs`).
//!
//! Every member applies the same committed entries in the same order and must end in the same
//! state, byte for byte: a follower may replace its state with the leader's snapshot at any
//! time. So nothing here reads the clock, a random source or the environment (time comes from
//! the command's `at`), and every collection iterates in a defined order.
//!
//! A command either applies whole or is refused whole: each handler checks everything it needs
//! before its first mutation, so a refusal never leaves half a change behind.

use std::borrow::Cow;
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::StoredResource;
use super::{
    AuditEntry, Command, CommandResult, JoinRequest, Member, RefusalCode, Role, TokenRecord,
    WatchEvent, WriteResult, token,
};
use crate::resource::{Kind, NATIVE_API_VERSION, ObjectMeta, Resource, ResourceKey, Scope};

/// How many audit entries and watch events the state keeps by default.
pub const RETAINED: usize = 10_000;

/// Format of [`MeshState::snapshot`]; bump on an incompatible change so an old binary refuses
/// a new snapshot instead of misreading it.
const SNAPSHOT_FORMAT: u32 = 1;

/// The mesh's replicated state. Applied in log order on every member.
#[derive(Debug, Clone)]
pub struct MeshState {
    /// `Arc`: the watch events of the current versions share them.
    resources: BTreeMap<ResourceKey, Arc<StoredResource>>,
    tokens: BTreeMap<String, TokenRecord>,
    members: BTreeMap<u64, Member>,
    audit: VecDeque<AuditEntry>,
    events: VecDeque<WatchEvent>,
    applied: u64,
    bootstrapped: bool,
    /// Highest node id ever allocated: Raft must never see an id again, even after its member
    /// left, so this outlives the members themselves.
    last_node_id: u64,
    /// Highest index some of whose watch events were dropped, once any were. Trimming drops
    /// whole indexes, so every event above it is still here.
    events_trimmed_through: Option<u64>,
    /// How many audit entries and events to keep. A local setting, not part of snapshots.
    retain: usize,
    /// What [`MeshState::compile`] made of each resource at its current version, so that a
    /// write compiles only what it changed. Local, never part of snapshots.
    pub(super) compiled: super::compile::Cache,
}

/// What a command handler says back; the `Err` side is a refusal, so handlers can use `?`.
type Outcome = Result<CommandResult, Refusal>;

/// Why a command was refused, before it becomes a [`CommandResult::Refused`].
struct Refusal {
    code: RefusalCode,
    reason: String,
}

fn refuse(code: RefusalCode, reason: impl Into<String>) -> Refusal {
    Refusal {
        code,
        reason: reason.into(),
    }
}

impl From<Refusal> for CommandResult {
    fn from(refusal: Refusal) -> Self {
        CommandResult::Refused {
            reason: refusal.reason,
            code: refusal.code,
        }
    }
}

impl Default for MeshState {
    fn default() -> Self {
        Self::with_retention(RETAINED)
    }
}

impl MeshState {
    pub fn new() -> Self {
        Self::default()
    }

    /// A state that keeps the last `retain` audit entries and watch events (at least one).
    pub fn with_retention(retain: usize) -> Self {
        Self {
            resources: BTreeMap::new(),
            tokens: BTreeMap::new(),
            members: BTreeMap::new(),
            audit: VecDeque::new(),
            events: VecDeque::new(),
            applied: 0,
            bootstrapped: false,
            last_node_id: 0,
            events_trimmed_through: None,
            retain: retain.max(1),
            compiled: Default::default(),
        }
    }

    /// Decodes and applies one committed entry; returns the JSON of a [`CommandResult`].
    /// Bytes that are not a command are refused (`Invalid`), never a panic: the log is input.
    pub fn apply_entry(&mut self, index: u64, bytes: &[u8]) -> Vec<u8> {
        let result = match serde_json::from_slice::<Command>(bytes) {
            Ok(command) => self.apply(index, command),
            Err(e) => {
                self.applied = index;
                refuse(
                    RefusalCode::Invalid,
                    format!("entry {index} is not a mesh command: {e}"),
                )
                .into()
            }
        };
        encode(&result)
    }

    /// Applies one command committed at `index`. `applied()` becomes `index` even when the
    /// command is refused: the entry was consumed either way.
    pub fn apply(&mut self, index: u64, command: Command) -> CommandResult {
        self.applied = index;
        let outcome = match command {
            Command::Apply {
                resources,
                expect,
                actor,
                at,
            } => self.apply_resources(index, &resources, &expect, &actor, &at),
            Command::Delete {
                key,
                expect,
                actor,
                at,
            } => Ok(self.delete(index, key, expect, &actor, &at)),
            Command::CreateToken { token, actor, at } => {
                self.create_token(index, token, &actor, &at)
            }
            Command::RevokeToken { id, actor, at } => self.revoke_token(index, &id, &actor, &at),
            Command::Bootstrap {
                member,
                cluster,
                token,
                at,
            } => self.bootstrap(index, member, cluster, token, &at),
            Command::Join {
                token_id,
                secret_sha256,
                request,
                at,
            } => self.join(index, &token_id, &secret_sha256, request, &at),
            Command::RemoveMember { node_id, actor, at } => {
                self.remove_member(index, node_id, &actor, &at)
            }
            Command::SetTrustBundle {
                cluster,
                trust_bundle,
                actor,
                at,
            } => self.set_trust_bundle(index, &cluster, trust_bundle, &actor, &at),
        };
        self.trim();
        outcome.unwrap_or_else(CommandResult::from)
    }

    /// The whole state as JSON; [`Self::restore`] reads it back.
    pub fn snapshot(&self) -> Vec<u8> {
        let image = ImageRef {
            format: SNAPSHOT_FORMAT,
            applied: self.applied,
            bootstrapped: self.bootstrapped,
            last_node_id: self.last_node_id,
            events_trimmed_through: self.events_trimmed_through,
            resources: self.resources.values().map(Arc::as_ref).collect(),
            tokens: self.tokens.values().collect(),
            members: self.members.values().collect(),
            audit: &self.audit,
            events: &self.events,
        };
        // JSON serialization fails only on maps with non-string keys; the image has none.
        serde_json::to_vec(&image).expect("the mesh state serializes to JSON")
    }

    /// Replaces the state with a [`Self::snapshot`]. On error the state is left unchanged.
    pub fn restore(&mut self, bytes: &[u8]) -> Result<(), String> {
        let image: Image = serde_json::from_slice(bytes)
            .map_err(|e| format!("mesh snapshot is not valid JSON of the state: {e}"))?;
        if image.format != SNAPSHOT_FORMAT {
            return Err(format!(
                "mesh snapshot format {} is not the supported {SNAPSHOT_FORMAT}",
                image.format
            ));
        }
        let mut resources = BTreeMap::new();
        for resource in image.resources {
            let key = resource_key(&resource)
                .map_err(|e| format!("mesh snapshot resource {:?}: {e}", resource.metadata.name))?;
            if let Some(dup) =
                resources.insert(key.clone(), Arc::new(StoredResource::new(resource)))
            {
                return Err(format!(
                    "mesh snapshot holds {key} twice (name {:?})",
                    dup.metadata().name
                ));
            }
        }
        let mut tokens = BTreeMap::new();
        for record in image.tokens {
            if let Some(dup) = tokens.insert(record.id.clone(), record) {
                return Err(format!("mesh snapshot holds token {} twice", dup.id));
            }
        }
        let mut members = BTreeMap::new();
        for member in image.members {
            if let Some(dup) = members.insert(member.node_id, member) {
                return Err(format!("mesh snapshot holds member {} twice", dup.node_id));
            }
        }
        let mut events = image.events;
        share_current_versions(&mut events, &resources);
        *self = Self {
            resources,
            tokens,
            members,
            audit: image.audit,
            events,
            applied: image.applied,
            bootstrapped: image.bootstrapped,
            last_node_id: image.last_node_id,
            events_trimmed_through: image.events_trimmed_through,
            retain: self.retain,
            // Versions restart with the restored resources: nothing compiled before applies.
            compiled: Default::default(),
        };
        self.trim();
        Ok(())
    }

    /// Index of the last applied entry.
    pub fn applied(&self) -> u64 {
        self.applied
    }

    pub fn is_bootstrapped(&self) -> bool {
        self.bootstrapped
    }

    /// The resource at `key`, parsed (see [`StoredResource`]).
    pub fn get(&self, key: &ResourceKey) -> Option<Cow<'_, Resource>> {
        self.resources.get(key).map(|stored| stored.resource())
    }

    /// The resource at `key` as stored: cheap to clone out of a read of the state, and
    /// serialized to JSON without parsing.
    pub fn stored(&self, key: &ResourceKey) -> Option<&Arc<StoredResource>> {
        self.resources.get(key)
    }

    /// Every resource of `kind` with its key, in key order (namespace, cluster, name).
    pub(crate) fn entries(
        &self,
        kind: Kind,
    ) -> impl Iterator<Item = (&ResourceKey, &Arc<StoredResource>)> {
        let first = ResourceKey {
            kind,
            namespace: String::new(),
            cluster: String::new(),
            name: String::new(),
        };
        self.resources
            .range(first..)
            .take_while(move |(key, _)| key.kind == kind)
    }

    /// Resources of `kind`, optionally limited to a namespace and/or cluster, ordered by key.
    pub fn list(
        &self,
        kind: Kind,
        namespace: Option<&str>,
        cluster: Option<&str>,
    ) -> Vec<&Arc<StoredResource>> {
        self.entries(kind)
            .filter(|(key, _)| {
                namespace.is_none_or(|ns| key.namespace == ns)
                    && cluster.is_none_or(|c| key.cluster == c)
            })
            .map(|(_, resource)| resource)
            .collect()
    }

    /// What an `Apply` of these resources would do now (for dry runs), without changing
    /// anything. Would-be writes carry no resourceVersion or updateTimestamp: those come from
    /// the entry that commits them. A resource without a key (which validation rejects, and
    /// `Apply` refuses) is reported as it would be created; [`apply_keys`] catches those and
    /// duplicates up front.
    pub fn preview(&self, resources: &[Resource], expect: &[Option<u64>]) -> Vec<WriteResult> {
        resources
            .iter()
            .enumerate()
            .map(|(i, given)| match resource_key(given) {
                Ok(key) => {
                    self.plan(key, given, expect.get(i).copied().flatten(), None)
                        .result
                }
                Err(_) => WriteResult::Created {
                    resource: given.clone(),
                },
            })
            .collect()
    }

    pub fn token(&self, id: &str) -> Option<&TokenRecord> {
        self.tokens.get(id)
    }

    /// Every token, by id.
    pub fn tokens(&self) -> Vec<&TokenRecord> {
        self.tokens.values().collect()
    }

    /// The record of bearer token `token` (`cw_<id>_<secret>`) if its secret matches, it has
    /// not expired at `now` (RFC 3339) and, if single-use, it was not used yet.
    pub fn authenticate(&self, token: &str, now: &str) -> Option<&TokenRecord> {
        let (id, secret) = token::parse(token)?;
        let record = self.tokens.get(id)?;
        let valid = token::hashes_equal(&record.secret_sha256, &token::hash(secret))
            && !(record.single_use && record.used)
            && !token::is_expired(record.expires_at.as_deref(), now);
        valid.then_some(record)
    }

    /// The join token with id `id` if it can still be used at `now` (RFC 3339): of the join
    /// role, not used yet, not expired. Its secret is not checked: the caller proves it
    /// knows the secret in other ways (see [`token::discovery_mac`]).
    pub fn join_token(&self, id: &str, now: &str) -> Option<&TokenRecord> {
        let record = self.tokens.get(id)?;
        let usable = record.role == Role::Join
            && !(record.single_use && record.used)
            && !token::is_expired(record.expires_at.as_deref(), now);
        usable.then_some(record)
    }

    /// Every member, by node id.
    pub fn members(&self) -> Vec<&Member> {
        self.members.values().collect()
    }

    pub fn member(&self, node_id: u64) -> Option<&Member> {
        self.members.get(&node_id)
    }

    /// Up to `limit` audit entries written after index `since`, oldest first.
    pub fn audit(&self, since: u64, limit: usize) -> Vec<&AuditEntry> {
        self.audit
            .iter()
            .filter(|e| e.index > since)
            .take(limit)
            .collect()
    }

    /// Watch events with index > `from`, oldest first; `Err(oldest retained index)` when some
    /// of them were already dropped (the watcher must list again: 410).
    pub fn events_since(&self, from: u64) -> Result<Vec<&WatchEvent>, u64> {
        if let Some(trimmed) = self.events_trimmed_through
            && from < trimmed
        {
            let oldest = self
                .events
                .front()
                .map_or(trimmed.saturating_add(1), |e| e.index);
            return Err(oldest);
        }
        Ok(self.events.iter().filter(|e| e.index > from).collect())
    }

    // ---- command handlers ----------------------------------------------------------------

    fn apply_resources(
        &mut self,
        index: u64,
        resources: &[Resource],
        expect: &[Option<u64>],
        actor: &str,
        at: &str,
    ) -> Outcome {
        let invalid = |reason: String| refuse(RefusalCode::Invalid, reason);
        if expect.len() > resources.len() {
            return Err(invalid(format!(
                "expect has {} entries for {} resources",
                expect.len(),
                resources.len()
            )));
        }
        let keys = apply_keys(resources).map_err(|(i, e)| invalid(format!("document {i}: {e}")))?;
        let planned: Vec<Planned> = keys
            .into_iter()
            .zip(resources)
            .enumerate()
            .map(|(i, (key, given))| {
                let expect = expect.get(i).copied().flatten();
                self.plan(key, given, expect, Some((index, at)))
            })
            .collect();
        let results = planned.iter().map(|p| p.result.clone()).collect();
        // All or nothing: one stale `expect` and the operator's view of everything is suspect.
        if planned
            .iter()
            .all(|p| !matches!(p.result, WriteResult::Conflict { .. }))
        {
            for p in planned {
                if let Some(resource) = p.write {
                    self.commit(index, at, actor, "apply", p.key, resource);
                }
            }
        }
        Ok(CommandResult::Applied { results })
    }

    fn delete(
        &mut self,
        index: u64,
        key: ResourceKey,
        expect: Option<u64>,
        actor: &str,
        at: &str,
    ) -> CommandResult {
        let current = self.stored(&key).map_or(0, |s| version_of(s.metadata()));
        let result = if let Some(want) = expect
            && want != current
        {
            WriteResult::Conflict { key, current }
        } else if let Some(resource) = self.resources.remove(&key) {
            self.compiled.lock().touch(key.kind);
            self.record(index, at, actor, "delete", format!("{key} (deleted)"));
            self.events.push_back(WatchEvent {
                index,
                kind: "DELETED".into(),
                resource: Arc::clone(&resource),
            });
            WriteResult::Deleted {
                resource: resource.resource().into_owned(),
            }
        } else {
            WriteResult::NotFound { key }
        };
        CommandResult::Deleted { result }
    }

    fn create_token(&mut self, index: u64, record: TokenRecord, actor: &str, at: &str) -> Outcome {
        if self.tokens.contains_key(&record.id) {
            return Err(refuse(
                RefusalCode::Conflict,
                format!("token {} already exists", record.id),
            ));
        }
        let target = format!("token {} ({})", record.id, role_name(record.role));
        self.record(index, at, actor, "token.create", target);
        self.tokens.insert(record.id.clone(), record);
        Ok(CommandResult::Done)
    }

    fn revoke_token(&mut self, index: u64, id: &str, actor: &str, at: &str) -> Outcome {
        let Some(record) = self.tokens.get(id) else {
            return Err(refuse(
                RefusalCode::NotFound,
                format!("token {id} does not exist"),
            ));
        };
        // Without an admin token that never expires the mesh would be locked out, now or when
        // the others expire; recovery then needs local access to a gateway's data directory.
        let lasting_admin = |t: &TokenRecord| t.role == Role::Admin && t.expires_at.is_none();
        if lasting_admin(record) && !self.tokens.values().any(|t| t.id != id && lasting_admin(t)) {
            return Err(refuse(
                RefusalCode::Conflict,
                format!(
                    "token {id} is the last admin token that does not expire; revoking it would \
                     lock everyone out of the mesh. Create another admin token first \
                     (causeway token create --role admin)"
                ),
            ));
        }
        let Some(record) = self.tokens.remove(id) else {
            return Err(refuse(
                RefusalCode::NotFound,
                format!("token {id} does not exist"),
            ));
        };
        let target = format!("token {} ({})", record.id, role_name(record.role));
        self.record(index, at, actor, "token.revoke", target);
        Ok(CommandResult::Done)
    }

    fn bootstrap(
        &mut self,
        index: u64,
        member: Member,
        mut cluster: Resource,
        record: TokenRecord,
        at: &str,
    ) -> Outcome {
        if self.bootstrapped {
            return Err(refuse(
                RefusalCode::Conflict,
                "the mesh is already bootstrapped",
            ));
        }
        let invalid = |reason: String| refuse(RefusalCode::Invalid, reason);
        let key = resource_key(&cluster).map_err(|e| invalid(format!("cluster: {e}")))?;
        if key.kind != Kind::Cluster {
            return Err(invalid(format!(
                "cluster: kind is {}, not Cluster",
                key.kind
            )));
        }
        if key.name != member.cluster.as_str() {
            return Err(invalid(format!(
                "cluster: metadata.name {:?} is not the member's cluster {:?}",
                key.name,
                member.cluster.as_str()
            )));
        }
        if member.node_id == 0 {
            return Err(invalid("member.nodeId: 0 is not a Raft node id".into()));
        }
        if let Some(other) = self.members.get(&member.node_id) {
            return Err(refuse(
                RefusalCode::Conflict,
                format!("node id {} is already member {}", other.node_id, other.name),
            ));
        }
        if self.tokens.contains_key(&record.id) {
            return Err(refuse(
                RefusalCode::Conflict,
                format!("token {} already exists", record.id),
            ));
        }

        // The founder's gateway is in its cluster's list like every joiner's, so removing
        // the member later finds it.
        upsert_gateway(&mut cluster.spec, &member);
        let actor = "bootstrap";
        self.write(index, at, actor, "bootstrap", key, cluster);
        self.record(index, at, actor, "bootstrap", member_target(&member));
        let target = format!("token {} ({})", record.id, role_name(record.role));
        self.record(index, at, actor, "token.create", target);
        self.last_node_id = self.last_node_id.max(member.node_id);
        self.members.insert(member.node_id, member);
        self.tokens.insert(record.id.clone(), record);
        self.bootstrapped = true;
        Ok(CommandResult::Done)
    }

    fn join(
        &mut self,
        index: u64,
        token_id: &str,
        secret_sha256: &str,
        request: JoinRequest,
        at: &str,
    ) -> Outcome {
        let unauthorized = |why: &str| {
            refuse(
                RefusalCode::Unauthorized,
                format!("join token {token_id}: {why}"),
            )
        };
        // The secret is checked before anything else about the token is said, so a guesser
        // learns nothing about it (used, expired, role) without holding it.
        let record = self
            .tokens
            .get(token_id)
            .filter(|t| token::hashes_equal(&t.secret_sha256, secret_sha256))
            .ok_or_else(|| unauthorized("unknown, or the secret does not match"))?;
        if record.role != Role::Join || !record.single_use {
            return Err(unauthorized("is not a single-use join token"));
        }
        if record.used {
            return Err(unauthorized("was already used"));
        }
        if token::is_expired(record.expires_at.as_deref(), at) {
            return Err(unauthorized(&format!(
                "expired at {}",
                record.expires_at.as_deref().unwrap_or("?")
            )));
        }
        if let Some(other) = self
            .members
            .values()
            .find(|m| m.cluster == request.cluster && m.name == request.name)
        {
            return Err(refuse(
                RefusalCode::Conflict,
                format!(
                    "gateway {} in cluster {} is already member {}",
                    request.name, request.cluster, other.node_id
                ),
            ));
        }
        let key = cluster_key(request.cluster.as_str());
        let mut cluster = match self.get(&key) {
            Some(existing) => {
                let stored = existing.spec.get("trustDomain").and_then(Value::as_str);
                if stored != Some(request.trust_domain.as_str()) {
                    return Err(refuse(
                        RefusalCode::Conflict,
                        format!(
                            "cluster {} has trust domain {:?}, not {:?}",
                            request.cluster,
                            stored.unwrap_or(""),
                            request.trust_domain
                        ),
                    ));
                }
                // The cluster's first gateway brought its CA; a later one must present the
                // same, or the others would refuse its certificates. (Sharing a cluster's CA
                // means copying its `ca/` directory to the new gateway's data dir.)
                let bundle = existing.spec.get("trustBundle").and_then(Value::as_str);
                if bundle.map(str::trim) != Some(request.trust_bundle.trim()) {
                    return Err(refuse(
                        RefusalCode::Conflict,
                        format!(
                            "cluster {} already has a CA and this gateway brings another; give it \
                             the cluster's CA (copy <data_dir>/ca from one of its gateways) \
                             before joining",
                            request.cluster
                        ),
                    ));
                }
                existing.into_owned()
            }
            None => cluster_resource(
                &request.cluster,
                &request.trust_domain,
                &request.trust_bundle,
            ),
        };

        let node_id = self.next_node_id();
        let member = Member {
            node_id,
            cluster: request.cluster,
            name: request.name,
            spiffe_id: request.spiffe_id,
            tunnel: request.tunnel,
            raft: request.raft,
            admin: request.admin,
        };
        upsert_gateway(&mut cluster.spec, &member);
        if let Some(record) = self.tokens.get_mut(token_id) {
            record.used = true;
        }
        let actor = format!("join:{token_id}");
        self.write(index, at, &actor, "join", key, cluster);
        self.record(index, at, &actor, "join", member_target(&member));
        self.last_node_id = node_id;
        self.members.insert(node_id, member);
        Ok(CommandResult::Joined { node_id })
    }

    fn remove_member(&mut self, index: u64, node_id: u64, actor: &str, at: &str) -> Outcome {
        let Some(member) = self.members.remove(&node_id) else {
            return Err(refuse(
                RefusalCode::NotFound,
                format!("member {node_id} does not exist"),
            ));
        };
        let key = cluster_key(member.cluster.as_str());
        if let Some(existing) = self.get(&key) {
            let mut cluster = existing.into_owned();
            if remove_gateway(&mut cluster.spec, &member.name) {
                self.write(index, at, actor, "member.remove", key, cluster);
            }
        }
        self.record(index, at, actor, "member.remove", member_target(&member));
        Ok(CommandResult::Done)
    }

    fn set_trust_bundle(
        &mut self,
        index: u64,
        cluster: &crate::model::ClusterName,
        bundle: String,
        actor: &str,
        at: &str,
    ) -> Outcome {
        if let Err(e) = crate::identity::TrustBundles::new().insert_pem(
            crate::identity::TrustDomain::parse("check.invalid")
                .map_err(|e| refuse(RefusalCode::Invalid, e.to_string()))?,
            &bundle,
        ) {
            return Err(refuse(
                RefusalCode::Invalid,
                format!("trust bundle of cluster {cluster}: {e}"),
            ));
        }
        let key = cluster_key(cluster.as_str());
        let Some(existing) = self.get(&key) else {
            return Err(refuse(
                RefusalCode::NotFound,
                format!("cluster {cluster} does not exist"),
            ));
        };
        let mut resource = existing.into_owned();
        if let Some(spec) = resource.spec.as_object_mut() {
            spec.insert("trustBundle".into(), Value::String(bundle));
        }
        self.write(index, at, actor, "ca.bundle", key, resource);
        Ok(CommandResult::Done)
    }

    // ---- helpers -------------------------------------------------------------------------

    /// What writing `given` at `key` would do; `stamp` = (index, at) of the committing entry,
    /// none for a preview.
    fn plan(
        &self,
        key: ResourceKey,
        given: &Resource,
        expect: Option<u64>,
        stamp: Option<(u64, &str)>,
    ) -> Planned {
        let existing = self.get(&key);
        let current = existing.as_ref().map_or(0, |e| version_of(&e.metadata));
        if let Some(want) = expect
            && want != current
        {
            return Planned {
                result: WriteResult::Conflict {
                    key: key.clone(),
                    current,
                },
                key,
                write: None,
            };
        }
        match existing {
            Some(stored) if same_content(&stored, given) => Planned {
                result: WriteResult::Unchanged {
                    resource: stored.into_owned(),
                },
                key,
                write: None,
            },
            _ => {
                let resource = stored_form(&key, given, existing.as_deref(), stamp);
                let result = if existing.is_some() {
                    WriteResult::Updated {
                        resource: resource.clone(),
                    }
                } else {
                    WriteResult::Created {
                        resource: resource.clone(),
                    }
                };
                Planned {
                    key,
                    result,
                    write: Some(resource),
                }
            }
        }
    }

    /// Writes a resource the state itself derived (join, bootstrap, member removal), unless
    /// its content is unchanged.
    fn write(
        &mut self,
        index: u64,
        at: &str,
        actor: &str,
        action: &str,
        key: ResourceKey,
        given: Resource,
    ) {
        let planned = self.plan(key, &given, None, Some((index, at)));
        if let Some(resource) = planned.write {
            self.commit(index, at, actor, action, planned.key, resource);
        }
    }

    fn commit(
        &mut self,
        index: u64,
        at: &str,
        actor: &str,
        action: &str,
        key: ResourceKey,
        resource: Resource,
    ) {
        let (event, verb) = if self.resources.contains_key(&key) {
            ("MODIFIED", "updated")
        } else {
            ("ADDED", "created")
        };
        self.record(index, at, actor, action, format!("{key} ({verb})"));
        let resource = Arc::new(StoredResource::new(resource));
        self.events.push_back(WatchEvent {
            index,
            kind: event.into(),
            resource: Arc::clone(&resource),
        });
        self.compiled.lock().touch(key.kind);
        self.resources.insert(key, resource);
    }

    fn record(&mut self, index: u64, at: &str, actor: &str, action: &str, target: String) {
        self.audit.push_back(AuditEntry {
            index,
            at: at.to_string(),
            actor: actor.to_string(),
            action: action.to_string(),
            target,
        });
    }

    fn next_node_id(&self) -> u64 {
        let highest = self.members.keys().next_back().copied().unwrap_or(0);
        self.last_node_id.max(highest).saturating_add(1)
    }

    /// Keeps the last `retain` audit entries and events. Events go by whole index: a watcher
    /// resuming from just before an index must get all of its events or a 410, never some.
    fn trim(&mut self) {
        while self.audit.len() > self.retain {
            self.audit.pop_front();
        }
        while self.events.len() > self.retain {
            if let Some(dropped) = self.events.pop_front() {
                self.events_trimmed_through = Some(dropped.index);
            }
        }
        if let Some(trimmed) = self.events_trimmed_through {
            while self.events.front().is_some_and(|e| e.index <= trimmed) {
                self.events.pop_front();
            }
        }
    }
}

/// Points each restored event that carries a resource's current version at the state's copy,
/// as [`MeshState::commit`] would have: a snapshot holds them apart.
fn share_current_versions(
    events: &mut VecDeque<WatchEvent>,
    resources: &BTreeMap<ResourceKey, Arc<StoredResource>>,
) {
    for event in events {
        let current = resource_key(&event.resource.resource())
            .ok()
            .and_then(|key| resources.get(&key));
        if let Some(current) = current
            && **current == *event.resource
        {
            event.resource = Arc::clone(current);
        }
    }
}

/// One resource's planned fate in a write.
struct Planned {
    key: ResourceKey,
    result: WriteResult,
    /// What to store, when something changes.
    write: Option<Resource>,
}

/// The state as [`MeshState::snapshot`] writes it.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ImageRef<'a> {
    format: u32,
    applied: u64,
    bootstrapped: bool,
    last_node_id: u64,
    events_trimmed_through: Option<u64>,
    resources: Vec<&'a StoredResource>,
    tokens: Vec<&'a TokenRecord>,
    members: Vec<&'a Member>,
    audit: &'a VecDeque<AuditEntry>,
    events: &'a VecDeque<WatchEvent>,
}

/// The state as [`MeshState::restore`] reads it.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Image {
    format: u32,
    applied: u64,
    bootstrapped: bool,
    last_node_id: u64,
    events_trimmed_through: Option<u64>,
    resources: Vec<Resource>,
    tokens: Vec<TokenRecord>,
    members: Vec<Member>,
    audit: VecDeque<AuditEntry>,
    events: VecDeque<WatchEvent>,
}

/// Where `resource` is stored: its kind from `apiVersion` + `kind`, and the namespace and
/// cluster its kind's [`Scope`] has (a `Cluster` has neither, whatever its metadata says).
pub fn resource_key(resource: &Resource) -> Result<ResourceKey, String> {
    let kind = Kind::from_api(&resource.api_version, &resource.kind).ok_or_else(|| {
        format!(
            "apiVersion {:?} with kind {:?} is not a kind the mesh stores",
            resource.api_version, resource.kind
        )
    })?;
    let meta = &resource.metadata;
    if meta.name.is_empty() {
        return Err("metadata.name: required".into());
    }
    let required = |field: &str, value: &Option<String>| match value.as_deref() {
        Some(v) if !v.is_empty() => Ok(v.to_string()),
        _ => Err(format!("metadata.{field}: required for {kind}")),
    };
    let (namespace, cluster) = match kind.scope() {
        Scope::Mesh => (String::new(), String::new()),
        Scope::Namespaced => (required("namespace", &meta.namespace)?, String::new()),
        Scope::ClusterLocal => (
            required("namespace", &meta.namespace)?,
            required("cluster", &meta.cluster)?,
        ),
    };
    Ok(ResourceKey {
        kind,
        namespace,
        cluster,
        name: meta.name.clone(),
    })
}

/// The keys of an `Apply`'s resources, or the first document (0-based) that has none or
/// names the same resource as an earlier one — what `Apply` refuses as `Invalid`.
pub fn apply_keys(resources: &[Resource]) -> Result<Vec<ResourceKey>, (usize, String)> {
    let mut seen: BTreeMap<ResourceKey, usize> = BTreeMap::new();
    let mut keys = Vec::with_capacity(resources.len());
    for (i, resource) in resources.iter().enumerate() {
        let key = resource_key(resource).map_err(|e| (i, e))?;
        if let Some(first) = seen.insert(key.clone(), i) {
            return Err((i, format!("{key} is also document {first}")));
        }
        keys.push(key);
    }
    Ok(keys)
}

/// `resource` as stored at `key`: server-owned metadata set, `status` dropped (the server
/// owns it, and has none yet), namespace and cluster exactly as the key says.
fn stored_form(
    key: &ResourceKey,
    given: &Resource,
    existing: Option<&Resource>,
    stamp: Option<(u64, &str)>,
) -> Resource {
    let mut resource = given.clone();
    let meta = &mut resource.metadata;
    meta.namespace = (!key.namespace.is_empty()).then(|| key.namespace.clone());
    meta.cluster = (!key.cluster.is_empty()).then(|| key.cluster.clone());
    meta.resource_version = stamp.map(|(index, _)| index.to_string());
    meta.creation_timestamp = existing
        .and_then(|e| e.metadata.creation_timestamp.clone())
        .or_else(|| stamp.map(|(_, at)| at.to_string()));
    meta.update_timestamp = stamp.map(|(_, at)| at.to_string());
    resource.status = None;
    resource
}

/// Whether a write would change nothing a reader can see (server metadata aside).
fn same_content(stored: &Resource, given: &Resource) -> bool {
    stored.api_version == given.api_version
        && stored.kind == given.kind
        && stored.metadata.labels == given.metadata.labels
        && stored.metadata.annotations == given.metadata.annotations
        && stored.spec == given.spec
}

/// A stored resource's version (its `resourceVersion`; 0 if unreadable, which we never write).
fn version_of(metadata: &ObjectMeta) -> u64 {
    metadata
        .resource_version
        .as_deref()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn cluster_key(name: &str) -> ResourceKey {
    ResourceKey {
        kind: Kind::Cluster,
        namespace: String::new(),
        cluster: String::new(),
        name: name.to_string(),
    }
}

/// A new `Cluster` with its trust domain and CA, and no gateways yet: the founding gateway
/// (`Command::Bootstrap`) and each cluster's first joiner start from it; applying the command
/// adds the gateway itself.
pub fn cluster_resource(
    cluster: &crate::model::ClusterName,
    trust_domain: &str,
    trust_bundle: &str,
) -> Resource {
    Resource {
        api_version: NATIVE_API_VERSION.to_string(),
        kind: "Cluster".to_string(),
        metadata: ObjectMeta {
            name: cluster.to_string(),
            ..ObjectMeta::default()
        },
        spec: json!({
            "trustDomain": trust_domain,
            "trustBundle": trust_bundle,
            "gateways": [],
        }),
        status: None,
    }
}

/// Adds `member`'s gateway to a Cluster spec's `gateways`, replacing one of the same name.
fn upsert_gateway(spec: &mut Value, member: &Member) {
    let entry = json!({
        "name": member.name,
        "tunnelAddress": member.tunnel.to_string(),
        "raftAddress": member.raft.to_string(),
        "adminAddress": member.admin.to_string(),
    });
    if !spec.is_object() {
        *spec = json!({});
    }
    let Some(spec) = spec.as_object_mut() else {
        return;
    };
    let gateways = spec.entry("gateways").or_insert_with(|| json!([]));
    if !gateways.is_array() {
        *gateways = json!([]);
    }
    if let Some(list) = gateways.as_array_mut() {
        match list.iter_mut().find(|g| gateway_named(g, &member.name)) {
            Some(slot) => *slot = entry,
            None => list.push(entry),
        }
    }
}

/// Removes gateway `name` from a Cluster spec's `gateways`; whether it was there.
fn remove_gateway(spec: &mut Value, name: &str) -> bool {
    let Some(list) = spec.get_mut("gateways").and_then(Value::as_array_mut) else {
        return false;
    };
    let before = list.len();
    list.retain(|g| !gateway_named(g, name));
    list.len() != before
}

fn gateway_named(gateway: &Value, name: &str) -> bool {
    gateway.get("name").and_then(Value::as_str) == Some(name)
}

fn member_target(member: &Member) -> String {
    format!(
        "member {} ({} in cluster {})",
        member.node_id, member.name, member.cluster
    )
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Viewer => "viewer",
        Role::Operator => "operator",
        Role::Admin => "admin",
        Role::Join => "join",
    }
}

fn encode(result: &CommandResult) -> Vec<u8> {
    // Results hold only string-keyed maps, so this cannot fail.
    serde_json::to_vec(result).expect("a command result serializes to JSON")
}

#[cfg(test)]
pub(super) mod tests {
    use std::net::SocketAddr;

    use super::*;
    use crate::model::ClusterName;

    pub(crate) fn at(index: u64) -> String {
        format!("2025-01-01T00:{:02}:{:02}Z", index / 60, index % 60)
    }

    pub(crate) fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    pub(crate) fn res(
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        cluster: Option<&str>,
        name: &str,
        spec: Value,
    ) -> Resource {
        Resource {
            api_version: api_version.into(),
            kind: kind.into(),
            metadata: ObjectMeta {
                name: name.into(),
                namespace: namespace.map(Into::into),
                cluster: cluster.map(Into::into),
                ..ObjectMeta::default()
            },
            spec,
            status: None,
        }
    }

    fn vs(name: &str, host: &str) -> Resource {
        res(
            "networking.istio.io/v1",
            "VirtualService",
            Some("prod"),
            None,
            name,
            json!({"hosts": [host]}),
        )
    }

    fn vs_key(name: &str) -> ResourceKey {
        ResourceKey {
            kind: Kind::IstioVirtualService,
            namespace: "prod".into(),
            cluster: String::new(),
            name: name.into(),
        }
    }

    pub(crate) fn apply(
        state: &mut MeshState,
        index: u64,
        resources: Vec<Resource>,
        expect: Vec<Option<u64>>,
    ) -> Vec<WriteResult> {
        let command = Command::Apply {
            resources,
            expect,
            actor: "tok1 (ci)".into(),
            at: at(index),
        };
        match state.apply(index, command) {
            CommandResult::Applied { results } => results,
            other => panic!("apply refused: {other:?}"),
        }
    }

    /// Deletes `key` at `index` (for other modules' tests).
    pub(crate) fn delete_for_tests(state: &mut MeshState, index: u64, key: ResourceKey) {
        delete(state, index, key, None);
    }

    fn delete(
        state: &mut MeshState,
        index: u64,
        key: ResourceKey,
        expect: Option<u64>,
    ) -> WriteResult {
        let command = Command::Delete {
            key,
            expect,
            actor: "tok1".into(),
            at: at(index),
        };
        match state.apply(index, command) {
            CommandResult::Deleted { result } => result,
            other => panic!("delete refused: {other:?}"),
        }
    }

    fn stored_version(r: &WriteResult) -> Option<&str> {
        match r {
            WriteResult::Created { resource }
            | WriteResult::Updated { resource }
            | WriteResult::Unchanged { resource }
            | WriteResult::Deleted { resource } => resource.metadata.resource_version.as_deref(),
            _ => None,
        }
    }

    fn refused_code(result: &CommandResult) -> Option<RefusalCode> {
        match result {
            CommandResult::Refused { code, .. } => Some(*code),
            _ => None,
        }
    }

    pub(crate) fn founder() -> Member {
        Member {
            node_id: 1,
            cluster: ClusterName::new("east").unwrap(),
            name: "gw-a".into(),
            spiffe_id: "spiffe://east.mesh/gateway/gw-a".into(),
            tunnel: addr("10.0.0.1:4433"),
            raft: addr("10.0.0.1:7000"),
            admin: addr("10.0.0.1:8080"),
        }
    }

    pub(crate) fn cluster_resource(name: &str, td: &str, bundle: &str) -> Resource {
        res(
            NATIVE_API_VERSION,
            "Cluster",
            None,
            None,
            name,
            json!({"trustDomain": td, "trustBundle": bundle}),
        )
    }

    fn admin_token(id: &str, secret: &str) -> TokenRecord {
        TokenRecord {
            id: id.into(),
            secret_sha256: token::hash(secret),
            role: Role::Admin,
            description: "bootstrap".into(),
            created_at: at(0),
            expires_at: None,
            single_use: false,
            used: false,
        }
    }

    fn join_token(id: &str, secret: &str, expires_at: &str) -> TokenRecord {
        TokenRecord {
            id: id.into(),
            secret_sha256: token::hash(secret),
            role: Role::Join,
            description: "join".into(),
            created_at: at(0),
            expires_at: Some(expires_at.into()),
            single_use: true,
            used: false,
        }
    }

    pub(crate) fn bootstrapped() -> MeshState {
        let mut state = MeshState::new();
        let result = state.apply(
            1,
            Command::Bootstrap {
                member: founder(),
                cluster: cluster_resource("east", "east.mesh", "EAST-PEM"),
                token: admin_token("aaaaaaaaaaaa", "admin-secret"),
                at: at(1),
            },
        );
        assert_eq!(result, CommandResult::Done);
        state
    }

    fn create_token(state: &mut MeshState, index: u64, record: TokenRecord) -> CommandResult {
        state.apply(
            index,
            Command::CreateToken {
                token: record,
                actor: "aaaaaaaaaaaa".into(),
                at: at(index),
            },
        )
    }

    fn join_request(cluster: &str, name: &str, td: &str, bundle: &str, host: u8) -> JoinRequest {
        JoinRequest {
            cluster: ClusterName::new(cluster).unwrap(),
            trust_domain: td.into(),
            trust_bundle: bundle.into(),
            name: name.into(),
            spiffe_id: format!("spiffe://{td}/gateway/{name}"),
            tunnel: addr(&format!("10.0.1.{host}:4433")),
            raft: addr(&format!("10.0.1.{host}:7000")),
            admin: addr(&format!("10.0.1.{host}:8080")),
        }
    }

    fn join(
        state: &mut MeshState,
        index: u64,
        token_id: &str,
        secret: &str,
        request: JoinRequest,
    ) -> CommandResult {
        state.apply(
            index,
            Command::Join {
                token_id: token_id.into(),
                secret_sha256: token::hash(secret),
                request,
                at: at(index),
            },
        )
    }

    fn gateway_names(state: &MeshState, cluster: &str) -> Vec<String> {
        state.get(&cluster_key(cluster)).unwrap().spec["gateways"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| g["name"].as_str().unwrap().to_string())
            .collect()
    }

    #[test]
    fn apply_sets_versions_and_timestamps() {
        let mut state = MeshState::new();
        let mut doc = vs("api", "api.prod");
        doc.status = Some(json!({"conditions": []}));
        doc.metadata.resource_version = Some("99".into());
        let results = apply(&mut state, 3, vec![doc.clone()], vec![]);
        assert!(matches!(results[0], WriteResult::Created { .. }));
        assert_eq!(stored_version(&results[0]), Some("3"));
        let stored = state.get(&vs_key("api")).unwrap();
        assert_eq!(
            stored.metadata.creation_timestamp.as_deref(),
            Some(at(3).as_str())
        );
        assert_eq!(
            stored.metadata.update_timestamp.as_deref(),
            Some(at(3).as_str())
        );
        assert_eq!(stored.status, None);
        assert_eq!(state.applied(), 3);

        // Same content: nothing changes, not even the version.
        let results = apply(&mut state, 4, vec![doc.clone()], vec![]);
        assert!(matches!(results[0], WriteResult::Unchanged { .. }));
        assert_eq!(stored_version(&results[0]), Some("3"));
        assert_eq!(state.applied(), 4);
        assert_eq!(state.events_since(0).unwrap().len(), 1);

        // A label change is a change; creation time stays.
        doc.metadata.labels.insert("team".into(), "a".into());
        let results = apply(&mut state, 5, vec![doc], vec![Some(3)]);
        assert!(matches!(results[0], WriteResult::Updated { .. }));
        let stored = state.get(&vs_key("api")).unwrap();
        assert_eq!(stored.metadata.resource_version.as_deref(), Some("5"));
        assert_eq!(
            stored.metadata.creation_timestamp.as_deref(),
            Some(at(3).as_str())
        );
        assert_eq!(
            stored.metadata.update_timestamp.as_deref(),
            Some(at(5).as_str())
        );

        let kinds: Vec<_> = state
            .events_since(0)
            .unwrap()
            .iter()
            .map(|e| (e.index, e.kind.as_str()))
            .collect();
        assert_eq!(kinds, [(3, "ADDED"), (5, "MODIFIED")]);
    }

    #[test]
    fn key_order_in_spec_is_not_a_change() {
        let mut state = MeshState::new();
        let a = res(
            "causeway.dev/v1alpha1",
            "Route",
            Some("prod"),
            None,
            "r",
            json!({"hosts": ["a"], "http": []}),
        );
        let b = res(
            "causeway.dev/v1alpha1",
            "Route",
            Some("prod"),
            None,
            "r",
            json!({"http": [], "hosts": ["a"]}),
        );
        apply(&mut state, 1, vec![a], vec![]);
        assert!(matches!(
            apply(&mut state, 2, vec![b], vec![])[0],
            WriteResult::Unchanged { .. }
        ));
    }

    #[test]
    fn one_conflict_makes_the_whole_apply_a_no_op() {
        let mut state = MeshState::new();
        apply(&mut state, 1, vec![vs("a", "a")], vec![]);
        let before = state.snapshot();
        let results = apply(
            &mut state,
            2,
            vec![vs("a", "changed"), vs("b", "b")],
            vec![Some(7), Some(0)],
        );
        assert_eq!(
            results[0],
            WriteResult::Conflict {
                key: vs_key("a"),
                current: 1
            }
        );
        assert!(matches!(results[1], WriteResult::Created { .. }));
        assert!(state.get(&vs_key("b")).is_none());
        assert_eq!(state.get(&vs_key("a")).unwrap().spec["hosts"][0], "a");
        assert_eq!(state.events_since(1).unwrap().len(), 0);
        assert_eq!(state.audit(1, 10).len(), 0);
        // Only the applied index moved.
        let mut expected = MeshState::new();
        expected.restore(&before).unwrap();
        expected.applied = 2;
        assert_eq!(state.snapshot(), expected.snapshot());

        // Some(0) = must not exist yet.
        let results = apply(&mut state, 3, vec![vs("a", "x")], vec![Some(0)]);
        assert_eq!(
            results[0],
            WriteResult::Conflict {
                key: vs_key("a"),
                current: 1
            }
        );
        let results = apply(
            &mut state,
            4,
            vec![vs("a", "x"), vs("b", "b")],
            vec![Some(1), Some(0)],
        );
        assert!(matches!(results[0], WriteResult::Updated { .. }));
        assert!(matches!(results[1], WriteResult::Created { .. }));
    }

    #[test]
    fn malformed_applies_are_refused_whole() {
        let mut state = MeshState::new();
        let unknown = res(
            "example.com/v1",
            "Thing",
            Some("prod"),
            None,
            "x",
            json!({}),
        );
        let no_ns = res("causeway.dev/v1alpha1", "Route", None, None, "r", json!({}));
        let no_cluster = res(
            "causeway.dev/v1alpha1",
            "Service",
            Some("prod"),
            None,
            "s",
            json!({}),
        );
        for docs in [
            vec![vs("a", "a"), unknown],
            vec![no_ns],
            vec![no_cluster],
            vec![vs("a", "a"), vs("a", "b")],
        ] {
            let result = state.apply(
                1,
                Command::Apply {
                    resources: docs,
                    expect: vec![],
                    actor: "t".into(),
                    at: at(1),
                },
            );
            assert_eq!(
                refused_code(&result),
                Some(RefusalCode::Invalid),
                "{result:?}"
            );
        }
        let result = state.apply(
            2,
            Command::Apply {
                resources: vec![vs("a", "a")],
                expect: vec![None, None],
                actor: "t".into(),
                at: at(2),
            },
        );
        assert_eq!(refused_code(&result), Some(RefusalCode::Invalid));
        assert!(state.list(Kind::IstioVirtualService, None, None).is_empty());
        assert_eq!(state.applied(), 2);
        assert_eq!(apply_keys(&[vs("a", "a"), vs("a", "b")]).unwrap_err().0, 1);
    }

    #[test]
    fn scope_decides_namespace_and_cluster() {
        let mut state = MeshState::new();
        let mut cluster = cluster_resource("west", "west.mesh", "PEM");
        cluster.metadata.namespace = Some("ignored".into());
        let mut route = res(
            "causeway.dev/v1alpha1",
            "Route",
            Some("prod"),
            Some("east"),
            "r",
            json!({}),
        );
        route.metadata.cluster = Some("east".into());
        let svc = res(
            "causeway.dev/v1alpha1",
            "Service",
            Some("prod"),
            Some("east"),
            "api",
            json!({}),
        );
        apply(&mut state, 1, vec![cluster, route, svc], vec![]);
        let c = state.get(&cluster_key("west")).unwrap();
        assert_eq!(c.metadata.namespace, None);
        let r = &state.list(Kind::Route, Some("prod"), None)[0];
        assert_eq!(r.metadata().cluster, None);
        assert_eq!(
            state.list(Kind::Service, Some("prod"), Some("east")).len(),
            1
        );
        assert_eq!(
            state.list(Kind::Service, Some("prod"), Some("west")).len(),
            0
        );
        assert_eq!(state.list(Kind::Service, Some("other"), None).len(), 0);
        let svc_key = ResourceKey {
            kind: Kind::Service,
            namespace: "prod".into(),
            cluster: "east".into(),
            name: "api".into(),
        };
        assert!(state.get(&svc_key).is_some());
    }

    #[test]
    fn list_is_ordered_by_key() {
        let mut state = MeshState::new();
        let mut other_ns = vs("a", "a");
        other_ns.metadata.namespace = Some("dev".into());
        apply(
            &mut state,
            1,
            vec![
                vs("c", "c"),
                vs("b", "b"),
                other_ns,
                cluster_resource("x", "x.mesh", ""),
            ],
            vec![],
        );
        let names: Vec<_> = state
            .list(Kind::IstioVirtualService, None, None)
            .iter()
            .map(|r| {
                format!(
                    "{}/{}",
                    r.metadata().namespace.as_deref().unwrap(),
                    r.metadata().name
                )
            })
            .collect();
        assert_eq!(names, ["dev/a", "prod/b", "prod/c"]);
        assert_eq!(
            state
                .list(Kind::IstioVirtualService, Some("prod"), None)
                .len(),
            2
        );
        assert_eq!(state.list(Kind::Cluster, None, None).len(), 1);
    }

    #[test]
    fn preview_changes_nothing() {
        let mut state = MeshState::new();
        apply(&mut state, 1, vec![vs("a", "a")], vec![]);
        let before = state.snapshot();
        let results = state.preview(
            &[vs("a", "a"), vs("b", "b"), vs("a", "new")],
            &[None, None, Some(5)],
        );
        assert!(
            matches!(&results[0], WriteResult::Unchanged { resource } if resource.metadata.resource_version.as_deref() == Some("1"))
        );
        assert!(
            matches!(&results[1], WriteResult::Created { resource } if resource.metadata.resource_version.is_none())
        );
        assert_eq!(
            results[2],
            WriteResult::Conflict {
                key: vs_key("a"),
                current: 1
            }
        );
        let results = state.preview(&[vs("a", "new")], &[Some(1)]);
        assert!(matches!(&results[0], WriteResult::Updated { resource }
            if resource.metadata.creation_timestamp.as_deref() == Some(at(1).as_str())
                && resource.metadata.update_timestamp.is_none()));
        assert_eq!(state.snapshot(), before);
    }

    #[test]
    fn delete_honours_expect() {
        let mut state = MeshState::new();
        apply(&mut state, 1, vec![vs("a", "a")], vec![]);
        assert_eq!(
            delete(&mut state, 2, vs_key("a"), Some(9)),
            WriteResult::Conflict {
                key: vs_key("a"),
                current: 1
            }
        );
        assert!(state.get(&vs_key("a")).is_some());
        let result = delete(&mut state, 3, vs_key("a"), Some(1));
        assert!(
            matches!(&result, WriteResult::Deleted { resource } if resource.metadata.name == "a")
        );
        assert!(state.get(&vs_key("a")).is_none());
        assert_eq!(
            delete(&mut state, 4, vs_key("a"), None),
            WriteResult::NotFound { key: vs_key("a") }
        );
        assert_eq!(
            delete(&mut state, 5, vs_key("a"), Some(3)),
            WriteResult::Conflict {
                key: vs_key("a"),
                current: 0
            }
        );
        let events = state.events_since(2).unwrap();
        assert_eq!(events.len(), 1);
        assert_eq!((events[0].index, events[0].kind.as_str()), (3, "DELETED"));
        assert_eq!(
            events[0].resource.metadata().resource_version.as_deref(),
            Some("1")
        );
        let audit: Vec<_> = state
            .audit(0, 100)
            .iter()
            .map(|e| (e.action.as_str(), e.target.as_str()))
            .collect();
        assert_eq!(
            audit,
            [
                (
                    "apply",
                    "VirtualService.networking.istio.io prod/a (created)"
                ),
                (
                    "delete",
                    "VirtualService.networking.istio.io prod/a (deleted)"
                ),
            ]
        );
    }

    #[test]
    fn audit_records_each_changed_resource() {
        let mut state = MeshState::new();
        let svc = res(
            "causeway.dev/v1alpha1",
            "Service",
            Some("prod"),
            Some("east"),
            "api",
            json!({}),
        );
        apply(&mut state, 1, vec![vs("a", "a"), svc.clone()], vec![]);
        apply(&mut state, 2, vec![vs("a", "a"), vs("b", "b")], vec![]);
        let entries = state.audit(0, 100);
        let seen: Vec<_> = entries
            .iter()
            .map(|e| (e.index, e.actor.as_str(), e.target.as_str()))
            .collect();
        assert_eq!(
            seen,
            [
                (
                    1,
                    "tok1 (ci)",
                    "VirtualService.networking.istio.io prod/a (created)"
                ),
                (1, "tok1 (ci)", "Service prod/api in cluster east (created)"),
                (
                    2,
                    "tok1 (ci)",
                    "VirtualService.networking.istio.io prod/b (created)"
                ),
            ]
        );
        assert_eq!(entries[0].at, at(1));
        assert_eq!(state.audit(1, 100).len(), 1);
        assert_eq!(state.audit(0, 2).len(), 2);
    }

    #[test]
    fn events_since_reports_trimmed_history() {
        let mut state = MeshState::with_retention(3);
        assert_eq!(state.events_since(0).unwrap().len(), 0);
        // Index 1 writes two resources; then one per index.
        apply(&mut state, 1, vec![vs("a", "1"), vs("b", "1")], vec![]);
        apply(&mut state, 2, vec![vs("a", "2")], vec![]);
        assert_eq!(state.events_since(0).unwrap().len(), 3);
        // A fourth event trims one of index 1's two: both go, so nobody gets half of index 1.
        apply(&mut state, 4, vec![vs("a", "4")], vec![]);
        let indexes: Vec<_> = state
            .events_since(1)
            .unwrap()
            .iter()
            .map(|e| e.index)
            .collect();
        assert_eq!(indexes, [2, 4]);
        assert_eq!(state.events_since(0), Err(2));
        assert_eq!(state.events_since(3).unwrap().len(), 1);
        assert!(state.events_since(4).unwrap().is_empty());
        assert!(state.events_since(100).unwrap().is_empty());
        apply(&mut state, 5, vec![vs("a", "5")], vec![]);
        apply(&mut state, 6, vec![vs("a", "6")], vec![]);
        assert_eq!(state.events_since(1), Err(4));
        assert_eq!(state.events_since(3).map(|e| e.len()), Ok(3));
        assert_eq!(state.audit(0, 100).len(), 3);

        // An index with more events than the limit is dropped whole.
        let mut state = MeshState::with_retention(1);
        apply(&mut state, 1, vec![vs("a", "1"), vs("b", "1")], vec![]);
        assert_eq!(state.events_since(0), Err(2));
        assert!(state.events_since(1).unwrap().is_empty());
    }

    #[test]
    fn tokens_authenticate() {
        let mut state = bootstrapped();
        let (admin_id, secret) = ("aaaaaaaaaaaa", "admin-secret");
        // Secrets shaped like generated ones parse; this one is too short, so craft a real one.
        let (token, id, sha) = token::generate();
        let record = TokenRecord {
            id: id.clone(),
            secret_sha256: sha,
            role: Role::Operator,
            description: "ci".into(),
            created_at: at(2),
            expires_at: Some("2025-06-01T00:00:00Z".into()),
            single_use: false,
            used: false,
        };
        assert_eq!(
            create_token(&mut state, 2, record.clone()),
            CommandResult::Done
        );
        assert_eq!(
            refused_code(&create_token(&mut state, 3, record)),
            Some(RefusalCode::Conflict)
        );
        let now = "2025-05-01T00:00:00Z";
        assert_eq!(
            state.authenticate(&token, now).map(|t| t.role),
            Some(Role::Operator)
        );
        assert!(
            state.authenticate(&token, "2025-06-01T00:00:00Z").is_none(),
            "expired"
        );
        let (_, wrong_secret) = token::parse(&token::generate().0)
            .map(|(i, s)| (i.to_string(), s.to_string()))
            .unwrap();
        assert!(
            state
                .authenticate(&format!("cw_{id}_{wrong_secret}"), now)
                .is_none(),
            "wrong secret"
        );
        assert!(state.authenticate("cw_garbage", now).is_none());
        assert!(
            state
                .authenticate(&format!("cw_{admin_id}_{secret}"), now)
                .is_none(),
            "secret too short to be a token"
        );
        assert_eq!(state.tokens().len(), 2);

        // Used single-use tokens no longer authenticate.
        let (join_tok, join_id, join_sha) = token::generate();
        let mut record = join_token(&join_id, "x", "2025-06-01T00:00:00Z");
        record.secret_sha256 = join_sha;
        create_token(&mut state, 4, record);
        assert!(state.authenticate(&join_tok, now).is_some());
        let secret = token::parse(&join_tok).unwrap().1.to_string();
        assert!(matches!(
            join(
                &mut state,
                5,
                &join_id,
                &secret,
                join_request("west", "gw-b", "west.mesh", "W", 2)
            ),
            CommandResult::Joined { .. }
        ));
        assert!(state.authenticate(&join_tok, now).is_none(), "used");

        // Revoked tokens neither.
        let revoke = |state: &mut MeshState, index, id: &str| {
            state.apply(
                index,
                Command::RevokeToken {
                    id: id.into(),
                    actor: admin_id.into(),
                    at: at(index),
                },
            )
        };
        assert_eq!(revoke(&mut state, 6, &id), CommandResult::Done);
        assert!(state.authenticate(&token, now).is_none(), "revoked");
        assert!(state.token(&id).is_none());
        assert_eq!(
            refused_code(&revoke(&mut state, 7, &id)),
            Some(RefusalCode::NotFound)
        );
        let actions: Vec<_> = state
            .audit(1, 100)
            .iter()
            .map(|e| e.action.as_str())
            .collect();
        assert_eq!(
            actions,
            [
                "token.create",
                "token.create",
                "join",
                "join",
                "token.revoke"
            ]
        );
    }

    #[test]
    fn the_last_lasting_admin_token_cannot_be_revoked() {
        let mut state = bootstrapped();
        let revoke = |state: &mut MeshState, index, id: &str| {
            state.apply(
                index,
                Command::RevokeToken {
                    id: id.into(),
                    actor: "aaaaaaaaaaaa".into(),
                    at: at(index),
                },
            )
        };
        // The founding admin token is the only one: refused, and still there.
        let result = revoke(&mut state, 2, "aaaaaaaaaaaa");
        assert_eq!(refused_code(&result), Some(RefusalCode::Conflict));
        assert!(
            format!("{result:?}").contains("last admin token"),
            "{result:?}"
        );
        assert!(state.token("aaaaaaaaaaaa").is_some());
        // An admin token that expires does not count: it would lock the mesh out later.
        let mut expiring = admin_token("bbbbbbbbbbbb", "b-secret");
        expiring.expires_at = Some("2999-01-01T00:00:00Z".into());
        assert_eq!(create_token(&mut state, 3, expiring), CommandResult::Done);
        assert_eq!(
            refused_code(&revoke(&mut state, 4, "aaaaaaaaaaaa")),
            Some(RefusalCode::Conflict)
        );
        // The expiring one itself may go, and with a second lasting admin the first may too.
        assert_eq!(revoke(&mut state, 5, "bbbbbbbbbbbb"), CommandResult::Done);
        let lasting = admin_token("cccccccccccc", "c-secret");
        assert_eq!(create_token(&mut state, 6, lasting), CommandResult::Done);
        assert_eq!(revoke(&mut state, 7, "aaaaaaaaaaaa"), CommandResult::Done);
        assert_eq!(
            refused_code(&revoke(&mut state, 8, "cccccccccccc")),
            Some(RefusalCode::Conflict)
        );
    }

    #[test]
    fn bootstrap_once() {
        let mut state = MeshState::new();
        assert!(!state.is_bootstrapped());
        let mut state2 = bootstrapped();
        assert!(state2.is_bootstrapped());
        assert_eq!(state2.members().len(), 1);
        assert!(state2.token("aaaaaaaaaaaa").is_some());
        assert_eq!(gateway_names(&state2, "east"), ["gw-a"]);
        let cluster = state2.get(&cluster_key("east")).unwrap();
        assert_eq!(cluster.metadata.resource_version.as_deref(), Some("1"));
        assert_eq!(
            cluster.spec["gateways"][0]["tunnelAddress"],
            "10.0.0.1:4433"
        );
        let again = Command::Bootstrap {
            member: founder(),
            cluster: cluster_resource("east", "east.mesh", "PEM"),
            token: admin_token("bbbbbbbbbbbb", "s"),
            at: at(2),
        };
        assert_eq!(
            refused_code(&state2.apply(2, again.clone())),
            Some(RefusalCode::Conflict)
        );
        assert_eq!(state2.tokens().len(), 1);
        // A cluster resource that is not the member's cluster is invalid.
        let Command::Bootstrap {
            member, token, at, ..
        } = again
        else {
            unreachable!()
        };
        let wrong = Command::Bootstrap {
            member,
            cluster: cluster_resource("west", "w", "P"),
            token,
            at,
        };
        assert_eq!(
            refused_code(&state.apply(1, wrong)),
            Some(RefusalCode::Invalid)
        );
        assert!(!state.is_bootstrapped());
    }

    #[test]
    fn join_consumes_its_token_and_grows_the_cluster() {
        let mut state = bootstrapped();
        create_token(
            &mut state,
            2,
            join_token("j00000000001", "s1", "2025-01-01T01:00:00Z"),
        );
        create_token(
            &mut state,
            3,
            join_token("j00000000002", "s2", "2025-01-01T01:00:00Z"),
        );
        create_token(
            &mut state,
            4,
            join_token("j00000000003", "s3", "2025-01-01T01:00:00Z"),
        );

        // A new cluster is created with the joiner's CA and gateway.
        let result = join(
            &mut state,
            5,
            "j00000000001",
            "s1",
            join_request("west", "gw-b", "west.mesh", "WEST-PEM", 2),
        );
        assert_eq!(result, CommandResult::Joined { node_id: 2 });
        assert!(state.token("j00000000001").unwrap().used);
        let west = state.get(&cluster_key("west")).unwrap();
        assert_eq!(west.spec["trustDomain"], "west.mesh");
        assert_eq!(west.spec["trustBundle"], "WEST-PEM");
        assert_eq!(west.metadata.resource_version.as_deref(), Some("5"));
        assert_eq!(gateway_names(&state, "west"), ["gw-b"]);
        let member = state.member(2).unwrap();
        assert_eq!(
            (member.name.as_str(), member.cluster.as_str()),
            ("gw-b", "west")
        );

        // The same token again: refused, whatever the request.
        let again = join(
            &mut state,
            6,
            "j00000000001",
            "s1",
            join_request("west", "gw-c", "west.mesh", "WEST-PEM", 3),
        );
        assert_eq!(refused_code(&again), Some(RefusalCode::Unauthorized));

        // A second gateway of the same cluster must share its CA...
        let other_ca = join(
            &mut state,
            7,
            "j00000000002",
            "s2",
            join_request("west", "gw-c", "west.mesh", "OTHER-PEM", 3),
        );
        assert_eq!(refused_code(&other_ca), Some(RefusalCode::Conflict));
        // ...and is added when it does (the refusal did not use up the token).
        let result = join(
            &mut state,
            7,
            "j00000000002",
            "s2",
            join_request("west", "gw-c", "west.mesh", "WEST-PEM", 3),
        );
        assert_eq!(result, CommandResult::Joined { node_id: 3 });
        assert_eq!(gateway_names(&state, "west"), ["gw-b", "gw-c"]);
        let west = state.get(&cluster_key("west")).unwrap();
        assert_eq!(west.spec["trustBundle"], "WEST-PEM");
        assert_eq!(west.metadata.resource_version.as_deref(), Some("7"));
        assert_eq!(
            west.metadata.creation_timestamp.as_deref(),
            Some(at(5).as_str())
        );

        // Taken gateway name, other trust domain: conflicts, token not consumed.
        let taken = join(
            &mut state,
            8,
            "j00000000003",
            "s3",
            join_request("west", "gw-b", "west.mesh", "P", 4),
        );
        assert_eq!(refused_code(&taken), Some(RefusalCode::Conflict));
        let other_td = join(
            &mut state,
            9,
            "j00000000003",
            "s3",
            join_request("west", "gw-d", "evil.mesh", "P", 4),
        );
        assert_eq!(refused_code(&other_td), Some(RefusalCode::Conflict));
        assert!(!state.token("j00000000003").unwrap().used);

        // Wrong secret, expiry, wrong role.
        let wrong = join(
            &mut state,
            10,
            "j00000000003",
            "nope",
            join_request("west", "gw-d", "west.mesh", "P", 4),
        );
        assert_eq!(refused_code(&wrong), Some(RefusalCode::Unauthorized));
        let late = state.apply(
            11,
            Command::Join {
                token_id: "j00000000003".into(),
                secret_sha256: token::hash("s3"),
                request: join_request("west", "gw-d", "west.mesh", "P", 4),
                at: "2025-01-01T01:00:00Z".into(),
            },
        );
        assert_eq!(refused_code(&late), Some(RefusalCode::Unauthorized));
        let admin = join(
            &mut state,
            12,
            "aaaaaaaaaaaa",
            "admin-secret",
            join_request("west", "gw-d", "west.mesh", "P", 4),
        );
        assert_eq!(refused_code(&admin), Some(RefusalCode::Unauthorized));

        // Removing a member drops its gateway; its node id is never handed out again.
        assert_eq!(
            state.apply(
                13,
                Command::RemoveMember {
                    node_id: 3,
                    actor: "aaaaaaaaaaaa".into(),
                    at: at(13)
                }
            ),
            CommandResult::Done
        );
        assert!(state.member(3).is_none());
        assert_eq!(gateway_names(&state, "west"), ["gw-b"]);
        let gone = state.apply(
            14,
            Command::RemoveMember {
                node_id: 3,
                actor: "a".into(),
                at: at(14),
            },
        );
        assert_eq!(refused_code(&gone), Some(RefusalCode::NotFound));
        let result = join(
            &mut state,
            15,
            "j00000000003",
            "s3",
            join_request("west", "gw-c", "west.mesh", "WEST-PEM", 3),
        );
        assert_eq!(result, CommandResult::Joined { node_id: 4 });
        let ids: Vec<_> = state.members().iter().map(|m| m.node_id).collect();
        assert_eq!(ids, [1, 2, 4]);
        let last = state.audit(14, 10);
        assert_eq!(last.last().unwrap().actor, "join:j00000000003");
        assert_eq!(
            last.last().unwrap().target,
            "member 4 (gw-c in cluster west)"
        );
    }

    #[test]
    fn snapshot_restores_an_identical_state() {
        let mut state = bootstrapped();
        state.retain = 4;
        create_token(
            &mut state,
            2,
            join_token("j00000000001", "s1", "2025-01-01T01:00:00Z"),
        );
        join(
            &mut state,
            3,
            "j00000000001",
            "s1",
            join_request("west", "gw-b", "west.mesh", "W", 2),
        );
        for i in 4..10 {
            apply(&mut state, i, vec![vs("a", &i.to_string())], vec![]);
        }
        let image = state.snapshot();
        let mut restored = MeshState::with_retention(4);
        restored.restore(&image).unwrap();
        assert_eq!(restored.snapshot(), image);
        // The newest event carries the current version: one copy, as before the snapshot.
        let newest = &restored.events.back().unwrap().resource;
        assert!(Arc::ptr_eq(newest, restored.stored(&vs_key("a")).unwrap()));
        let older = &restored.events.front().unwrap().resource;
        assert!(!Arc::ptr_eq(older, restored.stored(&vs_key("a")).unwrap()));
        assert_eq!(restored.applied(), 9);
        assert!(restored.is_bootstrapped());
        assert_eq!(restored.events_since(0), state.events_since(0));
        assert_eq!(restored.events_since(8), state.events_since(8));

        // Both behave the same from here on.
        for s in [&mut state, &mut restored] {
            create_token(
                s,
                10,
                join_token("j00000000002", "s2", "2025-01-01T01:00:00Z"),
            );
            assert_eq!(
                join(
                    s,
                    11,
                    "j00000000002",
                    "s2",
                    join_request("north", "gw-n", "north.mesh", "N", 9)
                ),
                CommandResult::Joined { node_id: 3 }
            );
            delete(s, 12, vs_key("a"), None);
        }
        assert_eq!(restored.snapshot(), state.snapshot());
        let (a, b) = (restored.compile(), state.compile());
        assert_eq!(
            (a.version, &a.clusters, &a.services, &a.exports, &a.members),
            (b.version, &b.clusters, &b.services, &b.exports, &b.members)
        );
        let routed = |s: &crate::mesh::MeshSnapshot| {
            let mut keys: Vec<_> = s.routes.services.keys().cloned().collect();
            keys.sort();
            keys
        };
        assert_eq!(routed(&a), routed(&b));

        // Garbage leaves the state alone.
        let before = restored.snapshot();
        for bad in [&b"not json"[..], b"{}", b"[]", br#"{"format":99}"#] {
            assert!(restored.restore(bad).is_err());
        }
        let mut wrong_format: Value = serde_json::from_slice(&image).unwrap();
        wrong_format["format"] = json!(2);
        let err = restored
            .restore(&serde_json::to_vec(&wrong_format).unwrap())
            .unwrap_err();
        assert!(err.contains("format 2"), "{err}");
        assert_eq!(restored.snapshot(), before);
    }

    #[test]
    fn same_commands_same_state() {
        let commands: Vec<Vec<u8>> = {
            let mut cmds = vec![Command::Bootstrap {
                member: founder(),
                cluster: cluster_resource("east", "east.mesh", "PEM"),
                token: admin_token("aaaaaaaaaaaa", "s"),
                at: at(1),
            }];
            cmds.push(Command::CreateToken {
                token: join_token("j00000000001", "s1", "2025-01-01T01:00:00Z"),
                actor: "a".into(),
                at: at(2),
            });
            cmds.push(Command::Join {
                token_id: "j00000000001".into(),
                secret_sha256: token::hash("s1"),
                request: join_request("west", "gw-b", "west.mesh", "W", 2),
                at: at(3),
            });
            cmds.push(Command::Apply {
                resources: vec![vs("a", "a"), vs("b", "b")],
                expect: vec![],
                actor: "a".into(),
                at: at(4),
            });
            cmds.push(Command::Delete {
                key: vs_key("b"),
                expect: Some(4),
                actor: "a".into(),
                at: at(5),
            });
            let mut bytes: Vec<Vec<u8>> = cmds
                .iter()
                .map(|c| serde_json::to_vec(c).unwrap())
                .collect();
            bytes.insert(3, b"\x00garbage".to_vec());
            bytes
        };
        let run = || {
            let mut state = MeshState::new();
            let results: Vec<Vec<u8>> = commands
                .iter()
                .enumerate()
                .map(|(i, c)| state.apply_entry(i as u64 + 1, c))
                .collect();
            (state.snapshot(), results)
        };
        let (a, results_a) = run();
        let (b, results_b) = run();
        assert_eq!(a, b);
        assert_eq!(results_a, results_b);
    }

    #[test]
    fn a_trust_bundle_is_replaced_whole_audited_and_checked() {
        let mut state = bootstrapped();
        let dir = tempfile::tempdir().unwrap();
        let td = crate::identity::TrustDomain::parse("east.mesh").unwrap();
        let old = crate::identity::CertificateAuthority::load_or_create(&dir.path().join("a"), &td)
            .unwrap();
        let new = crate::identity::CertificateAuthority::load_or_create(&dir.path().join("b"), &td)
            .unwrap();
        let both = format!("{}{}", old.bundle_pem(), new.bundle_pem());
        let set = |state: &mut MeshState, index, cluster: &str, bundle: &str| {
            state.apply(
                index,
                Command::SetTrustBundle {
                    cluster: crate::model::ClusterName::new(cluster).unwrap(),
                    trust_bundle: bundle.into(),
                    actor: "ca-rotation@east-1".into(),
                    at: at(index),
                },
            )
        };
        assert_eq!(set(&mut state, 2, "east", &both), CommandResult::Done);
        let stored = state.get(&cluster_key("east")).unwrap();
        assert_eq!(stored.spec["trustBundle"], both.as_str());
        assert_eq!(stored.spec["trustDomain"], "east.mesh");
        assert_eq!(version_of(&stored.metadata), 2);
        let audit = state.audit(0, 100);
        assert!(
            audit.iter().any(|e| e.index == 2
                && e.action == "ca.bundle"
                && e.actor == "ca-rotation@east-1"),
            "{audit:?}"
        );
        // Nothing else changes, and nothing is written for a bad bundle or cluster.
        for (cluster, bundle) in [("east", ""), ("east", "not pem"), ("west", both.as_str())] {
            let result = set(&mut state, 3, cluster, bundle);
            assert!(
                matches!(result, CommandResult::Refused { .. }),
                "{cluster} {bundle:?}: {result:?}"
            );
        }
        assert_eq!(
            version_of(&state.get(&cluster_key("east")).unwrap().metadata),
            2
        );
    }

    #[test]
    fn garbage_entries_are_refused() {
        let mut state = MeshState::new();
        for (i, bad) in [
            &b""[..],
            b"\xff\xfe",
            b"null",
            b"{\"op\":\"explode\"}",
            b"{\"op\":\"apply\"}",
            b"[1,2]",
        ]
        .iter()
        .enumerate()
        {
            let index = i as u64 + 1;
            let out = state.apply_entry(index, bad);
            let result: CommandResult = serde_json::from_slice(&out).unwrap();
            assert_eq!(refused_code(&result), Some(RefusalCode::Invalid), "{bad:?}");
            assert_eq!(state.applied(), index);
        }
        let good = serde_json::to_vec(&Command::Apply {
            resources: vec![vs("a", "a")],
            expect: vec![],
            actor: "t".into(),
            at: at(9),
        })
        .unwrap();
        let result: CommandResult = serde_json::from_slice(&state.apply_entry(9, &good)).unwrap();
        assert!(matches!(result, CommandResult::Applied { .. }));
    }
}
