//! A store survives SIGKILL at random moments of a write-heavy run.
//!
//! A child `syncnode chain generate` commits 4096-block batches in a loop and is killed at random
//! moments, 20 times; once with small payloads (kept in parity-db), once with payloads large
//! enough for the store's payload files (written and synced before each commit, cut back at open
//! when the commit never happened). After each kill the store must open, `db check` must pass (every block,
//! link and pointer), and the head must not fall below what the previous check saw: a block once
//! found durable is never lost. At the end generation runs to completion and the store's export
//! is byte-identical to a store that was never interrupted.

use std::time::Duration;

use rand::{RngExt, SeedableRng};
use syncnode_e2e::*;

#[test]
fn store_survives_sigkill_at_random_moments() {
    generate_under_kills("crash", 150_000, 64, 20);
}

#[test]
fn store_with_payload_files_survives_sigkill_at_random_moments() {
    generate_under_kills("crash-large", 12_000, 12 * 1024, 12);
}

/// Generates `total` blocks of `payload_bytes` into a store while killing the generator `kills_wanted`
/// times, checking the store after each kill, then compares it with an uninterrupted one.
fn generate_under_kills(name: &str, total: u64, payload_bytes: usize, kills_wanted: usize) {
    let payload = payload_bytes.to_string();
    let dir = tempfile::tempdir().expect("tmp");
    let spec = write_spec(dir.path(), name, 2, &["--genesis-timestamp-ms", "1700000000000"]);
    let spec = path_str(&spec).to_owned();
    let data = dir.path().join("killed");
    let seed = std::env::var("CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    println!("crash test seed {seed} (set CRASH_SEED to replay)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);

    let mut durable = 0u64;
    let mut kills = 0;
    while kills < kills_wanted && durable < total {
        let remaining = (total - durable).to_string();
        let mut child = ChildGuard::spawn(
            syncnode(&[
                "chain",
                "generate",
                "--chain",
                &spec,
                "--data-dir",
                path_str(&data),
                "--blocks",
                &remaining,
                "--payload-bytes",
                &payload,
            ]),
            false,
        );
        std::thread::sleep(Duration::from_millis(rng.random_range(20..300)));
        let finished = child.0.try_wait().expect("poll child").is_some();
        child.kill();
        if !finished {
            kills += 1;
        }
        let head = db_check_ok(&data);
        assert!(
            head >= durable,
            "after kill {kills} the head fell from {durable} to {head}: durable blocks were lost"
        );
        durable = head;
    }
    assert_eq!(
        kills, kills_wanted,
        "generation finished before {kills_wanted} kills; raise total"
    );

    if durable < total {
        let remaining = (total - durable).to_string();
        run_ok(&[
            "chain",
            "generate",
            "--chain",
            &spec,
            "--data-dir",
            path_str(&data),
            "--blocks",
            &remaining,
            "--payload-bytes",
            &payload,
        ]);
    }
    assert_eq!(db_check_ok(&data), total);

    let reference = dir.path().join("reference");
    let all = total.to_string();
    run_ok(&[
        "chain",
        "generate",
        "--chain",
        &spec,
        "--data-dir",
        path_str(&reference),
        "--blocks",
        &all,
        "--payload-bytes",
        &payload,
    ]);
    assert!(
        db_export(&data, 0, total) == db_export(&reference, 0, total),
        "killed store differs from the reference"
    );
}
