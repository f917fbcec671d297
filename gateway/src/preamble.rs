//! The tunnel wire protocol: what opens every stream between two gateways.
//!
//! ```text
//!  opener                                   receiver
//!    | -- u16 len | Preamble (prost) ------->  |  parse, validate, authorize
//!    | <------------- u16 len | Verdict -----  |  accepted, or refused with a code
//!    | ======== payload (TCP bytes, one HTTP/1.1 exchange, or a Catalog) ======== |
//! ```
//!
//! The verdict comes before any payload so that a refusal is explicit and counted, and never
//! looks like a network error. A newer, incompatible protocol gets a new ALPN; `version` lets a
//! receiver refuse a preamble it cannot read with a reason instead of guessing.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use federation::identity::SpiffeId;
use federation::model::{ServiceKey, ServicePort};
use prost::Message;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The preamble version this gateway speaks. 2 added the route's choices (subset, route
/// name, attempt); a v1 gateway refuses it as unsupported, and this one refuses v1.
pub const VERSION: u32 = 2;

/// A verdict is a code and a short reason; nothing larger is ever legitimate.
const MAX_VERDICT_BYTES: usize = 1024;

/// The first frame of every stream.
#[derive(Clone, PartialEq, Message)]
pub struct Preamble {
    #[prost(uint32, tag = "1")]
    pub version: u32,
    /// `name.namespace` of the destination service; empty for a catalog request.
    #[prost(string, tag = "2")]
    pub service: String,
    #[prost(uint32, tag = "3")]
    pub port: u32,
    #[prost(enumeration = "StreamProtocol", tag = "4")]
    pub protocol: i32,
    /// The SPIFFE ID of the original caller; must lie in the sending gateway's trust domain.
    #[prost(string, tag = "5")]
    pub source_principal: String,
    /// Milliseconds since the Unix epoch after which the caller no longer waits; 0 for none.
    #[prost(uint64, tag = "6")]
    pub deadline_unix_ms: u64,
    /// W3C `traceparent` of the caller's span, if any.
    #[prost(string, tag = "7")]
    pub traceparent: String,
    /// The DestinationRule subset the source gateway's route chose; empty for the whole
    /// service.
    #[prost(string, tag = "8")]
    pub subset: String,
    /// The name of the route that matched at the source (for metrics and logs).
    #[prost(string, tag = "9")]
    pub route: String,
    /// 1 for the first attempt, 2 for the first retry, ...
    #[prost(uint32, tag = "10")]
    pub attempt: u32,
    /// The request's consistent-hash key (DestinationRule `consistentHash`), computed at the
    /// source from the request; 0 for none. The destination picks the endpoint by it, before
    /// it has read the request.
    #[prost(uint64, tag = "11")]
    pub hash: u64,
    /// How the sending gateway established `source_principal`. Absent (an older gateway):
    /// the principal is the sending gateway's own and no workload was authenticated.
    #[prost(enumeration = "SourceAuthn", tag = "12")]
    pub source_authn: i32,
}

/// How a caller's identity was established at the sending gateway.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum SourceAuthn {
    /// No workload identity: the principal is the sending gateway's own (a plaintext client).
    Gateway = 0,
    /// The workload presented an SVID of its cluster to its gateway over mutual TLS.
    Mtls = 1,
    /// The workload was recognised by its source address, in a cluster that trusts its node
    /// network (as ztunnel does); not cryptographic.
    SourceAddress = 2,
}

impl SourceAuthn {
    /// A stable name for headers, logs and metric labels.
    pub fn as_label(self) -> &'static str {
        match self {
            SourceAuthn::Gateway => "none",
            SourceAuthn::Mtls => "mtls",
            SourceAuthn::SourceAddress => "source-address",
        }
    }
}

/// Who is calling, as the sending gateway vouches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The workload's SPIFFE ID, or the sending gateway's own when `authn` is `Gateway`.
    pub principal: SpiffeId,
    pub authn: SourceAuthn,
}

impl Caller {
    /// A client this gateway could not identify: it speaks for it as itself.
    pub fn anonymous(gateway: SpiffeId) -> Self {
        Caller {
            principal: gateway,
            authn: SourceAuthn::Gateway,
        }
    }

