//! Range sync end to end: real `syncnode run` processes on loopback, real stores.

use std::path::Path;
use std::time::Duration;

use syncnode_e2e::node::{Node, chain_with_history, wait_for};
use syncnode_e2e::*;

const CHAIN: u64 = 20_000;

fn synced_at_least(height: u64) -> impl Fn(&serde_json::Value) -> bool {
    move |s| s["sync_state"] == "synced" && s["head_height"].as_u64().is_some_and(|h| h >= height)
}

#[test]
fn a_fresh_node_syncs_from_three_seeders_and_all_agree() {
    let dir = tempfile::tempdir().expect("tmp");
    let (spec, producer_dir) = chain_with_history(dir.path(), "producer", CHAIN, 256);
    let mut producer = Node::start(
        "producer",
        &spec,
        &producer_dir,
        &["--produce".into(), "--dev-key".into(), "0".into()],
    );
    let boot = vec!["--bootnode".to_string(), producer.multiaddr()];
    let mut a = Node::start("a", &spec, &dir.path().join("a"), &boot);
    let mut b = Node::start("b", &spec, &dir.path().join("b"), &boot);
    for n in [&a, &b] {
        n.wait_status(
            Duration::from_secs(90),
            "synced to the pre-generated head",
            synced_at_least(CHAIN),
        );
    }

    let mut fresh_args = Vec::new();
    for n in [&producer, &a, &b] {
        fresh_args.extend(["--bootnode".to_string(), n.multiaddr()]);
    }
    let mut fresh = Node::start("fresh", &spec, &dir.path().join("fresh"), &fresh_args);
    let mut states = std::collections::BTreeSet::new();
    wait_for(Duration::from_secs(90), "fresh node synced", || {
        let s = fresh.status()?;
        states.insert(s["sync_state"].as_str()?.to_owned());
        synced_at_least(CHAIN)(&s).then_some(())
    });
    assert!(
        states.contains("syncing"),
        "fresh node never reported syncing: {states:?}"
    );
    let peers = fresh.status_u64("peers").expect("peers");
    assert!(peers >= 3, "fresh node has {peers} peers");

    // Stop producing; every node must converge on the producer's head.
    assert!(
        producer.stop(),
        "producer did not stop cleanly:\n{}",
        producer.log_tail(20)
    );
    let (_, body) = node::http_get(a.http, "/status").expect("a answers");
    let _ = body;
    let head = wait_for(Duration::from_secs(30), "all three on one head", || {
        let heads: Vec<(u64, String)> = [&a, &b, &fresh]
            .iter()
            .map(|n| {
                n.status()
                    .map(|s| (s["head_height"].as_u64().unwrap_or(0), s["head_hash"].to_string()))
            })
            .collect::<Option<_>>()?;
        heads.windows(2).all(|w| w[0] == w[1]).then(|| heads[0].0)
    });
    for n in [&mut a, &mut b, &mut fresh] {
        assert!(n.stop(), "{} did not stop cleanly:\n{}", n.name, n.log_tail(20));
    }
    let reference = db_export(&producer_dir, 0, head);
    for n in [&a, &b, &fresh] {
        assert!(db_check_ok(&n.data_dir) >= head);
        assert!(
            db_export(&n.data_dir, 0, head) == reference,
            "{}'s chain differs from the producer's",
            n.name
        );
    }
}

/// Flips a signature bit in every 7th stored block of `data_dir` (same hash, invalid signature),
/// as a seeder with damaged or forged history would serve them.
fn corrupt_every_seventh_block(spec_path: &Path, data_dir: &Path, blocks: u64) {
    use syncnode_store::schema::{COL_BLOCKS, db_options, encode_block};
    let spec = syncnode_types::ChainSpec::from_json(&std::fs::read_to_string(spec_path).expect("spec"))
        .expect("spec");
    let chain = syncnode_types::DevChain::new(&spec).expect("dev keys");
    let mut parent = spec.genesis().header;
    let db = parity_db::Db::open(&db_options(data_dir)).expect("open db");
    let mut changes = Vec::new();
    for h in 1..=blocks {
        let mut block = chain.child(&parent, syncnode_types::DevChain::payload(h, 256));
        parent = block.header;
        if h % 7 == 0 {
            block.signature.0[10] ^= 0x20;
            changes.push((COL_BLOCKS, block.hash().0.to_vec(), Some(encode_block(&block))));
        }
    }
    db.commit(changes).expect("commit");
}

fn copy_dir(from: &Path, to: &Path) {
    let ok = std::process::Command::new("cp")
        .args(["-r", path_str(from), path_str(to)])
        .status()
        .expect("cp");
    assert!(ok.success());
}

