//! Test peers that speak gossipsub on a node's blocks topic (PROTOCOL.md §4), honest or not:
//! an announcer of real blocks, and peers that send forged copies of upcoming blocks, floods of
//! invalid and undecodable announcements, blocks far ahead of the head, and blocks of another
//! chain. Each is a real libp2p peer (TCP + Noise + Yamux, gossipsub with the node's message id)
//! that dials the node, answers its Status requests (with a head the test sets, so the node does
//! not range-sync from it) and its by-root requests (from the blocks the peer holds).
//!
//! A peer's swarm runs on its own task; the test drives it through a bounded command channel.
//! Every loop is bounded: a flood by its message count, the task by its command channel (it
//! ends when the [`GossipPeer`] is dropped) and the test's runtime.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{AsyncWriteExt, StreamExt};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, PeerId, StreamProtocol, Swarm, gossipsub, identity, noise, tcp, yamux};
use prost::Message;
use syncnode_network::gossip::{encode_block, message_id};
use syncnode_proto::frame::{encode_frame, read_frame_bytes};
use syncnode_proto::{BLOCKS_BY_ROOT_PROTOCOL, MAX_REQUEST_FRAME, STATUS_PROTOCOL, pb};
use syncnode_types::{Block, BlockHeader, ChainSpec, DevChain, Hash, Height, SigningKey};
use tokio::sync::{mpsc, oneshot};

/// A gossip test peer's behaviour: gossipsub plus raw streams for Status and by-root answers.
#[derive(NetworkBehaviour)]
struct GossipBehaviour {
    gossipsub: gossipsub::Behaviour,
    streams: libp2p_stream::Behaviour,
}

/// What a gossip test peer saw.
#[derive(Debug, Default)]
pub struct GossipStats {
    /// Announcements handed to gossipsub for sending.
    pub published: AtomicU64,
    /// Whether a connection to the node is open.
    pub connected: AtomicBool,
    /// Whether the node is known to be subscribed to the topic.
    pub node_subscribed: AtomicBool,
    /// Whether the node is in this peer's mesh (looked at every 100 ms): a node that pruned
    /// this peer, as gossipsub does with a peer whose score is negative, leaves it.
    pub node_in_mesh: AtomicBool,
    /// When the last connection to the node closed, if it did.
    pub cut_off_at: Mutex<Option<Instant>>,
}

enum Command {
    /// Publish one message; the reply says whether gossipsub took it.
    Publish {
        data: Vec<u8>,
        reply: oneshot::Sender<Result<(), String>>,
    },
    /// Publish these messages one after another, as fast as the swarm takes them, until the
    /// list ends or gossipsub refuses one (no peer left); the reply is how many it took.
    Flood {
        messages: Vec<Vec<u8>>,
        reply: oneshot::Sender<u64>,
    },
}

/// A running gossip test peer, connected (or connecting) to one node.
pub struct GossipPeer {
    pub peer_id: PeerId,
    pub stats: Arc<GossipStats>,
    commands: mpsc::Sender<Command>,
    status: Arc<Mutex<pb::Status>>,
}

fn swarm(key: identity::Keypair) -> Swarm<GossipBehaviour> {
    libp2p::SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )
        .expect("tcp transport")
        .with_behaviour(|key| {
            let config = gossipsub::ConfigBuilder::default()
                .heartbeat_interval(Duration::from_millis(200))
                .message_id_fn(|m: &gossipsub::Message| message_id(&m.data))
                .max_transmit_size(2 << 20)
                .build()
                .expect("gossipsub config");
            GossipBehaviour {
                gossipsub: gossipsub::Behaviour::new(
                    gossipsub::MessageAuthenticity::Signed(key.clone()),
                    config,
                )
                .expect("gossipsub"),
                streams: libp2p_stream::Behaviour::new(),
            }
        })
        .expect("behaviour")
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(120)))
        .build()
}

impl GossipPeer {
    /// Starts a peer on `rt` that dials `node` and answers with `status`; `blocks` are what it
    /// serves by root.
    pub fn spawn(
        rt: &tokio::runtime::Handle,
        node: Multiaddr,
        status: pb::Status,
        blocks: Vec<Block>,
    ) -> Self {
        let key = identity::Keypair::generate_ed25519();
        let peer_id = key.public().to_peer_id();
        let stats = Arc::new(GossipStats::default());
        let status = Arc::new(Mutex::new(status));
        let (commands, rx) = mpsc::channel(16);
        let genesis = <[u8; 32]>::try_from(status.lock().expect("status").genesis_hash.as_ref())
            .map(Hash)
            .expect("a 32-byte genesis hash");
        let topic = gossipsub::IdentTopic::new(syncnode_proto::gossip_topic(&genesis));
        let (task_stats, task_status) = (stats.clone(), status.clone());
        rt.spawn(async move {
            let mut swarm = swarm(key);
            let mut control = swarm.behaviour().streams.new_control();
            let status_in = control
                .accept(StreamProtocol::new(STATUS_PROTOCOL))
                .expect("status");
            let root_in = control
                .accept(StreamProtocol::new(BLOCKS_BY_ROOT_PROTOCOL))
                .expect("root");
            let answering = [
                tokio::spawn(answer_status(status_in, task_status)),
                tokio::spawn(answer_roots(root_in, Arc::new(blocks))),
            ];
            swarm
                .behaviour_mut()
                .gossipsub
                .subscribe(&topic)
                .expect("subscribe");
            if swarm.dial(node).is_ok() {
                drive(swarm, topic, rx, task_stats).await;
            }
            for task in answering {
                task.abort();
            }
        });
        GossipPeer {
            peer_id,
            stats,
            commands,
            status,
        }
    }

