//! [`SyncEngine`]: the event entry points, routing each event to the chain of batches (forward or
//! backfill) or the parent lookup that owns it, and the `drive` step that runs after every event.

use syncnode_types::{Block, Hash, Height};

use crate::backfill::Backfill;
use crate::chain::{Chain, Window};
use crate::config::SyncConfig;
use crate::events::{
    Action, EngineStats, ImportError, ImportId, LocalChain, PeerStatus, PeerView, RequestFailure, RequestId,
    SyncState,
};
use crate::forward::{ChainEnd, Forward};
use crate::lookup::Lookups;
use crate::peers::{ClaimRecord, PeerEntry, PeerKey, REMEMBERED_PEERS};
use crate::router::{ChainId, ImportPurpose, RequestPurpose, Router};
use syncnode_proto::peer_score::PeerAction;

/// The sans-IO sync engine. See the crate documentation for the algorithm and its invariants.
#[derive(Debug)]
pub struct SyncEngine<P: PeerKey> {
    router: Router<P>,
    forward: Chain<P, Forward<P>>,
    backfill: Option<Chain<P, Backfill>>,
    lookups: Lookups<P>,
    state: SyncState,
    now_ms: u64,
    /// Whether any peer's Status arrived: before that our head is unchecked.
    heard_status: bool,
    /// The caps of departed peers, restored when they come back (see `peers.rs`).
    departed: lru::LruCache<P, ClaimRecord>,
}

impl<P: PeerKey> SyncEngine<P> {
    /// An engine over the given local chain, or the reason `config` cannot run.
    /// `seed` makes retry jitter and tie-breaks reproducible.
    pub fn new(config: SyncConfig, local: LocalChain, seed: u64) -> Result<Self, crate::config::ConfigError> {
        config.validate()?;
        let head = ChainEnd::at(local.head_height, local.head_hash);
        let forward_window = Window {
            bytes: config.window_bytes,
            batches: config.window_batches,
        };
        let backfill_window = Window {
            bytes: config.backfill_window_bytes,
            batches: config.backfill_window_batches,
        };
        let mut engine = SyncEngine {
            router: Router::new(config, seed),
            forward: Chain::new(
                Forward::new(head, local.finalized_height, local.finality_depth),
                forward_window,
            ),
            backfill: local
                .backfill
                .map(|start| Chain::new(Backfill::new(start, local.genesis_hash), backfill_window)),
            lookups: Lookups::new(),
            state: SyncState::Synced,
            now_ms: 0,
            heard_status: false,
            departed: lru::LruCache::new(REMEMBERED_PEERS.try_into().unwrap_or(std::num::NonZeroUsize::MIN)),
        };
        engine.finish_backfill_if_done();
        engine.state = engine.compute_state(0);
        Ok(engine)
    }

    // ----- events in -----

    /// A peer connected with, or sent, a Status.
    pub fn peer_status(&mut self, now_ms: u64, peer: P, status: PeerStatus) {
        self.now_ms = self.now_ms.max(now_ms);
        self.heard_status = true;
        let peers = &mut self.router.peers.entries;
        match peers.get_mut(&peer) {
            Some(entry) => entry.refresh(status, now_ms),
            None => {
                if peers.len() >= self.router.config.max_peers {
                    tracing::debug!(?peer, "peer table full; status ignored");
                    return;
                }
                let entry = match self.departed.pop(&peer) {
                    Some(record) => PeerEntry::returned(status, now_ms, record),
                    None => PeerEntry::new(status, now_ms),
                };
                peers.insert(peer, entry);
            }
        }
        self.drive(now_ms);
    }

    /// A peer is gone: its request fails (no charge) and its claims no longer count; a cap on
    /// them is kept for its return.
    pub fn peer_disconnected(&mut self, now_ms: u64, peer: &P) {
        self.now_ms = self.now_ms.max(now_ms);
        let entry = self.router.peers.entries.remove(peer);
        if let Some(record) = entry.as_ref().and_then(PeerEntry::claim_record) {
            self.departed.put(peer.clone(), record);
        }
        if let Some(entry) = entry {
            for (id, _) in entry.in_flight {
                if let Some(request) = self.router.take_request(id) {
                    self.request_settled_without_data(now_ms, id, request, None);
                }
            }
        }
        self.lookups.forget_peer(peer);
        self.drive(now_ms);
    }

