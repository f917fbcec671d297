//! Bearer tokens (`cw_<id>_<secret>`) and the RFC 3339 timestamps commands carry.
//!
//! The id is public (it names the token in listings and the audit log); the secret leaves the
//! proposer only as its SHA-256, so the replicated log, snapshots and `GET /v1/tokens` never
//! hold anything a reader could present as a credential.

use rand::Rng;
use ring::{digest, hmac};
use time::format_description::well_known::Rfc3339;
use time::{Duration, OffsetDateTime, UtcOffset};

/// Every token starts with this, so secret scanners and humans recognise one.
pub const PREFIX: &str = "cw_";
/// Hex characters in a token id (6 random bytes: enough to be unique among a mesh's tokens).
pub const ID_LEN: usize = 12;
/// Bounds on the secret part's length: 32 random bytes are 43 base64url or 64 hex characters.
const SECRET_MIN: usize = 43;
const SECRET_MAX: usize = 128;

/// A new token: `(token, id, secret_sha256)`. The token string is shown once to whoever asked
/// for it; the state keeps only `id` and the hash.
pub fn generate() -> (String, String, String) {
    // `rand::rng()` is a CSPRNG seeded from the OS, and infallible (unlike `ring::rand`).
    let mut rng = rand::rng();
    let mut id = [0u8; ID_LEN / 2];
    let mut secret = [0u8; 32];
    rng.fill(&mut id);
    rng.fill(&mut secret);
    let id = hex(&id);
    let secret = hex(&secret);
    let sha = hash(&secret);
    (format!("{PREFIX}{id}_{secret}"), id, sha)
}

/// Splits a token into `(id, secret)`, or `None` when it is not shaped like one of ours.
pub fn parse(token: &str) -> Option<(&str, &str)> {
    let (id, secret) = token.strip_prefix(PREFIX)?.split_once('_')?;
    let id_ok = id.len() == ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    let secret_ok = (SECRET_MIN..=SECRET_MAX).contains(&secret.len())
        && secret
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    (id_ok && secret_ok).then_some((id, secret))
}

/// Lowercase hex SHA-256 of a token's secret part.
pub fn hash(secret: &str) -> String {
    hex(digest::digest(&digest::SHA256, secret.as_bytes()).as_ref())
}

/// A server's proof that it knows join token `id`'s secret, over `document` (the mesh's trust
/// bundles, offered to a gateway that has no CA to verify the server by yet): HMAC-SHA256 keyed
/// with the secret's hash, in hex. Every member holds that hash and nobody else does, so a man
/// in the middle cannot forge the proof, and the joining gateway reveals nothing by checking it.
pub fn discovery_mac(secret_sha256: &str, document: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret_sha256.as_bytes());
    hex(hmac::sign(&key, document).as_ref())
}

