//! Kubernetes naming rules for metadata: names, namespaces, label keys and values.
//!
//! Checks return the reason as text; the caller adds the field path.

use crate::model::check_dns_label;

/// RFC 1123 label: what native kinds, namespaces and cluster names must be.
pub(crate) fn check_label(value: &str) -> Result<(), String> {
    check_dns_label("name", value).map_err(|_| {
        format!(
            "{value:?} is not a DNS label: 1-63 lowercase letters, digits or '-', starting and ending with a letter or digit"
        )
    })
}

/// RFC 1123 subdomain: what Kubernetes (and so Istio) accepts as an object name.
pub(crate) fn check_subdomain(value: &str) -> Result<(), String> {
    let ok = !value.is_empty()
        && value.len() <= 253
        && value.split('.').all(|part| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !part.starts_with('-')
                && !part.ends_with('-')
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{value:?} is not a DNS subdomain: at most 253 lowercase letters, digits, '-' or '.', each dot-separated part starting and ending with a letter or digit"
        ))
    }
}

/// A label or annotation key: `[prefix/]name`, the prefix a DNS subdomain, the name 1-63
/// of `A-Z a-z 0-9 - _ .` starting and ending alphanumeric.
pub(crate) fn check_qualified_name(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    if let Some(prefix) = prefix
        && check_subdomain(prefix).is_err()
    {
        return Err(format!(
            "{key:?}: the prefix before '/' must be a DNS subdomain"
        ));
    }
    if !is_label_name(name) {
        return Err(format!(
            "{key:?} is not a valid key: the name must be 1-63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit"
        ));
    }
    Ok(())
}

/// A label value: empty, or 1-63 of `A-Z a-z 0-9 - _ .` starting and ending alphanumeric.
pub(crate) fn check_label_value(value: &str) -> Result<(), String> {
    if value.is_empty() || is_label_name(value) {
        Ok(())
    } else {
        Err(format!(
            "{value:?} is not a valid label value: at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit"
        ))
    }
}

fn is_label_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && bytes.first().is_some_and(u8::is_ascii_alphanumeric)
        && bytes.last().is_some_and(u8::is_ascii_alphanumeric)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subdomains() {
        for ok in ["a", "api-v1", "a.b.c", "deny-all", "x1"] {
            assert!(check_subdomain(ok).is_ok(), "{ok}");
        }
        for bad in ["", "A", "a..b", ".a", "a.", "-a", "a_b", &"a".repeat(254)] {
            assert!(check_subdomain(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn label_keys_and_values() {
        for ok in ["app", "app.kubernetes.io/name", "Version_2", "a-b.c"] {
            assert!(check_qualified_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "/a", "a/", "-a", "a b", "Bad_Prefix/x", &"a".repeat(64)] {
            assert!(check_qualified_name(bad).is_err(), "{bad}");
        }
        assert!(check_label_value("").is_ok());
        assert!(check_label_value("v1.2").is_ok());
        assert!(check_label_value("a b").is_err());
    }
}
