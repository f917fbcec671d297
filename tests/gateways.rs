//! A cluster run by several gateways, for availability, is reached through all of them: east
//! keeps a tunnel to each of west's two gateways, spreads requests over them, and fails over to
//! the survivor at once when one dies.
//!
//! east founds the mesh; west-1 joins; west-2 joins through west-1 as a second gateway of
//! `west`, getting west's CA from west-1 over the join's TLS channel. Both reach the backends
//! that serve
//! `api.production` (HTTP) and `db.production` (TCP, port 9400) for west.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde_json::json;
use support::rest::{Api, founder};
use support::{Gateway, Net, Spec, backend, eventually, metric_sum, try_http};

const UP: Duration = Duration::from_secs(30);

fn create_token(admin: &Api) -> String {
    let reply = admin.post_json(
        "/v1/tokens",
        &json!({"role": "join", "description": "gateways test"}),
    );
    assert_eq!(reply.status, 201, "{}", reply.text);
    reply.json["token"].as_str().expect("token").to_string()
}

fn get(east: &Gateway) -> (u16, String) {
    match try_http(east.outbound, "GET", "api.production", "/", &[], b"") {
        Ok((status, _, body)) => (status, body),
        Err(e) => (0, e.to_string()),
    }
}

/// One TCP connection through east's port for `db.production`: `n` bytes there and back.
fn tcp_echo(east_port: SocketAddr, n: usize) -> Result<(), String> {
    let mut conn = TcpStream::connect_timeout(&east_port, Duration::from_secs(5))
        .map_err(|e| format!("connect: {e}"))?;
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let payload: Vec<u8> = (0..n).map(|i| (i % 251) as u8).collect();
    conn.write_all(&payload)
        .map_err(|e| format!("write: {e}"))?;
    let mut got = vec![0u8; n];
    conn.read_exact(&mut got)
        .map_err(|e| format!("read: {e}"))?;
    (got == payload)
        .then_some(())
        .ok_or_else(|| "bytes came back altered".to_string())
}

/// TCP connections west's gateway has proxied as the destination.
fn connections(west: &Gateway) -> f64 {
    metric_sum(
        &west.metrics(),
        "causeway_tcp_connections_total",
        &[("reporter", "destination"), ("service", "db.production")],
    )
}

/// Requests west's gateway has served as the destination.
fn served(west: &Gateway) -> f64 {
    metric_sum(
        &west.metrics(),
        "causeway_requests_total",
        &[("reporter", "destination"), ("service", "api.production")],
    )
}

