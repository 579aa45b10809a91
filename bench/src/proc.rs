//! Real `syncnode` processes on 127.0.0.1: starting them, reading `/status` over plain HTTP/1.1,
//! and reading their peak RSS and CPU time from `/proc`.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// Where the release binary is, and where logs go.
#[derive(Clone)]
pub struct Env {
    pub bin: PathBuf,
    pub logs: PathBuf,
}

impl Env {
    /// Runs `syncnode ARGS` to completion; fails with its stderr when it exits non-zero.
    pub fn run_ok(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = Command::new(&self.bin)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {}", self.bin.display()))?;
        if !out.status.success() {
            bail!(
                "syncnode {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// A free TCP port on 127.0.0.1 (bound, then released for the node to bind).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// `GET path` on `addr`: the status code and body, or `None` on any failure.
pub fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    syncnode_node::http_client::get(addr, path, Duration::from_secs(5)).ok()
}

/// A running `syncnode run`, killed when dropped.
pub struct NodeProc {
    pub name: String,
    pub child: Child,
    pub http: SocketAddr,
    pub p2p_port: u16,
    pub started: Instant,
}

impl NodeProc {
    /// Starts `syncnode run` on fresh loopback ports with `extra` flags, and waits (up to 60 s)
    /// until its HTTP API answers.
    pub fn start(
        env: &Env,
        name: &str,
        spec: &Path,
        data_dir: &Path,
        extra: &[String],
    ) -> anyhow::Result<NodeProc> {
        NodeProc::start_in(env, name, spec, data_dir, extra, None)
    }

    /// [`NodeProc::start`], the process first moved into the cgroup whose `cgroup.procs` file is
    /// `procs` (by a shell that writes its own pid there and then executes the node), so that
    /// everything the node allocates is charged to it.
    pub fn start_in(
        env: &Env,
        name: &str,
        spec: &Path,
        data_dir: &Path,
        extra: &[String],
        procs: Option<&Path>,
    ) -> anyhow::Result<NodeProc> {
        let http: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
        let p2p_port = free_port()?;
        let log = std::fs::File::create(env.logs.join(format!("{name}.log")))?;
        let started = Instant::now();
        let mut command = match procs {
            None => Command::new(&env.bin),
            Some(procs) => {
                let mut sh = Command::new("sh");
                sh.args(["-c", "echo $$ > \"$0\" && exec \"$@\""])
                    .arg(procs)
                    .arg(&env.bin);
                sh
            }
        };
        let child = command
            .args(["--log-level", "warn", "run", "--chain"])
            .arg(spec)
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--listen", &format!("/ip4/127.0.0.1/tcp/{p2p_port}")])
            .args(["--http", &http.to_string()])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        let mut node = NodeProc {
            name: name.to_owned(),
            child,
            http,
            p2p_port,
            started,
        };
        node.wait_up(Duration::from_secs(60))?;
        Ok(node)
    }

    /// Waits until `/status` answers; fails if the process exits or `timeout` passes.
    pub fn wait_up(&mut self, timeout: Duration) -> anyhow::Result<Duration> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.status().is_some() {
                return Ok(self.started.elapsed());
            }
            if let Some(code) = self.child.try_wait()? {
                bail!("{} exited ({code}) before its API answered", self.name);
            }
            if Instant::now() > deadline {
                bail!("{} did not answer /status within {timeout:?}", self.name);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The `--bootnode` multiaddr of this node.
    pub fn multiaddr(&self) -> String {
        format!("/ip4/127.0.0.1/tcp/{}", self.p2p_port)
    }

    /// `GET /status` as JSON.
    pub fn status(&self) -> Option<serde_json::Value> {
        let (code, body) = http_get(self.http, "/status")?;
        (code == 200).then(|| serde_json::from_str(&body).ok()).flatten()
    }

    /// Peak resident set (VmHWM) in bytes.
    pub fn peak_rss(&self) -> Option<u64> {
        proc_status_kib(self.child.id(), "VmHWM:").map(|k| k * 1024)
    }

    /// User plus system CPU seconds used so far.
    pub fn cpu_seconds(&self) -> Option<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).ok()?;
        // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
        let rest = stat.rsplit_once(')')?.1;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let utime: f64 = fields.get(11)?.parse().ok()?;
        let stime: f64 = fields.get(12)?.parse().ok()?;
        Some((utime + stime) / clock_ticks())
    }

    /// Stops the node with SIGTERM (SIGKILL after 10 s) and waits for it.
    pub fn stop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Clock ticks per second of `/proc/PID/stat` (USER_HZ; `getconf CLK_TCK`, 100 on Linux).
fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// What one syncing process did.
#[derive(Debug, Clone, Default)]
pub struct Run {
    /// (seconds since the node answered, head height) samples, for the plot.
    pub samples: Vec<(f64, u64)>,
    pub seconds: f64,
    pub blocks: u64,
    pub peak_rss: u64,
    /// The most resident anonymous memory seen while polling, in bytes.
    pub peak_anon_rss: u64,
    /// Resident anonymous and file-backed memory when the run ended, in bytes.
    pub anon_rss: u64,
    pub file_rss: u64,
    pub cpu_seconds: f64,
}

impl Run {
    pub fn blocks_per_sec(&self) -> f64 {
        self.blocks as f64 / self.seconds.max(1e-9)
    }

    /// The rate from the first sample at or above `from` of the chain to the end: leaves out
    /// start-up and the one-second burst a capped seeder allows.
    pub fn steady_blocks_per_sec(&self, from: f64) -> f64 {
        let floor = (self.blocks as f64 * from) as u64;
        let Some(&(t0, h0)) = self.samples.iter().find(|s| s.1 >= floor) else {
            return self.blocks_per_sec();
        };
        let span = self.seconds - t0;
        if span <= 0.0 {
            return self.blocks_per_sec();
        }
        self.blocks.saturating_sub(h0) as f64 / span
    }

    /// CPU time as a percentage of one core over the run.
    pub fn cpu_percent(&self) -> f64 {
        100.0 * self.cpu_seconds / self.seconds.max(1e-9)
    }
}

/// Polls `node`'s `/status` every 50 ms until `done` holds (or `timeout`), recording the head.
/// The clock starts when this is called (the node is already up and dialling its bootnodes).
pub fn follow(
    node: &NodeProc,
    blocks: u64,
    timeout: Duration,
    done: impl Fn(&serde_json::Value) -> bool,
) -> anyhow::Result<Run> {
    let start = Instant::now();
    let cpu0 = node.cpu_seconds().unwrap_or(0.0);
    let mut samples = Vec::new();
    let mut peak_anon_rss = 0;
    loop {
        let t = start.elapsed().as_secs_f64();
        let anon = proc_status_kib(node.child.id(), "RssAnon:").unwrap_or(0) * 1024;
        peak_anon_rss = peak_anon_rss.max(anon);
        if let Some(s) = node.status() {
            samples.push((t, s["head_height"].as_u64().unwrap_or(0)));
            if done(&s) {
                return Ok(Run {
                    samples,
                    seconds: t,
                    blocks,
                    peak_rss: node.peak_rss().unwrap_or(0),
                    peak_anon_rss,
                    anon_rss: anon,
                    file_rss: proc_status_kib(node.child.id(), "RssFile:").unwrap_or(0) * 1024,
                    cpu_seconds: node.cpu_seconds().unwrap_or(0.0) - cpu0,
                });
            }
        }
        if start.elapsed() > timeout {
            bail!("{} did not finish within {timeout:?}", node.name);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Copies a directory tree (a store, to give each seeder its own).
pub fn copy_dir(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}
