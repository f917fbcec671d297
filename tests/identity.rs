//! Identity at the tunnel: a real QUIC client (built from `federation`'s identity code, as a
//! peer gateway would be) against a real gateway process. Refusals happen at the handshake;
//! a gateway may only speak for its own trust domain; bad streams close only themselves.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use federation::identity::{
    CertificateAuthority, SpiffeId, Svid, TrustBundles, TrustDomain, client_config,
};
use gateway::preamble::{self, Preamble, StreamProtocol, Verdict, VerdictCode};
use support::{Gateway, Net, Spec, backend, eventually};
use tokio::io::AsyncReadExt;

fn td(s: &str) -> TrustDomain {
    TrustDomain::parse(s).unwrap()
}

fn ca(dir: &std::path::Path, domain: &str) -> CertificateAuthority {
    CertificateAuthority::load_or_create(dir, &td(domain)).unwrap()
}

fn east_gateway_id() -> SpiffeId {
    SpiffeId::gateway(&td("east.mesh"), "east-1").unwrap()
}

/// West with east as its only peer (so west trusts east's CA), exporting echo.demo.
fn west(net: &Net, extra: &str) -> Gateway {
    let echo = backend::http_echo(&net.ip(2), "west-v1");
    Spec::new("west", 2)
        .peer("east", 1)
        .http_service("echo.demo", echo)
        .toml(extra)
        .start(net)
}

/// A valid east SVID from east's real CA, connected to a running west.
async fn east_connected_to_west(net: &Net) -> (Gateway, quinn::Connection) {
    let west = west(net, "");
    let svid = east_svid(net);
    let conn = dial(&svid, &net.bundle("west"), west.tunnel).await.unwrap();
    (west, conn)
}

fn east_svid(net: &Net) -> Svid {
    ca(&net.data_dir("east").join("ca"), "east.mesh")
        .issue_for(&east_gateway_id(), Duration::from_secs(600))
        .unwrap()
}

/// Dials `addr` as `svid`, expecting a server from west.mesh signed by `west_root`.
async fn dial(
    svid: &Svid,
    west_bundle: &std::path::Path,
    addr: SocketAddr,
) -> Result<quinn::Connection, String> {
    let mut bundles = TrustBundles::new();
    bundles.load_pem_file(td("west.mesh"), west_bundle).unwrap();
    let tls = client_config(svid, Arc::new(bundles), &td("west.mesh")).unwrap();
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(quic)));
    let connecting = endpoint
        .connect(addr, "west.mesh")
        .map_err(|e| e.to_string())?;
    let conn = tokio::time::timeout(Duration::from_secs(10), connecting)
        .await
        .map_err(|_| "handshake timed out".to_string())?
        .map_err(|e| e.to_string())?;
    // Under TLS 1.3 the server only judges the client certificate after the client finished,
    // so a refused client learns it on first use of the connection: probe with a stream.
    let probe = preamble::StreamRequest::Catalog {
        source: svid.id().clone(),
    }
    .to_preamble();
    let probed = async {
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
        preamble::write_frame(&mut send, &probe)
            .await
            .map_err(|e| e.to_string())?;
        preamble::read_verdict(&mut recv)
            .await
            .map_err(|e| e.to_string())
    };
    if let Err(e) = probed.await {
        // Report why the server closed the connection, not just that a stream failed.
        let reason = tokio::time::timeout(Duration::from_secs(5), conn.closed()).await;
        return Err(format!("{e}; connection closed: {reason:?}"));
    }
    Ok(conn)
}

/// Opens a stream with preamble `p` and reads the verdict (bounded: the peer's keep-alives
/// would keep a stuck stream open forever).
async fn stream(
    conn: &quinn::Connection,
    p: &Preamble,
) -> (quinn::SendStream, quinn::RecvStream, Verdict) {
    let open = async {
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        preamble::write_frame(&mut send, p).await.unwrap();
        let verdict = preamble::read_verdict(&mut recv).await.unwrap();
        (send, recv, verdict)
    };
    tokio::time::timeout(STREAM_TIMEOUT, open)
        .await
        .expect("no verdict within the stream timeout")
}

