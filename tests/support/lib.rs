//! Support for syncnode's end-to-end tests: finding the `syncnode` binary, running it as a child
//! process that is killed when the test ends, and small helpers over its commands.
//!
//! The binary is the one cargo built next to the test executable (`make test` builds it first);
//! `SYNCNODE_BIN` overrides it.

#![forbid(unsafe_code)]

pub mod client;
pub mod gossip;
pub mod hostile;
pub mod node;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

/// Path of the `syncnode` binary under test.
pub fn syncnode_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("SYNCNODE_BIN") {
        return PathBuf::from(path);
    }
    // target/<profile>/deps/<test-exe> → target/<profile>/syncnode
    let exe = std::env::current_exe().expect("test executable path");
    let profile_dir = exe.parent().and_then(Path::parent).expect("target/<profile>");
    let bin = profile_dir.join("syncnode");
    assert!(
        bin.exists(),
        "{} is missing: build it first (`cargo build -p syncnode`, which `make test` does)",
        bin.display()
    );
    bin
}

/// A `syncnode` command with the given arguments.
pub fn syncnode(args: &[&str]) -> Command {
    let mut cmd = Command::new(syncnode_bin());
    cmd.args(args);
    cmd
}

/// Runs `syncnode` to completion and returns its output; panics with its stderr if it fails.
pub fn run_ok(args: &[&str]) -> Output {
    let out = syncnode(args).output().expect("spawn syncnode");
    assert!(
        out.status.success(),
        "syncnode {} failed ({}):\n{}{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A child process killed (SIGKILL) and reaped when dropped, so a failing test leaves none behind.
pub struct ChildGuard(pub Child);

impl ChildGuard {
    /// Spawns `cmd` with stdout and stderr discarded unless `keep_output`.
    pub fn spawn(mut cmd: Command, keep_output: bool) -> Self {
        if !keep_output {
            cmd.stdout(Stdio::null()).stderr(Stdio::null());
        }
        ChildGuard(cmd.spawn().expect("spawn child"))
    }

    /// Sends SIGKILL and waits for the process to end.
    pub fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Writes a dev chain spec with `authorities` dev keys into `dir/spec.json` and returns its path.
pub fn write_spec(dir: &Path, name: &str, authorities: u32, extra: &[&str]) -> PathBuf {
    let auth = authorities.to_string();
    let mut args = vec!["chain", "spec", "--name", name, "--authorities", &auth];
    args.extend_from_slice(extra);
    let out = run_ok(&args);
    let path = dir.join("spec.json");
    std::fs::write(&path, &out.stdout).expect("write spec");
    path
}

/// `syncnode chain generate`: appends `blocks` blocks of `payload` bytes to the store in `data_dir`.
pub fn generate(spec: &Path, data_dir: &Path, blocks: u64, payload: u64) {
    let (n, p) = (blocks.to_string(), payload.to_string());
    run_ok(&[
        "chain",
        "generate",
        "--chain",
        path_str(spec),
        "--data-dir",
        path_str(data_dir),
        "--blocks",
        &n,
        "--payload-bytes",
        &p,
    ]);
}

/// The head height that `syncnode db check` reports for `data_dir`, after asserting it passes.
pub fn db_check_ok(data_dir: &Path) -> u64 {
    let out = run_ok(&["db", "check", "--data-dir", path_str(data_dir)]);
    let text = String::from_utf8_lossy(&out.stdout);
    let head = text
        .lines()
        .find_map(|l| l.strip_prefix("head"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|h| h.parse().ok());
    head.unwrap_or_else(|| panic!("no head line in db check output:\n{text}"))
}

/// `syncnode db export` of `data_dir` for `[from, to]`.
pub fn db_export(data_dir: &Path, from: u64, to: u64) -> Vec<u8> {
    let (from, to) = (from.to_string(), to.to_string());
    run_ok(&[
        "db",
        "export",
        "--data-dir",
        path_str(data_dir),
        "--from",
        &from,
        "--to",
        &to,
    ])
    .stdout
}

/// A path as UTF-8 (test paths are).
pub fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}
