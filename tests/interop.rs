//! Interoperability with a second, independent libp2p implementation: js-libp2p.
//!
//! A syncnode serves a generated chain of 2,000 blocks; `tests/interop/client.mjs` (Node.js,
//! js-libp2p over TCP + Noise + Yamux) dials it, checks identify and ping, exchanges Status both
//! ways with a genesis hash it derives from the chain spec itself, fetches heights 0..=2000 by
//! BlocksByRange and checks every block by PROTOCOL.md in JS, then probes two edge cases.
//! The client's own codec is checked against `testdata/vectors` by `wire.test.mjs` first, so a
//! failure here is syncnode's, not the client's.
//!
//! Needs Node.js and the client's packages: `npm ci --prefix tests/interop` (which `.ci/run`
//! does). Without them the tests fail and say so; they never skip.

#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use syncnode_e2e::node::{Node, http_json};
use syncnode_e2e::*;

const BLOCKS: u64 = 2000;
/// The client's own bound on its whole run; the test's bound on the process is a little longer.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(60);

/// `tests/interop`, after checking that `node` runs and the packages are installed.
fn interop_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("interop");
    let install = "run `npm ci --prefix tests/interop` (from the repository root) first";
    let node = Command::new("node").arg("--version").output();
    match node {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!(
            "`node --version` failed ({}): Node.js >= 20 is needed; {install}",
            out.status
        ),
        Err(e) => panic!("Node.js is not installed (`node`: {e}); install Node.js >= 20, then {install}"),
    }
    for package in ["libp2p", "@noble/curves"] {
        assert!(
            dir.join("node_modules").join(package).is_dir(),
            "{} has no {package}: {install}",
            dir.join("node_modules").display()
        );
    }
    dir
}

/// Runs `node args...` in `dir`, killed after `timeout`; returns (success, stdout, stderr).
fn run_node(dir: &Path, args: &[&str], timeout: Duration) -> (bool, String, String) {
    let out_dir = tempfile::tempdir().expect("tmp");
    let (stdout_path, stderr_path) = (out_dir.path().join("stdout"), out_dir.path().join("stderr"));
    let mut cmd = Command::new("node");
    cmd.args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout_path).expect("stdout file"))
        .stderr(std::fs::File::create(&stderr_path).expect("stderr file"));
    let mut child = ChildGuard(cmd.spawn().expect("spawn node"));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.0.try_wait().expect("poll node") {
            break Some(status);
        }
        if Instant::now() >= deadline {
            child.kill();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
    let (stdout, mut stderr) = (read(&stdout_path), read(&stderr_path));
    if status.is_none() {
        stderr.push_str(&format!("\n(killed by the test after {timeout:?})"));
    }
    (status.is_some_and(|s| s.success()), stdout, stderr)
}

#[test]
fn js_client_codec_matches_the_protocol_vectors() {
    let dir = interop_dir();
    let (ok, stdout, stderr) = run_node(&dir, &["--test", "wire.test.mjs"], Duration::from_secs(60));
    assert!(ok, "wire.test.mjs failed:\n{stdout}\n{stderr}");
}

#[test]
fn js_libp2p_client_syncs_and_verifies_a_range_from_syncnode() {
    let dir = interop_dir();
    let tmp = tempfile::tempdir().expect("tmp");
    let spec = write_spec(tmp.path(), "interop", 3, &[]);
    let data = tmp.path().join("seeder");
    generate(&spec, &data, BLOCKS, 1024);

    let mut node = Node::start("seeder", &spec, &data, &[]);
    let status = node.status().expect("status");
    let peer_id = status["peer_id"].as_str().expect("peer_id");
    let listen = status["listen_addrs"]
        .as_array()
        .expect("listen_addrs")
        .iter()
        .filter_map(|a| a.as_str())
        .find(|a| a.starts_with("/ip4/127.0.0.1/tcp/"))
        .unwrap_or_else(|| panic!("no TCP listen address on 127.0.0.1 in {status}"));
    assert_eq!(status["head_height"].as_u64(), Some(BLOCKS), "{status}");
    let addr = format!("{listen}/p2p/{peer_id}");

    let count = (BLOCKS + 1).to_string(); // heights 0..=BLOCKS: genesis too
    let timeout_ms = CLIENT_TIMEOUT.as_millis().to_string();
    let client = dir.join("client.mjs");
    let args = [
        path_str(&client),
        &addr,
        path_str(&spec),
        "0",
        &count,
        "--timeout-ms",
        &timeout_ms,
    ];
    let (ok, stdout, stderr) = run_node(&dir, &args, CLIENT_TIMEOUT + Duration::from_secs(15));
    assert!(
        ok,
        "js-libp2p client failed against syncnode:\n{stdout}{stderr}\n--- syncnode log (tail) ---\n{}",
        node.log_tail(40)
    );
    let line = stdout.lines().last().unwrap_or_default();
    let summary: serde_json::Value =
        serde_json::from_str(line).unwrap_or_else(|e| panic!("summary line is not JSON ({e}): {stdout}"));
    println!("{summary:#}");

    assert_eq!(summary["ok"], true);
    assert_eq!(summary["peer_id"], peer_id);
    assert_eq!(summary["protocol_version"], "/syncnode/1.0.0");
    let agent = summary["agent_version"].as_str().unwrap_or_default();
    assert!(agent.starts_with("syncnode/"), "agent {agent:?}");
    assert!(summary["rtt_ms"].as_f64().is_some(), "no ping RTT: {summary}");
    // The genesis hash JS derived from the spec is the one syncnode derived.
    assert_eq!(
        summary["genesis_hash"], status["genesis_hash"],
        "genesis derivations differ"
    );
    assert_eq!(summary["remote_status"]["genesis_hash"], status["genesis_hash"]);
    assert_eq!(summary["remote_status"]["head_height"].as_u64(), Some(BLOCKS));
    assert_eq!(summary["inbound_status"]["genesis_hash"], status["genesis_hash"]);
    assert_eq!(summary["blocks_verified"].as_u64(), Some(BLOCKS + 1));
    assert_eq!(summary["strict_signatures"].as_u64(), Some(BLOCKS));
    assert_eq!(
        summary["range"]["requests"].as_u64(),
        Some(2),
        "1024 + 977 blocks"
    );
    assert_eq!(summary["last_hash"], status["head_hash"]);
    assert_eq!(summary["edge_cases"]["above_head"], "OK");
    assert_eq!(summary["edge_cases"]["count_zero"], "INVALID_REQUEST");

    // The node is unharmed by a peer of another implementation, and still serving.
    assert!(
        node.child.0.try_wait().expect("poll syncnode").is_none(),
        "syncnode exited:\n{}",
        node.log_tail(40)
    );
    let after = http_json(node.http, "/status").expect("status after the client");
    assert_eq!(after["head_height"].as_u64(), Some(BLOCKS));
    assert!(
        node.stop(),
        "syncnode did not stop cleanly:\n{}",
        node.log_tail(40)
    );
}
