//! Peer discovery by mDNS alone: two `syncnode run --mdns` processes, each in a network namespace
//! the test creates, joined by a veth pair on a private /30 that exists only inside them. No
//! bootnodes: the fresh node must find the seeder by multicast and sync its chain.
//!
//! Needs root and iproute2 (`ip netns`), and curl to reach each node's HTTP API, which listens on
//! 127.0.0.1 inside its namespace. No node ever runs with `--mdns` in the root namespace, so no
//! multicast leaves the test's namespaces.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use syncnode_e2e::node::now_s;
use syncnode_e2e::{ChildGuard, generate, path_str, syncnode_bin, write_spec};

const BLOCKS: u64 = 500;
/// Only inside the test's namespaces, so fixed values cannot collide with anything.
const SUBNET_PREFIX: &str = "10.213.7";
const VETH: &str = "veth0";
const P2P_PORT: u16 = 30333;
const HTTP_PORT: u16 = 8080;

/// Runs `ip ARGS`; panics with a clear message if it cannot run or fails.
fn ip(args: &[&str]) -> Output {
    let out = Command::new("ip").args(args).output().unwrap_or_else(|e| {
        panic!("cannot run `ip` ({e}): this test needs iproute2 (apt-get install -y iproute2)")
    });
    assert!(
        out.status.success(),
        "`ip {}` failed ({}): {}\nthis test needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN) and a kernel \
         with network namespaces and veth",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    out
}

/// A network namespace created by this test; on drop, kills whatever still runs in it (only this
/// test's children can) and deletes it, which also destroys its end of the veth pair.
struct Netns {
    name: String,
}

impl Netns {
    fn create(name: String) -> Netns {
        ip(&["netns", "add", &name]);
        Netns { name }
    }

    /// Pids of the processes running in the namespace.
    fn pids(&self) -> Vec<String> {
        Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .split_whitespace()
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// `ip netns exec NAME program args...`.
    fn command(&self, program: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]).args(args);
        cmd
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for pid in self.pids() {
            let _ = Command::new("kill").args(["-KILL", &pid]).status();
        }
        let ok = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("warning: could not delete network namespace {}", self.name);
        }
    }
}

/// Two namespaces joined by a veth pair (`veth0` in each), addressed `SUBNET.1` and `SUBNET.2`.
struct Lab {
    a: Netns,
    b: Netns,
}

impl Lab {
    fn create() -> Lab {
        let pid = std::process::id();
        let a = Netns::create(format!("syncnode-mdns-{pid}-a"));
        let b = Netns::create(format!("syncnode-mdns-{pid}-b"));
        // Created inside namespace a with its peer placed straight into b: neither end ever
        // exists in the root namespace.
        ip(&[
            "-n", &a.name, "link", "add", VETH, "type", "veth", "peer", "name", VETH, "netns", &b.name,
        ]);
        for (ns, host) in [(&a, 1), (&b, 2)] {
            let cidr = format!("{SUBNET_PREFIX}.{host}/30");
            ip(&["-n", &ns.name, "addr", "add", &cidr, "dev", VETH]);
            ip(&["-n", &ns.name, "link", "set", "lo", "up"]);
            ip(&["-n", &ns.name, "link", "set", VETH, "multicast", "on"]);
            ip(&["-n", &ns.name, "link", "set", VETH, "up"]);
            let link = ip(&["-n", &ns.name, "-o", "link", "show", "dev", VETH]);
            let link = String::from_utf8_lossy(&link.stdout);
            let flags = link
                .split_once('<')
                .and_then(|(_, rest)| rest.split_once('>'))
                .map(|(flags, _)| flags.split(',').collect::<Vec<_>>())
                .unwrap_or_default();
            assert!(
                flags.contains(&"MULTICAST") && flags.contains(&"UP"),
                "{VETH} in {} is not up with multicast: {link}",
                ns.name
            );
        }
        Lab { a, b }
    }
}

/// A `syncnode run --mdns` inside a namespace, listening on the namespace's veth address, with
/// its HTTP API on 127.0.0.1 inside the namespace.
struct NsNode<'a> {
    name: &'static str,
    ns: &'a Netns,
    ip: String,
    child: ChildGuard,
    log: PathBuf,
}

impl<'a> NsNode<'a> {
    fn start(name: &'static str, ns: &'a Netns, ip: String, spec: &Path, data_dir: &Path) -> Self {
        let bin = syncnode_bin();
        let listen = format!("/ip4/{ip}/tcp/{P2P_PORT}");
        let http = format!("127.0.0.1:{HTTP_PORT}");
        let mut cmd = ns.command(
            path_str(&bin),
            &[
                "run",
                "--chain",
                path_str(spec),
                "--data-dir",
                path_str(data_dir),
                "--listen",
                &listen,
                "--http",
                &http,
                "--mdns",
                "--log-level",
                "info,syncnode=debug,libp2p_mdns=debug",
            ],
        );
        let log = data_dir.with_extension("log");
        let file = std::fs::File::create(&log).expect("log file");
        cmd.env("NO_COLOR", "1").stdout(Stdio::null()).stderr(file);
        let node = NsNode {
            name,
            ns,
            ip,
            child: ChildGuard(cmd.spawn().expect("spawn ip netns exec syncnode run")),
            log,
        };
        node.wait(Duration::from_secs(20), "answering /status", |_| true);
        // `ip netns exec` execs the command (no fork), so the child is the node itself and
        // killing the child kills the node.
        let comm_path = format!("/proc/{}/comm", node.child.0.id());
        let comm = std::fs::read_to_string(&comm_path).unwrap_or_default();
        assert_eq!(
            comm.trim(),
            "syncnode",
            "{name}: the spawned process is not the node itself ({comm_path})"
        );
        node
    }

