//! Request bodies into documents: multi-document YAML, or JSON (one object or an array).
//!
//! Both go through one strict visitor ([`Strict`]) instead of `serde_json::Value`'s own, so
//! that what YAML allows and JSON cannot say is refused with a reason rather than silently
//! changed: duplicate keys, tags (`!foo`), merge keys (`<<: *base`), non-scalar or boolean
//! keys, `.nan`/`.inf`. Integer keys are accepted as their decimal text, as Kubernetes does,
//! because Istio's own examples write `portLevelMtls: {8080: ...}` unquoted. Numbers keep their
//! type (`10` stays an integer, `10.0` a float) and keys keep their order.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

use super::{FieldError, depth};

/// Splits a request body into documents: YAML (multi-document, `---`) or JSON (an object, or
/// an array of objects).
///
/// Empty YAML documents (only comments) are skipped. A document that does not parse yields
/// `Err` naming the cause, with line and column where the parser knows them.
///
/// A text nesting deeper than [`depth::MAX_DEPTH`] yields one `Err` naming the limit, found
/// in one linear pass before any parser runs (see [`depth`]).
pub fn parse_documents(text: &str) -> Vec<Result<Value, FieldError>> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    if let Err(too_deep) = depth::check(text, depth::MAX_DEPTH) {
        return vec![Err(FieldError {
            field: String::new(),
            message: format!(
                "nesting deeper than {} levels at line {}; documents may nest at most {} levels",
                depth::MAX_DEPTH,
                too_deep.line,
                depth::MAX_DEPTH
            ),
        })];
    }
    if looks_like_json(text) {
        match parse_json(text) {
            Ok(docs) => return docs,
            Err(json_error) => {
                // `{a: b}` is YAML flow style, not JSON: give YAML a chance before refusing.
                let docs = parse_yaml(text);
                if docs.iter().all(Result::is_ok) {
                    return docs;
                }
                return vec![Err(json_error)];
            }
        }
    }
    parse_yaml(text)
}

fn looks_like_json(text: &str) -> bool {
    text.trim_start().starts_with(['{', '['])
}

fn parse_json(text: &str) -> Result<Vec<Result<Value, FieldError>>, FieldError> {
    let invalid = |e: serde_json::Error| FieldError {
        field: String::new(),
        message: format!("not valid JSON: {e}"),
    };
    let mut de = serde_json::Deserializer::from_str(text);
    let value = Strict.deserialize(&mut de).map_err(invalid)?;
    de.end().map_err(invalid)?;
    Ok(match value {
        Value::Array(items) => items.into_iter().map(Ok).collect(),
        other => vec![Ok(other)],
    })
}

fn parse_yaml(text: &str) -> Vec<Result<Value, FieldError>> {
    let mut docs = Vec::new();
    let mut last_error: Option<String> = None;
    for document in serde_yaml_ng::Deserializer::from_str(text) {
        // serde_yaml_ng 0.10 panics on some malformed event streams ("unexpected end of
        // mapping", found by fuzz/fuzz_targets/resource.rs) instead of returning an error. A
        // request body must never panic its handler: such a document is refused like any
        // other YAML error, and the stream is not read further (the parser's state after a
        // panic is not to be trusted).
        let parsed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            Strict.deserialize(document)
        }));
        let Ok(parsed) = parsed else {
            docs.push(Err(FieldError {
                field: String::new(),
                message: "not valid YAML: the document's structure is malformed".into(),
            }));
            break;
        };
        match parsed {
            // A document of only comments (or a stray `---`) is null: nothing to apply.
            Ok(Value::Null) => {}
            Ok(value) => docs.push(Ok(value)),
            Err(e) => {
                let message = format!("not valid YAML: {e}");
                // After a syntax error libyaml's parser stays failed and the iterator yields
                // the same error forever; the rest of the stream is unreadable anyway.
                if last_error.as_deref() == Some(message.as_str()) {
                    break;
                }
                last_error = Some(message.clone());
                docs.push(Err(FieldError {
                    field: String::new(),
                    message,
                }));
            }
        }
    }
    docs
}

