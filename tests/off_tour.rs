//! One step off README's tour: what an operator meets with the defaults. Generated history with
//! the default genesis time is never refused by the chain's own nodes; `syncnode subscribe` on a
//! pruned node says what the node holds instead of waiting in silence.

use std::io::Read;
use std::process::Output;
use std::time::{Duration, Instant};

use syncnode_e2e::node::{Node, chain_with_history, http_json, now_s, printed_heights, wait_for};
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

/// Runs `syncnode subscribe` against `node` with `extra` flags; panics if it runs past `timeout`.
fn subscribe(node: &Node, cursor: &std::path::Path, extra: &[&str], timeout: Duration) -> Output {
    let http = node.http.to_string();
    let mut list = vec!["subscribe", "--http", &http, "--cursor-file", path_str(cursor)];
    list.extend_from_slice(extra);
    let mut cmd = syncnode(&list);
    cmd.stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = ChildGuard(cmd.spawn().expect("spawn subscribe"));
    let deadline = Instant::now() + timeout;
    // Its output is small: it fits in the pipes while it runs.
    let status = loop {
        if let Some(status) = child.0.try_wait().expect("wait") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "syncnode subscribe {extra:?} still runs after {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    child
        .0
        .stdout
        .take()
        .expect("stdout")
        .read_to_end(&mut stdout)
        .expect("read");
    child
        .0
        .stderr
        .take()
        .expect("stderr")
        .read_to_end(&mut stderr)
        .expect("read");
    Output {
        status,
        stdout,
        stderr,
    }
}

/// A node run with `--history-blocks`: `syncnode subscribe` from 0 (its default) exits non-zero at
/// once, printing nothing and saying which heights the node holds and how to start there;
/// `--from earliest` prints the held heights in order from the earliest.
#[test]
fn subscribing_below_a_pruned_nodes_history_is_an_error_that_says_what_it_holds() {
    let dir = tempfile::tempdir().expect("tmp");
    let (spec, data) = chain_with_history(dir.path(), "pruned", 3_000, 64);
    let node = Node::start("pruned", &spec, &data, &args(&["--history-blocks", "500"]));
    let earliest = node.status_u64("earliest_height").expect("earliest");
    assert!(earliest > 2_000, "the node did not prune: earliest {earliest}");

    let out = subscribe(&node, &dir.path().join("c1"), &[], Duration::from_secs(30));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "subscribe from 0 succeeded:\n{stderr}");
    assert!(
        out.stdout.is_empty(),
        "printed {:?}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        stderr.contains(&format!("no blocks below height {earliest}")),
        "{stderr}"
    );
    assert!(stderr.contains("--from earliest"), "{stderr}");

    let until = (earliest + 20).to_string();
    let cursor = dir.path().join("c2");
    let out = subscribe(
        &node,
        &cursor,
        &["--from", "earliest", "--until", &until],
        Duration::from_secs(30),
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let heights = printed_heights(&String::from_utf8_lossy(&out.stdout));
    let expected: Vec<_> = (earliest..=earliest + 20).map(Some).collect();
    assert_eq!(heights, expected);
}

/// A node whose stderr is a file writes plain log lines, without terminal colour codes.
#[test]
fn logs_to_a_file_have_no_colour_codes() {
    let dir = tempfile::tempdir().expect("tmp");
    let spec = write_spec(dir.path(), "plain", 1, &[]);
    let node = Node::start("plain", &spec, &dir.path().join("node"), &[]);
    let log = wait_for(Duration::from_secs(10), "a log line", || {
        let text = std::fs::read_to_string(&node.log).ok()?;
        (!text.is_empty()).then_some(text)
    });
    assert!(!log.contains('\x1b'), "colour codes in the log file:\n{log}");
}

/// `run --print-config` prints only settings the node would run with (an invalid one is an error,
/// exit 2), names the unset ones, and a flag turns off what the config file turns on.
#[test]
fn print_config_checks_the_settings_and_flags_override_the_file() {
    let dir = tempfile::tempdir().expect("tmp");
    let spec = write_spec(dir.path(), "config", 1, &[]);
    let file = dir.path().join("node.toml");
    let toml = format!(
        "chain = {:?}\ndata-dir = {:?}\nmdns = true\nproduce = true\ndev-key = 0\n",
        path_str(&spec),
        path_str(&dir.path().join("node"))
    );
    std::fs::write(&file, toml).expect("write config");
    let config = path_str(&file);
    let out = syncnode(&[
        "run",
        "--config",
        config,
        "--batch-size",
        "5000",
        "--print-config",
    ])
    .output()
    .expect("spawn");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(out.stdout.is_empty(), "printed an invalid config");
    assert!(
        stderr.contains("batch_size must be between 1 and 1024"),
        "{stderr}"
    );

    let out = run_ok(&[
        "run",
        "--config",
        config,
        "--mdns=false",
        "--produce=false",
        "--print-config",
    ]);
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(printed.contains("mdns = false"), "{printed}");
    assert!(printed.contains("produce = false"), "{printed}");
    assert!(printed.contains("# http: unset"), "{printed}");
}
