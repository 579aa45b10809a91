//! Store tests on real parity-db files in temporary directories.

use syncnode_types::{Block, ChainSpec, DevChain, Hash};

use crate::schema::*;
use crate::*;

fn spec() -> ChainSpec {
    ChainSpec::dev("store-test", 2, 1_000_000, 1000, 8).expect("spec")
}

fn chain(n: u64) -> Vec<Block> {
    let spec = spec();
    DevChain::new(&spec)
        .expect("dev")
        .extend(&spec.genesis().header, n, 64)
}

fn open(dir: &tempfile::TempDir) -> BlockStore {
    let (store, report) = BlockStore::open(dir.path(), &spec()).expect("open");
    assert!(report.is_clean(), "{report:?}");
    store
}

#[test]
fn new_store_holds_genesis_and_reopens() {
    let dir = tempfile::tempdir().expect("tmp");
    let store = open(&dir);
    let g = spec().genesis();
    assert_eq!(store.head(), Pointer::at(&g));
    assert_eq!(store.block_at(0).expect("read"), Some(g.clone()));
    assert_eq!(store.status().genesis_hash, g.hash());
    drop(store);
    let store = open(&dir);
    assert_eq!(store.head().height, 0);
    drop(store);
    let other = ChainSpec::dev("other", 2, 1_000_000, 1000, 8).expect("spec");
    assert!(matches!(
        BlockStore::open(dir.path(), &other),
        Err(StoreError::WrongChain { .. })
    ));
}

#[test]
fn forward_import_is_atomic_idempotent_and_finalizes() {
    let dir = tempfile::tempdir().expect("tmp");
    let store = open(&dir);
    let blocks = chain(100);
    let out = store.import_blocks(&blocks[..50]).expect("import");
    assert_eq!(
        out,
        ImportOutcome::Canonical {
            head: Pointer::at(&blocks[49]),
            imported: 50,
            reorg_from: None
        }
    );
    assert_eq!(
        store.import_blocks(&blocks[10..50]).expect("replay"),
        ImportOutcome::Known
    );
    // Overlapping replay imports only the new part.
    let out = store.import_blocks(&blocks[40..100]).expect("overlap");
    assert!(matches!(out, ImportOutcome::Canonical { imported: 50, .. }));
    let p = store.pointers();
    assert_eq!(p.head, Pointer::at(&blocks[99]));
    assert_eq!(p.finalized, Pointer::at(&blocks[99 - 8]));
    drop(store);
    let store = open(&dir);
    assert_eq!(store.pointers(), p);
    let report = store.verify_chain(|_, _| {}).expect("check");
    assert!(report.is_ok(), "{:?}", report.faults);
    assert_eq!(report.blocks, 101);
}

#[test]
fn bad_imports_are_refused_and_change_nothing() {
    let dir = tempfile::tempdir().expect("tmp");
    let store = open(&dir);
    let blocks = chain(10);
    assert!(matches!(
        store.import_blocks(&blocks[2..5]),
        Err(StoreError::UnknownParent { .. })
    ));
    let gap = vec![blocks[0].clone(), blocks[2].clone()];
    let err = store.import_blocks(&gap).expect_err("gap");
    assert!(matches!(err, StoreError::Invalid { index: 1, .. }) && err.is_bad_data());
    assert_eq!(store.head().height, 0);
}

