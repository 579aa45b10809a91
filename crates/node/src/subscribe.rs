//! Subscriptions: canonical blocks in consecutive height order, each at least once.
//!
//! A [`Subscription`] walks the canonical chain from a starting height: it reads the backlog from
//! the store, then waits on the head watch for new blocks. It never skips a height: a height not
//! yet held (above the head, or below the backfill low while backfill runs) is waited for. It
//! remembers the hashes it delivered within the reorganisable range; when the canonical block at a
//! delivered height changes (a reorg above the finalized block), it emits
//! [`SubscriptionEvent::Reorg`] naming the highest height still canonical, and continues above it.
//!
//! A start below the store's history floor (a pruned node never gets those blocks back) is
//! refused with [`SubscribeError::BelowEarliest`], and so is a subscription that pruning passes.
//! Read-ahead is bounded in blocks and bytes ([`READ_BATCH`], [`READ_BYTES`]).
//!
//! A *named* subscription persists the height its consumer acknowledged ([`Subscription::ack`]) in
//! the store, so after a restart of the node or the consumer it resumes right after it: delivery
//! is at least once (a block delivered but not acknowledged before a crash comes again), never
//! with a gap.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use syncnode_store::{BlockStore, Pointer, StoreError};
use syncnode_types::{Block, Hash, Height};
use tokio::sync::watch;

/// Most blocks read from the store per step of the backlog.
pub const READ_BATCH: u64 = 256;
/// Most payload bytes read ahead per step of the backlog (but always at least one block).
pub const READ_BYTES: usize = 1024 * 1024;
/// How often a subscription waiting for history below the backfill low looks again.
const LOW_POLL: Duration = Duration::from_millis(250);

/// Why a subscription ended.
#[derive(Debug, thiserror::Error)]
pub enum SubscribeError {
    #[error("the node is stopping")]
    Stopped,
    #[error("height {from} is below the earliest height {earliest} this node keeps")]
    BelowEarliest { from: Height, earliest: Height },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What a subscriber receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubscriptionEvent {
    /// The next canonical block.
    Block(Block),
    /// Blocks above `rewind_to` that were delivered are no longer canonical: discard them; the
    /// next block is at `rewind_to + 1`.
    Reorg { rewind_to: Height },
}

/// Opens subscriptions on a running node's store.
#[derive(Clone)]
pub struct Subscriptions {
    store: Arc<BlockStore>,
    head: watch::Receiver<Pointer>,
}

impl Subscriptions {
    /// Subscriptions over `store`, woken by `head`.
    pub fn new(store: Arc<BlockStore>, head: watch::Receiver<Pointer>) -> Self {
        Subscriptions { store, head }
    }

    /// An anonymous subscription from `from` (default: the block after the current head).
    pub fn from(&self, from: Option<Height>) -> Subscription {
        let next = from.unwrap_or_else(|| self.store.head().height + 1);
        Subscription::new(self.store.clone(), self.head.clone(), None, next)
    }

    /// Refuses a start below the history floor: those blocks are pruned and never come back.
    pub fn check_start(&self, from: Height) -> Result<(), SubscribeError> {
        below_floor(&self.store.pointers(), from)
    }

    /// A named subscription: resumes after its persisted acknowledged height, or starts at
    /// `first` when it has none.
    pub fn named(&self, name: &str, first: Height) -> Result<Subscription, StoreError> {
        let next = match self.store.cursor(name)? {
            Some(acked) => acked + 1,
            None => first,
        };
        Ok(Subscription::new(
            self.store.clone(),
            self.head.clone(),
            Some(name.to_owned()),
            next,
        ))
    }
}

/// One consumer's position on the chain.
pub struct Subscription {
    store: Arc<BlockStore>,
    head: watch::Receiver<Pointer>,
    name: Option<String>,
    next: Height,
    /// Delivered (height, hash) pairs that a reorg could still change, oldest first.
    delivered: VecDeque<(Height, Hash)>,
    buffered: VecDeque<Block>,
}

impl Subscription {
    fn new(
        store: Arc<BlockStore>,
        head: watch::Receiver<Pointer>,
        name: Option<String>,
        next: Height,
    ) -> Self {
        Subscription {
            store,
            head,
            name,
            next,
            delivered: VecDeque::new(),
            buffered: VecDeque::new(),
        }
    }