    /// The authenticated workload principal, if any.
    pub fn workload(&self) -> Option<&SpiffeId> {
        (self.authn != SourceAuthn::Gateway).then_some(&self.principal)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum StreamProtocol {
    Unspecified = 0,
    Tcp = 1,
    Http = 2,
    /// Ask the receiver for the services its cluster exports.
    Catalog = 3,
    /// Tell the receiver this gateway's demand on mesh-wide rate limits (one QuotaReport
    /// frame follows the verdict's request).
    Quota = 4,
    /// A gateway of the receiver's own cluster hands over the cluster's next CA during a
    /// rotation (one CaHandoff frame follows).
    CaNext = 5,
    /// A gateway of the receiver's own cluster asks it to switch issuance to the next CA; the
    /// receiver answers a CaSwitched frame after its verdict.
    CaSwitch = 6,
}

/// The next CA of the cluster, from one of its gateways to another (never through the log).
#[derive(Clone, PartialEq, Message)]
pub struct CaHandoff {
    #[prost(string, tag = "1")]
    pub certificate_pem: String,
    #[prost(string, tag = "2")]
    pub key_pem: String,
}

/// A gateway switched to the next CA; until when what the old CA signed for it stays valid.
#[derive(Clone, PartialEq, Message)]
pub struct CaSwitched {
    /// Unix seconds.
    #[prost(uint64, tag = "1")]
    pub old_signed_until: u64,
}

/// A gateway's demand on the mesh-wide rate-limit buckets it saw traffic for.
#[derive(Clone, PartialEq, Message)]
pub struct QuotaReport {
    #[prost(message, repeated, tag = "1")]
    pub entries: Vec<QuotaEntry>,
}

#[derive(Clone, PartialEq, Message)]
pub struct QuotaEntry {
    /// The bucket: the policy's `namespace/name` and its descriptor values.
    #[prost(string, tag = "1")]
    pub key: String,
    /// Requests attempted per second.
    #[prost(double, tag = "2")]
    pub demand: f64,
}

/// The receiver's one-frame answer to a preamble.
#[derive(Clone, PartialEq, Message)]
pub struct Verdict {
    #[prost(enumeration = "VerdictCode", tag = "1")]
    pub code: i32,
    #[prost(string, tag = "2")]
    pub reason: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum VerdictCode {
    Accepted = 0,
    UnsupportedVersion = 1,
    Malformed = 2,
    UnknownService = 3,
    /// The preamble claims a caller outside the sending gateway's trust domain.
    SourceOutsidePeerDomain = 4,
    DeadlineExceeded = 5,
    EndpointUnavailable = 6,
    Draining = 7,
    /// PeerAuthentication STRICT holds for the endpoint and the caller has no workload
    /// identity.
    Unauthenticated = 8,
    /// An AuthorizationPolicy denies the (TCP) stream.
    Forbidden = 9,
}

impl VerdictCode {
    /// A stable, low-cardinality name for logs and metric labels.
    pub fn as_label(self) -> &'static str {
        match self {
            VerdictCode::Accepted => "accepted",
            VerdictCode::UnsupportedVersion => "unsupported_version",
            VerdictCode::Malformed => "malformed",
            VerdictCode::UnknownService => "unknown_service",
            VerdictCode::SourceOutsidePeerDomain => "source_outside_peer_domain",
            VerdictCode::DeadlineExceeded => "deadline_exceeded",
            VerdictCode::EndpointUnavailable => "endpoint_unavailable",
            VerdictCode::Draining => "draining",
            VerdictCode::Unauthenticated => "unauthenticated",
            VerdictCode::Forbidden => "forbidden",
        }
    }
}

impl Verdict {
    pub fn accepted() -> Self {
        Self {
            code: VerdictCode::Accepted as i32,
            reason: String::new(),
        }
    }
    pub fn refused(code: VerdictCode, reason: impl Into<String>) -> Self {
        Self {
            code: code as i32,
            reason: reason.into(),
        }
    }
    /// The verdict's code. Unknown codes from a newer peer read as `Malformed`: still a
    /// refusal, never an accept (prost's generated `code()` would map them to `Accepted`).
    pub fn decision(&self) -> VerdictCode {
        VerdictCode::try_from(self.code).unwrap_or(VerdictCode::Malformed)
    }
}

/// The exports of one cluster, answered to a catalog request.
#[derive(Clone, PartialEq, Message)]
pub struct Catalog {
    #[prost(string, tag = "1")]
    pub cluster: String,
    #[prost(message, repeated, tag = "2")]
    pub services: Vec<CatalogService>,
}

#[derive(Clone, PartialEq, Message)]
pub struct CatalogService {
    #[prost(string, tag = "1")]
    pub service: String,
    #[prost(message, repeated, tag = "2")]
    pub ports: Vec<CatalogPort>,
}

#[derive(Clone, PartialEq, Message)]
pub struct CatalogPort {
    #[prost(uint32, tag = "1")]
    pub port: u32,
    #[prost(enumeration = "StreamProtocol", tag = "2")]
    pub protocol: i32,
}

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The stream failed or ended before a whole frame arrived.
    #[error("stream failed: {0}")]
    Io(#[from] std::io::Error),
    /// The length prefix exceeds what this frame may hold.
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    TooLarge { len: usize, max: usize },
    /// The bytes are not the protobuf message expected.
    #[error("undecodable frame: {0}")]
    Decode(#[from] prost::DecodeError),
}

/// Writes one frame: a big-endian u32 length, then the message.
pub async fn write_frame<M: Message>(
    io: &mut (impl AsyncWrite + Unpin),
    msg: &M,
) -> Result<(), FrameError> {
    let body = msg.encode_to_vec();
    let mut buf = Vec::with_capacity(4 + body.len());
    buf.extend_from_slice(&(body.len() as u32).to_be_bytes());
    buf.extend_from_slice(&body);
    io.write_all(&buf).await?;
    Ok(())
}

/// Reads one frame of at most `max` bytes. The limit is checked before allocating.
pub async fn read_frame<M: Message + Default>(
    io: &mut (impl AsyncRead + Unpin),
    max: usize,
) -> Result<M, FrameError> {
    let mut len = [0u8; 4];
    io.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    let mut body = vec![0u8; len];
    io.read_exact(&mut body).await?;
    Ok(M::decode(body.as_slice())?)
}

pub async fn read_verdict(io: &mut (impl AsyncRead + Unpin)) -> Result<Verdict, FrameError> {
    read_frame(io, MAX_VERDICT_BYTES).await
}

/// What the source gateway's route chose, carried to the destination.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteChoice {
    pub subset: Option<String>,
    pub route: Option<String>,
    /// 1-based; 0 on the wire reads as 1.
    pub attempt: u32,
    /// Consistent-hash key of the request, if the destination rule hashes.
    pub hash: Option<u64>,
}

/// `(namespace, service account)` of a workload SVID's path `/ns/<ns>/sa/<sa>`.
pub fn workload_path(path: &str) -> Option<(&str, &str)> {
    let rest = path.strip_prefix("/ns/")?;
    let (ns, sa) = rest.split_once("/sa/")?;
    // Kubernetes: a namespace is a DNS label, a service account a DNS subdomain.
    let name = |s: &str, max: usize, dots: bool| {
        !s.is_empty()
            && s.len() <= max
            && s.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || (dots && b == b'.')
            })
    };
    (name(ns, 63, false) && name(sa, 253, true)).then_some((ns, sa))
}