#[test]
fn fork_choice_longest_wins_and_never_below_finalized() {
    let dir = tempfile::tempdir().expect("tmp");
    let store = open(&dir);
    let spec = spec();
    let dev = DevChain::new(&spec).expect("dev");
    let main = chain(20);
    store.import_blocks(&main).expect("main");
    // A fork from height 15 with other payloads: shorter → side chain; longer → reorg.
    let fork_base = &main[14];
    let mut fork = Vec::new();
    let mut parent = fork_base.header;
    for _ in 0..7 {
        let b = dev.child(&parent, bytes::Bytes::from_static(b"fork"));
        parent = b.header;
        fork.push(b);
    }
    assert!(matches!(
        store.import_blocks(&fork[..5]).expect("side"),
        ImportOutcome::SideChain { .. }
    ));
    assert_eq!(store.head(), Pointer::at(&main[19]));
    let out = store.import_blocks(&fork[5..]).expect("reorg");
    assert_eq!(
        out,
        ImportOutcome::Canonical {
            head: Pointer::at(&fork[6]),
            imported: 2,
            reorg_from: Some(16)
        }
    );
    assert_eq!(store.hash_at(16).expect("read"), Some(fork[0].hash()));
    assert!(store.verify_chain(|_, _| {}).expect("check").is_ok());
    // A fork from below the finalized block (22 - 8 = 14) is refused.
    let mut deep = Vec::new();
    let mut parent = main[4].header;
    for _ in 0..30 {
        let b = dev.child(&parent, bytes::Bytes::from_static(b"deep"));
        parent = b.header;
        deep.push(b);
    }
    store.import_blocks(&deep[..1]).expect_err("deep fork");
    assert!(matches!(
        store.import_blocks(&deep[..1]),
        Err(StoreError::ConflictsWithFinalized { .. })
    ));
}

#[test]
fn checkpoint_then_backfill_to_genesis() {
    let dir = tempfile::tempdir().expect("tmp");
    let store = open(&dir);
    let blocks = chain(300);
    store.start_from_checkpoint(&blocks[199]).expect("anchor");
    store.start_from_checkpoint(&blocks[199]).expect("idempotent");
    assert_eq!(store.status().earliest_height, 200);
    store
        .import_blocks(&blocks[200..])
        .expect("forward from the checkpoint");
    // A batch that does not reach the low block is refused.
    assert!(matches!(
        store.import_backfill(&blocks[100..150]),
        Err(StoreError::BackfillLink(_))
    ));
    let out = store.import_backfill(&blocks[100..199]).expect("backfill");
    assert_eq!((out.low.height, out.complete), (101, false));
    assert_eq!(
        store.import_backfill(&blocks[100..199]).expect("replay").imported,
        0
    );
    let out = store
        .import_backfill(&blocks[0..100])
        .expect("backfill to genesis");
    assert_eq!((out.low.height, out.complete), (0, true));
    drop(store);
    let store = open(&dir);
    assert_eq!(store.status().earliest_height, 0);
    let report = store.verify_chain(|_, _| {}).expect("check");
    assert!(report.is_ok() && report.blocks == 301, "{report:?}");
    assert!(
        store.start_from_checkpoint(&chain(5)[2]).is_ok(),
        "a checkpoint on our own chain is accepted"
    );
}

#[test]
fn range_reads_stop_at_head_gap_and_budget() {
    let dir = tempfile::tempdir().expect("tmp");
    let store = open(&dir);
    let blocks = chain(50);
    store.import_blocks(&blocks).expect("import");
    assert_eq!(store.blocks_by_range(45, 100, usize::MAX).expect("read").len(), 6);
    assert_eq!(store.blocks_by_range(51, 10, usize::MAX).expect("read").len(), 0);
    let one = syncnode_proto::convert::encoded_block_field_len(&blocks[0]);
    assert_eq!(store.blocks_by_range(1, 10, one * 3 + 1).expect("read").len(), 3);
    let got = store
        .blocks_by_root(&[blocks[3].hash(), Hash::ZERO, blocks[1].hash()], usize::MAX)
        .expect("read");
    assert_eq!(got, vec![blocks[3].clone(), blocks[1].clone()]);
}

#[test]
fn open_repairs_a_lost_tail() {
    let dir = tempfile::tempdir().expect("tmp");
    let store = open(&dir);
    let blocks = chain(200);
    store.import_blocks(&blocks).expect("import");
    // Lose the data of blocks 191..=200 while the head pointer still names 200.
    let lost: Vec<_> = blocks[190..]
        .iter()
        .map(|b| (COL_BLOCKS, b.hash().0.to_vec(), None))
        .collect();
    store.db.commit(lost).expect("delete");
    drop(store);
    let look = StoreConfig {
        repair_on_open: false,
        ..StoreConfig::default()
    };
    let (store, report) = BlockStore::open_existing(dir.path(), look).expect("open without repair");
    assert!(!report.is_clean());
    assert_eq!(store.head(), Pointer::at(&blocks[199]), "a look changes nothing");
    assert!(!store.verify_chain(|_, _| {}).expect("check").is_ok());
    drop(store);
    let (store, report) = BlockStore::open(dir.path(), &spec()).expect("open repairs");
    assert!(!report.is_clean());
    assert_eq!(store.head(), Pointer::at(&blocks[189]));
    assert!(store.verify_chain(|_, _| {}).expect("check").is_ok());
    // The lost blocks import again.
    store.import_blocks(&blocks[190..]).expect("re-import");
    assert_eq!(store.head(), Pointer::at(&blocks[199]));
}

