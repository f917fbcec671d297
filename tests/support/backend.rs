//! Real backends for the tests: an HTTP echo that reports who it is and what it received,
//! and a TCP echo. Plain threads and std sockets, independent of the code under test.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;
use std::time::Duration;

/// Starts an HTTP/1.1 echo on `ip:0`. It answers `name` (e.g. "west-v1") in the first line of
/// the body, then the request line and headers it received. `GET /slow/<ms>` waits first.
pub fn http_echo(ip: &str, name: &str) -> SocketAddr {
    start_http_echo(ip, name, None)
}

/// [`http_echo`] that also sends the path of every request it has read, before answering:
/// tests wait on it to know a request is in flight.
#[allow(dead_code)] // not every test crate uses it
pub fn http_echo_reporting(ip: &str, name: &str) -> (SocketAddr, mpsc::Receiver<String>) {
    let (tx, rx) = mpsc::channel();
    (start_http_echo(ip, name, Some(tx)), rx)
}

fn start_http_echo(ip: &str, name: &str, seen: Option<mpsc::Sender<String>>) -> SocketAddr {
    let listener = TcpListener::bind((ip, 0)).expect("bind backend");
    let addr = listener.local_addr().expect("addr");
    let name = name.to_string();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let name = name.clone();
            let seen = seen.clone();
            std::thread::spawn(move || serve_http(stream, &name, seen));
        }
    });
    addr
}

fn serve_http(stream: TcpStream, name: &str, seen: Option<mpsc::Sender<String>>) {
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
        if let Some(ms) = path.strip_prefix("/slow/").and_then(|ms| ms.parse().ok()) {
            std::thread::sleep(Duration::from_millis(ms));
        }
        let body = format!(
            "{name}\n{request_line}{headers}body-bytes: {}\n",
            body_in.len()
        );
        let resp = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nx-backend: {name}\r\n\r\n{body}",
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
