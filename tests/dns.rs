//! The gateway's DNS for the mesh zone, queried over real UDP and TCP.

mod support;

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use support::{Net, Spec, backend, eventually};

fn query(name: &str, rtype: RecordType) -> Vec<u8> {
    let mut msg = Message::new(4242, MessageType::Query, OpCode::Query);
    msg.add_query(Query::query(Name::from_ascii(name).unwrap(), rtype));
    msg.to_vec().unwrap()
}

fn udp(server: SocketAddr, name: &str, rtype: RecordType) -> Message {
    let sock = UdpSocket::bind(SocketAddr::new(server.ip(), 0)).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    sock.send_to(&query(name, rtype), server).unwrap();
    let mut buf = [0u8; 4096];
    let n = sock.recv(&mut buf).unwrap();
    Message::from_vec(&buf[..n]).unwrap()
}

fn tcp(server: SocketAddr, name: &str, rtype: RecordType) -> Message {
    let mut s = TcpStream::connect(server).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let q = query(name, rtype);
    s.write_all(&(q.len() as u16).to_be_bytes()).unwrap();
    s.write_all(&q).unwrap();
    let mut len = [0u8; 2];
    s.read_exact(&mut len).unwrap();
    let mut buf = vec![0u8; u16::from_be_bytes(len) as usize];
    s.read_exact(&mut buf).unwrap();
    Message::from_vec(&buf).unwrap()
}

fn a_records(m: &Message) -> Vec<IpAddr> {
    m.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            _ => None,
        })
        .collect()
}

fn srv_ports(m: &Message) -> Vec<u16> {
    m.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::SRV(s) => Some(s.port),
            _ => None,
        })
        .collect()
}

#[test]
fn mesh_names_resolve_to_the_outbound_listener() {
    let net = Net::new(34);
    let echo = backend::http_echo(&net.ip(2), "west-v1");
    let db = backend::tcp_echo(&net.ip(2));
    let _west = Spec::new("west", 2)
        .peer("east", 1)
        .http_service("echo.demo", echo)
        .tcp_service("db.demo", db, 9405)
        .start(&net);
    let east = Spec::new("east", 1).peer("west", 2).start(&net);
    let outbound_ip = east.outbound.ip();

    // Names appear once east has learnt west's exports over the tunnel.
    let answer = eventually("echo.demo.mesh to resolve", Duration::from_secs(20), || {
        let m = udp(east.dns, "echo.demo.mesh.", RecordType::A);
        (m.metadata.response_code == ResponseCode::NoError && !m.answers.is_empty()).then_some(m)
    });
    assert_eq!(a_records(&answer), [outbound_ip]);
    assert!(answer.metadata.authoritative);

    for via in [udp, tcp] {
        assert_eq!(
            a_records(&via(east.dns, "echo.demo.west.mesh.", RecordType::A)),
            [outbound_ip]
        );
        assert_eq!(
            a_records(&via(east.dns, "DB.demo.mesh.", RecordType::A)),
            [outbound_ip]
        );
        // SRV: HTTP services are reached on the outbound listener, TCP ones on their own port.
        assert_eq!(
            srv_ports(&via(east.dns, "db.demo.mesh.", RecordType::SRV)),
            [9405]
        );
        assert_eq!(
            srv_ports(&via(east.dns, "echo.demo.mesh.", RecordType::SRV)),
            [east.outbound.port()]
        );
        // East does not run echo itself; other names in the zone do not exist.
        for missing in [
            "echo.demo.east.mesh.",
            "nope.demo.mesh.",
            "echo.demo.nowhere.mesh.",
        ] {
            let m = via(east.dns, missing, RecordType::A);
            assert_eq!(
                m.metadata.response_code,
                ResponseCode::NXDomain,
                "{missing}"
            );
        }
        assert_eq!(
            via(east.dns, "example.com.", RecordType::A)
                .metadata
                .response_code,
            ResponseCode::Refused
        );
    }
}
