//! Test helpers: an in-memory chain as a `BlockSource`, nodes on 127.0.0.1, a raw-stream client.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId, StreamProtocol, noise, tcp, yamux};
use prometheus_client::registry::Registry;
use syncnode_network::{
    BlockSource, NetworkConfig, NetworkEvent, NetworkHandle, PeerSummary, SourceError, Status,
};
use syncnode_proto::convert::encoded_block_field_len;
use syncnode_types::{Block, ChainSpec, Hash, Height, SigningKey};
use tokio::sync::{mpsc, oneshot, watch};

/// Bound on every wait in these tests.
pub const WAIT: Duration = Duration::from_secs(15);

/// Runs `fut` under the test-wide bound.
pub async fn bounded<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// A chain of `len` blocks after genesis, each with a payload of `payload` bytes.
pub fn chain(name: &str, len: u64, payload: usize) -> Vec<Block> {
    let spec = ChainSpec::dev(name, 1, 1_700_000_000_000, 1000, 32).expect("dev spec");
    let key = SigningKey::dev(0);
    let mut blocks = vec![spec.genesis()];
    for h in 1..=len {
        let parent = blocks[blocks.len() - 1].hash();
        let body = Bytes::from(vec![(h % 251) as u8; payload]);
        blocks.push(Block::new_signed(
            h,
            parent,
            spec.slot_timestamp_ms(h),
            body,
            &key,
        ));
    }
    blocks
}

/// Payload bytes handed out by a tracked [`MemSource`] and not yet dropped, and their peak.
#[derive(Default)]
pub struct LiveBytes {
    now: AtomicUsize,
    peak: AtomicUsize,
}

impl LiveBytes {
    /// The most payload bytes alive at once so far.
    pub fn peak(&self) -> usize {
        self.peak.load(Ordering::SeqCst)
    }
}

/// A payload copy that counts itself in [`LiveBytes`] until dropped.
struct Tracked {
    data: Vec<u8>,
    live: Arc<LiveBytes>,
}

impl AsRef<[u8]> for Tracked {
    fn as_ref(&self) -> &[u8] {
        &self.data
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.live.now.fetch_sub(self.data.len(), Ordering::SeqCst);
    }
}

/// `block` with its payload copied into bytes counted by `live`.
fn tracked(block: Block, live: &Arc<LiveBytes>) -> Block {
    let data = block.payload.to_vec();
    let now = live.now.fetch_add(data.len(), Ordering::SeqCst) + data.len();
    live.peak.fetch_max(now, Ordering::SeqCst);
    let payload = Bytes::from_owner(Tracked {
        data,
        live: live.clone(),
    });
    Block { payload, ..block }
}

/// An in-memory `BlockSource` with an optional delay per call.
pub struct MemSource {
    blocks: Vec<Block>,
    by_hash: HashMap<Hash, usize>,
    delay: Duration,
    pub calls: AtomicUsize,
    /// When set, every block returned carries a payload counted here while it lives.
    pub live: Option<Arc<LiveBytes>>,
}

impl MemSource {
    pub fn new(blocks: Vec<Block>) -> Self {
        Self::with_delay(blocks, Duration::ZERO)
    }

    pub fn with_delay(blocks: Vec<Block>, delay: Duration) -> Self {
        let by_hash = blocks.iter().enumerate().map(|(i, b)| (b.hash(), i)).collect();
        MemSource {
            blocks,
            by_hash,
            delay,
            calls: AtomicUsize::new(0),
            live: None,
        }
    }

    /// A source whose returned payloads are counted in the returned [`LiveBytes`].
    pub fn tracked(blocks: Vec<Block>) -> (Self, Arc<LiveBytes>) {
        let live = Arc::new(LiveBytes::default());
        let mut source = Self::new(blocks);
        source.live = Some(live.clone());
        (source, live)
    }

    fn hand_out(&self, blocks: Vec<Block>) -> Vec<Block> {
        match &self.live {
            Some(live) => blocks.into_iter().map(|b| tracked(b, live)).collect(),
            None => blocks,
        }
    }

