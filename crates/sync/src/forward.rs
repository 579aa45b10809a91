//! Forward range sync: batches over `tip + 1 ..= target`, downloaded in parallel inside the window,
//! imported strictly in order, each import linked by hash to the one before.

use syncnode_types::validity::check_link;
use syncnode_types::{Block, Hash, Height};

use crate::batch::{Absorbed, Batch, BatchState, Window, absorb, check_range_shape};
use crate::engine::{ChainEnd, ImportPurpose, InFlight, PeerKey, RequestPurpose, SyncEngine};
use crate::events::{Action, Direction, ImportError, ImportId, RequestId};
use crate::peer_score::PeerAction;

/// Most peers' claims remembered for one height, and most heights with claims.
const MAX_CLAIMS_PER_HEIGHT: usize = 16;
const MAX_CLAIM_HEIGHTS: usize = 4096;

impl<P: PeerKey> SyncEngine<P> {
    pub(crate) fn forward_buffered_bytes(&self) -> usize {
        self.forward.batches.values().map(|b| b.bytes).sum()
    }

    /// Drops batches that no longer fit (above the target, or not continuing the tip) and adds
    /// batches up to the target while the window has room.
    pub(crate) fn forward_fill_batches(&mut self, now_ms: u64) {
        let target = self.target;
        let tip = self.forward.tip.height;
        let first_open = self
            .forward
            .batches
            .iter()
            .find(|(_, b)| !matches!(b.state, BatchState::Importing { .. }))
            .map(|(k, _)| *k);
        if first_open.is_some_and(|k| k != tip.saturating_add(1)) {
            // The tip moved under the batches (a rollback or a reset): start over from it.
            self.forward
                .batches
                .retain(|_, b| matches!(b.state, BatchState::Importing { .. }));
        }
        self.forward
            .batches
            .retain(|start, b| *start <= target || matches!(b.state, BatchState::Importing { .. }));
        // A batch reaching above a target that dropped ends at the target (or at what it holds):
        // no peer may be able to serve its old end.
        for batch in self.forward.batches.values_mut() {
            if batch.end > target && !matches!(batch.state, BatchState::Importing { .. }) {
                batch.end = target.max(batch.next_height().saturating_sub(1));
                if batch.is_full() {
                    // Any request out for it is now stale; its answer will be ignored.
                    batch.state = BatchState::Complete;
                }
            }
        }
        let size = batch_blocks(
            self.config.batch_size,
            self.config.window_bytes,
            self.config.window_batches,
            self.block_size_estimate(),
        );
        while self.forward.batches.len() < self.config.window_batches {
            let next = self
                .forward
                .batches
                .last_key_value()
                .map_or(tip.saturating_add(1), |(_, b)| b.end.saturating_add(1));
            if next > target {
                break;
            }
            let end = next.saturating_add(size - 1).min(target);
            self.forward.batches.insert(next, Batch::new(next, end, now_ms));
        }
    }

    /// The average size of the blocks received so far. Until blocks arrive it is unknown and the
    /// largest possible is assumed, so that no batch can outgrow its window (one that did could
    /// never complete).
    pub(crate) fn block_size_estimate(&self) -> u64 {
        self.forward
            .seen_bytes
            .checked_div(self.forward.seen_blocks)
            .unwrap_or(crate::config::MIN_WINDOW_BYTES as u64)
    }

