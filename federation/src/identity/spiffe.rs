//! SPIFFE trust domains and IDs, parsed strictly.
//!
//! The rules are the SPIFFE ID spec's, minus its leniencies: a trust domain is 1-255 bytes of
//! `a-z 0-9 . - _` (so no scheme, port, userinfo or path can hide in it), and a workload ID is
//! `spiffe://<trust domain>/<segment>[/<segment>...]` with every segment non-empty, made of
//! `A-Z a-z 0-9 . - _`, and neither `.` nor `..`. No percent-encoding, query or fragment. Being
//! strict here means two spellings can never name the same workload, so comparing IDs as strings
//! in policy is sound.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::IdentityError;

const SCHEME: &str = "spiffe://";
const MAX_TRUST_DOMAIN_LEN: usize = 255;
const MAX_ID_LEN: usize = 2048;

/// A SPIFFE trust domain, e.g. `east.mesh`: the unit of trust that one CA signs for.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TrustDomain(String);

impl TrustDomain {
    pub fn parse(value: &str) -> Result<Self, IdentityError> {
        check_trust_domain(value).map_err(|reason| IdentityError::InvalidTrustDomain {
            value: value.to_string(),
            reason,
        })?;
        Ok(Self(value.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The trust domain's own SPIFFE ID (`spiffe://<td>`, no path), which SPIFFE lets a signing
    /// certificate carry as its URI SAN.
    pub(crate) fn uri(&self) -> String {
        format!("{SCHEME}{}", self.0)
    }

    /// Inverse of [`Self::uri`].
    pub(crate) fn from_uri(uri: &str) -> Option<Self> {
        uri.strip_prefix(SCHEME).and_then(|td| Self::parse(td).ok())
    }
}

fn check_trust_domain(value: &str) -> Result<(), &'static str> {
    if value.is_empty() {
        return Err("it is empty");
    }
    if value.len() > MAX_TRUST_DOMAIN_LEN {
        return Err("it is longer than 255 bytes");
    }
    match value.bytes().find(|&b| !is_trust_domain_byte(b)) {
        None => Ok(()),
        Some(b'A'..=b'Z') => Err("uppercase letters are not allowed"),
        Some(b':') => Err("a scheme or port is not allowed"),
        Some(b'/') => Err("a path is not allowed"),
        Some(b'@') => Err("userinfo is not allowed"),
        Some(_) => Err("only a-z, 0-9, '.', '-' and '_' are allowed"),
    }
}

fn is_trust_domain_byte(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_')
}

/// Checks a workload path: `/` followed by one or more segments.
fn check_path(path: &str) -> Result<(), &'static str> {
    if path.is_empty() {
        return Err("a workload ID needs a path");
    }
    let Some(segments) = path.strip_prefix('/') else {
        return Err("the path must start with '/'");
    };
    for segment in segments.split('/') {
        if segment.is_empty() {
            return Err("path segments must not be empty (no '//' and no trailing '/')");
        }
        if segment == "." || segment == ".." {
            return Err("path segments '.' and '..' are not allowed");
        }
        if !segment
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
        {
            return Err("path segments may only contain A-Z, a-z, 0-9, '.', '-' and '_'");
        }
    }
    Ok(())
}

impl fmt::Debug for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TrustDomain({})", self.0)
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for TrustDomain {
    type Err = IdentityError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl TryFrom<String> for TrustDomain {
    type Error = IdentityError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<TrustDomain> for String {
    fn from(value: TrustDomain) -> Self {
        value.0
    }
}

/// A workload's SPIFFE ID, e.g. `spiffe://east.mesh/gateway/east-1`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SpiffeId {
    // `id` first so the derived order is the order of the full URI.
    id: String,
    trust_domain: TrustDomain,
}

impl SpiffeId {
    pub fn parse(value: &str) -> Result<Self, IdentityError> {
        let invalid = |reason: String| IdentityError::InvalidSpiffeId {
            value: value.to_string(),
            reason,
        };
        if value.len() > MAX_ID_LEN {
            return Err(invalid("it is longer than 2048 bytes".into()));
        }
        let rest = value
            .strip_prefix(SCHEME)
            .ok_or_else(|| invalid("it must start with \"spiffe://\"".into()))?;
        let (td, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        check_trust_domain(td).map_err(|reason| invalid(format!("trust domain: {reason}")))?;
        check_path(path).map_err(|reason| invalid(reason.into()))?;
        Ok(Self {
            id: value.to_string(),
            trust_domain: TrustDomain(td.to_string()),
        })
    }

    /// Builds `spiffe://<trust_domain><path>`; `path` starts with `/`.
    pub fn new(trust_domain: TrustDomain, path: &str) -> Result<Self, IdentityError> {
        let id = format!("{SCHEME}{trust_domain}{path}");
        check_path(path).map_err(|reason| IdentityError::InvalidSpiffeId {
            value: id.clone(),
            reason: reason.into(),
        })?;
        if id.len() > MAX_ID_LEN {
            return Err(IdentityError::InvalidSpiffeId {
                value: id,
                reason: "it is longer than 2048 bytes".into(),
            });
        }
        Ok(Self { id, trust_domain })
    }

    /// The ID a Causeway gateway named `name` holds: `spiffe://<td>/gateway/<name>`.
    pub fn gateway(trust_domain: &TrustDomain, name: &str) -> Result<Self, IdentityError> {
        if name.contains('/') {
            return Err(IdentityError::InvalidSpiffeId {
                value: format!("{SCHEME}{trust_domain}/gateway/{name}"),
                reason: format!("gateway name {name:?} must be a single path segment"),
            });
        }
        Self::new(trust_domain.clone(), &format!("/gateway/{name}"))
    }

    /// The ID of a workload running as Kubernetes service account `service_account` in
    /// `namespace`, as Istio names it: `spiffe://<td>/ns/<namespace>/sa/<service_account>`.
    /// Each must be a single path segment; callers that take them from users check them as
    /// DNS labels first.
    pub fn workload(
        trust_domain: &TrustDomain,
        namespace: &str,
        service_account: &str,
    ) -> Result<Self, IdentityError> {
        for (what, segment) in [
            ("namespace", namespace),
            ("service account", service_account),
        ] {
            if segment.contains('/') {
                return Err(IdentityError::InvalidSpiffeId {
                    value: format!("{SCHEME}{trust_domain}/ns/{namespace}/sa/{service_account}"),
                    reason: format!("{what} {segment:?} must be a single path segment"),
                });
            }
        }
        Self::new(
            trust_domain.clone(),
            &format!("/ns/{namespace}/sa/{service_account}"),
        )
    }

    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The path, starting with `/`.
    pub fn path(&self) -> &str {
        &self.id[SCHEME.len() + self.trust_domain.0.len()..]
    }

    pub fn as_str(&self) -> &str {
        &self.id
    }
}

impl fmt::Debug for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpiffeId({})", self.id)
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.id)
    }
}

