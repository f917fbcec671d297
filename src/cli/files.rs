//! The `-f FILE|DIR|-` inputs of `apply` and `delete`: which files, in which order, as what.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use federation::resource::{Kind, Scope};
use serde::Deserialize;
use serde_json::Value;

/// One file's contents, sent as one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Input {
    /// The path as the user gave it (joined with the directory), or `<stdin>`.
    pub label: String,
    pub text: String,
    pub content_type: &'static str,
}

pub const YAML: &str = "application/yaml";
pub const JSON: &str = "application/json";

/// The files `-f` names, in order: a directory contributes its `*.yaml`, `*.yml` and `*.json`
/// files sorted by name (not its subdirectories), `-` is standard input.
pub fn expand(paths: &[PathBuf]) -> Result<Vec<PathBuf>, String> {
    let mut out = Vec::new();
    for path in paths {
        if path.as_os_str() == "-" {
            out.push(path.clone());
            continue;
        }
        let meta = fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
        if !meta.is_dir() {
            out.push(path.clone());
            continue;
        }
        let entries = fs::read_dir(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut found = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| format!("{}: {e}", path.display()))?;
            let file = entry.path();
            let wanted = file
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"));
            // `metadata` follows symlinks, so a linked manifest counts like a plain one.
            if wanted && fs::metadata(&file).is_ok_and(|m| m.is_file()) {
                found.push(file);
            }
        }
        if found.is_empty() {
            return Err(format!(
                "{}: no .yaml, .yml or .json files in this directory",
                path.display()
            ));
        }
        found.sort();
        out.extend(found);
    }
    Ok(out)
}

/// Reads every input up front, so an unreadable file stops the command before anything is
/// written.
pub fn read_all(paths: &[PathBuf]) -> Result<Vec<Input>, String> {
    let mut stdin_used = false;
    let mut inputs = Vec::new();
    for path in expand(paths)? {
        let input = if path.as_os_str() == "-" {
            if std::mem::replace(&mut stdin_used, true) {
                return Err("-f - (standard input) given more than once".to_string());
            }
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .map_err(|e| format!("<stdin>: {e}"))?;
            let content_type = sniff(&text);
            Input {
                label: "<stdin>".to_string(),
                text,
                content_type,
            }
        } else {
            let text = fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            Input {
                label: path.display().to_string(),
                content_type: content_type(&path, &text),
                text,
            }
        };
        inputs.push(input);
    }
    Ok(inputs)
}

/// JSON by extension, YAML by extension, otherwise by the first character.
fn content_type(path: &Path, text: &str) -> &'static str {
    match path.extension().and_then(|e| e.to_str()) {
        Some("json") => JSON,
        Some("yaml" | "yml") => YAML,
        _ => sniff(text),
    }
}

fn sniff(text: &str) -> &'static str {
    match text.trim_start().chars().next() {
        Some('{' | '[') => JSON,
        _ => YAML,
    }
}

/// The documents of an input: YAML documents (`---`), a JSON object, or a JSON array's items.
/// Empty YAML documents are skipped, as the server skips them.
pub fn documents(input: &Input) -> Result<Vec<Value>, String> {
    let docs = if input.content_type == JSON {
        match serde_json::from_str(&input.text) {
            Ok(Value::Array(items)) => items,
            Ok(doc) => vec![doc],
            Err(e) => return Err(format!("{}: {e}", input.label)),
        }
    } else {
        let mut docs = Vec::new();
        for doc in serde_yaml_ng::Deserializer::from_str(&input.text) {
            let value = Value::deserialize(doc).map_err(|e| format!("{}: {e}", input.label))?;
            if !value.is_null() {
                docs.push(value);
            }
        }
        docs
    };
    Ok(docs)
}

/// What a document names: enough to address it in the API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub kind: Kind,
    pub name: String,
    pub namespace: Option<String>,
    pub cluster: Option<String>,
}

