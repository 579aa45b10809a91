//! Checkpoint start, backfill and history retention end to end: real `syncnode run` processes on
//! loopback, real stores.
//!
//! Every test here starts one seeder or more from a pre-generated chain and a node from a
//! checkpoint (or from genesis) that must end with exactly the seeders' chain. The tests run one at
//! a time (see [`serial`]): they time signals against backfill's progress, which two tests sharing
//! two cores would make needlessly loose.

use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use syncnode_e2e::node::{Node, chain_with_history, http_get, http_json, wait_for};
use syncnode_e2e::*;

/// Blocks of pre-generated history.
const CHAIN: u64 = 20_000;
/// Height of the trusted checkpoint the fresh nodes start from.
const CHECKPOINT: u64 = 15_000;
/// The counter of blocks received in responses, as `GET /metrics` names it.
const DOWNLOADED: &str = "syncnode_blocks_downloaded_total";

static SERIAL: Mutex<()> = Mutex::new(());

/// Held for a whole test so the tests of this file never overlap.
fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn copy_dir(from: &Path, to: &Path) {
    let ok = std::process::Command::new("cp")
        .args(["-r", path_str(from), path_str(to)])
        .status()
        .expect("cp");
    assert!(ok.success());
}

/// `--checkpoint HEIGHT:HASH` of the seeder's canonical block at `height`.
fn checkpoint_of(seeder: &Node, height: u64) -> String {
    let block = http_json(seeder.http, &format!("/blocks/{height}")).expect("checkpoint block");
    format!("{height}:{}", block["hash"].as_str().expect("hash"))
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// Synced to `CHAIN` with history complete down to `earliest`.
fn complete_down_to(earliest: u64) -> impl Fn(&serde_json::Value) -> bool {
    move |s| {
        s["sync_state"] == "synced"
            && s["head_height"] == CHAIN
            && s["earliest_height"] == earliest
            && s["backfill_complete"] == true
    }
}

/// `/peers` entry of `peer_id` as seen by `node`.
fn peer_entry(node: &Node, peer_id: &str) -> serde_json::Value {
    let peers = http_json(node.http, "/peers").expect("/peers");
    peers
        .as_array()
        .expect("array")
        .iter()
        .find(|p| p["peer_id"] == peer_id)
        .cloned()
        .unwrap_or_else(|| panic!("{peer_id} not in /peers of {}: {peers}", node.name))
}

fn peer_id(node: &Node) -> String {
    node.status().expect("status")["peer_id"]
        .as_str()
        .expect("peer id")
        .to_owned()
}

/// Stops `node` cleanly, then checks its store block by block and compares its export of
/// `[0, CHAIN]` with `reference` (the seeder's, taken before it started: a running node holds its
/// store's lock).
fn stop_and_compare(node: &mut Node, reference: &[u8]) {
    assert!(
        node.stop(),
        "{} did not stop cleanly:\n{}",
        node.name,
        node.log_tail(30)
    );
    assert_eq!(db_check_ok(&node.data_dir), CHAIN);
    assert!(
        db_export(&node.data_dir, 0, CHAIN) == reference,
        "{}'s chain differs from the seeder's",
        node.name
    );
}

#[test]
fn a_checkpoint_node_ends_with_the_full_chain() {
    let _serial = serial();
    let dir = tempfile::tempdir().expect("tmp");
    let (spec, seed) = chain_with_history(dir.path(), "seed", CHAIN, 256);
    let reference = db_export(&seed, 0, CHAIN);
    let second = dir.path().join("seed2");
    copy_dir(&seed, &second);
    let s1 = Node::start("seeder1", &spec, &seed, &[]);
    let s2 = Node::start("seeder2", &spec, &second, &[]);
    let cp = checkpoint_of(&s1, CHECKPOINT);
    let mut node = Node::start(
        "checkpoint",
        &spec,
        &dir.path().join("checkpoint"),
        &args(&[
            "--bootnode",
            &s1.multiaddr(),
            "--bootnode",
            &s2.multiaddr(),
            "--checkpoint",
            &cp,
        ]),
    );
    let mut lowest_seen = u64::MAX;
    wait_for(Duration::from_secs(60), "checkpoint node complete", || {
        let s = node.status()?;
        if s["head_height"].as_u64()? >= CHECKPOINT {
            lowest_seen = lowest_seen.min(s["earliest_height"].as_u64()?);
            // Backfill fills the history below the checkpoint only.
            assert!(lowest_seen <= CHECKPOINT, "{s}");
        }
        complete_down_to(0)(&s).then_some(())
    });
    stop_and_compare(&mut node, &reference);
}

/// The node's download counter (reset at each process start), read just before it is signalled.
fn downloaded(node: &Node) -> u64 {
    let n = node.metric(DOWNLOADED).expect("download counter") as u64;
    assert!(n > 0, "{} downloaded nothing", node.name);
    n
}

/// Restarted mid-backfill, once by SIGTERM and once by SIGKILL, with the same flags, a checkpoint
/// node resumes from its persisted low pointer and downloads the chain about once.
///
/// Counting: the node's `syncnode_blocks_downloaded_total` restarts at 0 with each process, so it
/// is read just before each signal and summed over the three runs (what arrives between the read
/// and the signal, a few ms at the seeder's pace, is missed). The seeder is the node's only peer and
/// serves only it, so its `syncnode_network_blocks_served_total` bounds the node's downloads from
/// above exactly, including what was in flight at each signal; both must stay below 1.1 x CHAIN.
#[test]
fn backfill_resumes_after_sigterm_and_sigkill() {
    let _serial = serial();
    let dir = tempfile::tempdir().expect("tmp");
    let (spec, seed) = chain_with_history(dir.path(), "seed", CHAIN, 256);
    let reference = db_export(&seed, 0, CHAIN);
    // A slow seeder, so backfill lasts long enough to be interrupted twice.
    let seeder = Node::start("seeder", &spec, &seed, &args(&["--serve-blocks-per-sec", "1500"]));
    let cp = checkpoint_of(&seeder, CHECKPOINT);
    let data = dir.path().join("checkpoint");
    let node_args = args(&[
        "--bootnode",
        &seeder.multiaddr(),
        "--checkpoint",
        &cp,
        "--batch-size",
        "128",
    ]);
    let backfilled_below = |node: &Node, height: u64| {
        node.wait_status(Duration::from_secs(60), "backfill under way", |s| {
            s["head_height"] == CHAIN
                && s["sync_state"] == "backfilling"
                && s["earliest_height"].as_u64().is_some_and(|e| e < height)
        })["earliest_height"]
            .as_u64()
            .expect("earliest")
    };
    let mut counted = Vec::new();

    // Run 1: stopped gracefully mid-backfill.
    let mut node = Node::start("checkpoint", &spec, &data, &node_args);
    let stopped_at = backfilled_below(&node, CHECKPOINT - 3000);
    counted.push(downloaded(&node));
    assert!(node.stop(), "no clean stop:\n{}", node.log_tail(30));

    // Run 2: same flags (the checkpoint is already anchored); killed mid-backfill.
    let mut node = Node::start("checkpoint", &spec, &data, &node_args);
    let resumed = node.status_u64("earliest_height").expect("earliest");
    assert!(
        resumed <= stopped_at,
        "restart after SIGTERM lost backfilled history: {resumed} > {stopped_at}"
    );
    let killed_at = backfilled_below(&node, resumed - 3000);
    counted.push(downloaded(&node));
    node.child.kill();

    // Run 3: resumes from the persisted pointer and completes.
    let mut node = Node::start("checkpoint", &spec, &data, &node_args);
    let resumed = node.status_u64("earliest_height").expect("earliest");
    assert!(
        (1..CHECKPOINT).contains(&resumed),
        "restart after SIGKILL did not resume from the persisted pointer ({resumed}; killed at {killed_at})"
    );
    node.wait_status(Duration::from_secs(60), "backfill complete", complete_down_to(0));
    counted.push(downloaded(&node));
    let total: u64 = counted.iter().sum();
    let served = seeder
        .metric("syncnode_network_blocks_served_total")
        .expect("served counter") as u64;
    eprintln!(
        "downloaded per run {counted:?}, total {total}, served by the seeder {served}, for a chain \
         of {CHAIN} ({:.3}x, {:.3}x); stopped at {stopped_at}, killed at {killed_at}, resumed at {resumed}",
        total as f64 / CHAIN as f64,
        served as f64 / CHAIN as f64,
    );
    for (what, n) in [("downloaded", total), ("served", served)] {
        assert!(
            (n as f64) < 1.1 * CHAIN as f64,
            "{what} {n} blocks over three runs for a chain of {CHAIN}: {counted:?}"
        );
    }
    stop_and_compare(&mut node, &reference);
}

/// Rewrites the canonical history of the store in `data_dir` below `below` as a fork from genesis:
/// blocks validly signed by the chain's authority, with other payloads, so they chain to genesis
/// and to each other but not to the canonical block at `below`. Returns the fork's hashes.
fn fork_history_below(spec_path: &Path, data_dir: &Path, below: u64) -> Vec<syncnode_types::Hash> {
    use syncnode_store::canon::CanonEdits;
    use syncnode_store::schema::{COL_BLOCKS, db_options, encode_block};
    let spec = syncnode_types::ChainSpec::from_json(&std::fs::read_to_string(spec_path).expect("spec"))
        .expect("spec");
    let dev = syncnode_types::DevChain::new(&spec).expect("dev keys");
    let mut parent = spec.genesis().header;
    let db = parity_db::Db::open(&db_options(data_dir)).expect("open db");
    let mut changes = Vec::new();
    let mut canon = CanonEdits::default();
    let mut hashes = Vec::new();
    for h in 1..below {
        let block = dev.child(&parent, syncnode_types::DevChain::payload(h + 1_000_000, 256));
        parent = block.header;
        hashes.push(block.hash());
        changes.push((COL_BLOCKS, block.hash().0.to_vec(), Some(encode_block(&block))));
        canon.set(h, block.hash());
    }
    canon.write_to(&db, &mut changes).expect("canonical index");
    db.commit(changes).expect("commit");
    hashes
}

#[test]
fn a_seeder_with_another_history_below_the_checkpoint_is_charged_and_never_stored() {
    let _serial = serial();
    let dir = tempfile::tempdir().expect("tmp");
    let (spec, seed) = chain_with_history(dir.path(), "seed", CHAIN, 256);
    let reference = db_export(&seed, 0, CHAIN);
    let forked = dir.path().join("forked");
    copy_dir(&seed, &forked);
    let fork = fork_history_below(&spec, &forked, CHECKPOINT);
    let honest = Node::start("honest", &spec, &seed, &[]);
    let liar = Node::start("liar", &spec, &forked, &[]);
    let liar_id = peer_id(&liar);
    let honest_id = peer_id(&honest);
    // The liar serves its fork as its canonical range.
    let at = http_json(liar.http, &format!("/blocks/{}", CHECKPOINT - 1)).expect("liar's block");
    assert_eq!(at["hash"], fork[fork.len() - 1].to_string());
    let cp = checkpoint_of(&honest, CHECKPOINT);
    let mut node = Node::start(
        "checkpoint",
        &spec,
        &dir.path().join("checkpoint"),
        &args(&[
            "--bootnode",
            &liar.multiaddr(),
            "--bootnode",
            &honest.multiaddr(),
            "--checkpoint",
            &cp,
        ]),
    );
    node.wait_status(Duration::from_secs(60), "backfill complete", complete_down_to(0));
    let liar_entry = peer_entry(&node, &liar_id);
    assert_eq!(
        liar_entry["banned"], true,
        "the liar was not banned: {liar_entry}"
    );
    let honest_entry = peer_entry(&node, &honest_id);
    assert_eq!(
        honest_entry["banned"], false,
        "the honest seeder was banned: {honest_entry}"
    );
    for hash in fork.iter().step_by(997).chain(fork.last()) {
        let (code, _) = http_get(node.http, &format!("/blocks/hash/{hash}")).expect("answer");
        assert_eq!(code, 404, "fork block {hash} was stored");
    }
    stop_and_compare(&mut node, &reference);
}

/// Blocks a pruned node keeps below its finalized block in [`a_pruned_peer_is_never_asked_below_its_earliest_height`].
const KEPT: u64 = 2_000;

/// A node run with `--history-blocks` prunes its store at start, advertises the raised
/// `earliest_height`, and still passes `db check`; a checkpoint node that has it and a full seeder
/// as peers backfills to genesis from the full seeder only: the pruned node never receives a range
/// request below its earliest height (its own counter of such requests stays at 0) and is never
/// charged, while it does serve forward ranges it holds.
#[test]
fn a_pruned_peer_is_never_asked_below_its_earliest_height() {
    let _serial = serial();
    let dir = tempfile::tempdir().expect("tmp");
    let (spec, seed) = chain_with_history(dir.path(), "seed", CHAIN, 256);
    let reference = db_export(&seed, 0, CHAIN);
    let pruned_dir = dir.path().join("pruned");
    copy_dir(&seed, &pruned_dir);
    // The full seeder serves slowly, so the checkpoint node also wants the pruned node's ranges.
    let full = Node::start("full", &spec, &seed, &args(&["--serve-blocks-per-sec", "4000"]));
    let mut pruned = Node::start(
        "pruned",
        &spec,
        &pruned_dir,
        &args(&["--history-blocks", &KEPT.to_string()]),
    );
    let status = pruned.status().expect("status");
    let finalized = status["finalized_height"].as_u64().expect("finalized");
    let earliest = status["earliest_height"].as_u64().expect("earliest");
    assert_eq!(earliest, finalized - KEPT, "pruned node's status: {status}");
    assert!(
        earliest > CHECKPOINT,
        "the test needs the pruned node's history to start above {CHECKPOINT}"
    );
    let (code, _) = http_get(pruned.http, &format!("/blocks/{}", earliest - 1)).expect("answer");
    assert_eq!(
        code,
        404,
        "block {} below the earliest height is still served",
        earliest - 1
    );

    let pruned_id = peer_id(&pruned);
    let cp = checkpoint_of(&full, CHECKPOINT);
    let mut node = Node::start(
        "checkpoint",
        &spec,
        &dir.path().join("checkpoint"),
        &args(&[
            "--bootnode",
            &pruned.multiaddr(),
            "--bootnode",
            &full.multiaddr(),
            "--checkpoint",
            &cp,
            "--batch-size",
            "256",
        ]),
    );
    node.wait_status(Duration::from_secs(60), "backfill complete", complete_down_to(0));
    let entry = peer_entry(&node, &pruned_id);
    assert_eq!(entry["earliest_height"], earliest, "{entry}");
    assert_eq!(entry["banned"], false, "the pruned peer was banned: {entry}");
    assert!(
        entry["score"].as_f64().expect("score") >= 0.0,
        "the pruned peer was charged: {entry}"
    );
    let below = pruned
        .metric("syncnode_range_requests_below_earliest_total")
        .expect("below-earliest counter");
    assert_eq!(
        below, 0.0,
        "the pruned peer was asked for ranges below its earliest height"
    );
    let served = pruned
        .metric("syncnode_network_blocks_served_total")
        .expect("served counter");
    assert!(
        served > 0.0,
        "the pruned peer served nothing: the test proves nothing"
    );
    eprintln!("pruned peer (earliest {earliest}) served {served} blocks, none below its earliest height");
    stop_and_compare(&mut node, &reference);
    assert!(
        pruned.stop(),
        "pruned node did not stop cleanly:\n{}",
        pruned.log_tail(30)
    );
    assert_eq!(db_check_ok(&pruned_dir), CHAIN);
}
