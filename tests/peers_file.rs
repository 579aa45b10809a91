//! Peers that survive a restart: a node restarted without bootnodes finds its seeder again from
//! its peers file, and a peer banned before the restart is still refused after it.

use std::time::Duration;

use syncnode_e2e::node::{Node, chain_with_history, http_json, wait_for};
use syncnode_e2e::*;

const CHAIN: u64 = 2_000;

/// `peer`'s entry in `node`'s `/peers`, if it has one.
fn peer_entry(node: &Node, peer: &str) -> Option<serde_json::Value> {
    let peers = http_json(node.http, "/peers")?;
    peers.as_array()?.iter().find(|p| p["peer_id"] == peer).cloned()
}

fn peer_id(node: &Node) -> String {
    let status = node.status().expect("status");
    status["peer_id"].as_str().expect("peer id").to_owned()
}

#[test]
fn a_restart_without_bootnodes_redials_remembered_peers_and_keeps_bans() {
    let dir = tempfile::tempdir().expect("tmp");
    let (spec, seed_dir) = chain_with_history(dir.path(), "seeder", CHAIN, 128);
    let seeder = Node::start("seeder", &spec, &seed_dir, &[]);
    let seeder_id = peer_id(&seeder);

    // A node of another chain: whoever meets it bans it.
    let other_dir = dir.path().join("other");
    std::fs::create_dir_all(&other_dir).expect("dir");
    let other_spec = write_spec(&other_dir, "another-chain", 1, &[]);
    let mut stranger = Node::start("stranger", &other_spec, &other_dir.join("data"), &[]);
    let stranger_id = peer_id(&stranger);

    let data = dir.path().join("node");
    let boot = vec![
        "--bootnode".to_string(),
        seeder.multiaddr(),
        "--bootnode".to_string(),
        stranger.multiaddr(),
    ];
    let mut node = Node::start("node", &spec, &data, &boot);
    node.wait_status(Duration::from_secs(120), "synced from the seeder", |s| {
        s["sync_state"] == "synced" && s["head_height"] == CHAIN
    });
    // Both sides ban each other on the first Status; on a loaded machine the connection can close
    // before either Status arrives. Then the stranger, with the same identity and a fresh store,
    // dials the node again (at most twice more).
    let banned = |node: &Node| {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::time::Instant::now() < deadline {
            if peer_entry(node, &stranger_id).is_some_and(|p| p["banned"] == true) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        false
    };
    let mut tries = 0;
    while !banned(&node) {
        tries += 1;
        assert!(tries < 3, "the stranger is never banned:\n{}", node.log_tail(30));
        let retry = dir.path().join(format!("stranger-retry-{tries}"));
        std::fs::create_dir_all(&retry).expect("dir");
        std::fs::copy(other_dir.join("data/network_key"), retry.join("network_key")).expect("key");
        let mut again = Node::start(
            "stranger",
            &other_spec,
            &retry,
            &["--bootnode".to_string(), node.multiaddr()],
        );
        let seen = banned(&node);
        assert!(again.stop(), "stranger did not stop cleanly");
        if seen {
            break;
        }
    }
    assert!(node.stop(), "node did not stop cleanly");
    assert!(stranger.stop(), "stranger did not stop cleanly");
    let file = std::fs::read_to_string(data.join("peers.json")).expect("peers file written");
    assert!(file.contains(&seeder_id) && file.contains(&stranger_id), "{file}");

    // Restart with no bootnodes at all: the seeder is dialled from the peers file.
    let log_before = std::fs::metadata(&node.log).map(|m| m.len()).unwrap_or(0) as usize;
    let node = Node::start("node", &spec, &data, &[]);
    wait_for(Duration::from_secs(30), "the seeder connected again", || {
        peer_entry(&node, &seeder_id).filter(|p| p["connected"] == true)
    });
    let entry = peer_entry(&node, &stranger_id).expect("the restored ban is listed");
    assert_eq!(entry["banned"], true, "{entry}");

    // The stranger, with the same identity and no memory of its own ban, dials the node: the
    // connection is refused before any Status, so the stranger never learns our chain.
    let key_dir = dir.path().join("stranger2");
    std::fs::create_dir_all(&key_dir).expect("dir");
    std::fs::copy(other_dir.join("data/network_key"), key_dir.join("network_key")).expect("key");
    let again = Node::start(
        "stranger2",
        &other_spec,
        &key_dir,
        &["--bootnode".to_string(), node.multiaddr()],
    );
    assert_eq!(peer_id(&again), stranger_id);
    wait_for(
        Duration::from_secs(30),
        "the stranger's connection refused",
        || {
            let log = std::fs::read_to_string(&node.log).ok()?;
            log.get(log_before..)?
                .contains("incoming connection failed")
                .then_some(())
        },
    );
    std::thread::sleep(Duration::from_secs(2));
    let node_id = peer_id(&node);
    let seen = peer_entry(&again, &node_id);
    assert!(
        seen.as_ref()
            .is_none_or(|p| p["banned"] == false && p["connected"] == false),
        "the stranger got as far as a Status: {seen:?}"
    );
    let entry = peer_entry(&node, &stranger_id).expect("still listed");
    assert!(entry["banned"] == true && entry["connected"] == false, "{entry}");
}
