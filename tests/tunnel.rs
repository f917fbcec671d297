//! Traffic between clusters through real gateways: HTTP by Host, TCP per service port,
//! spreading over clusters, refusals that say why, tunnel re-establishment, metrics.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use support::{Gateway, Net, Spec, backend, eventually, http_get, try_http};

const UP: Duration = Duration::from_secs(20);

fn body_of(gw: &Gateway, host: &str, path: &str) -> Option<String> {
    match try_http(gw.outbound, "GET", host, path, &[], b"") {
        Ok((200, _, body)) => Some(body),
        _ => None,
    }
}

#[test]
fn http_crosses_the_tunnel_by_every_host_form() {
    let net = Net::new(11);
    let echo = backend::http_echo(&net.ip(2), "west-v1");
    let _west = Spec::new("west", 2)
        .peer("east", 1)
        .http_service("echo.demo", echo)
        .start(&net);
    let east = Spec::new("east", 1).peer("west", 2).start(&net);

    let body = eventually("echo through the tunnel", UP, || {
        body_of(&east, "echo.demo", "/hello")
    });
    assert!(body.starts_with("west-v1\nGET /hello HTTP/1.1"), "{body}");
    // The destination gateway vouches for the caller; the backend sees it. A plaintext
    // client is no workload: no principal, and the gateway that speaks for it beside.
    assert!(
        body.contains("x-causeway-source-gateway: spiffe://east.mesh/gateway/east-1"),
        "{body}"
    );
    assert!(body.contains("x-causeway-source-authn: none"), "{body}");
    assert!(!body.contains("x-causeway-source-principal"), "{body}");
    assert!(body.contains("x-causeway-source-cluster: east"), "{body}");

    for host in [
        "echo.demo.mesh",
        "echo.demo.svc.cluster.local",
        "echo.demo.west.mesh",
        "echo.demo:15001",
    ] {
        let (status, _, body) = http_get(east.outbound, host, "/x");
        assert_eq!(status, 200, "{host}: {body}");
        assert!(body.starts_with("west-v1\n"), "{host}: {body}");
    }

    // A 1 MiB body goes through intact (length echoed back by the backend).
    let big = vec![b'x'; 1 << 20];
    let (status, _, body) =
        support::http_request(east.outbound, "POST", "echo.demo", "/upload", &[], &big);
    assert_eq!(status, 200);
    assert!(body.contains("body-bytes: 1048576"), "{body}");

    // A caller cannot forge the identity header: the destination gateway overwrites it.
    let (_, _, body) = support::http_request(
        east.outbound,
        "GET",
        "echo.demo",
        "/",
        &[
            ("x-causeway-source-principal", "spiffe://west.mesh/admin"),
            ("x-causeway-source-authn", "mtls"),
        ],
        b"",
    );
    assert!(!body.contains("spiffe://west.mesh/admin"), "{body}");
    assert!(!body.contains("x-causeway-source-authn: mtls"), "{body}");

    // A caller's timeout (Envoy's header) travels as the stream's deadline and bounds the call.
    let (status, _, body) = support::http_request(
        east.outbound,
        "GET",
        "echo.demo",
        "/slow/3000",
        &[("x-envoy-upstream-rq-timeout-ms", "300")],
        b"",
    );
    assert_eq!(status, 504, "{body}");
    // Either gateway may answer first: east bounds the call with the caller's timeout, as
    // Envoy does, and west with the deadline that travelled in the preamble.
    assert!(
        body.contains("deadline") || body.contains("upstream request timeout"),
        "{body}"
    );

    // Unknown names get a clear answer from the gateway, not from a backend.
    let (status, headers, body) = http_get(east.outbound, "nope.demo", "/");
    assert_eq!(status, 404, "{body}");
    assert!(
        body.contains("no cluster exports service nope.demo"),
        "{body}"
    );
    assert!(headers.iter().any(|(k, _)| k == "x-causeway-error"));
    let (status, _, body) = http_get(east.outbound, "echo.demo.nowhere.mesh", "/");
    assert_eq!(status, 404, "{body}");
    let (status, _, body) = http_get(east.outbound, "www.example.com", "/");
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("not a mesh service name"), "{body}");

    // Both hops counted the requests, labelled by clusters, service and code.
    let labels = [
        ("reporter", "source"),
        ("source_cluster", "east"),
        ("destination_cluster", "west"),
        ("service", "echo.demo"),
        ("response_code", "200"),
    ];
    let sent = east
        .metric("causeway_requests_total", &labels)
        .expect("source-side counter");
    assert!(sent >= 7.0, "east counted {sent}");
    let received = _west
        .metric(
            "causeway_requests_total",
            &[
                ("reporter", "destination"),
                ("source_cluster", "east"),
                ("service", "echo.demo"),
                ("response_code", "200"),
            ],
        )
        .expect("destination-side counter");
    assert!(received >= 7.0, "west counted {received}");
    assert!(
        east.metrics()
            .contains("causeway_request_duration_seconds_bucket{")
    );
    assert_eq!(
        east.metric("causeway_tunnel_up", &[("peer_cluster", "west")]),
        Some(1.0)
    );
    assert_eq!(
        east.metric(
            "causeway_requests_total",
            &[("service", "nope.demo"), ("response_code", "404")]
        ),
        Some(1.0)
    );
}

