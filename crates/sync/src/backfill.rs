//! Backfill: history below a trusted checkpoint, fetched downward from the lowest stored block L to
//! the floor (or genesis), chained by parent hash.
//!
//! A block below L is accepted only if its hash is the parent hash of the block above it, so the
//! whole backfilled history hangs off L by hashes: a batch whose top block's hash is not the hash
//! we wait for is proven wrong at once (nothing else could be right). Backfill has its own window,
//! sends requests only while forward sync is not behind, and once it reaches the floor it is done
//! for good: [`Action::BackfillComplete`] is emitted once and no more work is ever scheduled.

use std::collections::BTreeMap;

use syncnode_types::{Block, Hash, Height};

use crate::batch::{Absorbed, Batch, BatchState, Window, absorb, check_range_shape};
use crate::engine::{InFlight, PeerKey, RequestPurpose, SyncEngine};
use crate::events::{Action, BackfillStart, Direction, ImportError, RequestId};
use crate::peer_score::PeerAction;

/// Backfill's state.
#[derive(Debug, Clone)]
pub(crate) struct Backfill<P> {
    /// Lowest height to fetch (1 when backfilling to genesis, which is never fetched).
    pub floor: Height,
    /// When backfilling to genesis, block 1's parent must be this.
    pub genesis_hash: Hash,
    /// Whether the floor is genesis.
    pub to_genesis: bool,
    /// Lowest block offered for import, and its parent hash: the next batch must end below it.
    pub pending_lowest: Height,
    pub pending_parent: Hash,
    /// Lowest block the node confirmed stored.
    pub confirmed_lowest: Height,
    pub confirmed_parent: Hash,
    /// Batches keyed by start height; the highest is imported first.
    pub batches: BTreeMap<Height, Batch<P>>,
    /// Terminal: the floor is reached.
    pub done: bool,
    pub import_retry_at_ms: u64,
}

impl<P: Clone + Ord> Backfill<P> {
    pub(crate) fn new(start: BackfillStart, genesis_hash: Hash) -> Self {
        let to_genesis = start.floor_height == 0;
        Backfill {
            floor: start.floor_height.max(1),
            genesis_hash,
            to_genesis,
            pending_lowest: start.lowest_height,
            pending_parent: start.lowest_parent_hash,
            confirmed_lowest: start.lowest_height,
            confirmed_parent: start.lowest_parent_hash,
            batches: BTreeMap::new(),
            done: false,
            import_retry_at_ms: 0,
        }
    }

    pub(crate) fn buffered_bytes(&self) -> usize {
        self.batches.values().map(|b| b.bytes).sum()
    }

    /// Whether the confirmed history reaches the floor.
    fn reached_floor(&self) -> bool {
        self.confirmed_lowest <= self.floor
    }
}

impl<P: PeerKey> SyncEngine<P> {
    /// Marks backfill done when the floor is reached; emits the terminal action once.
    pub(crate) fn finish_backfill_if_done(&mut self) {
        let Some(bf) = self.backfill.as_mut() else {
            return;
        };
        if bf.done || !bf.reached_floor() {
            return;
        }
        if bf.to_genesis && bf.confirmed_lowest == 1 && bf.confirmed_parent != bf.genesis_hash {
            tracing::error!(
                "backfilled history does not end at our genesis: the checkpoint is on another chain"
            );
        }
        bf.done = true;
        bf.batches.clear();
        tracing::info!(lowest = bf.confirmed_lowest, "backfill complete");
        self.actions.push_back(Action::BackfillComplete {
            lowest_height: bf.confirmed_lowest,
        });
    }

    /// Backfill's share of the step after every event: batches, imports, requests.
    pub(crate) fn backfill_drive(&mut self, now_ms: u64) {
        let forward_behind = self.target > self.forward.head.height;
        let size = crate::forward::batch_blocks(
            self.config.backfill_batch_size,
            self.config.backfill_window_bytes,
            self.config.backfill_window_batches,
            self.block_size_estimate(),
        );
        let window = self.config.backfill_window_batches;
        let Some(bf) = self.backfill.as_mut() else {
            return;
        };
        if bf.done {
            return;
        }
        while bf.batches.len() < window {
            let top = bf
                .batches
                .first_key_value()
                .map_or(bf.pending_lowest, |(k, _)| *k);
            if top <= bf.floor {
                break;
            }
            let end = top - 1;
            let start = end.saturating_sub(size - 1).max(bf.floor);
            bf.batches.insert(start, Batch::new(start, end, now_ms));
        }
        self.backfill_try_import(now_ms);
        if !forward_behind {
            self.backfill_assign(now_ms);
        }
    }

