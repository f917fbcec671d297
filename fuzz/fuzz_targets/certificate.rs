//! A peer's certificate chain, as both ends of a handshake check it, and PEM trust bundles.
//!
//! Input: the chain's certificates (leaf first), each preceded by its length as a big-endian
//! u16 (cut short by the end of the input). The trusted CA (`east.mesh`) is made afresh by
//! each run, so nothing in the corpus is signed by it: this target is about reading hostile
//! bytes (DER, SANs, SPIFFE IDs, PEM); the property tests beside the verifier also mutate
//! SVIDs the trusted CA issued. Whatever is accepted must name the ID the CA issued.
#![no_main]

use std::sync::{Arc, OnceLock};

use federation::identity::fuzzing::{verify_client_chain, verify_server_chain};
use federation::identity::{
    CertificateAuthority, SpiffeId, TrustBundles, TrustDomain, TrustStore, peer_spiffe_id,
};
use libfuzzer_sys::fuzz_target;
use rustls::pki_types::{CertificateDer, UnixTime};

struct Fixture {
    east: TrustDomain,
    trust: TrustStore,
    id: SpiffeId,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let east = TrustDomain::parse("east.mesh").unwrap();
        let ca = CertificateAuthority::load_or_create(dir.path(), &east).unwrap();
        let mut bundles = TrustBundles::new();
        bundles.insert_pem(east.clone(), &ca.bundle_pem()).unwrap();
        Fixture {
            id: SpiffeId::gateway(&east, "east-1").unwrap(),
            east,
            trust: TrustStore::from(Arc::new(bundles)),
        }
    })
}

fn chain(mut data: &[u8]) -> Vec<CertificateDer<'static>> {
    let mut certs = Vec::new();
    while data.len() >= 2 && certs.len() < 4 {
        let len = usize::from(u16::from_be_bytes([data[0], data[1]])).min(data.len() - 2);
        certs.push(CertificateDer::from(data[2..2 + len].to_vec()));
        data = &data[2 + len..];
    }
    certs
}
fuzz_target!(|data: &[u8]| {
    let f = fixture();
    let chain = chain(data);
    let now = UnixTime::now();
    let read = peer_spiffe_id(&chain);
    for accepted in [
        verify_client_chain(&f.trust, &chain, now).is_ok(),
        verify_server_chain(&f.trust, &f.east, &chain, now).is_ok(),
    ] {
        if accepted {
            assert_eq!(read.as_ref().ok(), Some(&f.id));
        }
    }
    if let Ok(pem) = std::str::from_utf8(data) {
        let _ = TrustBundles::new().insert_pem(f.east.clone(), pem);
    }
});
