//! Fork choice end to end, with real `syncnode run` processes on loopback: a node synced on one
//! chain switches to a longer fork served by another node, or announced by gossip, and followers
//! follow a producer that restarted after losing its last blocks. Nobody is banned: being on
//! another fork, or behind, is no fault.

use std::time::{Duration, Instant};

use syncnode_e2e::node::{Node, chain_with_history, http_json, printed_heights, wait_for};
use syncnode_e2e::*;

/// Length of chain A; chain B leaves it at `BRANCH` (above A's finalized height, 32 below its
/// head) and runs to `B_HEAD`.
const A_HEAD: u64 = 3_000;
const BRANCH: u64 = 2_992;
const B_HEAD: u64 = 3_024;

fn boot(nodes: &[&Node]) -> Vec<String> {
    nodes
        .iter()
        .flat_map(|n| ["--bootnode".to_string(), n.multiaddr()])
        .collect()
}

/// Panics if `node` lists a banned peer or one charged as a liar (a score below -50).
fn assert_nobody_banned(node: &Node) {
    let peers = http_json(node.http, "/peers")
        .and_then(|v| v.as_array().cloned())
        .expect("/peers");
    for p in &peers {
        assert!(
            p["banned"] == false && p["score"].as_f64().is_some_and(|s| s > -50.0),
            "{} charged or banned a peer on another fork: {p}\n{}",
            node.name,
            node.log_tail(40)
        );
    }
}

fn head(node: &Node) -> Option<(u64, String)> {
    let s = node.status()?;
    Some((s["head_height"].as_u64()?, s["head_hash"].as_str()?.to_owned()))
}

fn stop_and_check(node: &mut Node) -> u64 {
    assert!(
        node.stop(),
        "{} did not stop cleanly:\n{}",
        node.name,
        node.log_tail(20)
    );
    db_check_ok(&node.data_dir)
}

/// A `syncnode subscribe` process on `node` from `from` until `until`, printing to a file.
struct Subscriber {
    child: ChildGuard,
    printed: std::path::PathBuf,
}

impl Subscriber {
    fn start(dir: &std::path::Path, node: &Node, from: u64, until: u64) -> Self {
        let printed = dir.join("subscriber.jsonl");
        let mut subscribe = syncnode(&[
            "subscribe",
            "--http",
            &node.http.to_string(),
            "--cursor-file",
            path_str(&dir.join("cursor")),
            "--from",
            &from.to_string(),
            "--until",
            &until.to_string(),
        ]);
        subscribe
            .stdout(std::fs::File::create(&printed).expect("subscriber output"))
            .stderr(std::process::Stdio::null());
        let child = ChildGuard(subscribe.spawn().expect("spawn subscribe"));
        Subscriber { child, printed }
    }

    /// Waits until the last block the subscriber printed is at `height`.
    fn wait_printed(&self, within: Duration, what: &str, height: u64) {
        wait_for(within, what, || {
            let text = std::fs::read_to_string(&self.printed).ok()?;
            (printed_heights(&text).last() == Some(&Some(height))).then_some(())
        });
    }

    /// Waits for the subscriber to exit at its `--until`; returns the height its reorg event
    /// rewound to and the last height it printed.
    fn finish(mut self, within: Duration, what: &str) -> (u64, Option<u64>) {
        wait_for(within, what, || self.child.0.try_wait().ok().flatten());
        let text = std::fs::read_to_string(&self.printed).expect("subscriber output");
        let rewind_to = text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find_map(|v| v["reorg"]["rewind_to"].as_u64())
            .unwrap_or_else(|| panic!("no reorg event:\n{text}"));
        (rewind_to, printed_heights(&text).last().copied().flatten())
    }
}

