//! The gateway's authoritative DNS server for the mesh zone, `mesh.`, over UDP and TCP.
//!
//! Every service the federation knows about gets names that resolve to this gateway's
//! outbound listener, which then tunnels the connection to a cluster running the service:
//!
//! - `<svc>.<ns>.mesh.`: A / AAAA are the outbound listener's addresses ([`DnsTable::v4`] and
//!   [`DnsTable::v6`]); SRV lists one record per port in [`DnsService::srv_ports`], each with
//!   target `<svc>.<ns>.mesh.` and that target's A / AAAA in the additional section.
//! - `<svc>.<ns>.<cluster>.mesh.`: the same answers, for each cluster that exports the service
//!   (or runs it locally); the name does not exist for other clusters.
//! - `_<port>._tcp.<svc>.<ns>[.<cluster>].mesh.`: SRV, as for the service name.
//! - `mesh.` itself answers SOA.
//!
//! Records have a TTL of 5 seconds, because the table changes with the catalog. Any other record
//! type for a name that exists is NODATA (NOERROR, no answers). Names in the zone that do not
//! exist are NXDOMAIN. Both negative answers carry the zone's SOA in the authority section
//! (`ns.mesh. hostmaster.mesh.`, minimum 5) so resolvers cache them for 5 seconds only; every
//! answer inside the zone has the authoritative-answer flag set.
//!
//! Names that exist only because names below them do (`<ns>.mesh.`, `<cluster>.mesh.`,
//! `<ns>.<cluster>.mesh.`, `_tcp.<svc>.<ns>.mesh.`) are NODATA rather than NXDOMAIN: an
//! NXDOMAIN would tell resolvers that minimise query names (RFC 9156) that nothing below them
//! exists either (RFC 8020).
//!
//! Names outside the zone, and classes other than IN, are REFUSED: this server is not a
//! resolver. Opcodes other than QUERY are NOTIMP; requests without exactly one question are
//! FORMERR; requests hickory cannot parse are dropped or answered FORMERR by hickory itself
//! (over TCP, a frame that is not a DNS message closes the connection).
//!
//! Answers come from the [`DnsTable`] in a `tokio::sync::watch` channel, read afresh for every
//! request, so a catalog change is visible to the next query.

use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use federation::model::{ClusterName, ServiceKey};
use futures::StreamExt;
use hickory_proto::ProtoError;
use hickory_proto::op::{Edns, Header, HeaderCounts, LowerQuery, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, SOA, SRV};
use hickory_proto::rr::{DNSClass, LowerName, Name, RData, Record, RecordType};
use hickory_proto::serialize::binary::BinDecoder;
use hickory_server::Server;
use hickory_server::net::runtime::Time;
use hickory_server::net::xfer::{BufDnsStreamHandle, Protocol};
use hickory_server::server::{
    Request, RequestHandler, ResponseHandle, ResponseHandler, ResponseInfo,
};
use hickory_server::zone_handler::{MessageResponseBuilder, Queries};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::watch;
use tracing::{debug, warn};

use crate::listen::{Accepted, Listener};

#[doc(hidden)]
pub mod fuzzing;

/// What the DNS server answers from; rebuilt by the gateway whenever the catalog changes and published through a tokio watch channel.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DnsTable {
    /// Addresses of this gateway's outbound listener: answered for every known service name.
    pub v4: Option<Ipv4Addr>,
    /// IPv6 address of the outbound listener, answered for AAAA queries (NODATA when `None`).
    pub v6: Option<Ipv6Addr>,
    /// Known services, keyed by federation::model::ServiceKey (name.namespace).
    pub services: BTreeMap<ServiceKey, DnsService>,
}

/// One known service, as the DNS server sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DnsService {
    /// Clusters that export the service (or run it locally): names `<svc>.<ns>.<cluster>.mesh` exist for these.
    /// Sorted; a vector because a service lives in a few clusters and the table holds every
    /// service of the mesh.
    pub clusters: Vec<ClusterName>,
    /// Ports the client should connect to on the outbound address: one SRV record each.
    pub srv_ports: Vec<u16>,
}

/// The zone this server is authoritative for.
pub const ZONE: &str = "mesh.";

