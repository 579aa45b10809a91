//! Migrations on stores written by the project's own earlier builds (testdata/stores: see its
//! README for how each was made).

use std::path::{Path, PathBuf};

use super::*;
use crate::migrate::{Plan, V4_SCRATCH, is_unkinded, stored_version, to_current};

/// Head height of the test stores: 150 blocks of 64-byte payloads, then 50 of 1,024 bytes.
const HEAD: u64 = 200;

/// Unpacks `testdata/stores/<name>.tar.gz` into `into`; returns the store's directory.
fn unpack(name: &str, into: &Path) -> PathBuf {
    let archive = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../testdata/stores")
        .join(format!("{name}.tar.gz"));
    let status = std::process::Command::new("tar")
        .arg("xzf")
        .arg(&archive)
        .arg("-C")
        .arg(into)
        .status()
        .expect("tar runs");
    assert!(status.success(), "unpacking {}", archive.display());
    into.join(name)
}

fn raw_db(dir: &Path) -> parity_db::Db {
    open_db(dir, parity_db::Db::open_or_create).expect("db opens")
}

/// Every block value in the blocks column, whether any lacks its kind byte.
fn unkinded_values(dir: &Path) -> usize {
    let db = raw_db(dir);
    let mut n = 0;
    db.iter_column_while(COL_BLOCKS, |item| {
        n += usize::from(is_unkinded(&item.value));
        true
    })
    .expect("iterates");
    n
}

/// The canonical hashes 0..=HEAD of the store in `dir`, after opening it and checking the whole
/// chain.
fn open_and_check(dir: &Path) -> Vec<Hash> {
    let (store, repair) = BlockStore::open_existing(dir, StoreConfig::default()).expect("opens");
    assert!(repair.is_clean(), "{:?}", repair.actions);
    let p = store.pointers();
    assert_eq!((p.head.height, p.low.height), (HEAD, 0));
    let report = store.verify_chain(|_, _| {}).expect("verify");
    assert!(report.is_ok(), "{:?}", report.faults);
    assert_eq!(report.blocks, HEAD + 1);
    (0..=HEAD)
        .map(|h| store.block_at(h).expect("read").expect("stored").hash())
        .collect()
}

#[test]
fn a_schema_3_store_opens_migrated_with_the_same_chain_as_schema_4() {
    let tmp = tempfile::tempdir().expect("tmp");
    let v3 = unpack("schema3", tmp.path());
    let v4 = unpack("schema4", tmp.path());
    {
        let db = raw_db(&v3);
        assert_eq!(stored_version(&db).expect("version"), Some(3));
    }
    assert_eq!(unkinded_values(&v3), HEAD as usize + 1);
    let migrated = open_and_check(&v3);
    assert_eq!(unkinded_values(&v3), 0);
    assert!(!v3.join(V4_SCRATCH).exists(), "scratch file removed");
    {
        let db = raw_db(&v3);
        assert_eq!(stored_version(&db).expect("version"), Some(SCHEMA_VERSION));
        assert_eq!(to_current(&db, &v3, Plan::default()).expect("again"), None);
    }
    // The same generated chain, written by a schema-4 build: the same blocks.
    assert_eq!(open_and_check(&v4), migrated);
    // And the migrated store takes new blocks as any other.
    let (store, _) = BlockStore::open_existing(&v3, StoreConfig::default()).expect("reopens");
    let parent = store.block_at(HEAD).expect("read").expect("head").header;
    let more = syncnode_types::DevChain::new(store.spec())
        .expect("dev")
        .extend(&parent, 10, 2048);
    store.import_blocks(&more).expect("import");
    assert_eq!(store.head().height, HEAD + 10);
    assert!(store.verify_chain(|_, _| {}).expect("verify").is_ok());
}