/// Reads a stream to its end, bounded by [`STREAM_TIMEOUT`].
async fn read_all(recv: &mut quinn::RecvStream) -> std::io::Result<String> {
    let mut text = String::new();
    tokio::time::timeout(STREAM_TIMEOUT, recv.read_to_string(&mut text))
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    Ok(text)
}

const STREAM_TIMEOUT: Duration = Duration::from_secs(15);

/// A preamble for `source`: a workload authenticated by its gateway (`/ns/../sa/..`), or the
/// gateway itself.
fn http_preamble(source: &str) -> Preamble {
    let authn = if source.contains("/ns/") {
        preamble::SourceAuthn::Mtls
    } else {
        preamble::SourceAuthn::Gateway
    };
    Preamble {
        version: preamble::VERSION,
        service: "echo.demo".into(),
        port: 80,
        protocol: StreamProtocol::Http as i32,
        source_principal: source.into(),
        source_authn: authn as i32,
        ..Default::default()
    }
}

fn inbound_handshake_failures(gw: &Gateway) -> f64 {
    gw.metric(
        "causeway_tunnel_handshake_failures_total",
        &[("direction", "inbound")],
    )
    .unwrap_or(0.0)
}

/// The server counts a refusal a moment after the client has seen it.
fn await_handshake_failures(gw: &Gateway, n: f64) {
    eventually(
        &format!("{n} inbound handshake failures"),
        Duration::from_secs(10),
        || (inbound_handshake_failures(gw) == n).then_some(()),
    );
}

#[tokio::test]
async fn peers_outside_the_trust_bundles_are_refused_at_the_handshake() {
    let net = Net::new(21);
    let west = west(&net, "");
    let west_bundle = net.bundle("west");
    let east_ca = ca(&net.data_dir("east").join("ca"), "east.mesh");
    let now = SystemTime::now();

    // Control: a valid east SVID gets through.
    let good = east_ca
        .issue_for(&east_gateway_id(), Duration::from_secs(600))
        .unwrap();
    dial(&good, &west_bundle, west.tunnel)
        .await
        .expect("a valid peer is accepted");
    assert_eq!(inbound_handshake_failures(&west), 0.0);

    // Unknown trust domain.
    let rogue_dir = tempfile::tempdir().unwrap();
    let rogue = ca(rogue_dir.path(), "rogue.mesh")
        .issue_for(
            &SpiffeId::gateway(&td("rogue.mesh"), "r-1").unwrap(),
            Duration::from_secs(600),
        )
        .unwrap();
    let err = dial(&rogue, &west_bundle, west.tunnel)
        .await
        .expect_err("unknown trust domain accepted");
    assert!(!err.is_empty());
    await_handshake_failures(&west, 1.0);

    // Expired certificate from the right CA.
    let expired = east_ca
        .issue(
            &east_gateway_id(),
            now - Duration::from_secs(7200),
            now - Duration::from_secs(3600),
        )
        .unwrap();
    dial(&expired, &west_bundle, west.tunnel)
        .await
        .expect_err("expired certificate accepted");
    await_handshake_failures(&west, 2.0);

    // Right trust domain, wrong CA.
    let impostor_dir = tempfile::tempdir().unwrap();
    let impostor = ca(impostor_dir.path(), "east.mesh")
        .issue_for(&east_gateway_id(), Duration::from_secs(600))
        .unwrap();
    dial(&impostor, &west_bundle, west.tunnel)
        .await
        .expect_err("certificate from the wrong CA accepted");
    await_handshake_failures(&west, 3.0);
    assert!(
        west.logs().contains("refused tunnel handshake"),
        "{}",
        west.logs()
    );
}