/// TTL of every record, and the SOA minimum (negative-caching TTL).
const TTL: u32 = 5;
/// How long a TCP connection may stay idle (or take to send a request or read an answer)
/// before it is closed.
const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves DNS on both sockets until `shutdown` resolves, then stops gracefully.
///
/// UDP is hickory's server. TCP is accepted here, through [`crate::listen::Listener`] (backs
/// off on accept errors, caps connections), because hickory's TCP accept loop retries at
/// once on EMFILE and takes unlimited connections; each connection is framed here and its
/// requests go to the same handler through hickory's `ResponseHandle`.
///
/// Returns an error only if the server stopped on its own (a socket failed) before `shutdown`.
pub(crate) async fn serve(
    udp: UdpSocket,
    tcp: Listener,
    table: watch::Receiver<DnsTable>,
    shutdown: impl Future<Output = ()> + Send,
) -> io::Result<()> {
    let handler = MeshDns::new(table.clone()).map_err(io::Error::other)?;
    let tcp_handler = Arc::new(MeshDns::new(table).map_err(io::Error::other)?);
    let mut server = Server::new(handler);
    server.register_socket(udp);
    // Aborting it drops the listener and every connection task with it.
    let mut tcp_task = tokio::spawn(serve_tcp(tcp, tcp_handler));

    // `block_until_done` only returns once every socket task has ended, which before a
    // shutdown means they all failed.
    let stopped_on_its_own = tokio::select! {
        result = server.block_until_done() => Some(result),
        _ = &mut tcp_task => Some(Ok(())),
        () = shutdown => None,
    };
    tcp_task.abort();
    let _ = tcp_task.await;
    match stopped_on_its_own {
        None => server.shutdown_gracefully().await.map_err(io::Error::other),
        Some(Err(error)) => Err(io::Error::other(error)),
        Some(Ok(())) => Err(io::Error::other("DNS server stopped before shutdown")),
    }
}

/// Accepts DNS-over-TCP connections until aborted.
async fn serve_tcp(mut listener: Listener, dns: Arc<MeshDns>) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        // Over the cap a client is simply closed.
        if let Accepted::Conn(tcp, src, slot) = listener.accept().await {
            let dns = dns.clone();
            connections.spawn(async move {
                let _slot = slot;
                serve_tcp_connection(tcp, src, &dns).await;
            });
        }
        while connections.try_join_next().is_some() {}
    }
}

/// Answers length-prefixed requests (RFC 1035 §4.2.2) one at a time until the client closes,
/// stays idle for [`TCP_IDLE_TIMEOUT`] or sends something that is not a DNS message.
async fn serve_tcp_connection(mut tcp: TcpStream, src: SocketAddr, dns: &MeshDns) {
    loop {
        let frame = tokio::time::timeout(TCP_IDLE_TIMEOUT, async {
            let len = tcp.read_u16().await?;
            let mut buf = vec![0; usize::from(len)];
            tcp.read_exact(&mut buf).await?;
            io::Result::Ok(buf)
        })
        .await;
        let Ok(Ok(frame)) = frame else { return };
        let Ok(request) = Request::from_bytes(frame, src, Protocol::Tcp) else {
            debug!(%src, "not a DNS message on TCP; closing");
            return;
        };
        let (stream, mut responses) = BufDnsStreamHandle::new(src);
        dns.respond(&request, ResponseHandle::new(src, stream, Protocol::Tcp))
            .await;
        // The handle went with `respond`, so the channel ends after its response.
        while let Some(response) = responses.next().await {
            let bytes = response.bytes();
            let Ok(len) = u16::try_from(bytes.len()) else {
                return;
            };
            let written = async {
                tcp.write_all(&len.to_be_bytes()).await?;
                tcp.write_all(bytes).await
            };
            if !matches!(
                tokio::time::timeout(TCP_IDLE_TIMEOUT, written).await,
                Ok(Ok(()))
            ) {
                return;
            }
        }
    }
}

/// The request handler: answers the mesh zone from the current table.
struct MeshDns {
    table: watch::Receiver<DnsTable>,
    zone: LowerName,
    soa: Record,
}

impl MeshDns {
    fn new(table: watch::Receiver<DnsTable>) -> Result<Self, ProtoError> {
        let zone = Name::from_ascii(ZONE)?;
        let soa = Record::from_rdata(
            zone.clone(),
            TTL,
            RData::SOA(SOA::new(
                Name::from_ascii("ns.mesh.")?,
                Name::from_ascii("hostmaster.mesh.")?,
                1,
                // refresh, retry, expire: irrelevant (no secondaries), conventional values.
                3600,
                600,
                86400,
                TTL,
            )),
        );
        Ok(Self {
            table,
            zone: LowerName::new(&zone),
            soa,
        })
    }