#[test]
fn tcp_bytes_cross_the_tunnel_on_a_port_per_service() {
    let net = Net::new(12);
    let echo = backend::tcp_echo(&net.ip(2));
    let west = Spec::new("west", 2)
        .peer("east", 1)
        .tcp_service("db.demo", echo, 9400)
        .start(&net);
    let east = Spec::new("east", 1).peer("west", 2).start(&net);

    let port: SocketAddr = format!("{}:9400", net.ip(1)).parse().unwrap();
    let mut conn = eventually("TCP port for db.demo on east", UP, || {
        TcpStream::connect(port).ok()
    });
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let payload: Vec<u8> = (0..256 * 1024).map(|i| (i % 251) as u8).collect();
    let mut reader = conn.try_clone().unwrap();
    let expected = payload.clone();
    let echoed = std::thread::spawn(move || {
        let mut got = vec![0u8; expected.len()];
        reader.read_exact(&mut got).unwrap();
        got == expected
    });
    conn.write_all(&payload).unwrap();
    assert!(echoed.join().unwrap(), "bytes came back altered");

    // While the connection is open both hops count it; when it closes, the gauges drop.
    let open = [
        ("service", "db.demo"),
        ("reporter", "source"),
        ("destination_cluster", "west"),
    ];
    assert_eq!(
        east.metric("causeway_tcp_open_connections", &open),
        Some(1.0)
    );
    assert_eq!(
        west.metric(
            "causeway_tcp_open_connections",
            &[("service", "db.demo"), ("reporter", "destination")]
        ),
        Some(1.0)
    );
    drop(conn);
    eventually("the open-connection gauge to drop", UP, || {
        (east.metric("causeway_tcp_open_connections", &open) == Some(0.0)).then_some(())
    });
}

#[test]
fn requests_spread_over_exporting_clusters_and_skip_dead_ones() {
    let net = Net::new(13);
    let v1 = backend::http_echo(&net.ip(2), "west-v1");
    let v2 = backend::http_echo(&net.ip(3), "edge-v2");
    let _west = Spec::new("west", 2)
        .peer("east", 1)
        .http_service("echo.demo", v1)
        .start(&net);
    let mut edge = Spec::new("edge", 3)
        .peer("east", 1)
        .http_service("echo.demo", v2)
        .start(&net);
    let east = Spec::new("east", 1)
        .peer("west", 2)
        .peer("edge", 3)
        .start(&net);

    eventually("both clusters to answer", UP, || {
        let answers: Vec<String> = (0..6)
            .filter_map(|_| body_of(&east, "echo.demo", "/"))
            .collect();
        (answers.iter().any(|b| b.starts_with("west-v1"))
            && answers.iter().any(|b| b.starts_with("edge-v2")))
        .then_some(())
    });
    // A cluster can be addressed by name.
    for _ in 0..4 {
        let body = body_of(&east, "echo.demo.edge.mesh", "/").expect("edge by name");
        assert!(body.starts_with("edge-v2"), "{body}");
    }

    edge.kill();
    eventually("east to notice edge is gone", UP, || {
        (east.metric("causeway_tunnel_up", &[("peer_cluster", "edge")]) == Some(0.0)).then_some(())
    });
    for _ in 0..6 {
        let body = body_of(&east, "echo.demo", "/").expect("west still serves");
        assert!(body.starts_with("west-v1"), "{body}");
    }
    // Naming the dead cluster explains itself.
    let (status, _, body) = http_get(east.outbound, "echo.demo.edge.mesh", "/");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("tunnels to edge are down"), "{body}");
}