#[test]
fn a_gateway_refuses_a_peer_signed_by_the_wrong_ca() {
    let net = Net::new(22);
    let _west = west(&net, "");
    // East is told west's bundle is a CA that did not sign west's certificate.
    let impostor = ca(&net.dir.path().join("impostor"), "west.mesh");
    let bundle = net.dir.path().join("impostor.pem");
    std::fs::write(&bundle, impostor.bundle_pem()).unwrap();
    let east = Spec::new("east", 1)
        .toml(&format!(
            "\n[[peers]]\ncluster = \"west\"\naddress = \"{}:15443\"\ntrust_bundle = \"{}\"\n",
            net.ip(2),
            bundle.display()
        ))
        .start(&net);
    eventually(
        "an outbound handshake failure",
        Duration::from_secs(20),
        || {
            let n = east.metric(
                "causeway_tunnel_handshake_failures_total",
                &[("peer_cluster", "west"), ("direction", "outbound")],
            )?;
            (n >= 1.0).then_some(())
        },
    );
    assert_eq!(
        east.metric(
            "causeway_tunnel_connects_total",
            &[("peer_cluster", "west")]
        ),
        None
    );
    // Logged by the dialler after the counter moved, and read through a pipe.
    eventually("the refusal in east's log", Duration::from_secs(20), || {
        east.logs()
            .contains("cannot reach peer gateway")
            .then_some(())
    });
}

#[tokio::test]
async fn spoofed_principals_and_malformed_streams_close_only_their_stream() {
    let net = Net::new(23);
    let (west, conn) = east_connected_to_west(&net).await;

    // East may not speak for a caller in west's (or anyone else's) trust domain.
    for spoofed in [
        "spiffe://west.mesh/ns/prod/sa/admin",
        "spiffe://edge.mesh/gateway/edge-1",
    ] {
        let (_, _, verdict) = stream(&conn, &http_preamble(spoofed)).await;
        assert_eq!(
            verdict.decision(),
            VerdictCode::SourceOutsidePeerDomain,
            "{spoofed}"
        );
        assert!(verdict.reason.contains(spoofed), "{}", verdict.reason);
    }
    let refused = west.metric(
        "causeway_stream_refusals_total",
        &[("reason", "source_outside_peer_domain")],
    );
    assert_eq!(refused, Some(2.0));

    // Garbage instead of a preamble, and a length prefix past the limit.
    for frame in [
        vec![0u8, 0, 0, 3, 0xff, 0xff, 0xff],
        vec![0x00, 0x10, 0x00, 0x00],
    ] {
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        send.write_all(&frame).await.unwrap();
        let verdict = preamble::read_verdict(&mut recv).await;
        assert!(
            matches!(verdict, Ok(ref v) if v.decision() == VerdictCode::Malformed),
            "{verdict:?}"
        );
    }
    assert_eq!(
        west.metric("causeway_stream_refusals_total", &[("reason", "malformed")]),
        Some(2.0)
    );
    // A newer gateway's preamble, and an older one's (v1 carried no route choice): both
    // refused by name, with both versions in the reason.
    for version in [9, 1] {
        let (_, _, verdict) = stream(
            &conn,
            &Preamble {
                version,
                ..http_preamble("spiffe://east.mesh/x")
            },
        )
        .await;
        assert_eq!(verdict.decision(), VerdictCode::UnsupportedVersion);
        assert!(
            verdict.reason.contains(&format!("version {version}"))
                && verdict
                    .reason
                    .contains(&format!("speaks {}", preamble::VERSION)),
            "{}",
            verdict.reason
        );
    }
    let (_, _, verdict) = stream(
        &conn,
        &Preamble {
            service: "nope.demo".into(),
            ..http_preamble("spiffe://east.mesh/x")
        },
    )
    .await;
    assert_eq!(verdict.decision(), VerdictCode::UnknownService);

    // The same connection still carries a legitimate request end to end.
    let caller = "spiffe://east.mesh/ns/shop/sa/frontend";
    let (mut send, mut recv, verdict) = stream(&conn, &http_preamble(caller)).await;
    assert_eq!(
        verdict.decision(),
        VerdictCode::Accepted,
        "{}",
        verdict.reason
    );
    send.write_all(b"GET /after HTTP/1.1\r\nhost: echo.demo\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    send.finish().unwrap();
    let response = read_all(&mut recv).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("GET /after"), "{response}");
    assert!(
        response.contains(&format!("x-causeway-source-principal: {caller}")),
        "{response}"
    );
    assert!(
        conn.close_reason().is_none(),
        "a bad stream closed the connection"
    );
}

