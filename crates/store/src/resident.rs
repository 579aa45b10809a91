//! The store's share of the resident set while it writes.
//!
//! parity-db reads and writes its index and value tables through shared memory maps, and every
//! page a lookup or a write touches stays mapped in this process (`RssFile`) until it is released.
//! parity-db itself releases them only after syncing the tables when it retires a log file
//! (`release_synced_pages`, every [`crate::schema::LOG_SIZE_BYTES`] of log). A node following the
//! head writes about 1 KiB of log per block, so thousands of blocks pass between two releases,
//! while every new block hash looks up and writes a random page of the block index
//! (32 MiB at 2^16 chunks, and it doubles as the chain grows): the resident set climbed by about
//! 4 KiB per followed block until the whole index was resident. [`PageRelease`] counts the
//! writes the store commits and makes it drop the maps' pages every [`RELEASE_EVERY_WRITES`]
//! writes, so what stays resident is what that many writes, and the reads around them, touch.

use std::sync::Mutex;

/// Writes (keys committed) between two releases of the memory-mapped pages. A followed block
/// costs about six (block, canonical segment, pointers, payload tail and count), so this is a
/// release every ~85 followed blocks; while syncing, about one per commit.
pub const RELEASE_EVERY_WRITES: u64 = 512;

/// Counts writes and says when the store's mapped pages are due to be released.
#[derive(Debug, Default)]
pub(crate) struct PageRelease {
    since_release: Mutex<u64>,
}

impl PageRelease {
    /// Records a commit of `writes` keys; true when [`RELEASE_EVERY_WRITES`] have accumulated
    /// since the last release (the count then starts again).
    pub fn wrote(&self, writes: usize) -> bool {
        let mut since = self.since_release.lock().unwrap_or_else(|e| e.into_inner());
        *since = since.saturating_add(writes as u64);
        if *since >= RELEASE_EVERY_WRITES {
            *since = 0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use syncnode_types::{ChainSpec, DevChain};

    use super::*;
    use crate::BlockStore;

    #[test]
    fn due_once_per_release_interval() {
        let release = PageRelease::default();
        let due: Vec<u64> = (1..=3 * RELEASE_EVERY_WRITES)
            .filter(|_| release.wrote(1))
            .collect();
        assert_eq!(due.len(), 3);
        assert!(!release.wrote(RELEASE_EVERY_WRITES as usize - 1));
        assert!(release.wrote(1));
        assert!(
            release.wrote(RELEASE_EVERY_WRITES as usize * 5),
            "one large commit"
        );
        assert!(!release.wrote(0));
    }

    /// KiB of this process's resident pages mapped from files under `dir` (`/proc/self/smaps`).
    fn resident_kib_under(dir: &std::path::Path) -> u64 {
        let smaps = std::fs::read_to_string("/proc/self/smaps").expect("smaps");
        let prefix = format!("{}/", dir.to_string_lossy());
        let mut inside = false;
        let mut kib = 0;
        for line in smaps.lines() {
            let first = line.split_whitespace().next().unwrap_or("");
            if first.contains('-') && !first.ends_with(':') {
                inside = line
                    .split_whitespace()
                    .nth(5)
                    .is_some_and(|p| p.starts_with(&prefix));
            } else if inside && let Some(rss) = line.strip_prefix("Rss:") {
                kib += rss
                    .trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .expect("Rss");
            }
        }
        kib
    }

    /// Following the head: thousands of blocks imported one per commit, as gossip brings them,
    /// with payloads in the payload files; fewer than fill a parity-db log (whose application
    /// writes pages that stay resident until the tables are synced). Each new hash touches a random page of the 32 MiB
    /// block index: without the releases 15 MiB of the store's maps were resident after 4,000 such
    /// blocks, with them under 2 MiB.
    #[cfg(target_os = "linux")]
    #[test]
    fn following_the_head_keeps_mapped_pages_bounded() {
        let spec = ChainSpec::dev("resident", 1, 1_000_000, 1000, 32).expect("spec");
        let dir = tempfile::tempdir().expect("tmp");
        let blocks = DevChain::new(&spec)
            .expect("dev")
            .extend(&spec.genesis().header, 5_000, 1024);
        // A store reopened has applied its log to the tables: the block index exists.
        let (store, _) = BlockStore::open(dir.path(), &spec).expect("open");
        store.import_blocks(&blocks[..1_000]).expect("import");
        drop(store);
        let (store, _) = BlockStore::open(dir.path(), &spec).expect("reopen");
        let mut peak = 0;
        for (i, block) in blocks.iter().enumerate().skip(1_000) {
            store.import_blocks(std::slice::from_ref(block)).expect("import");
            if i % 250 == 249 {
                peak = peak.max(resident_kib_under(dir.path()));
            }
        }
        eprintln!("peak {peak} KiB of the store's maps resident");
        assert_eq!(store.head().height, 5_000);
        // ~85 blocks between releases touch a few hundred pages.
        assert!(peak <= 4 * 1024, "{peak} KiB of the store's maps resident");
    }
}
