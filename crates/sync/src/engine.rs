//! [`SyncEngine`]: the event entry points, the shared bookkeeping (requests, peers, actions), and the
//! `drive` step that runs after every event. Forward sync, backfill and parent lookups add their
//! parts in `forward.rs`, `backfill.rs` and `lookup.rs`.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt::Debug;
use std::hash::Hash as StdHash;

use syncnode_types::{Block, BlockHeader, Hash, Height};

use crate::backfill::Backfill;
use crate::config::SyncConfig;
use crate::events::{
    Action, EngineStats, ImportError, ImportId, LocalChain, PeerStatus, RequestFailure, RequestId, SyncState,
};
use crate::jitter::Jitter;
use crate::lookup::Lookups;
use crate::peer_score::PeerAction;
use crate::peers::{PeerEntry, Peers};

/// What the engine needs of a peer identifier (libp2p's `PeerId` has all of it).
pub trait PeerKey: Clone + Eq + Ord + StdHash + Debug {}
impl<T: Clone + Eq + Ord + StdHash + Debug> PeerKey for T {}

/// A block the chain ends at: height, hash and, when we saw it, its header (for rule 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ChainEnd {
    pub height: Height,
    pub hash: Hash,
    pub header: Option<BlockHeader>,
}

impl ChainEnd {
    pub(crate) fn of(block: &Block) -> Self {
        ChainEnd {
            height: block.height(),
            hash: block.hash(),
            header: Some(block.header),
        }
    }
}

/// What a request in flight is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RequestPurpose {
    /// Blocks `start..start+count` of the forward batch keyed `batch`.
    Forward { batch: Height },
    /// Blocks of the backfill batch keyed `batch`.
    Backfill { batch: Height },
    /// The parent `hash` wanted by lookup `lookup`.
    Lookup { lookup: u64, hash: Hash },
}

/// A request we sent and have not settled.
#[derive(Debug, Clone)]
pub(crate) struct InFlight<P> {
    pub peer: P,
    pub purpose: RequestPurpose,
    pub start: Height,
    pub count: u64,
    pub deadline_ms: u64,
    /// The peer answered; the caller is verifying the blocks. The peer is no longer busy with
    /// it and the deadline no longer runs.
    pub answered: bool,
}

/// What an import the node is performing is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ImportPurpose {
    /// The forward batch keyed `batch`.
    ForwardBatch { batch: Height },
    /// Gossiped blocks (and their looked-up ancestors) ending at `last`.
    ForwardChain { last: ChainEnd },
    /// The backfill batch keyed `batch`.
    Backfill { batch: Height },
}

/// Forward sync's state: batches over `head + 1 ..= target`, and the two ends of the chain.
#[derive(Debug, Clone)]
pub(crate) struct Forward<P> {
    /// Batches keyed by start height, consecutive, at most `window_batches` of them.
    pub batches: BTreeMap<Height, crate::batch::Batch<P>>,
    /// The confirmed head: the last block the node reported imported.
    pub head: ChainEnd,
    /// The last block offered for import (pending or confirmed): the next import links to it.
    pub tip: ChainEnd,
    /// Hashes peers vouched for at heights not yet imported, settled when those heights import:
    /// whoever vouched for a different hash than the one that imports is proven wrong.
    pub claims: BTreeMap<Height, Vec<(P, Hash)>>,
    /// No import is offered before this (after a local import failure).
    pub import_retry_at_ms: u64,
    /// Running totals of accepted blocks, to estimate the bytes a request will bring.
    pub seen_blocks: u64,
    pub seen_bytes: u64,
}

/// The sans-IO sync engine. See the crate documentation for the algorithm and its invariants.
#[derive(Debug)]
pub struct SyncEngine<P: PeerKey> {
    pub(crate) config: SyncConfig,
    pub(crate) jitter: Jitter,
    pub(crate) peers: Peers<P>,
    pub(crate) requests: HashMap<RequestId, InFlight<P>>,
    pub(crate) imports: HashMap<ImportId, ImportPurpose>,
    pub(crate) forward: Forward<P>,
    pub(crate) backfill: Option<Backfill<P>>,
    pub(crate) lookups: Lookups<P>,
    pub(crate) actions: VecDeque<Action<P>>,
    pub(crate) next_request_id: u64,
    pub(crate) next_import_id: u64,
    pub(crate) target: Height,
    pub(crate) state: SyncState,
    /// Last time forward sync received or imported blocks (or started).
    pub(crate) last_progress_ms: u64,
    pub(crate) now_ms: u64,
}