    /// The height of the next block to deliver.
    pub fn next_height(&self) -> Height {
        self.next
    }

    /// Persists `height` as acknowledged (named subscriptions; a no-op otherwise).
    pub fn ack(&self, height: Height) -> Result<(), StoreError> {
        match &self.name {
            Some(name) => self.store.set_cursor(name, height),
            None => Ok(()),
        }
    }

    /// The next event, waiting as long as it takes. Ends with [`SubscribeError::Stopped`] when
    /// the node stops, or a store error.
    pub async fn next(&mut self) -> Result<SubscriptionEvent, SubscribeError> {
        loop {
            if let Some(rewind_to) = self.check_reorg().await? {
                return Ok(SubscriptionEvent::Reorg { rewind_to });
            }
            if let Some(block) = self.buffered.pop_front() {
                self.remember(&block);
                self.next = block.height() + 1;
                return Ok(SubscriptionEvent::Block(block));
            }
            let p = self.store.pointers();
            below_floor(&p, self.next)?;
            let below_low = self.next < p.low.height && self.next != 0;
            if self.next > p.head.height || below_low {
                if self.head.has_changed().is_err() {
                    return Err(SubscribeError::Stopped);
                }
                if below_low {
                    tokio::time::sleep(LOW_POLL).await;
                } else if self.head.changed().await.is_err() {
                    return Err(SubscribeError::Stopped);
                }
                continue;
            }
            let (store, start) = (self.store.clone(), self.next);
            let count = READ_BATCH.min(p.head.height - start + 1);
            let blocks = tokio::task::spawn_blocking(move || {
                let (mut out, mut bytes) = (Vec::new(), 0usize);
                for h in start..start + count {
                    match store.block_at(h)? {
                        Some(b) => {
                            bytes += b.size_bytes();
                            out.push(b);
                        }
                        None => break,
                    }
                    if bytes >= READ_BYTES {
                        break;
                    }
                }
                Ok::<_, StoreError>(out)
            })
            .await
            .map_err(|e| StoreError::Corrupt(format!("reader task: {e}")))??;
            if blocks.is_empty() {
                // A gap at `start` (a reorg or a repair in progress): look again shortly.
                tokio::time::sleep(LOW_POLL).await;
            }
            self.buffered.extend(blocks);
        }
    }

    fn remember(&mut self, block: &Block) {
        self.delivered.push_back((block.height(), block.hash()));
        // Reorgs never reach the finalized block, so only the range above it needs remembering.
        let keep = (self.store.spec().finality_depth + 2) as usize;
        while self.delivered.len() > keep {
            self.delivered.pop_front();
        }
    }

