//! The pipeline's limits, measured in this process on the blocks of a generated chain: the
//! verification pool (rules 3–5, batch and one-by-one), the store's import path, and the node's
//! transport (two libp2p swarms on loopback, TCP + Noise + Yamux, the blocks-by-range protocol).

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rayon::prelude::*;
use syncnode_network::{
    BlockSource, BlocksByRangeRequest, Keypair, NetworkConfig, NetworkEvent, NetworkHandle, PeerId,
    SourceError, Status,
};
use syncnode_node::import::GroupSize;
use syncnode_node::verify::Verifier;
use syncnode_proto::convert::encoded_block_field_len;
use syncnode_store::BlockStore;
use syncnode_types::validity::check_standalone;
use syncnode_types::{Block, ChainSpec, Hash, Height};
use tokio::sync::watch;

/// Blocks per request and per verified/imported batch: the sync engine's default batch size.
pub const BATCH: usize = 512;
/// Requests in flight from one client (the transport measurement, each serving client): as many
/// as a server serves for one peer at once; more are answered busy.
fn window() -> usize {
    NetworkConfig::new(Keypair::generate_ed25519(), Hash::ZERO).max_serving_per_peer
}

/// One limit: blocks per second and bytes per second.
#[derive(Debug, Clone, Copy, Default)]
pub struct Rate {
    pub blocks_per_sec: f64,
    pub bytes_per_sec: f64,
}

impl Rate {
    fn of(blocks: usize, bytes: usize, elapsed: Duration) -> Rate {
        let s = elapsed.as_secs_f64().max(1e-9);
        Rate {
            blocks_per_sec: blocks as f64 / s,
            bytes_per_sec: bytes as f64 / s,
        }
    }
}

/// The limits measured on one chain.
#[derive(Debug, Clone, Copy, Default)]
pub struct Limits {
    pub sample_blocks: usize,
    pub verify_batch: Rate,
    pub verify_single: Rate,
    pub import: Rate,
    pub transport: Rate,
}

impl Limits {
    /// The slowest stage: what a pipeline of them can do at best.
    pub fn pipeline(&self) -> Rate {
        [self.verify_batch, self.import, self.transport]
            .into_iter()
            .min_by(|a, b| a.blocks_per_sec.total_cmp(&b.blocks_per_sec))
            .unwrap_or_default()
    }

    /// The name of the slowest stage.
    pub fn bottleneck(&self) -> &'static str {
        let p = self.pipeline().blocks_per_sec;
        if p == self.verify_batch.blocks_per_sec {
            "verification"
        } else if p == self.import.blocks_per_sec {
            "store import"
        } else {
            "transport"
        }
    }
}

/// Reads blocks 1..=`count` of the store at `dir` (which no process may have open).
pub fn load_blocks(dir: &Path, spec: &ChainSpec, count: u64) -> anyhow::Result<Vec<Block>> {
    let (store, _) = BlockStore::open(dir, spec).with_context(|| format!("opening {}", dir.display()))?;
    let mut blocks = Vec::with_capacity(count as usize);
    let mut next = 1;
    while next <= count {
        let part = store.blocks_by_range(next, (count - next + 1).min(1024), usize::MAX)?;
        if part.is_empty() {
            bail!("store {} ends below height {next}", dir.display());
        }
        next += part.len() as u64;
        blocks.extend(part);
    }
    Ok(blocks)
}

fn total_bytes(blocks: &[Block]) -> usize {
    blocks.iter().map(encoded_block_field_len).sum()
}

/// How many of `blocks`, in whole batches of [`BATCH`], the importer commits together at most
/// (its [`GroupSize`] rule).
fn commit_group_len(blocks: &[Block]) -> usize {
    let mut size = GroupSize::default();
    let mut len = 0;
    for batch in blocks.chunks(BATCH) {
        if !size.takes(batch) {
            break;
        }
        size.add(batch);
        len += batch.len();
    }
    len
}

