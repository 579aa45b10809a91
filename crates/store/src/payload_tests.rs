//! Store tests of blocks whose payloads live in payload files: reads after reopen, reference
//! counts through side chains, reorgs and prunes, removal of unreferenced files, and the cut of
//! payloads written by a commit that never happened.

use std::collections::BTreeMap;

use syncnode_types::{Block, ChainSpec, DevChain};

use crate::payloads::{EXTERNAL_PAYLOAD_MIN, PayloadRef};
use crate::schema::*;
use crate::*;

/// Payloads large enough for the payload files.
const BIG: usize = EXTERNAL_PAYLOAD_MIN + 1_000;
/// Small payload files: about five payloads each.
const FILE_BYTES: u64 = 5 * BIG as u64;

fn spec() -> ChainSpec {
    ChainSpec::dev("payload-test", 2, 1_000_000, 1000, 8).expect("spec")
}

/// Opens the store with small payload files, returning what the check at open did.
fn open_checked(dir: &tempfile::TempDir) -> (BlockStore, RepairReport) {
    let config = StoreConfig {
        payload_file_bytes: FILE_BYTES,
        ..StoreConfig::default()
    };
    BlockStore::open_with(dir.path(), &spec(), config).expect("open")
}

fn open(dir: &tempfile::TempDir) -> BlockStore {
    let (store, report) = open_checked(dir);
    assert!(report.is_clean(), "{report:?}");
    store
}

/// Every block of `blocks` is canonical in `store` and reads back as it was imported.
fn assert_reads_back(store: &BlockStore, blocks: &[Block]) {
    for block in blocks {
        assert_eq!(
            store.block_at(block.height()).expect("read").as_ref(),
            Some(block)
        );
    }
}

fn extend(parent: &Block, n: u64, size: usize) -> Vec<Block> {
    DevChain::new(&spec())
        .expect("dev")
        .extend(&parent.header, n, size)
}

/// `n` blocks on `parent` whose payloads differ from the dev chain's.
fn fork(parent: &Block, n: u64) -> Vec<Block> {
    let dev = DevChain::new(&spec()).expect("dev");
    let mut out: Vec<Block> = Vec::new();
    let mut parent = parent.header;
    for _ in 0..n {
        let block = dev.child(&parent, bytes::Bytes::from(vec![0xab; BIG]));
        parent = block.header;
        out.push(block);
    }
    out
}

fn payload_files(dir: &tempfile::TempDir) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir.path().join("payloads"))
        .expect("list")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// The references held by the stored values of `blocks`, counted per file.
fn references(store: &BlockStore, blocks: &[&Block]) -> BTreeMap<u32, u64> {
    let mut counts = BTreeMap::new();
    for block in blocks {
        if let Some(value) = store.db.get(COL_BLOCKS, &block.hash().0).expect("get")
            && let Some(r) = external_payload(&value)
        {
            *counts.entry(r.file).or_default() += 1;
        }
    }
    counts
}

/// The committed per-file counts, for files `0..=last`.
fn counts(store: &BlockStore, last: u32) -> BTreeMap<u32, u64> {
    (0..=last)
        .filter_map(|file| {
            let v = store.db.get(COL_META, &payload_live_key(file)).expect("get")?;
            Some((file, decode_u64("count", &v).expect("count")))
        })
        .collect()
}

#[test]
fn large_payloads_are_stored_once_in_files_and_read_back_after_reopen() {
    let dir = tempfile::tempdir().expect("tmp");
    let store = open(&dir);
    let genesis = spec().genesis();
    // Small and large payloads mixed: the small stay inline.
    let mut blocks = extend(&genesis, 20, BIG);
    blocks.extend(extend(&blocks[19], 10, 100));
    blocks.extend(extend(&blocks[29], 20, BIG));
    for part in blocks.chunks(7) {
        store.import_blocks(part).expect("import");
    }
    let big: Vec<&Block> = blocks.iter().filter(|b| b.payload.len() == BIG).collect();
    assert_eq!(references(&store, &big).values().sum::<u64>(), 40);
    let small: Vec<&Block> = blocks.iter().filter(|b| b.payload.len() == 100).collect();
    assert!(
        references(&store, &small).is_empty(),
        "small payloads stay inline"
    );
    assert!(payload_files(&dir).len() >= 7, "{:?}", payload_files(&dir));
    let stored = counts(&store, 20);
    assert_eq!(stored, references(&store, &big));
    drop(store);

    let store = open(&dir);
    assert_reads_back(&store, &blocks);
    let report = store.verify_chain(|_, _| {}).expect("check");
    assert!(report.is_ok(), "{:?}", report.faults);
    let served = store.blocks_by_range(1, 50, usize::MAX).expect("range");
    assert_eq!(served, blocks);
}

