//! The DNS server's request path without sockets: the bytes of one request in, the bytes of
//! our answer out, through the same [`MeshDns`] the sockets use. For the fuzz targets
//! (`fuzz/`) and the property tests below, which feed it arbitrary messages and names.

use std::net::{Ipv4Addr, SocketAddr};

use futures::StreamExt;
use hickory_proto::op::MessageType;
use hickory_server::net::BufDnsStreamHandle;
use hickory_server::net::xfer::Protocol;
use hickory_server::server::{Request, ResponseHandle};
use tokio::sync::watch;

use super::{DnsTable, MeshDns};

/// Answers `raw` from `table` as the server does. `None` where the server sends nothing of
/// ours: hickory could not read the message (it drops it, or answers FORMERR itself), or it
/// is a response (hickory drops those against reflection).
pub fn answer(table: &DnsTable, raw: &[u8], tcp: bool) -> Option<Vec<u8>> {
    let src = SocketAddr::from((Ipv4Addr::LOCALHOST, 5353));
    let protocol = if tcp { Protocol::Tcp } else { Protocol::Udp };
    let request = Request::from_bytes(raw.to_vec(), src, protocol).ok()?;
    if request.metadata.message_type == MessageType::Response {
        return None;
    }
    let (_tx, rx) = watch::channel(table.clone());
    let dns = MeshDns::new(rx).expect("the zone's names are constants");
    let (stream, mut sent) = BufDnsStreamHandle::new(src);
    let handle = ResponseHandle::new(src, stream, protocol);
    futures::executor::block_on(async {
        dns.respond(&request, handle).await;
        sent.next().await.map(|message| message.into_parts().0)
    })
}

#[cfg(test)]
mod proptests {
    use std::collections::BTreeMap;
    use std::net::Ipv6Addr;

    use federation::model::{ClusterName, ServiceKey};
    use hickory_proto::op::{Edns, Message, OpCode, Query, ResponseCode};
    use hickory_proto::rr::{DNSClass, Name, RData, RecordType};
    use hickory_proto::serialize::binary::BinEncodable;
    use proptest::prelude::*;

    use super::*;
    use crate::dns::DnsService;

