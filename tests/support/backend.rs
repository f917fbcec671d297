//! Real backends for the tests: an HTTP echo that reports who it is and what it received,
//! and a TCP echo. Plain threads and std sockets, independent of the code under test.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;
use std::time::Duration;

/// Starts an HTTP/1.1 echo on `ip:0`. It answers `name` (e.g. "west-v1") in the first line of
/// the body, then the request line and headers it received. A path that starts with
/// `/slow/<ms>` waits first; `/status/<code>` answers that status; `/fail-every/<n>` makes
/// every n-th such request this backend serves answer 503 (the path prefixes combine in that
/// order: `/fail-every/2/x`, `/status/503/x`).
pub fn http_echo(ip: &str, name: &str) -> SocketAddr {
    start_http_echo(ip, name, None, None)
}

/// [`http_echo`] that answers `status` to every request, whatever its path: a broken
/// backend.
#[allow(dead_code)] // not every test crate uses it
pub fn http_failing(ip: &str, name: &str, status: u16) -> SocketAddr {
    start_http_echo(ip, name, None, Some(status))
}

/// [`http_echo`] that also sends the path of every request it has read, before answering:
/// tests wait on it to know a request is in flight.
#[allow(dead_code)] // not every test crate uses it
pub fn http_echo_reporting(ip: &str, name: &str) -> (SocketAddr, mpsc::Receiver<String>) {
    let (tx, rx) = mpsc::channel();
    (start_http_echo(ip, name, Some(tx), None), rx)
}

fn start_http_echo(
    ip: &str,
    name: &str,
    seen: Option<mpsc::Sender<String>>,
    fixed: Option<u16>,
) -> SocketAddr {
    let listener = TcpListener::bind((ip, 0)).expect("bind backend");
    let addr = listener.local_addr().expect("addr");
    let name = name.to_string();
    let counter = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let name = name.clone();
            let seen = seen.clone();
            let counter = counter.clone();
            std::thread::spawn(move || serve_http(stream, &name, seen, &counter, fixed));
        }
    });
    addr
}

/// The status a request's path asks for (see [`http_echo`]); `n` counts `/fail-every`
/// requests.
fn status_for(path: &str, n: &std::sync::atomic::AtomicU64) -> u16 {
    let mut parts = path.trim_start_matches('/').split('/');
    match (
        parts.next(),
        parts.next().and_then(|v| v.parse::<u64>().ok()),
    ) {
        (Some("status"), Some(code)) => code as u16,
        (Some("fail-every"), Some(every)) if every > 0 => {
            let seen = n.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
            if seen.is_multiple_of(every) { 503 } else { 200 }
        }
        _ => 200,
    }
}

fn serve_http(
    stream: TcpStream,
    name: &str,
    seen: Option<mpsc::Sender<String>>,
    counter: &std::sync::atomic::AtomicU64,
    fixed: Option<u16>,
) {
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    let mut writer = stream;
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let mut headers = String::new();
        let mut content_length = 0usize;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            if line == "\r\n" {
                break;
            }
            if let Some((k, v)) = line.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                content_length = v.trim().parse().unwrap_or(0);
            }
            headers.push_str(&line);
        }
        let mut body_in = vec![0u8; content_length];
        if reader.read_exact(&mut body_in).is_err() {
            return;
        }
        let path = request_line
            .split_whitespace()
            .nth(1)
            .unwrap_or("/")
            .to_string();
        if let Some(seen) = &seen {
            let _ = seen.send(path.clone());
        }
        let mut rest = path.as_str();
        if let Some(after) = rest.strip_prefix("/slow/") {
            let (ms, tail) = after.split_once('/').unwrap_or((after, ""));
            if let Ok(ms) = ms.parse() {
                std::thread::sleep(Duration::from_millis(ms));
            }
            rest = if tail.is_empty() {
                "/"
            } else {
                &after[after.len() - tail.len() - 1..]
            };
        }
        let status = fixed.unwrap_or_else(|| status_for(rest, counter));
        let body = format!(
            "{name}\n{request_line}{headers}body-bytes: {}\n",
            body_in.len()
        );
        let resp = format!(
            "HTTP/1.1 {status} X\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nx-backend: {name}\r\n\r\n{body}",
            body.len()
        );
        if writer.write_all(resp.as_bytes()).is_err() {
            return;
        }
    }
}

/// Starts a TCP echo on `ip:0`.
pub fn tcp_echo(ip: &str) -> SocketAddr {
    let listener = TcpListener::bind((ip, 0)).expect("bind tcp echo");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut reader = stream.try_clone().expect("clone");
                let mut writer = stream;
                let _ = std::io::copy(&mut reader, &mut writer);
            });
        }
    });
    addr
}