    /// Sends requests for waiting batches, lowest first, while the byte window has room.
    pub(crate) fn forward_assign(&mut self, now_ms: u64) {
        let estimate = self
            .forward
            .seen_bytes
            .checked_div(self.forward.seen_blocks)
            .unwrap_or(0) as usize;
        let lowest_open = self
            .forward
            .batches
            .iter()
            .find(|(_, b)| !matches!(b.state, BatchState::Importing { .. } | BatchState::Complete))
            .map(|(k, _)| *k);
        let mut reserved: usize = self
            .forward
            .batches
            .values()
            .filter(|b| matches!(b.state, BatchState::InFlight { .. }))
            .map(|b| estimate.saturating_mul(b.missing() as usize))
            .sum();
        let ready: Vec<Height> = self
            .forward
            .batches
            .iter()
            .filter(|(_, b)| b.is_waiting_ready(now_ms))
            .map(|(k, _)| *k)
            .collect();
        for key in ready {
            let used = self.forward_buffered_bytes().saturating_add(reserved);
            if used >= self.config.window_bytes && Some(key) != lowest_open {
                break;
            }
            let Some(batch) = self.forward.batches.get(&key) else {
                continue;
            };
            if batch.is_full() {
                if let Some(batch) = self.forward.batches.get_mut(&key) {
                    batch.state = BatchState::Complete;
                }
                continue;
            }
            let (from, to, failures) = (batch.next_height(), batch.end, batch.failures);
            let peer_failures = batch.peer_failures.clone();
            let (peer, exhausted) = self.pick_peer(now_ms, from, to, &peer_failures);
            let Some(peer) = peer else {
                if exhausted && let Some(batch) = self.forward.batches.get_mut(&key) {
                    // Every peer that could serve it has failed it: start counting afresh.
                    batch.peer_failures.clear();
                }
                continue;
            };
            let count = to - from + 1;
            let id = self.send_range_request(
                now_ms,
                peer,
                RequestPurpose::Forward { batch: key },
                from,
                count,
                failures,
            );
            if let Some(batch) = self.forward.batches.get_mut(&key) {
                batch.state = BatchState::InFlight { id };
            }
            reserved = reserved.saturating_add(estimate.saturating_mul(count as usize));
        }
    }

