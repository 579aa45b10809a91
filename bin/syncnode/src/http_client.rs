//! The node's JSON API read from the command line (`devnet`, `status`).

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;

/// `GET path` from `addr`, returning the body of a 200 answer as JSON.
pub fn get_json(addr: SocketAddr, path: &str) -> anyhow::Result<serde_json::Value> {
    let (code, body) = syncnode_node::http_client::get(addr, path, Duration::from_secs(10))
        .with_context(|| format!("GET {path} from {addr}"))?;
    anyhow::ensure!(code == 200, "GET {path} answered {code}: {body}");
    serde_json::from_str(&body).with_context(|| format!("GET {path}: body is not JSON"))
}
