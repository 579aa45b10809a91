//! The network's configuration and its defaults.

use std::time::Duration;

use libp2p::Multiaddr;
use libp2p::identity::Keypair;
use syncnode_proto::peer_score::ScoreConfig;
use syncnode_types::Hash;

/// Default of [`NetworkConfig::serve_blocks_per_sec_while_syncing`].
pub const DEFAULT_SERVE_BLOCKS_PER_SEC_WHILE_SYNCING: u32 = 2048;

/// A token bucket's size and refill rate, in the unit of its protocol (requests or blocks).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Quota {
    /// Most units that may be spent at once (the bucket's capacity).
    pub burst: u32,
    /// Units added back per second.
    pub per_second: f64,
}

impl Quota {
    /// A quota of `burst` units, refilled at `per_second`.
    pub const fn new(burst: u32, per_second: f64) -> Self {
        Quota { burst, per_second }
    }
}

/// Per-peer, per-protocol limits on inbound requests.
///
/// Status is counted in requests; blocks-by-range in blocks asked for (`count`); blocks-by-root
/// in hashes asked for. A request that costs more than a bucket's `burst` costs `burst`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimits {
    /// `/syncnode/status/1`, in requests.
    pub status: Quota,
    /// `/syncnode/blocks_by_range/1`, in blocks asked for.
    pub blocks_by_range: Quota,
    /// `/syncnode/blocks_by_root/1`, in hashes asked for.
    pub blocks_by_root: Quota,
}

impl Default for RateLimits {
    fn default() -> Self {
        RateLimits {
            // Status is exchanged on connect and every 30 s by both sides.
            status: Quota::new(5, 0.5),
            // A syncing peer pulls a whole chain as fast as it can: the per-peer quota only keeps
            // one peer from taking every serving slot; the global serving bound does the rest.
            blocks_by_range: Quota::new(32_768, 65_536.0),
            blocks_by_root: Quota::new(1024, 1024.0),
        }
    }
}

