//! A least-recently-used cache of decoded blocks, bounded by count and by bytes.

use std::num::NonZeroUsize;

use lru::LruCache;
use syncnode_types::{Block, Hash};

/// Recently read or written blocks.
pub struct BlockCache {
    blocks: LruCache<Hash, Block>,
    bytes: usize,
    max_bytes: usize,
}

impl BlockCache {
    /// A cache of at most `max_blocks` blocks and `max_bytes` bytes of blocks.
    pub fn new(max_blocks: usize, max_bytes: usize) -> Self {
        let cap = NonZeroUsize::new(max_blocks.max(1)).unwrap_or(NonZeroUsize::MIN);
        BlockCache {
            blocks: LruCache::new(cap),
            bytes: 0,
            max_bytes,
        }
    }

    /// The block, marking it recently used.
    pub fn get(&mut self, hash: &Hash) -> Option<Block> {
        self.blocks.get(hash).cloned()
    }

    /// Adds a block, evicting the least recently used ones beyond either bound. The bytes counted
    /// are [`Block::size_bytes`]: a block whose payload is a view into a larger buffer (one decoded
    /// from a response frame) must come in compact ([`Block::compact`]), or it keeps that buffer.
    pub fn insert(&mut self, block: Block) {
        let size = block.size_bytes();
        if size > self.max_bytes {
            return;
        }
        if let Some((_, old)) = self.blocks.push(block.hash(), block) {
            self.bytes = self.bytes.saturating_sub(old.size_bytes());
        }
        self.bytes += size;
        while self.bytes > self.max_bytes {
            match self.blocks.pop_lru() {
                Some((_, old)) => self.bytes = self.bytes.saturating_sub(old.size_bytes()),
                None => break,
            }
        }
    }

    /// Forgets a block.
    pub fn remove(&mut self, hash: &Hash) {
        if let Some(old) = self.blocks.pop(hash) {
            self.bytes = self.bytes.saturating_sub(old.size_bytes());
        }
    }

    /// Bytes of blocks held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use syncnode_types::SigningKey;

    #[test]
    fn bounded_by_bytes_and_count() {
        let key = SigningKey::dev(0);
        let block = |h: u64| Block::new_signed(h, Hash::ZERO, h, Bytes::from(vec![0u8; 1000]), &key);
        let mut cache = BlockCache::new(3, 2500);
        for h in 1..=5 {
            cache.insert(block(h));
        }
        assert!(cache.bytes() <= 2500);
        assert!(cache.get(&block(5).hash()).is_some());
        assert!(cache.get(&block(1).hash()).is_none());
        cache.remove(&block(5).hash());
        assert!(cache.get(&block(5).hash()).is_none());
    }
}