/// Measures every limit on `blocks` (heights 1..=n of `spec`'s chain).
pub async fn measure(spec: &ChainSpec, blocks: Vec<Block>, scratch: &Path) -> anyhow::Result<Limits> {
    let bytes = total_bytes(&blocks);
    let n = blocks.len();
    let verifier = Verifier::new(spec.clone(), 0)?;

    // Batch verification, as the node does it: one response at a time, split across all cores.
    let started = Instant::now();
    let mut blocks = blocks;
    let mut verified = Vec::with_capacity(n);
    while !blocks.is_empty() {
        let rest = blocks.split_off(blocks.len().min(BATCH));
        let v = verifier.verify(std::mem::replace(&mut blocks, rest)).await;
        v.result
            .map_err(|e| anyhow::anyhow!("sample block {} invalid: {}", e.index, e.error))?;
        verified.extend(v.blocks);
    }
    let verify_batch = Rate::of(n, bytes, started.elapsed());
    let blocks = verified;

    // One signature at a time, on all cores.
    let started = Instant::now();
    let all_ok = blocks
        .par_chunks(BATCH)
        .all(|part| part.iter().all(|b| check_standalone(b, spec).is_ok()));
    let verify_single = Rate::of(n, bytes, started.elapsed());
    if !all_ok {
        bail!("a sample block failed one-by-one verification");
    }

    // The store's import path: verified blocks committed to a fresh store in the largest groups
    // the importer makes of queued imports (its limit when the store is the slowest stage).
    let dir = scratch.join("import-limit");
    let _ = std::fs::remove_dir_all(&dir);
    let import = {
        let (store, _) = BlockStore::open(&dir, spec)?;
        let started = Instant::now();
        let mut rest = &blocks[..];
        while !rest.is_empty() {
            let (group, after) = rest.split_at(commit_group_len(rest));
            store.import_blocks(group)?;
            rest = after;
        }
        let rate = Rate::of(n, bytes, started.elapsed());
        drop(store);
        rate
    };
    let _ = std::fs::remove_dir_all(&dir);

    let transport = transport(spec, blocks).await?;
    Ok(Limits {
        sample_blocks: n,
        verify_batch,
        verify_single,
        import,
        transport,
    })
}

/// Blocks held in memory and served by height, the serving side of the transport measurement.
struct MemSource {
    blocks: Vec<Block>,
    by_hash: HashMap<Hash, usize>,
}

impl BlockSource for MemSource {
    fn blocks_by_range(
        &self,
        start: Height,
        count: u64,
        max_bytes: usize,
    ) -> Result<Vec<Block>, SourceError> {
        let first = usize::try_from(start.max(1) - 1).unwrap_or(usize::MAX);
        let mut total = 0;
        Ok(self
            .blocks
            .iter()
            .skip(first)
            .take(usize::try_from(count).unwrap_or(usize::MAX))
            .take_while(|b| {
                total += encoded_block_field_len(b);
                total <= max_bytes
            })
            .cloned()
            .collect())
    }

    fn blocks_by_root(&self, hashes: &[Hash], max_bytes: usize) -> Result<Vec<Block>, SourceError> {
        let mut total = 0;
        Ok(hashes
            .iter()
            .filter_map(|h| self.by_hash.get(h))
            .map(|&i| self.blocks[i].clone())
            .take_while(|b| {
                total += encoded_block_field_len(b);
                total <= max_bytes
            })
            .collect())
    }
}

fn status_of(spec: &ChainSpec, head: Option<&Block>) -> Status {
    let genesis = spec.genesis_hash();
    let (head_height, head_hash) = head.map_or((0, genesis), |b| (b.height(), b.hash()));
    Status {
        genesis_hash: genesis,
        head_height,
        head_hash,
        finalized_height: 0,
        finalized_hash: genesis,
        earliest_height: 0,
    }
}

/// Starts a network node on loopback TCP serving `blocks`.
async fn start_node(
    spec: &ChainSpec,
    blocks: Vec<Block>,
) -> anyhow::Result<(
    NetworkHandle,
    tokio::sync::mpsc::Receiver<NetworkEvent>,
    watch::Sender<Status>,
)> {
    let mut config = NetworkConfig::new(Keypair::generate_ed25519(), spec.genesis_hash());
    config.listen = vec!["/ip4/127.0.0.1/tcp/0".parse()?];
    config.kademlia = false;
    let (status_tx, status_rx) = watch::channel(status_of(spec, blocks.last()));
    let by_hash = blocks.iter().enumerate().map(|(i, b)| (b.hash(), i)).collect();
    let source = Arc::new(MemSource { blocks, by_hash });
    let mut registry = prometheus_client::registry::Registry::default();
    let (handle, events) = syncnode_network::start(config, source, status_rx, &mut registry).await?;
    Ok((handle, events, status_tx))
}

