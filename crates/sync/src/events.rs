//! The values that cross the engine's boundary: what the node tells it, and what it asks the node to do.

use syncnode_types::{Block, Hash, Height};

use syncnode_proto::peer_score::PeerAction;

/// Names one request the engine asked the node to send. Unique for the engine's lifetime.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(pub u64);

/// Names one import the engine asked the node to perform. Unique for the engine's lifetime.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ImportId(pub u64);

/// What a peer's latest `Status` says it has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerStatus {
    pub head_height: Height,
    pub head_hash: Hash,
    pub finalized_height: Height,
    /// Lowest height from which the peer serves an unbroken range up to its head.
    pub earliest_height: Height,
}

/// What the engine holds of one peer: the node's only record of a peer's Status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerView {
    /// Its latest Status.
    pub status: PeerStatus,
    /// The head it counts for in the sync target (`None`: its data was proven wrong).
    pub counts_for: Option<Height>,
}

/// Where backfill starts and where it stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackfillStart {
    /// Height of the lowest stored block L (history below it is missing).
    pub lowest_height: Height,
    /// `L.parent_hash`: the hash the block at `lowest_height - 1` must have.
    pub lowest_parent_hash: Hash,
    /// Lowest height to backfill to: 0 means down to genesis.
    pub floor_height: Height,
}

/// What the local store holds when the engine starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalChain {
    pub head_height: Height,
    pub head_hash: Hash,
    pub finalized_height: Height,
    /// How far below its head the chain is final (`ChainSpec::finality_depth`): a fork is
    /// searched for no lower than that.
    pub finality_depth: u64,
    pub genesis_hash: Hash,
    /// `Some` when history below a checkpoint is missing and must be backfilled.
    pub backfill: Option<BackfillStart>,
}

/// Why a request produced no response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestFailure {
    /// No response before the deadline (reported by the node's own timer; the engine also fires
    /// its deadlines in [`crate::SyncEngine::tick`]).
    #[error("timed out")]
    Timeout,
    /// The peer answered `RATE_LIMITED`.
    #[error("rate limited")]
    RateLimited,
    /// The peer answered `RESOURCE_UNAVAILABLE`.
    #[error("resource unavailable")]
    ResourceUnavailable,
    /// The connection closed before the response.
    #[error("disconnected")]
    Disconnected,
    /// Oversize or undecodable frame, stalled stream, or an error code it may not send.
    #[error("protocol violation")]
    ProtocolViolation,
    /// The request could not be sent for a local reason (no charge).
    #[error("local failure: {0}")]
    Local(String),
}

/// Why the node could not import blocks the engine offered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImportError {
    /// The first block does not link to what the store holds. The store's own head (for forward
    /// imports) or lowest block (for backfill) is reported so the engine can restart from it. Never a
    /// peer's fault: the engine checked the link against its own view before offering the blocks.
    #[error("does not link to the local chain (store at {height} {hash})")]
    DoesNotLink { height: Height, hash: Hash },
    /// Forward only: the blocks were stored, but as a side chain no longer than the canonical
    /// one, so the store's head stayed at `height`/`hash` (fork choice: the longest chain; equal
    /// heights, the first seen). Not a fault: while the engine fetches a fork, the next batch
    /// links to these blocks; otherwise it restarts from the store's head.
    #[error("stored as a side chain (the head stays at {height} {hash})")]
    SideChain { height: Height, hash: Hash },
    /// A block broke rule 1 or 2 against its stored parent: the peer that sent it is charged.
    #[error("block {height} rejected: {reason}")]
    Rejected { height: Height, reason: String },
    /// The store failed (disk full, I/O error): our fault, never a peer's. Retried later.
    #[error("local failure: {0}")]
    Local(String),
}

/// Which way an import extends the chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Above the head: range sync, gossip and parent lookups. The first block's parent is the head.
    Forward,
    /// Below the lowest stored block: the last block's hash is the lowest block's parent hash.
    Backfill,
}

/// What the engine is doing, as `/status` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SyncState {
    /// No peer claims a head above ours (and backfill, if any, is complete).
    Synced,
    /// Peers are ahead and blocks are arriving.
    Syncing,
    /// Peers are ahead but none delivered anything for `stall_after_ms`.
    Stalled,
    /// Forward sync is done; history below the checkpoint is still being fetched.
    Backfilling,
}

/// Something the engine asks the node to do. Drain them with [`crate::SyncEngine::poll_action`]
/// after every call, and perform them in the order given.
#[derive(Debug, Clone, PartialEq)]
pub enum Action<P> {
    /// Send `BlocksByRange { start_height, count }` to `peer`; report the outcome with `id`.
    SendRangeRequest {
        peer: P,
        id: RequestId,
        start_height: Height,
        count: u64,
        timeout_ms: u64,
    },
    /// Send `BlocksByRoot { hashes }` to `peer`; report the outcome with `id`.
    SendRootRequest {
        peer: P,
        id: RequestId,
        hashes: Vec<Hash>,
        timeout_ms: u64,
    },
    /// Ask `peer` for a fresh Status (its last one is too old to give it work).
    RequestStatus { peer: P },
    /// Commit these blocks atomically, in the order the imports were emitted, checking rules 1–2
    /// against the store; report with `id`. Forward: ascending, the first one's parent is the head.
    /// Backfill: ascending, the last one's hash is the lowest stored block's parent hash.
    Import {
        id: ImportId,
        blocks: Vec<Block>,
        direction: Direction,
    },
    /// Apply `action` to `peer`'s score in the network's score book (and disconnect or ban per
    /// its verdict): a charge, or the credit [`PeerAction::UsefulResponse`] for blocks imported.
    /// The engine keeps no score of its own.
    Penalise {
        peer: P,
        action: PeerAction,
        reason: &'static str,
    },
    /// The sync state changed.
    StateChanged(SyncState),
    /// The sync target (the highest head credibly claimed by a peer, or our own) changed.
    TargetChanged(Height),
    /// Backfill reached its floor (or genesis): it does no more work from now on.
    BackfillComplete { lowest_height: Height },
}

/// Numbers for metrics and for the tests' invariants.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EngineStats {
    /// Forward blocks downloaded and not yet confirmed imported.
    pub buffered_blocks: usize,
    /// Their bytes ([`Block::size_bytes`]).
    pub buffered_bytes: usize,
    /// Backfill blocks downloaded and not yet confirmed imported.
    pub backfill_buffered_blocks: usize,
    /// Their bytes.
    pub backfill_buffered_bytes: usize,
    /// Forward batches that exist (any state).
    pub forward_batches: usize,
    /// Backfill batches that exist (any state).
    pub backfill_batches: usize,
    /// Requests sent and not yet answered, failed or timed out.
    pub in_flight_requests: usize,
    /// Peers with a Status.
    pub peers: usize,
    /// Parent lookups in progress.
    pub lookups: usize,
    /// Blocks held by parent lookups.
    pub lookup_blocks: usize,
    /// Confirmed local head.
    pub head_height: Height,
    /// Lowest block stored, when backfill is configured.
    pub backfill_lowest: Option<Height>,
}
