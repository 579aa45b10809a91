//! `syncnode db import` of what `db export` wrote, across real processes and real stores: a whole
//! export and one in two ranges, a tampered file, and an import killed and run again.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use syncnode_e2e::{ChildGuard, db_check_ok, db_export, generate, path_str, syncnode, write_spec};
use syncnode_proto::frame::{decode_frame, encode_frame};
use syncnode_proto::{MAX_RESPONSE_FRAME, pb};

/// Runs `db import` of `file` into `data_dir`; returns whether it succeeded, and its stderr.
fn import(spec: &Path, data_dir: &Path, file: &Path) -> (bool, String) {
    let out = syncnode(&[
        "db",
        "import",
        "--data-dir",
        path_str(data_dir),
        "--chain",
        path_str(spec),
        path_str(file),
    ])
    .output()
    .expect("spawn syncnode");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The frames of an export, as protobuf blocks.
fn frames(export: &[u8]) -> Vec<pb::Block> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < export.len() {
        let (msg, used) = decode_frame::<pb::Block>(&export[at..], MAX_RESPONSE_FRAME).expect("frame");
        out.push(msg);
        at += used;
    }
    out
}

/// "imported N blocks ... head A -> B ..." of an import's summary: (N, A).
fn summary(stderr: &str) -> (u64, u64) {
    let line = stderr
        .lines()
        .find(|l| l.starts_with("imported "))
        .unwrap_or_else(|| panic!("no summary in:\n{stderr}"));
    let words: Vec<&str> = line.split_whitespace().collect();
    let n = words[1].parse().expect("count");
    let at = words.iter().position(|w| *w == "head").expect("head");
    let from = words[at + 1].parse().expect("start head");
    (n, from)
}

#[test]
fn an_export_imports_whole_or_in_ranges_and_exports_back_the_same() {
    let tmp = tempfile::tempdir().expect("tmp");
    let spec = write_spec(tmp.path(), "import", 4, &[]);
    let source = tmp.path().join("source");
    generate(&spec, &source, 2000, 256);
    generate(&spec, &source, 100, 4096);
    let all = db_export(&source, 0, 2100);
    let file = tmp.path().join("all.blocks");
    std::fs::write(&file, &all).expect("write");

    let whole = tmp.path().join("whole");
    let (ok, err) = import(&spec, &whole, &file);
    assert!(ok, "{err}");
    assert_eq!(summary(&err), (2100, 0));
    assert_eq!(db_check_ok(&whole), 2100);
    assert_eq!(db_export(&whole, 0, 2100), all, "export equals the input");
    // Again: everything is known, nothing changes.
    let (ok, err) = import(&spec, &whole, &file);
    assert!(ok, "{err}");
    assert_eq!(summary(&err), (0, 2100));

    // Seeded in two ranges of `db export --from/--to`.
    let halves = tmp.path().join("halves");
    for (from, to) in [(0, 1200), (1201, 2100)] {
        let part = tmp.path().join(format!("{from}.blocks"));
        std::fs::write(&part, db_export(&source, from, to)).expect("write");
        let (ok, err) = import(&spec, &halves, &part);
        assert!(ok, "{err}");
    }
    assert_eq!(db_check_ok(&halves), 2100);
    assert_eq!(db_export(&halves, 0, 2100), all);
}

#[test]
fn a_tampered_block_is_named_and_nothing_from_it_on_is_imported() {
    let tmp = tempfile::tempdir().expect("tmp");
    let spec = write_spec(tmp.path(), "tamper", 4, &[]);
    let source = tmp.path().join("source");
    generate(&spec, &source, 3000, 256);
    let all = db_export(&source, 0, 3000);
    let mut blocks = frames(&all);
    let bad_hash = syncnode_types::Block::try_from(blocks[2000].clone())
        .expect("block")
        .hash();
    let mut sig = blocks[2000].signature.to_vec();
    sig[5] ^= 0x10;
    blocks[2000].signature = sig.into();
    let tampered: Vec<u8> = blocks.iter().flat_map(encode_frame).collect();
    let file = tmp.path().join("tampered.blocks");
    std::fs::write(&file, &tampered).expect("write");

    // A store that already holds 0..=500: it keeps them.
    let dest = tmp.path().join("dest");
    let first = tmp.path().join("first.blocks");
    std::fs::write(&first, db_export(&source, 0, 500)).expect("write");
    assert!(import(&spec, &dest, &first).0);

    let (ok, err) = import(&spec, &dest, &file);
    assert!(!ok, "a tampered file is refused");
    assert!(
        err.contains(&format!(
            "block {bad_hash} at height 2000 (frame 2000 of the input) breaks rule 5"
        )),
        "{err}"
    );
    assert!(err.contains("nothing from it on was imported"), "{err}");
    assert_eq!(db_check_ok(&dest), 1999);
    assert_eq!(db_export(&dest, 0, 1999), db_export(&source, 0, 1999));
}

#[test]
fn an_import_killed_midway_continues_from_the_head_when_run_again() {
    let tmp = tempfile::tempdir().expect("tmp");
    let spec = write_spec(tmp.path(), "resume", 4, &[]);
    let source = tmp.path().join("source");
    let n = 60_000;
    generate(&spec, &source, n, 128);
    let all = db_export(&source, 0, n);
    let file = tmp.path().join("all.blocks");
    std::fs::write(&file, &all).expect("write");

    // The import reads the first half of the export from a pipe that stays open, so it cannot
    // finish however fast the machine is; it is killed once the store holds some of the chain.
    let dest = tmp.path().join("dest");
    let mut cmd = syncnode(&[
        "db",
        "import",
        "--data-dir",
        path_str(&dest),
        "--chain",
        path_str(&spec),
        "-",
    ]);
    cmd.stdin(std::process::Stdio::piped());
    let mut child = ChildGuard::spawn(cmd, false);
    let mut stdin = child.0.stdin.take().expect("piped stdin");
    stdin.write_all(&all[..all.len() / 2]).expect("feed the import");
    let deadline = Instant::now() + Duration::from_secs(60);
    while table_bytes(&dest) < 4 << 20 {
        assert!(Instant::now() < deadline, "the import wrote nothing in 60 s");
        assert!(child.0.try_wait().expect("wait").is_none(), "still importing");
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill();
    drop(stdin);

    let (ok, err) = import(&spec, &dest, &file);
    assert!(ok, "{err}");
    let (imported, from) = summary(&err);
    assert!(from > 0 && from < n, "killed midway: head {from} at the restart");
    assert_eq!(imported, n - from, "continued from the head: {err}");
    assert_eq!(db_check_ok(&dest), n);
    assert_eq!(db_export(&dest, 0, n), all);
}

/// Bytes in the store's value tables under `dir` (0 while it does not exist): a fresh store's
/// are 256 KiB each; they grow as imported blocks are written (its index files are preallocated,
/// so they would tell nothing).
fn table_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().starts_with("table_"))
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}