/// Longest subset or route name the wire accepts (Kubernetes names are at most 253 bytes).
const MAX_NAME_BYTES: usize = 253;

/// A preamble that parsed and passed the checks that need no policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamRequest {
    Proxy {
        service: ServiceKey,
        port: ServicePort,
        source: SpiffeId,
        /// How `source` was established.
        authn: SourceAuthn,
        deadline: Option<SystemTime>,
        traceparent: Option<String>,
        /// What the source's route chose.
        choice: RouteChoice,
    },
    Catalog {
        source: SpiffeId,
    },
    /// A peer gateway's rate-limit demand report.
    Quota {
        source: SpiffeId,
    },
    /// A gateway of this cluster hands over the next CA.
    CaNext {
        source: SpiffeId,
    },
    /// A gateway of this cluster asks for the switch to the next CA.
    CaSwitch {
        source: SpiffeId,
    },
}

impl StreamRequest {
    pub fn source(&self) -> &SpiffeId {
        match self {
            StreamRequest::Proxy { source, .. }
            | StreamRequest::Catalog { source }
            | StreamRequest::Quota { source }
            | StreamRequest::CaNext { source }
            | StreamRequest::CaSwitch { source } => source,
        }
    }

    /// Turns a wire preamble into a typed request, or the verdict refusing it.
    pub fn from_preamble(p: Preamble, now: SystemTime) -> Result<Self, Verdict> {
        let malformed = |why: String| Verdict::refused(VerdictCode::Malformed, why);
        if p.version != VERSION {
            return Err(Verdict::refused(
                VerdictCode::UnsupportedVersion,
                format!(
                    "preamble version {} (this gateway speaks {VERSION})",
                    p.version
                ),
            ));
        }
        let source = SpiffeId::parse(&p.source_principal)
            .map_err(|e| malformed(format!("source_principal: {e}")))?;
        let protocol = StreamProtocol::try_from(p.protocol)
            .map_err(|_| malformed(format!("protocol: unknown value {}", p.protocol)))?;
        let authn = SourceAuthn::try_from(p.source_authn)
            .map_err(|_| malformed(format!("source_authn: unknown value {}", p.source_authn)))?;
        // A workload's identity has the shape every workload SVID has; anything else (a
        // gateway's, an admin's) is no workload's.
        if authn != SourceAuthn::Gateway && workload_path(source.path()).is_none() {
            return Err(malformed(format!(
                "source_principal: {source} is not a workload identity (spiffe://<td>/ns/<ns>/sa/<sa>)"
            )));
        }
        let protocol = match protocol {
            StreamProtocol::Catalog => return Ok(StreamRequest::Catalog { source }),
            StreamProtocol::Quota => return Ok(StreamRequest::Quota { source }),
            StreamProtocol::CaNext => return Ok(StreamRequest::CaNext { source }),
            StreamProtocol::CaSwitch => return Ok(StreamRequest::CaSwitch { source }),
            StreamProtocol::Tcp => federation::model::Protocol::Tcp,
            StreamProtocol::Http => federation::model::Protocol::Http,
            StreamProtocol::Unspecified => return Err(malformed("protocol: unspecified".into())),
        };
        let service: ServiceKey = p
            .service
            .parse()
            .map_err(|e| malformed(format!("service: {e}")))?;
        let port = u16::try_from(p.port)
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| malformed(format!("port: {} is not a port number", p.port)))?;
        let deadline = match p.deadline_unix_ms {
            0 => None,
            ms => {
                let at = UNIX_EPOCH + Duration::from_millis(ms);
                if at <= now {
                    return Err(Verdict::refused(
                        VerdictCode::DeadlineExceeded,
                        "the caller's deadline passed before the stream arrived",
                    ));
                }
                Some(at)
            }
        };
        let traceparent = (!p.traceparent.is_empty()).then_some(p.traceparent);
        for (field, value) in [("subset", &p.subset), ("route", &p.route)] {
            if value.len() > MAX_NAME_BYTES || value.chars().any(char::is_control) {
                return Err(malformed(format!(
                    "{field}: not a name (at most {MAX_NAME_BYTES} bytes, no control characters)"
                )));
            }
        }
        let choice = RouteChoice {
            subset: (!p.subset.is_empty()).then_some(p.subset),
            route: (!p.route.is_empty()).then_some(p.route),
            attempt: p.attempt.max(1),
            hash: (p.hash != 0).then_some(p.hash),
        };
        Ok(StreamRequest::Proxy {
            service,
            port: ServicePort { port, protocol },
            source,
            authn,
            deadline,
            traceparent,
            choice,
        })
    }

    pub fn to_preamble(&self) -> Preamble {
        match self {
            StreamRequest::Catalog { source } => Preamble {
                version: VERSION,
                protocol: StreamProtocol::Catalog as i32,
                source_principal: source.to_string(),
                ..Default::default()
            },
            StreamRequest::Quota { source } => Preamble {
                version: VERSION,
                protocol: StreamProtocol::Quota as i32,
                source_principal: source.to_string(),
                ..Default::default()
            },
            StreamRequest::CaNext { source } => Preamble {
                version: VERSION,
                protocol: StreamProtocol::CaNext as i32,
                source_principal: source.to_string(),
                ..Default::default()
            },
            StreamRequest::CaSwitch { source } => Preamble {
                version: VERSION,
                protocol: StreamProtocol::CaSwitch as i32,
                source_principal: source.to_string(),
                ..Default::default()
            },
            StreamRequest::Proxy {
                service,
                port,
                source,
                authn,
                deadline,
                traceparent,
                choice,
            } => Preamble {
                version: VERSION,
                service: service.to_string(),
                port: u32::from(port.port),
                protocol: wire_protocol(port.protocol) as i32,
                source_principal: source.to_string(),
                deadline_unix_ms: deadline
                    .and_then(|d| d.duration_since(UNIX_EPOCH).ok())
                    .map_or(0, |d| d.as_millis() as u64),
                traceparent: traceparent.clone().unwrap_or_default(),
                subset: choice.subset.clone().unwrap_or_default(),
                route: choice.route.clone().unwrap_or_default(),
                attempt: choice.attempt,
                hash: choice.hash.unwrap_or(0),
                source_authn: *authn as i32,
            },
        }
    }
}