#[tokio::test]
async fn svids_rotate_without_dropping_tunnels() {
    let net = Net::new(24);
    let ttl = "[identity]\nsvid_ttl = \"3s\"\n";
    let tcp = backend::tcp_echo(&net.ip(2));
    let west = Spec::new("west", 2)
        .peer("east", 1)
        .tcp_service("db.demo", tcp, 9401)
        .toml(ttl)
        .start(&net);
    let east = Spec::new("east", 1).peer("west", 2).toml(ttl).start(&net);

    let addr: SocketAddr = format!("{}:9401", net.ip(1)).parse().unwrap();
    let mut conn = eventually("db.demo on east", Duration::from_secs(20), || {
        std::net::TcpStream::connect(addr).ok()
    });
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let echo = |conn: &mut std::net::TcpStream, msg: &[u8]| {
        use std::io::{Read, Write};
        conn.write_all(msg).unwrap();
        let mut got = vec![0u8; msg.len()];
        conn.read_exact(&mut got).unwrap();
        assert_eq!(got, msg);
    };
    echo(&mut conn, b"before rotation");
    let first_expiry = west
        .metric("causeway_svid_expiry_timestamp_seconds", &[])
        .unwrap();

    // Past the first SVID's whole lifetime: both sides rotated at least twice.
    for gw in [&west, &east] {
        eventually("two rotations", Duration::from_secs(20), || {
            (gw.metric("causeway_svid_rotations_total", &[])? >= 2.0).then_some(())
        });
    }
    assert!(
        west.metric("causeway_svid_expiry_timestamp_seconds", &[])
            .unwrap()
            > first_expiry
    );
    echo(&mut conn, b"after rotation");
    assert_eq!(
        east.metric(
            "causeway_tunnel_connects_total",
            &[("peer_cluster", "west")]
        ),
        Some(1.0)
    );

    // A new handshake sees west's current certificate: the first one has expired by now, so
    // this only succeeds if the server config was swapped.
    dial(&east_svid(&net), &net.bundle("west"), west.tunnel)
        .await
        .expect("handshake with the rotated certificate");
}

#[tokio::test]
async fn silent_streams_time_out_and_deadlines_bound_upstream_calls() {
    let net = Net::new(25);
    let (_west, conn) = east_connected_to_west(&net).await;

    // A stream that starts a preamble and never finishes it is closed after connect_timeout
    // (1s in tests). (A stream with no bytes at all does not exist for the peer in QUIC.)
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(&[0, 0]).await.unwrap();
    let started = std::time::Instant::now();
    let verdict = tokio::time::timeout(Duration::from_secs(10), preamble::read_verdict(&mut recv))
        .await
        .expect("the silent stream was never closed");
    assert!(
        matches!(verdict, Ok(ref v) if v.decision() == VerdictCode::Malformed),
        "{verdict:?}"
    );
    assert!(started.elapsed() >= Duration::from_millis(900));

    // The caller's deadline travels in the preamble and bounds the call to the endpoint.
    // (1.5 s: it must still lie ahead when the preamble arrives on a loaded machine, and
    // well before the endpoint's 3 s answer.)
    let deadline = SystemTime::now() + Duration::from_millis(1500);
    let ms = deadline
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let p = Preamble {
        deadline_unix_ms: ms,
        ..http_preamble("spiffe://east.mesh/x")
    };
    let (mut send, mut recv, verdict) = stream(&conn, &p).await;
    assert_eq!(verdict.decision(), VerdictCode::Accepted);
    send.write_all(b"GET /slow/3000 HTTP/1.1\r\nhost: echo.demo\r\n\r\n")
        .await
        .unwrap();
    let response = read_all(&mut recv).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 504"), "{response}");
    assert!(response.contains("deadline"), "{response}");

    // A deadline already past is refused before anything reaches the endpoint.
    let p = Preamble {
        deadline_unix_ms: 1,
        ..http_preamble("spiffe://east.mesh/x")
    };
    let (_, _, verdict) = stream(&conn, &p).await;
    assert_eq!(verdict.decision(), VerdictCode::DeadlineExceeded);
}

