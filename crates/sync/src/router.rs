//! The engine's routing desk: peers, requests in flight and imports in flight, the queue of actions,
//! and the one path every chain of batches takes through them (assigning requests, taking answers,
//! carrying out what the chain reports). It holds no chain: the engine lends it the one an event
//! belongs to.

use std::collections::{BTreeMap, HashMap, VecDeque};

use syncnode_types::{Block, Hash, Height};

use crate::chain::{Answer, Chain, ChainDirection, Ctx, Effects, Response};
use crate::config::SyncConfig;
use crate::events::{Action, Direction, ImportId, RequestId};
use crate::forward::ChainEnd;
use crate::jitter::Jitter;
use crate::lookup::RootRequest;
use crate::peers::{PeerKey, Peers, Want};

mod hedge;
pub(crate) use hedge::Hedge;
use syncnode_proto::peer_score::PeerAction;

/// Which chain of batches something belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ChainId {
    Forward,
    Backfill,
}

/// What a request in flight is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RequestPurpose {
    /// The missing blocks of the batch keyed `key` of chain `chain`.
    Batch { chain: ChainId, key: Height },
    /// The parent `hash` wanted by lookup `lookup`.
    Lookup { lookup: u64, hash: Hash },
    /// A second ask for the batch keyed `key` of chain `chain`, racing request `primary`
    /// (`router/hedge.rs`).
    Hedge {
        chain: ChainId,
        key: Height,
        primary: RequestId,
    },
}

/// A request we sent and have not settled.
#[derive(Debug, Clone)]
pub(crate) struct InFlight<P> {
    pub peer: P,
    pub purpose: RequestPurpose,
    pub start: Height,
    pub count: u64,
    pub deadline_ms: u64,
    /// Bytes it is expected to bring.
    pub bytes: u64,
    /// When it was sent, and whether the peer held no other request of ours then.
    pub sent_ms: u64,
    pub alone: bool,
    /// Its deadline is shorter than the configured one: it came from the peer's measured link,
    /// and running it out is no breach of the protocol (not charged).
    pub early_deadline: bool,
    /// When the peer answered (`Some`: the caller is verifying the blocks; the peer is no
    /// longer busy with it and the deadline no longer runs).
    pub answered_ms: Option<u64>,
}

impl<P> InFlight<P> {
    pub(crate) fn answered(&self) -> bool {
        self.answered_ms.is_some()
    }
}

/// What an import the node is performing is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ImportPurpose {
    /// The batch keyed `key` of chain `chain`.
    Batch { chain: ChainId, key: Height },
    /// Gossiped blocks (and their looked-up ancestors) ending at `last`.
    ForwardChain { last: ChainEnd },
}

/// Peers, requests and imports in flight, and the actions for the node.
#[derive(Debug)]
pub(crate) struct Router<P> {
    pub config: SyncConfig,
    pub jitter: Jitter,
    pub peers: Peers<P>,
    pub requests: HashMap<RequestId, InFlight<P>>,
    pub imports: HashMap<ImportId, ImportPurpose>,
    pub actions: VecDeque<Action<P>>,
    next_request_id: u64,
    next_import_id: u64,
    /// Running totals of blocks accepted by any chain, for the block-size estimate.
    seen_blocks: u64,
    seen_bytes: u64,
    /// Last time forward sync received or imported blocks (or fell behind).
    pub last_progress_ms: u64,
    /// The hedge out, and the bytes hedges may still ask for (see `router/hedge.rs`).
    pub hedge: Option<Hedge>,
    hedge_budget: u64,
}

impl<P: PeerKey> Router<P> {
    pub(crate) fn new(config: SyncConfig, seed: u64) -> Self {
        Router {
            config: config.clone(),
            jitter: Jitter::new(seed),
            peers: Peers::new(),
            requests: HashMap::new(),
            imports: HashMap::new(),
            actions: VecDeque::new(),
            next_request_id: 0,
            next_import_id: 0,
            seen_blocks: 0,
            seen_bytes: 0,
            last_progress_ms: 0,
            hedge: None,
            hedge_budget: (config.window_bytes / config.window_batches.max(1)) as u64,
        }
    }

