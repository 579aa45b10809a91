//! Hostile test peers: real libp2p peers (TCP + Noise + Yamux, the node's own stack) that speak
//! syncnode's protocols of PROTOCOL.md §3 but misbehave on purpose, one [`Misbehaviour`] each.
//!
//! A peer holds the honest chain in memory (read from `syncnode db export` of a seeder's store
//! before the seeder starts) and answers Status and `blocks_by_range` from it, bending its answers
//! as its misbehaviour says: a block that breaks one validity rule, right blocks at the wrong
//! heights, blocks nobody asked for, a batch that does not link to the chain below, a frame over
//! the limit, bytes that do not decode, silence, a trickle, a Status that claims far more than it
//! serves, a flood of requests of its own, or a new identity after every ban. Streams are raw
//! (libp2p-stream), so a peer can write any bytes at any pace.
//!
//! Every loop here is bounded (by a count, a deadline, or the life of its connection), and every
//! buffer of held streams is capped, so a test that fails leaves nothing running once its
//! [`tokio::runtime::Runtime`] is dropped. Clients (requests, floods, the runtime) are in
//! [`crate::client`].

use std::collections::VecDeque;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{AsyncWriteExt, StreamExt};
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId, StreamProtocol, identity};
use prost::Message;
use syncnode_proto::frame::{decode_frame, encode_frame, read_frame_bytes};
use syncnode_proto::{
    BLOCKS_BY_RANGE_PROTOCOL, BLOCKS_BY_ROOT_PROTOCOL, MAX_REQUEST_FRAME, MAX_RESPONSE_FRAME,
    STATUS_PROTOCOL, pb,
};
use syncnode_types::{Block, ChainSpec, DevChain, Hash, Height, MAX_PAYLOAD_BYTES, SigningKey};

use crate::client::{flood, raw_swarm};

mod answer;
mod chain;

use answer::{Answer, answer, ok_frame};
pub use chain::Chain;

/// One way to misbehave. Each hostile peer has exactly one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Misbehaviour {
    /// Rule 1: a block whose parent hash is not its parent's (re-signed, so rules 3–5 hold).
    BadParent,
    /// Rule 2: a block whose timestamp equals its parent's (re-signed).
    StaleTimestamp,
    /// Rule 3: a payload that does not hash to the header's `payload_hash`.
    BadPayloadHash,
    /// Rule 3: a payload of 1 MiB + 1 byte (header re-made and re-signed to match it).
    OversizePayload,
    /// Rule 4: a block signed by a key that is not the scheduled authority.
    WrongProposer,
    /// Rule 5: a signature that does not verify.
    BadSignature,
    /// Right blocks, one height above the heights asked for.
    WrongHeights,
    /// The blocks asked for plus one more than `count`.
    Unrequested,
    /// A batch of valid, internally linked blocks whose first block does not link to the block
    /// below it (a different chain).
    Unlinked,
    /// A response frame announcing more than 16,777,216 bytes.
    OversizeFrame,
    /// A frame whose bytes do not decode as protobuf.
    Garbage,
    /// Reads the request and never answers.
    Silent,
    /// Answers correctly, one byte a second.
    Trickle,
    /// Claims a head a million blocks beyond its own; serves honestly up to its real head.
    LyingStatus,
    /// Serves honestly, and floods the node with maximal range requests and Status requests.
    Flood,
    /// Sends blocks with bad signatures and comes back under a new identity after each ban.
    Reincarnating,
    /// Claims a head a thousand times its own and answers every range request
    /// `RESOURCE_UNAVAILABLE` (not in [`Misbehaviour::ALL`]: the claims scenarios use it).
    ClaimsAndRefuses,
    /// Claims a head a thousand times its own and answers every range request `SERVER_ERROR`.
    ClaimsAndErrs,
    /// Claims a head a thousand times its own and resets every range request's stream.
    ClaimsAndResets,
}

impl Misbehaviour {
    /// Every misbehaviour, one hostile peer each in the scenarios.
    pub const ALL: [Misbehaviour; 16] = [
        Misbehaviour::BadParent,
        Misbehaviour::StaleTimestamp,
        Misbehaviour::BadPayloadHash,
        Misbehaviour::OversizePayload,
        Misbehaviour::WrongProposer,
        Misbehaviour::BadSignature,
        Misbehaviour::WrongHeights,
        Misbehaviour::Unrequested,
        Misbehaviour::Unlinked,
        Misbehaviour::OversizeFrame,
        Misbehaviour::Garbage,
        Misbehaviour::Silent,
        Misbehaviour::Trickle,
        Misbehaviour::LyingStatus,
        Misbehaviour::Flood,
        Misbehaviour::Reincarnating,
    ];

