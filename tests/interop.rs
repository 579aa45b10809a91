//! Interoperability with a second, independent libp2p implementation: js-libp2p.
//!
//! A syncnode serves a generated chain of 2,000 blocks; `tests/interop/client.mjs` (Node.js,
//! js-libp2p over TCP + Noise + Yamux) dials it, checks identify and ping, exchanges Status both
//! ways with a genesis hash it derives from the chain spec itself, fetches heights 0..=2000 by
//! BlocksByRange and checks every block by PROTOCOL.md in JS, then probes two edge cases.
//! The client's own codec is checked against `testdata/vectors` by `wire.test.mjs` first, so a
//! failure here is syncnode's, not the client's.
//!
//! Under a flood of inbound connections stalled in their handshake, the same client still gets
//! in within seconds, from the flood's address and from another (a network namespace).
//!
//! Needs Node.js and the client's packages: `npm ci --prefix tests/interop` (which `.ci/run`
//! does). Without them the tests fail and say so; they never skip.

#![forbid(unsafe_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use syncnode_e2e::node::{Node, free_port, http_json};
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
    run_node_in(None, dir, args, timeout)
}

/// [`run_node`], inside the network namespace `netns` if given.
fn run_node_in(netns: Option<&str>, dir: &Path, args: &[&str], timeout: Duration) -> (bool, String, String) {
    let out_dir = tempfile::tempdir().expect("tmp");
    let (stdout_path, stderr_path) = (out_dir.path().join("stdout"), out_dir.path().join("stderr"));
    let mut cmd = match netns {
        Some(ns) => {
            let mut cmd = Command::new("ip");
            cmd.args(["netns", "exec", ns, "node"]);
            cmd
        }
        None => Command::new("node"),
    };
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

/// Raw inbound connections that the flood keeps stalled in their handshake, more than the 100
/// handshakes a node once held at most.
const STALLERS: usize = 160;
/// The first multistream-select line, length-prefixed as on the wire.
const FIRST_LINE: &[u8] = b"\x13/multistream/1.0.0\n";
/// How long the flood runs at most; it stops earlier when dropped.
const FLOOD_FOR: Duration = Duration::from_secs(90);
/// How long an honest client's attempts may take under the flood, retries, Node.js's start and
/// the client's whole run included (the flood loads the machine too).
const GET_IN_WITHIN: Duration = Duration::from_secs(30);
/// How long its successful dial (TCP, Noise, Yamux) may take.
const CONNECT_WITHIN_MS: u64 = 5000;

/// `STALLERS` TCP connections to `target` that send [`FIRST_LINE`] and then nothing, each
/// re-opened as soon as the node closes it, on a thread that stops when dropped or after
/// [`FLOOD_FOR`].
struct StalledFlood {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<(u64, u64)>>,
}

impl StalledFlood {
    fn start(target: SocketAddr) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let end = Instant::now() + FLOOD_FOR;
            let mut sockets: Vec<Option<TcpStream>> = (0..STALLERS).map(|_| None).collect();
            let (mut opened, mut closed) = (0u64, 0u64);
            while !flag.load(Ordering::Relaxed) && Instant::now() < end {
                for slot in sockets.iter_mut() {
                    if slot.as_mut().is_some_and(still_open) {
                        continue;
                    }
                    closed += u64::from(slot.is_some());
                    *slot = stall(target);
                    opened += u64::from(slot.is_some());
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            (opened, closed)
        });
        StalledFlood {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops the flood: (connections opened, connections the node closed).
    fn finish(mut self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().and_then(|t| t.join().ok()).unwrap_or_default()
    }
}

impl Drop for StalledFlood {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// One stalled connection: connected, first line sent, never another byte.
fn stall(target: SocketAddr) -> Option<TcpStream> {
    let mut socket = TcpStream::connect_timeout(&target, Duration::from_secs(1)).ok()?;
    socket.write_all(FIRST_LINE).ok()?;
    socket.set_nonblocking(true).ok()?;
    Some(socket)
}

/// Whether the node has not closed `socket` (what it sends is read and ignored).
fn still_open(socket: &mut TcpStream) -> bool {
    let mut buf = [0u8; 256];
    match socket.read(&mut buf) {
        Ok(0) => false,
        Ok(_) => true,
        Err(e) => e.kind() == std::io::ErrorKind::WouldBlock,
    }
}

/// A network namespace joined to the host by a veth pair, removed when dropped: the host end
/// is `host_ip`, the namespace's is `ns_ip`.
struct Netns {
    name: String,
    host_if: String,
    host_ip: String,
}

impl Netns {
    /// Creates it, or `None` (having said why) when not running as root.
    fn create() -> Option<Netns> {
        let uid = Command::new("id").arg("-u").output().expect("id -u");
        if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
            eprintln!("SKIPPED: creating a network namespace needs root; this test runs as root in CI");
            return None;
        }
        let pid = std::process::id();
        let subnet = format!("10.213.{}", pid % 250);
        let ns = Netns {
            name: format!("syncnode-doors-{pid}"),
            host_if: format!("snd{pid}h"),
            host_ip: format!("{subnet}.1"),
        };
        let peer_if = format!("snd{pid}n");
        let ns_ip = format!("{subnet}.2/24");
        let host_cidr = format!("{}/24", ns.host_ip);
        let name = ns.name.as_str();
        let steps: [&[&str]; 8] = [
            &["netns", "add", name],
            &[
                "link",
                "add",
                &ns.host_if,
                "type",
                "veth",
                "peer",
                "name",
                &peer_if,
            ],
            &["link", "set", &peer_if, "netns", name],
            &["addr", "add", &host_cidr, "dev", &ns.host_if],
            &["link", "set", &ns.host_if, "up"],
            &["-n", name, "addr", "add", &ns_ip, "dev", &peer_if],
            &["-n", name, "link", "set", &peer_if, "up"],
            &["-n", name, "link", "set", "lo", "up"],
        ];
        for step in steps {
            let out = Command::new("ip").args(step).output().expect("run ip");
            assert!(
                out.status.success(),
                "ip {step:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Some(ns)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace deletes the veth pair with it; the host end too, to be sure.
        let _ = Command::new("ip").args(["netns", "del", &self.name]).output();
        let _ = Command::new("ip").args(["link", "del", &self.host_if]).output();
    }
}

/// Runs the js-libp2p client against `addr` until it succeeds, from `netns` if given; returns
/// how long it took from the first attempt, how many attempts, and how long the successful
/// one's dial took (TCP, Noise and Yamux: getting in). Fails after [`GET_IN_WITHIN`].
fn honest_client_gets_in(netns: Option<&str>, addr: &str, spec: &Path, node: &Node) -> (Duration, u32, u64) {
    let dir = interop_dir();
    let client = dir.join("client.mjs");
    let count = (HANDSHAKE_BLOCKS + 1).to_string();
    let args = [
        path_str(&client),
        addr,
        path_str(spec),
        "0",
        &count,
        "--timeout-ms",
        "15000",
    ];
    let start = Instant::now();
    let mut attempts = 0;
    loop {
        attempts += 1;
        let (ok, stdout, stderr) = run_node_in(netns, &dir, &args, Duration::from_secs(20));
        let took = start.elapsed();
        assert!(
            took < GET_IN_WITHIN,
            "an honest js-libp2p client did not get in within {GET_IN_WITHIN:?} ({attempts} attempts); last:\n{stdout}{stderr}\n--- syncnode log (tail) ---\n{}",
            node.log_tail(20)
        );
        if ok {
            let line = stdout.lines().last().unwrap_or_default();
            let summary: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("summary line is not JSON ({e}): {stdout}"));
            let connect_ms = summary["connect_ms"].as_u64().expect("connect_ms");
            return (took, attempts, connect_ms);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

const HANDSHAKE_BLOCKS: u64 = 64;

/// A seeder of a short chain, with `extra` arguments.
fn handshake_seeder(dir: &Path, extra: &[String]) -> (PathBuf, Node, String) {
    let spec = write_spec(dir, "doors", 1, &[]);
    let data = dir.join("seeder");
    generate(&spec, &data, HANDSHAKE_BLOCKS, 256);
    let node = Node::start("seeder", &spec, &data, extra);
    let peer_id = node
        .status()
        .and_then(|s| s["peer_id"].as_str().map(str::to_owned));
    (spec, node, peer_id.expect("peer_id"))
}

/// One flood at a time: two at once would measure the machine, not the node.
static ONE_FLOOD: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Lets the flood fill the node's handshakes, then lets the client in from `netns` at `addr`.
fn get_in_under_a_stalled_flood(label: &str, node: &Node, netns: Option<&str>, addr: &str, spec: &Path) {
    let _alone = ONE_FLOOD.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let target: SocketAddr = format!("127.0.0.1:{}", node.p2p_port)
        .parse()
        .expect("socket addr");
    let flood = StalledFlood::start(target);
    std::thread::sleep(Duration::from_secs(3));
    let (took, attempts, connect_ms) = honest_client_gets_in(netns, addr, spec, node);
    let (opened, closed) = flood.finish();
    eprintln!(
        "[handshakes, {label}] {STALLERS} stalled connections from 127.0.0.1 ({opened} opened, {closed} closed by the node): the js-libp2p client's dial took {connect_ms} ms; its whole run ended {:.2} s after its first start ({attempts} attempt(s))",
        took.as_secs_f64()
    );
    assert!(
        connect_ms < CONNECT_WITHIN_MS,
        "getting in took {connect_ms} ms (at most {CONNECT_WITHIN_MS} ms)"
    );
}

#[test]
fn an_honest_client_gets_in_from_the_address_of_a_stalled_handshake_flood() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (spec, mut node, peer_id) = handshake_seeder(tmp.path(), &[]);
    let addr = format!("{}/p2p/{peer_id}", node.multiaddr());
    get_in_under_a_stalled_flood("same address", &node, None, &addr, &spec);
    assert!(
        node.stop(),
        "syncnode did not stop cleanly:\n{}",
        node.log_tail(40)
    );
}

#[test]
fn an_honest_client_gets_in_from_another_address_during_a_stalled_handshake_flood() {
    let Some(ns) = Netns::create() else {
        return;
    };
    let tmp = tempfile::tempdir().expect("tmp");
    let port = free_port();
    let listen = format!("/ip4/{}/tcp/{port}", ns.host_ip);
    let (spec, mut node, peer_id) = handshake_seeder(tmp.path(), &["--listen".into(), listen.clone()]);
    let addr = format!("{listen}/p2p/{peer_id}");
    get_in_under_a_stalled_flood("another address", &node, Some(&ns.name), &addr, &spec);
    assert!(
        node.stop(),
        "syncnode did not stop cleanly:\n{}",
        node.log_tail(40)
    );
}