    /// If a delivered block is no longer canonical, forgets everything above the highest one that
    /// still is and returns that height.
    async fn check_reorg(&mut self) -> Result<Option<Height>, StoreError> {
        let Some(&(height, hash)) = self.delivered.back() else {
            return Ok(None);
        };
        if self.store.hash_at(height)? == Some(hash) {
            return Ok(None);
        }
        self.buffered.clear();
        while let Some(&(h, hash)) = self.delivered.back() {
            if self.store.hash_at(h)? == Some(hash) {
                break;
            }
            self.delivered.pop_back();
        }
        let rewind_to = match self.delivered.back() {
            Some(&(h, _)) => h,
            // Nothing remembered still canonical: rewind to just below the oldest remembered.
            None => height.saturating_sub(self.store.spec().finality_depth + 2),
        };
        self.next = rewind_to + 1;
        Ok(Some(rewind_to))
    }
}

/// `Err(BelowEarliest)` when `height` is below the floor under which blocks are not kept.
fn below_floor(p: &syncnode_store::Pointers, height: Height) -> Result<(), SubscribeError> {
    if height < p.floor {
        return Err(SubscribeError::BelowEarliest {
            from: height,
            earliest: p.low.height.max(p.floor),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use syncnode_types::{ChainSpec, DevChain};

    fn setup() -> (
        tempfile::TempDir,
        Arc<BlockStore>,
        watch::Sender<Pointer>,
        DevChain,
    ) {
        let dir = tempfile::tempdir().expect("tmp");
        let spec = ChainSpec::dev("subs", 1, 0, 1000, 4).expect("spec");
        let (store, _) = BlockStore::open(dir.path(), &spec).expect("open");
        let store = Arc::new(store);
        let (tx, _) = watch::channel(store.head());
        (dir, store, tx, DevChain::new(&spec).expect("dev"))
    }

    async fn next_block(sub: &mut Subscription) -> Block {
        match tokio::time::timeout(Duration::from_secs(5), sub.next())
            .await
            .expect("in time")
            .expect("ok")
        {
            SubscriptionEvent::Block(b) => b,
            other => panic!("expected a block, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn backlog_then_live_in_order_and_named_cursors_resume() {
        let (_dir, store, head_tx, dev) = setup();
        let blocks = dev.extend(&store.spec().genesis().header, 300, 8);
        store.import_blocks(&blocks[..200]).expect("import");
        head_tx.send_replace(store.head());
        let subs = Subscriptions::new(store.clone(), head_tx.subscribe());
        let mut sub = subs.named("indexer", 0).expect("named");
        for h in 0..=200 {
            assert_eq!(next_block(&mut sub).await.height(), h);
        }
        sub.ack(150).expect("ack");
        // Live: blocks imported after the subscriber caught up arrive in order.
        let store2 = store.clone();
        let rest = blocks[200..].to_vec();
        tokio::spawn(async move {
            for chunk in rest.chunks(10) {
                tokio::time::sleep(Duration::from_millis(5)).await;
                store2.import_blocks(chunk).expect("import");
                head_tx.send_replace(store2.head());
            }
        });
        for h in 201..=300 {
            assert_eq!(next_block(&mut sub).await.height(), h);
        }
        // A new subscription with the same name resumes after the acknowledged height.
        let mut again = subs.named("indexer", 0).expect("named");
        assert_eq!(next_block(&mut again).await.height(), 151);
    }

    #[tokio::test]
    async fn a_start_below_the_history_floor_is_refused_and_pruning_ends_a_stream() {
        let (_dir, store, head_tx, dev) = setup();
        let blocks = dev.extend(&store.spec().genesis().header, 300, 8);
        store.import_blocks(&blocks).expect("import");
        head_tx.send_replace(store.head());
        let subs = Subscriptions::new(store.clone(), head_tx.subscribe());
        let mut behind = subs.from(Some(10));
        assert_eq!(next_block(&mut behind).await.height(), 10);
        store.set_history_floor(100).expect("floor");
        store.prune_below(100).expect("prune");
        assert!(matches!(
            subs.check_start(99),
            Err(SubscribeError::BelowEarliest {
                from: 99,
                earliest: 100
            })
        ));
        assert!(subs.check_start(100).is_ok());
        // The stream that pruning overtook ends (after what it had read ahead), never waits.
        let ended = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match behind.next().await {
                    Ok(_) => continue,
                    Err(e) => return e,
                }
            }
        })
        .await
        .expect("ends in time");
        assert!(matches!(
            ended,
            SubscribeError::BelowEarliest { earliest: 100, .. }
        ));
    }

    #[tokio::test]
    async fn a_reorg_is_signalled_with_the_height_to_rewind_to() {
        let (_dir, store, head_tx, dev) = setup();
        let main = dev.extend(&store.spec().genesis().header, 20, 8);
        store.import_blocks(&main).expect("import");
        head_tx.send_replace(store.head());
        let subs = Subscriptions::new(store.clone(), head_tx.subscribe());
        let mut sub = subs.from(Some(15));
        for h in 15..=20 {
            assert_eq!(next_block(&mut sub).await.height(), h);
        }
        // A longer fork from block 17 replaces 18..=20.
        let mut fork = Vec::new();
        let mut parent = main[16].header;
        for _ in 0..5 {
            let b = dev.child(&parent, bytes::Bytes::from_static(b"fork"));
            parent = b.header;
            fork.push(b);
        }
        store.import_blocks(&fork).expect("reorg");
        head_tx.send_replace(store.head());
        let event = tokio::time::timeout(Duration::from_secs(5), sub.next())
            .await
            .expect("in time")
            .expect("ok");
        assert_eq!(event, SubscriptionEvent::Reorg { rewind_to: 17 });
        for (i, h) in (18..=22).enumerate() {
            let b = next_block(&mut sub).await;
            assert_eq!((b.height(), b.hash()), (h, fork[i].hash()));
        }
    }
}
