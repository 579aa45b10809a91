//! The syncnode node: the store, the sync engine and the network joined by one event loop.
//!
//! ## Data flow
//! ```text
//!  peers ──libp2p──▶ network ──events──▶ event loop ──▶ SyncEngine (sans-IO)
//!                      ▲                    │  ▲              │ actions
//!                      │ requests, reports  │  │ results      ▼
//!                      └────────────────────┘  └── verification pool (rayon: rules 3–5)
//!                                               └── importer thread (store commits, in order)
//!  store ──BlockSource (blocking threads)──▶ network: what this node seeds
//!  store ──watch: Status, head──▶ network (Status exchange), HTTP API, subscribers
//! ```
//! - Requests go out on their own tasks with the engine's deadline; their answers are verified on
//!   the rayon pool (rules 3–5, batch signature verification in parallel sub-batches) before the
//!   engine sees them, so nothing slow runs on the event loop or the swarm task.
//! - The engine's imports are committed by one importer thread in the order asked, each one atomic
//!   store commit (the store checks rules 1–2); after each commit the Status watch the network
//!   serves and the head watch are updated.
//! - A producer (development key) builds a block in each of its slots once the node is in sync,
//!   imports it through the same importer, tells the engine, and publishes it by gossip.
//!
//! ## Invariants
//! - The event loop never awaits the network's command channel (it spawns), so the two tasks can
//!   never wait on each other.
//! - Every queue is bounded: the inbox, the import queue, the network's channels; the engine's
//!   window bounds what is downloaded ahead of import.
//! - The peers that worked well and the bans in force are kept in the [`peer_file`] across
//!   restarts: dialled and restored at start, written every minute and at shutdown.
//! - At shutdown the loop stops, the peers file is written, the network stops, the importer drains its queue, and the store
//!   is dropped (flushed) before `run` returns.

#![forbid(unsafe_code)]

pub mod api;
pub mod checkpoint;
pub mod disk;
pub mod gossip;
pub mod http;
pub mod http_client;
pub mod import;
pub mod metrics;
pub mod node;
pub mod peer_file;
pub mod retention;
pub mod source;
pub mod stream;
pub mod subscribe;
pub mod verify;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use prometheus_client::registry::Registry;
use syncnode_network::{Keypair, NetworkConfig};
use syncnode_store::BlockStore;
use syncnode_sync::{SyncConfig, SyncEngine};
use syncnode_types::ChainSpec;
use tokio::sync::{mpsc, watch};

pub use node::ProducerConfig;

/// Everything a node runs with.
pub struct NodeConfig {
    pub spec: ChainSpec,
    pub data_dir: PathBuf,
    /// Network settings; its `keypair` and `genesis_hash` are filled in by [`run`].
    pub network: NetworkConfig,
    pub http: Option<SocketAddr>,
    pub producer: Option<ProducerConfig>,
    pub sync: SyncConfig,
    /// Verification threads (0: one per core).
    pub verify_threads: usize,
    /// Start from this trusted block instead of genesis, then backfill below it.
    pub checkpoint: Option<checkpoint::Checkpoint>,
    /// Keep only this many blocks below the finalized block: backfill stops there and older
    /// blocks are pruned as the head advances (`None`: full history). See [`retention`].
    pub history_blocks: Option<u64>,
    /// Imports pause while the data directory's filesystem has fewer bytes free than this.
    pub min_free_space: u64,
}

/// Loads the node's libp2p identity from `DATA_DIR/network_key`, creating it on first start, so
/// the peer id survives restarts.
pub fn load_or_create_keypair(data_dir: &Path) -> anyhow::Result<Keypair> {
    let path = data_dir.join("network_key");
    if path.exists() {
        let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        return Keypair::from_protobuf_encoding(&bytes)
            .with_context(|| format!("{} is not a key", path.display()));
    }
    std::fs::create_dir_all(data_dir)?;
    let keypair = Keypair::generate_ed25519();
    let bytes = keypair
        .to_protobuf_encoding()
        .context("encoding the network key")?;
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, &path)?;
    Ok(keypair)
}

/// Runs a node until `shutdown` resolves, then stops cleanly.
pub async fn run(
    config: NodeConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    run_with(config, shutdown, |_| {}).await
}