    pub fn status(&self) -> Status {
        let genesis = &self.blocks[0];
        let head = &self.blocks[self.blocks.len() - 1];
        Status {
            genesis_hash: genesis.hash(),
            head_height: head.height(),
            head_hash: head.hash(),
            finalized_height: 0,
            finalized_hash: genesis.hash(),
            earliest_height: 0,
        }
    }

    fn take_budget(blocks: impl Iterator<Item = Block>, max_bytes: usize) -> Vec<Block> {
        let mut total = 0usize;
        blocks
            .take_while(|b| {
                total += encoded_block_field_len(b);
                total <= max_bytes
            })
            .collect()
    }
}

impl BlockSource for MemSource {
    fn blocks_by_range(
        &self,
        start: Height,
        count: u64,
        max_bytes: usize,
    ) -> Result<Vec<Block>, SourceError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        std::thread::sleep(self.delay);
        let start = usize::try_from(start).unwrap_or(usize::MAX);
        let blocks = self
            .blocks
            .iter()
            .skip(start)
            .take(usize::try_from(count).unwrap_or(usize::MAX))
            .cloned();
        Ok(self.hand_out(Self::take_budget(blocks, max_bytes)))
    }

    fn blocks_by_root(&self, hashes: &[Hash], max_bytes: usize) -> Result<Vec<Block>, SourceError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        std::thread::sleep(self.delay);
        let blocks = hashes
            .iter()
            .filter_map(|h| self.by_hash.get(h))
            .map(|&i| self.blocks[i].clone());
        Ok(self.hand_out(Self::take_budget(blocks, max_bytes)))
    }
}

/// A running node.
pub struct TestNode {
    pub handle: NetworkHandle,
    pub events: mpsc::Receiver<NetworkEvent>,
    pub addr: Multiaddr,
    pub peer_id: PeerId,
    pub status: watch::Sender<Status>,
    pub registry: Registry,
}

/// A test configuration: loopback only, no mDNS, short timers.
pub fn test_config(genesis: Hash) -> NetworkConfig {
    let mut config = NetworkConfig::new(libp2p::identity::Keypair::generate_ed25519(), genesis);
    config.listen = vec!["/ip4/127.0.0.1/tcp/0".parse().expect("addr")];
    config.mdns = false;
    config.kademlia = false;
    config.request_timeout = Duration::from_secs(2);
    config.maintenance_interval = Duration::from_millis(100);
    config.gossip_heartbeat = Duration::from_millis(100);
    config
}

/// Starts a node serving `source` with `config`, reachable at its loopback TCP address.
pub async fn spawn_node(config: NetworkConfig, source: Arc<MemSource>) -> TestNode {
    spawn_node_at(config, source, "/tcp/").await
}

/// Starts a node; its `addr` is the loopback listen address containing `transport`.
pub async fn spawn_node_at(config: NetworkConfig, source: Arc<MemSource>, transport: &str) -> TestNode {
    let (status_tx, status_rx) = watch::channel(source.status());
    let mut registry = Registry::default();
    let (handle, events) = syncnode_network::start(config, source, status_rx, &mut registry)
        .await
        .expect("network starts");
    let addrs = handle.listen_addrs().await;
    let addr = addrs
        .into_iter()
        .find(|a| {
            let text = a.to_string();
            text.starts_with("/ip4/127.0.0.1/") && text.contains(transport)
        })
        .expect("a loopback listen address");
    let peer_id = handle.local_peer_id();
    let addr = addr.with(libp2p::multiaddr::Protocol::P2p(peer_id));
    TestNode {
        handle,
        events,
        addr,
        peer_id,
        status: status_tx,
        registry,
    }
}