#[tokio::test]
async fn only_gateways_of_peer_clusters_may_open_tunnels() {
    let net = Net::new(26);
    let west = west(&net, "");
    // A workload SVID from east's genuine CA passes the TLS checks, but it is not a gateway:
    // it must not be able to speak for east's callers.
    let workload = ca(&net.data_dir("east").join("ca"), "east.mesh")
        .issue_for(
            &SpiffeId::parse("spiffe://east.mesh/ns/shop/sa/frontend").unwrap(),
            Duration::from_secs(600),
        )
        .unwrap();
    let err = dial(&workload, &net.bundle("west"), west.tunnel)
        .await
        .expect_err("a workload opened a tunnel");
    assert!(err.contains("not a peer gateway"), "{err}");
    await_handshake_failures(&west, 1.0);
    // Another gateway of west's own cluster may connect, but only to report rate-limit
    // demand: a call or a catalog request from it is refused at its stream.
    let sibling_id = SpiffeId::gateway(&td("west.mesh"), "west-2").unwrap();
    let own = ca(&net.data_dir("west").join("ca"), "west.mesh")
        .issue_for(&sibling_id, Duration::from_secs(600))
        .unwrap();
    let conn = dial(&own, &net.bundle("west"), west.tunnel)
        .await
        .expect("a gateway of west connects");
    let (_, _, verdict) = stream(&conn, &http_preamble(sibling_id.as_str())).await;
    assert_eq!(
        verdict.decision(),
        VerdictCode::Forbidden,
        "{}",
        verdict.reason
    );
    assert!(
        verdict.reason.contains("rate-limit demand"),
        "{}",
        verdict.reason
    );
    // A workload of west's own domain is no gateway of it.
    let own_workload = ca(&net.data_dir("west").join("ca"), "west.mesh")
        .issue_for(
            &SpiffeId::parse("spiffe://west.mesh/ns/shop/sa/web").unwrap(),
            Duration::from_secs(600),
        )
        .unwrap();
    dial(&own_workload, &net.bundle("west"), west.tunnel)
        .await
        .expect_err("own domain's workload opened a tunnel");
    await_handshake_failures(&west, 2.0);
    assert!(west.logs().contains("not the gateway of a peer cluster"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_gateway_refuses_new_streams_and_finishes_old_ones() {
    let net = Net::new(27);
    let (west, conn) = east_connected_to_west(&net).await;
    let caller = "spiffe://east.mesh/ns/shop/sa/frontend";
    let (mut send, mut recv, verdict) = stream(&conn, &http_preamble(caller)).await;
    assert_eq!(verdict.decision(), VerdictCode::Accepted);
    send.write_all(b"GET /slow/1500 HTTP/1.1\r\nhost: echo.demo\r\n\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    west.signal("TERM");
    let draining = eventually("a Draining verdict", Duration::from_secs(5), || {
        futures_lite_block(stream(&conn, &http_preamble(caller)))
            .filter(|(_, _, v)| v.decision() == VerdictCode::Draining)
            .map(|(_, _, v)| v)
    });
    assert!(
        draining.reason.contains("shutting down"),
        "{}",
        draining.reason
    );

    let read = read_all(&mut recv).await;
    assert!(read.is_ok(), "{read:?}\n{}", west.logs());
    let response = read.unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("GET /slow/1500"), "{response}");
}

/// Runs a future to completion from inside the sync `eventually` closure.
fn futures_lite_block<F: std::future::Future>(f: F) -> Option<F::Output> {
    tokio::task::block_in_place(|| {
        tokio::runtime::Handle::current()
            .block_on(async { tokio::time::timeout(Duration::from_secs(2), f).await.ok() })
    })
}
