//! Property tests of SPIFFE ID parsing (the `cargo test` half of the fuzzing regime; the
//! libFuzzer half is `fuzz/fuzz_targets/spiffe.rs`): any string parses or is refused with a
//! reason, never a panic; what parses prints back to itself; and every ID the rules allow
//! parses, into the trust domain and path it was built from.

use proptest::prelude::*;

use super::*;

fn trust_domain() -> impl Strategy<Value = String> {
    "[a-z0-9._-]{1,40}"
}

fn segment() -> impl Strategy<Value = String> {
    "[A-Za-z0-9._-]{1,12}".prop_filter("'.' and '..' are not segments", |s| s != "." && s != "..")
}

fn path() -> impl Strategy<Value = String> {
    prop::collection::vec(segment(), 1..6).prop_map(|s| format!("/{}", s.join("/")))
}

/// Strings near the grammar: its alphabet, plus the characters it must refuse.
fn near_miss() -> impl Strategy<Value = String> {
    "(spiffe://)?[a-zA-Z0-9._/:@%?#\\- \u{e9}\u{0}]{0,40}"
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn valid_ids_parse_and_print_back(td in trust_domain(), path in path()) {
        let text = format!("spiffe://{td}{path}");
        let id = SpiffeId::parse(&text).expect("the rules allow it");
        prop_assert_eq!(id.trust_domain().as_str(), td.as_str());
        prop_assert_eq!(id.path(), path.as_str());
        prop_assert_eq!(id.to_string(), text.clone());
        prop_assert_eq!(SpiffeId::parse(&id.to_string()).unwrap(), id.clone());
        let built = SpiffeId::new(TrustDomain::parse(&td).unwrap(), &path).unwrap();
        prop_assert_eq!(built, id.clone());
        // Serde goes through the same parser.
        let json = serde_json::to_string(&id).unwrap();
        prop_assert_eq!(serde_json::from_str::<SpiffeId>(&json).unwrap(), id);
    }

    #[test]
    fn arbitrary_strings_parse_or_are_refused(text in prop_oneof![near_miss(), "\\PC{0,60}", any::<String>()]) {
        check(&text);
    }

    /// A valid ID with one character replaced, inserted or removed.
    #[test]
    fn mutated_ids_parse_or_are_refused(
        td in trust_domain(),
        path in path(),
        at in any::<usize>(),
        c in prop::char::any(),
        how in 0..3u8,
    ) {
        let mut chars: Vec<char> = format!("spiffe://{td}{path}").chars().collect();
        let at = at % chars.len();
        match how {
            0 => chars[at] = c,
            1 => chars.insert(at, c),
            _ => { chars.remove(at); }
        }
        check(&chars.into_iter().collect::<String>());
    }

    #[test]
    fn trust_domains_parse_or_are_refused(text in prop_oneof![trust_domain(), near_miss()]) {
        match TrustDomain::parse(&text) {
            Ok(td) => {
                prop_assert_eq!(td.as_str(), text.as_str());
                prop_assert_eq!(TrustDomain::from_uri(&td.uri()), Some(td));
            }
            Err(e) => prop_assert!(matches!(e, IdentityError::InvalidTrustDomain { .. }), "{:?}", e),
        }
    }
}

/// What must hold of any string.
fn check(text: &str) {
    match SpiffeId::parse(text) {
        Ok(id) => {
            assert_eq!(id.as_str(), text);
            assert_eq!(format!("spiffe://{}{}", id.trust_domain(), id.path()), text);
            assert_eq!(SpiffeId::parse(id.as_str()).unwrap(), id);
            assert!(text.len() <= MAX_ID_LEN);
        }
        Err(IdentityError::InvalidSpiffeId { value, reason }) => {
            assert_eq!(value, text);
            assert!(!reason.is_empty());
        }
        Err(other) => panic!("{text:?}: unexpected error {other:?}"),
    }
}
