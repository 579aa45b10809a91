//! syncnode's libp2p network: transports, discovery, gossip, the three request/response
//! protocols of PROTOCOL.md §3, peer scores, bans and rate limits.
//!
//! # What it does
//! [`start`] builds a libp2p swarm (TCP with nodelay + Noise + Yamux, and QUIC-v1; identify as
//! `/syncnode/1.0.0` with agent `syncnode/<version>`; ping; Kademlia under `/syncnode/kad/1.0.0`;
//! mDNS when configured; gossipsub on `/syncnode/{genesis}/blocks/1`) and spawns one task that
//! owns it. The node talks to that task through a cloneable [`NetworkHandle`] (block requests,
//! publish, peer reports, gossip verdicts, peers, dial, shutdown) and hears from it on a bounded
//! channel of [`NetworkEvent`]s (a peer's Status, a disconnect, a gossiped block). The network
//! never touches the store: blocks are served from a [`BlockSource`] the node implements, and
//! our own Status is read from a `tokio::sync::watch` the node keeps current.
//!
//! # The algorithm
//! - **Status**: on a peer's first connection, and every `status_interval`, we send our Status
//!   and read theirs; an inbound Status request is answered from the watch and also tells us
//!   theirs. A peer with another genesis hash is banned in the score book (not charged
//!   otherwise) and disconnected — after our answer went out, so it learns why — and it is not
//!   dialled nor accepted until the ban expires. Others' Statuses go to the node as events.
//! - **Serving** a block request: decode (the frame limit of 65,536 bytes is checked before any
//!   allocation; a bad frame resets the stream and charges the peer), validate (`count` 1..=1024,
//!   1..=128 hashes, else `INVALID_REQUEST` and a low-tolerance charge: one such mistake keeps
//!   the connection, a second within a half-life costs it), rate-limit per peer and protocol with
//!   token buckets (`RATE_LIMITED`), bound the work queued (`RESOURCE_UNAVAILABLE` beyond
//!   `max_concurrent_serving + max_queued_serving`, or beyond `max_serving_per_peer` of them or
//!   its fair share of them for one requester, the last eighth kept for requesters holding
//!   none), then a task waits, holding nothing, for its requester's turn at the
//!   [`serve_gate`]: room in the byte budget `max_serving_bytes` (at most the requester's fair
//!   share while others wait; freed room goes first to the waiting requester served least) and,
//!   with the optional global blocks-per-second pacer (and, while the node says its own sync is
//!   behind, `serve_blocks_per_sec_while_syncing`), the blocks it may send now. It then waits
//!   for a serving permit and reads no more than it was granted from the source on a blocking
//!   thread. What the source returns is cut to consecutive heights from the start (or requested
//!   hashes in order), to a response frame of at most 16,777,216 bytes and to its room: an
//!   answer larger than what is free goes out short rather than wait. The room is held until
//!   the response is written, so blocks read and not yet written never exceed
//!   `max_serving_bytes` (`syncnode_network_serving_bytes_held` and its `_peak` in /metrics).
//!   Serving is bounded by 3/4 of the 10 s deadline (what cannot be served in time is answered
//!   `RESOURCE_UNAVAILABLE`). The
//!   codec bounds every read by the deadline: a requester that has not finished its frame by
//!   then, like one whose frame is oversize or undecodable, reaches the event loop as a
//!   violation, is charged, and its stream is closed unanswered (libp2p's request/response would
//!   otherwise drop such a stream without saying who sent it).
//! - **Requesting** blocks: [`NetworkHandle::request_range`] and
//!   [`NetworkHandle::request_roots`] return the typed [`BlocksResponse`] or a [`RequestError`]
//!   that tells timeout, disconnect, wire violation (already charged here) and a non-OK code
//!   apart, so the sync engine can judge the peer. The content (heights, links, signatures) is
//!   the engine's to check.
//! - **Peers**: scores come from [`syncnode_proto::peer_score::PeerScores`], the policy shared with
//!   the engine. The network charges only wire-level violations (oversize or undecodable frames,
//!   stalled streams, invalid requests, undecodable gossip); the node reports the rest through
//!   [`NetworkHandle::report`]. A `Disconnect` verdict closes the peer's connections; a `Ban`
//!   verdict also blocks it (`allow_block_list`) until the ban expires, checked every
//!   `maintenance_interval`. Connections are capped at `max_peers` distinct peers and
//!   `max_connections_per_peer` each.
//! - **Gossip**: the message id is BLAKE3 of the published bytes, so a copy of a block with a
//!   forged signature or payload has another id than the real block and cannot make gossipsub
//!   drop it as a duplicate. Messages are validated by the node: a block is forwarded only after
//!   [`NetworkHandle::report_gossip`] says `Accept`. Gossipsub's own peer score is on (terms and
//!   thresholds in [`gossip`]): each `Reject` weighs on the sender's mesh place there as well.
//!
//! # Invariants
//! - Nothing on the network task blocks: serving runs elsewhere, events to the node are sent with
//!   `try_send` (gossip blocks the node cannot take are left unforwarded; lifecycle events wait in
//!   a bounded queue).
//! - Every channel and queue is bounded; every frame limit is checked before allocation.
//! - No input from a peer can panic the node; we never charge a peer for our own failure (a slow
//!   answer of ours, a local I/O error, a request the peer declined).
//! - A response never skips a height and never exceeds the response frame limit.
//!
//! # Modules
//! [`config`], [`behaviour`] (swarm and connection policy), [`codec`], [`serve`], [`serve_gate`],
//! [`rate_limit`], [`peer_manager`], [`peer_book`] (what the peers file is made of), [`gossip`], [`metrics`], [`handle`], and the network task
//! in `service` and `rpc`.

#![forbid(unsafe_code)]

pub mod admission;
pub mod ban_book;
pub mod behaviour;
pub mod codec;
pub mod config;
pub mod door;
pub mod error;
pub mod gossip;
pub mod handle;
pub mod ip_limit;
pub mod link;
pub mod metrics;
pub mod peer_book;
pub mod peer_manager;
pub mod rate_limit;
mod rpc;
pub mod serve;
pub mod serve_gate;
mod service;
pub mod transport;
mod upkeep;

pub use config::{NetworkConfig, Quota, RateLimits};
pub use error::{NetworkError, PublishError, RequestError, SourceError};
pub use gossip::GossipAcceptance;
pub use handle::{NetworkEvent, NetworkHandle};
pub use libp2p::gossipsub::MessageId;
pub use libp2p::identity::Keypair;
pub use libp2p::{Multiaddr, PeerId};
pub use link::LinkConfig;
pub use peer_book::KnownPeer;
pub use peer_manager::PeerSummary;
pub use serve::BlockSource;
pub use service::start;
pub use syncnode_proto::peer_score::{PeerAction, ScoreConfig};
pub use syncnode_proto::{BlocksByRangeRequest, BlocksByRootRequest, BlocksResponse, Status};
