//! Replays the committed seeds (and any crash artifacts kept as regressions) through each target's
//! checks without libFuzzer: `cargo test` in this folder.

use std::path::Path;

fn replay(target: &str, check: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds").join(target);
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).expect("seed folder") {
        let path = entry.expect("entry").path();
        check(&std::fs::read(&path).expect("seed"));
        n += 1;
    }
    assert!(n > 0, "no seeds in {}", dir.display());
}

#[test]
fn frame_seeds() {
    replay("frame", syncnode_fuzz::frame_check::check);
}

#[test]
fn message_seeds() {
    replay("message", syncnode_fuzz::message_check::check);
}

#[test]
fn validity_seeds() {
    replay("validity", syncnode_fuzz::validity_check::check);
}
