//! History retention: with `history_blocks = Some(N)` the node keeps the N blocks below its
//! finalized block (and everything above it), and nothing older except genesis.
//!
//! - The history floor is `finalized - N` (0 without N: full history, so a store pruned before
//!   backfills to genesis again). [`set_floor`] sets it at start, before the network serves
//!   anything, and again once a checkpoint is anchored, so backfill stops at `checkpoint - N`.
//! - [`prune_if_due`] deletes history below `finalized - N` (never above it, and the store never
//!   prunes at or above the finalized block) once that has moved [`PRUNE_STEP`] blocks past the
//!   low pointer. It runs at start and then on the importer thread after imports, never on the
//!   event loop, and never while backfill is still below its floor: pruning would pull the low
//!   pointer away from under it.
//!
//! `earliest_height` in Status is the store's low pointer, so it rises with each prune, and the
//! network serves no range below it (see `source.rs`).

use syncnode_store::{BlockStore, PruneOutcome, StoreError};
use syncnode_types::Height;

/// Least advance of the prune height, in blocks, before the importer prunes again.
pub const PRUNE_STEP: u64 = 1024;

/// The floor `history_blocks` asks for, given the store's finalized block.
pub fn floor_for(store: &BlockStore, history_blocks: Option<u64>) -> Height {
    let finalized = store.pointers().finalized.height;
    history_blocks.map_or(0, |n| finalized.saturating_sub(n))
}

/// Sets the store's history floor to what `history_blocks` asks for, if it differs.
pub fn set_floor(store: &BlockStore, history_blocks: Option<u64>) -> Result<Height, StoreError> {
    let floor = floor_for(store, history_blocks);
    if store.pointers().floor != floor {
        store.set_history_floor(floor)?;
        tracing::info!(floor, "history floor set");
    }
    Ok(floor)
}

/// Prunes history below `finalized - history_blocks` when that lies at least `step` blocks above
/// the low pointer and backfill is not in progress. `None` when nothing was due.
pub fn prune_if_due(
    store: &BlockStore,
    history_blocks: u64,
    step: u64,
) -> Result<Option<PruneOutcome>, StoreError> {
    let p = store.pointers();
    if p.low.height > p.floor {
        // Backfill has not reached its floor yet.
        return Ok(None);
    }
    let target = p.finalized.height.saturating_sub(history_blocks);
    if target < p.low.height.saturating_add(step.max(1)) {
        return Ok(None);
    }
    store.prune_below(target).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;
    use syncnode_types::{ChainSpec, DevChain};

    #[test]
    fn prunes_in_steps_and_never_during_backfill() {
        let spec = ChainSpec::dev("retention", 1, 1_000_000, 1000, 10).expect("spec");
        let blocks = DevChain::new(&spec)
            .expect("dev")
            .extend(&spec.genesis().header, 3000, 16);
        let dir = tempfile::tempdir().expect("tmp");
        let (store, _) = BlockStore::open(dir.path(), &spec).expect("open");

        // A checkpoint node at 2000 keeping 500 blocks backfills to 1500 and no further.
        store.start_from_checkpoint(&blocks[1999]).expect("anchor");
        assert_eq!(set_floor(&store, Some(500)).expect("floor"), 1500);
        store.import_blocks(&blocks[2000..2700]).expect("forward");
        assert_eq!(store.pointers().finalized.height, 2690);
        assert_eq!(
            prune_if_due(&store, 500, 100).expect("prune"),
            None,
            "backfilling"
        );
        store.import_backfill(&blocks[1000..1999]).expect("backfill");
        assert_eq!(store.pointers().low.height, 1500);

        // finalized - 500 = 2190 is due: the low pointer and the floor move up to it.
        let out = prune_if_due(&store, 500, 100).expect("prune").expect("due");
        assert_eq!(out.low.height, 2190);
        assert_eq!(store.pointers().floor, 2190);
        store.import_blocks(&blocks[2700..2750]).expect("forward");
        assert_eq!(
            prune_if_due(&store, 500, 100).expect("prune"),
            None,
            "step not reached"
        );
        store.import_blocks(&blocks[2750..]).expect("forward");
        let out = prune_if_due(&store, 500, 100).expect("prune").expect("due");
        assert_eq!(out.low.height, 2990 - 500);
        assert!(store.verify_chain(|_, _| {}).expect("check").is_ok());

        // Without retention the floor drops to genesis: backfill would fetch the history again.
        assert_eq!(set_floor(&store, None).expect("floor"), 0);
        assert_eq!(prune_if_due(&store, 500, 1).expect("prune"), None);
    }
}
