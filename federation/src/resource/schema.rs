//! A small declarative schema for resource specs, and the walker that checks a document
//! against it.
//!
//! Schemas are `const` data ([`Shape`] trees), one per kind, in [`super::istio`] and
//! [`super::native`]. The walker never stops at the first problem: it reports every error
//! with its dotted path (`spec.http[0].route[1].weight`) so one round trip fixes a document.
//!
//! Support levels are part of the schema: a field the data plane does not enforce yet is
//! accepted, with one warning at the field where the feature starts. Below that field the
//! walker still reports errors but no further warnings, so `spec.http[0].retries` warns once
//! rather than once per leaf.

use serde_json::Value;

use super::FieldError;

/// A rule for a string: `Err` carries the reason, without the field path.
pub(crate) type StrRule = fn(&str) -> Result<(), String>;

/// What a value must look like.
#[derive(Debug)]
pub(crate) enum Shape {
    Str,
    /// An integer (a JSON number without fraction or exponent) within `min..=max`.
    Int {
        min: i64,
        max: i64,
    },
    /// Any number within `min..=max`.
    Num {
        min: f64,
        max: f64,
    },
    Bool,
    /// A duration string as Istio writes them: `5s`, `1.5s`, `100ms`, `1h`, `1m30s`.
    Duration,
    /// A string that must be one of these, exactly (case matters, as in Istio's API).
    Enum(&'static [&'static str]),
    /// A string with a custom rule; `what` names it in "expected ..." messages.
    Text {
        what: &'static str,
        check: StrRule,
    },
    Obj(Object),
    List {
        item: &'static Shape,
        min: usize,
    },
    /// An object used as a map: any keys (checked by `key`), every value of one shape.
    Map {
        key: Key,
        value: &'static Shape,
    },
    /// Another shape, by reference: how a recursive shape (Linkerd's `not: <match>`) names
    /// itself.
    Ref(&'static Shape),
    /// One of several shapes, chosen by the value's JSON type (the first that takes it): a
    /// field written either as a string or as an object, such as a Service endpoint.
    Either(&'static [Shape]),
}

/// An object with known fields.
#[derive(Debug)]
pub(crate) struct Object {
    pub fields: &'static [Field],
    /// Sets of fields of which at most one may be present (and, if required, exactly one).
    pub groups: &'static [Group],
}

#[derive(Debug)]
pub(crate) struct Group {
    pub names: &'static [&'static str],
    pub required: bool,
}

#[derive(Debug)]
pub(crate) struct Field {
    pub name: &'static str,
    pub shape: Shape,
    pub required: bool,
    pub support: Support,
}

/// Whether the data plane acts on a field today.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Support {
    Enforced,
    /// Accepted and stored, but nothing acts on it yet: the writer gets a warning.
    NotEnforced,
}

/// What the keys of a [`Shape::Map`] must be.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Key {
    Any,
    /// A Kubernetes label key: `[prefix/]name`.
    Label,
    /// A port number written as a string (`"8080"`), as in Istio's `portLevelMtls`.
    Port,
}

pub(crate) const fn field(name: &'static str, shape: Shape) -> Field {
    Field {
        name,
        shape,
        required: false,
        support: Support::Enforced,
    }
}

pub(crate) const fn required(name: &'static str, shape: Shape) -> Field {
    Field {
        name,
        shape,
        required: true,
        support: Support::Enforced,
    }
}

impl Field {
    pub(crate) const fn not_enforced(self) -> Field {
        Field {
            support: Support::NotEnforced,
            ..self
        }
    }
}

pub(crate) const fn obj(fields: &'static [Field]) -> Shape {
    Shape::Obj(Object {
        fields,
        groups: &[],
    })
}

pub(crate) const fn obj_with(fields: &'static [Field], groups: &'static [Group]) -> Shape {
    Shape::Obj(Object { fields, groups })
}

/// At most one of `names`.
pub(crate) const fn at_most_one(names: &'static [&'static str]) -> Group {
    Group {
        names,
        required: false,
    }
}

/// Exactly one of `names`.
pub(crate) const fn exactly_one(names: &'static [&'static str]) -> Group {
    Group {
        names,
        required: true,
    }
}

pub(crate) const fn list(item: &'static Shape) -> Shape {
    Shape::List { item, min: 0 }
}

pub(crate) const fn non_empty_list(item: &'static Shape) -> Shape {
    Shape::List { item, min: 1 }
}