    /// Request `id` was answered with blocks the caller is now verifying. The peer leaves the busy
    /// set and may be given its next request while they are checked: our verification overlaps
    /// its next answer instead of delaying it.
    /// The deadline stops (verification is our work, never the peer's fault). The request is
    /// settled later by [`SyncEngine::range_response`] or [`SyncEngine::response_invalid`].
    pub fn response_received(&mut self, now_ms: u64, id: RequestId) {
        self.now_ms = self.now_ms.max(now_ms);
        let Some(request) = self.router.requests.get_mut(&id).filter(|r| !r.answered()) else {
            return;
        };
        request.answered_ms = Some(now_ms);
        if let Some(entry) = self.router.peers.entries.get_mut(&request.peer)
            && entry.settle(id)
        {
            entry.slow_until_ms = 0; // it answers again
            entry.late = false;
        }
        if self.router.hedge.is_some_and(|h| h.primary == id) {
            // Its first answer is here: the hedge racing it is no longer needed.
            self.router.hedge_settled(id);
        }
        self.drive(now_ms);
    }

    /// Blocks answering range request `id`. The caller has already verified rules 3–5 of each.
    /// Without a [`SyncEngine::response_received`] first, the peer stays busy until this call.
    pub fn range_response(&mut self, now_ms: u64, id: RequestId, blocks: Vec<Block>) {
        self.now_ms = self.now_ms.max(now_ms);
        let Some(request) = self.router.take_request(id) else {
            tracing::trace!(?id, "response to a settled request ignored");
            return;
        };
        if let Some(entry) = self.router.peers.entries.get_mut(&request.peer) {
            entry.slow_until_ms = 0; // it answers again
            entry.late = false;
        }
        if !blocks.is_empty() {
            let bytes = blocks.iter().map(|b| b.size_bytes() as u64).sum();
            self.router.measure(now_ms, &request, bytes);
        }
        match request.purpose {
            RequestPurpose::Batch { chain, key } => {
                self.batch_response(chain, (id, key, request), blocks, now_ms)
            }
            RequestPurpose::Hedge { chain, key, primary } => {
                self.hedge_answered(chain, (key, primary), (id, request), blocks, now_ms)
            }
            RequestPurpose::Lookup { lookup, hash } => {
                let router = &mut self.router;
                let answered = self.lookups.response(
                    &router.config,
                    &mut router.jitter,
                    (lookup, id, hash),
                    blocks,
                    now_ms,
                );
                if let Some((action, reason)) = answered.charge() {
                    router.penalise(now_ms, &request.peer, action, reason);
                }
            }
        }
        self.drive(now_ms);
    }

    /// Blocks answering root request `id`. The caller has already verified rules 3–5 of each.
    pub fn root_response(&mut self, now_ms: u64, id: RequestId, blocks: Vec<Block>) {
        self.range_response(now_ms, id, blocks);
    }

    /// The response to `id` broke rules 3–5 (found by the caller's verification pool): the peer is
    /// charged `InvalidData` and the blocks are asked of another peer.
    pub fn response_invalid(&mut self, now_ms: u64, id: RequestId, reason: &str) {
        self.now_ms = self.now_ms.max(now_ms);
        let Some(request) = self.router.take_request(id) else {
            return;
        };
        tracing::debug!(peer = ?request.peer, reason, "invalid response");
        let charge = Some((PeerAction::InvalidData, "response broke a validity rule"));
        self.request_settled_without_data(now_ms, id, request, charge);
        self.drive(now_ms);
    }