    /// Sets the head this peer claims in its Status answers.
    pub fn set_head(&self, block: &Block) {
        let mut status = self.status.lock().expect("status");
        status.head_height = block.height();
        status.head_hash = Bytes::copy_from_slice(&block.hash().0);
    }

    /// Waits (up to `timeout`) until the node is connected and subscribed to the topic.
    pub fn wait_subscribed(&self, timeout: Duration) {
        crate::node::wait_for(timeout, "the node subscribed, seen by a gossip peer", || {
            self.stats.node_subscribed.load(Ordering::Relaxed).then_some(())
        });
    }

    /// Publishes one message (blocking the calling thread until gossipsub took it or refused).
    pub fn publish(&self, data: Vec<u8>) -> Result<(), String> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .blocking_send(Command::Publish { data, reply })
            .map_err(|_| "peer stopped".to_owned())?;
        rx.blocking_recv().unwrap_or_else(|_| Err("peer stopped".into()))
    }

    /// Publishes `messages` as fast as the swarm takes them; returns how many it took before
    /// the list ended or the node was gone.
    pub fn flood(&self, messages: Vec<Vec<u8>>) -> u64 {
        let (reply, rx) = oneshot::channel();
        if self
            .commands
            .blocking_send(Command::Flood { messages, reply })
            .is_err()
        {
            return 0;
        }
        rx.blocking_recv().unwrap_or(0)
    }

    /// Waits (up to `timeout`) until the node is in this peer's mesh.
    pub fn wait_in_mesh(&self, timeout: Duration) {
        crate::node::wait_for(timeout, "the node in a gossip peer's mesh", || {
            self.stats.node_in_mesh.load(Ordering::Relaxed).then_some(())
        });
    }

    /// Whether the node is in this peer's mesh.
    pub fn node_in_mesh(&self) -> bool {
        self.stats.node_in_mesh.load(Ordering::Relaxed)
    }

    /// When the node closed its last connection to this peer, if it did.
    pub fn cut_off_at(&self) -> Option<Instant> {
        *self.stats.cut_off_at.lock().expect("cut off")
    }
}

/// The peer's task: swarm events, commands, and a flood in progress, until the test drops its
/// [`GossipPeer`].
async fn drive(
    mut swarm: Swarm<GossipBehaviour>,
    topic: gossipsub::IdentTopic,
    mut commands: mpsc::Receiver<Command>,
    stats: Arc<GossipStats>,
) {
    let mut flood: VecDeque<Vec<u8>> = VecDeque::new();
    let mut flood_reply: Option<(oneshot::Sender<u64>, u64)> = None;
    let mut look = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            biased;
            event = swarm.select_next_some() => on_event(event, &stats),
            _ = look.tick() => {
                let in_mesh = swarm.behaviour().gossipsub.mesh_peers(&topic.hash()).next().is_some();
                stats.node_in_mesh.store(in_mesh, Ordering::Relaxed);
            }
            command = commands.recv() => match command {
                None => return,
                Some(Command::Publish { data, reply }) => {
                    let result = swarm.behaviour_mut().gossipsub.publish(topic.clone(), data);
                    if result.is_ok() {
                        stats.published.fetch_add(1, Ordering::Relaxed);
                    }
                    let _ = reply.send(result.map(|_| ()).map_err(|e| e.to_string()));
                }
                Some(Command::Flood { messages, reply }) => {
                    flood = messages.into();
                    flood_reply = Some((reply, 0));
                }
            },
            () = std::future::ready(()), if flood_reply.is_some() => {
                let taken = flood
                    .pop_front()
                    .map(|data| swarm.behaviour_mut().gossipsub.publish(topic.clone(), data).is_ok());
                match (taken, flood_reply.take()) {
                    (Some(true), Some((reply, n))) => {
                        stats.published.fetch_add(1, Ordering::Relaxed);
                        flood_reply = Some((reply, n + 1));
                    }
                    (_, Some((reply, n))) => {
                        flood.clear();
                        let _ = reply.send(n);
                    }
                    (_, None) => {}
                }
            }
        }
    }
}

fn on_event(event: SwarmEvent<GossipBehaviourEvent>, stats: &GossipStats) {
    match event {
        SwarmEvent::ConnectionEstablished { .. } => stats.connected.store(true, Ordering::Relaxed),
        SwarmEvent::ConnectionClosed {
            num_established: 0, ..
        } => {
            stats.connected.store(false, Ordering::Relaxed);
            stats.node_subscribed.store(false, Ordering::Relaxed);
            *stats.cut_off_at.lock().expect("cut off") = Some(Instant::now());
        }
        SwarmEvent::Behaviour(GossipBehaviourEvent::Gossipsub(gossipsub::Event::Subscribed { .. })) => {
            stats.node_subscribed.store(true, Ordering::Relaxed);
        }
        _ => {}
    }
}

