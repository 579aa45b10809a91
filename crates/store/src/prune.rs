//! Pruning: deleting old canonical history below a height, in bounded atomic commits.
//!
//! Each commit deletes at most [`PRUNE_CHUNK`] blocks from the bottom of the unbroken range
//! together with their canonical index entries, and moves the `backfill_low` pointer and the
//! history floor up to the lowest block it keeps. So after a crash at any instant the store is a
//! partly pruned but consistent store: every invariant of the crate holds after every commit.
//! Genesis (its block and `canon[0]`) is always kept; so is everything at or above the finalized
//! block. Side-chain blocks are not indexed by height and are left alone. Payload files whose
//! blocks are all pruned are removed at the next open (see `payloads.rs`).

use syncnode_types::Height;

use crate::canon::{CanonEdits, CanonReader};
use crate::schema::*;
use crate::write::PayloadCounts;
use crate::{BlockStore, StoreError, lock};

/// Most blocks deleted by one commit.
pub const PRUNE_CHUNK: u64 = 4096;

/// What [`BlockStore::prune_below`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PruneOutcome {
    /// The lowest block of the unbroken canonical range now (its height is `earliest_height`).
    pub low: Pointer,
    /// Blocks deleted.
    pub pruned: u64,
    /// Commits made.
    pub commits: u64,
}

impl BlockStore {
    /// Deletes the canonical blocks and index entries below `height` (capped at the finalized
    /// height; genesis is kept), moving the low pointer and the history floor up to the lowest
    /// block kept, in commits of at most [`PRUNE_CHUNK`] blocks. Idempotent: nothing happens when
    /// the low pointer is already at or above the (capped) height.
    pub fn prune_below(&self, height: Height) -> Result<PruneOutcome, StoreError> {
        self.prune_in_chunks(height, PRUNE_CHUNK, u64::MAX)
    }

    /// [`BlockStore::prune_below`] with a chunk size and a most number of commits (tests stop it
    /// midway, as a crash would).
    pub(crate) fn prune_in_chunks(
        &self,
        height: Height,
        chunk: u64,
        max_commits: u64,
    ) -> Result<PruneOutcome, StoreError> {
        let chunk = chunk.max(1);
        let mut outcome = PruneOutcome {
            low: self.pointers().low,
            pruned: 0,
            commits: 0,
        };
        while outcome.commits < max_commits {
            // The writer lock is taken per commit, so imports interleave with a long prune.
            let _writer = lock(&self.writer);
            let p = self.pointers();
            let target = height.min(p.finalized.height);
            if p.low.height >= target {
                outcome.low = p.low;
                break;
            }
            let to = p.low.height.saturating_add(chunk).min(target);
            let kept = self.hash_at(to)?.ok_or_else(|| {
                StoreError::Corrupt(format!("no canonical block at {to} under the finalized block"))
            })?;
            let mut changes = Vec::new();
            let mut deleted = Vec::new();
            let mut canon = CanonEdits::default();
            let mut counts = PayloadCounts::default();
            // Genesis stays, whatever the low pointer.
            let mut reader = CanonReader::new(&self.db);
            for h in p.low.height.max(1)..to {
                if let Some(hash) = reader.hash_at(h)? {
                    if let Some(r) = self
                        .db
                        .get(COL_BLOCKS, &hash.0)?
                        .as_deref()
                        .and_then(external_payload)
                    {
                        counts.add(r.file, -1);
                    }
                    changes.push((COL_BLOCKS, hash.0.to_vec(), None));
                    deleted.push(hash);
                }
                canon.remove(h);
            }
            canon.write_to(&self.db, &mut changes)?;
            let low = Pointer {
                height: to,
                hash: kept,
            };
            let floor = p.floor.max(to);
            changes.push((COL_META, META_LOW.to_vec(), Some(low.encode())));
            changes.push((COL_META, META_FLOOR.to_vec(), Some(floor.to_be_bytes().to_vec())));
            self.commit_counted(changes, counts)?;
            let mut next = p;
            next.low = low;
            next.floor = floor;
            self.set_pointers(next);
            let mut cache = lock(&self.cache);
            for hash in &deleted {
                cache.remove(hash);
            }
            outcome.low = low;
            outcome.pruned += deleted.len() as u64;
            outcome.commits += 1;
        }
        if outcome.pruned > 0 {
            tracing::info!(
                store = %self.path.display(),
                pruned = outcome.pruned,
                earliest = outcome.low.height,
                "pruned history"
            );
        }
        Ok(outcome)
    }
}
