//! SPIFFE IDs and trust domains, as read from certificates, config, policy and preambles.
#![no_main]

use federation::identity::{SpiffeId, TrustDomain};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(id) = SpiffeId::parse(text) {
        assert_eq!(id.as_str(), text);
        assert_eq!(format!("spiffe://{}{}", id.trust_domain(), id.path()), text);
        assert_eq!(SpiffeId::parse(&id.to_string()).unwrap(), id);
    }
    if let Ok(td) = TrustDomain::parse(text) {
        assert_eq!(td.as_str(), text);
    }
});