    /// A range response for a forward batch.
    pub(crate) fn forward_response(
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
            self.forward_request_failed(now_ms, id, key, &peer);
            return;
        }
        let absorbed = absorb(
            &mut self.forward.batches,
            key,
            id,
            request.start,
            &peer,
            blocks,
            Window {
                bytes: self.config.window_bytes,
                batches: self.config.window_batches,
            },
            true,
            now_ms,
        );
        match absorbed {
            Absorbed::Stale => {}
            Absorbed::Empty => {
                self.charge_if_promised(now_ms, &peer, request.start, "empty range inside its status");
                self.forward_request_failed(now_ms, id, key, &peer);
            }
            Absorbed::BadLink => {
                self.penalise(
                    now_ms,
                    &peer,
                    PeerAction::InvalidData,
                    "breaks rule 1-2 against the blocks before",
                );
                self.forward_request_failed(now_ms, id, key, &peer);
            }
            Absorbed::Contested {
                earlier,
                height,
                held,
                claimed,
            } => {
                self.forward_request_failed(now_ms, id, key, &peer);
                self.record_claim(now_ms, &peer, height, claimed);
                if let Some(earlier) = &earlier {
                    self.record_claim(now_ms, earlier, height, held);
                    if let Some(batch) = self.forward.batches.get_mut(&key) {
                        *batch.peer_failures.entry(earlier.clone()).or_insert(0) += 1;
                    }
                }
            }
            Absorbed::Stored {
                kept,
                got,
                got_bytes,
                full,
            } => {
                self.forward.seen_blocks += kept as u64;
                self.forward.seen_bytes += self
                    .forward
                    .batches
                    .get(&key)
                    .map_or(0, |b| b.bytes as u64)
                    .min(got_bytes as u64);
                if kept > 0 {
                    self.last_progress_ms = now_ms;
                }
                let next = request.start + kept as u64;
                if kept == got && !full {
                    self.charge_short(now_ms, &peer, next, got_bytes);
                }
                let delay = if kept == 0 {
                    self.config.retry_min_delay_ms
                } else {
                    0
                };
                if let Some(batch) = self.forward.batches.get_mut(&key) {
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

    /// An empty answer costs a little only when the peer's last Status promised `height`; either
    /// way the peer is not believed above `height - 1` any more.
    pub(crate) fn charge_if_promised(&mut self, now_ms: u64, peer: &P, height: Height, reason: &'static str) {
        let Some(entry) = self.peers.entries.get_mut(peer) else {
            return;
        };
        let promised = entry.promises(height);
        if promised {
            entry.lacks(height);
            self.penalise(now_ms, peer, PeerAction::BrokenPromise, reason);
        }
    }

    /// A short answer (legal) is charged a little only when it stopped inside the peer's promised
    /// range and well below the frame limit (so it was not cut to fit the frame).
    pub(crate) fn charge_short(&mut self, now_ms: u64, peer: &P, next: Height, got_bytes: usize) {
        if got_bytes < crate::config::MAX_RESPONSE_BYTES / 2 {
            self.charge_if_promised(now_ms, peer, next, "short range inside its status");
        }
    }

    /// A forward request ended without (usable) data: back off and ask elsewhere.
    pub(crate) fn forward_request_failed(&mut self, now_ms: u64, id: RequestId, key: Height, peer: &P) {
        if let Some(batch) = self.forward.batches.get_mut(&key)
            && batch.state == (BatchState::InFlight { id })
        {
            batch.fail(Some(peer), now_ms, &self.config, &mut self.jitter);
        }
    }

    /// Remembers that `peer` vouched for `hash` at `height`, to be settled when `height` imports.
    pub(crate) fn record_claim(&mut self, now_ms: u64, peer: &P, height: Height, hash: Hash) {
        let head = self.forward.head;
        if height < head.height {
            return;
        }
        if height == head.height {
            if hash != head.hash {
                self.penalise(
                    now_ms,
                    peer,
                    PeerAction::ProvenWrong,
                    "contradicted by the imported chain",
                );
            }
            return;
        }
        let claims = self.forward.claims.entry(height).or_default();
        if claims.len() < MAX_CLAIMS_PER_HEIGHT && !claims.iter().any(|(p, h)| p == peer && *h == hash) {
            claims.push((peer.clone(), hash));
        }
        while self.forward.claims.len() > MAX_CLAIM_HEIGHTS {
            self.forward.claims.pop_last();
        }
    }

    /// Charges every peer whose claim is contradicted by `blocks`, which just imported.
    fn settle_claims(&mut self, now_ms: u64, blocks: &[Block]) {
        let (Some(first), Some(last)) = (blocks.first(), blocks.last()) else {
            return;
        };
        let mut wrong: Vec<P> = Vec::new();
        let settled: Vec<Height> = self
            .forward
            .claims
            .range(..=last.height())
            .map(|(h, _)| *h)
            .collect();
        for height in settled {
            let Some(claims) = self.forward.claims.remove(&height) else {
                continue;
            };
            let Some(block) = height
                .checked_sub(first.height())
                .and_then(|i| blocks.get(i as usize))
            else {
                continue;
            };
            let hash = block.hash();
            wrong.extend(claims.into_iter().filter(|(_, h)| *h != hash).map(|(p, _)| p));
        }
        wrong.sort();
        wrong.dedup();
        for peer in wrong {
            self.penalise(
                now_ms,
                &peer,
                PeerAction::ProvenWrong,
                "contradicted by the imported chain",
            );
        }
    }

    /// Offers complete batches for import, in order, each checked to link to the tip.
    pub(crate) fn forward_try_import(&mut self, now_ms: u64) {
        if now_ms < self.forward.import_retry_at_ms {
            return;
        }
        loop {
            let tip = self.forward.tip;
            let Some((&key, batch)) = self
                .forward
                .batches
                .iter()
                .find(|(_, b)| !matches!(b.state, BatchState::Importing { .. }))
            else {
                return;
            };
            if batch.state != BatchState::Complete || key != tip.height.saturating_add(1) {
                return;
            }
            let (Some(first), Some(last)) = (batch.blocks.first(), batch.blocks.last()) else {
                return;
            };
            let supplier = batch.supplier_of(0).cloned();
            if first.header.parent_hash != tip.hash {
                // The tip is chained by hash to our head; whether it or this batch is wrong is
                // settled when the tip's height imports. Meanwhile this batch is fetched again.
                let claimed = first.header.parent_hash;
                if let Some(batch) = self.forward.batches.get_mut(&key) {
                    batch.clear();
                    batch.fail(supplier.as_ref(), now_ms, &self.config, &mut self.jitter);
                }
                if let Some(peer) = supplier {
                    self.record_claim(now_ms, &peer, tip.height, claimed);
                }
                return;
            }
            if let Some(parent) = tip.header
                && check_link(&first.header, &parent).is_err()
            {
                if let Some(batch) = self.forward.batches.get_mut(&key) {
                    batch.clear();
                    batch.fail(supplier.as_ref(), now_ms, &self.config, &mut self.jitter);
                }
                if let Some(peer) = supplier {
                    self.penalise(
                        now_ms,
                        &peer,
                        PeerAction::InvalidData,
                        "breaks rule 2 against its parent",
                    );
                }
                return;
            }
            let new_tip = ChainEnd::of(last);
            let blocks = batch.blocks.clone();
            let id = self.new_import_id();
            if let Some(batch) = self.forward.batches.get_mut(&key) {
                batch.state = BatchState::Importing { id };
            }
            self.forward.tip = new_tip;
            self.imports
                .insert(id, ImportPurpose::ForwardBatch { batch: key });
            self.actions.push_back(Action::Import {
                id,
                blocks,
                direction: Direction::Forward,
            });
        }
    }

    /// Offers a chain of blocks (gossip, lookups) that links to the tip for import.
    pub(crate) fn import_forward_chain(&mut self, blocks: Vec<Block>) {
        let Some(last) = blocks.last() else {
            return;
        };
        let last = ChainEnd::of(last);
        let id = self.new_import_id();
        self.forward.tip = last;
        self.imports.insert(id, ImportPurpose::ForwardChain { last });
        self.actions.push_back(Action::Import {
            id,
            blocks,
            direction: Direction::Forward,
        });
    }

    pub(crate) fn forward_import_result(
        &mut self,
        now_ms: u64,
        _id: ImportId,
        purpose: ImportPurpose,
        result: Result<(), ImportError>,
    ) {
        match (purpose, result) {
            (ImportPurpose::ForwardBatch { batch }, Ok(())) => {
                let Some(done) = self.forward.batches.remove(&batch) else {
                    return;
                };
                if let Some(last) = done.blocks.last() {
                    self.forward.head = ChainEnd::of(last);
                }
                self.last_progress_ms = now_ms;
                self.settle_claims(now_ms, &done.blocks);
                for peer in done.all_suppliers() {
                    self.peers
                        .ranking
                        .apply(&peer, PeerAction::UsefulResponse, now_ms);
                }
            }
            (ImportPurpose::Backfill { .. }, Ok(())) => {}
            (ImportPurpose::ForwardChain { last }, Ok(())) => {
                if last.height > self.forward.head.height {
                    self.forward.head = last;
                    self.last_progress_ms = now_ms;
                }
            }
            (_, Err(ImportError::DoesNotLink { height, hash })) => {
                tracing::warn!(height, %hash, "import did not link; restarting from the store's head");
                self.reset_forward(height, hash);
            }
            (purpose, Err(ImportError::Rejected { height, reason })) => {
                tracing::warn!(height, reason, "store rejected a block");
                if let ImportPurpose::ForwardBatch { batch } = purpose
                    && let Some(b) = self.forward.batches.get_mut(&batch)
                {
                    // Charged only when the store names a block of the batch; either way the
                    // batch backs off and is fetched again, preferably from someone else.
                    let supplier = height
                        .checked_sub(b.start)
                        .and_then(|i| b.supplier_of(i as usize))
                        .cloned();
                    let blamed = supplier.clone().or_else(|| b.supplier_of(0).cloned());
                    b.clear();
                    b.fail(blamed.as_ref(), now_ms, &self.config, &mut self.jitter);
                    if let Some(peer) = supplier {
                        self.penalise(
                            now_ms,
                            &peer,
                            PeerAction::InvalidData,
                            "block rejected by the store",
                        );
                    }
                }
                self.rollback_forward(now_ms, 0);
            }
            (_, Err(ImportError::Local(reason))) => {
                tracing::warn!(reason, "import failed locally; retrying later");
                let delay = self.jitter.stretch(self.config.local_retry_ms);
                self.rollback_forward(now_ms, delay);
            }
        }
    }

    /// Imports not yet confirmed are forgotten: their batches wait to be offered again from the
    /// confirmed head, after `delay_ms`.
    fn rollback_forward(&mut self, now_ms: u64, delay_ms: u64) {
        for batch in self.forward.batches.values_mut() {
            if let BatchState::Importing { id } = batch.state {
                self.imports.remove(&id);
            }
            if matches!(batch.state, BatchState::Importing { .. } | BatchState::Complete) {
                batch.state = if batch.is_full() {
                    BatchState::Complete
                } else {
                    BatchState::Waiting {
                        not_before_ms: now_ms,
                    }
                };
            }
        }
        self.imports
            .retain(|_, p| !matches!(p, ImportPurpose::ForwardChain { .. }));
        self.forward.tip = self.forward.head;
        self.forward.import_retry_at_ms = now_ms.saturating_add(delay_ms);
    }

    /// Forgets every batch and restarts forward sync from `height`/`hash` (the store's word).
    pub(crate) fn reset_forward(&mut self, height: Height, hash: Hash) {
        for batch in self.forward.batches.values() {
            if let BatchState::Importing { id } = batch.state {
                self.imports.remove(&id);
            }
        }
        self.imports.retain(|_, p| {
            !matches!(
                p,
                ImportPurpose::ForwardChain { .. } | ImportPurpose::ForwardBatch { .. }
            )
        });
        self.forward.batches.clear();
        self.forward.claims.clear();
        let end = ChainEnd {
            height,
            hash,
            header: None,
        };
        self.forward.head = end;
        self.forward.tip = end;
    }
}

/// Blocks per new batch: `max_blocks`, or fewer when blocks are large, so that one batch holds
/// about its share of the window (`window_bytes / window_batches`). A 512-block batch of 64 KiB
/// blocks is 32 MiB: half the window in one request, so one or two requests are in flight, and
/// one import holding all of it; and a batch larger than the whole window could never complete.
pub(crate) fn batch_blocks(
    max_blocks: u64,
    window_bytes: usize,
    window_batches: usize,
    avg_block_bytes: u64,
) -> u64 {
    let share = (window_bytes / window_batches.max(1)) as u64;
    match share.checked_div(avg_block_bytes) {
        Some(fit) => fit.min(max_blocks).max(1),
        None => max_blocks.max(1),
    }
}

#[cfg(test)]
mod tests {
    use super::batch_blocks;

    #[test]
    fn batches_of_large_blocks_are_cut_to_their_share_of_the_window() {
        const MIB: usize = 1024 * 1024;
        // Small blocks: the configured size.
        assert_eq!(batch_blocks(512, 64 * MIB, 16, 1024), 512);
        // 64 KiB blocks: 4 MiB per batch.
        assert_eq!(batch_blocks(512, 64 * MIB, 16, 65_536), 64);
        // The largest blocks (1 MiB): 4 per batch; never fewer than one.
        assert_eq!(batch_blocks(512, 64 * MIB, 16, MIB as u64 + 200), 3);
        assert_eq!(batch_blocks(512, MIB, 16, MIB as u64), 1);
        assert_eq!(batch_blocks(0, 64 * MIB, 0, 10), 1);
        assert_eq!(batch_blocks(512, 64 * MIB, 16, 0), 512);
    }
}