    const V4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 53);

    fn table(v6: bool) -> DnsTable {
        let service = |clusters: &[&str], ports: &[u16]| DnsService {
            clusters: clusters
                .iter()
                .map(|c| ClusterName::new(c).unwrap())
                .collect(),
            srv_ports: ports.to_vec(),
        };
        DnsTable {
            v4: Some(V4),
            v6: v6.then_some(Ipv6Addr::LOCALHOST),
            services: BTreeMap::from([
                (
                    "echo.demo".parse::<ServiceKey>().unwrap(),
                    service(&["east", "west"], &[8080, 9000]),
                ),
                ("db.shop".parse().unwrap(), service(&["west"], &[])),
            ]),
        }
    }

    /// Labels the table knows, in any case, and others.
    fn label() -> impl Strategy<Value = String> {
        prop_oneof![
            3 => prop::sample::select(vec![
                "echo", "demo", "db", "shop", "east", "west", "north", "_tcp", "_8080", "_",
                "mesh", "*",
            ])
            .prop_flat_map(|l| {
                prop::collection::vec(any::<bool>(), l.len()).prop_map(move |upper| {
                    l.chars()
                        .zip(upper)
                        .map(|(c, u)| if u { c.to_ascii_uppercase() } else { c })
                        .collect()
                })
            }),
            1 => "[a-zA-Z0-9_-]{1,12}",
            // Printable ASCII but `.` and a backslash, which would make other labels out of this
            // one (a backslash escapes the dot after it) than the checks below reason about.
            1 => "[\\x20-\\x2d\\x2f-\\x5b\\x5d-\\x7e]{1,8}",
        ]
    }

    fn name() -> impl Strategy<Value = (Vec<String>, bool)> {
        (prop::collection::vec(label(), 0..6), any::<bool>())
    }

    fn record_type() -> impl Strategy<Value = RecordType> {
        prop_oneof![
            prop::sample::select(vec![
                RecordType::A,
                RecordType::AAAA,
                RecordType::SRV,
                RecordType::SOA,
                RecordType::ANY,
                RecordType::TXT,
                RecordType::MX,
                RecordType::NS,
                RecordType::CNAME,
                RecordType::PTR,
            ]),
            any::<u16>().prop_map(RecordType::from),
        ]
    }

    fn request(
        labels: &[String],
        in_zone: bool,
        rtype: RecordType,
        class: DNSClass,
        edns: Option<u8>,
        id: u16,
    ) -> Option<Vec<u8>> {
        let mut text = labels.join(".");
        if in_zone {
            text = if text.is_empty() {
                "mesh.".into()
            } else {
                format!("{text}.mesh.")
            };
        } else {
            text.push('.');
        }
        let name = Name::from_ascii(&text).ok()?;
        let mut message = Message::new(id, MessageType::Query, OpCode::Query);
        let mut query = Query::query(name, rtype);
        query.set_query_class(class);
        message.add_query(query);
        if let Some(version) = edns {
            let mut e = Edns::new();
            e.set_version(version);
            message.set_edns(e);
        }
        message.to_bytes().ok()
    }

    /// What must hold of any answer to `raw`.
    fn check(raw: &[u8], response: Option<Vec<u8>>) -> Option<Message> {
        let response = response?;
        let message = Message::from_vec(&response).expect("our answers parse");
        assert_eq!(message.metadata.message_type, MessageType::Response);
        assert_eq!(&message.metadata.id.to_be_bytes()[..], &raw[..2]);
        assert!(
            response.len() <= 4096,
            "an answer of {} bytes",
            response.len()
        );
        Some(message)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

        #[test]
        fn arbitrary_messages_are_answered_or_dropped(
            raw in prop::collection::vec(any::<u8>(), 0..200),
            tcp in any::<bool>(),
        ) {
            let t = table(true);
            check(&raw, answer(&t, &raw, tcp));
        }

        #[test]
        fn names_are_answered_by_the_zone_rules(
            (labels, in_zone) in name(),
            rtype in record_type(),
            class in prop_oneof![4 => Just(DNSClass::IN), 1 => Just(DNSClass::CH)],
            edns in prop::option::of(0..2u8),
            id in any::<u16>(),
            v6 in any::<bool>(),
        ) {
            let Some(raw) = request(&labels, in_zone, rtype, class, edns, id) else {
                return Ok(());
            };
            let t = table(v6);
            let message = check(&raw, answer(&t, &raw, false)).expect("a query gets an answer");
            let code = message.metadata.response_code;
            let lower: Vec<String> = labels.iter().map(|l| l.to_ascii_lowercase()).collect();
            let lower: Vec<&str> = lower.iter().map(String::as_str).collect();
            let zone = in_zone || lower.last() == Some(&"mesh");
            if edns == Some(1) {
                // 16 reads back as BADSIG: the two share the code.
                prop_assert_eq!(u16::from(code), u16::from(ResponseCode::BADVERS));
            } else if !zone || class != DNSClass::IN {
                prop_assert_eq!(code, ResponseCode::Refused);
                prop_assert!(message.answers.is_empty());
            } else {
                prop_assert!(matches!(code, ResponseCode::NoError | ResponseCode::NXDomain), "{:?}", code);
                prop_assert!(message.metadata.authoritative);
                if message.answers.is_empty() {
                    // NXDOMAIN and NODATA carry the zone's SOA for negative caching.
                    prop_assert!(matches!(
                        message.authorities.first().map(|r| &r.data),
                        Some(RData::SOA(_))
                    ));
                }
                let service = if in_zone { &lower[..] } else { &lower[..lower.len() - 1] };
                let wants_a = matches!(rtype, RecordType::A | RecordType::ANY);
                if wants_a && matches!(service, ["echo", "demo"] | ["echo", "demo", "east" | "west"]) {
                    prop_assert_eq!(code, ResponseCode::NoError);
                    prop_assert!(message.answers.iter().any(|r| r.data == RData::A(V4.into())));
                }
                if matches!(service, ["echo", "demo", "north"] | ["db", "shop", "east"]) {
                    prop_assert_eq!(code, ResponseCode::NXDomain);
                }
            }
        }

        #[test]
        fn mutated_queries_are_answered_or_dropped(
            (labels, in_zone) in name(),
            rtype in record_type(),
            edits in prop::collection::vec((any::<usize>(), any::<u8>()), 1..5),
            cut in prop::option::weighted(0.2, any::<usize>()),
        ) {
            let Some(mut raw) = request(&labels, in_zone, rtype, DNSClass::IN, Some(0), 7) else {
                return Ok(());
            };
            for (at, byte) in edits {
                let n = raw.len();
                raw[at % n] = byte;
            }
            if let Some(cut) = cut {
                raw.truncate(cut % (raw.len() + 1));
            }
            let t = table(true);
            check(&raw, answer(&t, &raw, true));
        }
    }
}

/// Found by `fuzz/fuzz_targets/dns.rs`: a question whose name is a compression pointer into
/// the header was echoed as received, so the answer's pointer read our header's bytes as a
/// label and no resolver could parse it. Now FORMERR, without the question.
#[cfg(test)]
#[test]
fn a_question_pointing_into_the_header_gets_a_readable_formerr() {
    use hickory_proto::op::{Message, ResponseCode};
    let raw = [
        0x11, 0xff, 0x01, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xc0, 0x02, 0x00,
        0x01, 0x00, 0x32,
    ];
    let out = answer(&DnsTable::default(), &raw, false).expect("an answer");
    let message = Message::from_vec(&out).expect("a readable answer");
    assert_eq!(message.metadata.response_code, ResponseCode::FormErr);
    assert_eq!(message.metadata.id, 0x11ff);
    assert!(message.queries.is_empty());
}