#[test]
fn a_node_synced_on_one_chain_switches_to_a_longer_fork_and_bans_nobody() {
    let dir = tempfile::tempdir().expect("tmp");
    let (spec, a_dir) = chain_with_history(dir.path(), "a", A_HEAD, 256);
    let x_dir = dir.path().join("x");
    generate(&spec, &x_dir, A_HEAD, 256);
    // B: A's first BRANCH blocks, then blocks of another payload size, so other hashes.
    let b_dir = dir.path().join("b");
    generate(&spec, &b_dir, BRANCH, 256);
    generate(&spec, &b_dir, B_HEAD - BRANCH, 300);

    let mut a = Node::start("a", &spec, &a_dir, &[]);
    let mut x = Node::start("x", &spec, &x_dir, &boot(&[&a]));
    x.wait_status(Duration::from_secs(60), "synced on chain A", |s| {
        s["sync_state"] == "synced" && s["head_height"] == A_HEAD
    });
    // A subscriber on x, delivered A's blocks from 2980, must be told of the reorg.
    let subscriber = Subscriber::start(dir.path(), &x, 2980, B_HEAD);
    subscriber.wait_printed(Duration::from_secs(30), "the subscriber at A's head", A_HEAD);
    let mut b = Node::start("b", &spec, &b_dir, &boot(&[&x]));
    let b_head = head(&b).expect("b's head");
    assert_eq!(b_head.0, B_HEAD);
    wait_for(Duration::from_secs(90), "x on chain B's head", || {
        (head(&x)? == b_head).then_some(())
    });
    x.wait_status(Duration::from_secs(30), "synced on chain B", |s| {
        s["sync_state"] == "synced"
    });
    for n in [&a, &x, &b] {
        assert_nobody_banned(n);
    }
    let (rewind_to, last) = subscriber.finish(Duration::from_secs(30), "the subscriber to print B's head");
    assert!(
        rewind_to <= BRANCH + 1,
        "rewind to {rewind_to}, the fork leaves at {BRANCH}"
    );
    assert_eq!(last, Some(B_HEAD));

    for n in [&mut a, &mut b] {
        stop_and_check(n);
    }
    let expected = db_export(&b_dir, 0, B_HEAD);
    assert_eq!(
        stop_and_check(&mut x),
        B_HEAD,
        "db check passes on the longer fork"
    );
    assert!(
        db_export(&x.data_dir, 0, B_HEAD) == expected,
        "x's chain is not chain B"
    );
}

/// Followers hold `LOST` blocks more than the producer, whose store lost them (blocks of the same
/// dev chain, so the producer's store is exactly a prefix of theirs): on restart it must learn
/// their head and build on it, not on its own stale head.
#[test]
fn followers_follow_a_producer_restarted_after_losing_its_last_blocks() {
    const HISTORY: u64 = 1_000;
    const LOST: u64 = 5;
    let dir = tempfile::tempdir().expect("tmp");
    let (spec, producer_dir) = chain_with_history(dir.path(), "producer", HISTORY, 256);
    let follower_dirs = [dir.path().join("f1"), dir.path().join("f2")];
    for d in &follower_dirs {
        generate(&spec, d, HISTORY + LOST, 256);
    }
    let f1 = Node::start("f1", &spec, &follower_dirs[0], &[]);
    let f2 = Node::start("f2", &spec, &follower_dirs[1], &boot(&[&f1]));
    let mut followers = [f1, f2];
    let producing = ["--produce".to_string(), "--dev-key".into(), "0".into()];
    let mut args = producing.to_vec();
    args.extend(boot(&[&followers[0], &followers[1]]));
    let mut producer = Node::start("producer", &spec, &producer_dir, &args);

    let target = HISTORY + LOST + 5;
    let agreed = wait_for(
        Duration::from_secs(90),
        "all three on one head past the followers' old head",
        || {
            let heads: Vec<(u64, String)> = [&producer, &followers[0], &followers[1]]
                .iter()
                .map(|n| head(n))
                .collect::<Option<_>>()?;
            (heads[0].0 >= target && heads.windows(2).all(|w| w[0] == w[1])).then(|| heads[0].0)
        },
    );
    for n in [&producer, &followers[0], &followers[1]] {
        assert_nobody_banned(n);
    }
    assert!(stop_and_check(&mut producer) >= agreed);
    for f in &mut followers {
        assert!(stop_and_check(f) >= agreed);
    }
    let reference = db_export(&producer_dir, 0, agreed);
    for f in &followers {
        assert!(
            db_export(&f.data_dir, 0, agreed) == reference,
            "{}'s chain differs from the producer's",
            f.name
        );
    }
    // The producer built on the followers' blocks it had lost, not on its own stale head.
    assert!(
        db_export(&producer_dir, HISTORY, HISTORY + LOST)
            == db_export(&follower_dirs[0], HISTORY, HISTORY + LOST),
        "the producer replaced the blocks its followers held"
    );
}