#[test]
fn verify_chain_finds_damage() {
    let dir = tempfile::tempdir().expect("tmp");
    let store = open(&dir);
    let blocks = chain(30);
    store.import_blocks(&blocks).expect("import");
    let mut bad = blocks[9].clone();
    bad.signature.0[0] ^= 1;
    // Same hash (the signature is not hashed), a bad signature.
    store
        .db
        .commit(vec![(
            COL_BLOCKS,
            bad.hash().0.to_vec(),
            Some(encode_block(&bad)),
        )])
        .expect("write");
    lock(&store.cache).remove(&bad.hash());
    let report = store.verify_chain(|_, _| {}).expect("check");
    assert_eq!(report.faults.len(), 1, "{:?}", report.faults);
    assert_eq!(report.faults[0].height, 10);
}

#[test]
fn cursors_persist() {
    let dir = tempfile::tempdir().expect("tmp");
    let store = open(&dir);
    assert_eq!(store.cursor("indexer").expect("read"), None);
    store.set_cursor("indexer", 42).expect("write");
    drop(store);
    assert_eq!(open(&dir).cursor("indexer").expect("read"), Some(42));
}

/// The store after `n` blocks from genesis (finality depth 8).
fn full_store(dir: &tempfile::TempDir, n: u64) -> (BlockStore, Vec<Block>) {
    let store = open(dir);
    let blocks = chain(n);
    for part in blocks.chunks(1000) {
        store.import_blocks(part).expect("import");
    }
    (store, blocks)
}

#[test]
fn prune_deletes_history_below_keeps_genesis_and_is_idempotent() {
    let dir = tempfile::tempdir().expect("tmp");
    let (store, blocks) = full_store(&dir, 3000);
    let out = store.prune_in_chunks(1000, 300, u64::MAX).expect("prune");
    assert_eq!(out.low, Pointer::at(&blocks[999]));
    assert_eq!((out.pruned, out.commits), (999, 4));
    let p = store.pointers();
    assert_eq!((p.low.height, p.floor), (1000, 1000));
    assert_eq!(store.status().earliest_height, 1000);
    for b in &blocks[..999] {
        assert!(
            !store.contains(&b.hash()).expect("read"),
            "block {} kept",
            b.height()
        );
        assert_eq!(
            store.block(&b.hash()).expect("read"),
            None,
            "cached block {}",
            b.height()
        );
    }
    assert_eq!(store.hash_at(500).expect("read"), None);
    assert_eq!(store.block_at(0).expect("read"), Some(spec().genesis()));
    assert_eq!(store.block_at(1000).expect("read"), Some(blocks[999].clone()));
    assert!(
        store
            .blocks_by_range(999, 10, usize::MAX)
            .expect("read")
            .is_empty()
    );
    assert_eq!(store.prune_below(1000).expect("again").pruned, 0);
    assert_eq!(store.prune_below(10).expect("lower").low.height, 1000);

    // The chain still checks from the new low up, and grows as before.
    let report = store.verify_chain(|_, _| {}).expect("check");
    assert!(report.is_ok() && report.blocks == 2001, "{report:?}");
    let more = DevChain::new(&spec())
        .expect("dev")
        .extend(&blocks[2999].header, 10, 64);
    store.import_blocks(&more).expect("import after prune");
    drop(store);
    let store = open(&dir);
    assert_eq!(store.pointers().low, Pointer::at(&blocks[999]));
    assert_eq!(store.pointers().floor, 1000);
}

