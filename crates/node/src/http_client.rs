//! A minimal blocking HTTP/1.1 GET for the node's own API on loopback. The `status` and `devnet`
//! commands, the end-to-end tests and the benchmark read nodes through it.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Most bytes of an answer read.
const MAX_ANSWER_BYTES: u64 = 64 << 20;

/// `GET path` from `addr`, the answer read within `timeout`: its status code and body.
pub fn get(addr: SocketAddr, path: &str, timeout: Duration) -> io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)?;
    stream.set_read_timeout(Some(timeout))?;
    // One write: `write!` on the stream would send the request in pieces.
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes())?;
    let mut raw = Vec::new();
    stream.take(MAX_ANSWER_BYTES).read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, format!("GET {path}: {what}"));
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| bad("the answer has no end of header"))?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| bad("the answer has no status code"))?;
    Ok((code, body.to_owned()))
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;

    use super::*;

    /// A one-shot server on 127.0.0.1 that reads the request and answers `answer`.
    fn serve_once(answer: &'static str) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        std::thread::spawn(move || {
            if let Ok((mut stream, _)) = listener.accept() {
                // Read the whole request (closing with unread bytes would reset the connection).
                let mut request = Vec::new();
                let mut byte = [0u8; 1];
                while !request.ends_with(b"\r\n\r\n") && stream.read(&mut byte).unwrap_or(0) == 1 {
                    request.push(byte[0]);
                }
                let _ = stream.write_all(answer.as_bytes());
            }
        });
        addr
    }

    #[test]
    fn reads_the_code_and_body() {
        let addr = serve_once("HTTP/1.1 404 Not Found\r\ncontent-length: 7\r\n\r\nmissing");
        let answer = get(addr, "/blocks/9", Duration::from_secs(5)).expect("answer");
        assert_eq!(answer, (404, "missing".to_owned()));
    }

    #[test]
    fn an_answer_without_a_header_end_is_invalid_data() {
        let addr = serve_once("HTTP/1.1 200 OK\r\n");
        let err = get(addr, "/status", Duration::from_secs(5)).expect_err("no header end");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }
}