    /// Whether the peer sends data that breaks a validity rule or the protocol's shape, for
    /// which PROTOCOL.md and the score policy demand a ban.
    pub fn sends_invalid_data(self) -> bool {
        !matches!(
            self,
            Misbehaviour::Silent | Misbehaviour::Trickle | Misbehaviour::LyingStatus | Misbehaviour::Flood
        ) && !self.claims_and_refuses()
    }

    /// Whether it claims a head a thousand times its own and serves no range at all.
    pub fn claims_and_refuses(self) -> bool {
        matches!(
            self,
            Misbehaviour::ClaimsAndRefuses | Misbehaviour::ClaimsAndErrs | Misbehaviour::ClaimsAndResets
        )
    }

    /// Whether it breaks the wire protocol (frame over the limit, undecodable bytes): charged
    /// `ProtocolViolation`, which bans on the second offence.
    pub fn breaks_the_wire(self) -> bool {
        matches!(self, Misbehaviour::OversizeFrame | Misbehaviour::Garbage)
    }
}

/// Counters of what a hostile peer did and saw.
#[derive(Debug, Default)]
pub struct PeerStats {
    pub connections: AtomicU64,
    pub status_answered: AtomicU64,
    pub range_requests: AtomicU64,
    /// Answers this peer bent as its misbehaviour says.
    pub hostile_answers: AtomicU64,
    pub flood_sent: AtomicU64,
    pub flood_ok: AtomicU64,
    pub flood_refused: AtomicU64,
    pub flood_failed: AtomicU64,
}

