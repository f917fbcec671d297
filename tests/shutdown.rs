//! Graceful shutdown: SIGTERM stops accepting, lets in-flight streams finish until the drain
//! deadline, then closes the tunnels.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use support::{Net, Spec, accepts, backend, eventually, http_get, try_http};

const UP: Duration = Duration::from_secs(20);

fn echo_line(conn: &mut TcpStream, msg: &[u8]) -> std::io::Result<()> {
    conn.write_all(msg)?;
    let mut got = vec![0u8; msg.len()];
    conn.read_exact(&mut got)?;
    assert_eq!(got, msg);
    Ok(())
}

#[test]
fn an_http_request_in_flight_finishes_after_sigterm() {
    let net = Net::new(31);
    let (echo, seen) = backend::http_echo_reporting(&net.ip(2), "west-v1");
    let _west = Spec::new("west", 2)
        .peer("east", 1)
        .http_service("echo.demo", echo)
        .start(&net);
    let mut east = Spec::new("east", 1).peer("west", 2).start(&net);
    eventually("the tunnel", UP, || {
        try_http(east.outbound, "GET", "echo.demo", "/", &[], b"")
            .ok()
            .filter(|r| r.0 == 200)
    });

    let outbound = east.outbound;
    while seen.try_recv().is_ok() {} // the tunnel probes above
    let slow = std::thread::spawn(move || http_get(outbound, "echo.demo", "/slow/1500"));
    // In flight: it went through east and the tunnel and reached the endpoint.
    let path = seen
        .recv_timeout(UP)
        .expect("the slow request reached the endpoint");
    assert_eq!(path, "/slow/1500");
    east.signal("TERM");
    // Stops accepting at once...
    eventually(
        "the outbound listener to close",
        Duration::from_secs(5),
        || (!accepts(outbound)).then_some(()),
    );
    // ...while the request already in flight completes.
    let (status, _, body) = slow.join().unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("GET /slow/1500"), "{body}");
    let status = east.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "exit status {status}");
    let logs = east.logs();
    assert!(logs.contains("SIGTERM received"), "{logs}");
    assert!(
        logs.contains("drained: every in-flight stream finished"),
        "{logs}"
    );
}

#[test]
fn a_tcp_stream_in_flight_through_the_receiving_gateway_survives_its_sigterm() {
    let net = Net::new(32);
    let tcp = backend::tcp_echo(&net.ip(2));
    let mut west = Spec::new("west", 2)
        .peer("east", 1)
        .tcp_service("db.demo", tcp, 9403)
        .start(&net);
    let east = Spec::new("east", 1).peer("west", 2).start(&net);
    let addr: SocketAddr = format!("{}:9403", net.ip(1)).parse().unwrap();
    let mut conn = eventually("db.demo on east", UP, || TcpStream::connect(addr).ok());
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    echo_line(&mut conn, b"before\n").unwrap();

    west.signal("TERM");
    eventually("west to stop accepting tunnels", UP, || {
        (east.metric("causeway_tunnel_up", &[("peer_cluster", "west")]) == Some(0.0)
            || west.logs().contains("shutting down"))
        .then_some(())
    });
    // The stream that was open keeps flowing through the draining gateway.
    for i in 0..5 {
        echo_line(&mut conn, format!("during drain {i}\n").as_bytes()).unwrap();
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(west.logs().contains("SIGTERM received"));
    let closed_at = Instant::now();
    drop(conn);
    let status = west.wait_exit(Duration::from_secs(8));
    assert!(status.success(), "exit status {status}");
    // It left as soon as the last stream ended, not at the 10s deadline.
    assert!(closed_at.elapsed() < Duration::from_secs(8));
    assert!(
        west.logs()
            .contains("drained: every in-flight stream finished"),
        "{}",
        west.logs()
    );
}

#[test]
fn the_drain_deadline_bounds_shutdown() {
    let net = Net::new(33);
    let tcp = backend::tcp_echo(&net.ip(2));
    let mut west = Spec::new("west", 2)
        .peer("east", 1)
        .tcp_service("db.demo", tcp, 9404)
        .toml("[shutdown]\ndrain_timeout = \"1s\"\n")
        .start(&net);
    let _east = Spec::new("east", 1).peer("west", 2).start(&net);
    let addr: SocketAddr = format!("{}:9404", net.ip(1)).parse().unwrap();
    let mut conn = eventually("db.demo on east", UP, || TcpStream::connect(addr).ok());
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    echo_line(&mut conn, b"hold this open\n").unwrap();
    west.signal("TERM");
    let status = west.wait_exit(Duration::from_secs(8));
    assert!(status.success(), "exit status {status}");
    assert!(
        west.logs().contains("drain deadline passed"),
        "{}",
        west.logs()
    );
    drop(conn);
}

#[test]
fn posts_keep_succeeding_while_one_of_two_exporting_clusters_shuts_down() {
    let net = Net::new(34);
    let v1 = backend::http_echo(&net.ip(2), "west-v1");
    let v2 = backend::http_echo(&net.ip(3), "edge-v2");
    let mut west = Spec::new("west", 2)
        .peer("east", 1)
        .http_service("echo.demo", v1)
        .start(&net);
    let _edge = Spec::new("edge", 3)
        .peer("east", 1)
        .http_service("echo.demo", v2)
        .start(&net);
    let east = Spec::new("east", 1)
        .peer("west", 2)
        .peer("edge", 3)
        .start(&net);
    let outbound = east.outbound;
    let post = move || {
        try_http(outbound, "POST", "echo.demo", "/", &[], b"not idempotent")
            .map(|r| (r.0, r.2))
            .unwrap_or_else(|e| (0, e.to_string()))
    };
    eventually("both clusters answering", UP, || {
        let bodies: Vec<String> = (0..4).map(|_| post().1).collect();
        (bodies.iter().any(|b| b.starts_with("west-v1"))
            && bodies.iter().any(|b| b.starts_with("edge-v2")))
        .then_some(())
    });

    // POSTs cannot be replayed once a gateway may have acted on them; a gateway that shuts
    // down acts on nothing it has not answered, so none of these may fail.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let senders: Vec<_> = (0..4)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut failures = Vec::new();
                let mut sent = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let (status, body) = post();
                    sent += 1;
                    if status != 200 {
                        failures.push(format!("{status}: {body}"));
                    }
                }
                (sent, failures)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    west.signal("TERM");
    assert!(west.wait_exit(Duration::from_secs(20)).success());
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut sent = 0;
    let mut failures = Vec::new();
    for s in senders {
        let (n, f) = s.join().unwrap();
        sent += n;
        failures.extend(f);
    }
    assert!(sent > 20, "only {sent} requests sent");
    assert!(
        failures.is_empty(),
        "{} of {sent} failed: {failures:?}",
        failures.len()
    );
}