    async fn respond<R: ResponseHandler>(&self, request: &Request, mut handle: R) -> ResponseInfo {
        let mut response_edns = None;
        if let Some(request_edns) = &request.edns {
            let mut edns = Edns::new();
            edns.set_max_payload(request_edns.max_payload().max(512));
            edns.set_version(0);
            if request_edns.version() > 0 {
                let response = error(ResponseCode::BADVERS);
                return send(
                    request,
                    &request.queries,
                    Some(&edns),
                    response,
                    &mut handle,
                )
                .await;
            }
            response_edns = Some(edns);
        }
        // hickory echoes the question section's bytes as they came. A compression pointer in
        // them into the header would, behind the response's header, point at other bytes and
        // make the answer unreadable (found by fuzz/fuzz_targets/dns.rs): FORMERR, without
        // the question.
        if points_into_header(request.queries.as_bytes(), request.queries.len()) {
            let none = Queries::read(&mut BinDecoder::new(&[]), 0).expect("zero queries read");
            let response = error(ResponseCode::FormErr);
            return send(
                request,
                &none,
                response_edns.as_ref(),
                response,
                &mut handle,
            )
            .await;
        }
        let response = if request.metadata.op_code != OpCode::Query {
            error(ResponseCode::NotImp)
        } else {
            match request.request_info() {
                Err(_) => error(ResponseCode::FormErr),
                Ok(info) => {
                    // Compute the whole answer under a short borrow: never across an await.
                    let table = self.table.borrow();
                    self.answer(&table, info.query)
                }
            }
        };
        send(
            request,
            &request.queries,
            response_edns.as_ref(),
            response,
            &mut handle,
        )
        .await
    }

    /// The answer to one question.
    fn answer(&self, table: &DnsTable, query: &LowerQuery) -> Answer {
        let name = query.name();
        if !self.zone.zone_of(name) || query.query_class() != DNSClass::IN {
            return error(ResponseCode::Refused);
        }
        let labels = relative_labels(name, self.zone.num_labels());
        let Some(node) = labels.and_then(|labels| resolve(table, &labels)) else {
            return Answer {
                code: ResponseCode::NXDomain,
                authoritative: true,
                answers: Vec::new(),
                authorities: vec![self.soa.clone()],
                additionals: Vec::new(),
            };
        };

        let owner = query.original().name();
        let qtype = query.query_type();
        let wants = |t: RecordType| qtype == t || qtype == RecordType::ANY;
        let mut answers = Vec::new();
        let mut additionals = Vec::new();
        match &node {
            Node::Apex => {
                if wants(RecordType::SOA) {
                    answers.push(self.soa.clone());
                }
            }
            Node::Service(_) => {
                if wants(RecordType::A) {
                    answers.extend(v4_record(table, owner));
                }
                if wants(RecordType::AAAA) {
                    answers.extend(v6_record(table, owner));
                }
            }
            Node::SrvOnly(_) | Node::EmptyNonTerminal => {}
        }
        if let Node::Service(key) | Node::SrvOnly(key) = &node
            && wants(RecordType::SRV)
        {
            srv_records(table, key, owner, &mut answers, &mut additionals);
        }

        Answer {
            code: ResponseCode::NoError,
            authoritative: true,
            authorities: if answers.is_empty() {
                vec![self.soa.clone()]
            } else {
                Vec::new()
            },
            answers,
            additionals,
        }
    }
}

impl RequestHandler for MeshDns {
    // The trait is declared with `#[async_trait]`; this is its expansion, so that the gateway
    // does not need the macro.
    fn handle_request<'life0, 'life1, 'async_trait, R, T>(
        &'life0 self,
        request: &'life1 Request,
        response_handle: R,
    ) -> Pin<Box<dyn Future<Output = ResponseInfo> + Send + 'async_trait>>
    where
        R: ResponseHandler + 'async_trait,
        T: Time + 'async_trait,
        'life0: 'async_trait,
        'life1: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(self.respond(request, response_handle))
    }
}

/// A response before encoding.
struct Answer {
    code: ResponseCode,
    authoritative: bool,
    answers: Vec<Record>,
    authorities: Vec<Record>,
    additionals: Vec<Record>,
}

/// An empty response with `code`, not authoritative.
fn error(code: ResponseCode) -> Answer {
    Answer {
        code,
        authoritative: false,
        answers: Vec::new(),
        authorities: Vec::new(),
        additionals: Vec::new(),
    }
}

async fn send<R: ResponseHandler>(
    request: &Request,
    queries: &Queries,
    edns: Option<&Edns>,
    answer: Answer,
    handle: &mut R,
) -> ResponseInfo {
    let mut metadata = Metadata::response_from_request(&request.metadata);
    metadata.authoritative = answer.authoritative;
    metadata.response_code = answer.code;
    let response = MessageResponseBuilder::new(queries, edns).build(
        metadata,
        answer.answers.iter(),
        answer.authorities.iter(),
        std::iter::empty(),
        answer.additionals.iter(),
    );
    match handle.send_response(response).await {
        Ok(info) => info,
        Err(error) => {
            debug!(%error, src = %request.src(), "failed to send DNS response");
            let mut metadata = Metadata::response_from_request(&request.metadata);
            metadata.response_code = ResponseCode::ServFail;
            ResponseInfo::from(Header {
                metadata,
                counts: HeaderCounts::default(),
            })
        }
    }
}