pub(crate) const fn map(value: &'static Shape) -> Shape {
    Shape::Map {
        key: Key::Any,
        value,
    }
}

/// The message of every not-enforced warning, so clients can recognise them.
pub const NOT_ENFORCED: &str = "accepted but not enforced by the data plane yet";

/// What a walk found.
#[derive(Debug, Default)]
pub(crate) struct Report {
    pub errors: Vec<FieldError>,
    pub warnings: Vec<FieldError>,
}

impl Report {
    pub(crate) fn error(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.errors.push(FieldError {
            field: field.into(),
            message: message.into(),
        });
    }

    pub(crate) fn warning(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.warnings.push(FieldError {
            field: field.into(),
            message: message.into(),
        });
    }
}

/// Checks `value` against `shape` at `path`. `warn` is false below a not-enforced field.
pub(crate) fn walk(shape: &Shape, value: &Value, path: &str, warn: bool, report: &mut Report) {
    let wrong_type = |report: &mut Report| {
        report.error(
            path,
            format!("expected {}, found {}", expected(shape), found(value)),
        );
    };
    match shape {
        Shape::Str => {
            if !value.is_string() {
                wrong_type(report);
            }
        }
        Shape::Int { min, max } => match integer(value) {
            Some(n) if n < i128::from(*min) || n > i128::from(*max) => {
                report.error(path, format!("must be between {min} and {max}, found {n}"));
            }
            Some(_) => {}
            None => wrong_type(report),
        },
        Shape::Num { min, max } => match value.as_f64() {
            Some(n) if n < *min || n > *max => {
                report.error(
                    path,
                    format!("must be between {min} and {max}, found {value}"),
                );
            }
            Some(_) => {}
            None => wrong_type(report),
        },
        Shape::Bool => {
            if !value.is_boolean() {
                wrong_type(report);
            }
        }
        Shape::Duration => match value.as_str() {
            Some(s) => {
                if let Err(reason) = parse_duration(s) {
                    report.error(path, reason);
                }
            }
            None => wrong_type(report),
        },
        Shape::Enum(options) => match value.as_str() {
            Some(s) if options.contains(&s) => {}
            Some(s) => report.error(
                path,
                format!("must be one of {}, found {s:?}", options.join(", ")),
            ),
            None => wrong_type(report),
        },
        Shape::Text { check, .. } => match value.as_str() {
            Some(s) => {
                if let Err(reason) = check(s) {
                    report.error(path, reason);
                }
            }
            None => wrong_type(report),
        },
        Shape::Obj(object) => match value.as_object() {
            Some(map) => walk_object(object, map, path, warn, report),
            None => wrong_type(report),
        },
        Shape::List { item, min } => match value.as_array() {
            Some(items) => {
                if items.len() < *min {
                    report.error(path, format!("must have at least {min} item(s)"));
                }
                for (i, item_value) in items.iter().enumerate() {
                    walk(item, item_value, &format!("{path}[{i}]"), warn, report);
                }
            }
            None => wrong_type(report),
        },
        Shape::Map { key, value: shape } => match value.as_object() {
            Some(map) => {
                for (k, v) in map {
                    let at = child(path, k);
                    if let Err(reason) = check_key(*key, k) {
                        report.error(&at, reason);
                    }
                    walk(shape, v, &at, warn, report);
                }
            }
            None => wrong_type(report),
        },
        Shape::Ref(shape) => walk(shape, value, path, warn, report),
        Shape::Either(shapes) => match shapes.iter().find(|s| takes_type(s, value)) {
            Some(shape) => walk(shape, value, path, warn, report),
            None => wrong_type(report),
        },
    }
}

/// Whether `value` has the JSON type `shape` describes (its content may still be wrong).
fn takes_type(shape: &Shape, value: &Value) -> bool {
    match shape {
        Shape::Str | Shape::Duration | Shape::Enum(_) | Shape::Text { .. } => value.is_string(),
        Shape::Int { .. } | Shape::Num { .. } => value.is_number(),
        Shape::Bool => value.is_boolean(),
        Shape::Obj(_) | Shape::Map { .. } => value.is_object(),
        Shape::List { .. } => value.is_array(),
        Shape::Ref(shape) => takes_type(shape, value),
        Shape::Either(shapes) => shapes.iter().any(|s| takes_type(s, value)),
    }
}

