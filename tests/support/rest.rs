//! A client of the admin REST API for black-box tests that checks every response against the
//! OpenAPI document the server itself serves: a response whose path, method, status or body is
//! not what `/v1/openapi.json` says fails the test.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde_json::Value;

use super::{Gateway, HttpResponse, Net, Spec, eventually, try_http, try_https};

/// A REST client bound to one gateway's admin address and one bearer token.
pub struct Api {
    pub addr: SocketAddr,
    /// The CA (PEM file) the gateway's admin certificate chains to; `None`: plain HTTP.
    pub ca: Option<PathBuf>,
    pub token: Option<String>,
    openapi: OnceLock<Value>,
}

/// One checked response.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub content_type: String,
    pub text: String,
    /// The body as JSON, when it is JSON.
    pub json: Value,
}

impl Reply {
    /// The problem+json `type` slug (`conflict`, `invalid`...), when the body is a problem.
    pub fn problem_type(&self) -> Option<&str> {
        self.json.get("type")?.as_str()?.rsplit('/').next()
    }
}

impl Api {
    /// The admin API at `addr`, over HTTPS verified by `ca` (the gateway's cluster CA), or
    /// plain HTTP without one.
    pub fn new(addr: SocketAddr, ca: Option<&Path>, token: Option<&str>) -> Self {
        Self {
            addr,
            ca: ca.map(Path::to_path_buf),
            token: token.map(str::to_string),
            openapi: OnceLock::new(),
        }
    }

    /// `gw`'s admin API, trusting its cluster's CA.
    pub fn of(gw: &Gateway, token: Option<&str>) -> Self {
        Self::new(gw.admin, gw.ca.as_deref(), token)
    }

    /// The same gateway with another token.
    pub fn with_token(&self, token: Option<&str>) -> Self {
        let api = Self::new(self.addr, self.ca.as_deref(), token);
        if let Some(doc) = self.openapi.get() {
            let _ = api.openapi.set(doc.clone());
        }
        api
    }

    pub fn get(&self, path: &str) -> Reply {
        self.call("GET", path, None)
    }

    pub fn delete(&self, path: &str) -> Reply {
        self.call("DELETE", path, None)
    }

    pub fn post_json(&self, path: &str, body: &Value) -> Reply {
        self.call(
            "POST",
            path,
            Some(("application/json", body.to_string().as_bytes())),
        )
    }

    pub fn put_json(&self, path: &str, body: &Value) -> Reply {
        self.call(
            "PUT",
            path,
            Some(("application/json", body.to_string().as_bytes())),
        )
    }

    pub fn apply_yaml(&self, yaml: &str, dry_run: bool) -> Reply {
        let path = if dry_run {
            "/v1/apply?dryRun=true"
        } else {
            "/v1/apply"
        };
        self.call("POST", path, Some(("application/yaml", yaml.as_bytes())))
    }

    /// Sends one request and checks the response against the served OpenAPI document.
    pub fn call(&self, method: &str, path: &str, body: Option<(&str, &[u8])>) -> Reply {
        let reply = self.raw(method, path, body);
        if let Err(e) = check_against_openapi(self.openapi(), method, path, &reply) {
            panic!(
                "{method} {path} -> {} does not match the served OpenAPI document: {e}\nbody: {}",
                reply.status, reply.text
            );
        }
        reply
    }

    /// Sends one request without the OpenAPI check (for the document itself, or SSE).
    pub fn raw(&self, method: &str, path: &str, body: Option<(&str, &[u8])>) -> Reply {
        let auth = self.token.as_ref().map(|t| format!("Bearer {t}"));
        let mut headers: Vec<(&str, &str)> = Vec::new();
        if let Some(auth) = &auth {
            headers.push(("authorization", auth));
        }
        let (content_type, bytes) = body.unwrap_or(("", b""));
        if !content_type.is_empty() {
            headers.push(("content-type", content_type));
        }
        let sent = match &self.ca {
            Some(ca) => try_https(self.addr, ca, method, "admin", path, &headers, bytes),
            None => try_http(self.addr, method, "admin", path, &headers, bytes),
        };
        let (status, headers, text): HttpResponse =
            sent.unwrap_or_else(|e| panic!("{method} {}{path}: {e}", self.addr));
        let content_type = headers
            .iter()
            .find(|(k, _)| k == "content-type")
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        let json = serde_json::from_str(&text).unwrap_or(Value::Null);
        Reply {
            status,
            content_type,
            text,
            json,
        }
    }

