//! One step off README's tour: what an operator meets with the defaults. Generated history with
//! the default genesis time is never refused by the chain's own nodes.

use std::time::Duration;

use syncnode_e2e::node::{Node, http_json, now_s, wait_for};
use syncnode_e2e::*;

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// The follower's `/peers` entry of `peer_id`.
fn peer_entry(node: &Node, peer_id: &str) -> Option<serde_json::Value> {
    let peers = http_json(node.http, "/peers")?;
    peers
        .as_array()?
        .iter()
        .find(|p| p["peer_id"] == peer_id)
        .cloned()
}

/// The README tour without `--genesis-timestamp-ms`: a spec with the default genesis time, 1,000
/// generated blocks, a seeder that produces on top of them and a follower. The follower takes
/// the producer's gossip (nothing from the future), never bans it, and follows its head.
#[test]
fn a_producer_on_generated_history_with_the_default_genesis_is_followed_not_banned() {
    let dir = tempfile::tempdir().expect("tmp");
    let spec = write_spec(dir.path(), "tour", 1, &[]);
    let seed_dir = dir.path().join("seeder");
    generate(&spec, &seed_dir, 1_000, 64);
    let seeder = Node::start(
        "seeder",
        &spec,
        &seed_dir,
        &args(&["--produce", "--dev-key", "0"]),
    );
    let producer_id = seeder.status().expect("status")["peer_id"]
        .as_str()
        .expect("peer id")
        .to_owned();
    let follower = Node::start(
        "follower",
        &spec,
        &dir.path().join("follower"),
        &args(&["--bootnode", &seeder.multiaddr()]),
    );
    // The follower catches up with history, then follows blocks produced after it is synced.
    let synced = follower.wait_status(Duration::from_secs(60), "synced past the history", |s| {
        s["sync_state"] == "synced" && s["head_height"].as_u64().is_some_and(|h| h >= 1_000)
    });
    let from = synced["head_height"].as_u64().expect("head");
    let target = from + 5;
    wait_for(
        Duration::from_secs(60),
        &format!("follower to follow the producer to {target}"),
        || {
            let entry = peer_entry(&follower, &producer_id)?;
            assert_eq!(
                entry["banned"],
                false,
                "the follower banned the producer: {entry}\n{}",
                follower.log_tail(20)
            );
            let head = follower.status_u64("head_height")?;
            let producer_head = seeder.status_u64("head_height")?;
            (head >= target && head + 1 >= producer_head).then_some(())
        },
    );
    let entry = peer_entry(&follower, &producer_id).expect("producer in /peers");
    assert_eq!(entry["banned"], false, "{entry}");
    assert!(
        entry["score"].as_f64().expect("score") >= 0.0,
        "the producer was charged: {entry}"
    );
    assert_eq!(follower.status_u64("peers"), Some(1));
}

/// History that would end in the future is refused before anything is written, with the fix.
#[test]
fn generating_history_into_the_future_is_refused_with_the_fix() {
    let dir = tempfile::tempdir().expect("tmp");
    let genesis_ms = (now_s() * 1000).to_string();
    let spec = write_spec(dir.path(), "now", 1, &["--genesis-timestamp-ms", &genesis_ms]);
    let data = dir.path().join("store");
    let out = syncnode(&[
        "chain",
        "generate",
        "--chain",
        path_str(&spec),
        "--data-dir",
        path_str(&data),
        "--blocks",
        "1000",
    ])
    .output()
    .expect("spawn");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "generate succeeded:\n{stderr}");
    assert!(stderr.contains("in the future"), "{stderr}");
    assert!(stderr.contains("--genesis-timestamp-ms"), "{stderr}");
    assert_eq!(db_check_ok(&data), 0, "blocks were written before the refusal");
}
