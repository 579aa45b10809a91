//! The store as the network's [`BlockSource`]: what this node seeds.

use std::sync::Arc;

use prometheus_client::metrics::counter::Counter;
use syncnode_network::{BlockSource, SourceError};
use syncnode_store::{BlockStore, Pointer};
use syncnode_types::{Block, Hash, Height};
use tokio::sync::watch;

/// Serves canonical blocks from the store, up to the head the importer published: a block is
/// served only once Status names it, so a block this node produced is never served before its
/// commit is durable (see `import.rs`).
pub struct StoreSource {
    pub store: Arc<BlockStore>,
    /// The head as last published by the importer.
    pub head: watch::Receiver<Pointer>,
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
        let shown = self.head.borrow().height;
        if start > shown {
            return Ok(Vec::new());
        }
        let count = count.min(shown - start + 1);
        self.store
            .blocks_by_range(start, count, max_bytes)
            .map_err(source_error)
    }

    fn blocks_by_root(&self, hashes: &[Hash], max_bytes: usize) -> Result<Vec<Block>, SourceError> {
        let shown = self.head.borrow().height;
        let mut blocks = self
            .store
            .blocks_by_root(hashes, max_bytes)
            .map_err(source_error)?;
        blocks.retain(|b| b.height() <= shown);
        Ok(blocks)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use syncnode_types::{ChainSpec, DevChain};

    #[test]
    fn blocks_above_the_published_head_are_not_served() {
        let dir = tempfile::tempdir().expect("tmp");
        let spec = ChainSpec::dev("source", 1, 1_000_000, 1000, 10).expect("spec");
        let store = Arc::new(BlockStore::open(dir.path(), &spec).expect("open").0);
        let blocks = DevChain::new(&spec)
            .expect("dev")
            .extend(&spec.genesis().header, 10, 100);
        store.import_blocks(&blocks).expect("import");
        let (_tx, head) = watch::channel(Pointer::at(&blocks[5]));
        let source = StoreSource {
            store,
            head,
            below_earliest: Counter::default(),
        };
        let served = source.blocks_by_range(1, 100, usize::MAX).expect("range");
        assert_eq!(served.len(), 6, "heights 1..=6, the published head");
        assert_eq!(served.last().map(Block::height), Some(6));
        assert!(
            source
                .blocks_by_range(7, 4, usize::MAX)
                .expect("range")
                .is_empty()
        );
        let hashes = [blocks[4].hash(), blocks[8].hash()];
        let by_root = source.blocks_by_root(&hashes, usize::MAX).expect("root");
        assert_eq!(by_root.iter().map(Block::height).collect::<Vec<_>>(), vec![5]);
    }
}