impl<P: PeerKey> SyncEngine<P> {
    /// An engine over the given local chain. `seed` makes retry jitter and tie-breaks reproducible.
    /// An invalid `config` is replaced by the defaults (and logged); check it first with
    /// [`SyncConfig::validate`].
    pub fn new(config: SyncConfig, local: LocalChain, seed: u64) -> Self {
        let config = match config.validate() {
            Ok(()) => config,
            Err(error) => {
                tracing::error!(%error, "invalid sync config; using the defaults");
                SyncConfig::default()
            }
        };
        let head = ChainEnd {
            height: local.head_height,
            hash: local.head_hash,
            header: None,
        };
        let mut engine = SyncEngine {
            jitter: Jitter::new(seed),
            peers: Peers::new(),
            requests: HashMap::new(),
            imports: HashMap::new(),
            forward: Forward {
                batches: BTreeMap::new(),
                head,
                tip: head,
                claims: BTreeMap::new(),
                import_retry_at_ms: 0,
                seen_blocks: 0,
                seen_bytes: 0,
            },
            backfill: local
                .backfill
                .map(|start| Backfill::new(start, local.genesis_hash)),
            lookups: Lookups::new(),
            actions: VecDeque::new(),
            next_request_id: 0,
            next_import_id: 0,
            target: local.head_height,
            state: SyncState::Synced,
            last_progress_ms: 0,
            now_ms: 0,
            config,
        };
        engine.finish_backfill_if_done();
        engine.state = engine.compute_state(0);
        engine
    }

    // ----- events in -----

    /// A peer connected with, or sent, a Status.
    pub fn peer_status(&mut self, now_ms: u64, peer: P, status: PeerStatus) {
        self.now_ms = self.now_ms.max(now_ms);
        match self.peers.entries.get_mut(&peer) {
            Some(entry) => {
                entry.status = status;
                entry.status_at_ms = now_ms;
                entry.status_requested_ms = None;
                entry.claimed_head = entry.claimed_head.max(status.head_height);
            }
            None => {
                if self.peers.entries.len() >= self.config.max_peers {
                    tracing::debug!(?peer, "peer table full; status ignored");
                    return;
                }
                self.peers.entries.insert(peer, PeerEntry::new(status, now_ms));
            }
        }
        self.drive(now_ms);
    }

    /// A peer is gone: its request fails (no charge) and its claims no longer count.
    pub fn peer_disconnected(&mut self, now_ms: u64, peer: &P) {
        self.now_ms = self.now_ms.max(now_ms);
        if let Some(entry) = self.peers.entries.remove(peer)
            && let Some(id) = entry.in_flight
            && let Some(request) = self.requests.remove(&id)
        {
            self.request_settled_without_data(now_ms, id, request, None);
        }
        self.lookups.forget_peer(peer);
        self.drive(now_ms);
    }

    /// Request `id` was answered with blocks the caller is now verifying. The peer leaves the busy
    /// set and may be given its next request while they are checked: it never serves two of our
    /// requests at once, but our verification overlaps its next answer instead of delaying it.
    /// The deadline stops (verification is our work, never the peer's fault). The request is
    /// settled later by [`SyncEngine::range_response`] or [`SyncEngine::response_invalid`].
    pub fn response_received(&mut self, now_ms: u64, id: RequestId) {
        self.now_ms = self.now_ms.max(now_ms);
        let Some(request) = self.requests.get_mut(&id).filter(|r| !r.answered) else {
            return;
        };
        request.answered = true;
        if let Some(entry) = self.peers.entries.get_mut(&request.peer)
            && entry.in_flight == Some(id)
        {
            entry.in_flight = None;
            entry.slow_until_ms = 0; // it answers again
        }
        self.drive(now_ms);
    }

