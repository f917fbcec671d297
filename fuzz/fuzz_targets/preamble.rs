//! A stream's first frame, as the receiving gateway reads and judges it.
#![no_main]

use std::time::UNIX_EPOCH;

use gateway::preamble::{Catalog, Preamble, StreamRequest, VerdictCode, read_frame, write_frame};
use libfuzzer_sys::fuzz_target;

const MAX: usize = 4096;

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    let decoded = futures::executor::block_on(read_frame::<Preamble>(&mut rest, MAX));
    assert!(data.len() - rest.len() <= 4 + MAX);
    if let Ok(p) = decoded {
        match StreamRequest::from_preamble(p, UNIX_EPOCH) {
            Ok(req) => {
                let mut frame = Vec::new();
                futures::executor::block_on(write_frame(&mut frame, &req.to_preamble())).unwrap();
                let again: Preamble =
                    futures::executor::block_on(read_frame(&mut frame.as_slice(), usize::MAX))
                        .unwrap();
                assert_eq!(StreamRequest::from_preamble(again, UNIX_EPOCH), Ok(req));
            }
            Err(v) => assert_ne!(v.decision(), VerdictCode::Accepted),
        }
    }
    let _ = futures::executor::block_on(read_frame::<Catalog>(&mut &data[..], MAX));
});
