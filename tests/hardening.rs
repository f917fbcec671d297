//! Hostile and careless input against real gateways (issue 8): bodies nested to freeze a
//! parser, a last admin token revoked, ambiguous requests a proxy could read two ways.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::time::Duration;

use serde_json::json;
use support::rest::founder;
use support::{BIN, Net, Spec, eventually};

const UP: Duration = Duration::from_secs(30);

#[test]
fn deeply_nested_bodies_are_refused_at_once_naming_the_limit() {
    let net = Net::new(101);
    let (gw, api) = founder(&net, "east", 1);
    // 100,000 levels took ~80 s of the control plane before; now one linear scan refuses it.
    let json_bomb = "{\"a\":".repeat(100_000) + "1" + &"}".repeat(100_000);
    let yaml_bomb = "a: ".to_string() + &"[".repeat(40_000) + &"]".repeat(40_000);
    for (content_type, body) in [
        ("application/json", &json_bomb),
        ("application/yaml", &yaml_bomb),
    ] {
        let reply = api.call("POST", "/v1/apply", Some((content_type, body.as_bytes())));
        assert_eq!(reply.status, 422, "{content_type}: {}", reply.text);
        assert!(
            reply.text.contains("nesting deeper than 100 levels"),
            "{content_type}: {}",
            reply.text
        );
    }
    let reply = api.call(
        "PUT",
        "/v1/namespaces/shop/services/web",
        Some(("application/json", json_bomb.as_bytes())),
    );
    assert_eq!(reply.status, 422, "{}", reply.text);
    // Nothing was written, and the API answers as before.
    assert_eq!(api.get("/v1/namespaces/shop/services/web").status, 404);
    assert_eq!(gw.admin_get("/healthz").0, 200);
    assert_eq!(api.get("/v1/status").status, 200);
}

#[test]
fn the_last_admin_token_stays_and_local_access_recovers_one() {
    let net = Net::new(102);
    let (gw, api) = founder(&net, "east", 1);
    let data_dir = net.data_dir("east");
    let founding = support::admin_token(&data_dir);
    let founding_id = founding.split('_').nth(1).unwrap().to_string();
    let server = format!("https://{}", gw.admin);
    let ca = support::ca_of(&data_dir);
    let cli = |args: &[&str], token: Option<&str>| {
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .args(["--server", &server, "--ca-file"])
            .arg(&ca)
            .env("XDG_CONFIG_HOME", net.dir.path())
            .env_remove("CAUSEWAY_TOKEN");
        if let Some(token) = token {
            cmd.args(["--token", token]);
        }
        cmd.output().expect("run causeway")
    };

    // Revoking the only lasting admin token is refused, through the CLI and the API alike.
    let out = cli(&["token", "revoke", &founding_id], Some(&founding));
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("last admin token"), "{stderr}");
    let reply = api.delete(&format!("/v1/tokens/{founding_id}"));
    assert_eq!(reply.status, 409, "{}", reply.text);
    assert_eq!(api.get("/v1/tokens").status, 200, "the token still works");
    // An expiring admin token does not count; a second lasting one does.
    let expiring = api.post_json("/v1/tokens", &json!({"role": "admin", "ttl": "1h"}));
    assert_eq!(expiring.status, 201, "{}", expiring.text);
    assert_eq!(api.delete(&format!("/v1/tokens/{founding_id}")).status, 409);
    let second = api.post_json("/v1/tokens", &json!({"role": "admin"}));
    assert_eq!(second.status, 201, "{}", second.text);
    let second_token = second.json["token"].as_str().unwrap().to_string();
    assert_eq!(api.delete(&format!("/v1/tokens/{founding_id}")).status, 204);
    let second_api = api.with_token(Some(&second_token));
    let second_id = second.json["id"].as_str().unwrap();
    assert_eq!(
        second_api.delete(&format!("/v1/tokens/{second_id}")).status,
        409
    );

    // Break glass: no token at all, only the data directory.
    let anonymous = api.with_token(None);
    let refused = anonymous.post_json("/v1/tokens/recover", &json!({"secret": "guess"}));
    assert_eq!(refused.status, 403, "{}", refused.text);
    assert!(
        refused.text.contains("no recovery request"),
        "{}",
        refused.text
    );
    let out = Command::new(BIN)
        .args(["token", "recover", "--data-dir"])
        .arg(&data_dir)
        .args(["--server", &server])
        .env("XDG_CONFIG_HOME", net.dir.path())
        .output()
        .expect("run causeway token recover");
    assert!(out.status.success(), "{out:?}");
    let recovered = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(recovered.starts_with("cw_"), "{recovered:?}");
    assert!(
        !data_dir.join("recovery-request").exists(),
        "the request is used up"
    );
    let recovered_api = api.with_token(Some(&recovered));
    assert_eq!(recovered_api.get("/v1/tokens").status, 200);
    let audit = recovered_api.get("/v1/audit");
    assert!(audit.text.contains("recovery@east-1"), "{}", audit.text);
    assert!(
        gw.logs().contains("break-glass recovery"),
        "the recovery is logged"
    );
    assert!(!gw.logs().contains(&recovered), "the token was logged");
    // Without the data directory it is refused as a usage error.
    let out = Command::new(BIN)
        .args(["token", "recover", "--data-dir"])
        .arg(net.dir.path().join("nowhere"))
        .args(["--server", &server])
        .output()
        .expect("run causeway token recover");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}

