//! 414 for a request line too long to read, where hyper would say 431.
//!
//! hyper answers 414 (URI Too Long) only when a whole head fits its read buffer and the target
//! is over 64 KiB; a request line longer than the buffer itself ends as 431 (Request Header
//! Fields Too Large), which sends the client looking at its headers. This wrapper watches the
//! bytes read: when hyper answers 431 and no line break was read since the connection opened or
//! the last answer began, the head it gave up on is all request line, and the status line is
//! rewritten to 414. Everything else passes untouched. (A client that pipelines a request
//! behind one still unanswered could see 414 for an overlong header line: a rare client doing a
//! rare thing, told the wrong one of two refusals.)

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

const TOO_LARGE: &[u8] = b"HTTP/1.1 431 ";
const ANSWER: &[u8] = b"HTTP/1.";
const URI_TOO_LONG: &[u8] = b"HTTP/1.1 414 URI Too Long\r\n";

pub(crate) struct LongLine<T> {
    inner: T,
    /// A `\n` was read since the connection opened or the last answer began.
    line_broken: bool,
    /// What is left to write of a rewritten answer.
    pending: Vec<u8>,
}

impl<T> LongLine<T> {
    pub fn new(inner: T) -> Self {
        Self {
            inner,
            line_broken: false,
            pending: Vec::new(),
        }
    }
}

impl<T: AsyncWrite + Unpin> LongLine<T> {
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.pending.is_empty() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.pending))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.pending.drain(..n);
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for LongLine<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.inner).poll_read(cx, buf))?;
        if !self.line_broken {
            self.line_broken = buf.filled()[before..].contains(&b'\n');
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for LongLine<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        ready!(self.poll_pending(cx))?;
        if !self.line_broken && buf.starts_with(TOO_LARGE) {
            let rest = buf
                .iter()
                .position(|&b| b == b'\n')
                .map_or(&buf[buf.len()..], |at| &buf[at + 1..]);
            self.pending = [URI_TOO_LONG, rest].concat();
            // Taken whole; it goes out through `pending` (here, on the next write or a flush).
            let _ = self.poll_pending(cx)?;
            return Poll::Ready(Ok(buf.len()));
        }
        let written = ready!(Pin::new(&mut self.inner).poll_write(cx, buf))?;
        if buf.starts_with(ANSWER) {
            self.line_broken = false;
        }
        Poll::Ready(Ok(written))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_pending(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_pending(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn answer_after_reading(input: Vec<u8>, answer: &[u8]) -> Vec<u8> {
        let (client, server) = tokio::io::duplex(1 << 20);
        let mut server = LongLine::new(server);
        let (mut client_read, mut client_write) = tokio::io::split(client);
        client_write.write_all(&input).await.unwrap();
        let mut sink = vec![0u8; input.len()];
        server.read_exact(&mut sink).await.unwrap();
        server.write_all(answer).await.unwrap();
        server.shutdown().await.unwrap();
        let mut out = Vec::new();
        client_read.read_to_end(&mut out).await.unwrap();
        out
    }

    const ANSWER_431: &[u8] =
        b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\n\r\n";

    #[tokio::test]
    async fn a_request_line_longer_than_the_buffer_is_414() {
        let mut input = b"GET /".to_vec();
        input.resize(100_000, b'a');
        let out = answer_after_reading(input, ANSWER_431).await;
        assert_eq!(
            out,
            b"HTTP/1.1 414 URI Too Long\r\ncontent-length: 0\r\n\r\n"
        );
    }

    #[tokio::test]
    async fn long_headers_stay_431_and_other_answers_pass() {
        let mut input = b"GET / HTTP/1.1\r\nx-big: ".to_vec();
        input.resize(100_000, b'a');
        let out = answer_after_reading(input.clone(), ANSWER_431).await;
        assert_eq!(out, ANSWER_431);
        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
        assert_eq!(answer_after_reading(vec![b'x'; 100_000], ok).await, ok);
    }

    #[tokio::test]
    async fn a_later_request_counts_from_the_answer_before_it() {
        let (client, server) = tokio::io::duplex(1 << 20);
        let mut server = LongLine::new(server);
        let (mut client_read, mut client_write) = tokio::io::split(client);
        let first = b"GET / HTTP/1.1\r\nhost: a\r\n\r\n";
        client_write.write_all(first).await.unwrap();
        server.read_exact(&mut vec![0; first.len()]).await.unwrap();
        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
        server.write_all(ok).await.unwrap();
        client_write.write_all(&[b'a'; 100_000]).await.unwrap();
        server.read_exact(&mut vec![0; 100_000]).await.unwrap();
        server.write_all(ANSWER_431).await.unwrap();
        server.shutdown().await.unwrap();
        let mut out = Vec::new();
        client_read.read_to_end(&mut out).await.unwrap();
        let expected = [
            &ok[..],
            b"HTTP/1.1 414 URI Too Long\r\ncontent-length: 0\r\n\r\n",
        ]
        .concat();
        assert_eq!(out, expected);
    }
}