impl TestNode {
    /// Waits for an event that `pick` accepts, dropping others.
    pub async fn wait_event<T>(&mut self, what: &str, mut pick: impl FnMut(&NetworkEvent) -> Option<T>) -> T {
        bounded(what, async {
            loop {
                let event = self.events.recv().await.expect("event channel open");
                if let Some(t) = pick(&event) {
                    return t;
                }
            }
        })
        .await
    }

    /// Waits for a Status from `peer`.
    pub async fn wait_status(&mut self, peer: PeerId) -> Status {
        self.wait_event("a peer status", |e| match e {
            NetworkEvent::PeerStatus { peer: p, status } if *p == peer => Some(*status),
            _ => None,
        })
        .await
    }

    /// Polls `peers()` until `pred` holds for `peer`'s summary.
    pub async fn wait_peer(
        &self,
        what: &str,
        peer: PeerId,
        pred: impl Fn(&PeerSummary) -> bool,
    ) -> PeerSummary {
        bounded(what, async {
            loop {
                let peers = self.handle.peers().await;
                if let Some(s) = peers.into_iter().find(|s| s.peer_id == peer && pred(s)) {
                    return s;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await
    }

    /// This node's summary of `peer`, if it remembers it.
    pub async fn summary(&self, peer: PeerId) -> Option<PeerSummary> {
        self.handle.peers().await.into_iter().find(|s| s.peer_id == peer)
    }
}

/// Connects `b` to `a` and waits for both Status exchanges.
pub async fn connect(a: &mut TestNode, b: &mut TestNode) {
    b.handle.dial(a.addr.clone()).await.expect("dial starts");
    a.wait_status(b.peer_id).await;
    b.wait_status(a.peer_id).await;
}

/// A bare libp2p peer that opens raw streams, to write bytes no honest node would.
pub struct RawClient {
    pub peer_id: PeerId,
    control: libp2p_stream::Control,
}

impl RawClient {
    /// Connects to `addr` and waits for the connection.
    pub async fn connect(addr: &Multiaddr) -> RawClient {
        let mut swarm = libp2p::SwarmBuilder::with_new_identity()
            .with_tokio()
            .with_tcp(tcp::Config::default(), noise::Config::new, yamux::Config::default)
            .expect("tcp")
            .with_behaviour(|_| libp2p_stream::Behaviour::new())
            .expect("behaviour")
            .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
            .build();
        let peer_id = *swarm.local_peer_id();
        let control = swarm.behaviour().new_control();
        swarm.dial(addr.clone()).expect("dial");
        let (tx, rx) = oneshot::channel();
        let mut tx = Some(tx);
        tokio::spawn(async move {
            while let Some(event) = swarm.next().await {
                let established = matches!(event, SwarmEvent::ConnectionEstablished { .. });
                if let Some(tx) = tx.take_if(|_| established) {
                    let _ = tx.send(());
                }
            }
        });
        bounded("raw connection", rx).await.expect("connected");
        RawClient { peer_id, control }
    }

    /// Answers every inbound stream of `protocol`: reads the request frame, then writes
    /// `answer` raw (or, if `None`, holds the stream open and never answers).
    pub fn answer_raw(&mut self, protocol: &'static str, answer: Option<Vec<u8>>) {
        let mut incoming = self
            .control
            .accept(StreamProtocol::new(protocol))
            .expect("not yet accepted");
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Some((_, mut stream)) = incoming.next().await {
                let _ =
                    syncnode_proto::frame::read_frame_bytes(&mut stream, syncnode_proto::MAX_REQUEST_FRAME)
                        .await;
                match &answer {
                    Some(bytes) => {
                        use futures::AsyncWriteExt;
                        let _ = stream.write_all(bytes).await;
                        let _ = stream.close().await;
                    }
                    None => held.push(stream),
                }
            }
        });
    }

    /// Opens a stream of `protocol` to `peer`.
    pub async fn open(&mut self, peer: PeerId, protocol: &'static str) -> libp2p::Stream {
        bounded(
            "raw stream",
            self.control.open_stream(peer, StreamProtocol::new(protocol)),
        )
        .await
        .expect("stream opens")
    }
}