impl FromStr for SpiffeId {
    type Err = IdentityError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl TryFrom<String> for SpiffeId {
    type Error = IdentityError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<SpiffeId> for String {
    fn from(value: SpiffeId) -> Self {
        value.id
    }
}

#[cfg(test)]
mod proptests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trust_domain_accepts_spec_names() {
        for good in [
            "east.mesh",
            "example.org",
            "a",
            "td_1-x.y",
            &"a".repeat(255),
        ] {
            let td = TrustDomain::parse(good).unwrap();
            assert_eq!(td.as_str(), good);
            assert_eq!(td.to_string(), good);
        }
    }

    #[test]
    fn trust_domain_refuses_everything_else() {
        for bad in [
            "",
            "East.mesh",
            "east.mesh:443",
            "spiffe://east.mesh",
            "user@east.mesh",
            "east.mesh/path",
            "east mesh",
            "east.mesh?q",
            "ëast.mesh",
            &"a".repeat(256),
        ] {
            let err = TrustDomain::parse(bad).unwrap_err();
            assert!(
                matches!(err, IdentityError::InvalidTrustDomain { .. }),
                "{bad:?}: {err}"
            );
        }
    }

    #[test]
    fn spiffe_id_parses_trust_domain_and_path() {
        let id = SpiffeId::parse("spiffe://east.mesh/ns/Default/sa/web-1.v_2").unwrap();
        assert_eq!(id.trust_domain().as_str(), "east.mesh");
        assert_eq!(id.path(), "/ns/Default/sa/web-1.v_2");
        assert_eq!(id.to_string(), "spiffe://east.mesh/ns/Default/sa/web-1.v_2");
        assert_eq!(
            "spiffe://east.mesh/x".parse::<SpiffeId>().unwrap().path(),
            "/x"
        );
    }

    #[test]
    fn spiffe_id_refuses_malformed_ids() {
        let long = format!("spiffe://east.mesh/{}", "a".repeat(2048));
        for bad in [
            "",
            "east.mesh/workload",
            "SPIFFE://east.mesh/workload",
            "https://east.mesh/workload",
            "spiffe://east.mesh",
            "spiffe://east.mesh/",
            "spiffe:///workload",
            "spiffe://East.mesh/workload",
            "spiffe://east.mesh:8443/workload",
            "spiffe://user@east.mesh/workload",
            "spiffe://east.mesh/a//b",
            "spiffe://east.mesh/a/",
            "spiffe://east.mesh/a/../b",
            "spiffe://east.mesh/./a",
            "spiffe://east.mesh/a?query",
            "spiffe://east.mesh/a#frag",
            "spiffe://east.mesh/a%20b",
            "spiffe://east.mesh/a b",
            &long,
        ] {
            let err = SpiffeId::parse(bad).unwrap_err();
            assert!(
                matches!(err, IdentityError::InvalidSpiffeId { .. }),
                "{bad:?}: {err}"
            );
        }
    }

    #[test]
    fn constructors_apply_the_same_rules() {
        let td = TrustDomain::parse("east.mesh").unwrap();
        let gw = SpiffeId::gateway(&td, "east-1").unwrap();
        assert_eq!(gw.as_str(), "spiffe://east.mesh/gateway/east-1");
        assert_eq!(gw, SpiffeId::parse(gw.as_str()).unwrap());
        assert_eq!(SpiffeId::new(td.clone(), "/a/b").unwrap().path(), "/a/b");

        let web = SpiffeId::workload(&td, "shop", "web").unwrap();
        assert_eq!(web.as_str(), "spiffe://east.mesh/ns/shop/sa/web");
        assert_eq!(web, SpiffeId::parse(web.as_str()).unwrap());
        assert!(SpiffeId::workload(&td, "a/b", "web").is_err());
        assert!(SpiffeId::workload(&td, "shop", "").is_err());
        assert!(SpiffeId::workload(&td, "..", "web").is_err());

        assert!(SpiffeId::gateway(&td, "a/b").is_err());
        assert!(SpiffeId::gateway(&td, "").is_err());
        assert!(SpiffeId::gateway(&td, "..").is_err());
        assert!(SpiffeId::new(td.clone(), "").is_err());
        assert!(SpiffeId::new(td.clone(), "a").is_err());
        assert!(SpiffeId::new(td, &format!("/{}", "a".repeat(2048))).is_err());
    }

    #[test]
    fn deserialize_validates() {
        #[derive(Deserialize)]
        struct Wrapper {
            td: TrustDomain,
            id: SpiffeId,
        }
        let good = serde::de::value::MapDeserializer::<_, serde::de::value::Error>::new(
            [("td", "east.mesh"), ("id", "spiffe://east.mesh/gateway/a")].into_iter(),
        );
        let w = Wrapper::deserialize(good).unwrap();
        assert_eq!(w.td.as_str(), "east.mesh");
        assert_eq!(w.id.path(), "/gateway/a");

        let bad = serde::de::value::MapDeserializer::<_, serde::de::value::Error>::new(
            [("td", "East"), ("id", "spiffe://east.mesh/a")].into_iter(),
        );
        assert!(Wrapper::deserialize(bad).is_err());
    }

    /// Fuzz-style: arbitrary strings never panic the parsers, and whatever parses prints back
    /// to itself.
    #[test]
    fn arbitrary_strings_parse_or_fail_cleanly() {
        let alphabet: Vec<char> = "spiffe:/.-_aZ09%?#@[]: \u{e9}\u{0}".chars().collect();
        let mut state: u64 = 0x5eed;
        let mut next = move || {
            // xorshift: deterministic, no dependency.
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for i in 0..20_000 {
            let len = (next() % 40) as usize;
            let mut s: String = (0..len)
                .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
                .collect();
            if i % 3 == 0 {
                s = format!("spiffe://{s}");
            }
            if let Ok(id) = SpiffeId::parse(&s) {
                assert_eq!(id.to_string(), s);
            }
            if let Ok(td) = TrustDomain::parse(&s) {
                assert_eq!(td.as_str(), s);
            }
        }
    }
}
