//! The whole-chain check behind `syncnode db check`: every block from the backfill low to the head
//! against every rule, every link, and every pointer.

use rayon::prelude::*;
use syncnode_types::validity::{check_link, verify_standalone_batch};
use syncnode_types::{Block, Height};

use crate::canon::CanonReader;
use crate::{BlockStore, StoreError};

/// Blocks read per step; their signatures are verified in parallel sub-batches.
const CHUNK: u64 = 4096;
const SUB_BATCH: usize = 256;
/// Faults listed before the check stops listing (it still counts blocks).
const MAX_FAULTS: usize = 100;

/// One thing wrong with the stored chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckFault {
    pub height: Height,
    pub what: String,
}

/// The result of [`BlockStore::verify_chain`].
#[derive(Debug, Clone, Default)]
pub struct ChainReport {
    pub low: Height,
    pub head: Height,
    pub finalized: Height,
    /// Blocks checked.
    pub blocks: u64,
    /// Payload bytes checked.
    pub payload_bytes: u64,
    pub faults: Vec<CheckFault>,
}

impl ChainReport {
    /// No fault found.
    pub fn is_ok(&self) -> bool {
        self.faults.is_empty()
    }

    fn fault(&mut self, height: Height, what: String) {
        if self.faults.len() < MAX_FAULTS {
            self.faults.push(CheckFault { height, what });
        }
    }
}

impl BlockStore {
    /// Checks every canonical block in `[low, head]` (rules 1–5, signatures batch-verified in
    /// parallel), genesis, and every pointer. `progress(done, total)` is called after each chunk.
    pub fn verify_chain(&self, mut progress: impl FnMut(u64, u64)) -> Result<ChainReport, StoreError> {
        let p = self.pointers();
        let mut report = ChainReport {
            low: p.low.height,
            head: p.head.height,
            finalized: p.finalized.height,
            ..Default::default()
        };
        let total = p.head.height - p.low.height + 1;
        if self.hash_at(0)? != Some(p.genesis) {
            report.fault(0, "canonical block 0 is not the chain spec's genesis".into());
        }
        if !(p.low.height <= p.finalized.height && p.finalized.height <= p.head.height) {
            report.fault(
                p.finalized.height,
                format!(
                    "finalized {} outside [{}, {}]",
                    p.finalized.height, p.low.height, p.head.height
                ),
            );
        }
        for (name, ptr) in [
            ("head", p.head),
            ("finalized", p.finalized),
            ("backfill low", p.low),
        ] {
            if self.hash_at(ptr.height)? != Some(ptr.hash) {
                report.fault(
                    ptr.height,
                    format!(
                        "{name} pointer {} is not the canonical block at {}",
                        ptr.hash, ptr.height
                    ),
                );
            }
        }
        let mut below: Option<Block> = None;
        let mut start = p.low.height;
        while start <= p.head.height {
            let end = (start + CHUNK - 1).min(p.head.height);
            let mut blocks = Vec::with_capacity((end - start + 1) as usize);
            let mut canon = CanonReader::new(&self.db);
            for height in start..=end {
                match self.block_in(&mut canon, height) {
                    Ok(Some(b)) if b.height() == height => blocks.push(b),
                    Ok(Some(b)) => report.fault(
                        height,
                        format!("canonical index names a block of height {}", b.height()),
                    ),
                    Ok(None) => report.fault(height, "missing".into()),
                    Err(e) => report.fault(height, e.to_string()),
                }
            }
            let spec = self.spec();
            let bad: Vec<(Height, String)> = blocks
                .par_chunks(SUB_BATCH)
                .filter_map(|batch| {
                    verify_standalone_batch(batch, spec)
                        .err()
                        .map(|e| (batch[e.index].height(), e.error.to_string()))
                })
                .collect();
            for (height, what) in bad {
                report.fault(height, what);
            }
            for block in &blocks {
                if let Some(parent) = below.as_ref().filter(|p| p.height() + 1 == block.height())
                    && let Err(e) = check_link(&block.header, &parent.header)
                {
                    report.fault(block.height(), e.to_string());
                }
                report.payload_bytes += block.payload.len() as u64;
                below = Some(block.clone());
            }
            report.blocks += blocks.len() as u64;
            progress(end - p.low.height + 1, total);
            start = end + 1;
        }
        Ok(report)
    }
}
