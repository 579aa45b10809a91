//! Running `syncnode run` processes and watching them through the HTTP API.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::{ChildGuard, path_str, syncnode};

/// A free UDP port on 127.0.0.1 (bound then released; the test binds it again at once).
pub fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("free udp port")
}

/// A free address on 127.0.0.1 for a node's HTTP API.
fn free_http_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

/// A free TCP port on 127.0.0.1 (bound then released; the test binds it again at once).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// `GET path` on `addr`: the status code and body, or `None` on any failure.
pub fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    syncnode_node::http_client::get(addr, path, Duration::from_secs(10)).ok()
}

/// `GET path` as JSON, or `None`.
pub fn http_json(addr: SocketAddr, path: &str) -> Option<serde_json::Value> {
    let (code, body) = http_get(addr, path)?;
    (code == 200).then(|| serde_json::from_str(&body).ok()).flatten()
}

/// Polls `f` every 100 ms until it returns `Some`, or panics with `what` after `timeout`.
pub fn wait_for<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A running `syncnode run` with its HTTP API and P2P port on 127.0.0.1.
pub struct Node {
    pub name: String,
    pub child: ChildGuard,
    pub http: SocketAddr,
    pub p2p_port: u16,
    /// The one address it listens on for peers (TCP unless started with [`Node::start_quic`]).
    pub listen: String,
    pub data_dir: PathBuf,
    pub log: PathBuf,
}

impl Node {
    /// Starts `syncnode run` on fresh ports; its stderr goes to `DATA_DIR.log`.
    pub fn start(name: &str, spec: &Path, data_dir: &Path, extra: &[String]) -> Node {
        let http = free_http_addr();
        Node::start_at(name, spec, data_dir, extra, http, free_port())
    }

    /// Starts `syncnode run` on the given ports (to restart a node where its peers and clients
    /// expect it); its stderr is appended to `DATA_DIR.log`.
    pub fn start_at(
        name: &str,
        spec: &Path,
        data_dir: &Path,
        extra: &[String],
        http: SocketAddr,
        p2p_port: u16,
    ) -> Node {
        let listen = format!("/ip4/127.0.0.1/tcp/{p2p_port}");
        Node::start_listening(name, spec, data_dir, extra, http, p2p_port, listen)
    }

    /// Starts `syncnode run` listening for peers on QUIC-v1 only (a UDP port on 127.0.0.1).
    pub fn start_quic(name: &str, spec: &Path, data_dir: &Path, extra: &[String]) -> Node {
        let http = free_http_addr();
        let port = free_udp_port();
        let listen = format!("/ip4/127.0.0.1/udp/{port}/quic-v1");
        Node::start_listening(name, spec, data_dir, extra, http, port, listen)
    }

    fn start_listening(
        name: &str,
        spec: &Path,
        data_dir: &Path,
        extra: &[String],
        http: SocketAddr,
        p2p_port: u16,
        listen: String,
    ) -> Node {
        let http_s = http.to_string();
        let mut args = vec!["run", "--chain", path_str(spec), "--data-dir", path_str(data_dir)];
        args.extend([
            "--listen",
            &listen,
            "--http",
            &http_s,
            "--log-level",
            "info,syncnode=debug",
        ]);
        let mut cmd = syncnode(&args);
        cmd.args(extra);
        let log = data_dir.with_extension("log");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("log file");
        cmd.stdout(std::process::Stdio::null()).stderr(file);
        let child = ChildGuard(cmd.spawn().expect("spawn syncnode run"));
        let node = Node {
            name: name.into(),
            child,
            http,
            p2p_port,
            listen,
            data_dir: data_dir.into(),
            log,
        };
        wait_for(
            Duration::from_secs(20),
            &format!("{name} to answer /status"),
            || node.status(),
        );
        node
    }

    /// The multiaddr other nodes use to dial this one.
    pub fn multiaddr(&self) -> String {
        self.listen.clone()
    }

    /// `GET /status`, or `None` while it does not answer.
    pub fn status(&self) -> Option<serde_json::Value> {
        http_json(self.http, "/status")
    }

    /// A numeric field of `/status`.
    pub fn status_u64(&self, field: &str) -> Option<u64> {
        self.status()?.get(field)?.as_u64()
    }

    /// Waits until `/status` satisfies `pred`.
    pub fn wait_status(
        &self,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        wait_for(timeout, &format!("{}: {what}", self.name), || {
            self.status().filter(|s| pred(s))
        })
    }

    /// Sends SIGTERM and waits (bounded) for a clean exit; returns whether it exited 0 in time.
    pub fn stop(&mut self) -> bool {
        let pid = self.child.0.id().to_string();
        let _ = std::process::Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.0.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.child.kill();
        false
    }

    /// Sends a signal by name (e.g. `STOP`, `CONT`).
    pub fn signal(&self, name: &str) {
        let pid = self.child.0.id().to_string();
        let _ = std::process::Command::new("kill")
            .args([&format!("-{name}"), &pid])
            .status();
    }

    /// The value of an unlabelled metric in `GET /metrics` (e.g. `syncnode_blocks_downloaded_total`).
    pub fn metric(&self, name: &str) -> Option<f64> {
        let (code, body) = http_get(self.http, "/metrics")?;
        if code != 200 {
            return None;
        }
        body.lines()
            .filter_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
            .find_map(|value| value.trim().parse().ok())
    }

    /// The node's log so far (for failure messages).
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

/// Seconds since the Unix epoch.
pub fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

/// A one-authority chain spec in `dir/spec.json` whose history of `blocks` blocks ends before now,
/// generated into `dir/<store>` with `payload` bytes per block. Returns (spec path, store path).
pub fn chain_with_history(dir: &Path, store: &str, blocks: u64, payload: u64) -> (PathBuf, PathBuf) {
    let genesis_ms = ((now_s() - blocks - 60) * 1000).to_string();
    let spec = crate::write_spec(
        dir,
        "e2e",
        1,
        &["--genesis-timestamp-ms", &genesis_ms, "--slot-ms", "1000"],
    );
    let data = dir.join(store);
    crate::generate(&spec, &data, blocks, payload);
    (spec, data)
}

/// The heights of the JSON block lines in `text` (reorg lines are returned as `None`).
pub fn printed_heights(text: &str) -> Vec<Option<u64>> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .and_then(|v| v["height"].as_u64())
        })
        .collect()
}
