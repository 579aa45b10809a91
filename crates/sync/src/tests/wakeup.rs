//! The engine's contract with its shell: ticking only at [`SyncEngine::next_wakeup`] is enough,
//! and an invalid configuration is refused.

use super::*;

/// Ticks at every wake-up the engine names until `until_ms`, answering nothing; returns the
/// actions with the time they came.
fn tick_at_wakeups(engine: &mut SyncEngine<u32>, until_ms: u64) -> Vec<(u64, Action<u32>)> {
    let mut seen = Vec::new();
    while let Some(at) = engine.next_wakeup().filter(|&t| t <= until_ms) {
        engine.tick(at);
        seen.extend(drain(engine).into_iter().map(|a| (at, a)));
    }
    seen
}

#[test]
fn ticking_only_at_next_wakeup_fires_deadlines_retries_and_the_stall() {
    let blocks = chain(10, 8, 0);
    let mut engine = SyncEngine::new(config(), local(&blocks, 0), 2).expect("a valid config");
    // One peer: a batch it failed waits its backoff (with a second peer free, it would go to
    // that one at once).
    engine.peer_status(0, 1, status(&blocks, 10));
    assert_eq!(range_requests(&drain(&mut engine)).len(), 1);
    assert_eq!(engine.next_wakeup(), Some(1_000), "the request's deadline");
    let seen = tick_at_wakeups(&mut engine, 6_000);
    let timeouts: Vec<u64> = seen
        .iter()
        .filter(|(_, a)| {
            matches!(
                a,
                Action::Penalise {
                    action: PeerAction::Timeout,
                    ..
                }
            )
        })
        .map(|(t, _)| *t)
        .collect();
    assert_eq!(timeouts.first(), Some(&1_000), "the deadline fired at its time");
    let retries: Vec<u64> = seen
        .iter()
        .filter(|(_, a)| matches!(a, Action::SendRangeRequest { .. }))
        .map(|(t, _)| *t)
        .collect();
    assert!(
        retries.first().is_some_and(|&t| (1_100..1_200).contains(&t)),
        "the retry went out when its backoff ended: {retries:?}"
    );
    let stalled: Vec<u64> = seen
        .iter()
        .filter(|(_, a)| *a == Action::StateChanged(SyncState::Stalled))
        .map(|(t, _)| *t)
        .collect();
    assert_eq!(
        stalled,
        vec![5_000],
        "stalled exactly stall_after_ms after falling behind"
    );
}

#[test]
fn with_nothing_to_wait_for_there_is_no_wakeup() {
    let blocks = chain(10, 8, 0);
    let config = config();
    let alone_after_ms = config.alone_after_ms;
    let mut engine = SyncEngine::<u32>::new(config, local(&blocks, 10), 2).expect("a valid config");
    // Alone, once the wait for a peer is over.
    engine.tick(alone_after_ms);
    assert_eq!(engine.next_wakeup(), None);
}

#[test]
fn an_invalid_config_is_an_error_not_the_defaults() {
    let blocks = chain(1, 8, 0);
    let bad = SyncConfig {
        batch_size: 0,
        ..config()
    };
    let refused = SyncEngine::<u32>::new(bad, local(&blocks, 0), 1);
    assert!(matches!(
        refused,
        Err(ConfigError::BatchSize {
            field: "batch_size",
            got: 0
        })
    ));
}

/// A waiting batch's backoff is a wake-up even while a complete batch below it waits to import
/// (the imports' retry time, long past, once hid every backoff of its chain: a backfill whose top
/// batch failed its link slept until some unrelated event).
#[test]
fn a_batch_backoff_wakes_the_engine_while_a_complete_batch_waits_behind_it() {
    let blocks = chain(40, 8, 0);
    let fork = chain(40, 8, 5);
    let mut start = local(&blocks, 40);
    start.backfill = Some(BackfillStart {
        lowest_height: 40,
        lowest_parent_hash: blocks[39].hash(),
        floor_height: 0,
    });
    let mut engine = SyncEngine::new(config(), start, 7).expect("a valid config");
    engine.peer_status(0, 1, status(&blocks, 40));
    engine.peer_status(0, 2, status(&blocks, 40));
    let requests = range_requests(&drain(&mut engine));
    assert_eq!(requests.len(), 2, "one batch to each peer: {requests:?}");
    let top = requests.iter().map(|r| r.2).max().expect("two requests");
    for &(_, id, start, count) in &requests {
        // The batch the import waits for comes from another history; the one below is sound.
        let source = if start == top { &fork } else { &blocks };
        engine.range_response(10, id, serve(source, start, count));
    }
    let actions = drain(&mut engine);
    assert!(
        penalties(&actions).iter().any(|p| p.1 == PeerAction::ProvenWrong),
        "the top batch failed its link: {actions:?}"
    );
    assert!(
        engine.stats().backfill_buffered_blocks > 0,
        "the batch below is held"
    );
    let wakeup = engine.next_wakeup().expect("a wake-up");
    assert!(
        wakeup < config().request_timeout_ms,
        "the failed batch's backoff is the next wake-up, not {wakeup}"
    );
}