/// Deserializes any self-describing input into a `serde_json::Value`, strictly.
struct Strict;

impl<'de> DeserializeSeed<'de> for Strict {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(StrictVisitor)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON-compatible value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_i128<E: de::Error>(self, v: i128) -> Result<Value, E> {
        i64::try_from(v)
            .map(|v| Value::Number(v.into()))
            .map_err(|_| E::custom(format_args!("the number {v} is out of range")))
    }

    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Value, E> {
        u64::try_from(v)
            .map(|v| Value::Number(v.into()))
            .map_err(|_| E::custom(format_args!("the number {v} is out of range")))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom(format_args!("{v} is not a finite number")))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_bytes<E: de::Error>(self, _: &[u8]) -> Result<Value, E> {
        Err(E::custom("binary values are not supported; use a string"))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        Strict.deserialize(deserializer)
    }

    fn visit_newtype_struct<D: Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<Value, D::Error> {
        Strict.deserialize(deserializer)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
        while let Some(item) = seq.next_element_seed(Strict)? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Value, A::Error> {
        let mut map = Map::new();
        while let Some(key) = access.next_key_seed(KeySeed)? {
            if key == "<<" {
                return Err(de::Error::custom(
                    "YAML merge keys (`<<`) are not supported; write the fields out",
                ));
            }
            if map.contains_key(&key) {
                return Err(de::Error::custom(format_args!("duplicate key `{key}`")));
            }
            let value = access.next_value_seed(Strict)?;
            map.insert(key, value);
        }
        Ok(Value::Object(map))
    }

    fn visit_enum<A: de::EnumAccess<'de>>(self, _: A) -> Result<Value, A::Error> {
        Err(de::Error::custom(
            "YAML tags (such as `!foo`) are not supported; remove the tag",
        ))
    }
}

/// A map key: a string, or an integer taken as its decimal text.
struct KeySeed;

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = String;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<String, D::Error> {
        deserializer.deserialize_any(KeyVisitor)
    }
}

struct KeyVisitor;

impl KeyVisitor {
    fn refuse<E: de::Error>(found: impl fmt::Display) -> E {
        E::custom(format_args!(
            "map keys must be strings, found {found}; quote the key"
        ))
    }
}

