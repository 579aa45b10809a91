//! A minimal blocking HTTP/1.1 GET for the node's own JSON API on loopback (`devnet`, `status`).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::Context;

/// `GET path` from `addr`, returning the body of a 200 answer as JSON.
pub fn get_json(addr: SocketAddr, path: &str) -> anyhow::Result<serde_json::Value> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    stream.take(64 << 20).read_to_end(&mut raw)?;
    let text = String::from_utf8(raw).context("answer is not UTF-8")?;
    let (head, body) = text.split_once("\r\n\r\n").context("answer has no header end")?;
    let code = head.split_whitespace().nth(1).unwrap_or("?");
    anyhow::ensure!(code == "200", "GET {path} answered {code}: {body}");
    serde_json::from_str(body).with_context(|| format!("GET {path}: body is not JSON"))
}