/// Everything the network needs to start. [`NetworkConfig::new`] fills in the defaults.
#[derive(Debug, Clone)]
pub struct NetworkConfig {
    /// The node's libp2p identity.
    pub keypair: Keypair,
    /// Addresses to listen on (TCP and/or QUIC-v1 multiaddrs).
    pub listen: Vec<Multiaddr>,
    /// Peers dialled at start; a `/p2p/<peer id>` suffix also seeds Kademlia.
    pub bootnodes: Vec<Multiaddr>,
    /// Peers remembered from an earlier run (the node's peers file): dialled at start and
    /// redialled while the node has no peer, like the bootnodes, but not trusted by the per-IP
    /// limits.
    pub known_peers: Vec<Multiaddr>,
    /// Bans carried over from an earlier run, each with what was left of it.
    pub restored_bans: Vec<(libp2p::PeerId, Duration)>,
    /// Local-network discovery by mDNS. Off by default.
    pub mdns: bool,
    /// Kademlia discovery (`/syncnode/kad/1.0.0`). On by default.
    pub kademlia: bool,
    /// Peers the node keeps (default 50): our own dials stop a quarter below it, inbound peers
    /// are admitted up to it, and the peers above it are pruned (see [`crate::admission`]).
    pub max_peers: u32,
    /// Inbound peers let in above `max_peers`, each for `excess_grace`, so that a newcomer whose
    /// bootnodes are full can still find other peers through them (default 4).
    pub excess_inbound: u32,
    /// How long a peer let in above `max_peers` is kept before it may be pruned (default 10 s:
    /// identify and a Kademlia lookup take a few round trips).
    pub excess_grace: Duration,
    /// Most connections to one peer (default 2).
    pub max_connections_per_peer: u32,
    /// Per-IP limits on inbound connections and identities (loopback and trusted IPs exempt).
    pub ip_limits: crate::ip_limit::IpLimits,
    /// Bounds on inbound handshakes: their deadline and how many may be in progress, in all and
    /// per subnet (see [`crate::door`]).
    pub handshake: crate::door::HandshakeLimits,
    /// The genesis hash of our chain; peers on another chain are disconnected and banned.
    pub genesis_hash: Hash,
    /// How often Status is re-exchanged with each peer (default 30 s).
    pub status_interval: Duration,
    /// Deadline of one request/response exchange, for both directions (default 10 s). An
    /// inbound requester that has not finished its frame by then is charged for stalling.
    pub request_timeout: Duration,
    /// The score policy.
    pub score: ScoreConfig,
    /// Inbound request rate limits.
    pub rate_limits: RateLimits,
    /// Most block requests served at once (each on a blocking thread).
    pub max_concurrent_serving: usize,
    /// Most block requests waiting for a serving slot; beyond it requests are answered
    /// `RESOURCE_UNAVAILABLE`.
    pub max_queued_serving: usize,
    /// Most of those (running or queued) one peer may hold at once; beyond it its requests are
    /// answered `RESOURCE_UNAVAILABLE`, so one peer opening many streams cannot take every slot
    /// from the others. While others are served a peer also holds at most its fair share of the
    /// slots, and the last eighth is kept for peers holding none. Our own sync holds at most
    /// `SyncConfig::max_requests_per_peer` (4) at once.
    pub max_serving_per_peer: usize,
    /// Most bytes of blocks read for responses and not yet fully written to their requesters
    /// (default 64 MiB), on every path: a serving task takes room before it reads (in its
    /// requester's turn, at most its fair share of this, at least one block of the largest
    /// payload), reads no more than that room, and gives it back once the response is written.
    /// A task that gets no room within the serving budget is answered `RESOURCE_UNAVAILABLE`.
    /// See [`crate::serve_gate`].
    pub max_serving_bytes: usize,
    /// Global cap on blocks served per second (all peers together, granted to requesters in
    /// turn; an answer is cut to the blocks granted); `None` for no cap.
    pub serve_blocks_per_sec: Option<u32>,
    /// Global cap on blocks served per second while our own sync is behind (the node says so
    /// through [`crate::NetworkHandle::set_syncing`]), on top of `serve_blocks_per_sec`; `None`
    /// for no such cap. Default 2,048: about what our own import takes in a second on one core,
    /// so a peer syncing from us keeps pace with what we have, while a flood of requests cannot
    /// take the CPU our import needs.
    pub serve_blocks_per_sec_while_syncing: Option<u32>,
    /// Capacity of the event channel to the node.
    pub event_buffer: usize,
    /// Capacity of the command channel from the handles.
    pub command_buffer: usize,
    /// Gossipsub heartbeat (default 1 s; tests shorten it so meshes form quickly).
    pub gossip_heartbeat: Duration,
    /// The chain's slot time, which scales gossipsub's peer score decay (default 1 s).
    pub gossip_slot: Duration,
    /// How long an idle connection is kept open.
    pub idle_connection_timeout: Duration,
    /// Identify agent string (default `syncnode/<crate version>`).
    pub agent_version: String,
    /// How often the peer manager lifts expired bans and refreshes metrics (default 1 s).
    pub maintenance_interval: Duration,
    /// How often a Kademlia random walk looks for more peers while below `max_peers`.
    pub discovery_interval: Duration,
    /// Lab only: the emulated link every TCP connection goes through (QUIC is then off).
    pub link: Option<crate::link::LinkConfig>,
}

impl NetworkConfig {
    /// A configuration with the defaults of this crate, listening nowhere and dialling no one.
    pub fn new(keypair: Keypair, genesis_hash: Hash) -> Self {
        NetworkConfig {
            keypair,
            listen: Vec::new(),
            bootnodes: Vec::new(),
            known_peers: Vec::new(),
            restored_bans: Vec::new(),
            mdns: false,
            kademlia: true,
            max_peers: 50,
            excess_inbound: 4,
            excess_grace: Duration::from_secs(10),
            max_connections_per_peer: 2,
            ip_limits: crate::ip_limit::IpLimits::default(),
            handshake: crate::door::HandshakeLimits::default(),
            genesis_hash,
            status_interval: syncnode_proto::STATUS_INTERVAL,
            request_timeout: syncnode_proto::RESPONSE_DEADLINE,
            score: ScoreConfig::default(),
            rate_limits: RateLimits::default(),
            max_concurrent_serving: 8,
            max_queued_serving: 64,
            max_serving_per_peer: 8,
            max_serving_bytes: 64 * 1024 * 1024,
            serve_blocks_per_sec: None,
            serve_blocks_per_sec_while_syncing: Some(DEFAULT_SERVE_BLOCKS_PER_SEC_WHILE_SYNCING),
            event_buffer: 1024,
            command_buffer: 1024,
            gossip_heartbeat: Duration::from_secs(1),
            gossip_slot: Duration::from_secs(1),
            idle_connection_timeout: Duration::from_secs(60),
            agent_version: format!("syncnode/{}", env!("CARGO_PKG_VERSION")),
            maintenance_interval: Duration::from_secs(1),
            discovery_interval: Duration::from_secs(30),
            link: None,
        }
    }
}
