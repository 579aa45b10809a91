//! Slow and silent peers: a peer that falls silent makes the state stalled; one that timed out
//! rests while a brisk peer serves, and still gets work when no peer is brisk.

use super::*;

#[test]
fn a_peer_that_delivers_then_falls_silent_makes_the_state_stalled() {
    // Found end to end: a node that synced part of the chain, then whose only peer stopped
    // answering, stayed `syncing` forever.
    let blocks = chain(200, 8, 0);
    let mut engine = SyncEngine::new(config(), local(&blocks, 0), 7).expect("a valid config");
    let mut now = 700;
    engine.peer_status(now, 1, status(&blocks, 200));
    let first = range_requests(&drain(&mut engine));
    assert_eq!(first.len(), 1);
    let (_, id, start, count) = first[0];
    engine.range_response(now, id, serve(&blocks, start, count));
    import_drained(&mut engine, now);
    assert!(engine.head_height() > 0);
    let mut stalled_at = None;
    while now < 40_000 {
        now += 100;
        engine.tick(now);
        if now % 1_000 == 0 {
            engine.peer_status(now, 1, status(&blocks, 200));
        }
        drain(&mut engine);
        if engine.state() == SyncState::Stalled && stalled_at.is_none() {
            stalled_at = Some(now);
        }
    }
    let stalled_at = stalled_at.expect("never stalled");
    assert!(stalled_at <= 700 + 5_000 + 1_000, "stalled only at {stalled_at}");
}

/// A peer whose request timed out gets no new batch while a brisk peer serves the range, even a
/// busy one; once its rest is over, or once it answers, it gets work again.
#[test]
fn a_peer_that_timed_out_rests_while_a_brisk_peer_serves() {
    let blocks = chain(200, 8, 0);
    let mut engine = SyncEngine::new(config(), local(&blocks, 0), 1).expect("a valid config");
    engine.peer_status(0, 1, status(&blocks, 200));
    engine.peer_status(0, 2, status(&blocks, 200));
    let first = range_requests(&drain(&mut engine));
    assert_eq!(first.len(), 2, "one batch each: {first:?}");
    // Peer 1 answers every time; peer 2 stays silent past its deadline (1 s).
    let mut pending: Vec<_> = first.into_iter().filter(|r| r.0 == 1).collect();
    let mut now = 500;
    for (_, id, start, count) in pending.drain(..) {
        engine.range_response(now, id, serve(&blocks, start, count));
    }
    let actions = drain(&mut engine);
    import_all(&mut engine, now, &actions);
    pending = range_requests(&actions);
    assert!(
        pending.iter().all(|r| r.0 == 1),
        "peer 2 is still busy: {pending:?}"
    );
    now = 1_100;
    engine.tick(now);
    let mut asked_of_2 = 0;
    // For the rest (3 s): only peer 1 is asked, batch after batch.
    while now < 3_000 {
        now += 50;
        asked_of_2 += serve_peer_1(&mut engine, now, &blocks, &mut pending);
    }
    assert_eq!(
        asked_of_2, 0,
        "a resting peer was given work while a brisk one served"
    );
    assert!(
        engine.head_height() > 50,
        "the brisk peer carried the sync: {}",
        engine.head_height()
    );
    // After the rest, peer 2 may be asked again (it is idle and serves the range).
    let mut asked_after = false;
    while now < 6_000 && engine.head_height() < 200 && !asked_after {
        now += 50;
        asked_after = serve_peer_1(&mut engine, now, &blocks, &mut pending) > 0;
    }
    assert!(
        asked_after || engine.head_height() == 200,
        "peer 2 never got work again"
    );
}

/// Peer 1 answers its `pending` requests, time passes (a tick); the imports are performed; peer
/// 1's new requests become pending. Returns how many new requests went to peer 2, which never answers.
fn serve_peer_1(
    engine: &mut SyncEngine<u32>,
    now: u64,
    blocks: &[Block],
    pending: &mut Vec<(u32, RequestId, Height, u64)>,
) -> usize {
    for (_, id, start, count) in pending.drain(..) {
        engine.range_response(now, id, serve(blocks, start, count));
    }
    engine.tick(now);
    let actions = drain(engine);
    import_all(engine, now, &actions);
    let (to_2, to_1): (Vec<_>, Vec<_>) = range_requests(&actions).into_iter().partition(|r| r.0 == 2);
    pending.extend(to_1);
    to_2.len()
}

/// With only resting peers, work still goes to them: a node whose every peer was slow recovers.
#[test]
fn resting_peers_still_get_work_when_no_peer_is_brisk() {
    let blocks = chain(50, 8, 0);
    let mut engine = SyncEngine::new(config(), local(&blocks, 0), 1).expect("a valid config");
    engine.peer_status(0, 1, status(&blocks, 50));
    let first = range_requests(&drain(&mut engine));
    assert_eq!(first.len(), 1);
    engine.tick(1_100);
    let mut now = 1_100;
    let mut retried = Vec::new();
    while retried.is_empty() && now < 3_000 {
        now += 50;
        engine.tick(now);
        retried = range_requests(&drain(&mut engine));
    }
    assert_eq!(
        retried.first().map(|r| r.0),
        Some(1),
        "the only peer was never asked again"
    );
}