    /// Request `id` produced no response.
    pub fn request_failed(&mut self, now_ms: u64, id: RequestId, failure: RequestFailure) {
        self.now_ms = self.now_ms.max(now_ms);
        let Some(request) = self.router.take_request(id) else {
            return;
        };
        let refusal = matches!(
            failure,
            RequestFailure::ResourceUnavailable | RequestFailure::Disconnected
        );
        if refusal
            && let RequestPurpose::Batch {
                chain: ChainId::Forward,
                ..
            } = request.purpose
        {
            self.router.refused(&request.peer, request.start);
        }
        let charge = match failure {
            RequestFailure::Timeout => self.router.timed_out(now_ms, &request),
            RequestFailure::RateLimited => Some((PeerAction::RateLimited, "rate limited")),
            RequestFailure::ProtocolViolation => Some((PeerAction::ProtocolViolation, "protocol violation")),
            RequestFailure::ResourceUnavailable | RequestFailure::Disconnected | RequestFailure::Local(_) => {
                None
            }
        };
        self.request_settled_without_data(now_ms, id, request, charge);
        self.drive(now_ms);
    }

    /// The outcome of import `id`.
    pub fn import_result(&mut self, now_ms: u64, id: ImportId, result: Result<(), ImportError>) {
        self.now_ms = self.now_ms.max(now_ms);
        let Some(purpose) = self.router.imports.remove(&id) else {
            tracing::trace!(?id, "result of a forgotten import ignored");
            return;
        };
        match (purpose, result) {
            (ImportPurpose::ForwardChain { last }, Ok(())) => {
                if self.forward.direction_mut().chain_imported(last) {
                    self.router.last_progress_ms = now_ms;
                }
            }
            (ImportPurpose::Batch { chain, key }, Ok(())) => self.batch_imported(chain, key, id, now_ms),
            (ImportPurpose::Batch { chain, key }, Err(ImportError::SideChain { height, hash }))
                if chain == ChainId::Forward && self.forward.direction().fork.is_some() =>
            {
                // A fork's blocks stored aside, not (yet) longer than ours: the search goes on,
                // and the store's head is as it says.
                if let Some(fork) = self.forward.direction_mut().fork.as_mut() {
                    fork.store_head = ChainEnd::at(height, hash);
                }
                self.batch_imported(chain, key, id, now_ms)
            }
            (ImportPurpose::Batch { chain, key }, Err(error)) => {
                self.import_failed(chain, Some(key), &error, now_ms)
            }
            (ImportPurpose::ForwardChain { .. }, Err(error)) => {
                self.import_failed(ChainId::Forward, None, &error, now_ms)
            }
        }
        self.drive(now_ms);
    }

    /// A block arrived by gossip; the caller already checked rules 3–6.
    pub fn gossip_block(&mut self, now_ms: u64, from: P, block: Block) {
        self.now_ms = self.now_ms.max(now_ms);
        let idle = self.forward.is_empty();
        let forward = self.forward.direction_mut();
        let (height, tip, target) = (block.height(), forward.tip.height, forward.target);
        match self
            .lookups
            .on_gossip(&self.router.config, forward, idle, now_ms, from, block)
        {
            Some(block) => {
                tracing::debug!(height, "gossiped block on the tip: imported");
                forward.chain_offered(ChainEnd::of(&block));
                self.router.import_forward_chain(vec![block]);
            }
            None => tracing::debug!(height, tip, target, idle, "gossiped block not imported at once"),
        }
        self.drive(now_ms);
    }

    /// The node changed its head itself (e.g. it produced a block): forward sync continues from it.
    pub fn local_head_changed(&mut self, now_ms: u64, height: Height, hash: Hash) {
        self.now_ms = self.now_ms.max(now_ms);
        if hash != self.forward.direction().tip.hash {
            self.reset_forward(height, hash);
        }
        self.drive(now_ms);
    }