/// East's tunnels to west as `/v1/status` lists them: (address, state).
fn west_tunnels(admin: &Api) -> Vec<(String, String)> {
    let reply = admin.get("/v1/status");
    assert_eq!(reply.status, 200, "{}", reply.text);
    let mut tunnels: Vec<(String, String)> = reply.json["tunnels"]
        .as_array()
        .expect("tunnels")
        .iter()
        .filter(|t| t["cluster"] == "west")
        .map(|t| {
            (
                t["address"].as_str().unwrap_or_default().to_string(),
                t["state"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    tunnels.sort();
    tunnels
}

#[test]
fn a_cluster_with_two_gateways_is_reached_through_both_and_survives_losing_one() {
    let net = Net::new(121);
    let (east, admin) = founder(&net, "east", 1);
    let west1 = Spec::new("west", 2)
        .join(&east, &create_token(&admin))
        .start(&net);
    // West's second gateway joins through west's first and gets the cluster's CA from it over
    // the join's TLS channel (the key never enters the replicated log); no CA is copied.
    let west2 = Spec::new("west", 3)
        .named("west-2")
        .join(&west1, &create_token(&admin))
        .start(&net);
    let (ca1, ca2) = (
        net.data_dir("west").join("ca"),
        net.data_dir("west-2").join("ca"),
    );
    for file in ["ca.pem", "ca-key.pem"] {
        assert_eq!(
            std::fs::read(ca1.join(file)).unwrap(),
            std::fs::read(ca2.join(file)).unwrap(),
            "{file} differs"
        );
    }
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(ca2.join("ca-key.pem"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "the CA key's mode is {mode:o}");
    assert!(
        west2
            .logs()
            .contains("got this cluster's CA from one of its gateways")
    );
    // A third joining through another cluster's gateway is told where to go, and stops.
    let refused = Spec::new("west", 4)
        .named("west-3")
        .join(&east, &create_token(&admin))
        .spawn(&net)
        .wait_exit_output(UP);
    assert!(!refused.0.success(), "west-3 joined through east");
    assert!(
        refused.1.contains(
            "cluster west already has a CA, held by its gateways; join through one of them"
        ),
        "{}",
        refused.1
    );
    let mut west1 = west1;

    let echo = backend::http_echo(&net.ip(10), "west-api");
    let db = backend::tcp_echo(&net.ip(10));
    let doc = [
        json!({"apiVersion": "causeway.dev/v1alpha1", "kind": "Service",
               "metadata": {"name": "api", "namespace": "production", "cluster": "west"},
               "spec": {"ports": [{"port": 80, "protocol": "http"}],
                        "endpoints": [{"address": echo.to_string()}]}}),
        json!({"apiVersion": "causeway.dev/v1alpha1", "kind": "ServiceExport",
               "metadata": {"name": "api", "namespace": "production", "cluster": "west"},
               "spec": {}}),
        json!({"apiVersion": "causeway.dev/v1alpha1", "kind": "Service",
               "metadata": {"name": "db", "namespace": "production", "cluster": "west"},
               "spec": {"ports": [{"port": 9400, "protocol": "tcp"}],
                        "endpoints": [{"address": db.to_string()}]}}),
        json!({"apiVersion": "causeway.dev/v1alpha1", "kind": "ServiceExport",
               "metadata": {"name": "db", "namespace": "production", "cluster": "west"},
               "spec": {}}),
    ]
    .iter()
    .map(|d| serde_yaml_ng::to_string(d).unwrap())
    .collect::<Vec<_>>()
    .join("---\n");
    let reply = admin.apply_yaml(&doc, false);
    assert_eq!(reply.status, 200, "{}", reply.text);

    // East dials both of west's gateways, each with its own gauge and status line.
    let (w1, w2) = (west1.tunnel.to_string(), west2.tunnel.to_string());
    eventually("tunnels to both west gateways", UP, || {
        let up = |gw: &str| {
            east.metric(
                "causeway_tunnel_up",
                &[("peer_cluster", "west"), ("peer_gateway", gw)],
            ) == Some(1.0)
        };
        (up(&w1) && up(&w2)).then_some(())
    });
    let mut both = vec![
        (w1.clone(), "up".to_string()),
        (w2.clone(), "up".to_string()),
    ];
    both.sort();
    assert_eq!(west_tunnels(&admin), both);
    eventually("east to reach api.production", UP, || {
        let (status, body) = get(&east);
        (status == 200 && body.starts_with("west-api")).then_some(())
    });

    // Requests spread over both gateways: each is the destination of its share.
    let before = (served(&west1), served(&west2));
    let n = 40;
    for i in 0..n {
        let (status, body) = get(&east);
        assert_eq!(status, 200, "request {i}: {body}");
    }
    let after = (served(&west1), served(&west2));
    let (d1, d2) = (after.0 - before.0, after.1 - before.1);
    println!("of {n} requests, west-1 served {d1}, west-2 {d2}");
    assert_eq!(d1 + d2, f64::from(n), "every request went through west");
    assert!(
        d1 >= f64::from(n) / 4.0 && d2 >= f64::from(n) / 4.0,
        "requests did not spread over west's gateways: west-1 {d1}, west-2 {d2}"
    );

    // TCP connections spread likewise.
    let db_port: SocketAddr = format!("{}:9400", net.ip(1)).parse().unwrap();
    eventually("east to proxy db.production", UP, || {
        tcp_echo(db_port, 16).ok()
    });
    let before = (connections(&west1), connections(&west2));
    for i in 0..10 {
        tcp_echo(db_port, 4096).unwrap_or_else(|e| panic!("connection {i}: {e}"));
    }
    let (c1, c2) = (
        connections(&west1) - before.0,
        connections(&west2) - before.1,
    );
    assert!(
        c1 >= 2.0 && c2 >= 2.0 && c1 + c2 == 10.0,
        "connections did not spread over west's gateways: west-1 {c1}, west-2 {c2}"
    );

    // West-1 dies without a word. East's tunnel to it stays open until QUIC's idle timeout,
    // but no request fails: one that gets no verdict through west-1 goes to west-2, and
    // west-1 goes last until the tunnel is declared dead.
    west1.kill();
    let killed = Instant::now();
    let mut slowest = Duration::ZERO;
    for i in 0..50 {
        let started = Instant::now();
        let (status, body) = get(&east);
        slowest = slowest.max(started.elapsed());
        assert_eq!(
            status,
            200,
            "request {i} after west-1 died ({:?} after): {body}",
            killed.elapsed()
        );
        assert!(body.starts_with("west-api"), "{body}");
    }
    println!(
        "50 requests after west-1 died: none failed, slowest {slowest:?}, all within {:?}",
        killed.elapsed()
    );
    for i in 0..10 {
        tcp_echo(db_port, 4096).unwrap_or_else(|e| panic!("connection {i} after west-1 died: {e}"));
    }

    // The tunnel to west-1 is declared dead; the one to west-2 stays up, and carries it all.
    eventually("east to see west-1's tunnel down", UP, || {
        let down = east.metric(
            "causeway_tunnel_up",
            &[("peer_cluster", "west"), ("peer_gateway", &w1)],
        ) == Some(0.0);
        down.then_some(())
    });
    assert_eq!(
        east.metric(
            "causeway_tunnel_up",
            &[("peer_cluster", "west"), ("peer_gateway", &w2)]
        ),
        Some(1.0)
    );
    let mut states = vec![(w1.clone(), "down".to_string()), (w2, "up".to_string())];
    states.sort();
    assert_eq!(west_tunnels(&admin), states);
    let before = served(&west2);
    for i in 0..10 {
        let (status, body) = get(&east);
        assert_eq!(status, 200, "request {i} with west-1 down: {body}");
    }
    assert_eq!(served(&west2) - before, 10.0);
}