/// [`run`], handing `on_ready` the node's [`subscribe::Subscriptions`] once the store is open, for
/// programs that consume blocks in-process.
pub async fn run_with(
    mut config: NodeConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    on_ready: impl FnOnce(subscribe::Subscriptions),
) -> anyhow::Result<()> {
    let store = open_store(&config).await?;
    let history_blocks = config.history_blocks;

    let mut registry = Registry::default();
    let metrics = metrics::NodeMetrics::register(&mut registry);
    metrics.observe_chain(&store.status());
    let (done_tx, done_rx) = mpsc::channel(import::IMPORT_QUEUE * 2);
    let disk = disk::DiskSpace::watched(&config.data_dir, config.min_free_space, &mut registry);
    let (imports, chain, importer) =
        import::spawn_importer(store.clone(), done_tx, history_blocks, disk.clone())?;
    let subscriptions = subscribe::Subscriptions::new(store.clone(), chain.head.clone());
    on_ready(subscriptions.clone());

    let peers = prepare_network(&mut config, &store)?;
    let source = Arc::new(source::StoreSource {
        store: store.clone(),
        head: chain.head.clone(),
        below_earliest: metrics.range_requests_below_earliest.clone(),
    });
    let (network, mut events) =
        syncnode_network::start(config.network, source, chain.status.clone(), &mut registry)
            .await
            .context("starting the network")?;
    tracing::info!(peer_id = %network.local_peer_id(), remembered_peers = peers.peer_count(), "network started");

    let replay = match config.checkpoint {
        Some(cp) => anchor_checkpoint(cp, &store, &network, &mut events, history_blocks, &metrics).await?,
        None => Vec::new(),
    };
    let (engine, sync_view, sync_rx) = sync_engine(&config.sync, &store)?;
    let (peers_view, peers_rx) = watch::channel(http::PeersView::default());
    let peer_keeper = peer_file::keep(peers, network.clone(), peers_rx.clone(), peer_file::SAVE_INTERVAL);

    let (stop_http_tx, stop_http_rx) = tokio::sync::oneshot::channel::<()>();
    let api = http::ApiState {
        store: store.clone(),
        network: network.clone(),
        chain: chain.clone(),
        sync: sync_rx,
        peers: peers_rx,
        streams: stream::BlockStreams::register(&mut registry, stream::MAX_BLOCK_STREAMS),
        registry: Arc::new(registry),
        subscriptions: subscriptions.clone(),
        disk,
    };
    let http_task = start_http(config.http, api, stop_http_rx).await?;
    log_listen_addrs(&network).await;

    let event_loop = node::EventLoop {
        store: store.clone(),
        network: network.clone(),
        events,
        engine,
        verifier: verify::Verifier::new(config.spec.clone(), config.verify_threads)?,
        imports,
        import_done: done_rx,
        sync_view,
        peers_view,
        metrics,
        producer: config.producer.clone(),
        gossip: gossip::GossipGate::new(config.sync.max_lookup_depth),
    };
    event_loop.run(replay, shutdown).await;

    tracing::info!("shutting down");
    peer_keeper.finish().await;
    stop_serving(stop_http_tx, http_task, network).await;
    let _ = tokio::task::spawn_blocking(move || importer.join()).await;
    drop(chain);
    drop(subscriptions);
    close_store(store).await;
    tracing::info!("stopped");
    Ok(())
}

/// Completes the network's configuration from the data directory and the store: the node's key,
/// the chain, and the peers and bans the peers file remembers (returned, to be kept up to date).
fn prepare_network(config: &mut NodeConfig, store: &BlockStore) -> anyhow::Result<peer_file::PeerFile> {
    config.network.keypair = load_or_create_keypair(&config.data_dir)?;
    config.network.genesis_hash = store.status().genesis_hash;
    config.network.gossip_slot = std::time::Duration::from_millis(config.spec.slot_ms);
    let peers = peer_file::PeerFile::load(&config.data_dir.join(peer_file::FILE_NAME));
    config.network.known_peers = peers.dial_addrs();
    config.network.restored_bans = peers.bans_left(peer_file::now_ms());
    Ok(peers)
}

/// The sync engine over the store's chain, and the watched view of it that the HTTP API reads.
fn sync_engine(
    sync: &SyncConfig,
    store: &BlockStore,
) -> anyhow::Result<(
    SyncEngine<syncnode_network::PeerId>,
    watch::Sender<http::SyncView>,
    watch::Receiver<http::SyncView>,
)> {
    tracing::info!(?sync, "sync configuration");
    let engine =
        SyncEngine::new(sync.clone(), node::local_chain(store), rand_seed()).context("sync configuration")?;
    let (view, rx) = watch::channel(http::SyncView {
        state: engine.state(),
        target: engine.target(),
        backfill_complete: engine.backfill_complete().unwrap_or(true),
    });
    Ok((engine, view, rx))
}

