//! Routing: each request, answer and import result goes to the chain or lookup that owns it; the
//! `drive` step moves every chain after each event.

use syncnode_types::{Block, Hash, Height};

use super::SyncEngine;
use crate::batch::check_range_shape;
use crate::chain::Effects;
use crate::events::{Action, ImportError, ImportId, RequestId, SyncState};
use crate::forward::{ChainEnd, batch_blocks};
use crate::peers::PeerKey;
use crate::router::{ChainId, ImportPurpose, InFlight, RequestPurpose};
use syncnode_proto::peer_score::PeerAction;

impl<P: PeerKey> SyncEngine<P> {
    /// A request ended without usable data: charge if told, then let its owner retry.
    pub(super) fn request_settled_without_data(
        &mut self,
        now_ms: u64,
        id: RequestId,
        request: InFlight<P>,
        charge: Option<(PeerAction, &'static str)>,
    ) {
        let router = &mut self.router;
        if let Some((action, reason)) = charge {
            router.penalise(now_ms, &request.peer, action, reason);
        }
        let peer = Some(&request.peer);
        match request.purpose {
            RequestPurpose::Batch {
                chain: ChainId::Forward,
                key,
            } => self
                .forward
                .download_failed(&mut router.ctx(), key, id, peer, now_ms),
            RequestPurpose::Batch {
                chain: ChainId::Backfill,
                key,
            } => {
                if let Some(backfill) = self.backfill.as_mut() {
                    backfill.download_failed(&mut router.ctx(), key, id, peer, now_ms);
                }
            }
            RequestPurpose::Lookup { lookup, .. } => {
                self.lookups
                    .request_failed(&router.config, &mut router.jitter, lookup, id, now_ms)
            }
            // The request it raced goes on; the batch is not told.
            RequestPurpose::Hedge { .. } => {}
        }
    }

    /// The answer to hedge `id`, racing request `primary` for the batch keyed `key`: when it has
    /// blocks of the right shape and the primary has not answered yet, it wins and the batch
    /// takes it as the answer to the primary, which is forgotten (its peer is not charged: it
    /// was late for its own link, not for the protocol; it rests as after a late deadline).
    /// Otherwise it is dropped, charged only for a wrong shape.
    pub(super) fn hedge_answered(
        &mut self,
        chain: ChainId,
        (key, primary): (Height, RequestId),
        (id, request): (RequestId, InFlight<P>),
        blocks: Vec<Block>,
        now_ms: u64,
    ) {
        let shape = check_range_shape(request.start, request.count, &blocks);
        let open = self
            .router
            .requests
            .get(&primary)
            .is_some_and(|p| !p.answered() && p.start == request.start);
        if let Err(reason) = shape {
            self.router
                .penalise(now_ms, &request.peer, PeerAction::InvalidData, reason);
            return;
        }
        if blocks.is_empty() || !open {
            tracing::trace!(?id, "hedge answer dropped: the request it raced answered first");
            return;
        }
        if let Some(loser) = self.router.take_request(primary) {
            tracing::debug!(late = ?loser.peer, winner = ?request.peer, "hedge answered first");
            self.router.rest_late(now_ms, &loser.peer);
        }
        self.batch_response(chain, (primary, key, request), blocks, now_ms);
    }

    /// A range response for a batch, handed to its chain.
    pub(super) fn batch_response(
        &mut self,
        chain: ChainId,
        request: (RequestId, Height, InFlight<P>),
        blocks: Vec<Block>,
        now_ms: u64,
    ) {
        match chain {
            ChainId::Forward => self
                .router
                .batch_response(&mut self.forward, chain, request, blocks, now_ms),
            ChainId::Backfill => {
                if let Some(backfill) = self.backfill.as_mut() {
                    self.router
                        .batch_response(backfill, chain, request, blocks, now_ms);
                }
            }
        }
    }

    /// Import `id` of the batch keyed `key` is confirmed.
    pub(super) fn batch_imported(&mut self, chain: ChainId, key: Height, id: ImportId, now_ms: u64) {
        let mut effects = Effects::default();
        match chain {
            ChainId::Forward => {
                self.forward.imported(key, id, &mut effects);
                self.forward.fork_adopted();
            }
            ChainId::Backfill => {
                if let Some(backfill) = self.backfill.as_mut() {
                    backfill.imported(key, id, &mut effects);
                }
            }
        }
        self.router.apply(chain, effects, now_ms);
        if chain == ChainId::Backfill {
            self.finish_backfill_if_done();
        }
    }

    /// An import of the batch keyed `key` (`None`: of gossiped blocks) failed.
    pub(super) fn import_failed(
        &mut self,
        chain: ChainId,
        key: Option<Height>,
        error: &ImportError,
        now_ms: u64,
    ) {
        let mut effects = Effects::default();
        match chain {
            ChainId::Forward => {
                if let ImportError::DoesNotLink { height, hash } | ImportError::SideChain { height, hash } =
                    error
                {
                    self.charge_fork_below_finality(key, error, now_ms);
                    tracing::warn!(height, %hash, %error, "restarting forward sync from the store's head");
                    self.reset_forward(*height, *hash);
                    return;
                }
                tracing::warn!(%error, "forward import failed; offering again");
                self.forward
                    .import_failed(&mut self.router.ctx(), key, error, now_ms, &mut effects);
                // Gossiped chains offered after the confirmed head are forgotten with the batches.
                self.router
                    .imports
                    .retain(|_, p| !matches!(p, ImportPurpose::ForwardChain { .. }));
            }
            ChainId::Backfill => {
                tracing::warn!(%error, "backfill import failed; offering again later");
                if let Some(backfill) = self.backfill.as_mut() {
                    backfill.import_failed(&mut self.router.ctx(), key, error, now_ms, &mut effects);
                }
            }
        }
        self.router.apply(chain, effects, now_ms);
    }

    /// A fork search's first batch (key `base + 1`) that does not link to the store: its parent,
    /// at our finalized height, is not our block there, so the peer's chain conflicts with our
    /// finality, which makes it invalid for us (PROTOCOL.md, fork choice).
    fn charge_fork_below_finality(&mut self, key: Option<Height>, error: &ImportError, now_ms: u64) {
        let Some(search) = self.forward.direction().fork.as_ref() else {
            return;
        };
        let first = key.filter(|k| *k == search.base.saturating_add(1));
        if matches!(error, ImportError::DoesNotLink { .. })
            && let Some(supplier) = first
                .and_then(|k| self.forward.batch(k))
                .and_then(|b| b.supplier_of(0))
                .cloned()
        {
            self.router.penalise(
                now_ms,
                &supplier,
                PeerAction::ProvenWrong,
                "its chain conflicts with our finalized block",
            );
        }
    }

    /// A fork search goes on while its peer is here, credible, and has not used up its attempts
    /// on a batch; it fetches up to the peer's head. Given up, forward sync restarts from the
    /// store's head, which never moved (nobody is charged: the peer may simply have moved on).
    fn tend_fork_search(&mut self) {
        let Some(search) = self.forward.direction().fork.clone() else {
            return;
        };
        let max_attempts = self.router.config.max_attempts_per_peer;
        let entry = self.router.peers.entries.get(&search.peer);
        let worn_out = self.forward.batches().any(|b| {
            b.peer_failures()
                .get(&search.peer)
                .is_some_and(|n| *n >= max_attempts)
        });
        let done = {
            let forward = self.forward.direction();
            self.forward.is_empty() && forward.tip.height >= search.until.min(forward.target)
        };
        // It must serve the next block still to fetch, from our finalized block on.
        let needed = self
            .forward
            .first_open()
            .and_then(|k| self.forward.batch(k))
            .map(|b| b.next_height());
        match entry {
            Some(entry)
                if !entry.proven_wrong && needed.is_none_or(|h| entry.serves(h)) && !worn_out && !done =>
            {
                let head = entry.believed_head();
                if let Some(fork) = self.forward.direction_mut().fork.as_mut() {
                    fork.until = head;
                }
            }
            _ => {
                let why = match entry {
                    None => "its peer left",
                    Some(e) if e.proven_wrong => "its peer was proven wrong",
                    Some(_) if worn_out => "its peer used up its attempts on a batch",
                    Some(_) if done => "its chain is fetched",
                    Some(_) => "its peer does not serve the next block",
                };
                tracing::info!(
                    head = search.store_head.height,
                    peer = ?search.peer,
                    why,
                    "fork search over: we keep the store's head"
                );
                self.reset_forward(search.store_head.height, search.store_head.hash);
            }
        }
    }

    /// Forgets every forward batch and restarts forward sync from `height`/`hash` (the store's word).
    pub(super) fn reset_forward(&mut self, height: Height, hash: Hash) {
        for id in self.forward.reset(ChainEnd::at(height, hash)) {
            self.router.imports.remove(&id);
        }
        self.router
            .imports
            .retain(|_, p| !matches!(p, ImportPurpose::ForwardChain { .. }));
    }

    /// Marks backfill done when the floor is reached; emits the terminal action once.
    pub(super) fn finish_backfill_if_done(&mut self) {
        let Some(backfill) = self.backfill.as_mut() else {
            return;
        };
        if !backfill.direction_mut().finish_if_done() {
            return;
        }
        for id in backfill.clear() {
            self.router.imports.remove(&id);
        }
        self.router.actions.push_back(Action::BackfillComplete {
            lowest_height: backfill.direction().confirmed_lowest(),
        });
    }

    /// The step after every event: target, batches, imports, requests, lookups, state.
    pub(super) fn drive(&mut self, now_ms: u64) {
        self.router.refresh_stale(now_ms);
        self.update_target();
        self.tend_fork_search();
        let config = &self.router.config;
        let estimate = self.router.block_size_estimate();
        let size = batch_blocks(
            config.batch_size,
            config.window_bytes,
            config.window_batches,
            estimate,
        );
        self.forward.follow_target(now_ms, size);
        let mut effects = Effects::default();
        self.forward
            .try_import(&mut self.router.ctx(), now_ms, &mut effects);
        self.router.apply(ChainId::Forward, effects, now_ms);
        if self.forward.is_empty() {
            // A fork search may have just restarted the chain: its first batches go out now,
            // not at whatever event comes next.
            self.forward.follow_target(now_ms, size);
        }
        self.router.assign(&mut self.forward, ChainId::Forward, now_ms);
        self.router.hedge_first(&self.forward, ChainId::Forward, now_ms);
        self.drive_lookups(now_ms);
        self.drive_backfill(now_ms);
        self.update_state(now_ms);
        self.check_invariants();
    }

    /// Backfill's share of the step: batches, imports, and requests while forward sync is not behind.
    fn drive_backfill(&mut self, now_ms: u64) {
        let forward_behind = self.forward.direction().behind();
        let Some(backfill) = self.backfill.as_mut() else {
            return;
        };
        let config = &self.router.config;
        let size = batch_blocks(
            config.backfill_batch_size,
            config.backfill_window_bytes,
            config.backfill_window_batches,
            self.router.block_size_estimate(),
        );
        backfill.fill(now_ms, size);
        let mut effects = Effects::default();
        backfill.try_import(&mut self.router.ctx(), now_ms, &mut effects);
        self.router.apply(ChainId::Backfill, effects, now_ms);
        if !forward_behind {
            self.router.assign(backfill, ChainId::Backfill, now_ms);
            self.router.hedge_first(backfill, ChainId::Backfill, now_ms);
        }
    }

    /// Lookups that reached the tip import; the others ask for their missing parents. The peers
    /// of a lookup that met a longer fork are asked for a fresh Status, which names their head:
    /// range sync fetches it and, since it does not link, searches their fork (at most once per
    /// peer per head of ours, as for any fork search).
    fn drive_lookups(&mut self, now_ms: u64) {
        let idle = self.forward.is_empty();
        let drive = self.lookups.drive(
            &self.router.config,
            self.forward.direction_mut(),
            idle,
            &self.router.peers,
            now_ms,
        );
        for chain in drive.imports {
            self.router.import_forward_chain(chain);
        }
        for wanted in drive.sends {
            let (lookup, peer) = (wanted.lookup, wanted.peer.clone());
            let id = self.router.send_root_request(now_ms, wanted);
            self.lookups.sent(lookup, id, peer);
        }
        for peer in drive.forks {
            if !self.forward.direction().was_searched(&peer) {
                tracing::info!(
                    ?peer,
                    "a gossiped block shows a longer fork: asking its sender's head"
                );
                self.router.refresh_status(now_ms, peer);
            }
        }
    }

    fn update_target(&mut self) {
        let forward = self.forward.direction_mut();
        let head = forward.head.height;
        let target = self
            .router
            .peers
            .best_head(&self.router.config, self.now_ms)
            .unwrap_or(0)
            .max(head);
        if target != forward.target {
            tracing::debug!(from = forward.target, to = target, "sync target changed");
            if target > head && forward.target <= head {
                // Falling behind starts the stall clock afresh.
                self.router.last_progress_ms = self.now_ms;
            }
            forward.target = target;
            self.router.actions.push_back(Action::TargetChanged(target));
        }
    }

    pub(super) fn compute_state(&self, now_ms: u64) -> SyncState {
        if self.forward.direction().behind() {
            if now_ms.saturating_sub(self.router.last_progress_ms) >= self.router.config.stall_after_ms {
                SyncState::Stalled
            } else {
                SyncState::Syncing
            }
        } else if !self.heard_status && now_ms < self.router.config.alone_after_ms {
            // No peer has checked our head yet.
            SyncState::Syncing
        } else if self.backfill_complete() == Some(false) {
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
                target = self.target(),
                head = self.head_height(),
                "sync state"
            );
            self.state = state;
            self.router.actions.push_back(Action::StateChanged(state));
        }
    }

    /// Debug-build checks of the invariants the crate documentation promises.
    fn check_invariants(&self) {
        if !cfg!(debug_assertions) {
            return;
        }
        let config = &self.router.config;
        let stats = self.stats();
        debug_assert!(stats.buffered_bytes <= config.window_bytes);
        debug_assert!(stats.forward_batches <= config.window_batches);
        debug_assert!(stats.buffered_blocks as u64 <= config.window_batches as u64 * config.batch_size);
        debug_assert!(stats.backfill_buffered_bytes <= config.backfill_window_bytes);
        debug_assert!(stats.backfill_batches <= config.backfill_window_batches);
        let busy: usize = self
            .router
            .peers
            .entries
            .values()
            .map(|e| e.in_flight.len())
            .sum();
        debug_assert!(busy <= self.router.requests.len());
        let mut held = std::collections::HashMap::new();
        for request in self.router.requests.values().filter(|r| !r.answered()) {
            let n = held.entry(&request.peer).or_insert(0usize);
            *n += 1;
            debug_assert!(
                *n <= config.max_requests_per_peer,
                "too many requests to one peer"
            );
        }
        debug_assert!(self.lookups.len() <= config.max_lookups);
    }
}