#[test]
fn tunnel_is_reestablished_after_the_peer_restarts() {
    let net = Net::new(14);
    let echo = backend::http_echo(&net.ip(2), "west-v1");
    let west_spec = Spec::new("west", 2)
        .peer("east", 1)
        .http_service("echo.demo", echo);
    let mut west = west_spec.start(&net);
    let east = Spec::new("east", 1).peer("west", 2).start(&net);
    eventually("first request", UP, || body_of(&east, "echo.demo", "/"));

    west.kill();
    // Dead peer noticed within the idle timeout (2s in tests), and callers told why.
    // (A request caught in flight when the tunnel dies gets a 503 naming the lost stream; once
    // the tunnel is known down, the 503 says so.)
    eventually("a 503 naming the down tunnel", UP, || {
        match try_http(east.outbound, "GET", "echo.demo", "/", &[], b"") {
            Ok((503, _, body))
                if body.contains(
                    "no cluster exporting echo.demo is reachable: tunnels to west are down",
                ) =>
            {
                Some(())
            }
            Ok((200, _, body)) => panic!("west is dead but answered: {body}"),
            _ => None,
        }
    });
    // The gauge follows once the connector has noticed the close (its own task).
    eventually("the tunnel gauge to show west down", UP, || {
        (east.metric("causeway_tunnel_up", &[("peer_cluster", "west")]) == Some(0.0)).then_some(())
    });

    let _west = west_spec.start(&net);
    let body = eventually("requests after west restarted", UP, || {
        body_of(&east, "echo.demo", "/again")
    });
    assert!(body.starts_with("west-v1"), "{body}");
    assert_eq!(
        east.metric(
            "causeway_tunnel_connects_total",
            &[("peer_cluster", "west")]
        ),
        Some(2.0)
    );
}

#[test]
fn local_endpoints_are_served_too_and_clients_cannot_forge_identity() {
    let net = Net::new(15);
    let local = backend::http_echo(&net.ip(1), "east-local");
    let remote = backend::http_echo(&net.ip(2), "west-v1");
    // West exports the service on another port number than east runs it on.
    let _west = Spec::new("west", 2)
        .peer("east", 1)
        .toml(&format!(
            "\n[[services]]\nname = \"echo\"\nnamespace = \"demo\"\nendpoints = [\"{remote}\"]\nports = [{{ port = 8080, protocol = \"http\" }}]\n"
        ))
        .start(&net);
    let east = Spec::new("east", 1)
        .peer("west", 2)
        .http_service("echo.demo", local)
        .start(&net);
    let seen = eventually("both the local and the remote endpoint", UP, || {
        let bodies: Vec<String> = (0..6)
            .filter_map(|_| {
                let (status, _, body) = support::http_request(
                    east.outbound,
                    "GET",
                    "echo.demo",
                    "/",
                    &[("x-causeway-source-principal", "spiffe://west.mesh/admin")],
                    b"",
                );
                (status == 200).then_some(body)
            })
            .collect();
        let local = bodies.iter().any(|b| b.starts_with("east-local"));
        let remote = bodies.iter().any(|b| b.starts_with("west-v1"));
        (local && remote).then_some(bodies)
    });
    for body in seen {
        assert!(
            !body.contains("spiffe://west.mesh/admin"),
            "forged identity reached a backend: {body}"
        );
    }
}

#[test]
fn a_refusing_cluster_is_skipped_for_small_and_large_requests_alike() {
    let net = Net::new(16);
    // West exports echo.demo but nothing listens at its endpoint: it refuses every stream.
    let dead = std::net::TcpListener::bind((net.ip(2).as_str(), 0)).unwrap();
    let dead_addr = dead.local_addr().unwrap();
    drop(dead);
    let live = backend::http_echo(&net.ip(3), "edge-v2");
    let west = Spec::new("west", 2)
        .peer("east", 1)
        .http_service("echo.demo", dead_addr)
        .start(&net);
    let _edge = Spec::new("edge", 3)
        .peer("east", 1)
        .http_service("echo.demo", live)
        .start(&net);
    let east = Spec::new("east", 1)
        .peer("west", 2)
        .peer("edge", 3)
        .start(&net);
    eventually("both tunnels up", UP, || {
        let up = |c| east.metric("causeway_tunnel_up", &[("peer_cluster", c)]) == Some(1.0);
        (up("west") && up("edge")).then_some(())
    });

    // Small requests (sent right behind the preamble) and a large one (verdict first): every
    // one ends at edge, whichever cluster the round-robin tried first.
    let small = vec![b's'; 512];
    let large = vec![b'l'; 256 * 1024];
    for (method, body) in [
        ("GET", &b""[..]),
        ("POST", &small[..]),
        ("DELETE", &b""[..]),
        ("POST", &large[..]),
    ] {
        for _ in 0..2 {
            let (status, _, reply) =
                support::http_request(east.outbound, method, "echo.demo", "/", &[], body);
            assert_eq!(status, 200, "{method}: {reply}");
            assert!(reply.starts_with("edge-v2"), "{method}: {reply}");
            assert!(
                reply.contains(&format!("body-bytes: {}", body.len())),
                "{method}: {reply}"
            );
        }
    }
    let refused = west.metric(
        "causeway_stream_refusals_total",
        &[("reason", "endpoint_unavailable")],
    );
    assert!(
        refused.unwrap_or(0.0) >= 3.0,
        "west refused {refused:?} streams"
    );
}