impl PeerStats {
    /// Adds one to `counter`.
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// A counter's value.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// Streams held open unanswered, per peer.
const MAX_HELD_STREAMS: usize = 64;
/// Times a peer that broke the wire reconnects after being disconnected.
const MAX_COMEBACKS: usize = 4;
/// How long a peer that was disconnected (or banned, under a new identity) waits before it dials
/// the node again: short, so that it comes back while the node still has blocks to ask for.
const COMEBACK_DELAY: Duration = Duration::from_millis(100);
/// Most bytes a trickle writes before it gives up (the node resets the stream long before).
const MAX_TRICKLE_BYTES: usize = 120;

/// Serves the range protocol on one identity's swarm.
async fn serve_range(
    mut incoming: libp2p_stream::IncomingStreams,
    chain: Arc<Chain>,
    how: Misbehaviour,
    stats: Arc<PeerStats>,
) {
    let held = Arc::new(Mutex::new(VecDeque::new()));
    while let Some((_, mut stream)) = incoming.next().await {
        let (chain, stats, held) = (chain.clone(), stats.clone(), held.clone());
        tokio::spawn(async move {
            let Ok(Some(bytes)) = read_frame_bytes(&mut stream, MAX_REQUEST_FRAME).await else {
                return;
            };
            let Ok(req) = pb::BlocksByRangeRequest::decode(bytes) else {
                return;
            };
            PeerStats::bump(&stats.range_requests);
            let count = req.count.min(1024);
            let (reply, bent) = answer(&chain, how, req.start_height, count);
            if bent {
                PeerStats::bump(&stats.hostile_answers);
            }
            match reply {
                Answer::Frame(bytes) => {
                    let _ = stream.write_all(&bytes).await;
                    let _ = stream.close().await;
                }
                Answer::Reset => drop(stream),
                Answer::Silence => {
                    let mut held = held.lock().expect("held streams");
                    held.push_back(stream);
                    if held.len() > MAX_HELD_STREAMS {
                        held.pop_front();
                    }
                }
                Answer::Trickle(bytes) => {
                    for byte in bytes.iter().take(MAX_TRICKLE_BYTES) {
                        if stream.write_all(&[*byte]).await.is_err() || stream.flush().await.is_err() {
                            return;
                        }
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        });
    }
}

/// Answers every Status request with `status`, or, `flapping`, with `status` naming another head
/// hash each time.
async fn serve_status(
    mut incoming: libp2p_stream::IncomingStreams,
    mut status: pb::Status,
    flapping: bool,
    stats: Arc<PeerStats>,
) {
    let mut answers = 0u64;
    while let Some((_, mut stream)) = incoming.next().await {
        if flapping {
            answers += 1;
            status.head_hash = Bytes::copy_from_slice(&Hash::of(&answers.to_be_bytes()).0);
        }
        let (frame, stats) = (encode_frame(&status), stats.clone());
        tokio::spawn(async move {
            if read_frame_bytes(&mut stream, MAX_REQUEST_FRAME).await.is_ok() {
                PeerStats::bump(&stats.status_answered);
                let _ = stream.write_all(&frame).await;
                let _ = stream.close().await;
            }
        });
    }
}

/// Answers every by-root request with an empty `OK` (the scenarios gossip nothing).
async fn serve_root(mut incoming: libp2p_stream::IncomingStreams) {
    let frame = ok_frame(&[]);
    while let Some((_, mut stream)) = incoming.next().await {
        let frame = frame.clone();
        tokio::spawn(async move {
            if read_frame_bytes(&mut stream, MAX_REQUEST_FRAME).await.is_ok() {
                let _ = stream.write_all(&frame).await;
                let _ = stream.close().await;
            }
        });
    }
}

/// One identity of a hostile peer, with what it did under that identity.
pub type Identity = (PeerId, Arc<PeerStats>);

/// A running hostile peer.
pub struct HostilePeer {
    pub how: Misbehaviour,
    /// Where its first identity listens.
    pub addr: Multiaddr,
    /// Every identity it has used, first to last, with what that identity did.
    pub identities: Arc<Mutex<Vec<Identity>>>,
    node: Arc<Mutex<Option<(PeerId, Multiaddr)>>>,
}

/// Settings of a hostile peer.
#[derive(Debug, Clone, Copy)]
pub struct HostileConfig {
    /// Identities a [`Misbehaviour::Reincarnating`] peer goes through at most.
    pub max_identities: usize,
    /// Concurrent streams of a [`Misbehaviour::Flood`] peer.
    pub flood_streams: usize,
    /// How long a flood lasts from its first connection.
    pub flood_for: Duration,
    /// Its Status names another head hash in every answer (the height stays).
    pub flapping_head: bool,
}

impl Default for HostileConfig {
    fn default() -> Self {
        HostileConfig {
            max_identities: 4,
            flood_streams: 16,
            flood_for: Duration::from_secs(60),
            flapping_head: false,
        }
    }
}

impl HostilePeer {
    /// Starts a hostile peer on `rt`, listening on 127.0.0.1 (the node under test dials it).
    pub fn spawn(
        rt: &tokio::runtime::Handle,
        chain: Arc<Chain>,
        how: Misbehaviour,
        config: HostileConfig,
    ) -> HostilePeer {
        let identities = Arc::new(Mutex::new(Vec::new()));
        let node = Arc::new(Mutex::new(None));
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let peer = HostilePeer {
            how,
            addr: Multiaddr::empty(),
            identities: identities.clone(),
            node: node.clone(),
        };
        rt.spawn(async move {
            let lives = if how == Misbehaviour::Reincarnating {
                config.max_identities.max(1)
            } else {
                1
            };
            let mut addr_tx = Some(addr_tx);
            for life in 0..lives {
                let key = identity::Keypair::generate_ed25519();
                let stats = Arc::new(PeerStats::default());
                identities
                    .lock()
                    .expect("ids")
                    .push((key.public().to_peer_id(), stats.clone()));
                let ctx = Life {
                    chain: chain.clone(),
                    how,
                    stats,
                    config,
                    node: node.clone(),
                };
                ctx.run(key, addr_tx.take(), life > 0).await;
            }
        });
        let addr = addr_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("hostile peer listening");
        HostilePeer { addr, ..peer }
    }

    /// Tells the peer where the node under test is (a reincarnating peer dials it back with each
    /// new identity).
    pub fn set_node(&self, peer: PeerId, addr: Multiaddr) {
        *self.node.lock().expect("node") = Some((peer, addr));
    }

    /// Every identity it used, with its counters.
    pub fn lives(&self) -> Vec<Identity> {
        self.identities.lock().expect("ids").clone()
    }

    /// The sum of `counter` over every identity.
    pub fn total(&self, counter: impl Fn(&PeerStats) -> &AtomicU64) -> u64 {
        self.lives().iter().map(|(_, s)| PeerStats::get(counter(s))).sum()
    }
}

/// One identity's life: listen (first life) or dial the node (later lives), serve, and end when
/// the last connection closes after at least one was made.
struct Life {
    chain: Arc<Chain>,
    how: Misbehaviour,
    stats: Arc<PeerStats>,
    config: HostileConfig,
    node: Arc<Mutex<Option<(PeerId, Multiaddr)>>>,
}

impl Life {
    /// The node under test, once the test has said where it is (at most 60 s from now).
    async fn wait_for_node(&self) -> Option<(PeerId, Multiaddr)> {
        for _ in 0..600 {
            let target = self.node.lock().expect("node").clone();
            if target.is_some() {
                return target;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        None
    }

    async fn run(
        self,
        key: identity::Keypair,
        addr_tx: Option<std::sync::mpsc::Sender<Multiaddr>>,
        dial: bool,
    ) {
        let mut swarm = raw_swarm(key);
        let mut control = swarm.behaviour().new_control();
        let accept = |control: &mut libp2p_stream::Control, p: &'static str| {
            control
                .accept(StreamProtocol::new(p))
                .expect("protocol accepted once")
        };
        let mut status = self.chain.status();
        if self.how == Misbehaviour::LyingStatus {
            status.head_height += 1_000_000;
            status.head_hash = Bytes::copy_from_slice(&Hash::of(b"a head nobody has").0);
        }
        if self.how.claims_and_refuses() {
            status.head_height = status.head_height.saturating_mul(1000);
            status.head_hash = Bytes::copy_from_slice(&Hash::of(b"a head nobody serves").0);
        }
        let tasks = [
            tokio::spawn(serve_status(
                accept(&mut control, STATUS_PROTOCOL),
                status,
                self.config.flapping_head,
                self.stats.clone(),
            )),
            tokio::spawn(serve_range(
                accept(&mut control, BLOCKS_BY_RANGE_PROTOCOL),
                self.chain.clone(),
                self.how,
                self.stats.clone(),
            )),
            tokio::spawn(serve_root(accept(&mut control, BLOCKS_BY_ROOT_PROTOCOL))),
        ];
        if let Some(tx) = addr_tx {
            swarm
                .listen_on("/ip4/127.0.0.1/tcp/0".parse().expect("addr"))
                .expect("listen");
            loop {
                if let SwarmEvent::NewListenAddr { address, .. } = swarm.select_next_some().await {
                    let _ = tx.send(address);
                    break;
                }
            }
        }
        if dial {
            // A new identity waits until it knows where the node is, then comes back.
            let Some((_, addr)) = self.wait_for_node().await else {
                return;
            };
            tokio::time::sleep(COMEBACK_DELAY).await;
            if swarm.dial(addr).is_err() {
                return;
            }
        }
        let mut ever_connected = false;
        let mut failed_dials = 0;
        let mut comebacks = 0;
        loop {
            match swarm.select_next_some().await {
                SwarmEvent::ConnectionEstablished { peer_id, .. } => {
                    ever_connected = true;
                    PeerStats::bump(&self.stats.connections);
                    if self.how == Misbehaviour::Flood && PeerStats::get(&self.stats.connections) == 1 {
                        let until = Instant::now() + self.config.flood_for;
                        tokio::spawn(flood(
                            control.clone(),
                            peer_id,
                            self.chain.status(),
                            self.config.flood_streams,
                            until,
                            self.stats.clone(),
                        ));
                    }
                }
                SwarmEvent::ConnectionClosed {
                    num_established: 0, ..
                } if ever_connected && self.how == Misbehaviour::Reincarnating => {
                    break;
                }
                SwarmEvent::ConnectionClosed {
                    num_established: 0, ..
                } if self.how.breaks_the_wire() && comebacks < MAX_COMEBACKS => {
                    // Disconnected for a bad frame: come back under the same identity and do it
                    // again (a banned identity is refused at once).
                    comebacks += 1;
                    if let Some((peer, addr)) = self.wait_for_node().await {
                        tokio::time::sleep(COMEBACK_DELAY).await;
                        let opts = libp2p::swarm::dial_opts::DialOpts::peer_id(peer)
                            .addresses(vec![addr])
                            .build();
                        let _ = swarm.dial(opts);
                    }
                }
                SwarmEvent::OutgoingConnectionError { .. } if dial && !ever_connected => {
                    failed_dials += 1;
                    if failed_dials > 3 {
                        break;
                    }
                    let target = self.node.lock().expect("node").clone();
                    if let Some((_, addr)) = target {
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        let _ = swarm.dial(addr);
                    }
                }
                _ => {}
            }
        }
        for task in tasks {
            task.abort();
        }
    }
}
