//! Writes: forward import with fork choice, backfill below the lowest block, checkpoint anchors.
//! Each is one atomic commit of blocks, index entries and the pointers that move with them.

use std::collections::BTreeMap;

use syncnode_types::validity::check_link;
use syncnode_types::{Block, Height};

use crate::canon::CanonEdits;
use crate::payloads::EXTERNAL_PAYLOAD_MIN;
use crate::schema::*;
use crate::{BlockStore, Pointers, StoreError, lock};

/// What a forward import did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImportOutcome {
    /// The canonical chain now ends at `head`. `reorg_from` is the lowest height whose canonical
    /// block was replaced, when the import switched to a longer fork.
    Canonical {
        head: Pointer,
        imported: usize,
        reorg_from: Option<Height>,
    },
    /// Every block was already canonical: nothing changed.
    Known,
    /// Stored as a side chain that is not longer than the canonical chain.
    SideChain { tip: Pointer },
}

/// What a backfill import did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackfillOutcome {
    /// The new lowest block of the unbroken canonical range.
    pub low: Pointer,
    /// Blocks newly stored.
    pub imported: usize,
    /// Backfill reached genesis or the history floor.
    pub complete: bool,
}

fn check_consecutive(blocks: &[Block], offset: usize) -> Result<(), StoreError> {
    for (i, pair) in blocks.windows(2).enumerate() {
        check_link(&pair[1].header, &pair[0].header).map_err(|error| StoreError::Invalid {
            index: offset + i + 1,
            error,
        })?;
    }
    Ok(())
}

/// Changes of the per-file counts of blocks referencing payload files, gathered for one commit.
#[derive(Default)]
pub(crate) struct PayloadCounts(BTreeMap<u32, i64>);

impl PayloadCounts {
    /// One more (`+1`) or one fewer (`-1`) stored block references `file`.
    pub fn add(&mut self, file: u32, delta: i64) {
        *self.0.entry(file).or_default() += delta;
    }
}