    /// Blocks answering range request `id`. The caller has already verified rules 3–5 of each.
    /// Without a [`SyncEngine::response_received`] first, the peer stays busy until this call.
    pub fn range_response(&mut self, now_ms: u64, id: RequestId, blocks: Vec<Block>) {
        self.now_ms = self.now_ms.max(now_ms);
        let Some(request) = self.take_request(id) else {
            tracing::trace!(?id, "response to a settled request ignored");
            return;
        };
        if let Some(entry) = self.peers.entries.get_mut(&request.peer) {
            entry.slow_until_ms = 0; // it answers again
        }
        match request.purpose {
            RequestPurpose::Forward { batch } => self.forward_response(now_ms, id, batch, request, blocks),
            RequestPurpose::Backfill { batch } => self.backfill_response(now_ms, id, batch, request, blocks),
            RequestPurpose::Lookup { .. } => {
                self.lookup_response(now_ms, id, request, blocks);
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
        let Some(request) = self.take_request(id) else {
            return;
        };
        tracing::debug!(peer = ?request.peer, reason, "invalid response");
        self.request_settled_without_data(
            now_ms,
            id,
            request,
            Some((PeerAction::InvalidData, "response broke a validity rule")),
        );
        self.drive(now_ms);
    }

    /// Request `id` produced no response.
    pub fn request_failed(&mut self, now_ms: u64, id: RequestId, failure: RequestFailure) {
        self.now_ms = self.now_ms.max(now_ms);
        let Some(request) = self.take_request(id) else {
            return;
        };
        let charge = match failure {
            RequestFailure::Timeout => Some((PeerAction::Timeout, "request timed out")),
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
        let Some(purpose) = self.imports.remove(&id) else {
            tracing::trace!(?id, "result of a forgotten import ignored");
            return;
        };
        match purpose {
            ImportPurpose::ForwardBatch { .. } | ImportPurpose::ForwardChain { .. } => {
                self.forward_import_result(now_ms, id, purpose, result)
            }
            ImportPurpose::Backfill { batch } => self.backfill_import_result(now_ms, batch, result),
        }
        self.drive(now_ms);
    }

    /// A block arrived by gossip; the caller already checked rules 3–6.
    pub fn gossip_block(&mut self, now_ms: u64, from: P, block: Block) {
        self.now_ms = self.now_ms.max(now_ms);
        self.on_gossip(now_ms, from, block);
        self.drive(now_ms);
    }

    /// The node changed its head itself (e.g. it produced a block): forward sync continues from it.
    pub fn local_head_changed(&mut self, now_ms: u64, height: Height, hash: Hash) {
        self.now_ms = self.now_ms.max(now_ms);
        if hash != self.forward.tip.hash {
            self.reset_forward(height, hash);
        }
        self.drive(now_ms);
    }

    /// Time advanced: fires deadlines and retries whose backoff is over.
    pub fn tick(&mut self, now_ms: u64) {
        self.now_ms = self.now_ms.max(now_ms);
        let mut expired: Vec<RequestId> = self
            .requests
            .iter()
            .filter(|(_, r)| !r.answered && r.deadline_ms <= now_ms)
            .map(|(id, _)| *id)
            .collect();
        expired.sort();
        for id in expired {
            if let Some(request) = self.take_request(id) {
                tracing::debug!(peer = ?request.peer, ?id, "request deadline passed");
                self.request_settled_without_data(
                    now_ms,
                    id,
                    request,
                    Some((PeerAction::Timeout, "request timed out")),
                );
            }
        }
        self.drive(now_ms);
    }

    // ----- outputs and queries -----

    /// The next thing to do, in order.
    pub fn poll_action(&mut self) -> Option<Action<P>> {
        self.actions.pop_front()
    }

    pub fn state(&self) -> SyncState {
        self.state
    }

    /// The sync target: the highest head a peer credibly claims, or our own head.
    pub fn target(&self) -> Height {
        self.target
    }

    /// The confirmed local head height.
    pub fn head_height(&self) -> Height {
        self.forward.head.height
    }

    /// Whether backfill reached its floor (`None` when there is no backfill).
    pub fn backfill_complete(&self) -> Option<bool> {
        self.backfill.as_ref().map(|b| b.done)
    }

    /// The earliest time at which [`SyncEngine::tick`] has something to do, if any.
    pub fn next_wakeup(&self) -> Option<u64> {
        let deadlines = self
            .requests
            .values()
            .filter(|r| !r.answered)
            .map(|r| r.deadline_ms);
        let retries = self
            .forward
            .batches
            .values()
            .chain(self.backfill.iter().flat_map(|b| b.batches.values()))
            .filter_map(|b| match b.state {
                crate::batch::BatchState::Waiting { not_before_ms } => Some(not_before_ms),
                _ => None,
            });
        deadlines.chain(retries).min()
    }

    pub fn stats(&self) -> EngineStats {
        let (backfill_blocks, backfill_bytes, backfill_batches, backfill_lowest) = match &self.backfill {
            Some(b) => (
                b.batches.values().map(|x| x.blocks.len()).sum(),
                b.buffered_bytes(),
                b.batches.len(),
                Some(b.confirmed_lowest),
            ),
            None => (0, 0, 0, None),
        };
        EngineStats {
            buffered_blocks: self.forward.batches.values().map(|b| b.blocks.len()).sum(),
            buffered_bytes: self.forward_buffered_bytes(),
            backfill_buffered_blocks: backfill_blocks,
            backfill_buffered_bytes: backfill_bytes,
            forward_batches: self.forward.batches.len(),
            backfill_batches,
            in_flight_requests: self.requests.len(),
            peers: self.peers.entries.len(),
            lookups: self.lookups.len(),
            lookup_blocks: self.lookups.block_count(),
            head_height: self.forward.head.height,
            backfill_lowest,
        }
    }

    // ----- shared machinery -----

    /// Removes a request and frees its peer from the busy set.
    pub(crate) fn take_request(&mut self, id: RequestId) -> Option<InFlight<P>> {
        let request = self.requests.remove(&id)?;
        if let Some(entry) = self.peers.entries.get_mut(&request.peer)
            && entry.in_flight == Some(id)
        {
            entry.in_flight = None;
        }
        Some(request)
    }

    /// A request ended without usable data: charge if told, then let its owner retry.
    pub(crate) fn request_settled_without_data(
        &mut self,
        now_ms: u64,
        id: RequestId,
        request: InFlight<P>,
        charge: Option<(PeerAction, &'static str)>,
    ) {
        if let Some((action, reason)) = charge {
            self.penalise(now_ms, &request.peer, action, reason);
        }
        match request.purpose {
            RequestPurpose::Forward { batch } => {
                self.forward_request_failed(now_ms, id, batch, &request.peer)
            }
            RequestPurpose::Backfill { batch } => {
                self.backfill_request_failed(now_ms, id, batch, &request.peer)
            }
            RequestPurpose::Lookup { lookup, .. } => self.lookup_request_failed(now_ms, lookup, id),
        }
    }

    /// Emits a charge and applies it to the engine's own ranking. Data faults also stop the peer
    /// from getting more work and from counting in the target.
    pub(crate) fn penalise(&mut self, now_ms: u64, peer: &P, action: PeerAction, reason: &'static str) {
        tracing::debug!(?peer, ?action, reason, "penalising peer");
        self.peers.ranking.apply(peer, action, now_ms);
        if action == PeerAction::Timeout
            && let Some(entry) = self.peers.entries.get_mut(peer)
        {
            entry.slow_until_ms = now_ms.saturating_add(self.config.slow_peer_rest_ms());
        }
        if matches!(action, PeerAction::InvalidData | PeerAction::ProvenWrong)
            && let Some(entry) = self.peers.entries.get_mut(peer)
        {
            entry.proven_wrong = true;
        }
        self.actions.push_back(Action::Penalise {
            peer: peer.clone(),
            action,
            reason,
        });
    }

    /// Sends a range request and marks the peer busy.
    pub(crate) fn send_range_request(
        &mut self,
        now_ms: u64,
        peer: P,
        purpose: RequestPurpose,
        start: Height,
        count: u64,
        failures: u32,
    ) -> RequestId {
        let id = RequestId(self.next_request_id);
        self.next_request_id += 1;
        let timeout_ms = self.config.timeout_for(failures);
        self.mark_busy(&peer, id);
        self.requests.insert(
            id,
            InFlight {
                peer: peer.clone(),
                purpose,
                start,
                count,
                deadline_ms: now_ms.saturating_add(timeout_ms),
                answered: false,
            },
        );
        self.actions.push_back(Action::SendRangeRequest {
            peer,
            id,
            start_height: start,
            count,
            timeout_ms,
        });
        id
    }

    pub(crate) fn mark_busy(&mut self, peer: &P, id: RequestId) {
        if let Some(entry) = self.peers.entries.get_mut(peer) {
            debug_assert!(entry.in_flight.is_none(), "two requests to one peer");
            entry.in_flight = Some(id);
        }
    }

    pub(crate) fn new_import_id(&mut self) -> ImportId {
        let id = ImportId(self.next_import_id);
        self.next_import_id += 1;
        id
    }

    /// The best idle peer whose Status covers `from..=to`, preferring peers that failed this range
    /// least, then higher scores, ties broken at random. A peer resting after a timeout is passed
    /// over while some other peer serving the range is not resting, even a busy one: waiting for a
    /// brisk peer costs less than a batch stuck for a whole timeout in front of in-order import. Peers with a stale Status are asked for a
    /// fresh one instead. Returns `None` when nobody fits; `exhausted` is then true if some peer
    /// would fit but has used up its attempts.
    pub(crate) fn pick_peer(
        &mut self,
        now_ms: u64,
        from: Height,
        to: Height,
        failures: &BTreeMap<P, u32>,
    ) -> (Option<P>, bool) {
        let mut best: Option<((u32, i64, u64), P)> = None;
        let mut exhausted = false;
        let mut stale = Vec::new();
        let some_brisk = self
            .peers
            .entries
            .values()
            .any(|e| e.serves(from, to) && !e.resting(now_ms));
        for (peer, entry) in &self.peers.entries {
            if entry.in_flight.is_some() || !entry.serves(from, to) {
                continue;
            }
            if some_brisk && entry.resting(now_ms) {
                continue;
            }
            if now_ms.saturating_sub(entry.status_at_ms) > self.config.status_stale_ms {
                stale.push(peer.clone());
                continue;
            }
            let failed = failures.get(peer).copied().unwrap_or(0);
            if failed >= self.config.max_attempts_per_peer {
                exhausted = true;
                continue;
            }
            // Lower is better: fewer failures, higher score (rounded to a tenth), random tie-break.
            let score = -(self.peers.ranking.score(peer, now_ms) * 10.0).round() as i64;
            let key = (failed, score, self.jitter.next_u64());
            if best.as_ref().is_none_or(|(k, _)| key < *k) {
                best = Some((key, peer.clone()));
            }
        }
        for peer in stale {
            self.refresh_status(now_ms, peer);
        }
        let chosen = best.map(|(_, p)| p);
        (chosen.clone(), chosen.is_none() && exhausted)
    }

    fn refresh_status(&mut self, now_ms: u64, peer: P) {
        let interval = (self.config.status_stale_ms / 3).max(1);
        if let Some(entry) = self.peers.entries.get_mut(&peer)
            && entry
                .status_requested_ms
                .is_none_or(|t| now_ms.saturating_sub(t) >= interval)
        {
            entry.status_requested_ms = Some(now_ms);
            self.actions.push_back(Action::RequestStatus { peer });
        }
    }

    /// The step after every event: target, batches, imports, requests, state.
    pub(crate) fn drive(&mut self, now_ms: u64) {
        self.update_target();
        self.forward_fill_batches(now_ms);
        self.forward_try_import(now_ms);
        self.forward_assign(now_ms);
        self.lookups_drive(now_ms);
        self.backfill_drive(now_ms);
        self.update_state(now_ms);
        self.check_invariants();
    }

    fn update_target(&mut self) {
        let target = self.peers.best_head().unwrap_or(0).max(self.forward.head.height);
        if target != self.target {
            tracing::debug!(from = self.target, to = target, "sync target changed");
            if target > self.forward.head.height && self.target <= self.forward.head.height {
                // Falling behind starts the stall clock afresh.
                self.last_progress_ms = self.now_ms;
            }
            self.target = target;
            self.actions.push_back(Action::TargetChanged(target));
        }
    }

    pub(crate) fn compute_state(&self, now_ms: u64) -> SyncState {
        if self.target > self.forward.head.height {
            if now_ms.saturating_sub(self.last_progress_ms) >= self.config.stall_after_ms {
                SyncState::Stalled
            } else {
                SyncState::Syncing
            }
        } else if self.backfill.as_ref().is_some_and(|b| !b.done) {
            SyncState::Backfilling
        } else {
            SyncState::Synced
        }
    }

    fn update_state(&mut self, now_ms: u64) {
        let state = self.compute_state(now_ms);
        if state != self.state {
            tracing::info!(
                ?state,
                target = self.target,
                head = self.forward.head.height,
                "sync state"
            );
            self.state = state;
            self.actions.push_back(Action::StateChanged(state));
        }
    }

    /// Debug-build checks of the invariants the crate documentation promises.
    fn check_invariants(&self) {
        if !cfg!(debug_assertions) {
            return;
        }
        let stats = self.stats();
        debug_assert!(stats.buffered_bytes <= self.config.window_bytes);
        debug_assert!(stats.forward_batches <= self.config.window_batches);
        debug_assert!(
            stats.buffered_blocks as u64 <= self.config.window_batches as u64 * self.config.batch_size
        );
        if let Some(b) = &self.backfill {
            debug_assert!(b.buffered_bytes() <= self.config.backfill_window_bytes);
            debug_assert!(b.batches.len() <= self.config.backfill_window_batches);
        }
        let busy = self
            .peers
            .entries
            .values()
            .filter(|e| e.in_flight.is_some())
            .count();
        debug_assert!(busy <= self.requests.len());
        let mut seen = std::collections::HashSet::new();
        for request in self.requests.values().filter(|r| !r.answered) {
            debug_assert!(seen.insert(&request.peer), "two requests to one peer");
        }
        debug_assert!(self.lookups.len() <= self.config.max_lookups);
    }
}