#[test]
fn counts_follow_side_chains_reorgs_and_prunes_and_empty_files_are_removed() {
    let dir = tempfile::tempdir().expect("tmp");
    let store = open(&dir);
    let genesis = spec().genesis();
    let main = extend(&genesis, 100, BIG);
    for part in main.chunks(9) {
        store.import_blocks(part).expect("import");
    }
    // A side chain from 95, stored twice (its second copy replaces the first's references),
    // then made canonical by a longer fork.
    let side = fork(&main[94], 3);
    assert!(matches!(
        store.import_blocks(&side).expect("side"),
        ImportOutcome::SideChain { .. }
    ));
    store.import_blocks(&side).expect("side again");
    let mut fork = side.clone();
    fork.extend(self::fork(&side[2], 5));
    store.import_blocks(&fork).expect("reorg");
    assert_eq!(store.head(), Pointer::at(&fork[7]));
    let all: Vec<&Block> = main.iter().chain(&fork).collect();
    let last_file = store.payloads.tail_file();
    assert_eq!(counts(&store, last_file), references(&store, &all));

    let before = payload_files(&dir).len();
    let out = store.prune_below(60).expect("prune");
    assert_eq!(out.low.height, 60);
    assert_eq!(counts(&store, last_file), references(&store, &all));
    let emptied = (0..last_file)
        .filter(|f| !counts(&store, last_file).contains_key(f))
        .count();
    // A file is started at a batch's first block once full, so each holds one batch of 9 here:
    // heights 1..=54 filled six files.
    assert_eq!(emptied, 6, "files of pruned blocks only");
    assert_eq!(
        payload_files(&dir).len(),
        before,
        "emptied files stay while the store runs: a crash could bring their blocks back"
    );
    drop(store);

    let store = open(&dir);
    assert_eq!(
        payload_files(&dir).len(),
        before - emptied,
        "emptied files are removed at the next open"
    );
    assert_eq!(store.head(), Pointer::at(&fork[7]));
    for block in main[59..95].iter().chain(&fork) {
        assert_eq!(store.block(&block.hash()).expect("read").as_ref(), Some(block));
    }
    assert_eq!(store.block(&main[10].hash()).expect("read"), None);
    assert!(store.verify_chain(|_, _| {}).expect("check").is_ok());
}

#[test]
fn payloads_of_a_commit_that_never_happened_are_cut_at_open() {
    let dir = tempfile::tempdir().expect("tmp");
    let store = open(&dir);
    let genesis = spec().genesis();
    let blocks = extend(&genesis, 12, BIG);
    store.import_blocks(&blocks[..6]).expect("import");
    let committed = Tail::decode(
        &store
            .db
            .get(COL_META, META_PAYLOAD_TAIL)
            .expect("get")
            .expect("tail"),
    )
    .expect("tail");
    // An import that wrote its payloads (into the current file and, past the target, a new one)
    // and died before its commit.
    let payloads: Vec<&[u8]> = blocks[6..].iter().map(|b| &b.payload[..]).collect();
    let (refs, written) = store.payloads.append(&payloads).expect("append");
    store.payloads.append(&payloads).expect("append");
    assert!(written.file > committed.file || written.end > committed.end);
    drop(store);

    let store = open(&dir);
    let tail_path = dir
        .path()
        .join("payloads")
        .join(format!("{:08}.payload", committed.file));
    assert_eq!(std::fs::metadata(&tail_path).expect("stat").len(), committed.end);
    let past = payload_files(&dir)
        .iter()
        .filter(|n| n.as_str() > format!("{:08}.payload", committed.file).as_str())
        .count();
    assert_eq!(past, 0, "files after the committed tail are removed");
    let lost: &PayloadRef = &refs[0];
    assert!(store.payloads.read(lost).is_err());
    // The import happens again and everything reads back.
    store.import_blocks(&blocks[6..]).expect("import again");
    drop(store);
    assert_reads_back(&open(&dir), &blocks);
}

#[test]
fn a_block_whose_payload_bytes_are_lost_is_rolled_back_and_fetched_again() {
    // The payload file's bytes of the newest blocks are gone (a disk that lied about a sync):
    // the references read as damaged blocks, the check at open rolls the head back below them,
    // and importing them again stores fresh copies.
    let dir = tempfile::tempdir().expect("tmp");
    let store = open(&dir);
    let genesis = spec().genesis();
    let blocks = extend(&genesis, 30, BIG);
    store.import_blocks(&blocks).expect("import");
    let damaged = &blocks[27];
    let value = store
        .db
        .get(COL_BLOCKS, &damaged.hash().0)
        .expect("get")
        .expect("stored");
    let r = external_payload(&value).expect("external");
    drop(store);
    let path = dir.path().join("payloads").join(format!("{:08}.payload", r.file));
    let file = std::fs::OpenOptions::new().write(true).open(&path).expect("open");
    std::os::unix::fs::FileExt::write_all_at(&file, &[0xff; 16], r.offset).expect("damage");
    drop(file);

    let (store, report) = open_checked(&dir);
    assert!(!report.is_clean());
    assert_eq!(store.head(), Pointer::at(&blocks[26]));
    store.import_blocks(&blocks[27..]).expect("import again");
    assert_eq!(store.head(), Pointer::at(&blocks[29]));
    assert_eq!(
        store.block(&damaged.hash()).expect("read").as_ref(),
        Some(damaged)
    );
    let all: Vec<&Block> = blocks.iter().collect();
    assert_eq!(
        counts(&store, store.payloads.tail_file()),
        references(&store, &all)
    );
}
