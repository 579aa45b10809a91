//! The store as the network's [`BlockSource`]: what this node seeds.

use std::sync::Arc;

use prometheus_client::metrics::counter::Counter;
use syncnode_network::{BlockSource, SourceError};
use syncnode_store::BlockStore;
use syncnode_types::{Block, Hash, Height};

/// Serves canonical blocks from the store.
pub struct StoreSource {
    pub store: Arc<BlockStore>,
    /// Counts range requests that start below the earliest height held (peers should not send
    /// them: Status tells them `earliest_height`).
    pub below_earliest: Counter,
}

fn source_error(e: syncnode_store::StoreError) -> SourceError {
    SourceError(e.to_string())
}

impl BlockSource for StoreSource {
    fn blocks_by_range(
        &self,
        start: Height,
        count: u64,
        max_bytes: usize,
    ) -> Result<Vec<Block>, SourceError> {
        // Heights below the backfill low are not served as a range: the range would not be unbroken.
        let low = self.store.pointers().low.height;
        if start < low {
            self.below_earliest.inc();
            return Ok(Vec::new());
        }
        self.store
            .blocks_by_range(start, count, max_bytes)
            .map_err(source_error)
    }

    fn blocks_by_root(&self, hashes: &[Hash], max_bytes: usize) -> Result<Vec<Block>, SourceError> {
        self.store.blocks_by_root(hashes, max_bytes).map_err(source_error)
    }
}