    /// The served OpenAPI document (fetched once, with this client's token).
    pub fn openapi(&self) -> &Value {
        self.openapi.get_or_init(|| {
            let reply = self.raw("GET", "/v1/openapi.json", None);
            assert_eq!(reply.status, 200, "openapi.json: {}", reply.text);
            assert!(
                reply.json.get("paths").is_some(),
                "openapi.json has no paths: {}",
                reply.text
            );
            reply.json
        })
    }
}

/// Finds the operation for `method path` in `doc` (matching `{param}` segments), the response
/// for `reply.status` (or `default`), and validates the body against its schema for the reply's
/// content type.
pub fn check_against_openapi(
    doc: &Value,
    method: &str,
    path: &str,
    reply: &Reply,
) -> Result<(), String> {
    let path_only = path.split('?').next().unwrap_or(path);
    let paths = doc
        .get("paths")
        .and_then(Value::as_object)
        .ok_or("no paths in the document")?;
    let (template, item) = paths
        .iter()
        .filter(|(template, _)| template_matches(template, path_only))
        // The most literal template wins (`/v1/status` over `/v1/{plural}`).
        .min_by_key(|(template, _)| template.matches('{').count())
        .map(|(t, i)| (t.clone(), i.clone()))
        .ok_or_else(|| format!("path {path_only} is not in the document"))?;
    let op = item
        .get(method.to_ascii_lowercase())
        .ok_or_else(|| format!("{method} is not documented for {template}"))?;
    let responses = op
        .get("responses")
        .and_then(Value::as_object)
        .ok_or_else(|| format!("{method} {template} documents no responses"))?;
    let response = responses
        .get(&reply.status.to_string())
        .or_else(|| responses.get("default"))
        .ok_or_else(|| {
            format!(
                "status {} is not documented for {method} {template} (documented: {:?})",
                reply.status,
                responses.keys().collect::<Vec<_>>()
            )
        })?;
    let response = resolve(doc, response);
    let Some(content) = response.get("content").and_then(Value::as_object) else {
        return if reply.text.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "{method} {template} {} documents no body but one came back",
                reply.status
            ))
        };
    };
    let media = reply.content_type.split(';').next().unwrap_or("").trim();
    let Some(media_type) = content.get(media) else {
        return Err(format!(
            "content type {media:?} not documented for {method} {template} {} (documented: {:?})",
            reply.status,
            content.keys().collect::<Vec<_>>()
        ));
    };
    let Some(schema) = media_type.get("schema") else {
        return Ok(());
    };
    if !media.contains("json") {
        return Ok(());
    }
    // The schema's `$ref`s point into the document's components: validate with the components
    // beside the schema, so `#/components/schemas/X` resolves.
    let mut root = schema.clone();
    if let (Some(obj), Some(components)) = (root.as_object_mut(), doc.get("components")) {
        obj.insert("components".to_string(), components.clone());
    }
    let validator = jsonschema::validator_for(&root)
        .map_err(|e| format!("the documented schema does not compile: {e}"))?;
    let errors: Vec<String> = validator
        .iter_errors(&reply.json)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("; "))
    }
}

fn resolve<'a>(doc: &'a Value, value: &'a Value) -> &'a Value {
    match value.get("$ref").and_then(Value::as_str) {
        Some(pointer) => doc
            .pointer(pointer.trim_start_matches('#'))
            .unwrap_or(value),
        None => value,
    }
}

fn template_matches(template: &str, path: &str) -> bool {
    let t: Vec<&str> = template.trim_matches('/').split('/').collect();
    let p: Vec<&str> = path.trim_matches('/').split('/').collect();
    t.len() == p.len()
        && t.iter()
            .zip(&p)
            .all(|(t, p)| (t.starts_with('{') && t.ends_with('}') && !p.is_empty()) || t == p)
}

/// A gateway that founds its own one-member mesh, and its admin API with the first admin token.
#[allow(dead_code)] // not every test crate uses it
pub fn founder(net: &Net, cluster: &'static str, host: u8) -> (Gateway, Api) {
    let gw = Spec::new(cluster, host).start(net);
    let token = super::admin_token(&net.data_dir(cluster));
    let api = Api::of(&gw, Some(&token));
    eventually(
        "the mesh to be founded",
        std::time::Duration::from_secs(30),
        || (api.raw("GET", "/v1/status", None).status == 200).then_some(()),
    );
    (gw, api)
}