    /// Time advanced: fires deadlines and retries whose backoff is over.
    pub fn tick(&mut self, now_ms: u64) {
        self.now_ms = self.now_ms.max(now_ms);
        let mut expired: Vec<RequestId> = self
            .router
            .requests
            .iter()
            .filter(|(_, r)| !r.answered() && r.deadline_ms <= now_ms)
            .map(|(id, _)| *id)
            .collect();
        expired.sort();
        for id in expired {
            if let Some(request) = self.router.take_request(id) {
                tracing::debug!(peer = ?request.peer, ?id, "request deadline passed");
                let charge = self.router.timed_out(now_ms, &request);
                self.request_settled_without_data(now_ms, id, request, charge);
            }
        }
        self.drive(now_ms);
    }

    // ----- outputs and queries -----

    /// The next thing to do, in order.
    pub fn poll_action(&mut self) -> Option<Action<P>> {
        self.router.actions.pop_front()
    }

    pub fn state(&self) -> SyncState {
        self.state
    }

    /// The sync target: the highest head a peer credibly claims, or our own head.
    pub fn target(&self) -> Height {
        self.forward.direction().target
    }

    /// The confirmed local head height.
    pub fn head_height(&self) -> Height {
        self.forward.direction().head.height
    }

    /// Every peer with a Status, with what it counts for in the target: the one record of a
    /// peer's Status (the network keeps none; `/peers` shows this).
    pub fn peers(&self) -> impl Iterator<Item = (&P, PeerView)> + '_ {
        let (config, now) = (&self.router.config, self.now_ms);
        self.router.peers.entries.iter().map(move |(peer, e)| {
            let view = PeerView {
                status: e.status,
                counts_for: e.target_head(config, now),
            };
            (peer, view)
        })
    }

    /// Whether backfill reached its floor (`None` when there is no backfill).
    pub fn backfill_complete(&self) -> Option<bool> {
        self.backfill.as_ref().map(|b| b.direction().done())
    }

    /// The earliest time after the last event at which [`SyncEngine::tick`] may have something to
    /// do: a request's deadline, the end of a backoff (a batch's, an import's, a lookup's, a
    /// resting peer's), the moment a lookup grows too old, a Status turns stale or may be asked
    /// for again, or the state turns `Stalled`. `None`: nothing happens until another event.
    /// Ticking only at these times is enough; ticking more often does no harm.
    pub fn next_wakeup(&self) -> Option<u64> {
        let now = self.now_ms;
        let deadlines = self
            .router
            .requests
            .values()
            .filter(|r| !r.answered())
            .map(|r| r.deadline_ms);
        let chains = self
            .forward
            .wakeups()
            .chain(self.backfill.iter().flat_map(Chain::wakeups));
        let config = &self.router.config;
        let stall = (self.forward.direction().behind() && self.state != SyncState::Stalled)
            .then(|| self.router.last_progress_ms.saturating_add(config.stall_after_ms));
        let alone = (!self.heard_status).then_some(config.alone_after_ms);
        let hedge = self.router.hedge_due_ms(&self.forward).or_else(|| {
            let backfill = self
                .backfill
                .as_ref()
                .filter(|_| !self.forward.direction().behind())?;
            self.router.hedge_due_ms(backfill)
        });
        deadlines
            .chain(hedge)
            .chain(chains)
            .chain(stall)
            .chain(alone)
            .chain(self.lookups.wakeups(config))
            .chain(self.router.peers.wakeups(config, now))
            .filter(|&t| t > now)
            .min()
    }

    pub fn stats(&self) -> EngineStats {
        let backfill = self.backfill.as_ref();
        EngineStats {
            buffered_blocks: self.forward.buffered_blocks(),
            buffered_bytes: self.forward.buffered_bytes(),
            backfill_buffered_blocks: backfill.map_or(0, Chain::buffered_blocks),
            backfill_buffered_bytes: backfill.map_or(0, Chain::buffered_bytes),
            forward_batches: self.forward.len(),
            backfill_batches: backfill.map_or(0, Chain::len),
            in_flight_requests: self.router.requests.len(),
            peers: self.router.peers.entries.len(),
            lookups: self.lookups.len(),
            lookup_blocks: self.lookups.block_count(),
            head_height: self.head_height(),
            backfill_lowest: backfill.map(|b| b.direction().confirmed_lowest()),
        }
    }
}

mod route;
