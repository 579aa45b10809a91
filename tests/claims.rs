//! Claims that cannot hold a node, end to end: real `syncnode run` processes among peers whose
//! Status claims a head a thousand times their own and who answer every range request with
//! `RESOURCE_UNAVAILABLE`, `SERVER_ERROR` or a reset stream (`syncnode_e2e::hostile`).
//!
//! - A fresh node with an honest seeder of 6,000 blocks and the three liars reaches the honest
//!   head and reports `synced` within a minute, with the target at the honest head, and stays so
//!   past the liars' next Status (sent every 30 s), though each of their Statuses names another
//!   head; none of them is charged (refusing is allowed).
//! - An authority with the three liars connected keeps producing (it produces only when synced).
//!
//! Figures go to stderr (`--nocapture`).

use std::path::Path;
use std::time::{Duration, Instant};

use syncnode_e2e::client;
use syncnode_e2e::hostile::{Chain, HostileConfig, HostilePeer, Misbehaviour};
use syncnode_e2e::node::{Node, chain_with_history, http_json};
use syncnode_e2e::*;

/// The liars of these tests, one per way of not serving.
const LIARS: [Misbehaviour; 3] = [
    Misbehaviour::ClaimsAndRefuses,
    Misbehaviour::ClaimsAndErrs,
    Misbehaviour::ClaimsAndResets,
];

/// Starts the three liars, serving (or rather not serving) the chain of the store `store`; if
/// `flapping`, each of their Statuses names another head.
fn liars(
    rt: &tokio::runtime::Runtime,
    spec: &Path,
    store: &Path,
    head: u64,
    flapping: bool,
) -> Vec<HostilePeer> {
    let chain = Chain::from_export(spec, &db_export(store, 0, head));
    let config = HostileConfig {
        flapping_head: flapping,
        ..HostileConfig::default()
    };
    LIARS
        .iter()
        .map(|how| HostilePeer::spawn(rt.handle(), chain.clone(), *how, config))
        .collect()
}

fn bootnodes(liars: &[HostilePeer]) -> Vec<String> {
    liars
        .iter()
        .flat_map(|h| ["--bootnode".to_string(), h.addr.to_string()])
        .collect()
}

/// `(sync_state, head_height, target_height)` of a node.
fn progress(node: &Node) -> Option<(String, u64, u64)> {
    let s = node.status()?;
    Some((
        s["sync_state"].as_str()?.to_owned(),
        s["head_height"].as_u64()?,
        s["target_height"].as_u64()?,
    ))
}

/// Every liar reached the node, was asked for blocks, and stands uncharged and unbanned; `/peers`
/// shows its claim (a thousand times the head `head` of the chain it was given, from the
/// engine's record of its Status) and that it counts for no more than the node's own head.
fn check_liars(node: &Node, liars: &[HostilePeer], head: u64) {
    let ours = node.status_u64("head_height").expect("head");
    let peers = http_json(node.http, "/peers")
        .and_then(|v| v.as_array().cloned())
        .expect("/peers");
    for h in liars {
        let (id, _) = h.lives()[0];
        let seen = peers.iter().find(|p| p["peer_id"] == id.to_string());
        eprintln!(
            "  {:<16} range requests {:>3}: {}",
            format!("{:?}", h.how),
            h.total(|s| &s.range_requests),
            seen.map_or("not in /peers".to_owned(), |p| format!(
                "score {}, banned {}, connected {}",
                p["score"], p["banned"], p["connected"]
            ))
        );
        assert!(
            h.total(|s| &s.range_requests) > 0,
            "{:?} was never asked for blocks: the test did not test it",
            h.how
        );
        let seen = seen.expect("the liar in /peers");
        assert_eq!(seen["banned"], false, "refusing is not charged: {seen}");
        assert_eq!(seen["head_height"], head * 1000, "its claim: {seen}");
        assert!(
            seen["counts_for"].as_u64().is_some_and(|h| h <= ours),
            "its claim is capped at or below our head {ours}: {seen}"
        );
    }
}

/// Waits at most a minute from `started` for `synced` at `head` with the target there; returns
/// how long it took, or fails with the node's last progress.
fn until_synced(node: &Node, head: u64, started: Instant) -> Duration {
    let mut last = None;
    while started.elapsed() < Duration::from_secs(60) {
        last = progress(node);
        if last == Some(("synced".to_owned(), head, head)) {
            return started.elapsed();
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!(
        "not synced at {head} within a minute; last (state, head, target): {last:?}\n{}",
        node.log_tail(30)
    );
}

#[test]
fn liars_that_refuse_err_or_reset_cannot_hold_a_syncing_node() {
    const HEAD: u64 = 6_000;
    let dir = tempfile::tempdir().expect("tempdir");
    let (spec, seed) = chain_with_history(dir.path(), "seed", HEAD, 64);
    let rt = client::runtime();
    let liars = liars(&rt, &spec, &seed, HEAD, true);
    let seeder = Node::start("seeder", &spec, &seed, &[]);
    let mut list = vec!["--bootnode".to_string(), seeder.multiaddr()];
    list.extend(bootnodes(&liars));
    let started = Instant::now();
    let node = Node::start("node", &spec, &dir.path().join("node"), &list);
    let synced = until_synced(&node, HEAD, started);
    eprintln!(
        "[claims] {HEAD} blocks, 3 liars claiming {}: synced in {:.1} s",
        HEAD * 1000,
        synced.as_secs_f64()
    );
    // It stays synced, past the liars' next Status, which names another head.
    let until = Instant::now() + Duration::from_secs(35);
    while Instant::now() < until {
        let now = progress(&node);
        assert_eq!(
            now,
            Some(("synced".to_owned(), HEAD, HEAD)),
            "the node left `synced` at the honest head:\n{}",
            node.log_tail(40)
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    check_liars(&node, &liars, HEAD);
}

#[test]
fn an_authority_with_liars_connected_keeps_producing() {
    const HISTORY: u64 = 200;
    let dir = tempfile::tempdir().expect("tempdir");
    let (spec, store) = chain_with_history(dir.path(), "authority", HISTORY, 64);
    let rt = client::runtime();
    let liars = liars(&rt, &spec, &store, HISTORY, false);
    let mut list = vec!["--produce".to_string(), "--dev-key".to_string(), "0".to_string()];
    list.extend(bootnodes(&liars));
    let authority = Node::start("authority", &spec, &store, &list);
    let started = Instant::now();
    let mut last = None;
    while started.elapsed() < Duration::from_secs(60) {
        last = progress(&authority);
        if last
            .as_ref()
            .is_some_and(|(state, head, _)| state == "synced" && *head >= HISTORY + 3)
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let produced = match &last {
        Some((state, head, _)) if state == "synced" && *head >= HISTORY + 3 => *head,
        _ => panic!(
            "the authority did not produce within a minute; last (state, head, target): {last:?}\n{}",
            authority.log_tail(30)
        ),
    };
    eprintln!(
        "[claims] authority with 3 liars claiming {}: at {produced} after {:.1} s",
        HISTORY * 1000,
        started.elapsed().as_secs_f64()
    );
    // It keeps producing: at one block a second, several more in the next ten seconds.
    std::thread::sleep(Duration::from_secs(10));
    let (state, head, target) = progress(&authority).expect("status");
    assert_eq!(state, "synced", "{}", authority.log_tail(40));
    assert!(
        head >= produced + 5,
        "produced only {} blocks in 10 s (target {target})",
        head - produced
    );
    check_liars(&authority, &liars, HISTORY);
}
