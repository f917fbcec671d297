//! The OpenAPI document states the limits the server enforces, and the server refuses what
//! the document refuses (scripts/schemathesis.sh checks both ways against a real gateway;
//! these pin each mismatch it found).

use super::*;
use crate::rest::input::MAX_NUMBER;
use crate::rest::tokens::{AUDIT_LIMIT_MAX, JOIN_TTL_MAX, parse_ttl};
use crate::rest::wire::{JOIN_TTL_PATTERN, TTL_PATTERN};

/// The schema of query parameter `name` of `method path`.
fn param_schema(method: &str, path: &str, name: &str) -> Value {
    let doc = serde_json::to_value(openapi()).unwrap();
    let params = doc["paths"][path][method]["parameters"]
        .as_array()
        .unwrap_or_else(|| panic!("{method} {path} has no parameters"))
        .clone();
    params
        .into_iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("{method} {path} has no parameter {name}"))["schema"]
        .clone()
}

#[test]
fn the_audit_limit_is_stated_as_the_server_enforces_it() {
    let limit = param_schema("get", "/v1/audit", "limit");
    assert_eq!(limit["minimum"], 1);
    assert_eq!(limit["maximum"], AUDIT_LIMIT_MAX);
    // Every other number is an int64 from 0: the server's MAX_NUMBER.
    for (method, path, name) in [
        ("get", "/v1/audit", "since"),
        ("get", "/v1/watch", "from"),
        ("delete", "/v1/{plural}/{name}", "resourceVersion"),
        (
            "delete",
            "/v1/namespaces/{namespace}/{plural}/{name}",
            "resourceVersion",
        ),
    ] {
        let schema = param_schema(method, path, name);
        assert_eq!(
            (&schema["format"], &schema["minimum"]),
            (&json!("int64"), &json!(0)),
            "{method} {path} {name}"
        );
    }
    assert_eq!(MAX_NUMBER, i64::MAX as u64);
}

#[test]
fn empty_strings_are_refused_in_the_schema_too() {
    for (method, path, name) in [
        ("get", "/v1/{plural}", "cluster"),
        ("get", "/v1/namespaces/{namespace}/{plural}", "cluster"),
        (
            "get",
            "/v1/namespaces/{namespace}/{plural}/{name}",
            "cluster",
        ),
        (
            "put",
            "/v1/namespaces/{namespace}/{plural}/{name}",
            "cluster",
        ),
        (
            "delete",
            "/v1/namespaces/{namespace}/{plural}/{name}",
            "cluster",
        ),
        ("get", "/v1/watch", "kind"),
        ("get", "/v1/join/discovery", "token"),
    ] {
        assert_eq!(
            param_schema(method, path, name)["minLength"],
            1,
            "{method} {path} {name}"
        );
    }
}

#[tokio::test]
async fn numbers_beyond_the_schema_and_an_empty_cluster_are_refused() {
    let api = Api::start().await;
    for path in [
        "/v1/audit?limit=0",
        "/v1/audit?limit=1001",
        "/v1/audit?since=9223372036854775808",
        "/v1/audit?since=18446744073709551615",
        "/v1/services?cluster=",
        "/v1/namespaces/demo/services?cluster=",
        "/v1/namespaces/demo/services/echo?cluster=",
        "/v1/watch?kind=",
        "/v1/watch?from=9223372036854775808",
        // The schema's boolean is `true` or `false`: no bare flag, no 1 or 0.
        "/v1/services?consistent=",
        "/v1/services?consistent",
        "/v1/services?consistent=1",
        "/v1/namespaces/demo/services/echo?consistent=0",
    ] {
        let answer = api.get(path, &api.admin).await;
        let problem = answer.problem(400, "bad-request");
        assert!(problem["field"].is_string(), "{path}: {problem}");
    }
    // The largest number the schema allows is still taken.
    let answer = api
        .get("/v1/audit?since=9223372036854775807&limit=1000", &api.admin)
        .await;
    assert_eq!(answer.ok()["items"], json!([]));
    let answer = api.get("/v1/audit?limit=1", &api.admin).await;
    assert_eq!(answer.ok()["items"].as_array().unwrap().len(), 1);
}

