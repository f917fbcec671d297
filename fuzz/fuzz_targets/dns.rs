//! Raw DNS requests, through the mesh zone's request handler (no sockets).
#![no_main]

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::OnceLock;

use federation::model::ClusterName;
use gateway::dns::fuzzing::answer;
use gateway::dns::{DnsService, DnsTable};
use hickory_proto::op::{Message, MessageType};
use libfuzzer_sys::fuzz_target;

fn table() -> &'static DnsTable {
    static TABLE: OnceLock<DnsTable> = OnceLock::new();
    TABLE.get_or_init(|| DnsTable {
        v4: Some(Ipv4Addr::new(10, 0, 0, 53)),
        v6: Some(Ipv6Addr::LOCALHOST),
        services: BTreeMap::from([
            (
                "echo.demo".parse().unwrap(),
                DnsService {
                    clusters: ["east", "west"]
                        .map(|c| ClusterName::new(c).unwrap())
                        .into(),
                    srv_ports: vec![8080, 9000],
                },
            ),
            (
                "db.shop".parse().unwrap(),
                DnsService {
                    clusters: [ClusterName::new("west").unwrap()].into(),
                    srv_ports: vec![],
                },
            ),
        ]),
    })
}

fuzz_target!(|data: &[u8]| {
    for tcp in [false, true] {
        if let Some(response) = answer(table(), data, tcp) {
            let message = Message::from_vec(&response).expect("our answers parse");
            assert_eq!(message.metadata.message_type, MessageType::Response);
            assert_eq!(&message.metadata.id.to_be_bytes()[..], &data[..2]);
        }
    }
});