/// Sends raw bytes (a request asking `Connection: close`) and reads until the server closes.
fn raw_exchange(addr: SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    s.write_all(request).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

fn status_of(answer: &str) -> u16 {
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {answer:?}"))
}

#[test]
fn requests_two_parties_could_read_two_ways_are_refused() {
    let net = Net::new(103);
    // An endpoint that takes a connection and never answers: whatever the gateway says comes
    // from the gateway.
    let silent = TcpListener::bind((net.ip(9).as_str(), 0)).unwrap();
    let silent_addr = silent.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in silent.incoming().flatten() {
            held.push(stream);
        }
    });
    let gw = Spec::new("east", 1)
        .http_service("quiet.demo", silent_addr)
        .start(&net);
    let out = gw.outbound;

    for (request, why) in [
        (
            "GET / HTTP/1.1\r\nHost: quiet.demo\r\nHost: other.demo\r\nConnection: close\r\n\r\n",
            "more than one Host",
        ),
        (
            "GET http://other.demo/ HTTP/1.1\r\nHost: quiet.demo\r\nConnection: close\r\n\r\n",
            "the request target names",
        ),
        (
            "GET / HTTP/1.1\r\nHost: quiet.demo:99999\r\nConnection: close\r\n\r\n",
            "no valid port",
        ),
        (
            "POST / HTTP/1.1\r\nHost: quiet.demo\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\nzz\r\n\r\n",
            "reading the request body failed",
        ),
    ] {
        let answer = eventually("the service to be routable", UP, || {
            let answer = raw_exchange(out, request.as_bytes());
            (!answer.contains("not a mesh service") && !answer.contains("no such service"))
                .then_some(answer)
        });
        assert_eq!(status_of(&answer), 400, "{request:?}: {answer}");
        assert!(answer.contains(why), "{request:?}: {answer}");
    }

    // A request line longer than the gateway reads is 414 (URI Too Long), not 431: the client
    // learns that its URL, not its headers, is at fault. The gateway stops reading and closes, so
    // the answer is read while the rest is still being written.
    let answer = eventually("an answer to an overlong request line", UP, || {
        let mut s = TcpStream::connect_timeout(&out, Duration::from_secs(5)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(15))).ok()?;
        let mut writer = s.try_clone().ok()?;
        std::thread::spawn(move || {
            let line = format!(
                "GET /{} HTTP/1.1\r\nHost: quiet.demo\r\n\r\n",
                "a".repeat(1 << 20)
            );
            let _ = writer.write_all(line.as_bytes());
        });
        let mut answer = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = s.read(&mut buf) {
            if n == 0 {
                break;
            }
            answer.extend_from_slice(&buf[..n]);
        }
        (!answer.is_empty()).then(|| String::from_utf8_lossy(&answer).into_owned())
    });
    assert_eq!(status_of(&answer), 414, "{answer}");

    // The admin API takes one credential, not two.
    let token = support::admin_token(&net.data_dir("east"));
    let bearer = format!("Bearer {token}");
    let (status, _, body) = gw
        .try_admin(
            "GET",
            "/v1/status",
            &[
                ("authorization", &bearer),
                ("authorization", "Bearer cw_x_y"),
            ],
            b"",
        )
        .unwrap();
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("one Authorization header"), "{body}");
}
