//! A full disk end to end: a node syncs into a data directory on a small tmpfs until it is full.
//! It must stay up, say so (`disk_full` in /status and /metrics, one error in the log), keep
//! serving, and resume by itself once the filesystem is grown; then `db check` passes and its
//! export equals the seeder's. Also after a restart while full, and with no free-space floor at
//! all, where the store's own writes meet the full disk (before parity-db allocated the space of
//! its memory-mapped files, that killed the node with SIGBUS).
//!
//! Needs root (mounting a tmpfs); each test mounts its own and unmounts it when done.

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use syncnode_e2e::node::{Node, chain_with_history, wait_for};
use syncnode_e2e::*;

const CHAIN: u64 = 60_000;
const PAYLOAD: u64 = 1024;
/// parity-db's three index files take 96 MiB from the start (allocated in full); the chain's
/// blocks need ~70 MiB more. With the floor the node pauses in the first ~30 MiB of them; without
/// one, the filesystem fills in the first ~45 MiB.
const SMALL_MIB: u64 = 176;
const SMALLER_MIB: u64 = 144;
const GROWN_MIB: u64 = 320;
/// The free-space floor of the test with one: above what a commit of the store may need.
const FLOOR_MIB: u64 = 48;

/// A tmpfs mounted for the test, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, mib: u64) -> Tmpfs {
        std::fs::create_dir_all(at).expect("mount point");
        mount(&[
            "-t",
            "tmpfs",
            "-o",
            &format!("size={mib}m"),
            "tmpfs",
            path_str(at),
        ]);
        Tmpfs(at.to_owned())
    }

    fn grow(&self, mib: u64) {
        mount(&["-o", &format!("remount,size={mib}m"), path_str(&self.0)]);
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn mount(args: &[&str]) {
    let out = Command::new("mount").args(args).output().expect("run mount");
    assert!(
        out.status.success(),
        "`mount {}` failed: {}\nthis test needs root (CAP_SYS_ADMIN) to mount a tmpfs",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn disk_state(s: &serde_json::Value) -> &str {
    s["disk"]["state"].as_str().unwrap_or("")
}

/// A seeder of [`CHAIN`] blocks, and a small tmpfs for a node syncing from it.
struct Setup {
    // Dropped in this order: the mount before the directory that holds it.
    fs: Tmpfs,
    seeder: Node,
    spec: PathBuf,
    seed_dir: PathBuf,
    boot: Vec<String>,
    _dir: tempfile::TempDir,
}

impl Setup {
    fn new(small_mib: u64) -> Setup {
        let dir = tempfile::tempdir().expect("tmp");
        let (spec, seed_dir) = chain_with_history(dir.path(), "seeder", CHAIN, PAYLOAD);
        let seeder = Node::start("seeder", &spec, &seed_dir, &[]);
        let boot = vec!["--bootnode".to_string(), seeder.multiaddr()];
        // The node's log (DATA_DIR.log) lies beside the mount, not on it.
        let fs = Tmpfs::mount(&dir.path().join("node"), small_mib);
        Setup {
            fs,
            seeder,
            spec,
            seed_dir,
            boot,
            _dir: dir,
        }
    }

    fn start(&self, floor_mib: u64) -> Node {
        let mut args = self.boot.clone();
        args.extend(["--min-free-space".to_string(), floor_mib.to_string()]);
        Node::start("node", &self.spec, &self.fs.0, &args)
    }

    /// Stops the node and the seeder, then checks the node's store and compares its export with
    /// the seeder's.
    fn check_store(&mut self, mut node: Node) {
        assert!(node.stop(), "node did not stop cleanly:\n{}", node.log_tail(20));
        assert!(self.seeder.stop(), "seeder did not stop cleanly");
        assert_eq!(db_check_ok(&self.fs.0), CHAIN);
        assert!(
            db_export(&self.fs.0, 0, CHAIN) == db_export(&self.seed_dir, 0, CHAIN),
            "the node's export differs from the seeder's"
        );
    }
}

/// Waits until the node reports `disk_full` short of the seeder's head, and checks it says so
/// in /metrics and in its log (the `errors`th such line: one per start), and keeps serving.
fn wait_paused(node: &Node, errors: usize) -> u64 {
    let s = node.wait_status(Duration::from_secs(180), "disk_full", |s| {
        disk_state(s) == "disk_full"
    });
    let head = s["head_height"].as_u64().expect("head");
    assert!(head < CHAIN, "the disk should fill before the sync ends");
    assert!(s["disk"]["free_bytes"].as_u64().is_some());
    assert_eq!(s["disk"]["data_dir"].as_str(), Some(path_str(&node.data_dir)));
    assert_eq!(node.metric("syncnode_disk_full"), Some(1.0));
    assert!(node.metric("syncnode_disk_free_bytes").is_some());
    // Paused, it stays paused (and up), and serves what it holds.
    std::thread::sleep(Duration::from_secs(2));
    let s = node.status().expect("still answering");
    assert_eq!(disk_state(&s), "disk_full");
    let (code, _) = node::http_get(node.http, "/blocks/1").expect("serves");
    assert_eq!(code, 200);
    let log = std::fs::read_to_string(&node.log).expect("log");
    assert_eq!(
        log.matches("disk full:").count(),
        errors,
        "one error line:\n{}",
        node.log_tail(20)
    );
    head
}

fn wait_resumed_and_synced(node: &Node) {
    node.wait_status(Duration::from_secs(180), "resumed and synced", |s| {
        disk_state(s) == "ok" && s["head_height"] == CHAIN && s["sync_state"] == "synced"
    });
    assert_eq!(node.metric("syncnode_disk_full"), Some(0.0));
    let log = std::fs::read_to_string(&node.log).expect("log");
    assert!(log.contains("importing resumes"), "{}", node.log_tail(20));
}

#[test]
fn a_full_disk_pauses_imports_also_across_a_restart_until_the_filesystem_grows() {
    let mut setup = Setup::new(SMALL_MIB);
    let mut node = setup.start(FLOOR_MIB);
    let head = wait_paused(&node, 1);
    // Restarted while full, it starts paused.
    assert!(node.stop(), "node did not stop cleanly:\n{}", node.log_tail(20));
    let node = setup.start(FLOOR_MIB);
    let s = node.status().expect("status");
    assert_eq!(disk_state(&s), "disk_full", "paused from the start");
    assert!(s["head_height"].as_u64().expect("head") >= head);
    wait_paused(&node, 2);
    setup.fs.grow(GROWN_MIB);
    wait_resumed_and_synced(&node);
    setup.check_store(node);
}

#[test]
fn without_a_floor_a_full_disk_is_an_error_not_a_signal() {
    let mut setup = Setup::new(SMALLER_MIB);
    let mut node = setup.start(0);
    // The store's own writes meet the full disk: the node pauses, or, if parity-db stopped on
    // it, says to restart; either way it stays up.
    let died = |node: &mut Node| {
        if let Ok(Some(status)) = node.child.0.try_wait() {
            panic!(
                "the node died on a full disk ({status:?}, signal {:?}):\n{}",
                status.signal(),
                node.log_tail(20)
            );
        }
    };
    wait_for(Duration::from_secs(180), "node: disk_full", || {
        died(&mut node);
        node.status().filter(|s| disk_state(s) == "disk_full")
    });
    std::thread::sleep(Duration::from_secs(2));
    died(&mut node);
    assert!(node.status().is_some(), "still answering");
    setup.fs.grow(GROWN_MIB);
    // It resumes by itself, unless parity-db stopped on the failed write: then it says to
    // restart (which the first commit after the pause may be what finds out).
    let synced = |s: &serde_json::Value| {
        disk_state(s) == "ok" && s["head_height"] == CHAIN && s["sync_state"] == "synced"
    };
    let stopped = wait_for(Duration::from_secs(180), "synced, or the store stopped", || {
        let log = std::fs::read_to_string(&node.log).unwrap_or_default();
        if log.contains("the store stopped") {
            Some(true)
        } else {
            node.status().filter(|s| synced(s)).map(|_| false)
        }
    });
    let node = if stopped {
        assert!(node.stop(), "node did not stop cleanly:\n{}", node.log_tail(20));
        let node = setup.start(0);
        node.wait_status(Duration::from_secs(180), "synced after the restart", synced);
        node
    } else {
        node
    };
    setup.check_store(node);
}