/// Checks a [`discovery_mac`] with the token's secret itself (constant time).
pub fn verify_discovery_mac(secret: &str, document: &[u8], mac_hex: &str) -> bool {
    let Some(mac) = unhex(mac_hex) else {
        return false;
    };
    let key = hmac::Key::new(hmac::HMAC_SHA256, hash(secret).as_bytes());
    hmac::verify(&key, document, &mac).is_ok()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Compares two hashes without stopping at the first difference, so response times do not
/// tell an attacker how much of a guessed hash was right.
pub fn hashes_equal(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// The proposer's clock, UTC, whole seconds (`2025-01-31T12:00:00Z`).
pub fn now_rfc3339() -> String {
    // Formatting a current UTC time cannot fail (the year is within 0..=9999); the epoch is a
    // visible rather than a silent fallback should the clock be absurd.
    format(OffsetDateTime::now_utc()).unwrap_or_else(|| "1970-01-01T00:00:00Z".to_string())
}

/// `at` plus `secs` seconds, in the same form as [`now_rfc3339`]; `None` if `at` is not
/// RFC 3339 or the result is out of range.
pub fn rfc3339_after(at: &str, secs: u64) -> Option<String> {
    let secs = i64::try_from(secs).ok()?;
    format(parse_rfc3339(at)?.checked_add(Duration::seconds(secs))?)
}

/// Parses an RFC 3339 timestamp (any offset).
pub fn parse_rfc3339(at: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(at, &Rfc3339).ok()
}

/// Whether a token with `expires_at` is expired at `now`. Unparsable times count as expired:
/// a token we cannot date is not one we accept.
pub fn is_expired(expires_at: Option<&str>, now: &str) -> bool {
    let Some(expires_at) = expires_at else {
        return false;
    };
    match (parse_rfc3339(expires_at), parse_rfc3339(now)) {
        (Some(expires), Some(now)) => now >= expires,
        _ => true,
    }
}

fn format(t: OffsetDateTime) -> Option<String> {
    t.to_offset(UtcOffset::UTC)
        .replace_nanosecond(0)
        .ok()?
        .format(&Rfc3339)
        .ok()
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_discovery_proof_verifies_with_the_secret_only() {
        let (token, _, sha) = generate();
        let (_, secret) = parse(&token).unwrap();
        let doc = b"{\"clusters\":[]}";
        let mac = discovery_mac(&sha, doc);
        assert!(verify_discovery_mac(secret, doc, &mac));
        // Another document, another secret, or a mangled proof: refused.
        assert!(!verify_discovery_mac(secret, b"{\"clusters\":[1]}", &mac));
        let (other, _, _) = generate();
        assert!(!verify_discovery_mac(parse(&other).unwrap().1, doc, &mac));
        assert!(!verify_discovery_mac(secret, doc, &mac[1..]));
        assert!(!verify_discovery_mac(secret, doc, "zz"));
        assert!(!verify_discovery_mac(secret, doc, ""));
    }

    #[test]
    fn generated_tokens_parse_and_hash() {
        let (token, id, sha) = generate();
        let (pid, secret) = parse(&token).expect("generated token parses");
        assert_eq!(pid, id);
        assert_eq!(id.len(), ID_LEN);
        assert_eq!(secret.len(), 64);
        assert_eq!(hash(secret), sha);
        assert_eq!(sha.len(), 64);
        let (other, ..) = generate();
        assert_ne!(token, other);
    }

    #[test]
    fn hash_is_sha256_hex() {
        assert_eq!(
            hash("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn parse_rejects_malformed_tokens() {
        let secret = "a".repeat(43);
        assert!(parse(&format!("cw_0123456789ab_{secret}")).is_some());
        // Base64url secrets may contain '_' themselves.
        assert_eq!(
            parse(&format!("cw_0123456789ab_{secret}_x")).map(|(id, _)| id),
            Some("0123456789ab")
        );
        for bad in [
            String::new(),
            "cw_".into(),
            format!("xx_0123456789ab_{secret}"),
            format!("cw_0123456789AB_{secret}"),
            format!("cw_0123456789a_{secret}"),
            "cw_0123456789ab_short".into(),
            format!("cw_0123456789ab_{}", "a".repeat(129)),
            format!("cw_0123456789ab_{}!", "a".repeat(43)),
            format!("cw_0123456789ab{secret}"),
        ] {
            assert!(parse(&bad).is_none(), "{bad:?} accepted");
        }
    }

    #[test]
    fn hashes_compare_exactly() {
        assert!(hashes_equal("abc", "abc"));
        assert!(!hashes_equal("abc", "abd"));
        assert!(!hashes_equal("abc", "abcd"));
    }

    #[test]
    fn timestamps() {
        let now = now_rfc3339();
        assert!(now.ends_with('Z') && now.len() == 20, "{now}");
        assert_eq!(
            rfc3339_after("2025-01-31T23:30:00Z", 3600).as_deref(),
            Some("2025-02-01T00:30:00Z")
        );
        assert_eq!(
            rfc3339_after("2025-01-31T23:30:00.5+01:00", 0).as_deref(),
            Some("2025-01-31T22:30:00Z")
        );
        assert_eq!(rfc3339_after("yesterday", 1), None);
        assert_eq!(rfc3339_after("2025-01-31T23:30:00Z", u64::MAX), None);
        assert!(!is_expired(None, "2025-01-01T00:00:00Z"));
        assert!(!is_expired(
            Some("2025-01-01T00:00:01Z"),
            "2025-01-01T00:00:00Z"
        ));
        assert!(is_expired(
            Some("2025-01-01T00:00:00Z"),
            "2025-01-01T00:00:00Z"
        ));
        assert!(is_expired(Some("garbage"), "2025-01-01T00:00:00Z"));
        assert!(is_expired(Some("2025-01-01T00:00:00Z"), "garbage"));
    }
}