/// Stops the HTTP API (giving it two seconds to finish) and then the network.
async fn stop_serving(
    stop_http: tokio::sync::oneshot::Sender<()>,
    http_task: Option<tokio::task::JoinHandle<()>>,
    network: syncnode_network::NetworkHandle,
) {
    let _ = stop_http.send(());
    if let Some(task) = http_task {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), task).await;
    }
    network.shutdown().await;
}

/// Fetches and anchors the trusted checkpoint, unless the store already holds it, then sets the
/// history floor below it. Returns the network events that arrived meanwhile, for the event loop.
async fn anchor_checkpoint(
    cp: checkpoint::Checkpoint,
    store: &Arc<BlockStore>,
    network: &syncnode_network::NetworkHandle,
    events: &mut mpsc::Receiver<syncnode_network::NetworkEvent>,
    history_blocks: Option<u64>,
    metrics: &metrics::NodeMetrics,
) -> anyhow::Result<Vec<syncnode_network::NetworkEvent>> {
    if let checkpoint::Need::Have = checkpoint::need(store, cp)? {
        return Ok(Vec::new());
    }
    let replay = checkpoint::fetch_and_anchor(store, network, events, cp).await?;
    let anchored = store.clone();
    tokio::task::spawn_blocking(move || retention::set_floor(&anchored, history_blocks))
        .await?
        .context("setting the history floor below the checkpoint")?;
    metrics.observe_chain(&store.status());
    Ok(replay)
}

/// Opens (and repairs) the store, then applies the history limit.
async fn open_store(config: &NodeConfig) -> anyhow::Result<Arc<BlockStore>> {
    let spec = config.spec.clone();
    let data_dir = config.data_dir.clone();
    let (store, report) = tokio::task::spawn_blocking(move || BlockStore::open(&data_dir, &spec))
        .await?
        .map_err(|e| open_error(e, &config.data_dir))?;
    for action in &report.actions {
        tracing::warn!("store repaired at open: {action}");
    }
    let store = Arc::new(store);
    let history_blocks = config.history_blocks;
    let retained = store.clone();
    tokio::task::spawn_blocking(move || -> Result<(), syncnode_store::StoreError> {
        retention::set_floor(&retained, history_blocks)?;
        if let Some(n) = history_blocks {
            retention::prune_if_due(&retained, n, 1)?;
        }
        Ok(())
    })
    .await?
    .context("applying --history-blocks")?;
    let head = store.head();
    tracing::info!(chain = %config.spec.name, genesis = %store.status().genesis_hash, head = head.height, "store open");
    Ok(store)
}

/// Serves the HTTP API on `addr`, if given, until `stop` fires.
async fn start_http(
    addr: Option<std::net::SocketAddr>,
    api: http::ApiState,
    stop: tokio::sync::oneshot::Receiver<()>,
) -> anyhow::Result<Option<tokio::task::JoinHandle<()>>> {
    let Some(addr) = addr else {
        return Ok(None);
    };
    let (local, task) = http::serve(addr, api, async {
        let _ = stop.await;
    })
    .await
    .with_context(|| format!("binding the HTTP API on {addr}"))?;
    tracing::info!(%local, "HTTP API listening");
    Ok(Some(task))
}

/// Drops the last handle on the store so it closes cleanly. Open block streams end once the
/// importer is gone; they get a moment to let go of it.
async fn close_store(store: Arc<BlockStore>) {
    for _ in 0..40 {
        if Arc::strong_count(&store) == 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    match Arc::try_unwrap(store) {
        Ok(store) => drop(store),
        Err(_) => tracing::warn!("store still shared at shutdown; it closes when the last user ends"),
    }
}

/// The error of a store that would not open, with what to do when the disk is full.
fn open_error(e: syncnode_store::StoreError, data_dir: &Path) -> anyhow::Error {
    let full = e.is_out_of_space();
    let e = anyhow::Error::new(e).context(format!("opening the store in {}", data_dir.display()));
    if full {
        e.context(format!(
            "the filesystem of {} is full: free space there or grow it, then start the node again",
            data_dir.display()
        ))
    } else {
        e
    }
}

async fn log_listen_addrs(network: &syncnode_network::NetworkHandle) {
    for _ in 0..20 {
        let addrs = network.listen_addrs().await;
        if !addrs.is_empty() {
            for addr in addrs {
                tracing::info!(%addr, "listening");
            }
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

fn rand_seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    nanos ^ u64::from(std::process::id()).rotate_left(32)
}