/// The resource a document names, or what is missing (with the field's path). A namespaced
/// document without a namespace is in `namespace`, as `apply` put it there.
pub fn target(doc: &Value, namespace: &str) -> Result<Target, String> {
    let text = |pointer: &str| doc.pointer(pointer).and_then(Value::as_str);
    let api_version = text("/apiVersion").ok_or("apiVersion: missing")?;
    let kind_name = text("/kind").ok_or("kind: missing")?;
    let kind = Kind::from_api(api_version, kind_name)
        .ok_or_else(|| format!("kind: unknown kind {kind_name} in {api_version}"))?;
    let name = text("/metadata/name").ok_or("metadata.name: missing")?;
    let namespace = match (kind.scope(), text("/metadata/namespace")) {
        (Scope::Mesh, given) => given.map(str::to_string),
        (_, given) => Some(given.unwrap_or(namespace).to_string()),
    };
    let cluster = text("/metadata/cluster").map(str::to_string);
    Ok(Target {
        kind,
        name: name.to_string(),
        namespace,
        cluster,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_files_directory_contributes_manifests_in_name_order() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["b.yaml", "a.json", "c.yml", "notes.txt", "Z.yaml"] {
            fs::write(dir.path().join(name), "kind: X\n").unwrap();
        }
        fs::create_dir(dir.path().join("nested.yaml")).unwrap();
        fs::create_dir(dir.path().join("sub")).unwrap();
        fs::write(dir.path().join("sub/d.yaml"), "").unwrap();
        let single = dir.path().join("b.yaml");

        let got = expand(&[single.clone(), dir.path().to_path_buf(), "-".into()]).unwrap();
        let names: Vec<String> = got
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            ["b.yaml", "Z.yaml", "a.json", "b.yaml", "c.yml", "-"]
        );

        let err = expand(&[dir.path().join("sub/missing.yaml")]).unwrap_err();
        assert!(err.contains("missing.yaml"), "{err}");
        let empty = tempfile::tempdir().unwrap();
        let err = expand(&[empty.path().to_path_buf()]).unwrap_err();
        assert!(err.contains("no .yaml"), "{err}");
    }

    #[test]
    fn cli_files_content_type_and_documents() {
        let dir = tempfile::tempdir().unwrap();
        let yaml = dir.path().join("vs.yaml");
        fs::write(
            &yaml,
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: a, namespace: prod}\n---\n---\n\
             apiVersion: causeway.dev/v1alpha1\nkind: Cluster\nmetadata: {name: east}\n",
        )
        .unwrap();
        let json = dir.path().join("svc");
        fs::write(
            &json,
            r#"[{"apiVersion":"causeway.dev/v1alpha1","kind":"Service","metadata":{"name":"web","namespace":"shop","cluster":"east"}}]"#,
        )
        .unwrap();
        let inputs = read_all(&[yaml, json]).unwrap();
        assert_eq!(
            (inputs[0].content_type, inputs[1].content_type),
            (YAML, JSON)
        );

        let targets: Vec<Target> = inputs
            .iter()
            .flat_map(|i| documents(i).unwrap())
            .map(|d| target(&d, "default").unwrap())
            .collect();
        assert_eq!(targets.len(), 3);
        assert_eq!(targets[0].kind, Kind::IstioVirtualService);
        assert_eq!(
            (targets[1].kind, targets[1].namespace.as_deref()),
            (Kind::Cluster, None)
        );
        assert_eq!(targets[2].cluster.as_deref(), Some("east"));

        let doc = serde_json::json!({"apiVersion": "causeway.dev/v1alpha1", "kind": "Route", "metadata": {"name": "r"}});
        assert_eq!(
            target(&doc, "shop").unwrap().namespace.as_deref(),
            Some("shop")
        );
        let doc = serde_json::json!({"apiVersion": "v1", "kind": "Pod"});
        assert!(
            target(&doc, "default")
                .unwrap_err()
                .starts_with("kind: unknown kind Pod")
        );
    }
}