pub fn wire_protocol(p: federation::model::Protocol) -> StreamProtocol {
    match p {
        federation::model::Protocol::Http => StreamProtocol::Http,
        federation::model::Protocol::Tcp => StreamProtocol::Tcp,
    }
}

#[cfg(test)]
mod proptests;

#[cfg(test)]
mod tests {
    use super::*;
    use federation::model::Protocol;

    fn proxy() -> StreamRequest {
        StreamRequest::Proxy {
            service: "echo.demo".parse().unwrap(),
            port: ServicePort {
                port: 80,
                protocol: Protocol::Http,
            },
            source: SpiffeId::parse("spiffe://east.mesh/ns/shop/sa/web").unwrap(),
            authn: SourceAuthn::Mtls,
            deadline: Some(UNIX_EPOCH + Duration::from_secs(2_000_000_000)),
            traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
            choice: RouteChoice {
                subset: Some("v2".into()),
                route: Some("canary".into()),
                attempt: 2,
                hash: Some(0x5eed),
            },
        }
    }

    #[tokio::test]
    async fn frames_round_trip() {
        let mut buf = Vec::new();
        let sent = proxy().to_preamble();
        write_frame(&mut buf, &sent).await.unwrap();
        let got: Preamble = read_frame(&mut buf.as_slice(), 4096).await.unwrap();
        assert_eq!(got, sent);
        let req = StreamRequest::from_preamble(got, UNIX_EPOCH).unwrap();
        assert_eq!(req, proxy());
    }