fn walk_object(
    object: &Object,
    map: &serde_json::Map<String, Value>,
    path: &str,
    warn: bool,
    report: &mut Report,
) {
    for (name, value) in map {
        let at = child(path, name);
        let Some(field) = object.fields.iter().find(|f| f.name == name) else {
            report.error(
                &at,
                unknown_field(name, object.fields.iter().map(|f| f.name)),
            );
            continue;
        };
        if field.support == Support::NotEnforced && warn {
            report.warning(&at, NOT_ENFORCED);
            walk(&field.shape, value, &at, false, report);
        } else {
            walk(&field.shape, value, &at, warn, report);
        }
    }
    for field in object.fields.iter().filter(|f| f.required) {
        if !map.contains_key(field.name) {
            report.error(child(path, field.name), "required field is missing");
        }
    }
    for group in object.groups {
        let present: Vec<&str> = group
            .names
            .iter()
            .copied()
            .filter(|n| map.contains_key(*n))
            .collect();
        if present.len() > 1 {
            report.error(
                path,
                format!(
                    "only one of {} may be set, found {}",
                    backticked(group.names),
                    backticked(&present)
                ),
            );
        } else if present.is_empty() && group.required {
            report.error(
                path,
                format!("one of {} is required", backticked(group.names)),
            );
        }
    }
}

/// "unknown field `foo`; expected one of ..." with a hint when only case or separators differ.
pub(crate) fn unknown_field<'a>(
    name: &str,
    known: impl Iterator<Item = &'a str> + Clone,
) -> String {
    let squash = |s: &str| -> String {
        s.chars()
            .filter(|c| *c != '_' && *c != '-')
            .map(|c| c.to_ascii_lowercase())
            .collect()
    };
    let wanted = squash(name);
    let hint = known
        .clone()
        .find(|k| squash(k) == wanted)
        .map(|k| format!(" (did you mean `{k}`?)"))
        .unwrap_or_default();
    let all: Vec<&str> = known.collect();
    if all.is_empty() {
        format!("unknown field `{name}`; this object takes no fields")
    } else {
        format!(
            "unknown field `{name}`{hint}; expected one of {}",
            backticked(&all)
        )
    }
}

fn backticked(names: &[&str]) -> String {
    names
        .iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `path.name`, or `path["na.me"]` when the key would make the path ambiguous.
pub(crate) fn child(path: &str, name: &str) -> String {
    let plain = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '/'));
    match (path.is_empty(), plain) {
        (true, true) => name.to_string(),
        (false, true) => format!("{path}.{name}"),
        (_, false) => format!("{path}[{name:?}]"),
    }
}

/// An integer value, whatever its JSON representation; `None` for floats (even `10.0`:
/// the compiler reads these fields as integers and would refuse it later).
fn integer(value: &Value) -> Option<i128> {
    value
        .as_i64()
        .map(i128::from)
        .or_else(|| value.as_u64().map(i128::from))
}

fn expected(shape: &Shape) -> String {
    match shape {
        Shape::Str => "a string".into(),
        Shape::Int { .. } => "an integer".into(),
        Shape::Num { .. } => "a number".into(),
        Shape::Bool => "true or false".into(),
        Shape::Duration => "a duration such as \"5s\", \"1.5s\" or \"100ms\"".into(),
        Shape::Enum(options) => format!("one of {}", options.join(", ")),
        Shape::Text { what, .. } => (*what).into(),
        Shape::Obj(_) => "an object".into(),
        Shape::List { .. } => "a list".into(),
        Shape::Map { .. } => "a map".into(),
        Shape::Ref(shape) => expected(shape),
        Shape::Either(shapes) => shapes.iter().map(expected).collect::<Vec<_>>().join(" or "),
    }
}

/// How a wrong value is described in an error, short enough for one line.
pub(crate) fn found(value: &Value) -> String {
    match value {
        Value::Null => "null (an empty value; remove the field or give it a value)".into(),
        Value::Bool(b) => format!("{b} (a boolean; quote it to make it a string)"),
        Value::Number(n) => format!("{n} (a number)"),
        Value::String(s) if s.chars().count() > 40 => {
            let head: String = s.chars().take(40).collect();
            format!("the string {head:?}...")
        }
        Value::String(s) => format!("the string {s:?}"),
        Value::Array(_) => "a list".into(),
        Value::Object(_) => "an object".into(),
    }
}