    /// `GET path` on the node's HTTP API through curl inside its namespace, or `None`.
    fn get(&self, path: &str) -> Option<serde_json::Value> {
        let url = format!("http://127.0.0.1:{HTTP_PORT}{path}");
        let out = self
            .ns
            .command("curl", &["-sf", "--max-time", "5", &url])
            .stderr(Stdio::null())
            .output()
            .ok()?;
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    fn status(&self) -> Option<serde_json::Value> {
        self.get("/status")
    }

    /// Polls `/status` until `pred` holds; panics with the last status and the log tail after
    /// `timeout`, or at once if the node exited.
    fn wait(
        &self,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + timeout;
        let mut last = None;
        loop {
            if let Some(s) = self.status() {
                if pred(&s) {
                    return s;
                }
                last = Some(s);
            }
            let alive = std::fs::metadata(format!("/proc/{}", self.child.0.id())).is_ok();
            assert!(
                alive && Instant::now() < deadline,
                "{}: {} waiting for {what}; last /status: {last:?}\nlog tail:\n{}",
                self.name,
                if alive {
                    format!("timed out after {timeout:?}")
                } else {
                    "exited".into()
                },
                self.log_tail(30)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Asserts the node listens only on its veth address (or loopback) of its namespace.
    fn assert_listens_only_inside(&self, status: &serde_json::Value) {
        let addrs: Vec<&str> = status["listen_addrs"]
            .as_array()
            .unwrap_or_else(|| panic!("{}: no listen_addrs in {status}", self.name))
            .iter()
            .map(|a| a.as_str().expect("listen addr as string"))
            .collect();
        assert!(!addrs.is_empty(), "{}: listens nowhere: {status}", self.name);
        let veth = format!("/ip4/{}/tcp/{P2P_PORT}", self.ip);
        for addr in &addrs {
            assert!(
                *addr == veth || addr.starts_with("/ip4/127.") || addr.starts_with("/ip6/::1/"),
                "{}: listens on {addr}, outside its namespace's veth ({veth}): {addrs:?}",
                self.name
            );
        }
    }
}

fn require_curl() {
    let ok = Command::new("curl")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "curl not found: this test reaches the nodes' HTTP APIs inside their namespaces with curl"
    );
}

#[test]
fn nodes_in_separate_namespaces_find_each_other_by_mdns_alone_and_sync() {
    require_curl();
    // Declared before the nodes, so dropped after them; its drop also kills anything left.
    let lab = Lab::create();
    let dir = tempfile::tempdir().expect("tmp");
    let genesis_ms = ((now_s() - BLOCKS - 60) * 1000).to_string();
    let spec = write_spec(
        dir.path(),
        "mdns",
        1,
        &["--genesis-timestamp-ms", &genesis_ms, "--slot-ms", "1000"],
    );
    let seed_dir = dir.path().join("seeder");
    generate(&spec, &seed_dir, BLOCKS, 256);

    let mut seeder = NsNode::start("seeder", &lab.a, format!("{SUBNET_PREFIX}.1"), &spec, &seed_dir);
    let mut fresh = NsNode::start(
        "fresh",
        &lab.b,
        format!("{SUBNET_PREFIX}.2"),
        &spec,
        &dir.path().join("fresh"),
    );

    let seeder_status = seeder.wait(Duration::from_secs(20), "its generated head", |s| {
        s["head_height"] == BLOCKS
    });
    let seeder_id = seeder_status["peer_id"].as_str().expect("peer_id").to_owned();
    let head_hash = seeder_status["head_hash"].clone();

    // Discovery: the only way either node can learn of the other is mDNS.
    fresh.wait(Duration::from_secs(30), "an mDNS-discovered peer", |s| {
        s["peers"].as_u64().is_some_and(|p| p >= 1)
    });
    let peers = fresh.get("/peers").expect("fresh answers /peers");
    let found = peers
        .as_array()
        .expect("/peers is an array")
        .iter()
        .any(|p| p["peer_id"] == seeder_id.as_str() && p["connected"] == true);
    assert!(found, "fresh is not connected to the seeder {seeder_id}: {peers}");
    seeder.wait(Duration::from_secs(30), "the fresh node as a peer", |s| {
        s["peers"].as_u64().is_some_and(|p| p >= 1)
    });

    // Sync: the fresh node reaches the seeder's head.
    let synced = fresh.wait(Duration::from_secs(60), "synced to the seeder's head", |s| {
        s["sync_state"] == "synced" && s["head_height"] == BLOCKS && s["head_hash"] == head_hash
    });

    // Neither node listens (and so announces by mDNS) anything but its namespace's addresses.
    seeder.assert_listens_only_inside(&seeder.status().expect("seeder /status"));
    fresh.assert_listens_only_inside(&synced);

    // Killing the children stops the nodes: nothing is left running in the namespaces.
    seeder.child.kill();
    fresh.child.kill();
    for ns in [&lab.a, &lab.b] {
        let left = ns.pids();
        assert!(
            left.is_empty(),
            "processes left in {} after killing the nodes: {left:?}",
            ns.name
        );
    }
}