    fn backfill_try_import(&mut self, now_ms: u64) {
        loop {
            let Some(bf) = self.backfill.as_mut() else {
                return;
            };
            if now_ms < bf.import_retry_at_ms {
                return;
            }
            let Some((&key, batch)) = bf
                .batches
                .iter()
                .rev()
                .find(|(_, b)| !matches!(b.state, BatchState::Importing { .. }))
            else {
                return;
            };
            if batch.state != BatchState::Complete || batch.end.saturating_add(1) != bf.pending_lowest {
                return;
            }
            let (Some(first), Some(last)) = (batch.blocks.first(), batch.blocks.last()) else {
                return;
            };
            if last.hash() != bf.pending_parent {
                let supplier = batch.supplier_of(batch.blocks.len() - 1).cloned();
                if let Some(batch) = bf.batches.get_mut(&key) {
                    batch.clear();
                    batch.fail(supplier.as_ref(), now_ms, &self.config, &mut self.jitter);
                    if let Some(peer) = &supplier {
                        batch.exclude(peer, &self.config);
                    }
                }
                if let Some(peer) = supplier {
                    self.penalise(
                        now_ms,
                        &peer,
                        PeerAction::ProvenWrong,
                        "backfill blocks do not chain to the stored history",
                    );
                }
                return;
            }
            let (lowest, parent) = (first.height(), first.header.parent_hash);
            let blocks = batch.blocks.clone();
            let id = self.new_import_id();
            let Some(bf) = self.backfill.as_mut() else {
                return;
            };
            if let Some(batch) = bf.batches.get_mut(&key) {
                batch.state = BatchState::Importing { id };
            }
            bf.pending_lowest = lowest;
            bf.pending_parent = parent;
            self.imports
                .insert(id, crate::engine::ImportPurpose::Backfill { batch: key });
            self.actions.push_back(Action::Import {
                id,
                blocks,
                direction: Direction::Backfill,
            });
        }
    }

    fn backfill_assign(&mut self, now_ms: u64) {
        let Some(bf) = self.backfill.as_ref() else {
            return;
        };
        if bf.buffered_bytes() >= self.config.backfill_window_bytes {
            return;
        }
        // Highest first: that is the order of import.
        let ready: Vec<(Height, Height, Height, u32)> = bf
            .batches
            .iter()
            .rev()
            .filter(|(_, b)| b.is_waiting_ready(now_ms) && !b.is_full())
            .map(|(k, b)| (*k, b.next_height(), b.end, b.failures))
            .collect();
        for (key, from, to, failures) in ready {
            let peer_failures = self
                .backfill
                .as_ref()
                .and_then(|bf| bf.batches.get(&key))
                .map(|b| b.peer_failures.clone())
                .unwrap_or_default();
            let (peer, exhausted) = self.pick_peer(now_ms, from, to, &peer_failures);
            let batch = self.backfill.as_mut().and_then(|bf| bf.batches.get_mut(&key));
            let Some(peer) = peer else {
                if exhausted && let Some(batch) = batch {
                    batch.peer_failures.clear();
                }
                continue;
            };
            let id = self.send_range_request(
                now_ms,
                peer,
                RequestPurpose::Backfill { batch: key },
                from,
                to - from + 1,
                failures,
            );
            if let Some(batch) = self.backfill.as_mut().and_then(|bf| bf.batches.get_mut(&key)) {
                batch.state = BatchState::InFlight { id };
            }
        }
    }

