//! Chaos: a fresh node syncs forward from a checkpoint and backfills to genesis from two seeders
//! while it is killed with SIGKILL at random moments and restarted each time, a subscriber reading
//! its block stream throughout. At the end: `db check` passes, the export is byte-identical to the
//! seeder's, and the subscriber printed every height from 0 in order (repeats only where it
//! reconnected). `CHAOS_KILLS` (default 10) and `CHAOS_BLOCKS` (default 20,000) scale it, and
//! `CHAOS_PAYLOAD` (default 1,024 bytes: kept in the store's payload files) sizes the blocks;
//! `make chaos` runs 50 kills. `CHAOS_SEED` replays a run.

use std::time::{Duration, Instant};

use rand::{RngExt, SeedableRng};
use syncnode_e2e::node::{Node, chain_with_history, free_port, http_get, printed_heights, wait_for};
use syncnode_e2e::*;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `syncnode_blocks_downloaded_total` of a running node, if it answers.
fn downloaded(node: &Node) -> Option<u64> {
    let (_, text) = http_get(node.http, "/metrics")?;
    text.lines()
        .find_map(|l| l.strip_prefix("syncnode_blocks_downloaded_total "))
        .and_then(|v| v.trim().parse().ok())
}

#[test]
fn a_node_killed_at_random_moments_while_syncing_and_backfilling_ends_whole() {
    let kills = env_u64("CHAOS_KILLS", 10);
    let blocks = env_u64("CHAOS_BLOCKS", 20_000);
    let payload = env_u64("CHAOS_PAYLOAD", 1024);
    let seed = env_u64("CHAOS_SEED", rand::random());
    println!("chaos: {kills} kills, {blocks} blocks of {payload} B, seed {seed} (CHAOS_SEED replays)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().expect("tmp");
    let (spec, seed_a) = chain_with_history(dir.path(), "seeder-a", blocks, payload);
    let seed_b = dir.path().join("seeder-b");
    assert!(
        std::process::Command::new("cp")
            .args(["-r", path_str(&seed_a), path_str(&seed_b)])
            .status()
            .expect("cp")
            .success()
    );

    // Pace the seeders so the sync lasts about as long as the kills take (~0.9 s apart).
    let per_seeder = (blocks as f64 / (kills as f64 * 0.9) / 2.0).max(200.0) as u64;
    let pace = vec!["--serve-blocks-per-sec".to_string(), per_seeder.to_string()];
    let a = Node::start("seeder-a", &spec, &seed_a, &pace);
    let b = Node::start("seeder-b", &spec, &seed_b, &pace);
    let checkpoint = blocks / 2;
    let cp_hash = a
        .status()
        .and(node::http_json(a.http, &format!("/blocks/{checkpoint}")))
        .expect("checkpoint block")["hash"]
        .as_str()
        .expect("hash")
        .to_owned();
    let args: Vec<String> = [
        "--bootnode",
        &a.multiaddr(),
        "--bootnode",
        &b.multiaddr(),
        "--checkpoint",
        &format!("{checkpoint}:{cp_hash}"),
        "--batch-size",
        "128",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let data = dir.path().join("node");
    let http = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let p2p = free_port();
    let mut node = Node::start_at("node", &spec, &data, &args, http, p2p);

    let out = dir.path().join("subscriber.jsonl");
    let mut sub_cmd = syncnode(&[
        "subscribe",
        "--http",
        &http.to_string(),
        "--cursor-file",
        path_str(&dir.path().join("cursor")),
        "--until",
        &blocks.to_string(),
    ]);
    sub_cmd
        .stdout(std::fs::File::create(&out).expect("out"))
        .stderr(std::process::Stdio::null());
    let mut subscriber = ChildGuard(sub_cmd.spawn().expect("spawn subscribe"));

    let started = Instant::now();
    let mut total_downloaded = 0;
    for k in 0..kills {
        let wait = Duration::from_millis(rng.random_range(300..1500));
        let until = Instant::now() + wait;
        let mut last = None;
        while Instant::now() < until {
            last = downloaded(&node).or(last);
            std::thread::sleep(Duration::from_millis(50));
        }
        total_downloaded += last.unwrap_or(0);
        node.child.kill();
        node = Node::start_at("node", &spec, &data, &args, http, p2p);
        if k % 10 == 9 {
            println!(
                "chaos: {} kills after {:.1} s",
                k + 1,
                started.elapsed().as_secs_f64()
            );
        }
    }
    node.wait_status(Duration::from_secs(180), "synced with full history", |s| {
        s["sync_state"] == "synced" && s["head_height"] == blocks && s["earliest_height"] == 0
    });
    total_downloaded += downloaded(&node).unwrap_or(0);
    let elapsed = started.elapsed();
    wait_for(
        Duration::from_secs(120),
        "the subscriber to reach the head",
        || subscriber.0.try_wait().expect("wait"),
    );
    assert!(node.stop(), "node did not stop cleanly:\n{}", node.log_tail(20));
    drop((a, b));
    println!(
        "chaos: {kills} kills, {kills} restarts, synced forward and backfilled {blocks} blocks in {:.1} s, \
         about {total_downloaded} blocks downloaded ({:.2} x the chain)",
        elapsed.as_secs_f64(),
        total_downloaded as f64 / blocks as f64
    );

    assert_eq!(db_check_ok(&data), blocks);
    assert!(
        db_export(&data, 0, blocks) == db_export(&seed_a, 0, blocks),
        "the node's chain differs from the seeder's"
    );
    let heights = printed_heights(&std::fs::read_to_string(&out).expect("subscriber output"));
    let mut expected = 0u64;
    for (i, h) in heights.iter().enumerate() {
        let h = h.unwrap_or_else(|| panic!("line {i} is not a block"));
        if h + 1 == expected {
            continue; // a reconnect printed the last block again
        }
        assert_eq!(h, expected, "subscriber line {i}: gap or disorder");
        expected += 1;
    }
    assert_eq!(expected, blocks + 1, "subscriber did not print every height");
}
