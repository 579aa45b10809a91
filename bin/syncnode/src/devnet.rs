//! `syncnode devnet`: a local testnet of real `syncnode run` processes on 127.0.0.1.
//!
//! It writes a one-authority chain spec, pre-generates history, starts a producer that keeps
//! producing, nodes that sync from genesis, and one node that starts from a checkpoint near the
//! head and backfills; shows live progress per node; and ends when every node is synced with full
//! history, printing a summary and stopping the children cleanly (SIGTERM, then SIGKILL).

use std::io::IsTerminal;
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use syncnode_store::BlockStore;
use syncnode_types::{ChainSpec, DevChain};

use crate::cli::DevnetArgs;
use crate::http_client::get_json;

/// A child node of the devnet.
struct Member {
    name: String,
    role: &'static str,
    child: Child,
    http: SocketAddr,
    p2p: String,
    /// The flags after `run --chain --data-dir --listen --http`, for a restart.
    extra: Vec<String>,
    started: Instant,
    done_after: Option<Duration>,
    start_height: u64,
    bar: ProgressBar,
}

impl Member {
    fn status(&self) -> Option<serde_json::Value> {
        get_json(self.http, "/status").ok()
    }

    fn peak_rss_kib(&self) -> Option<u64> {
        let text = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
    }

