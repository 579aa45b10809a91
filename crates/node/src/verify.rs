//! The verification pool: rules 3–5 of whole responses, checked on a rayon pool off the async
//! runtime, each response split into sub-batches that are batch-verified in parallel.

use std::sync::Arc;
use std::time::Instant;

use rayon::prelude::*;
use syncnode_types::validity::verify_standalone_batch;
use syncnode_types::{BatchError, Block, ChainSpec};
use tokio::sync::oneshot;

/// Smallest sub-batch: below it batch verification loses most of its advantage.
const MIN_SUB_BATCH: usize = 64;

/// Checks rules 3–5 of blocks on its own threads.
#[derive(Clone)]
pub struct Verifier {
    pool: Arc<rayon::ThreadPool>,
    spec: Arc<ChainSpec>,
}

/// The result of one verification: the blocks back, and the first bad one if any.
pub struct Verified {
    pub blocks: Vec<Block>,
    pub result: Result<(), BatchError>,
    pub seconds: f64,
}

impl Verifier {
    /// A pool of `threads` threads (0: one per core).
    pub fn new(spec: ChainSpec, threads: usize) -> anyhow::Result<Self> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("verify-{i}"))
            .build()?;
        Ok(Verifier {
            pool: Arc::new(pool),
            spec: Arc::new(spec),
        })
    }

    /// Verifies `blocks` on the pool; the caller's task only awaits.
    pub async fn verify(&self, blocks: Vec<Block>) -> Verified {
        let (tx, rx) = oneshot::channel();
        let spec = self.spec.clone();
        let threads = self.pool.current_num_threads().max(1);
        self.pool.spawn(move || {
            let started = Instant::now();
            let result = verify_parallel(&blocks, &spec, threads);
            let _ = tx.send(Verified {
                blocks,
                result,
                seconds: started.elapsed().as_secs_f64(),
            });
        });
        match rx.await {
            Ok(v) => v,
            // The pool dropped the job (only at shutdown): report nothing verified.
            Err(_) => Verified {
                blocks: Vec::new(),
                result: Ok(()),
                seconds: 0.0,
            },
        }
    }
}

/// Rules 3–5 of `blocks`, split into one sub-batch per thread (at least `MIN_SUB_BATCH` each);
/// the error names the first bad block by its index in `blocks`.
pub fn verify_parallel(blocks: &[Block], spec: &ChainSpec, threads: usize) -> Result<(), BatchError> {
    let chunk = blocks.len().div_ceil(threads.max(1)).max(MIN_SUB_BATCH);
    let mut errors: Vec<BatchError> = blocks
        .par_chunks(chunk)
        .enumerate()
        .filter_map(|(i, part)| {
            verify_standalone_batch(part, spec).err().map(|e| BatchError {
                index: i * chunk + e.index,
                error: e.error,
            })
        })
        .collect();
    errors.sort_by_key(|e| e.index);
    match errors.into_iter().next() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use syncnode_types::DevChain;

    #[tokio::test]
    async fn finds_the_first_bad_block_across_sub_batches() {
        let spec = ChainSpec::dev("verify", 2, 0, 1000, 8).expect("spec");
        let blocks = DevChain::new(&spec)
            .expect("dev")
            .extend(&spec.genesis().header, 300, 16);
        let verifier = Verifier::new(spec, 2).expect("pool");
        assert!(verifier.verify(blocks.clone()).await.result.is_ok());
        let mut bad = blocks;
        bad[250].signature.0[1] ^= 4;
        bad[180].payload = bytes::Bytes::from_static(b"x");
        let v = verifier.verify(bad).await;
        let err = v.result.expect_err("bad blocks");
        assert_eq!((err.index, err.error.rule()), (180, 3));
        assert_eq!(v.blocks.len(), 300);
    }
}
