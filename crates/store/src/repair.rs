//! The check at open: the recent chain under the head, and the pointers, repaired where a crash or
//! a lost data tail left them pointing at missing or unlinked blocks.

use syncnode_types::{Block, Height};

use crate::canon::CanonEdits;
use crate::schema::*;
use crate::{BlockStore, Pointers, StoreError, lock};

/// What the check at open found and changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RepairReport {
    /// Blocks checked.
    pub checked: u64,
    /// Each change made, in words, for the log.
    pub actions: Vec<String>,
}

impl RepairReport {
    /// Nothing needed repair.
    pub fn is_clean(&self) -> bool {
        self.actions.is_empty()
    }
}

impl BlockStore {
    /// The canonical block at `height` if it is stored intact (decodes, hashes to its key, has
    /// that height); `None` when missing or damaged.
    fn intact_at(&self, height: Height) -> Option<Block> {
        let hash = self.hash_at(height).ok().flatten()?;
        let block = self.block(&hash).ok().flatten()?;
        (block.height() == height).then_some(block)
    }

    /// Walks from the head down `depth` blocks (never below the backfill low) checking that every
    /// block is intact and links to the one below; rolls the head back below the lowest fault.
    /// Checks that the finalized and low pointers name intact blocks, moving them if not. With
    /// `apply` false it only reports what it would change.
    pub(crate) fn check_and_repair_recent(
        &self,
        depth: u64,
        apply: bool,
    ) -> Result<RepairReport, StoreError> {
        let _writer = lock(&self.writer);
        let p = self.pointers();
        let mut report = RepairReport::default();
        let mut next = p;
        let mut changes: Vec<Change> = Vec::new();
        // The low pointer first: the walk below never goes under it.
        next.low = self.repair_low(p, depth, &mut report)?;
        let bottom = next.low.height.max(p.head.height.saturating_sub(depth));
        if let Some(fault) = self.lowest_fault(p.head, bottom, &mut report) {
            next.head = self.roll_back_head(p.head, next.low, fault, &mut changes, &mut report)?;
            if next.finalized.height > next.head.height {
                report.actions.push(format!(
                    "finalized block at {} was lost: finalized rolled back to {}",
                    next.finalized.height, next.head.height
                ));
                next.finalized = next.head;
            }
        }
        if next.finalized.height < next.low.height
            || self.intact_at(next.finalized.height).map(|b| b.hash()) != Some(next.finalized.hash)
        {
            let fallback = next.low;
            report.actions.push(format!(
                "finalized pointer at {} did not name an intact canonical block: reset to {}",
                next.finalized.height, fallback.height
            ));
            next.finalized = fallback;
        }
        if next != p && apply {
            self.commit_repair(p, next, changes, &report)?;
        }
        Ok(report)
    }

    /// The low pointer, or the lowest intact block up to `depth` above it if its block is gone.
    fn repair_low(&self, p: Pointers, depth: u64, report: &mut RepairReport) -> Result<Pointer, StoreError> {
        if self.intact_at(p.low.height).map(|b| b.hash()) == Some(p.low.hash) {
            return Ok(p.low);
        }
        let found =
            (p.low.height + 1..=p.head.height.min(p.low.height + depth)).find_map(|h| self.intact_at(h));
        let Some(block) = found else {
            return Err(StoreError::Corrupt(format!(
                "the lowest block at {} and the {depth} above it are missing; the store cannot be repaired",
                p.low.height
            )));
        };
        let low = Pointer::at(&block);
        report.actions.push(format!(
            "backfill low block at {} was missing: low moved up to {}",
            p.low.height, low.height
        ));
        Ok(low)
    }

    /// Walks from `head` down to `bottom`: the lowest height whose block is missing, damaged or
    /// not the parent of the one above, if any.
    fn lowest_fault(&self, head: Pointer, bottom: Height, report: &mut RepairReport) -> Option<Height> {
        let mut lowest_fault: Option<Height> = None;
        let mut above: Option<Block> = None;
        for height in (bottom..=head.height).rev() {
            report.checked += 1;
            let block = self.intact_at(height);
            let fault = match (&block, &above) {
                (None, _) => Some(height),
                (Some(b), None) if height == head.height && b.hash() != head.hash => Some(height),
                (Some(b), Some(a)) if a.header.parent_hash != b.hash() => Some(height + 1),
                _ => None,
            };
            if let Some(f) = fault {
                lowest_fault = Some(f);
            }
            above = block;
        }
        lowest_fault
    }

    /// The highest intact block below `fault` (not below `low`), as the new head; the canonical
    /// index entries above it are removed in `changes`.
    fn roll_back_head(
        &self,
        head: Pointer,
        low: Pointer,
        fault: Height,
        changes: &mut Vec<Change>,
        report: &mut RepairReport,
    ) -> Result<Pointer, StoreError> {
        let new_head = (low.height..fault)
            .rev()
            .find_map(|h| self.intact_at(h))
            .ok_or_else(|| {
                StoreError::Corrupt(format!("no intact block between {} and {fault}", low.height))
            })?;
        let new_head = Pointer::at(&new_head);
        let mut canon = CanonEdits::default();
        for h in new_head.height + 1..=head.height {
            canon.remove(h);
        }
        canon.write_to(&self.db, changes)?;
        report.actions.push(format!(
            "blocks from height {fault} were missing or did not link: head rolled back from {} to {}",
            head.height, new_head.height
        ));
        Ok(new_head)
    }

    /// Commits the moved pointers with `changes` and logs what was done.
    fn commit_repair(
        &self,
        p: Pointers,
        next: Pointers,
        mut changes: Vec<Change>,
        report: &RepairReport,
    ) -> Result<(), StoreError> {
        for (name, old, new) in [
            (META_HEAD, p.head, next.head),
            (META_FINALIZED, p.finalized, next.finalized),
            (META_LOW, p.low, next.low),
        ] {
            if old != new {
                changes.push((COL_META, name.to_vec(), Some(new.encode())));
            }
        }
        self.db.commit(changes)?;
        self.set_pointers(next);
        for action in &report.actions {
            tracing::warn!(store = %self.path.display(), "repair: {action}");
        }
        Ok(())
    }
}
