//! Property tests of the certificate checks (the `cargo test` half of the fuzzing regime; the
//! libFuzzer half is `fuzz/fuzz_targets/certificate.rs`): arbitrary DER, mutated SVIDs,
//! self-signed certificates naming any URI, and arbitrary clocks are refused or accepted by
//! the rules, never with a panic; and an accepted chain always names the identity its CA
//! issued, whatever bytes around it were changed.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use proptest::prelude::*;
use rustls::pki_types::{CertificateDer, UnixTime};

use super::fuzzing::{verify_client_chain, verify_server_chain};
use crate::identity::{
    CertificateAuthority, SpiffeId, Svid, TrustBundles, TrustDomain, TrustStore, peer_spiffe_id,
};

struct Fixture {
    _dir: tempfile::TempDir,
    east: TrustDomain,
    trust: TrustStore,
    root_pem: String,
    svid: Svid,
}

/// One CA and one SVID for every case: key generation is the slow part.
fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let east = TrustDomain::parse("east.mesh").unwrap();
        let ca = CertificateAuthority::load_or_create(dir.path(), &east).unwrap();
        let mut bundles = TrustBundles::new();
        bundles.insert_pem(east.clone(), &ca.bundle_pem()).unwrap();
        let id = SpiffeId::gateway(&east, "east-1").unwrap();
        let svid = ca.issue_for(&id, Duration::from_secs(3600)).unwrap();
        Fixture {
            _dir: dir,
            east,
            trust: TrustStore::from(Arc::new(bundles)),
            root_pem: ca.bundle_pem(),
            svid,
        }
    })
}

/// Both sides' checks on one chain; they must agree, and an accepted chain must name `id`.
fn judge(trust: &TrustStore, chain: &[CertificateDer<'_>], now: UnixTime, id: &SpiffeId) -> bool {
    let f = fixture();
    let client = verify_client_chain(trust, chain, now);
    let server = verify_server_chain(trust, &f.east, chain, now);
    // Reading the ID never panics, whatever the bytes.
    let read = peer_spiffe_id(chain);
    for result in [&client, &server] {
        match result {
            Ok(()) => assert_eq!(
                read.as_ref().ok(),
                Some(id),
                "accepted a chain naming {read:?}"
            ),
            Err(e) => assert!(!e.to_string().is_empty()),
        }
    }
    client.is_ok() || server.is_ok()
}

fn now() -> UnixTime {
    UnixTime::now()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_der_is_refused(
        leaf in prop::collection::vec(any::<u8>(), 0..600),
        rest in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..100), 0..3),
    ) {
        let f = fixture();
        let mut chain = vec![CertificateDer::from(leaf)];
        chain.extend(rest.into_iter().map(CertificateDer::from));
        prop_assert!(!judge(&f.trust, &chain, now(), f.svid.id()));
    }

    /// The genuine SVID with a few bytes changed: refused, or (if the change touched nothing
    /// signed or meaningful) still naming the same workload.
    #[test]
    fn mutated_svids_never_name_someone_else(
        edits in prop::collection::vec((any::<usize>(), any::<u8>()), 1..4),
        cut in prop::option::weighted(0.1, any::<usize>()),
    ) {
        let f = fixture();
        let mut der = f.svid.chain()[0].to_vec();
        for (at, byte) in edits {
            let n = der.len();
            der[at % n] = byte;
        }
        if let Some(cut) = cut {
            der.truncate(cut % der.len());
        }
        judge(&f.trust, &[CertificateDer::from(der)], now(), f.svid.id());
    }

    /// A certificate naming any URI, signed by itself rather than the trusted CA.
    #[test]
    fn self_signed_certificates_are_refused(
        uris in prop::collection::vec(prop_oneof![
            "spiffe://east\\.mesh/[a-z/.]{0,12}",
            "[ -~]{0,30}",
        ], 0..3),
    ) {
        let f = fixture();
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = rcgen::CertificateParams::default();
        params.subject_alt_names = uris
            .iter()
            .filter_map(|u| u.clone().try_into().ok().map(rcgen::SanType::URI))
            .collect();
        let Ok(cert) = params.self_signed(&key) else { return Ok(()) };
        let chain = [cert.der().clone()];
        prop_assert!(!judge(&f.trust, &chain, now(), f.svid.id()));
        // The ID read is the single URI's, by the ID parser's rules.
        match (peer_spiffe_id(&chain), params.subject_alt_names.as_slice()) {
            (Ok(id), [rcgen::SanType::URI(uri)]) => prop_assert_eq!(id.as_str(), uri.as_str()),
            (Ok(id), sans) => prop_assert!(false, "read {id:?} from {sans:?}"),
            (Err(_), _) => {}
        }
    }

    /// Accepted exactly while the SVID is valid.
    #[test]
    fn clocks_outside_the_validity_are_refused(secs in 0..(u64::from(u32::MAX) * 4)) {
        let f = fixture();
        let now = UnixTime::since_unix_epoch(Duration::from_secs(secs));
        let at = UNIX_EPOCH + Duration::from_secs(secs);
        let accepted = judge(&f.trust, f.svid.chain(), now, f.svid.id());
        let nb = f.svid.not_before();
        let na = f.svid.not_after();
        if at < nb || at > na {
            prop_assert!(!accepted, "accepted at {at:?}, valid {nb:?}..{na:?}");
        } else {
            prop_assert!(accepted);
        }
    }

    /// Bundles read from damaged PEM are refused, or trust only what they say.
    #[test]
    fn damaged_bundles_are_refused_or_harmless(
        edits in prop::collection::vec((any::<usize>(), prop::char::range(' ', '~')), 0..4),
    ) {
        let f = fixture();
        let mut pem: Vec<char> = f.root_pem.chars().collect();
        for (at, c) in edits {
            let n = pem.len();
            pem[at % n] = c;
        }
        let pem: String = pem.into_iter().collect();
        let mut bundles = TrustBundles::new();
        if bundles.insert_pem(f.east.clone(), &pem).is_ok() {
            let trust = TrustStore::from(Arc::new(bundles));
            judge(&trust, f.svid.chain(), now(), f.svid.id());
        }
    }
}

#[test]
fn the_fixture_svid_is_accepted_now() {
    let f = fixture();
    assert!(judge(&f.trust, f.svid.chain(), now(), f.svid.id()));
    assert!(SystemTime::now() < f.svid.not_after());
    assert!(verify_client_chain(&f.trust, &[], now()).is_err());
}
