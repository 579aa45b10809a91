//! An upgrade keeps the store: the stores that earlier builds wrote (testdata/stores) open with
//! this binary, migrated, and hold the same chain.

use std::path::Path;

use syncnode_e2e::{db_check_ok, db_export, syncnode};

fn unpack(name: &str, into: &Path) -> std::path::PathBuf {
    let archive = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../testdata/stores")
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

#[test]
fn a_schema_3_store_opens_migrated_and_exports_the_chain_a_schema_4_store_holds() {
    let tmp = tempfile::tempdir().expect("tmp");
    let v3 = unpack("schema3", tmp.path());
    let v4 = unpack("schema4", tmp.path());
    let out = syncnode(&["--log-level", "info", "db", "check", "--data-dir"])
        .arg(&v3)
        .output()
        .expect("spawn");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("migrating the store"), "{log}");
    assert!(log.contains("store migrated"), "{log}");
    assert_eq!(db_check_ok(&v3), 200);
    assert_eq!(db_export(&v3, 0, 200), db_export(&v4, 0, 200));
}