    /// A range response for a backfill batch.
    pub(crate) fn backfill_response(
        &mut self,
        now_ms: u64,
        id: RequestId,
        key: Height,
        request: InFlight<P>,
        blocks: Vec<Block>,
    ) {
        let peer = request.peer;
        if let Err(reason) = check_range_shape(request.start, request.count, &blocks) {
            self.penalise(now_ms, &peer, PeerAction::InvalidData, reason);
            self.backfill_request_failed(now_ms, id, key, &peer);
            return;
        }
        let window = Window {
            bytes: self.config.backfill_window_bytes,
            batches: self.config.backfill_window_batches,
        };
        let Some(bf) = self.backfill.as_mut() else {
            return;
        };
        let absorbed = absorb(
            &mut bf.batches,
            key,
            id,
            request.start,
            &peer,
            blocks,
            window,
            false,
            now_ms,
        );
        match absorbed {
            Absorbed::Stale => {}
            Absorbed::Empty => {
                self.charge_if_promised(now_ms, &peer, request.start, "empty range inside its status");
                self.backfill_request_failed(now_ms, id, key, &peer);
            }
            Absorbed::BadLink => {
                self.penalise(
                    now_ms,
                    &peer,
                    PeerAction::InvalidData,
                    "breaks rule 1-2 against the blocks before",
                );
                self.backfill_request_failed(now_ms, id, key, &peer);
            }
            Absorbed::Contested { earlier, .. } => {
                // Settled when the batch is complete: its top must hash to what we wait for.
                self.backfill_request_failed(now_ms, id, key, &peer);
                if let (Some(earlier), Some(batch)) = (
                    earlier,
                    self.backfill.as_mut().and_then(|bf| bf.batches.get_mut(&key)),
                ) {
                    *batch.peer_failures.entry(earlier).or_insert(0) += 1;
                }
            }
            Absorbed::Stored {
                kept,
                got,
                got_bytes,
                full,
            } => {
                // One estimate of the chain's block size serves both directions.
                self.forward.seen_blocks += got as u64;
                self.forward.seen_bytes += got_bytes as u64;
                if kept == got && !full {
                    self.charge_short(now_ms, &peer, request.start + kept as u64, got_bytes);
                }
                let delay = if kept == 0 {
                    self.config.retry_min_delay_ms
                } else {
                    0
                };
                if let Some(batch) = self.backfill.as_mut().and_then(|bf| bf.batches.get_mut(&key)) {
                    batch.state = if full {
                        BatchState::Complete
                    } else {
                        BatchState::Waiting {
                            not_before_ms: now_ms + delay,
                        }
                    };
                }
            }
        }
    }

    pub(crate) fn backfill_request_failed(&mut self, now_ms: u64, id: RequestId, key: Height, peer: &P) {
        if let Some(batch) = self.backfill.as_mut().and_then(|bf| bf.batches.get_mut(&key))
            && batch.state == (BatchState::InFlight { id })
        {
            batch.fail(Some(peer), now_ms, &self.config, &mut self.jitter);
        }
    }

    pub(crate) fn backfill_import_result(
        &mut self,
        now_ms: u64,
        key: Height,
        result: Result<(), ImportError>,
    ) {
        let retry = self.jitter.stretch(self.config.local_retry_ms);
        let Some(bf) = self.backfill.as_mut() else {
            return;
        };
        match result {
            Ok(()) => {
                if let Some(batch) = bf.batches.remove(&key)
                    && let Some(first) = batch.blocks.first()
                {
                    bf.confirmed_lowest = first.height();
                    bf.confirmed_parent = first.header.parent_hash;
                }
                self.finish_backfill_if_done();
            }
            Err(error) => {
                tracing::warn!(%error, "backfill import failed; offering again later");
                let mut rejected_supplier = None;
                for (k, batch) in bf.batches.iter_mut() {
                    if let BatchState::Importing { id } = batch.state {
                        self.imports.remove(&id);
                        batch.state = BatchState::Complete;
                    }
                    if let ImportError::Rejected { height, .. } = &error
                        && *k == key
                    {
                        rejected_supplier = height
                            .checked_sub(batch.start)
                            .and_then(|i| batch.supplier_of(i as usize))
                            .cloned();
                        let blamed = rejected_supplier
                            .clone()
                            .or_else(|| batch.supplier_of(0).cloned());
                        batch.clear();
                        batch.fail(blamed.as_ref(), now_ms, &self.config, &mut self.jitter);
                    }
                }
                bf.pending_lowest = bf.confirmed_lowest;
                bf.pending_parent = bf.confirmed_parent;
                bf.import_retry_at_ms = now_ms.saturating_add(retry);
                if let Some(peer) = rejected_supplier {
                    self.penalise(
                        now_ms,
                        &peer,
                        PeerAction::InvalidData,
                        "block rejected by the store",
                    );
                }
            }
        }
    }
}