/// Whether a name in `questions` (the question section as received, `count` questions, at
/// offset 12 of the message) has a compression pointer into the 12-byte header: nothing a
/// resolver sends, since no name precedes the first question.
fn points_into_header(questions: &[u8], count: usize) -> bool {
    let mut at = 0;
    for _ in 0..count {
        loop {
            let Some(&len) = questions.get(at) else {
                return false;
            };
            match len {
                0 => {
                    at += 1;
                    break;
                }
                0xc0.. => {
                    let low = questions.get(at + 1).copied().unwrap_or(0);
                    if u16::from_be_bytes([len & 0x3f, low]) < 12 {
                        return true;
                    }
                    at += 2;
                    break;
                }
                // hickory refuses the extended label types (0x40, 0x80) before we see them.
                0x40.. => return false,
                _ => at += 1 + usize::from(len),
            }
        }
        // Type and class.
        at += 4;
    }
    false
}

/// What a name in the zone is.
enum Node {
    /// `mesh.` itself.
    Apex,
    /// `<svc>.<ns>[.<cluster>].mesh.`: A, AAAA and SRV.
    Service(ServiceKey),
    /// `_<port>._tcp.<svc>.<ns>[.<cluster>].mesh.`: SRV only.
    SrvOnly(ServiceKey),
    /// A name that exists only because names below it do: no records of its own.
    EmptyNonTerminal,
}

/// The labels of `name` below the zone apex, lowercased; `None` if one is not UTF-8 (no such
/// name exists in the zone).
fn relative_labels(name: &LowerName, zone_labels: u8) -> Option<Vec<String>> {
    let below = usize::from(name.num_labels().saturating_sub(zone_labels));
    name.iter()
        .take(below)
        .map(|label| std::str::from_utf8(label).ok().map(str::to_ascii_lowercase))
        .collect()
}

/// Which node of the zone `labels` (relative to the apex) name, if any.
fn resolve(table: &DnsTable, labels: &[String]) -> Option<Node> {
    let service = |name: &str, ns: &str| -> Option<(&ServiceKey, &DnsService)> {
        table
            .services
            .get_key_value(&ServiceKey::new(name, ns).ok()?)
    };
    let in_cluster = |service: &DnsService, cluster: &str| {
        ClusterName::new(cluster).is_ok_and(|cluster| service.clusters.contains(&cluster))
    };
    let is_port_label = |label: &str| label.len() > 1 && label.starts_with('_');

    let node = match labels {
        [] => Node::Apex,
        [name, ns] => match service(name, ns) {
            Some((key, _)) => Node::Service(key.clone()),
            // `<ns>.<cluster>.mesh.`, above `<svc>.<ns>.<cluster>.mesh.`
            None => {
                let cluster = ClusterName::new(ns).ok()?;
                table
                    .services
                    .iter()
                    .any(|(key, service)| {
                        key.namespace() == name && service.clusters.contains(&cluster)
                    })
                    .then_some(Node::EmptyNonTerminal)?
            }
        },
        [name, ns, cluster] => match service(name, ns) {
            Some((key, svc)) if in_cluster(svc, cluster) => Node::Service(key.clone()),
            // `_tcp.<svc>.<ns>.mesh.`, above the SRV name
            _ if name == "_tcp" => {
                service(ns, cluster)?;
                Node::EmptyNonTerminal
            }
            _ => return None,
        },
        [port, tcp, name, ns] if is_port_label(port) && tcp == "_tcp" => {
            Node::SrvOnly(service(name, ns)?.0.clone())
        }
        // `_tcp.<svc>.<ns>.<cluster>.mesh.`, above the SRV name
        [tcp, name, ns, cluster] if tcp == "_tcp" => {
            let (_, svc) = service(name, ns)?;
            in_cluster(svc, cluster).then_some(Node::EmptyNonTerminal)?
        }
        [port, tcp, name, ns, cluster] if is_port_label(port) && tcp == "_tcp" => {
            let (key, svc) = service(name, ns)?;
            in_cluster(svc, cluster).then(|| Node::SrvOnly(key.clone()))?
        }
        // `<ns>.mesh.` or `<cluster>.mesh.`
        [label] => {
            let cluster = ClusterName::new(label).ok();
            table
                .services
                .iter()
                .any(|(key, service)| {
                    key.namespace() == label
                        || cluster
                            .as_ref()
                            .is_some_and(|cluster| service.clusters.contains(cluster))
                })
                .then_some(Node::EmptyNonTerminal)?
        }
        _ => return None,
    };
    Some(node)
}

fn v4_record(table: &DnsTable, owner: &Name) -> Option<Record> {
    let v4 = table.v4?;
    Some(Record::from_rdata(owner.clone(), TTL, RData::A(A(v4))))
}

fn v6_record(table: &DnsTable, owner: &Name) -> Option<Record> {
    let v6 = table.v6?;
    Some(Record::from_rdata(
        owner.clone(),
        TTL,
        RData::AAAA(AAAA(v6)),
    ))
}

