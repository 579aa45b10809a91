//! Batches sized by the window whatever the block size: cut for small blocks, split when large
//! ones arrive, forward and backfill.

use super::*;

/// Steps among honest peers every 10 ms until the head reaches `target` or `until_ms` passes.
/// Returns the imported heights and the `count` of every range request sent.
fn honest_forward(
    engine: &mut SyncEngine<u32>,
    blocks: &[Block],
    target: Height,
    until_ms: u64,
) -> (Vec<Height>, Vec<u64>) {
    let (mut now, mut imported, mut counts) = (0, Vec::new(), Vec::new());
    while engine.head_height() < target && now < until_ms {
        now += 10;
        let (actions, step) = honest_step(engine, now, blocks);
        imported.extend(step);
        counts.extend(range_requests(&actions).iter().map(|r| r.3));
        engine.tick(now);
    }
    (imported, counts)
}

/// Steps among honest peers every 10 ms until backfill completes or `until_ms` passes. Returns
/// whether it completed and the `count` of every range request sent.
fn honest_backfill(engine: &mut SyncEngine<u32>, blocks: &[Block], until_ms: u64) -> (bool, Vec<u64>) {
    let (mut now, mut counts, mut complete) = (0, Vec::new(), false);
    while now < until_ms && !complete {
        now += 10;
        let (actions, _) = honest_step(engine, now, blocks);
        complete = actions
            .iter()
            .any(|a| matches!(a, Action::BackfillComplete { .. }));
        counts.extend(range_requests(&actions).iter().map(|r| r.3));
        engine.tick(now);
    }
    (complete, counts)
}

#[test]
fn batches_fit_their_share_of_the_window_whatever_the_block_size() {
    // 64 KiB blocks, a 4 MiB window of 4 batches: 1 MiB, 15 blocks, per batch. Before the first
    // answer the size is unknown and batches are sized for the largest blocks; once it is known
    // they grow to their share. A batch larger than the window (64 blocks here, the configured
    // size) could never complete: the window cannot hold it.
    let blocks = chain(300, 64 * 1024, 0);
    let cfg = SyncConfig {
        batch_size: 64,
        window_bytes: 4 * 1024 * 1024,
        ..config()
    };
    let mut engine = SyncEngine::new(cfg, local(&blocks, 0), 3).expect("a valid config");
    engine.peer_status(0, 1, status(&blocks, 300));
    let (imported, counts) = honest_forward(&mut engine, &blocks, 300, 10_000);
    assert_eq!(imported, (1..=300).collect::<Vec<_>>());
    assert!(counts.iter().all(|&count| count <= 15), "{counts:?}");
    assert!(counts.contains(&15), "{counts:?}");
}

#[test]
fn backfill_of_large_blocks_completes_with_batches_that_fit_its_window() {
    // 64 KiB blocks, a 4 MiB backfill window of 2 batches: 2 MiB, 31 blocks, per batch. The
    // configured 64 blocks would not fit the window and such a batch could never complete.
    let blocks = chain(200, 64 * 1024, 0);
    let cfg = SyncConfig {
        backfill_batch_size: 64,
        backfill_window_bytes: 4 * 1024 * 1024,
        ..config()
    };
    let mut engine = SyncEngine::new(cfg, backfill_from_head(&blocks), 5).expect("a valid config");
    engine.peer_status(0, 1, status(&blocks, 200));
    let (complete, counts) = honest_backfill(&mut engine, &blocks, 20_000);
    assert!(complete, "backfill did not complete; requests {counts:?}");
    assert!(counts.iter().all(|&count| count <= 31), "{counts:?}");
    assert!(counts.contains(&31), "{counts:?}");
}

#[test]
fn a_batch_cut_for_small_blocks_that_meets_large_ones_is_split_and_sync_completes() {
    // 100 blocks of 8 bytes, then 100 of 256 KiB, in a 2 MiB window of 4 batches. Batches are cut
    // for the small blocks (64, the configured size); the one that reaches the large blocks would
    // hold 7 MiB and could never complete in the window.
    let blocks = chain_sized(200, 0, |h| if h <= 100 { 8 } else { 256 * 1024 });
    let cfg = SyncConfig {
        batch_size: 64,
        window_bytes: 2 * 1024 * 1024,
        ..config()
    };
    let mut engine = SyncEngine::new(cfg, local(&blocks, 0), 9).expect("a valid config");
    engine.peer_status(0, 1, status(&blocks, 200));
    let (imported, counts) = honest_forward(&mut engine, &blocks, 200, 20_000);
    assert_eq!(imported, (1..=200).collect::<Vec<_>>(), "requests {counts:?}");
    assert!(
        counts.contains(&64),
        "batches grew to the configured size: {counts:?}"
    );
}

#[test]
fn a_backfill_batch_that_meets_large_blocks_is_split_and_backfill_completes() {
    // Backfill from 200 down: 100 blocks of 8 bytes, then (below 101) 256 KiB blocks, in a 2 MiB
    // window of 2 batches.
    let blocks = chain_sized(200, 0, |h| if h > 100 { 8 } else { 256 * 1024 });
    let cfg = SyncConfig {
        backfill_batch_size: 64,
        backfill_window_bytes: 2 * 1024 * 1024,
        ..config()
    };
    let mut engine = SyncEngine::new(cfg, backfill_from_head(&blocks), 11).expect("a valid config");
    engine.peer_status(0, 1, status(&blocks, 200));
    let (complete, counts) = honest_backfill(&mut engine, &blocks, 40_000);
    assert!(complete, "backfill did not complete; requests {counts:?}");
}