/// Blocks per request so a response fits the response frame.
pub fn request_count(sample: &Block) -> u64 {
    let per = encoded_block_field_len(sample) + 16;
    (syncnode_proto::MAX_RESPONSE_FRAME / per).clamp(1, BATCH) as u64
}

/// Moves `blocks` from one swarm to another over loopback TCP, [`window`] requests in flight.
async fn transport(spec: &ChainSpec, blocks: Vec<Block>) -> anyhow::Result<Rate> {
    let Some(first) = blocks.first() else {
        bail!("no blocks to move");
    };
    let count = request_count(first);
    let head = blocks.len() as u64;
    let (server, _server_events, _server_status) = start_node(spec, blocks).await?;
    let (client, mut events, _client_status) = start_node(spec, Vec::new()).await?;
    let peer = server.local_peer_id();
    let addr = server
        .listen_addrs()
        .await
        .into_iter()
        .find(|a| a.to_string().contains("/tcp/"))
        .context("server listens on TCP")?;
    client.dial(addr).await?;
    wait_status(&mut events, peer).await?;
    let started = Instant::now();
    let (moved, bytes) = fetch_all(&client, peer, head, count).await?;
    let rate = Rate::of(moved, bytes, started.elapsed());
    client.shutdown().await;
    server.shutdown().await;
    Ok(rate)
}

/// Waits (up to 15 s) for `peer`'s Status on `events`.
pub async fn wait_status(
    events: &mut tokio::sync::mpsc::Receiver<NetworkEvent>,
    peer: PeerId,
) -> anyhow::Result<()> {
    tokio::time::timeout(Duration::from_secs(15), async {
        while let Some(e) = events.recv().await {
            if matches!(e, NetworkEvent::PeerStatus { peer: p, .. } if p == peer) {
                return Ok(());
            }
        }
        bail!("network stopped before the peer's status")
    })
    .await
    .context("timed out waiting for the peer's status")?
}

/// Fetches heights 1..=`head` from `peer` in requests of `count`, [`window`] at a time; short
/// answers are asked again from where they ended. Returns (blocks, encoded bytes).
pub async fn fetch_all(
    client: &NetworkHandle,
    peer: PeerId,
    head: u64,
    count: u64,
) -> anyhow::Result<(usize, usize)> {
    let mut todo: VecDeque<(u64, u64)> = (0..head.div_ceil(count))
        .map(|i| (1 + i * count, count.min(head - i * count)))
        .collect();
    let window = window();
    let mut inflight = tokio::task::JoinSet::new();
    let (mut blocks, mut bytes, mut failures) = (0usize, 0usize, 0u32);
    loop {
        while inflight.len() < window
            && let Some((start, n)) = todo.pop_front()
        {
            let client = client.clone();
            inflight.spawn(async move {
                let request = BlocksByRangeRequest::new(start, n);
                let result = match request {
                    Ok(r) => client.request_range(peer, r).await.map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                };
                (start, n, result)
            });
        }
        let Some(joined) = inflight.join_next().await else {
            return Ok((blocks, bytes));
        };
        let (start, n, result) = joined?;
        match result {
            Ok(response) if !response.blocks.is_empty() => {
                let got = response.blocks.len() as u64;
                blocks += response.blocks.len();
                bytes += total_bytes(&response.blocks);
                if got < n {
                    todo.push_front((start + got, n - got));
                }
            }
            other => {
                failures += 1;
                if failures > 100 {
                    bail!("too many failed requests, last: {:?}", other.err());
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                todo.push_front((start, n));
            }
        }
    }
}

/// A source that holds nothing: the in-process clients of the serving measurement.
pub struct NoBlocks;

impl BlockSource for NoBlocks {
    fn blocks_by_range(&self, _: Height, _: u64, _: usize) -> Result<Vec<Block>, SourceError> {
        Ok(Vec::new())
    }

    fn blocks_by_root(&self, _: &[Hash], _: usize) -> Result<Vec<Block>, SourceError> {
        Ok(Vec::new())
    }
}
