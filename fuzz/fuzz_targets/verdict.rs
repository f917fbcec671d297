//! The one-frame answer to a preamble, as the opening gateway reads it.
#![no_main]

use gateway::preamble::{VerdictCode, read_verdict};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    if let Ok(v) = futures::executor::block_on(read_verdict(&mut rest)) {
        // Only code 0 accepts; anything from a newer peer is a refusal.
        assert_eq!(v.decision() == VerdictCode::Accepted, v.code == 0);
        let _ = v.decision().as_label();
    }
    assert!(data.len() - rest.len() <= 4 + 1024);
});