/// Answers every Status request with the peer's current Status.
async fn answer_status(mut incoming: libp2p_stream::IncomingStreams, status: Arc<Mutex<pb::Status>>) {
    while let Some((_, mut stream)) = incoming.next().await {
        let frame = encode_frame(&*status.lock().expect("status"));
        tokio::spawn(async move {
            if read_frame_bytes(&mut stream, MAX_REQUEST_FRAME).await.is_ok() {
                let _ = stream.write_all(&frame).await;
                let _ = stream.close().await;
            }
        });
    }
}

/// Answers by-root requests with the requested blocks this peer holds, in request order.
async fn answer_roots(mut incoming: libp2p_stream::IncomingStreams, blocks: Arc<Vec<Block>>) {
    let by_hash: Arc<HashMap<Hash, Block>> = Arc::new(blocks.iter().map(|b| (b.hash(), b.clone())).collect());
    while let Some((_, mut stream)) = incoming.next().await {
        let by_hash = by_hash.clone();
        tokio::spawn(async move {
            let Ok(Some(bytes)) = read_frame_bytes(&mut stream, MAX_REQUEST_FRAME).await else {
                return;
            };
            let Ok(req) = pb::BlocksByRootRequest::decode(bytes) else {
                return;
            };
            let found = req
                .hashes
                .iter()
                .filter_map(|h| <[u8; 32]>::try_from(h.as_ref()).ok())
                .filter_map(|h| by_hash.get(&Hash(h)))
                .map(pb::Block::from)
                .collect();
            let frame = encode_frame(&pb::BlocksResponse {
                code: 0,
                blocks: found,
                error_message: String::new(),
            });
            let _ = stream.write_all(&frame).await;
            let _ = stream.close().await;
        });
    }
}

/// A copy of `block` with a forged signature: same header, so the same block hash.
pub fn forged_copy(block: &Block) -> Vec<u8> {
    let mut forged = block.clone();
    forged.signature.0[9] ^= 0x20;
    encode_block(&forged)
}

/// Bytes that do not decode as a `Block` (tag 0x0f is field 1 with wire type 7, which does not
/// exist), distinct for each `i`.
pub fn undecodable(i: u64) -> Vec<u8> {
    let mut bytes = vec![0x0fu8; 16];
    bytes.extend_from_slice(&i.to_be_bytes());
    bytes
}

/// A block after `parent` whose signature does not verify (rule 5), distinct for each `i`.
pub fn bad_signature(dev: &DevChain, parent: &BlockHeader, i: u64) -> Vec<u8> {
    let mut block = dev.child(parent, Bytes::from(format!("bad signature {i}").into_bytes()));
    block.signature.0[3] ^= 0x01;
    encode_block(&block)
}

/// A block after `parent` signed by a key that is no authority of the chain (rule 4).
pub fn wrong_proposer(parent: &BlockHeader, i: u64) -> Vec<u8> {
    let payload = Bytes::from(format!("wrong proposer {i}").into_bytes());
    let block = Block::new_signed(
        parent.height + 1,
        parent.hash(),
        parent.timestamp_ms + 1,
        payload,
        &SigningKey::dev(4000),
    );
    encode_block(&block)
}

/// A block `ahead` heights above `head`, validly signed by the scheduled authority, whose
/// parent is no block of the chain.
pub fn far_ahead(dev: &DevChain, head: &BlockHeader, ahead: u64, i: u64) -> Vec<u8> {
    let height: Height = head.height + ahead;
    let payload = Bytes::from(format!("far ahead {i}").into_bytes());
    let parent = Hash::of(format!("no parent {i}").as_bytes());
    let block = Block::new_signed(height, parent, head.timestamp_ms + 1, payload, dev.key_at(height));
    encode_block(&block)
}

/// Block 1 of another chain (its own genesis, authority dev key 7), as if announced on ours.
pub fn other_chain(i: u64) -> Vec<u8> {
    let mut spec = ChainSpec::dev(&format!("elsewhere-{i}"), 1, 1_700_000_000_000, 1000, 32).expect("spec");
    spec.authorities = vec![SigningKey::dev(7).public_key()];
    let dev = DevChain::new(&spec).expect("dev chain");
    encode_block(&dev.child(&spec.genesis().header, Bytes::from_static(b"elsewhere")))
}

/// The Status of a node whose head is `head` on the chain of genesis `genesis`.
pub fn status_at(genesis: &Block, head: &Block) -> pb::Status {
    pb::Status {
        genesis_hash: Bytes::copy_from_slice(&genesis.hash().0),
        head_height: head.height(),
        head_hash: Bytes::copy_from_slice(&head.hash().0),
        finalized_height: 0,
        finalized_hash: Bytes::copy_from_slice(&genesis.hash().0),
        earliest_height: 0,
    }
}