impl<'de> Visitor<'de> for KeyVisitor {
    type Value = String;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string key")
    }

    fn visit_str<E>(self, v: &str) -> Result<String, E> {
        Ok(v.to_owned())
    }

    fn visit_string<E>(self, v: String) -> Result<String, E> {
        Ok(v)
    }

    fn visit_i64<E>(self, v: i64) -> Result<String, E> {
        Ok(v.to_string())
    }

    fn visit_u64<E>(self, v: u64) -> Result<String, E> {
        Ok(v.to_string())
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<String, E> {
        Err(Self::refuse(format_args!("the number {v}")))
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<String, E> {
        Err(Self::refuse(format_args!("the boolean {v}")))
    }

    fn visit_unit<E: de::Error>(self) -> Result<String, E> {
        Err(Self::refuse("null"))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, _: A) -> Result<String, A::Error> {
        Err(Self::refuse("a list"))
    }

    fn visit_map<A: MapAccess<'de>>(self, _: A) -> Result<String, A::Error> {
        Err(Self::refuse("a map"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ok(text: &str) -> Vec<Value> {
        parse_documents(text)
            .into_iter()
            .map(|d| d.unwrap_or_else(|e| panic!("{e}")))
            .collect()
    }

    fn err(text: &str) -> String {
        let docs = parse_documents(text);
        let errors: Vec<_> = docs.iter().filter_map(|d| d.as_ref().err()).collect();
        assert_eq!(errors.len(), 1, "{docs:?}");
        errors[0].message.clone()
    }

    #[test]
    fn yaml_keeps_types_and_order() {
        let docs = ok("z: 10\ny: 10.0\nx: \"true\"\nw: true\nv: '10'\n");
        assert_eq!(
            docs,
            [json!({"z": 10, "y": 10.0, "x": "true", "w": true, "v": "10"})]
        );
        let text = serde_json::to_string(&docs[0]).unwrap();
        assert_eq!(text, r#"{"z":10,"y":10.0,"x":"true","w":true,"v":"10"}"#);
    }

    #[test]
    fn yaml_splits_documents_and_skips_empty_ones() {
        let docs = ok("# leading comment\n---\na: 1\n---\n# only a comment\n---\nb: 2\n---\n");
        assert_eq!(docs, [json!({"a": 1}), json!({"b": 2})]);
        assert!(ok("").is_empty());
        assert!(ok("# nothing\n").is_empty());
    }

    #[test]
    fn json_objects_and_arrays() {
        assert_eq!(ok(r#"{"a": 1.5}"#), [json!({"a": 1.5})]);
        assert_eq!(
            ok("\u{feff} [ {\"a\": 1}, {\"b\": 2} ]"),
            [json!({"a": 1}), json!({"b": 2})]
        );
        assert!(ok("[]").is_empty());
        // YAML flow style starts like JSON but is still YAML.
        assert_eq!(ok("{a: b}"), [json!({"a": "b"})]);
    }

    #[test]
    fn syntax_errors_carry_a_position_and_end_the_stream() {
        let docs = parse_documents("a: 1\n---\nb: [1, 2\nc: d: e\n---\nc: 3\n");
        assert_eq!(docs.len(), 2, "{docs:?}");
        assert_eq!(docs[0], Ok(json!({"a": 1})));
        let message = &docs[1].as_ref().unwrap_err().message;
        assert!(message.contains("line 4 column"), "{message}");

        let message = err("kind: [VirtualService\nspec: {");
        assert!(message.contains("line"), "{message}");
        let message = err("{\"kind\": [1, 2}");
        assert!(message.starts_with("not valid JSON"), "{message}");
        assert!(message.contains("line 1 column"), "{message}");
    }

    #[test]
    fn yaml_features_json_cannot_hold_are_refused() {
        assert!(err("a: !foo bar\n").contains("tags"));
        assert!(err("base: &b {x: 1}\ny:\n  <<: *b\n").contains("merge keys"));
        assert!(err("a: 1\na: 2\n").contains("duplicate key `a`"));
        assert!(err("true: x\n").contains("map keys must be strings"));
        assert!(err("? [a]\n: b\n").contains("map keys must be strings"));
        assert!(err("a: .nan\n").contains("not a finite number"));
        assert!(err("a: 123456789012345678901234567890\n").contains("line 1"));
        // Plain anchors and aliases are fine: they expand to a copy.
        assert_eq!(
            ok("base: &b {x: 1}\ny: *b\n"),
            [json!({"base": {"x": 1}, "y": {"x": 1}})]
        );
        // Integer keys become their text, as Kubernetes reads them.
        assert_eq!(
            ok("8080: {mode: STRICT}\n"),
            [json!({"8080": {"mode": "STRICT"}})]
        );
    }

    #[test]
    fn deep_nesting_is_refused_before_parsing() {
        let deep = "{\"a\":".repeat(100_000) + "1" + &"}".repeat(100_000);
        let message = err(&deep);
        assert!(
            message.contains("nesting deeper than 100 levels"),
            "{message}"
        );
        let flow = "a: ".to_string() + &"[".repeat(40_000) + &"]".repeat(40_000);
        assert!(err(&flow).contains("at line 1"));
        // Every example nests well within the limit, whatever the style.
        let nested = "a: ".to_string() + &"[".repeat(90) + &"]".repeat(90);
        assert_eq!(ok(&nested).len(), 1);
    }

    #[test]
    fn a_bad_document_does_not_hide_later_ones() {
        let docs = parse_documents("a: !t 1\n---\nb: 2\n");
        assert_eq!(docs.len(), 2);
        assert!(docs[0].is_err());
        assert_eq!(docs[1], Ok(json!({"b": 2})));
    }
}
