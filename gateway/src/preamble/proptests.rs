//! Property tests of the frame decoders (the `cargo test` half of the fuzzing regime; the
//! libFuzzer half is `fuzz/fuzz_targets/preamble.rs`): whatever arrives on a stream is decoded
//! or refused with a reason, never a panic; nothing is allocated beyond the frame limit; and
//! every valid request and verdict survives the wire unchanged.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use federation::identity::SpiffeId;
use federation::model::{Protocol, ServiceKey, ServicePort};
use proptest::prelude::*;

use super::*;

const MAX: usize = 4096;

/// Reads one frame from `bytes`; a slice never makes the reader wait.
fn decode<M: Message + Default>(bytes: &[u8], max: usize) -> (Result<M, FrameError>, usize) {
    let mut rest = bytes;
    let result = futures::executor::block_on(read_frame::<M>(&mut rest, max));
    (result, bytes.len() - rest.len())
}

fn encode<M: Message>(msg: &M) -> Vec<u8> {
    let mut buf = Vec::new();
    futures::executor::block_on(write_frame(&mut buf, msg)).expect("writing to a Vec");
    buf
}

fn label() -> impl Strategy<Value = String> {
    "[a-z]([a-z0-9-]{0,10}[a-z0-9])?"
}

fn spiffe_id() -> impl Strategy<Value = SpiffeId> {
    (
        "[a-z0-9._-]{1,20}",
        prop::collection::vec("[A-Za-z0-9_-][A-Za-z0-9._-]{0,8}", 1..4),
    )
        .prop_map(|(td, segments)| {
            SpiffeId::parse(&format!("spiffe://{td}/{}", segments.join("/")))
                .expect("the strategy builds valid IDs")
        })
}

fn stream_request() -> impl Strategy<Value = StreamRequest> {
    let proxy = (
        label(),
        label(),
        1..=u16::MAX,
        prop_oneof![Just(Protocol::Tcp), Just(Protocol::Http)],
        spiffe_id(),
        // Deadlines after `UNIX_EPOCH`, which the tests use as "now".
        prop::option::of(1..u64::from(u32::MAX) * 1000),
        prop::option::of("[ -~]{1,60}"),
        (
            prop::option::of(label()),
            prop::option::of(label()),
            1..10u32,
            prop::option::of(1..u64::MAX),
        ),
    )
        .prop_map(
            |(
                name,
                ns,
                port,
                protocol,
                source,
                deadline,
                trace,
                (subset, route, attempt, hash),
            )| {
                StreamRequest::Proxy {
                    service: ServiceKey::new(&name, &ns).expect("labels"),
                    port: ServicePort { port, protocol },
                    source,
                    // Any principal stands for itself as a gateway's; workload principals are
                    // checked by shape (see `workload_principals_have_a_workload_shape`).
                    authn: SourceAuthn::Gateway,
                    deadline: deadline.map(|ms| UNIX_EPOCH + Duration::from_millis(ms)),
                    traceparent: trace,
                    choice: RouteChoice {
                        subset,
                        route,
                        attempt,
                        hash,
                    },
                }
            },
        );
    prop_oneof![
        proxy,
        spiffe_id().prop_map(|source| StreamRequest::Catalog { source }),
    ]
}

/// A byte-level mutation: overwrite, insert, remove, or cut the tail.
#[derive(Debug, Clone)]
enum Edit {
    Set(usize, u8),
    Insert(usize, u8),
    Remove(usize),
    Truncate(usize),
}

fn edits() -> impl Strategy<Value = Vec<Edit>> {
    let edit = prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Edit::Set(i, b)),
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Edit::Insert(i, b)),
        any::<usize>().prop_map(Edit::Remove),
        any::<usize>().prop_map(Edit::Truncate),
    ];
    prop::collection::vec(edit, 1..6)
}

fn mutate(mut bytes: Vec<u8>, edits: &[Edit]) -> Vec<u8> {
    for edit in edits {
        let n = bytes.len();
        match *edit {
            Edit::Set(i, b) if n > 0 => bytes[i % n] = b,
            Edit::Insert(i, b) => bytes.insert(i % (n + 1), b),
            Edit::Remove(i) if n > 0 => {
                bytes.remove(i % n);
            }
            Edit::Truncate(i) => bytes.truncate(i % (n + 1)),
            _ => {}
        }
    }
    bytes
}

