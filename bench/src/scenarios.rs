//! The real-process measurements: a seeder (or several) and one fresh node on loopback, watched
//! through `/status` and `/proc`; backfill from a checkpoint; serving to four in-process clients;
//! a restart on a large store.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use syncnode_network::{Keypair, NetworkConfig};
use syncnode_types::ChainSpec;

use crate::limits;
use crate::proc::{Env, NodeProc, Run, follow};

/// The longest any one sync may take before the benchmark gives up.
const SYNC_TIMEOUT: Duration = Duration::from_secs(900);

/// A generated chain: its store (never run as a node itself; seeders run on copies) and size.
#[derive(Clone)]
pub struct Chain {
    pub name: String,
    pub store: PathBuf,
    pub blocks: u64,
    pub payload: u64,
}

/// The chain spec file and the work directory shared by every scenario.
pub struct Bench {
    pub env: Env,
    pub spec_path: PathBuf,
    pub spec: ChainSpec,
    pub work: PathBuf,
}

fn bootnodes(seeders: &[NodeProc]) -> Vec<String> {
    seeders
        .iter()
        .flat_map(|s| ["--bootnode".to_string(), s.multiaddr()])
        .collect()
}

impl Bench {
    /// Generates `blocks` blocks of `payload` bytes into a new store named `name`.
    pub fn generate(&self, name: &str, blocks: u64, payload: u64) -> anyhow::Result<(Chain, f64)> {
        let store = self.work.join(format!("chain-{name}"));
        let _ = std::fs::remove_dir_all(&store);
        let started = Instant::now();
        self.env.run_ok(&[
            "chain",
            "generate",
            "--chain",
            &self.spec_path.to_string_lossy(),
            "--data-dir",
            &store.to_string_lossy(),
            "--blocks",
            &blocks.to_string(),
            "--payload-bytes",
            &payload.to_string(),
        ])?;
        let chain = Chain {
            name: name.to_owned(),
            store,
            blocks,
            payload,
        };
        Ok((chain, started.elapsed().as_secs_f64()))
    }

    /// `db export` of `chain` to a file, then `db import` of it into a new store called `name`:
    /// the import's blocks/s, from the start of the process to its end (as a sync's run is timed
    /// from the node's start). The file and the store are removed after.
    pub fn import(&self, chain: &Chain, name: &str) -> anyhow::Result<f64> {
        let file = self.work.join(format!("{name}.blocks"));
        let out = std::fs::File::create(&file)?;
        let status = std::process::Command::new(&self.env.bin)
            .args(["db", "export", "--data-dir", &chain.store.to_string_lossy()])
            .stdout(out)
            .stderr(std::process::Stdio::null())
            .status()
            .context("running db export")?;
        anyhow::ensure!(status.success(), "db export of {} failed", chain.name);
        let dir = self.work.join(name);
        let _ = std::fs::remove_dir_all(&dir);
        let started = Instant::now();
        self.env.run_ok(&[
            "db",
            "import",
            "--data-dir",
            &dir.to_string_lossy(),
            "--chain",
            &self.spec_path.to_string_lossy(),
            &file.to_string_lossy(),
        ])?;
        let secs = started.elapsed().as_secs_f64();
        let _ = std::fs::remove_file(&file);
        remove_store(&self.work, name);
        Ok(chain.blocks as f64 / secs.max(1e-9))
    }

    /// A fresh copy of `chain`'s store for a seeder called `name`.
    fn seeder_dir(&self, chain: &Chain, name: &str) -> anyhow::Result<PathBuf> {
        let dir = self.work.join(name);
        let _ = std::fs::remove_dir_all(&dir);
        crate::proc::copy_dir(&chain.store, &dir)?;
        Ok(dir)
    }

    /// Starts a seeder on a copy of `chain` with `extra` flags.
    pub fn seeder(&self, chain: &Chain, name: &str, extra: &[String]) -> anyhow::Result<NodeProc> {
        let dir = self.seeder_dir(chain, name)?;
        NodeProc::start(&self.env, name, &self.spec_path, &dir, extra)
    }