/// One SRV record per port of `key`, targeting `<svc>.<ns>.mesh.`, whose A / AAAA go to
/// `additionals`.
fn srv_records(
    table: &DnsTable,
    key: &ServiceKey,
    owner: &Name,
    answers: &mut Vec<Record>,
    additionals: &mut Vec<Record>,
) {
    let Some(service) = table.services.get(key) else {
        return;
    };
    if service.srv_ports.is_empty() {
        return;
    }
    let target = match Name::from_ascii(format!("{}.{}.{ZONE}", key.name(), key.namespace())) {
        Ok(target) => target,
        Err(error) => {
            // Cannot happen: both parts are validated DNS labels.
            warn!(%error, service = %key, "service name is not a DNS name");
            return;
        }
    };
    answers.extend(service.srv_ports.iter().map(|&port| {
        Record::from_rdata(
            owner.clone(),
            TTL,
            RData::SRV(SRV::new(0, 10, port, target.clone())),
        )
    }));
    additionals.extend(v4_record(table, &target));
    additionals.extend(v6_record(table, &target));
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;
    use std::sync::atomic::{AtomicU16, Ordering};

    use hickory_proto::op::{Message, MessageType, Query};
    use tokio::net::TcpListener;
    use tokio::sync::oneshot;
    use tokio::task::JoinHandle;
    use tokio::time::timeout;

    use super::*;

    const WAIT: Duration = Duration::from_secs(5);
    const OUTBOUND_V4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 53);
    const OUTBOUND_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0x53);

    fn key(s: &str) -> ServiceKey {
        ServiceKey::from_str(s).expect("service key")
    }

    fn service(clusters: &[&str], ports: &[u16]) -> DnsService {
        DnsService {
            clusters: clusters
                .iter()
                .map(|c| ClusterName::new(c).expect("cluster name"))
                .collect(),
            srv_ports: ports.to_vec(),
        }
    }

    /// echo.demo in east and west on ports 8080 and 9000; v4 only.
    fn table() -> DnsTable {
        DnsTable {
            v4: Some(OUTBOUND_V4),
            v6: None,
            services: [(key("echo.demo"), service(&["east", "west"], &[8080, 9000]))].into(),
        }
    }

    struct TestServer {
        udp: SocketAddr,
        tcp: SocketAddr,
        table: watch::Sender<DnsTable>,
        stop: oneshot::Sender<()>,
        task: JoinHandle<io::Result<()>>,
    }

    async fn start(initial: DnsTable) -> TestServer {
        let udp = UdpSocket::bind("127.0.0.1:0").await.expect("bind udp");
        let tcp = TcpListener::bind("127.0.0.1:0").await.expect("bind tcp");
        let (udp_addr, tcp_addr) = (
            udp.local_addr().expect("udp addr"),
            tcp.local_addr().expect("tcp addr"),
        );
        let (table, receiver) = watch::channel(initial);
        let (stop, stopped) = oneshot::channel::<()>();
        let metrics = crate::metrics::Metrics::register(
            &mut prometheus_client::registry::Registry::default(),
        );
        let tcp = Listener::new(
            tcp,
            crate::listen::Kind::DnsTcp,
            crate::listen::Slots::new(16),
            metrics,
        );
        let task = tokio::spawn(serve(udp, tcp, receiver, async move {
            let _ = stopped.await;
        }));
        TestServer {
            udp: udp_addr,
            tcp: tcp_addr,
            table,
            stop,
            task,
        }
    }

    fn query_message(name: &str, rtype: RecordType) -> Message {
        static NEXT_ID: AtomicU16 = AtomicU16::new(1);
        let mut message = Message::new(
            NEXT_ID.fetch_add(1, Ordering::Relaxed),
            MessageType::Query,
            OpCode::Query,
        );
        message.metadata.recursion_desired = true;
        message.add_query(Query::query(
            Name::from_ascii(name).expect("query name"),
            rtype,
        ));
        message
    }

    async fn exchange_udp(server: SocketAddr, request: &Message) -> Message {
        let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind client");
        socket
            .send_to(&request.to_vec().expect("encode"), server)
            .await
            .expect("send");
        let mut buf = vec![0; 65535];
        let (len, from) = timeout(WAIT, socket.recv_from(&mut buf))
            .await
            .expect("no UDP response")
            .expect("recv");
        assert_eq!(from, server);
        let response = Message::from_vec(&buf[..len]).expect("decode response");
        assert_eq!(response.metadata.id, request.metadata.id);
        assert_eq!(response.metadata.message_type, MessageType::Response);
        response
    }

    async fn exchange_tcp(server: SocketAddr, request: &Message) -> Message {
        let mut stream = TcpStream::connect(server).await.expect("connect");
        let bytes = request.to_vec().expect("encode");
        let len = u16::try_from(bytes.len()).expect("query fits");
        stream.write_all(&len.to_be_bytes()).await.expect("write");
        stream.write_all(&bytes).await.expect("write");
        let response = timeout(WAIT, async {
            let len = stream.read_u16().await.expect("read length");
            let mut buf = vec![0; usize::from(len)];
            stream.read_exact(&mut buf).await.expect("read body");
            buf
        })
        .await
        .expect("no TCP response");
        let response = Message::from_vec(&response).expect("decode response");
        assert_eq!(response.metadata.id, request.metadata.id);
        response
    }

    async fn udp(server: &TestServer, name: &str, rtype: RecordType) -> Message {
        exchange_udp(server.udp, &query_message(name, rtype)).await
    }

    async fn tcp(server: &TestServer, name: &str, rtype: RecordType) -> Message {
        exchange_tcp(server.tcp, &query_message(name, rtype)).await
    }

    fn a_addresses(message: &Message) -> Vec<Ipv4Addr> {
        message
            .answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::A(a) => Some(a.0),
                _ => None,
            })
            .collect()
    }

    fn assert_answer_a(response: &Message, expected: Ipv4Addr) {
        assert_eq!(response.metadata.response_code, ResponseCode::NoError);
        assert!(response.metadata.authoritative);
        assert_eq!(a_addresses(response), vec![expected]);
        assert_eq!(response.answers.len(), 1);
        assert_eq!(response.answers[0].ttl, TTL);
    }

    fn assert_nodata(response: &Message) {
        assert_eq!(response.metadata.response_code, ResponseCode::NoError);
        assert!(response.metadata.authoritative);
        assert!(response.answers.is_empty(), "{:?}", response.answers);
        assert_soa_authority(response);
    }

    fn assert_nxdomain(response: &Message) {
        assert_eq!(response.metadata.response_code, ResponseCode::NXDomain);
        assert!(response.metadata.authoritative);
        assert!(response.answers.is_empty());
        assert_soa_authority(response);
    }

    fn assert_soa_authority(response: &Message) {
        assert_eq!(response.authorities.len(), 1);
        let record = &response.authorities[0];
        assert_eq!(record.name, Name::from_ascii(ZONE).expect("zone"));
        let RData::SOA(soa) = &record.data else {
            panic!("authority is not an SOA: {record:?}");
        };
        assert_eq!(soa.mname, Name::from_ascii("ns.mesh.").expect("mname"));
        assert_eq!(
            soa.rname,
            Name::from_ascii("hostmaster.mesh.").expect("rname")
        );
        assert_eq!(soa.minimum, 5);
    }

    #[tokio::test]
    async fn dns_a_record_over_udp_and_tcp() {
        let server = start(table()).await;
        assert_answer_a(
            &udp(&server, "echo.demo.mesh.", RecordType::A).await,
            OUTBOUND_V4,
        );
        assert_answer_a(
            &tcp(&server, "echo.demo.mesh.", RecordType::A).await,
            OUTBOUND_V4,
        );
        // Names are case-insensitive; the answer keeps the question's spelling.
        let response = udp(&server, "Echo.DEMO.Mesh.", RecordType::A).await;
        assert_answer_a(&response, OUTBOUND_V4);
        assert_eq!(response.answers[0].name.to_ascii(), "Echo.DEMO.Mesh.");
    }

    #[tokio::test]
    async fn dns_cluster_form_known_and_unknown_cluster() {
        let server = start(table()).await;
        assert_answer_a(
            &udp(&server, "echo.demo.east.mesh.", RecordType::A).await,
            OUTBOUND_V4,
        );
        assert_answer_a(
            &tcp(&server, "echo.demo.west.mesh.", RecordType::A).await,
            OUTBOUND_V4,
        );
        assert_nxdomain(&udp(&server, "echo.demo.north.mesh.", RecordType::A).await);
        assert_nxdomain(&tcp(&server, "echo.demo.north.mesh.", RecordType::A).await);
    }

    #[tokio::test]
    async fn dns_srv_lists_ports_with_target_and_glue() {
        let server = start(table()).await;
        let target = Name::from_ascii("echo.demo.mesh.").expect("target");
        for name in [
            "echo.demo.mesh.",
            "_http._tcp.echo.demo.mesh.",
            "_tcp-9000._tcp.echo.demo.east.mesh.",
            "echo.demo.west.mesh.",
        ] {
            for response in [
                udp(&server, name, RecordType::SRV).await,
                tcp(&server, name, RecordType::SRV).await,
            ] {
                assert_eq!(
                    response.metadata.response_code,
                    ResponseCode::NoError,
                    "{name}"
                );
                assert!(response.metadata.authoritative);
                let mut ports = Vec::new();
                for record in &response.answers {
                    let RData::SRV(srv) = &record.data else {
                        panic!("not an SRV answer for {name}: {record:?}");
                    };
                    assert_eq!(record.ttl, TTL);
                    assert_eq!(srv.priority, 0);
                    assert_eq!(srv.target, target);
                    ports.push(srv.port);
                }
                assert_eq!(ports, vec![8080, 9000], "{name}");
                let glue: Vec<_> = response
                    .additionals
                    .iter()
                    .filter(|r| r.name == target)
                    .map(|r| r.data.clone())
                    .collect();
                assert_eq!(glue, vec![RData::A(A(OUTBOUND_V4))], "{name}");
            }
        }
        // The SRV owner names only exist for TCP and known clusters.
        assert_nxdomain(&udp(&server, "_http._udp.echo.demo.mesh.", RecordType::SRV).await);
        assert_nxdomain(&udp(&server, "_http._tcp.echo.demo.north.mesh.", RecordType::SRV).await);
        // A at the SRV owner name: exists, but no address.
        assert_nodata(&udp(&server, "_http._tcp.echo.demo.mesh.", RecordType::A).await);
    }

    #[tokio::test]
    async fn dns_aaaa_nodata_without_v6_and_answered_with_it() {
        let server = start(table()).await;
        assert_nodata(&udp(&server, "echo.demo.mesh.", RecordType::AAAA).await);
        assert_nodata(&tcp(&server, "echo.demo.east.mesh.", RecordType::AAAA).await);

        server.table.send_modify(|t| t.v6 = Some(OUTBOUND_V6));
        let response = udp(&server, "echo.demo.mesh.", RecordType::AAAA).await;
        assert_eq!(response.metadata.response_code, ResponseCode::NoError);
        assert!(response.metadata.authoritative);
        assert_eq!(response.answers.len(), 1);
        assert_eq!(response.answers[0].data, RData::AAAA(AAAA(OUTBOUND_V6)));
        assert_eq!(response.answers[0].ttl, TTL);
    }

    #[tokio::test]
    async fn dns_v4_none_is_nodata() {
        let server = start(DnsTable {
            v4: None,
            ..table()
        })
        .await;
        assert_nodata(&udp(&server, "echo.demo.mesh.", RecordType::A).await);
    }

    #[tokio::test]
    async fn dns_other_type_for_known_name_is_nodata() {
        let server = start(table()).await;
        assert_nodata(&udp(&server, "echo.demo.mesh.", RecordType::TXT).await);
        assert_nodata(&tcp(&server, "echo.demo.east.mesh.", RecordType::MX).await);
    }

    #[tokio::test]
    async fn dns_unknown_service_is_nxdomain_with_soa() {
        let server = start(table()).await;
        for name in [
            "nope.demo.mesh.",
            "echo.other.mesh.",
            "a.b.c.d.e.f.mesh.",
            "nope.mesh.",
            "x.echo.demo.mesh.",
        ] {
            assert_nxdomain(&udp(&server, name, RecordType::A).await);
            assert_nxdomain(&tcp(&server, name, RecordType::A).await);
        }
    }

    #[tokio::test]
    async fn dns_apex_and_empty_non_terminals() {
        let server = start(table()).await;
        let response = udp(&server, ZONE, RecordType::SOA).await;
        assert_eq!(response.metadata.response_code, ResponseCode::NoError);
        assert!(response.metadata.authoritative);
        assert_eq!(response.answers.len(), 1);
        assert!(matches!(response.answers[0].data, RData::SOA(_)));
        assert_nodata(&udp(&server, ZONE, RecordType::A).await);
        // Names with only names below them exist (NODATA), so a resolver minimising query
        // names still goes on to ask for the service.
        for name in [
            "demo.mesh.",
            "east.mesh.",
            "demo.east.mesh.",
            "_tcp.echo.demo.mesh.",
            "_tcp.echo.demo.west.mesh.",
        ] {
            assert_nodata(&udp(&server, name, RecordType::A).await);
        }
        assert_nxdomain(&udp(&server, "demo.north.mesh.", RecordType::A).await);
    }

    #[tokio::test]
    async fn dns_other_zone_is_refused() {
        let server = start(table()).await;
        for name in ["example.com.", "echo.demo.mesh.example.com.", "notmesh."] {
            for response in [
                udp(&server, name, RecordType::A).await,
                tcp(&server, name, RecordType::A).await,
            ] {
                assert_eq!(
                    response.metadata.response_code,
                    ResponseCode::Refused,
                    "{name}"
                );
                assert!(!response.metadata.authoritative);
                assert!(response.answers.is_empty());
            }
        }
    }

    #[tokio::test]
    async fn dns_non_query_opcode_is_notimp() {
        let server = start(table()).await;
        let mut request = query_message("echo.demo.mesh.", RecordType::A);
        request.metadata.op_code = OpCode::Status;
        let response = exchange_udp(server.udp, &request).await;
        assert_eq!(response.metadata.response_code, ResponseCode::NotImp);
        assert!(response.answers.is_empty());
    }

    #[tokio::test]
    async fn dns_table_update_changes_answer() {
        let server = start(table()).await;
        assert_answer_a(
            &udp(&server, "echo.demo.mesh.", RecordType::A).await,
            OUTBOUND_V4,
        );
        assert_nxdomain(&udp(&server, "web.shop.mesh.", RecordType::A).await);

        let moved = Ipv4Addr::new(10, 9, 9, 9);
        server.table.send_replace(DnsTable {
            v4: Some(moved),
            v6: None,
            services: [(key("web.shop"), service(&["east"], &[80]))].into(),
        });
        assert_answer_a(&udp(&server, "web.shop.mesh.", RecordType::A).await, moved);
        assert_answer_a(
            &tcp(&server, "web.shop.east.mesh.", RecordType::A).await,
            moved,
        );
        assert_nxdomain(&udp(&server, "echo.demo.mesh.", RecordType::A).await);
    }

    #[tokio::test]
    async fn dns_garbage_does_not_kill_server() {
        let server = start(table()).await;
        let client = UdpSocket::bind("127.0.0.1:0").await.expect("bind client");
        let valid = query_message("echo.demo.mesh.", RecordType::A)
            .to_vec()
            .expect("encode");
        let garbage: Vec<Vec<u8>> = vec![
            Vec::new(),
            vec![0xff],
            vec![0xde, 0xad, 0xbe, 0xef, 0x00, 0x01, 0x02],
            // A header claiming many questions, and none following.
            vec![0x12, 0x34, 0x01, 0x00, 0xff, 0xff, 0, 0, 0, 0, 0, 0],
            // A valid query cut off inside its question.
            valid[..valid.len() - 3].to_vec(),
            // A name with a compression pointer to itself.
            [&valid[..12], &[0xc0, 0x0c, 0x00, 0x01, 0x00, 0x01][..]].concat(),
            (0..=255u8).cycle().take(1500).collect(),
        ];
        for bytes in &garbage {
            client.send_to(bytes, server.udp).await.expect("send");
        }
        // Garbage over TCP too: a frame of junk, and a connection dropped mid-frame.
        for bytes in &garbage {
            let mut stream = TcpStream::connect(server.tcp).await.expect("connect");
            let len = u16::try_from(bytes.len()).expect("fits");
            let _ = stream.write_all(&len.to_be_bytes()).await;
            let _ = stream.write_all(bytes).await;
        }
        let mut stream = TcpStream::connect(server.tcp).await.expect("connect");
        stream.write_all(&[0x40, 0x00, 1, 2]).await.expect("write");
        drop(stream);

        // A well-formed message without a question reaches the handler: FORMERR.
        let client = UdpSocket::bind("127.0.0.1:0").await.expect("bind client");
        let no_question = [0x42, 0x42, 0x01, 0x00, 0, 0, 0, 0, 0, 0, 0, 0];
        client
            .send_to(&no_question, server.udp)
            .await
            .expect("send");
        let mut buf = [0; 512];
        let (len, _) = timeout(WAIT, client.recv_from(&mut buf))
            .await
            .expect("no FORMERR response")
            .expect("recv");
        let response = Message::from_vec(&buf[..len]).expect("decode response");
        assert_eq!(response.metadata.id, 0x4242);
        assert_eq!(response.metadata.response_code, ResponseCode::FormErr);

        assert_answer_a(
            &udp(&server, "echo.demo.mesh.", RecordType::A).await,
            OUTBOUND_V4,
        );
        assert_answer_a(
            &tcp(&server, "echo.demo.mesh.", RecordType::A).await,
            OUTBOUND_V4,
        );
        assert!(!server.task.is_finished());
    }

    #[tokio::test]
    async fn dns_shutdown_stops_serve() {
        let server = start(table()).await;
        assert_answer_a(
            &tcp(&server, "echo.demo.mesh.", RecordType::A).await,
            OUTBOUND_V4,
        );
        assert!(!server.task.is_finished());

        server.stop.send(()).expect("server still running");
        timeout(WAIT, server.task)
            .await
            .expect("serve did not stop")
            .expect("serve panicked")
            .expect("serve failed");
        // The listener is closed: nothing answers any more.
        assert!(TcpStream::connect(server.tcp).await.is_err());
        let client = UdpSocket::bind("127.0.0.1:0").await.expect("bind client");
        let request = query_message("echo.demo.mesh.", RecordType::A);
        client
            .send_to(&request.to_vec().expect("encode"), server.udp)
            .await
            .expect("send");
        let mut buf = [0; 512];
        let answered = timeout(Duration::from_millis(300), client.recv_from(&mut buf)).await;
        assert!(!matches!(answered, Ok(Ok(_))), "a stopped server answered");
    }
}