#[test]
fn prune_never_reaches_the_finalized_block() {
    let dir = tempfile::tempdir().expect("tmp");
    let (store, blocks) = full_store(&dir, 100);
    let finalized = store.pointers().finalized;
    assert_eq!(finalized.height, 92);
    let out = store.prune_below(u64::MAX).expect("prune");
    assert_eq!(out.low, finalized);
    assert_eq!(store.block_at(92).expect("read"), Some(blocks[91].clone()));
    let report = store.verify_chain(|_, _| {}).expect("check");
    assert!(report.is_ok() && report.blocks == 9, "{report:?}");
}

#[test]
fn a_prune_cut_short_leaves_a_consistent_store() {
    let dir = tempfile::tempdir().expect("tmp");
    let (store, blocks) = full_store(&dir, 2000);
    // Two commits of a longer prune, then the process "dies".
    let out = store.prune_in_chunks(1500, 256, 2).expect("prune");
    assert_eq!((out.low.height, out.commits), (512, 2));
    drop(store);
    let store = open(&dir);
    let p = store.pointers();
    assert_eq!((p.low, p.floor), (Pointer::at(&blocks[511]), 512));
    assert!(store.verify_chain(|_, _| {}).expect("check").is_ok());
    assert_eq!(store.prune_below(1500).expect("resume").low.height, 1500);
    assert!(store.verify_chain(|_, _| {}).expect("check").is_ok());
}

#[test]
fn prune_after_checkpoint_backfill_to_a_floor() {
    let dir = tempfile::tempdir().expect("tmp");
    let store = open(&dir);
    let blocks = chain(400);
    store.start_from_checkpoint(&blocks[299]).expect("anchor");
    store.set_history_floor(200).expect("floor");
    store.import_blocks(&blocks[300..]).expect("forward");
    let out = store.import_backfill(&blocks[150..299]).expect("backfill");
    assert_eq!((out.low.height, out.complete), (200, true));
    assert_eq!(
        store.hash_at(199).expect("read"),
        None,
        "below the floor is not stored"
    );
    let out = store.prune_below(350).expect("prune");
    assert_eq!((out.low.height, out.pruned), (350, 150));
    assert_eq!(store.pointers().floor, 350);
    // A replayed backfill batch below the floor changes nothing.
    let out = store.import_backfill(&blocks[150..299]).expect("replay");
    assert_eq!((out.imported, out.complete), (0, true));
    assert!(store.verify_chain(|_, _| {}).expect("check").is_ok());
}

/// A store written with the second layout (canonical index in a B-tree column, one key per
/// height) is refused with an error that says so, and left as it was.
#[test]
fn a_store_of_the_old_column_layout_is_refused_by_name() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut old = db_options(dir.path());
    old.columns[COL_CANON as usize].btree_index = true;
    drop(parity_db::Db::open_or_create(&old).expect("old layout"));
    let err = BlockStore::open(dir.path(), &spec()).err().expect("refused");
    assert!(matches!(err, StoreError::Layout { .. }), "{err}");
    assert!(err.to_string().contains("new --data-dir"), "{err}");
    parity_db::Db::open(&old).expect("the old store still opens with its own layout");
}

/// The canonical index keeps 64 heights per value. Imports in batches that straddle segments, a
/// reorganisation across a segment boundary and a prune that ends inside a segment leave every
/// height indexed as the chain says, before and after reopening, with one value per segment.
#[test]
fn the_segmented_canonical_index_follows_imports_reorgs_and_prunes_across_boundaries() {
    let dir = tempfile::tempdir().expect("tmp");
    let spec = spec();
    let dev = DevChain::new(&spec).expect("dev");
    let main = dev.extend(&spec.genesis().header, 325, 16);
    let store = open(&dir);
    for part in main.chunks(37) {
        store.import_blocks(part).expect("import");
    }
    // A fork from height 318 (finalized: 317) replacing 319..=325, across the boundary at 320.
    let fork = dev.extend(&main[317].header, 12, 17);
    assert!(matches!(
        store.import_blocks(&fork[..5]).expect("side"),
        ImportOutcome::SideChain { .. }
    ));
    assert!(matches!(
        store.import_blocks(&fork[5..]).expect("reorg"),
        ImportOutcome::Canonical {
            reorg_from: Some(319),
            ..
        }
    ));
    let pruned = store.prune_below(100).expect("prune");
    assert_eq!(pruned.low.height, 100);
    let expected = |h: u64| match h {
        0 => Some(spec.genesis().hash()),
        1..=99 => None,
        100..=318 => Some(main[h as usize - 1].hash()),
        319..=330 => Some(fork[h as usize - 319].hash()),
        _ => None,
    };
    let check = |store: &BlockStore| {
        for h in 0..=400 {
            assert_eq!(store.hash_at(h).expect("read"), expected(h), "height {h}");
        }
        let segments: Vec<u64> = (0..10)
            .filter(|&s| {
                let key = crate::canon::segment_key(s);
                store.db.get(COL_CANON, &key).expect("read").is_some()
            })
            .collect();
        assert_eq!(segments, vec![0, 1, 2, 3, 4, 5]);
        let range = store.blocks_by_range(310, 30, usize::MAX).expect("range");
        let hashes: Vec<_> = range.iter().map(|b| Some(b.hash())).collect();
        assert_eq!(hashes, (310..=330).map(expected).collect::<Vec<_>>());
        assert!(store.verify_chain(|_, _| {}).expect("check").is_ok());
    };
    check(&store);
    drop(store);
    check(&open(&dir));
}

