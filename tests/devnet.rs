//! `syncnode devnet` end to end: it must finish by itself, exit 0, print its summary table with
//! every node synced, and leave no node process behind.

use syncnode_e2e::*;

#[test]
fn devnet_runs_to_completion_and_cleans_up() {
    let dir = tempfile::tempdir().expect("tmp");
    let root = dir.path().join("devnet");
    let out = run_ok(&[
        "devnet",
        "--blocks",
        "2000",
        "--nodes",
        "3",
        "--data-root",
        path_str(&root),
        "--timeout-secs",
        "120",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    for node in ["producer", "node1", "node2", "checkpoint"] {
        let row = text
            .lines()
            .find(|l| l.starts_with(&format!("| {node} |")))
            .unwrap_or_else(|| panic!("no summary row for {node}:\n{text}"));
        if node != "producer" {
            let time = row.split('|').nth(3).expect("time column").trim();
            assert!(time.parse::<f64>().is_ok(), "{node} has no time to sync: {row}");
        }
    }
    assert!(text.contains("devnet: all nodes stopped"), "{text}");
    // Every node's store holds the whole chain, checked block by block.
    for node in ["node1", "node2", "checkpoint"] {
        assert!(db_check_ok(&root.join(node)) >= 2000);
    }
    let leftover = std::process::Command::new("pgrep")
        .args(["-f", path_str(&root)])
        .output()
        .expect("pgrep");
    assert!(
        leftover.stdout.is_empty(),
        "node processes left behind: {}",
        String::from_utf8_lossy(&leftover.stdout)
    );
}

/// A devnet that fails keeps its temporary directory, which its error message points into.
#[test]
fn a_failed_devnet_keeps_the_directory_its_error_points_into() {
    let tmp = tempfile::tempdir().expect("tmp");
    let out = syncnode(&[
        "devnet",
        "--blocks",
        "5000",
        "--nodes",
        "1",
        "--timeout-secs",
        "0",
    ])
    .env("TMPDIR", tmp.path())
    .output()
    .expect("spawn devnet");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a devnet with no time finished:\n{stderr}");
    let root = stderr
        .split("logs in ")
        .nth(1)
        .map(|rest| rest.trim())
        .unwrap_or_else(|| panic!("the error names no directory:\n{stderr}"));
    let log = std::path::Path::new(root).join("node1.log");
    assert!(log.is_file(), "{} is gone:\n{stderr}", log.display());
    assert!(root.starts_with(path_str(tmp.path())), "{root}");
}