    fn stop(&mut self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn free_addr() -> anyhow::Result<SocketAddr> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// Starts `syncnode run` for a member's store and ports.
fn launch(
    name: &str,
    spec: &Path,
    root: &Path,
    listen: (&str, SocketAddr),
    extra: &[String],
) -> anyhow::Result<Child> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(root.join(format!("{name}.log")))?;
    let exe = std::env::current_exe()?;
    Command::new(exe)
        .args(["run", "--chain"])
        .arg(spec)
        .arg("--data-dir")
        .arg(root.join(name))
        .args(["--listen", listen.0, "--http", &listen.1.to_string()])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting node {name}"))
}

fn spawn_node(
    name: &str,
    role: &'static str,
    spec: &Path,
    root: &Path,
    extra: &[String],
    bars: &MultiProgress,
) -> anyhow::Result<Member> {
    let http = free_addr()?;
    let p2p = format!("/ip4/127.0.0.1/tcp/{}", free_addr()?.port());
    let child = launch(name, spec, root, (&p2p, http), extra)?;
    let bar = bars.add(ProgressBar::new(1));
    bar.set_style(
        ProgressStyle::with_template("{prefix:>10} [{bar:30}] {pos:>7}/{len:7} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_prefix(name.to_owned());
    let member = Member {
        name: name.into(),
        role,
        child,
        http,
        p2p,
        extra: extra.to_vec(),
        started: Instant::now(),
        done_after: None,
        start_height: 0,
        bar,
    };
    member.wait_for_api(root)?;
    Ok(member)
}

impl Member {
    /// Waits (up to 120 s: a checkpoint node opens it once a peer served the checkpoint block,
    /// which in a busy 50-node devnet takes a while) until the node answers on its HTTP API.
    fn wait_for_api(&self, root: &Path) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(120);
        while self.status().is_none() {
            anyhow::ensure!(
                Instant::now() < deadline,
                "node {} did not answer on {}; see {}/{}.log",
                self.name,
                self.http,
                root.display(),
                self.name
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    /// Churn: stops the node (SIGKILL when `kill`, else SIGTERM) and starts it again with the
    /// same store, ports and flags.
    fn restart(&mut self, spec: &Path, root: &Path, kill: bool) -> anyhow::Result<()> {
        if kill {
            let _ = self.child.kill();
            let _ = self.child.wait();
        } else {
            self.stop();
        }
        self.child = launch(&self.name, spec, root, (&self.p2p, self.http), &self.extra)?;
        self.wait_for_api(root)
    }
}

pub fn devnet(args: DevnetArgs) -> anyhow::Result<ExitCode> {
    let keep_dir = args.data_root.is_some() || args.keep_running;
    let root = match &args.data_root {
        Some(r) => r.clone(),
        None => std::env::temp_dir().join(format!("syncnode-devnet-{}", std::process::id())),
    };
    std::fs::create_dir_all(&root)?;
    let result = run_devnet(&args, &root);
    // A failure's message points into the directory (the nodes' logs): keep it then.
    if keep_dir || result.is_err() {
        println!("data and logs kept in {}", root.display());
    } else {
        let _ = std::fs::remove_dir_all(&root);
    }
    result
}

/// Set by SIGINT/SIGTERM: the devnet stops its nodes and exits.
static INTERRUPTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn interrupted() -> bool {
    INTERRUPTED.load(std::sync::atomic::Ordering::Relaxed)
}

fn run_devnet(args: &DevnetArgs, root: &Path) -> anyhow::Result<ExitCode> {
    ctrlc::set_handler(|| INTERRUPTED.store(true, std::sync::atomic::Ordering::Relaxed))
        .context("installing the Ctrl-C handler")?;
    let tty = std::io::stdout().is_terminal();
    let (spec, spec_path) = write_spec(args, root)?;
    let started = Instant::now();
    generate_history(args, &spec, &root.join("producer"))?;
    println!(
        "devnet: generated {} blocks of {} bytes in {:.1} s",
        args.blocks,
        args.payload_bytes,
        started.elapsed().as_secs_f64()
    );
    let bars = if tty {
        MultiProgress::new()
    } else {
        MultiProgress::with_draw_target(indicatif::ProgressDrawTarget::hidden())
    };
    let (mut members, checkpoint_height) = start_members(args, &spec_path, root, &bars)?;
    let finished = watch(args, root, &mut members, checkpoint_height, tty)?;
    if !finished {
        println!("devnet: interrupted; stopping the nodes");
        for m in members.iter_mut().rev() {
            m.stop();
        }
        return Ok(ExitCode::from(130));
    }
    for m in &members {
        m.bar.finish();
    }
    print_summary(&members, args.blocks);
    for m in members.iter_mut().rev() {
        m.stop();
    }
    println!("devnet: all nodes stopped");
    Ok(ExitCode::SUCCESS)
}

/// A one-authority spec whose generated history ends a few seconds before now, in `root/spec.json`.
fn write_spec(args: &DevnetArgs, root: &Path) -> anyhow::Result<(ChainSpec, std::path::PathBuf)> {
    let now_ms = crate::chain::now_ms()?;
    let slot_ms = 1000;
    let genesis_ms = (now_ms / 1000).saturating_sub(args.blocks + 5) * 1000;
    let spec = ChainSpec::dev("devnet", 1, genesis_ms, slot_ms, 32)?;
    let spec_path = root.join("spec.json");
    std::fs::write(&spec_path, spec.to_json())?;
    println!(
        "devnet: chain {} genesis {} in {}",
        spec.name,
        spec.genesis_hash(),
        root.display()
    );
    Ok((spec, spec_path))
}

/// The producer's store with `args.blocks` blocks of history (kept from an earlier run).
fn generate_history(args: &DevnetArgs, spec: &ChainSpec, dir: &Path) -> anyhow::Result<()> {
    let (store, _) = BlockStore::open(dir, spec)?;
    let dev = DevChain::new(spec)?;
    let mut parent = spec.genesis().header;
    let bar = crate::progress::bar(args.blocks, "history");
    let mut done = store.head().height;
    while done < args.blocks {
        let n = 4096.min(args.blocks - done);
        let blocks = crate::chain::build_blocks(&dev, &parent, n, args.payload_bytes as usize);
        store.import_blocks(&blocks)?;
        parent = blocks[blocks.len() - 1].header;
        done += n;
        bar.set_position(done);
    }
    bar.finish_and_clear();
    Ok(())
}

/// The producer, the nodes syncing from genesis and the checkpoint node (the last, if more than
/// one); returns them and the checkpoint height.
fn start_members(
    args: &DevnetArgs,
    spec_path: &Path,
    root: &Path,
    bars: &MultiProgress,
) -> anyhow::Result<(Vec<Member>, u64)> {
    let payload = args.payload_bytes.to_string();
    let mut members = Vec::new();
    let mut producer_args = ["--produce", "--dev-key", "0", "--payload-bytes", &payload]
        .map(String::from)
        .to_vec();
    producer_args.extend(args.link.to_flags());
    // With room for every node, every node would sync from the producer's one uplink at once.
    if let Some(max) = args.max_peers {
        producer_args.extend(["--max-peers".to_string(), max.to_string()]);
    }
    members.push(spawn_node(
        "producer",
        "producer",
        spec_path,
        root,
        &producer_args,
        bars,
    )?);
    let checkpoint_height = args.blocks.saturating_sub(args.blocks / 50).max(1);
    let checkpoint_hash = get_json(members[0].http, &format!("/blocks/{checkpoint_height}"))?["hash"]
        .as_str()
        .context("checkpoint block has no hash")?
        .to_owned();
    let syncing = args.nodes.max(1);
    for i in 0..syncing {
        let last = i + 1 == syncing && syncing > 1;
        let mut extra = args.link.to_flags();
        if let Some(max) = args.max_peers {
            extra.extend(["--max-peers".to_string(), max.to_string()]);
        }
        for m in bootnodes(&members) {
            extra.extend(["--bootnode".to_string(), m.p2p.clone()]);
        }
        let (name, role) = if last {
            extra.extend([
                "--checkpoint".to_string(),
                format!("{checkpoint_height}:{checkpoint_hash}"),
            ]);
            ("checkpoint".to_string(), "checkpoint+backfill")
        } else {
            (format!("node{}", i + 1), "from genesis")
        };
        members.push(spawn_node(&name, role, spec_path, root, &extra, bars)?);
    }
    println!(
        "devnet: {} nodes running; checkpoint {checkpoint_height}:{checkpoint_hash}",
        members.len()
    );
    Ok((members, checkpoint_height))
}

/// A new node's bootnodes: the producer and the two members started last (the others are
/// found through Kademlia).
fn bootnodes(members: &[Member]) -> impl Iterator<Item = &Member> {
    let recent = members.len().saturating_sub(2).max(1);
    members.iter().take(1).chain(members.iter().skip(recent))
}

/// Shows progress until every node is synced with full history (true), or Ctrl-C (false); an
/// error when a node exits or the timeout passes.
fn watch(
    args: &DevnetArgs,
    root: &Path,
    members: &mut [Member],
    checkpoint_height: u64,
    tty: bool,
) -> anyhow::Result<bool> {
    let deadline = Instant::now() + Duration::from_secs(args.timeout_secs);
    let mut last_line = Instant::now();
    let mut rates: Vec<HeadRate> = members.iter().map(|_| HeadRate::default()).collect();
    let mut churn = Churn::new(args.churn);
    loop {
        churn.step(members, root)?;
        let target = members[0]
            .status()
            .and_then(|s| s["head_height"].as_u64())
            .unwrap_or(args.blocks);
        let print_line = !tty && last_line.elapsed() >= Duration::from_secs(2);
        let mut all_done = true;
        for (i, m) in members.iter_mut().enumerate() {
            let view = View {
                target,
                checkpoint_height,
                print_line,
            };
            all_done &= observe(m, i == 0, &mut rates[i], args, root, &view)?;
        }
        if print_line {
            last_line = Instant::now();
        }
        if interrupted() {
            return Ok(false);
        }
        if all_done && !args.keep_running {
            return Ok(true);
        }
        anyhow::ensure!(
            args.keep_running || Instant::now() < deadline,
            "devnet did not finish within {} s; logs in {}",
            args.timeout_secs,
            root.display()
        );
        std::thread::sleep(Duration::from_millis(if tty { 200 } else { 500 }));
    }
}

/// `--churn`: restarts of syncing nodes, one at a time, 1 to 4 s apart, chosen at random.
struct Churn {
    left: u32,
    next_at: Instant,
    rng: u64,
}

impl Churn {
    fn new(restarts: u32) -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64);
        Churn {
            left: restarts,
            next_at: Instant::now() + Duration::from_secs(1),
            rng: seed | 1,
        }
    }

    /// xorshift64: enough to pick victims and pauses.
    fn next(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    /// Restarts one node still syncing when the next restart is due; gives up the rest once
    /// every node is synced.
    fn step(&mut self, members: &mut [Member], root: &Path) -> anyhow::Result<()> {
        if self.left == 0 || Instant::now() < self.next_at {
            return Ok(());
        }
        let syncing: Vec<usize> = (1..members.len())
            .filter(|&i| members[i].done_after.is_none())
            .collect();
        if syncing.is_empty() {
            println!(
                "devnet: churn: every node synced with {} restarts left",
                self.left
            );
            self.left = 0;
            return Ok(());
        }
        let victim = syncing[(self.next() % syncing.len() as u64) as usize];
        let kill = self.next().is_multiple_of(2);
        members[victim].restart(&root.join("spec.json"), root, kill)?;
        println!(
            "devnet: churn: restarted {} after {}",
            members[victim].name,
            if kill { "SIGKILL" } else { "SIGTERM" }
        );
        self.left -= 1;
        self.next_at = Instant::now() + Duration::from_millis(1000 + self.next() % 3000);
        Ok(())
    }
}

/// What one round of [`watch`] shows every member against.
struct View {
    target: u64,
    checkpoint_height: u64,
    print_line: bool,
}

/// Reads one member's status and shows it; whether it is done (the producer always is).
fn observe(
    m: &mut Member,
    producer: bool,
    rate: &mut HeadRate,
    args: &DevnetArgs,
    root: &Path,
    view: &View,
) -> anyhow::Result<bool> {
    let Some(s) = m.status() else {
        if let Ok(Some(code)) = m.child.try_wait() {
            anyhow::bail!(
                "node {} exited with {code}; see {}/{}.log",
                m.name,
                root.display(),
                m.name
            );
        }
        return Ok(false);
    };
    let head = s["head_height"].as_u64().unwrap_or(0);
    let earliest = s["earliest_height"].as_u64().unwrap_or(0);
    let state = s["sync_state"].as_str().unwrap_or("?").to_owned();
    let peers = s["peers"].as_u64().unwrap_or(0);
    if m.start_height == 0 && head > 0 && m.done_after.is_none() && m.role == "checkpoint+backfill" {
        m.start_height = view.checkpoint_height;
    }
    let rate = rate.observe(Instant::now(), head);
    let done = producer
        || (state == "synced" && head >= args.blocks && earliest == 0 && s["backfill_complete"] == true);
    if done && m.done_after.is_none() && !producer {
        m.done_after = Some(m.started.elapsed());
    }
    m.bar.set_length(view.target.max(1));
    m.bar.set_position(head);
    m.bar.set_message(format!(
        "earliest {earliest:>6} {state:<11} peers {peers} {rate:>8.0} blocks/s"
    ));
    if view.print_line {
        println!(
            "{:>10} head {head:>7}/{} earliest {earliest:>6} {state:<11} peers {peers} {rate:>8.0} blocks/s",
            m.name, view.target
        );
    }
    Ok(done)
}

fn print_summary(members: &[Member], blocks: u64) {
    println!();
    println!("| node | role | time to sync (s) | blocks/s | peak RSS (MiB) | peers banned |");
    println!("|---|---|---:|---:|---:|---:|");
    for m in members {
        let bans = get_json(m.http, "/peers")
            .ok()
            .and_then(|p| {
                p.as_array()
                    .map(|a| a.iter().filter(|x| x["banned"] == true).count())
            })
            .unwrap_or(0);
        let rss = m
            .peak_rss_kib()
            .map_or("?".into(), |k| format!("{:.1}", k as f64 / 1024.0));
        let (time, rate) = match m.done_after {
            Some(d) => (
                format!("{:.1}", d.as_secs_f64()),
                format!("{:.0}", blocks as f64 / d.as_secs_f64().max(1e-3)),
            ),
            None => ("-".into(), "-".into()),
        };
        println!("| {} | {} | {time} | {rate} | {rss} | {bans} |", m.name, m.role);
    }
    println!();
}

/// Blocks per second of one node's head, measured over at least a second from the first head
/// seen (a node's first status may already show thousands of blocks; that is not a rate).
#[derive(Debug, Default)]
struct HeadRate {
    since: Option<(Instant, u64)>,
    rate: f64,
}

impl HeadRate {
    fn observe(&mut self, now: Instant, head: u64) -> f64 {
        match self.since {
            None => self.since = Some((now, head)),
            Some((t0, h0)) => {
                let elapsed = now.saturating_duration_since(t0);
                if elapsed >= Duration::from_secs(1) {
                    self.rate = head.saturating_sub(h0) as f64 / elapsed.as_secs_f64();
                    self.since = Some((now, head));
                }
            }
        }
        self.rate
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_starts_from_the_first_head_seen_and_spans_a_second() {
        let t = Instant::now();
        let mut rate = HeadRate::default();
        assert_eq!(rate.observe(t, 50_000), 0.0);
        assert_eq!(rate.observe(t + Duration::from_millis(10), 50_100), 0.0);
        assert_eq!(rate.observe(t + Duration::from_secs(1), 51_000), 1_000.0);
        assert_eq!(rate.observe(t + Duration::from_millis(1_500), 52_000), 1_000.0);
        assert_eq!(rate.observe(t + Duration::from_secs(3), 55_000), 2_000.0);
    }
}