#[test]
fn blocks_read_back_after_many_logs_are_applied_and_their_pages_released() {
    // ~24 MiB of blocks: several of parity-db's 4 MiB logs are applied to the tables, synced, and
    // the tables' mapped pages dropped from the process while the import goes on. Every block
    // must read back from the files (reopened, so no cache answers), in order and intact.
    let dir = tempfile::tempdir().expect("tmp");
    let spec = spec();
    let blocks = DevChain::new(&spec)
        .expect("dev")
        .extend(&spec.genesis().header, 6_000, 4_096);
    let store = open(&dir);
    for part in blocks.chunks(200) {
        store.import_blocks(part).expect("import");
    }
    drop(store);
    let store = open(&dir);
    assert_eq!(store.head(), Pointer::at(&blocks[5_999]));
    for block in &blocks {
        assert_eq!(
            store.block_at(block.header.height).expect("read").as_ref(),
            Some(block)
        );
    }
    let report = store.verify_chain(|_, _| {}).expect("check");
    assert!(report.is_ok(), "{:?}", report.faults);
    assert_eq!(report.blocks, 6_001);
}

#[test]
fn the_cached_head_does_not_keep_the_buffer_it_was_decoded_from() {
    // A block decoded from a response frame has a payload that is a view into the whole frame.
    // The store caches the last block of every import; caching it as it came kept one frame per
    // batch alive (up to 4,096 frames of up to megabytes) while the cache counted one block.
    let dir = tempfile::tempdir().expect("tmp");
    let store = open(&dir);
    let mut blocks = chain(3);
    let last = blocks.pop().expect("last");
    let mut frame = vec![7u8; 1 << 20];
    frame[1000..1000 + last.payload.len()].copy_from_slice(&last.payload);
    let frame = bytes::Bytes::from(frame);
    let in_frame = Block {
        payload: frame.slice(1000..1000 + last.payload.len()),
        ..last.clone()
    };
    blocks.push(in_frame);
    store.import_blocks(&blocks).expect("import");
    let cached = store.block(&last.hash()).expect("read").expect("stored");
    assert_eq!(cached, last);
    assert!(!frame.as_ptr_range().contains(&cached.payload.as_ptr()));
}

#[test]
fn no_space_errors_are_told_apart() {
    let io = |code| std::io::Error::from_raw_os_error(code);
    let payload = |source| StoreError::PayloadIo {
        path: std::path::PathBuf::from("00000000.payload"),
        what: "write".into(),
        source,
    };
    assert!(payload(io(28)).is_out_of_space()); // ENOSPC
    assert!(!payload(io(5)).is_out_of_space()); // EIO
    let stopped = StoreError::Db(parity_db::Error::Background(std::sync::Arc::new(
        parity_db::Error::Io(io(28)),
    )));
    assert!(stopped.is_out_of_space());
    assert!(stopped.is_db_stopped());
    assert!(!StoreError::Db(parity_db::Error::Io(io(28))).is_db_stopped());
    assert!(!StoreError::Empty.is_out_of_space());
}