    #[tokio::test]
    async fn oversized_and_truncated_frames_are_errors() {
        let mut buf = Vec::new();
        write_frame(&mut buf, &proxy().to_preamble()).await.unwrap();
        let too_small = read_frame::<Preamble>(&mut buf.as_slice(), 16).await;
        assert!(matches!(
            too_small,
            Err(FrameError::TooLarge { max: 16, .. })
        ));
        let truncated = read_frame::<Preamble>(&mut &buf[..buf.len() - 3], 4096).await;
        assert!(matches!(truncated, Err(FrameError::Io(_))));
        let garbage = [0u8, 0, 0, 3, 0xff, 0xff, 0xff];
        let bad = read_frame::<Preamble>(&mut garbage.as_slice(), 4096).await;
        assert!(matches!(bad, Err(FrameError::Decode(_))));
    }

    #[test]
    fn invalid_preambles_are_refused_with_a_reason() {
        let good = proxy().to_preamble();
        let cases = [
            // An older gateway's preamble (v1 carried no route choice) and a newer one's.
            (
                Preamble {
                    version: 1,
                    ..good.clone()
                },
                VerdictCode::UnsupportedVersion,
                "version 1 (this gateway speaks 2)",
            ),
            (
                Preamble {
                    version: 3,
                    ..good.clone()
                },
                VerdictCode::UnsupportedVersion,
                "version 3 (this gateway speaks 2)",
            ),
            (
                Preamble {
                    subset: "x".repeat(300),
                    ..good.clone()
                },
                VerdictCode::Malformed,
                "subset",
            ),
            // A workload identity must look like one; an unknown way of establishing it is
            // no way.
            (
                Preamble {
                    source_principal: "spiffe://east.mesh/gateway/east-1".into(),
                    ..good.clone()
                },
                VerdictCode::Malformed,
                "is not a workload identity",
            ),
            (
                Preamble {
                    source_principal: "spiffe://east.mesh/ns/shop/sa/web/extra".into(),
                    source_authn: SourceAuthn::SourceAddress as i32,
                    ..good.clone()
                },
                VerdictCode::Malformed,
                "is not a workload identity",
            ),
            (
                Preamble {
                    source_authn: 7,
                    ..good.clone()
                },
                VerdictCode::Malformed,
                "source_authn: unknown value 7",
            ),
            (
                Preamble {
                    route: "a\nb".into(),
                    ..good.clone()
                },
                VerdictCode::Malformed,
                "route",
            ),
            (
                Preamble {
                    source_principal: "east".into(),
                    ..good.clone()
                },
                VerdictCode::Malformed,
                "source_principal",
            ),
            (
                Preamble {
                    service: "echo".into(),
                    ..good.clone()
                },
                VerdictCode::Malformed,
                "service",
            ),
            (
                Preamble {
                    port: 70000,
                    ..good.clone()
                },
                VerdictCode::Malformed,
                "port",
            ),
            (
                Preamble {
                    protocol: 42,
                    ..good.clone()
                },
                VerdictCode::Malformed,
                "protocol",
            ),
            (
                Preamble {
                    deadline_unix_ms: 1,
                    ..good.clone()
                },
                VerdictCode::DeadlineExceeded,
                "deadline",
            ),
        ];
        for (p, code, word) in cases {
            let v = StreamRequest::from_preamble(p, SystemTime::now()).unwrap_err();
            assert_eq!(v.decision(), code);
            assert!(v.reason.contains(word), "{:?} lacks {word}", v.reason);
        }
    }

