//! A store survives SIGKILL at random moments of a write-heavy run.
//!
//! A child `syncnode chain generate` commits 4096-block batches in a loop and is killed at random
//! moments, 20 times. After each kill the store must open, `db check` must pass (every block,
//! link and pointer), and the head must not fall below what the previous check saw: a block once
//! found durable is never lost. At the end generation runs to completion and the store's export
//! is byte-identical to a store that was never interrupted.

use std::time::Duration;

use rand::{RngExt, SeedableRng};
use syncnode_e2e::*;

const TOTAL: u64 = 150_000;
const KILLS: usize = 20;

#[test]
fn store_survives_sigkill_at_random_moments() {
    let dir = tempfile::tempdir().expect("tmp");
    let spec = write_spec(
        dir.path(),
        "crash",
        2,
        &["--genesis-timestamp-ms", "1700000000000"],
    );
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
    while kills < KILLS && durable < TOTAL {
        let remaining = (TOTAL - durable).to_string();
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
                "64",
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
        kills, KILLS,
        "generation finished before {KILLS} kills; raise TOTAL"
    );

    if durable < TOTAL {
        let remaining = (TOTAL - durable).to_string();
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
            "64",
        ]);
    }
    assert_eq!(db_check_ok(&data), TOTAL);

    let reference = dir.path().join("reference");
    let total = TOTAL.to_string();
    run_ok(&[
        "chain",
        "generate",
        "--chain",
        &spec,
        "--data-dir",
        path_str(&reference),
        "--blocks",
        &total,
        "--payload-bytes",
        "64",
    ]);
    assert!(
        db_export(&data, 0, TOTAL) == db_export(&reference, 0, TOTAL),
        "killed store differs from the reference"
    );
}