/// `ttl` is read by exactly the grammar the schema's patterns state.
#[test]
fn ttl_grammar_is_the_schema_pattern() {
    let any = regex::Regex::new(TTL_PATTERN).unwrap();
    let join = regex::Regex::new(JOIN_TTL_PATTERN).unwrap();
    let mut texts: Vec<String> = [
        "", "0s", "01h", "1", "h", "1H", "1 h", " 1h", "1h ", "1h\n", "1h30m", "7days", "1000000s",
        "999999d", "1.5h", "-1h", "+1h", "\u{80}", "1\u{80}", "\u{663}h", "1y",
    ]
    .map(String::from)
    .into();
    // Every value near each unit's join limit and the general bound.
    for unit in ["s", "m", "h", "d", "y"] {
        let ranges = [1..3000, 84_000..89_000, 999_000..1_001_000];
        texts.extend(
            ranges
                .into_iter()
                .flatten()
                .map(|n: u64| format!("{n}{unit}")),
        );
    }
    for text in &texts {
        let parsed = parse_ttl(text);
        assert_eq!(any.is_match(text), parsed.is_ok(), "{text:?}");
        let join_ok = parsed.is_ok_and(|t| t <= JOIN_TTL_MAX);
        assert_eq!(join.is_match(text), join_ok, "{text:?}");
    }
    assert_eq!(parse_ttl("2h").unwrap(), Duration::from_secs(7200));
}

#[tokio::test]
async fn ttls_outside_the_schema_are_refused_and_those_inside_are_taken() {
    let api = Api::start().await;
    let create = |body: Value| {
        let api = &api;
        async move {
            api.call(
                Method::POST,
                "/v1/tokens",
                Some(&api.admin),
                Some((JSON, body.to_string())),
            )
            .await
        }
    };
    for body in [
        json!({"role": "viewer", "ttl": "0s"}),
        json!({"role": "viewer", "ttl": "1h30m"}),
        json!({"role": "viewer", "ttl": "\u{80}"}),
        json!({"role": "admin", "ttl": "99999999999999999999s"}),
        json!({"role": "join", "ttl": "25h"}),
        json!({"role": "join", "ttl": "86401s"}),
    ] {
        let answer = create(body.clone()).await;
        assert_eq!(answer.problem(400, "bad-request")["field"], "ttl", "{body}");
    }
    for body in [
        json!({"role": "viewer", "ttl": "999999d"}),
        json!({"role": "join", "ttl": "86400s"}),
        json!({"role": "join", "ttl": "1d"}),
        json!({"role": "operator", "ttl": null}),
    ] {
        let answer = create(body.clone()).await;
        assert_eq!(answer.status, StatusCode::CREATED, "{body}");
    }
    // And the schema says so: one variant per kind of role, each with its pattern.
    let doc = serde_json::to_value(openapi()).unwrap();
    let variants = doc["components"]["schemas"]["TokenRequest"]["oneOf"]
        .as_array()
        .unwrap()
        .clone();
    let pattern_of = |role: &str| {
        variants
            .iter()
            .find(|v| {
                v["properties"]["role"]["enum"]
                    .as_array()
                    .unwrap()
                    .contains(&json!(role))
            })
            .unwrap()["properties"]["ttl"]["pattern"]
            .clone()
    };
    assert_eq!(pattern_of("viewer"), TTL_PATTERN);
    assert_eq!(pattern_of("admin"), TTL_PATTERN);
    assert_eq!(pattern_of("join"), JOIN_TTL_PATTERN);
}

/// `labelSelector` is read by exactly the grammar the schema's pattern states.
#[test]
fn selector_grammar_is_the_schema_pattern() {
    use crate::rest::resources::{SELECTOR_PATTERN, parse_selector};
    for path in ["/v1/{plural}", "/v1/namespaces/{namespace}/{plural}"] {
        assert_eq!(
            param_schema("get", path, "labelSelector")["pattern"],
            SELECTOR_PATTERN
        );
    }
    let pattern = regex::Regex::new(SELECTOR_PATTERN).unwrap();
    let alphabet: Vec<char> = "ab9_./-=!, \t\n\u{e9}".chars().collect();
    let mut state: u64 = 0x5e1ec7;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut texts: Vec<String> = [
        "",
        ",",
        " , ,",
        "app=web, tier==front,env!=prod,canary,!legacy",
        "a = b",
        "a=",
        "a!=",
        "!a",
        "! a",
        "!a=b",
        "a=!b",
        "a!b",
        "a==b",
        "a===b",
        "a= =b",
        "a b",
        "a=b c",
        "!=b",
        "=b",
        "k8s.io/app=v1.2",
        "a=b\n",
        "\u{e9}=b",
    ]
    .map(String::from)
    .into();
    for _ in 0..50_000 {
        let len = (next() % 12) as usize;
        texts.push(
            (0..len)
                .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
                .collect(),
        );
    }
    for text in &texts {
        assert_eq!(
            pattern.is_match(text),
            parse_selector(text).is_ok(),
            "{text:?}"
        );
    }
}