#[test]
fn a_schema_4_store_opens_as_it_is() {
    let tmp = tempfile::tempdir().expect("tmp");
    let v4 = unpack("schema4", tmp.path());
    {
        let db = raw_db(&v4);
        assert_eq!(stored_version(&db).expect("version"), Some(4));
        assert_eq!(to_current(&db, &v4, Plan::default()).expect("nothing"), None);
    }
    open_and_check(&v4);
}

/// A migration stopped after each of its commits in turn (as a kill would leave it, the commits
/// before it durable), then opened normally: it finishes and the chain is whole.
#[test]
fn a_migration_stopped_after_any_commit_is_finished_by_the_next_open() {
    let tmp = tempfile::tempdir().expect("tmp");
    let expected = open_and_check(&unpack("schema4", tmp.path()));
    let plan = |stop| Plan {
        batch_blocks: 32,
        stop_after_commits: Some(stop),
    };
    // 201 values in batches of 32: 7 batch commits, then the version's.
    let commits = 8;
    for stop in 0..commits {
        let run = tmp.path().join(format!("stop{stop}"));
        std::fs::create_dir(&run).expect("mkdir");
        let dir = unpack("schema3", &run);
        {
            let db = raw_db(&dir);
            match to_current(&db, &dir, plan(stop)) {
                Err(StoreError::MigrationStopped(n)) => assert_eq!(n, stop),
                other => panic!("stop {stop}: {other:?}"),
            }
            let left = if stop < commits - 1 { 201 - 32 * stop } else { 0 };
            drop(db);
            assert_eq!(unkinded_values(&dir), left, "stop {stop}");
        }
        assert_eq!(open_and_check(&dir), expected, "stop {stop}");
        assert_eq!(unkinded_values(&dir), 0, "stop {stop}");
    }
    // Stopping after the last commit is no stop at all.
    let run = tmp.path().join("nostop");
    std::fs::create_dir(&run).expect("mkdir");
    let dir = unpack("schema3", &run);
    let db = raw_db(&dir);
    assert_eq!(to_current(&db, &dir, plan(commits)).expect("migrates"), Some(3));
}

#[test]
fn a_torn_scratch_file_from_a_killed_scan_is_replaced() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = unpack("schema3", tmp.path());
    std::fs::write(dir.join(V4_SCRATCH), [7u8; 45]).expect("torn scratch");
    open_and_check(&dir);
    assert!(!dir.join(V4_SCRATCH).exists());
}

#[test]
fn a_store_newer_than_this_build_is_refused_by_name() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = unpack("schema4", tmp.path());
    {
        let db = raw_db(&dir);
        db.commit(vec![(
            COL_META,
            META_SCHEMA.to_vec(),
            Some(u64::from(SCHEMA_VERSION + 1).to_be_bytes().to_vec()),
        )])
        .expect("commit");
    }
    let err = BlockStore::open_existing(&dir, StoreConfig::default())
        .err()
        .expect("refused")
        .to_string();
    assert!(
        err.contains(&format!(
            "store schema version {} is newer than this build's ({SCHEMA_VERSION})",
            SCHEMA_VERSION + 1
        )),
        "{err}"
    );
    assert!(err.contains("run that version or a later one"), "{err}");
    // Refused without a change: the version stays what the newer build wrote.
    let db = raw_db(&dir);
    assert_eq!(stored_version(&db).expect("version"), Some(SCHEMA_VERSION + 1));
}

#[test]
fn a_store_older_than_schema_3_is_refused_by_name() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = unpack("schema4", tmp.path());
    {
        let db = raw_db(&dir);
        db.commit(vec![(
            COL_META,
            META_SCHEMA.to_vec(),
            Some(2u64.to_be_bytes().to_vec()),
        )])
        .expect("commit");
    }
    let err = BlockStore::open_existing(&dir, StoreConfig::default())
        .err()
        .expect("refused")
        .to_string();
    assert!(
        err.contains("store schema version 2 is older than the oldest this build migrates (3)"),
        "{err}"
    );
}