/// What the receiver does with a frame: decode, then judge. Checks what must hold of any input.
fn receive(bytes: &[u8]) {
    let (preamble, used) = decode::<Preamble>(bytes, MAX);
    assert!(used <= 4 + MAX, "read {used} bytes for one frame");
    if let Ok(p) = preamble {
        // Re-encoding what decoded yields a frame that decodes to the same preamble.
        let (again, _) = decode::<Preamble>(&encode(&p), usize::MAX);
        assert_eq!(again.expect("re-encoded"), p);
        match StreamRequest::from_preamble(p, UNIX_EPOCH) {
            Ok(req) => {
                // A request the receiver accepts is one the sender could have sent.
                assert_eq!(
                    StreamRequest::from_preamble(req.to_preamble(), UNIX_EPOCH),
                    Ok(req)
                );
            }
            Err(v) => {
                assert_ne!(v.decision(), VerdictCode::Accepted);
                assert!(!v.reason.is_empty());
            }
        }
    }
    let (verdict, used) = decode::<Verdict>(bytes, MAX_VERDICT_BYTES);
    assert!(used <= 4 + MAX_VERDICT_BYTES);
    if let Ok(v) = verdict {
        // Only code 0 is an accept; a code from a newer peer is a refusal.
        assert_eq!(v.decision() == VerdictCode::Accepted, v.code == 0);
    }
    let (catalog, _) = decode::<Catalog>(bytes, MAX);
    if let Ok(c) = catalog {
        assert_eq!(
            decode::<Catalog>(&encode(&c), usize::MAX)
                .0
                .expect("re-encoded"),
            c
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_are_decoded_or_refused(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        receive(&bytes);
    }

    /// Arbitrary bodies behind a correct length prefix reach the protobuf decoder every time.
    #[test]
    fn arbitrary_bodies_are_decoded_or_refused(body in prop::collection::vec(any::<u8>(), 0..300)) {
        let mut bytes = (body.len() as u32).to_be_bytes().to_vec();
        bytes.extend_from_slice(&body);
        receive(&bytes);
    }

    #[test]
    fn valid_requests_survive_the_wire(req in stream_request()) {
        let frame = encode(&req.to_preamble());
        let (p, used) = decode::<Preamble>(&frame, MAX);
        prop_assert_eq!(used, frame.len());
        prop_assert_eq!(StreamRequest::from_preamble(p.expect("decodes"), UNIX_EPOCH), Ok(req));
    }

    #[test]
    fn mutated_valid_frames_are_decoded_or_refused(req in stream_request(), edits in edits()) {
        receive(&mutate(encode(&req.to_preamble()), &edits));
    }

    #[test]
    fn verdicts_survive_the_wire(code in any::<i32>(), reason in "\\PC{0,100}") {
        let v = Verdict { code, reason };
        let (got, _) = decode::<Verdict>(&encode(&v), MAX_VERDICT_BYTES);
        prop_assert_eq!(got.expect("a short verdict fits"), v);
    }

    #[test]
    fn mutated_verdicts_and_catalogs_are_decoded_or_refused(
        code in 0..10i32,
        services in prop::collection::vec((label(), label(), prop::collection::vec(any::<u16>(), 0..3)), 0..4),
        edits in edits(),
    ) {
        receive(&mutate(encode(&Verdict::refused(
            VerdictCode::try_from(code).unwrap_or(VerdictCode::Malformed),
            "a reason",
        )), &edits));
        let catalog = Catalog {
            cluster: "east".into(),
            services: services
                .into_iter()
                .map(|(name, ns, ports)| CatalogService {
                    service: format!("{name}.{ns}"),
                    ports: ports
                        .into_iter()
                        .map(|port| CatalogPort { port: u32::from(port), protocol: 1 })
                        .collect(),
                })
                .collect(),
        };
        receive(&mutate(encode(&catalog), &edits));
    }

    /// The length prefix is checked before anything is allocated or read past it.
    #[test]
    fn oversized_prefixes_are_refused_before_reading(len in (MAX as u32 + 1)..=u32::MAX) {
        let mut bytes = len.to_be_bytes().to_vec();
        bytes.extend_from_slice(&[0; 64]);
        let (got, used) = decode::<Preamble>(&bytes, MAX);
        prop_assert!(matches!(got, Err(FrameError::TooLarge { .. })), "{:?}", got);
        prop_assert_eq!(used, 4);
    }

    /// Deadlines keep millisecond precision on the wire, and one already past is refused.
    #[test]
    fn past_deadlines_are_refused(req in stream_request(), now_ms in 1..u64::from(u32::MAX) * 1000) {
        let p = req.to_preamble();
        let now = UNIX_EPOCH + Duration::from_millis(now_ms);
        let judged = StreamRequest::from_preamble(p.clone(), now);
        if p.protocol != StreamProtocol::Catalog as i32 && p.deadline_unix_ms != 0
            && p.deadline_unix_ms <= now_ms
        {
            prop_assert_eq!(judged.unwrap_err().decision(), VerdictCode::DeadlineExceeded);
        } else {
            prop_assert_eq!(judged, Ok(req));
        }
    }
}

#[test]
fn a_deadline_at_the_end_of_time_does_not_overflow() {
    let p = Preamble {
        version: VERSION,
        service: "echo.demo".into(),
        port: 80,
        protocol: StreamProtocol::Tcp as i32,
        source_principal: "spiffe://east/a".into(),
        deadline_unix_ms: u64::MAX,
        traceparent: String::new(),
        subset: String::new(),
        route: String::new(),
        attempt: 1,
        hash: 0,
        source_authn: SourceAuthn::Gateway as i32,
    };
    let req = StreamRequest::from_preamble(p.clone(), SystemTime::now()).unwrap();
    assert_eq!(req.to_preamble(), p);
}