/// A produced block is announced only once its commit is durable: a producer killed (SIGKILL) as
/// soon as its follower holds its newest block, received by gossip, still has that block when its
/// store is opened again, and after a restart builds on it. Several rounds, each a restart and a
/// kill, so that a kill landing where the store's log happened to be written anyway does not hide
/// a block announced too early.
#[test]
fn a_producer_killed_right_after_announcing_a_block_still_holds_it() {
    const HISTORY: u64 = 200;
    const ROUNDS: usize = 4;
    let dir = tempfile::tempdir().expect("tmp");
    let (spec, producer_dir) = chain_with_history(dir.path(), "producer", HISTORY, 256);
    let follower_dir = dir.path().join("follower");
    generate(&spec, &follower_dir, HISTORY, 256);
    let mut follower = Node::start("follower", &spec, &follower_dir, &[]);
    let mut args = vec!["--produce".to_string(), "--dev-key".into(), "0".into()];
    args.extend(boot(&[&follower]));
    let mut announced = HISTORY;
    for round in 0..ROUNDS {
        let mut producer = Node::start("producer", &spec, &producer_dir, &args);
        let (height, hash) = wait_for(
            Duration::from_secs(60),
            "the follower to receive a new block from the producer",
            || head(&follower).filter(|(h, _)| *h > announced),
        );
        producer.child.kill();
        let stored = db_check_ok(&producer_dir);
        assert!(
            stored >= height,
            "round {round}: the follower holds block {height} ({hash}), but the killed producer's \
             store ends at {stored}\n{}",
            producer.log_tail(20)
        );
        announced = height;
    }
    assert_nobody_banned(&follower);
    assert!(stop_and_check(&mut follower) >= announced);
    assert!(
        db_export(&producer_dir, 0, announced) == db_export(&follower_dir, 0, announced),
        "the producer's chain differs from the one it announced"
    );
}

/// A follower holds `LOST` blocks its producer lost in a crash; the producer, alone meanwhile,
/// made `LOST` others at the same heights (prepared here with `chain generate`). Connected, both
/// heads are equal, so neither fetches the other's (the first seen stays), until the producer
/// makes the next block: gossip shows the follower a longer branch, and it must switch at once,
/// not at the next Status round (every 30 s), telling its subscriber of the reorg.
#[test]
fn a_follower_switches_to_a_longer_fork_announced_by_gossip_within_seconds() {
    const HISTORY: u64 = 200;
    const LOST: u64 = 4;
    const HEAD: u64 = HISTORY + LOST;
    let dir = tempfile::tempdir().expect("tmp");
    let (spec, producer_dir) = chain_with_history(dir.path(), "producer", HISTORY, 256);
    generate(&spec, &producer_dir, LOST, 300);
    let follower_dir = dir.path().join("follower");
    generate(&spec, &follower_dir, HEAD, 256);
    let mut follower = Node::start("follower", &spec, &follower_dir, &[]);
    let until = HEAD + 2;
    let subscriber = Subscriber::start(dir.path(), &follower, HISTORY - 2, until);
    subscriber.wait_printed(
        Duration::from_secs(30),
        "the subscriber at the follower's head",
        HEAD,
    );

    let mut args = vec!["--produce".to_string(), "--dev-key".into(), "0".into()];
    args.extend(boot(&[&follower]));
    let mut producer = Node::start("producer", &spec, &producer_dir, &args);
    let started = Instant::now();
    // The producer's first block on its branch, then the follower on it: well inside the 30 s
    // before a Status round could show the follower the producer's head.
    let first = wait_for(Duration::from_secs(15), "the producer's next block", || {
        head(&producer).filter(|(h, _)| *h > HEAD)
    });
    let produced_after = started.elapsed();
    let switched = wait_for(
        Duration::from_secs(8),
        "the follower on the producer's branch",
        || {
            let (height, hash) = head(&follower)?;
            (height >= first.0).then_some(())?;
            let theirs = http_json(producer.http, &format!("/blocks/{height}"))?;
            (theirs["hash"].as_str()? == hash).then_some(height)
        },
    );
    eprintln!(
        "producer's first block after {produced_after:?}; the follower on its branch at height \
         {switched} after {:?}",
        started.elapsed()
    );
    for n in [&follower, &producer] {
        assert_nobody_banned(n);
    }
    let (rewind_to, last) = subscriber.finish(
        Duration::from_secs(20),
        "the subscriber to print the last height it waits for",
    );
    assert!(
        rewind_to <= HISTORY + 1,
        "rewind to {rewind_to}, the branches part at {HISTORY}"
    );
    assert_eq!(last, Some(until));

    let produced = stop_and_check(&mut producer);
    let followed = stop_and_check(&mut follower);
    let common = produced.min(followed);
    assert!(common >= switched);
    assert!(
        db_export(&follower_dir, 0, common) == db_export(&producer_dir, 0, common),
        "the follower's chain is not the producer's"
    );
}