fn check_key(key: Key, k: &str) -> Result<(), String> {
    match key {
        Key::Any => Ok(()),
        Key::Label => super::names::check_qualified_name(k).map_err(|r| format!("label key {r}")),
        Key::Port => match k.parse::<u16>() {
            Ok(port) if port > 0 && k == port.to_string() => Ok(()),
            _ => Err(format!("key {k:?} must be a port number 1-65535")),
        },
    }
}

/// Parses a duration as Istio and Go write them: one or more `<number><unit>` with units
/// `h`, `m`, `s`, `ms`, `us` (or `µs`) and `ns`, e.g. `5s`, `1.5s`, `100ms`, `1m30s`.
/// Negative durations are refused: no Istio field takes one.
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let refuse = || {
        format!(
            "{text:?} is not a duration; write a number and a unit, such as \"5s\", \"1.5s\", \"100ms\" or \"1h\""
        )
    };
    if text.is_empty() {
        return Err(refuse());
    }
    let mut rest = text;
    let mut total = 0f64;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (number, after) = rest.split_at(number_len);
        let digits = number.replace('.', "");
        if digits.is_empty() || number.matches('.').count() > 1 {
            return Err(refuse());
        }
        let value: f64 = number.parse().map_err(|_| refuse())?;
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, next) = after.split_at(unit_len);
        let seconds = match unit {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            "" => {
                return Err(format!(
                    "{text:?} has no unit; write e.g. \"{number}s\" for seconds or \"{number}ms\" for milliseconds"
                ));
            }
            _ => return Err(refuse()),
        };
        total += value * seconds;
        rest = next;
    }
    std::time::Duration::try_from_secs_f64(total).map_err(|_| format!("{text:?} is too long"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn durations_parse_like_istio_writes_them() {
        let ok = [
            ("5s", 5.0),
            ("1.5s", 1.5),
            ("100ms", 0.1),
            ("1h", 3600.0),
            ("1m30s", 90.0),
            ("0s", 0.0),
            (".5s", 0.5),
            ("250us", 0.00025),
        ];
        for (text, secs) in ok {
            let d = parse_duration(text).unwrap();
            assert!((d.as_secs_f64() - secs).abs() < 1e-9, "{text}");
        }
        for bad in [
            "",
            "5",
            "5 seconds",
            "-5s",
            "5S",
            "s",
            "1..5s",
            "5sec",
            "1e3s",
            " 5s",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} accepted");
        }
        assert!(parse_duration("5").unwrap_err().contains("no unit"));
    }

    const INNER: Shape = obj(&[field("n", Shape::Int { min: 0, max: 100 })]);
    const SHAPE: Shape = obj_with(
        &[
            required("name", Shape::Str),
            field("inner", INNER).not_enforced(),
            field("items", list(&INNER)),
            field("a", Shape::Bool),
            field("b", Shape::Bool),
        ],
        &[at_most_one(&["a", "b"])],
    );

    fn run(value: Value) -> Report {
        let mut report = Report::default();
        walk(&SHAPE, &value, "spec", true, &mut report);
        report
    }

    #[test]
    fn walker_collects_every_error_with_its_path() {
        let report = run(
            json!({"inner": {"n": 150, "x": 1}, "items": [{"n": "1"}, {"n": 1.0}], "a": true, "b": false}),
        );
        let fields: Vec<&str> = report.errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "spec.inner.n",
                "spec.inner.x",
                "spec.items[0].n",
                "spec.items[1].n",
                "spec.name",
                "spec"
            ],
            "{:#?}",
            report.errors
        );
        assert!(
            report.errors[1]
                .message
                .starts_with("unknown field `x`; expected one of `n`")
        );
        assert_eq!(report.warnings.len(), 1);
        assert_eq!(report.warnings[0].field, "spec.inner");
    }

    #[test]
    fn unknown_fields_hint_at_near_misses() {
        let msg = unknown_field("Host", ["host", "subset"].into_iter());
        assert!(msg.contains("did you mean `host`?"), "{msg}");
    }

    #[test]
    fn odd_map_keys_are_quoted_in_paths() {
        assert_eq!(child("metadata.labels", "app"), "metadata.labels.app");
        assert_eq!(
            child("metadata.labels", "app.kubernetes.io/name"),
            "metadata.labels[\"app.kubernetes.io/name\"]"
        );
        assert_eq!(child("", "spec"), "spec");
    }
}