    #[test]
    fn unknown_verdict_codes_never_read_as_accepted() {
        let v = Verdict {
            code: 99,
            reason: String::new(),
        };
        assert_eq!(v.decision(), VerdictCode::Malformed);
    }

    /// Fuzz-style: seeded random and mutated frames never panic the decoder, and whatever
    /// decodes is either a valid request or refused with a verdict.
    #[tokio::test]
    async fn arbitrary_frames_are_decoded_or_refused_never_panic() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
        let mut valid = Vec::new();
        write_frame(&mut valid, &proxy().to_preamble())
            .await
            .unwrap();
        for i in 0..20_000 {
            let bytes: Vec<u8> = if i % 2 == 0 {
                let len = rng.random_range(0..64);
                (0..len).map(|_| rng.random()).collect()
            } else {
                let mut b = valid.clone();
                for _ in 0..rng.random_range(1..4) {
                    let at = rng.random_range(0..b.len());
                    b[at] = rng.random();
                }
                b.truncate(rng.random_range(0..=b.len()));
                b
            };
            if let Ok(p) = read_frame::<Preamble>(&mut bytes.as_slice(), 4096).await {
                match StreamRequest::from_preamble(p, SystemTime::now()) {
                    Ok(req) => assert!(req.source().to_string().starts_with("spiffe://")),
                    Err(v) => assert_ne!(v.decision(), VerdictCode::Accepted),
                }
            }
            let _ = read_frame::<Catalog>(&mut bytes.as_slice(), 4096).await;
            let _ = read_verdict(&mut bytes.as_slice()).await;
        }
    }
}