    /// A fresh node called `name` syncing from `seeders` until its head reaches the chain's.
    /// Returns the run and the node (still running, on its synced store).
    pub fn sync_fresh(
        &self,
        chain: &Chain,
        seeders: &[NodeProc],
        name: &str,
    ) -> anyhow::Result<(Run, NodeProc)> {
        let dir = self.work.join(name);
        let _ = std::fs::remove_dir_all(&dir);
        let node = NodeProc::start(&self.env, name, &self.spec_path, &dir, &bootnodes(seeders))?;
        let target = chain.blocks;
        let run = follow(&node, target, SYNC_TIMEOUT, |s| {
            s["head_height"].as_u64().is_some_and(|h| h >= target)
        })
        .with_context(|| format!("{name} syncing {}", chain.name))?;
        Ok((run, node))
    }

    /// A fresh node started from a checkpoint at `chain`'s head, backfilling from `seeder` until
    /// its history is complete.
    pub fn backfill(&self, chain: &Chain, seeder: &NodeProc, name: &str) -> anyhow::Result<Run> {
        let status = seeder.status().context("seeder status")?;
        let head = status["head_height"].as_u64().context("head_height")?;
        let hash = status["head_hash"].as_str().context("head_hash")?.to_owned();
        let dir = self.work.join(name);
        let _ = std::fs::remove_dir_all(&dir);
        let mut args = bootnodes(std::slice::from_ref(seeder));
        args.extend(["--checkpoint".to_string(), format!("{head}:{hash}")]);
        let mut node = NodeProc::start(&self.env, name, &self.spec_path, &dir, &args)?;
        let run = follow(&node, chain.blocks, SYNC_TIMEOUT, |s| {
            s["backfill_complete"].as_bool() == Some(true) && s["earliest_height"].as_u64() == Some(0)
        })
        .with_context(|| format!("{name} backfilling {}", chain.name))?;
        node.stop();
        Ok(run)
    }

    /// Stops `node` and starts it again on the same store: seconds from spawn until `/status`
    /// answers. Returns them with the restarted node.
    pub fn restart(&self, mut node: NodeProc, name: &str) -> anyhow::Result<(f64, NodeProc)> {
        node.stop();
        let dir = self.work.join(&node.name);
        drop(node);
        let started = Instant::now();
        let restarted = NodeProc::start(&self.env, name, &self.spec_path, &dir, &[])?;
        Ok((started.elapsed().as_secs_f64(), restarted))
    }

    /// Four in-process clients fetch the whole of `chain` from `seeder` at once: blocks served
    /// per second, all clients together.
    pub async fn serve_four(&self, chain: &Chain, seeder: &NodeProc) -> anyhow::Result<f64> {
        let peer_id = seeder.status().context("seeder status")?["peer_id"]
            .as_str()
            .context("peer_id")?
            .parse()
            .context("peer id")?;
        let addr: syncnode_network::Multiaddr = seeder.multiaddr().parse()?;
        let sample = limits::load_blocks(&chain.store, &self.spec, 1)?;
        let sample = sample.first().context("block 1")?;
        let count = limits::request_count(sample);
        let mut clients = Vec::new();
        for _ in 0..4 {
            let mut config = NetworkConfig::new(Keypair::generate_ed25519(), self.spec.genesis_hash());
            config.listen = vec!["/ip4/127.0.0.1/tcp/0".parse()?];
            config.kademlia = false;
            let genesis = self.spec.genesis_hash();
            let (_tx, rx) = tokio::sync::watch::channel(syncnode_network::Status {
                genesis_hash: genesis,
                head_height: 0,
                head_hash: genesis,
                finalized_height: 0,
                finalized_hash: genesis,
                earliest_height: 0,
            });
            let mut registry = prometheus_client::registry::Registry::default();
            let source = std::sync::Arc::new(limits::NoBlocks);
            let (handle, mut events) = syncnode_network::start(config, source, rx, &mut registry).await?;
            handle.dial(addr.clone()).await?;
            limits::wait_status(&mut events, peer_id).await?;
            clients.push((handle, events, _tx));
        }
        let started = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for (handle, _, _) in &clients {
            let handle = handle.clone();
            let head = chain.blocks;
            tasks.spawn(async move { limits::fetch_all(&handle, peer_id, head, count).await });
        }
        let mut served = 0usize;
        while let Some(done) = tasks.join_next().await {
            served += done??.0;
        }
        let rate = served as f64 / started.elapsed().as_secs_f64().max(1e-9);
        for (handle, _, _) in &clients {
            handle.shutdown().await;
        }
        Ok(rate)
    }
}

/// Removes a node's data directory once its figures are taken (large stores add up).
pub fn remove_store(work: &Path, name: &str) {
    let _ = std::fs::remove_dir_all(work.join(name));
}