impl BlockStore {
    /// Adds the writes storing `blocks` to `changes`, and indexes them as canonical at their
    /// heights when `canon` is given. Large payloads are appended to the payload files and synced
    /// here, before the caller's commit; the commit gets their references, the counts and the
    /// new tail. Returns the changes of the files' reference counts, which the caller commits
    /// with `changes` through [`BlockStore::commit_counted`].
    pub(crate) fn put_blocks<'a>(
        &self,
        changes: &mut Vec<Change>,
        blocks: impl IntoIterator<Item = &'a Block>,
        mut canon: Option<&mut CanonEdits>,
    ) -> Result<PayloadCounts, StoreError> {
        let mut counts = PayloadCounts::default();
        let mut external = Vec::new();
        for block in blocks {
            let hash = block.hash();
            if let Some(canon) = canon.as_deref_mut() {
                canon.set(block.height(), hash);
            }
            if block.payload.len() < EXTERNAL_PAYLOAD_MIN {
                changes.push((COL_BLOCKS, hash.0.to_vec(), Some(encode_block(block))));
                continue;
            }
            // A block stored again (a side chain imported twice, a damaged block fetched anew)
            // replaces its old reference.
            if let Some(old) = self.db.get(COL_BLOCKS, &hash.0)?
                && let Some(r) = external_payload(&old)
            {
                counts.add(r.file, -1);
            }
            external.push((hash, block));
        }
        if external.is_empty() {
            return Ok(counts);
        }
        let payloads: Vec<&[u8]> = external.iter().map(|(_, b)| &b.payload[..]).collect();
        let (refs, tail) = self.payloads.append(&payloads)?;
        for ((hash, block), r) in external.iter().zip(&refs) {
            changes.push((COL_BLOCKS, hash.0.to_vec(), Some(encode_external_block(block, r))));
            counts.add(r.file, 1);
        }
        changes.push((COL_META, META_PAYLOAD_TAIL.to_vec(), Some(tail.encode())));
        Ok(counts)
    }

    /// Commits `changes` with the new reference counts of `counts`' files. A file no block
    /// references any more is removed at the next open (`PayloadFiles::open`), when no crash can
    /// bring its references back. Every [`resident::RELEASE_EVERY_WRITES`](crate::resident::RELEASE_EVERY_WRITES) writes, drops
    /// the tables' mapped pages from the resident set.
    pub(crate) fn commit_counted(
        &self,
        mut changes: Vec<Change>,
        counts: PayloadCounts,
    ) -> Result<(), StoreError> {
        for (file, delta) in counts.0 {
            if delta == 0 {
                continue;
            }
            let key = payload_live_key(file);
            let now = match self.db.get(COL_META, &key)? {
                Some(v) => decode_u64("payload count", &v)?,
                None => 0,
            };
            let next = i64::try_from(now).unwrap_or(i64::MAX).saturating_add(delta);
            if next > 0 {
                changes.push((COL_META, key, Some((next as u64).to_be_bytes().to_vec())));
            } else {
                changes.push((COL_META, key, None));
            }
        }
        let writes = changes.len();
        self.db.commit(changes)?;
        if self.release.wrote(writes)
            && let Err(e) = self.db.release_pages()
        {
            // Only memory is at stake: the pages stay resident until the next release.
            tracing::warn!(error = %e, "releasing the store's mapped pages failed");
        }
        Ok(())
    }

    /// Imports consecutive blocks whose rules 3–5 the caller has checked. The first block's parent
    /// must be stored. Extends the head, switches to a longer fork above the finalized block, or
    /// keeps a shorter fork as a side chain; between equal heights the chain seen first stays.
    pub fn import_blocks(&self, blocks: &[Block]) -> Result<ImportOutcome, StoreError> {
        if blocks.is_empty() {
            return Err(StoreError::Empty);
        }
        check_consecutive(blocks, 0)?;
        let _writer = lock(&self.writer);
        let p = self.pointers();
        let skip = self.known_prefix(blocks, p.head)?;
        let Some(first) = blocks.get(skip) else {
            return Ok(ImportOutcome::Known);
        };
        let new = &blocks[skip..];
        let parent_hash = first.header.parent_hash;
        let parent = self.block(&parent_hash)?.ok_or(StoreError::UnknownParent {
            height: first.height(),
            parent: parent_hash,
        })?;
        check_link(&first.header, &parent.header)
            .map_err(|error| StoreError::Invalid { index: skip, error })?;

        let (fork, side) = self.fork_point(parent, &p)?;
        let last = &new[new.len() - 1];
        let tip = Pointer::at(last);
        let mut changes = Vec::with_capacity(new.len() + new.len() / 32 + 4);
        if tip.height <= p.head.height && fork.hash() != p.head.hash {
            let counts = self.put_blocks(&mut changes, new, None)?;
            self.commit_counted(changes, counts)?;
            return Ok(ImportOutcome::SideChain { tip });
        }
        let reorg_from = (fork.hash() != p.head.hash).then(|| fork.height() + 1);
        let mut canon = CanonEdits::default();
        for block in side.iter().rev() {
            canon.set(block.height(), block.hash());
        }
        let counts = self.put_blocks(&mut changes, new, Some(&mut canon))?;
        let mut next = p;
        next.head = tip;
        if let Some(finalized) = self.finalized_below(tip, p.finalized, &canon)? {
            next.finalized = finalized;
            changes.push((COL_META, META_FINALIZED.to_vec(), Some(finalized.encode())));
        }
        canon.write_to(&self.db, &mut changes)?;
        changes.push((COL_META, META_HEAD.to_vec(), Some(tip.encode())));
        self.commit_counted(changes, counts)?;
        self.set_pointers(next);
        // The imported block came from a response frame: cache a copy that does not keep it.
        lock(&self.cache).insert(last.compact());
        Ok(ImportOutcome::Canonical {
            head: tip,
            imported: new.len(),
            reorg_from,
        })
    }

    /// How many of `blocks`, from the first, are canonical already (at or below `head`).
    fn known_prefix(&self, blocks: &[Block], head: Pointer) -> Result<usize, StoreError> {
        let mut skip = 0;
        while skip < blocks.len()
            && blocks[skip].height() <= head.height
            && self.hash_at(blocks[skip].height())? == Some(blocks[skip].hash())
        {
            skip += 1;
        }
        Ok(skip)
    }

    /// Walks back from `parent` to the canonical chain: the fork point, and the side-chain blocks
    /// above it (highest first). A fork below the finalized block is refused.
    fn fork_point(&self, parent: Block, p: &Pointers) -> Result<(Block, Vec<Block>), StoreError> {
        let conflict = |fork: &Block| StoreError::ConflictsWithFinalized {
            fork_height: fork.height(),
            finalized: p.finalized.height,
        };
        let mut side = Vec::new();
        let mut fork = parent;
        while !(fork.height() <= p.head.height && self.hash_at(fork.height())? == Some(fork.hash())) {
            if fork.height() <= p.finalized.height {
                return Err(conflict(&fork));
            }
            let up = fork.header.parent_hash;
            let next = self.block(&up)?.ok_or(StoreError::UnknownParent {
                height: fork.height(),
                parent: up,
            })?;
            side.push(std::mem::replace(&mut fork, next));
        }
        if fork.height() < p.finalized.height {
            return Err(conflict(&fork));
        }
        Ok((fork, side))
    }

    /// The block `finality_depth` below a new head `tip`, if that is above `finalized`; looked up
    /// in the index edits `canon` of the same commit first.
    fn finalized_below(
        &self,
        tip: Pointer,
        finalized: Pointer,
        canon: &CanonEdits,
    ) -> Result<Option<Pointer>, StoreError> {
        let height = tip.height.saturating_sub(self.spec.finality_depth);
        if height <= finalized.height {
            return Ok(None);
        }
        let hash = match canon.indexed(height) {
            Some(h) => h,
            None => self
                .hash_at(height)?
                .ok_or_else(|| StoreError::Corrupt(format!("no canonical block at {height}")))?,
        };
        Ok(Some(Pointer { height, hash }))
    }

    /// Imports consecutive blocks just below the lowest stored block, ascending; the highest must
    /// be the parent of the lowest block. Blocks at or above the low pointer, or below the history
    /// floor, are skipped, so a replayed batch changes nothing.
    pub fn import_backfill(&self, blocks: &[Block]) -> Result<BackfillOutcome, StoreError> {
        if blocks.is_empty() {
            return Err(StoreError::Empty);
        }
        check_consecutive(blocks, 0)?;
        let _writer = lock(&self.writer);
        let p = self.pointers();
        let complete = |low: &Pointer, p: &Pointers| low.height <= p.floor || low.height == 0;
        if let Some(g) = blocks.iter().find(|b| b.height() == 0)
            && g.hash() != p.genesis
        {
            return Err(StoreError::BackfillLink(format!(
                "block at height 0 is {}, not genesis",
                g.hash()
            )));
        }
        let new: Vec<&Block> = blocks
            .iter()
            .filter(|b| b.height() > 0 && b.height() < p.low.height && b.height() >= p.floor)
            .collect();
        let (Some(first), Some(top)) = (new.first(), new.last()) else {
            return Ok(BackfillOutcome {
                low: p.low,
                imported: 0,
                complete: complete(&p.low, &p),
            });
        };
        let low_block = self
            .block(&p.low.hash)?
            .ok_or_else(|| StoreError::Corrupt(format!("backfill low block {} is missing", p.low.hash)))?;
        if top.height() + 1 != p.low.height || top.hash() != low_block.header.parent_hash {
            return Err(StoreError::BackfillLink(format!(
                "block {} at height {} is not the parent {} of the lowest block at {}",
                top.hash(),
                top.height(),
                low_block.header.parent_hash,
                p.low.height
            )));
        }
        let mut low = Pointer::at(first);
        if first.height() == 1 {
            if first.header.parent_hash != p.genesis {
                return Err(StoreError::BackfillLink(format!(
                    "block at height 1 has parent {}, not genesis {}",
                    first.header.parent_hash, p.genesis
                )));
            }
            low = Pointer {
                height: 0,
                hash: p.genesis,
            };
        }
        let mut changes = Vec::with_capacity(new.len() + 16);
        let mut canon = CanonEdits::default();
        let counts = self.put_blocks(&mut changes, new.iter().copied(), Some(&mut canon))?;
        canon.write_to(&self.db, &mut changes)?;
        changes.push((COL_META, META_LOW.to_vec(), Some(low.encode())));
        self.commit_counted(changes, counts)?;
        let mut next = p;
        next.low = low;
        self.set_pointers(next);
        Ok(BackfillOutcome {
            low,
            imported: new.len(),
            complete: complete(&low, &next),
        })
    }

    /// Makes a fresh store start from a trusted checkpoint block (whose rules 3–5 and hash the
    /// caller has checked): head, finalized, backfill low and anchor all point at it. Idempotent
    /// for the same checkpoint; refused when the store already holds another chain.
    pub fn start_from_checkpoint(&self, block: &Block) -> Result<(), StoreError> {
        let _writer = lock(&self.writer);
        let p = self.pointers();
        let anchor = Pointer::at(block);
        if anchor.height == 0 {
            return Err(StoreError::Checkpoint(
                "a checkpoint at height 0 is genesis; start without one".into(),
            ));
        }
        if p.head.height > 0 {
            if p.anchor == Some(anchor) || self.hash_at(anchor.height)? == Some(anchor.hash) {
                return Ok(());
            }
            return Err(StoreError::Checkpoint(format!(
                "store already holds a chain up to {} that does not contain {} at {}",
                p.head.height, anchor.hash, anchor.height
            )));
        }
        let mut changes = Vec::new();
        let mut canon = CanonEdits::default();
        let counts = self.put_blocks(&mut changes, [block], Some(&mut canon))?;
        canon.write_to(&self.db, &mut changes)?;
        for name in [META_HEAD, META_FINALIZED, META_LOW, META_ANCHOR] {
            changes.push((COL_META, name.to_vec(), Some(anchor.encode())));
        }
        self.commit_counted(changes, counts)?;
        self.set_pointers(Pointers {
            head: anchor,
            finalized: anchor,
            low: anchor,
            anchor: Some(anchor),
            ..p
        });
        Ok(())
    }

    /// Sets the height below which history is not kept (0 keeps everything).
    pub fn set_history_floor(&self, floor: Height) -> Result<(), StoreError> {
        let _writer = lock(&self.writer);
        self.db.commit(vec![(
            COL_META,
            META_FLOOR.to_vec(),
            Some(floor.to_be_bytes().to_vec()),
        )])?;
        let mut p = self.pointers();
        p.floor = floor;
        self.set_pointers(p);
        Ok(())
    }
}