    /// What a chain borrows for one event.
    pub(crate) fn ctx(&mut self) -> Ctx<'_> {
        Ctx {
            config: &self.config,
            jitter: &mut self.jitter,
            next_import: &mut self.next_import_id,
        }
    }

    /// The average size of the blocks received so far. Until blocks arrive it is unknown and the
    /// largest possible is assumed, so that no batch can outgrow its window (one that did could
    /// never complete).
    pub(crate) fn block_size_estimate(&self) -> u64 {
        self.seen_bytes
            .checked_div(self.seen_blocks)
            .unwrap_or(crate::config::MIN_WINDOW_BYTES as u64)
    }

    /// Removes a request and frees its peer from the busy set.
    pub(crate) fn take_request(&mut self, id: RequestId) -> Option<InFlight<P>> {
        let request = self.requests.remove(&id)?;
        if let Some(entry) = self.peers.entries.get_mut(&request.peer) {
            entry.settle(id);
        }
        self.hedge_settled(id);
        Some(request)
    }

    /// Request `request` ran out its deadline. One shorter than the configured deadline (from
    /// the peer's measured link) is no breach: the peer is not charged, but rests, its
    /// throughput estimate is halved and its next request gets the configured deadline. Returns
    /// the charge, if any.
    pub(crate) fn timed_out(
        &mut self,
        now_ms: u64,
        request: &InFlight<P>,
    ) -> Option<(PeerAction, &'static str)> {
        if !request.early_deadline {
            return Some((PeerAction::Timeout, "request timed out"));
        }
        tracing::debug!(peer = ?request.peer, "request late for its link; asked elsewhere, no charge");
        self.rest_late(now_ms, &request.peer);
        None
    }

    /// `peer` was late for its own link (a deadline from it ran out, or a hedge answered first):
    /// not charged, but it rests, its throughput estimate is halved and its next request gets
    /// the configured deadline.
    pub(crate) fn rest_late(&mut self, now_ms: u64, peer: &P) {
        if let Some(entry) = self.peers.entries.get_mut(peer) {
            entry.pace.timed_out();
            entry.late = true;
            entry.slow_until_ms = now_ms.saturating_add(self.config.slow_peer_rest_ms());
        }
    }

    /// Feeds the answer to `request` (`bytes` of blocks, arrived at `now_ms` unless the node
    /// reported its arrival earlier) to its peer's link estimates.
    pub(crate) fn measure(&mut self, now_ms: u64, request: &InFlight<P>, bytes: u64) {
        if let Some(entry) = self.peers.entries.get_mut(&request.peer) {
            entry.pace.answered(crate::pace::Sample {
                sent_ms: request.sent_ms,
                arrived_ms: request.answered_ms.unwrap_or(now_ms),
                bytes,
                alone: request.alone,
            });
        }
        self.hedge_credit(bytes);
    }

    /// Deadline of a request to `peer` for `bytes`, for a batch that failed `failures` times: from
    /// its measured link, never longer than the configured deadline; the configured one when its
    /// link is not measured or its last request was late. Whether it is shorter than configured.
    fn deadline_for(&self, peer: &P, bytes: u64, failures: u32) -> (u64, bool) {
        let most = self.config.timeout_for(failures);
        let measured = self
            .peers
            .entries
            .get(peer)
            .filter(|e| !e.late)
            .and_then(|e| e.pace.deadline_ms(bytes, e.flight_bytes(), most));
        match measured {
            Some(ms) if ms < most => (ms, true),
            _ => (most, false),
        }
    }

    /// Emits a charge for the network's score book. Data faults also stop the peer from getting
    /// more work and from counting in the target; a timeout rests it.
    pub(crate) fn penalise(&mut self, now_ms: u64, peer: &P, action: PeerAction, reason: &'static str) {
        tracing::debug!(?peer, ?action, reason, "penalising peer");
        if let Some(entry) = self.peers.entries.get_mut(peer) {
            if action == PeerAction::Timeout {
                entry.slow_until_ms = now_ms.saturating_add(self.config.slow_peer_rest_ms());
            }
            if matches!(action, PeerAction::InvalidData | PeerAction::ProvenWrong) {
                entry.proven_wrong = true;
            }
        }
        self.actions.push_back(Action::Penalise {
            peer: peer.clone(),
            action,
            reason,
        });
    }

    /// A forward request from `start` was refused, erred on or reset: after a few in a row inside
    /// its claim, the peer's claim is capped below where they started (not charged; see
    /// `peers.rs`).
    pub(crate) fn refused(&mut self, peer: &P, start: Height) {
        if let Some(entry) = self.peers.entries.get_mut(peer)
            && let Some(cap) = entry.refused(start)
        {
            tracing::debug!(?peer, cap, "claim capped: it will not serve what it claims");
        }
    }

    fn new_request(
        &mut self,
        now_ms: u64,
        peer: &P,
        purpose: RequestPurpose,
        range: (Height, u64),
        (timeout_ms, early_deadline, bytes): (u64, bool, u64),
    ) -> RequestId {
        let id = RequestId(self.next_request_id);
        self.next_request_id += 1;
        let mut alone = true;
        if let Some(entry) = self.peers.entries.get_mut(peer) {
            alone = entry.in_flight.is_empty();
            entry.in_flight.push((id, bytes));
            entry.asked_ms = now_ms;
        }
        self.requests.insert(
            id,
            InFlight {
                peer: peer.clone(),
                purpose,
                start: range.0,
                count: range.1,
                deadline_ms: now_ms.saturating_add(timeout_ms),
                bytes,
                sent_ms: now_ms,
                alone,
                early_deadline,
                answered_ms: None,
            },
        );
        id
    }

    /// Sends a root request for a lookup and marks the peer busy.
    pub(crate) fn send_root_request(&mut self, now_ms: u64, wanted: RootRequest<P>) -> RequestId {
        let purpose = RequestPurpose::Lookup {
            lookup: wanted.lookup,
            hash: wanted.hash,
        };
        let id = self.new_request(
            now_ms,
            &wanted.peer,
            purpose,
            (wanted.height, 1),
            (wanted.timeout_ms, false, 0),
        );
        self.actions.push_back(Action::SendRootRequest {
            peer: wanted.peer,
            id,
            hashes: vec![wanted.hash],
            timeout_ms: wanted.timeout_ms,
        });
        id
    }

    /// Asks `peer` for a fresh Status, at most once per a third of the staleness limit.
    pub(crate) fn refresh_status(&mut self, now_ms: u64, peer: P) {
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

    /// Asks every peer whose Status turned stale for a fresh one: a stale Status no longer sets
    /// the target, so no batch would come to need that peer and ask.
    pub(crate) fn refresh_stale(&mut self, now_ms: u64) {
        let stale: Vec<P> = self
            .peers
            .entries
            .iter()
            .filter(|(_, e)| e.is_stale(&self.config, now_ms))
            .map(|(p, _)| p.clone())
            .collect();
        for peer in stale {
            self.refresh_status(now_ms, peer);
        }
    }

    /// Sends requests for `chain`'s ready batches, first to import first, while its byte window
    /// (counting what the requests out are expected to bring) has room; the batch the import
    /// waits for is always asked for.
    pub(crate) fn assign<D: ChainDirection<P>>(
        &mut self,
        chain: &mut Chain<P, D>,
        which: ChainId,
        now_ms: u64,
    ) {
        let estimate = self.seen_bytes.checked_div(self.seen_blocks).unwrap_or(0) as usize;
        let first_open = chain.first_open();
        let mut reserved: usize = chain
            .batches()
            .filter(|b| b.is_downloading())
            .map(|b| estimate.saturating_mul(b.missing() as usize))
            .sum();
        for (key, backoff_over) in chain.waiting(now_ms) {
            if chain.buffered_bytes().saturating_add(reserved) >= chain.window().bytes
                && Some(key) != first_open
            {
                break;
            }
            let Some(batch) = chain.batch(key) else {
                continue;
            };
            let (from, to, failures) = (batch.next_height(), batch.end(), batch.failures());
            let Some(failed_by) = self.may_ask(batch.peer_failures(), failures, backoff_over) else {
                continue;
            };
            let pinned = chain.direction().pinned().cloned();
            let want = Want {
                from,
                to,
                bytes: self.block_size_estimate().saturating_mul(to - from + 1),
                urgent: Some(key) == first_open,
            };
            let pick = self.peers.pick(
                &self.config,
                &mut self.jitter,
                now_ms,
                want,
                &failed_by,
                pinned.as_ref(),
            );
            for peer in pick.stale {
                self.refresh_status(now_ms, peer);
            }
            let Some(peer) = pick.peer else {
                if pick.exhausted
                    && backoff_over
                    && pinned.is_none()
                    && let Some(batch) = chain.batch_mut(key)
                {
                    // Every peer that could serve it has failed it: start counting afresh (not
                    // the one peer a fork search is pinned to: the search is given up instead).
                    batch.forgive_peers();
                }
                continue;
            };
            let (id, count) = self.request_batch(now_ms, peer, (which, key), (from, to, failures));
            if backoff_over {
                chain.download_started(key, id, now_ms);
            } else {
                chain.download_started_elsewhere(key, id);
            }
            reserved = reserved.saturating_add(estimate.saturating_mul(count as usize));
        }
    }

    /// Asks `peer` for the blocks `from..=to` of batch `key` of chain `which`, which failed
    /// `failures` times: as many as its link takes in one request, with a deadline from its link.
    /// Returns the request and the blocks it asks for.
    fn request_batch(
        &mut self,
        now_ms: u64,
        peer: P,
        (which, key): (ChainId, Height),
        (from, to, failures): (Height, Height, u32),
    ) -> (RequestId, u64) {
        let size = self.block_size_estimate();
        let count = self
            .peers
            .entries
            .get(&peer)
            .map_or(to - from + 1, |e| e.pace.request_blocks(size, to - from + 1));
        let purpose = RequestPurpose::Batch { chain: which, key };
        let id = self.send_range(now_ms, peer, purpose, (from, count), failures);
        (id, count)
    }

    /// Sends `peer` a range request for `count` blocks from `from`, for `purpose`, with the
    /// deadline of its link for a batch that failed `failures` times.
    pub(crate) fn send_range(
        &mut self,
        now_ms: u64,
        peer: P,
        purpose: RequestPurpose,
        (from, count): (Height, u64),
        failures: u32,
    ) -> RequestId {
        let bytes = self.block_size_estimate().saturating_mul(count);
        let (timeout_ms, early) = self.deadline_for(&peer, bytes, failures);
        let id = self.new_request(now_ms, &peer, purpose, (from, count), (timeout_ms, early, bytes));
        self.actions.push_back(Action::SendRangeRequest {
            peer,
            id,
            start_height: from,
            count,
            timeout_ms,
        });
        id
    }

    /// The failures by peer `pick` weighs for a batch that failed `failures` times, or `None`
    /// when no peer may be asked now. Once its backoff is over, every peer may be, the ones
    /// that failed it less first. Before that, only a peer that has not failed it: a request
    /// that failed says something of its peer, and another peer free now costs nothing to ask,
    /// while the batch waiting blocks in-order import. A batch whose failure was ours (not
    /// counted against a peer) waits its backoff out.
    fn may_ask(
        &self,
        by_peer: &BTreeMap<P, u32>,
        failures: u32,
        backoff_over: bool,
    ) -> Option<BTreeMap<P, u32>> {
        if backoff_over {
            return Some(by_peer.clone());
        }
        let counted: u64 = by_peer.values().map(|n| u64::from(*n)).sum();
        if counted < u64::from(failures) {
            return None;
        }
        let most = self.config.max_attempts_per_peer;
        Some(by_peer.keys().map(|p| (p.clone(), most)).collect())
    }

    /// A range response for a batch of `chain`: the chain takes it in and the responder is
    /// charged for what the answer shows.
    pub(crate) fn batch_response<D: ChainDirection<P>>(
        &mut self,
        chain: &mut Chain<P, D>,
        which: ChainId,
        (id, key, request): (RequestId, Height, InFlight<P>),
        blocks: Vec<Block>,
        now_ms: u64,
    ) {
        let peer = request.peer;
        let mut effects = Effects::default();
        let response = Response {
            id,
            key,
            start: request.start,
            count: request.count,
            peer: &peer,
            blocks,
        };
        let answer = chain.answer(&mut self.ctx(), response, now_ms, &mut effects);
        match answer {
            Answer::Stale | Answer::Contested => {}
            Answer::Invalid(reason) => self.penalise(now_ms, &peer, PeerAction::InvalidData, reason),
            Answer::Empty { start } if which == ChainId::Backfill => self.lacks_history(now_ms, &peer, start),
            Answer::Empty { start } => self.lacks_block(now_ms, &peer, start),
            Answer::Stored {
                short,
                next,
                got_bytes,
            } => {
                if let Some(entry) = self.peers.entries.get_mut(&peer)
                    && next > request.start
                {
                    entry.delivered(next - 1);
                }
                // A short answer is legal (a server may pace its output or keep its frame small):
                // the batch keeps what came and asks for the rest; nothing is charged or capped.
                if short {
                    tracing::trace!(?peer, next, got_bytes, "short answer");
                }
            }
        }
        self.apply(which, effects, now_ms);
    }

    /// A forward answer was empty at `height`: the peer lacks it. Inside its Status that costs a
    /// small `BrokenPromise`; either way it is not believed above `height - 1` while its head stays.
    fn lacks_block(&mut self, now_ms: u64, peer: &P, height: Height) {
        let Some(entry) = self.peers.entries.get_mut(peer) else {
            return;
        };
        if entry.promises(height) {
            entry.lacks(height);
            self.penalise(
                now_ms,
                peer,
                PeerAction::BrokenPromise,
                "empty range inside its status",
            );
        }
    }

    /// A backfill answer was empty at `height`: the peer's history no longer reaches that low (its
    /// earliest height rose since its Status). No charge and no cap on its head: it is not asked
    /// at or below `height` until its fresh Status, which is asked for.
    fn lacks_history(&mut self, now_ms: u64, peer: &P, height: Height) {
        let Some(entry) = self.peers.entries.get_mut(peer) else {
            return;
        };
        entry.floor = Some(entry.floor.map_or(height, |f| f.max(height)));
        self.refresh_status(now_ms, peer.clone());
    }

    /// Carries out what a chain reported.
    pub(crate) fn apply(&mut self, which: ChainId, effects: Effects<P>, now_ms: u64) {
        for (peer, action, reason) in effects.charges {
            self.penalise(now_ms, &peer, action, reason);
        }
        for peer in effects.useful {
            self.actions.push_back(Action::Penalise {
                peer,
                action: PeerAction::UsefulResponse,
                reason: "blocks imported",
            });
        }
        for id in effects.forgotten {
            self.imports.remove(&id);
        }
        let (blocks, bytes) = effects.accepted;
        self.seen_blocks = self.seen_blocks.saturating_add(blocks);
        self.seen_bytes = self.seen_bytes.saturating_add(bytes);
        if effects.progress && which == ChainId::Forward {
            self.last_progress_ms = now_ms;
        }
        let direction = match which {
            ChainId::Forward => Direction::Forward,
            ChainId::Backfill => Direction::Backfill,
        };
        for (id, key, blocks) in effects.imports {
            self.imports
                .insert(id, ImportPurpose::Batch { chain: which, key });
            self.actions.push_back(Action::Import {
                id,
                blocks,
                direction,
            });
        }
    }

    /// Offers a chain of blocks (gossip, lookups) that links to the forward tip for import.
    pub(crate) fn import_forward_chain(&mut self, blocks: Vec<Block>) {
        let Some(last) = blocks.last() else {
            return;
        };
        let id = ImportId(self.next_import_id);
        self.next_import_id += 1;
        self.imports.insert(
            id,
            ImportPurpose::ForwardChain {
                last: ChainEnd::of(last),
            },
        );
        self.actions.push_back(Action::Import {
            id,
            blocks,
            direction: Direction::Forward,
        });
    }
}