#[test]
fn a_seeder_serving_corrupt_blocks_is_banned_and_the_chain_is_right() {
    let dir = tempfile::tempdir().expect("tmp");
    let (spec, original) = chain_with_history(dir.path(), "producer", CHAIN, 256);
    let honest = [dir.path().join("honest1"), dir.path().join("honest2")];
    let corrupt = dir.path().join("corrupt");
    for d in honest.iter().chain([&corrupt]) {
        copy_dir(&original, d);
    }
    corrupt_every_seventh_block(&spec, &corrupt, CHAIN);

    let seeders: Vec<Node> = [
        ("honest1", &honest[0]),
        ("honest2", &honest[1]),
        ("corrupt", &corrupt),
    ]
    .into_iter()
    .map(|(name, d)| Node::start(name, &spec, d, &[]))
    .collect();
    let corrupt_id = seeders[2].status().expect("status")["peer_id"]
        .as_str()
        .expect("peer id")
        .to_owned();
    let mut args = Vec::new();
    for n in &seeders {
        args.extend(["--bootnode".to_string(), n.multiaddr()]);
    }
    let mut fresh = Node::start("fresh", &spec, &dir.path().join("fresh"), &args);
    fresh.wait_status(
        Duration::from_secs(120),
        "synced despite the corrupt seeder",
        synced_at_least(CHAIN),
    );

    let peers = node::http_json(fresh.http, "/peers").expect("/peers");
    let entry = peers
        .as_array()
        .expect("array")
        .iter()
        .find(|p| p["peer_id"] == corrupt_id.as_str())
        .unwrap_or_else(|| panic!("corrupt seeder not in /peers: {peers}"));
    assert_eq!(entry["banned"], true, "corrupt seeder not banned: {entry}");
    for p in peers.as_array().expect("array") {
        if p["peer_id"] != corrupt_id.as_str() {
            assert_eq!(p["banned"], false, "an honest seeder was banned: {p}");
        }
    }
    assert!(
        fresh.stop(),
        "fresh did not stop cleanly:\n{}",
        fresh.log_tail(20)
    );
    assert_eq!(db_check_ok(&fresh.data_dir), CHAIN);
    assert!(db_export(&fresh.data_dir, 0, CHAIN) == db_export(&original, 0, CHAIN));
}

#[test]
fn a_node_whose_peers_stop_answering_is_stalled_then_recovers() {
    let dir = tempfile::tempdir().expect("tmp");
    let (spec, seed_dir) = chain_with_history(dir.path(), "producer", CHAIN, 256);
    let seeder = Node::start("seeder", &spec, &seed_dir, &[]);
    let args: Vec<String> = [
        "--bootnode",
        &seeder.multiaddr(),
        "--stall-after-secs",
        "2",
        "--batch-size",
        "32",
        "--window-batches",
        "2",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let fresh = Node::start("fresh", &spec, &dir.path().join("fresh"), &args);
    fresh.wait_status(Duration::from_secs(30), "syncing", |s| {
        s["head_height"].as_u64().is_some_and(|h| h > 0)
    });
    seeder.signal("STOP");
    let stalled = fresh.wait_status(Duration::from_secs(40), "stalled", |s| {
        s["sync_state"] == "stalled"
    });
    assert!(stalled["head_height"].as_u64().expect("height") < CHAIN);
    seeder.signal("CONT");
    fresh.wait_status(
        Duration::from_secs(120),
        "synced after the seeder came back",
        synced_at_least(CHAIN),
    );
}

#[test]
fn a_fresh_node_syncs_over_quic_from_a_seeder_that_listens_on_quic_only() {
    // The seeder has no TCP listener: every byte of the sync crosses QUIC-v1.
    let dir = tempfile::tempdir().expect("tmp");
    let (spec, seeder_dir) = chain_with_history(dir.path(), "seeder", 3_000, 256);
    let seeder = Node::start_quic("seeder", &spec, &seeder_dir, &[]);
    assert!(seeder.multiaddr().contains("/quic-v1"));
    let boot = vec!["--bootnode".to_string(), seeder.multiaddr()];
    let mut fresh = Node::start("fresh", &spec, &dir.path().join("fresh"), &boot);
    fresh.wait_status(
        Duration::from_secs(60),
        "synced over QUIC",
        synced_at_least(3_000),
    );
    let head = |n: &Node| {
        n.status()
            .and_then(|s| s["head_hash"].as_str().map(str::to_owned))
    };
    assert_eq!(head(&fresh), head(&seeder));
    assert!(fresh.stop(), "fresh node did not stop cleanly");
    assert_eq!(db_check_ok(&dir.path().join("fresh")), 3_000);
}
