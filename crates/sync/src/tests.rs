//! Focused tests of single mechanisms, driving the engine by hand with unsigned blocks (the engine
//! never checks signatures). The randomized whole-system runs are in `tests/simulator.rs`.

use bytes::Bytes;
use syncnode_types::{Block, BlockHeader, Hash, Height, PublicKey, Signature};

use crate::*;

/// A chain of unsigned blocks `0..=len`, payloads of `payload` bytes; `salt` makes forks differ.
fn chain(len: Height, payload: usize, salt: u8) -> Vec<Block> {
    chain_sized(len, salt, |_| payload)
}

/// A chain of unsigned blocks `0..=len` whose payload at height `h` has `size_of(h)` bytes.
fn chain_sized(len: Height, salt: u8, size_of: impl Fn(Height) -> usize) -> Vec<Block> {
    let mut blocks = Vec::new();
    extend_chain(&mut blocks, len, salt, size_of);
    blocks
}

/// Appends unsigned blocks to `blocks` up to height `len`, each linking to the one before.
fn extend_chain(blocks: &mut Vec<Block>, len: Height, salt: u8, size_of: impl Fn(Height) -> usize) {
    let next = blocks.last().map_or(0, |b| b.height() + 1);
    for height in next..=len {
        let parent_hash = blocks.last().map_or(Hash::ZERO, Block::hash);
        let body = Bytes::from(vec![salt; size_of(height)]);
        blocks.push(Block {
            header: BlockHeader {
                height,
                parent_hash,
                timestamp_ms: 1_000 + height * 1_000,
                payload_hash: Hash::of(&body),
                proposer: PublicKey::ZERO,
            },
            payload: body,
            signature: Signature::ZERO,
        });
    }
}

fn config() -> SyncConfig {
    SyncConfig {
        batch_size: 10,
        window_batches: 4,
        backfill_batch_size: 10,
        backfill_window_batches: 2,
        request_timeout_ms: 1_000,
        max_request_timeout_ms: 8_000,
        retry_min_delay_ms: 100,
        retry_max_delay_ms: 1_000,
        stall_after_ms: 5_000,
        ..SyncConfig::default()
    }
}

fn local(blocks: &[Block], head: Height) -> LocalChain {
    LocalChain {
        head_height: head,
        head_hash: blocks[head as usize].hash(),
        finalized_height: head,
        finality_depth: 8,
        genesis_hash: blocks[0].hash(),
        backfill: None,
    }
}

fn status(blocks: &[Block], head: Height) -> PeerStatus {
    PeerStatus {
        head_height: head,
        head_hash: blocks[head as usize].hash(),
        finalized_height: 0,
        earliest_height: 0,
    }
}

fn drain(engine: &mut SyncEngine<u32>) -> Vec<Action<u32>> {
    std::iter::from_fn(|| engine.poll_action()).collect()
}

fn range_requests(actions: &[Action<u32>]) -> Vec<(u32, RequestId, Height, u64)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::SendRangeRequest {
                peer,
                id,
                start_height,
                count,
                ..
            } => Some((*peer, *id, *start_height, *count)),
            _ => None,
        })
        .collect()
}

/// The charges among `actions` (credits for imported blocks left out).
fn penalties(actions: &[Action<u32>]) -> Vec<(u32, PeerAction)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Penalise { peer, action, .. } if *action != PeerAction::UsefulResponse => {
                Some((*peer, *action))
            }
            _ => None,
        })
        .collect()
}

fn serve(blocks: &[Block], start: Height, count: u64) -> Vec<Block> {
    blocks
        .iter()
        .skip(start as usize)
        .take(count as usize)
        .cloned()
        .collect()
}

/// Performs every import (all succeed) and returns the imported heights in order.
fn import_all(engine: &mut SyncEngine<u32>, now: u64, actions: &[Action<u32>]) -> Vec<Height> {
    let mut heights = Vec::new();
    for action in actions {
        if let Action::Import { id, blocks, .. } = action {
            heights.extend(blocks.iter().map(Block::height));
            engine.import_result(now, *id, Ok(()));
        }
    }
    heights
}

/// One step among honest peers: every import offered succeeds and every range request is answered
/// in full at once. Returns the step's actions and the heights it imported.
fn honest_step(engine: &mut SyncEngine<u32>, now: u64, blocks: &[Block]) -> (Vec<Action<u32>>, Vec<Height>) {
    let actions = drain(engine);
    let imported = import_all(engine, now, &actions);
    for (_, id, start, count) in range_requests(&actions) {
        engine.range_response(now, id, serve(blocks, start, count));
    }
    (actions, imported)
}

/// Drains the actions and performs their imports.
fn import_drained(engine: &mut SyncEngine<u32>, now: u64) -> Vec<Height> {
    let actions = drain(engine);
    import_all(engine, now, &actions)
}

#[test]
fn syncs_from_one_honest_peer_in_order() {
    let blocks = chain(35, 8, 0);
    let mut engine = SyncEngine::new(config(), local(&blocks, 0), 1).expect("a valid config");
    engine.peer_status(0, 7, status(&blocks, 35));
    assert_eq!(engine.target(), 35);
    assert_eq!(engine.state(), SyncState::Syncing);
    let mut imported = Vec::new();
    let mut now = 0;
    while engine.head_height() < 35 && now < 100 {
        now += 1;
        imported.extend(honest_step(&mut engine, now, &blocks).1);
    }
    assert_eq!(imported, (1..=35).collect::<Vec<_>>());
    assert_eq!(engine.state(), SyncState::Synced);
}

#[test]
fn a_peer_gets_its_next_request_while_its_answer_is_verified_and_is_not_timed_out_by_it() {
    let blocks = chain(40, 8, 0);
    let mut engine = SyncEngine::new(config(), local(&blocks, 0), 1).expect("a valid config");
    engine.peer_status(0, 1, status(&blocks, 40));
    let first = range_requests(&drain(&mut engine));
    assert_eq!(first.len(), 1, "a peer not measured yet holds one request");
    let (_, id, start, count) = first[0];
    engine.response_received(10, id);
    let second = range_requests(&drain(&mut engine));
    assert_eq!(
        second.len(),
        1,
        "the next batch goes out while the first is verified"
    );
    assert_eq!((second[0].0, second[0].2), (1, start + count));
    // The first request's deadline (1,000) passes during its verification, the second's (1,010)
    // has not: nobody is charged.
    engine.tick(1_005);
    assert!(
        penalties(&drain(&mut engine)).is_empty(),
        "our verification is not the peer's delay"
    );
    engine.range_response(1_006, id, serve(&blocks, start, count));
    let actions = drain(&mut engine);
    assert_eq!(
        import_all(&mut engine, 1_006, &actions),
        (start..start + count).collect::<Vec<_>>()
    );
    // Measured by its answer, the peer may now hold a second request beside the one it serves:
    // the batch after the second.
    let (_, id2, start2, count2) = second[0];
    let third = range_requests(&actions);
    assert_eq!(third.len(), 1, "{third:?}");
    assert_eq!((third[0].0, third[0].2), (1, start2 + count2));
    // Settled without the early notice, a request keeps its peer busy until then.
    engine.range_response(1_007, id2, serve(&blocks, start2, count2));
    let fourth = range_requests(&drain(&mut engine));
    assert!(fourth.iter().all(|r| r.0 == 1 && r.2 > third[0].2), "{fourth:?}");
}

#[test]
fn a_silent_peers_batch_is_reassigned_after_its_deadline_with_a_longer_timeout() {
    let blocks = chain(10, 8, 0);
    let mut engine = SyncEngine::new(config(), local(&blocks, 0), 2).expect("a valid config");
    engine.peer_status(0, 1, status(&blocks, 10));
    let first = range_requests(&drain(&mut engine));
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].0, 1);
    engine.peer_status(10, 2, status(&blocks, 10));
    assert!(
        range_requests(&drain(&mut engine)).is_empty(),
        "one batch, already in flight"
    );
    engine.tick(999);
    assert!(drain(&mut engine).is_empty(), "deadline not reached");
    engine.tick(1_000);
    let actions = drain(&mut engine);
    assert_eq!(penalties(&actions), vec![(1, PeerAction::Timeout)]);
    let retry = range_requests(&actions);
    assert_eq!(retry.len(), 1, "another peer is free: no backoff");
    assert_eq!(retry[0].0, 2, "the retry goes to another peer");
    assert!(actions.iter().any(|a| matches!(a,
        Action::SendRangeRequest { timeout_ms, .. } if *timeout_ms == 2_000)));
}

/// The backoff of a failed batch keeps it from the peers that failed it, not from a free peer
/// that has not: found end to end, where a batch whose request a peer's stream dropped waited
/// half a second in front of in-order import while the honest seeder sat idle.
#[test]
fn a_failed_batch_goes_at_once_to_a_peer_that_has_not_failed_it_and_waits_for_one_that_has() {
    let blocks = chain(10, 8, 0);
    let mut engine = SyncEngine::new(config(), local(&blocks, 0), 2).expect("a valid config");
    engine.peer_status(0, 1, status(&blocks, 10));
    let (_, id, _, _) = range_requests(&drain(&mut engine))[0];
    engine.request_failed(50, id, RequestFailure::Local("connection is closed".into()));
    assert!(
        range_requests(&drain(&mut engine)).is_empty(),
        "its only peer failed it: it waits its backoff"
    );
    engine.peer_status(60, 2, status(&blocks, 10));
    let retry = range_requests(&drain(&mut engine));
    assert_eq!(retry.len(), 1, "a fresh peer is asked before the backoff ends");
    assert_eq!(retry[0].0, 2);
    engine.request_failed(70, retry[0].1, RequestFailure::Disconnected);
    assert!(
        range_requests(&drain(&mut engine)).is_empty(),
        "both peers failed it: it waits its backoff"
    );
    engine.tick(1_500);
    let after = range_requests(&drain(&mut engine));
    assert_eq!(after.len(), 1, "asked again once its backoff is over");
    let (_, id, start, count) = after[0];
    engine.range_response(1_510, id, serve(&blocks, start, count));
    assert_eq!(import_drained(&mut engine, 1_520), (1..=10).collect::<Vec<_>>());
}

#[test]
fn a_short_answer_continues_where_it_stopped() {
    let blocks = chain(10, 8, 0);
    let mut engine = SyncEngine::new(config(), local(&blocks, 0), 3).expect("a valid config");
    engine.peer_status(0, 1, status(&blocks, 10));
    let (_, id, start, count) = range_requests(&drain(&mut engine))[0];
    assert_eq!((start, count), (1, 10));
    engine.range_response(5, id, serve(&blocks, 1, 4));
    let actions = drain(&mut engine);
    // Short is legal (a server may pace its output): no charge, no cap, the rest is asked for.
    assert!(penalties(&actions).is_empty(), "{actions:?}");
    assert_eq!(engine.target(), 10);
    let rest = range_requests(&actions);
    assert_eq!(rest.len(), 1);
    assert_eq!((rest[0].0, rest[0].2, rest[0].3), (1, 5, 6));
    engine.range_response(7, rest[0].1, serve(&blocks, 5, 6));
    let mut heights = import_all(&mut engine, 5, &actions);
    heights.extend(import_drained(&mut engine, 8));
    assert_eq!(heights, (1..=10).collect::<Vec<_>>());
}

#[test]
fn an_empty_answer_outside_the_peers_status_costs_nothing() {
    let blocks = chain(20, 8, 0);
    let mut engine = SyncEngine::new(config(), local(&blocks, 0), 4).expect("a valid config");
    engine.peer_status(0, 1, status(&blocks, 20));
    let requests = range_requests(&drain(&mut engine));
    let (_, id, start, _) = requests[0];
    assert_eq!(start, 1);
    // The peer now says it has nothing: an empty answer at 1 is no fault.
    engine.peer_status(1, 1, status(&blocks, 0));
    engine.range_response(2, id, Vec::new());
    let actions = drain(&mut engine);
    assert!(penalties(&actions).is_empty(), "{actions:?}");
    assert_eq!(
        engine.target(),
        0,
        "its old, higher claim does not hold the target"
    );
}

#[test]
fn a_peer_counts_for_its_latest_claim_or_what_it_served() {
    let blocks = chain(100, 8, 0);
    let mut engine = SyncEngine::new(config(), local(&blocks, 0), 5).expect("a valid config");
    engine.peer_status(0, 1, status(&blocks, 100));
    engine.peer_status(0, 2, status(&blocks, 50));
    assert_eq!(engine.target(), 100);
    // Peer 1 serves 1..=10 of what it claimed, then claims 5: what it served still counts.
    let (peer, id, start, count) = range_requests(&drain(&mut engine))
        .into_iter()
        .find(|r| r.0 == 1)
        .expect("a request to peer 1");
    assert_eq!(peer, 1);
    engine.range_response(1, id, serve(&blocks, start, count));
    engine.peer_status(2, 1, status(&blocks, 5));
    assert_eq!(
        engine.target(),
        50,
        "its refreshed-lower claim no longer holds 100"
    );
    engine.peer_status(2, 3, status(&blocks, 10));
    assert_eq!(
        engine.target(),
        50,
        "a lower claim of another peer does not drag the target back"
    );
    drain(&mut engine);
    engine.peer_disconnected(3, &2);
    assert_eq!(engine.target(), 10, "what peer 1 delivered and peer 3 claims");
    assert!(drain(&mut engine).contains(&Action::TargetChanged(10)));
}

#[test]
fn peers_ahead_that_never_deliver_make_the_state_stalled() {
    let blocks = chain(30, 8, 0);
    let mut engine = SyncEngine::new(config(), local(&blocks, 0), 6).expect("a valid config");
    engine.peer_status(0, 1, status(&blocks, 30));
    assert_eq!(engine.state(), SyncState::Syncing);
    let mut now = 0;
    while now < 6_000 {
        now += 250;
        engine.tick(now);
        // Keep the Status fresh; never answer.
        engine.peer_status(now, 1, status(&blocks, 30));
    }
    assert_eq!(engine.state(), SyncState::Stalled);
    let actions = drain(&mut engine);
    assert!(actions.contains(&Action::StateChanged(SyncState::Stalled)));
    // Timeouts charged, but a peer's score is the network's business: it is not banned here.
    assert!(penalties(&actions).iter().all(|(_, a)| *a == PeerAction::Timeout));
}

#[test]
fn a_local_import_failure_charges_nobody_and_is_retried() {
    let blocks = chain(10, 8, 0);
    let mut engine = SyncEngine::new(config(), local(&blocks, 0), 8).expect("a valid config");
    engine.peer_status(0, 1, status(&blocks, 10));
    let (_, id, start, count) = range_requests(&drain(&mut engine))[0];
    engine.range_response(1, id, serve(&blocks, start, count));
    let actions = drain(&mut engine);
    let Some(Action::Import { id, .. }) = actions.iter().find(|a| matches!(a, Action::Import { .. })) else {
        panic!("no import in {actions:?}");
    };
    engine.import_result(2, *id, Err(ImportError::Local("disk full".into())));
    assert!(penalties(&drain(&mut engine)).is_empty());
    engine.tick(5_000);
    let imported = import_drained(&mut engine, 5_001);
    assert_eq!(imported, (1..=10).collect::<Vec<_>>());
}

#[test]
fn the_byte_window_bounds_buffered_blocks() {
    // Blocks of ~256 KiB: a 4 MiB window holds ~16 of them, far fewer than 4 batches of 10.
    let blocks = chain(60, 256 * 1024, 0);
    let window_bytes = config::MIN_WINDOW_BYTES * 4;
    let cfg = SyncConfig {
        window_bytes,
        ..config()
    };
    let mut engine = SyncEngine::new(cfg, local(&blocks, 0), 9).expect("a valid config");
    for peer in 0..6 {
        engine.peer_status(0, peer, status(&blocks, 60));
    }
    let mut now = 0;
    let mut pending: Vec<(RequestId, Height, u64)> = Vec::new();
    let mut imports = Vec::new();
    let mut imported = Vec::new();
    while engine.head_height() < 60 && now < 10_000 {
        now += 10;
        for action in drain(&mut engine) {
            match action {
                Action::SendRangeRequest {
                    id,
                    start_height,
                    count,
                    ..
                } => pending.push((id, start_height, count)),
                Action::Import { id, blocks, .. } => {
                    imported.extend(blocks.iter().map(Block::height));
                    imports.push(id);
                }
                _ => {}
            }
        }
        // Answer the highest requests first, so the window fills before the import frontier.
        pending.sort_by_key(|p| std::cmp::Reverse(p.1));
        for (id, start, count) in pending.drain(..) {
            engine.range_response(now, id, serve(&blocks, start, count));
            assert!(engine.stats().buffered_bytes <= window_bytes);
        }
        // Import slowly: one per step.
        if !imports.is_empty() {
            let id = imports.remove(0);
            engine.import_result(now, id, Ok(()));
        }
        engine.tick(now);
    }
    assert_eq!(imported, (1..=60).collect::<Vec<_>>());
}

#[test]
fn gossip_follows_the_head_and_looks_up_unknown_parents() {
    let blocks = chain(10, 8, 0);
    let mut engine = SyncEngine::new(config(), local(&blocks, 5), 10).expect("a valid config");
    engine.peer_status(0, 1, status(&blocks, 5));
    assert_eq!(engine.state(), SyncState::Synced);
    drain(&mut engine);
    engine.gossip_block(1, 1, blocks[6].clone());
    assert_eq!(import_drained(&mut engine, 2), vec![6]);
    // 9 arrives before 7 and 8: its ancestors are looked up by root from its sender.
    engine.gossip_block(3, 1, blocks[9].clone());
    for wanted in [8u64, 7] {
        let actions = drain(&mut engine);
        let root = actions
            .iter()
            .find(|a| matches!(a, Action::SendRootRequest { .. }))
            .cloned();
        let Some(Action::SendRootRequest { peer, id, hashes, .. }) = root else {
            panic!("expected a root request, got {actions:?}");
        };
        assert_eq!(peer, 1);
        assert_eq!(hashes, vec![blocks[wanted as usize].hash()]);
        engine.root_response(4, id, vec![blocks[wanted as usize].clone()]);
    }
    assert_eq!(import_drained(&mut engine, 5), vec![7, 8, 9]);
    assert_eq!(engine.head_height(), 9);
    // A root answer with a block not asked for is the responder's fault.
    engine.gossip_block(6, 1, blocks[10].clone());
    assert_eq!(import_drained(&mut engine, 7), vec![10]);
}

#[test]
fn invalid_shapes_are_the_responders_fault() {
    let blocks = chain(20, 8, 0);
    let mut engine = SyncEngine::new(config(), local(&blocks, 0), 13).expect("a valid config");
    engine.peer_status(0, 1, status(&blocks, 20));
    engine.peer_status(0, 2, status(&blocks, 20));
    let requests = range_requests(&drain(&mut engine));
    // Peer answers with blocks of the wrong heights.
    let (peer, id, start, count) = requests[0];
    engine.range_response(1, id, serve(&blocks, start + 1, count));
    assert_eq!(
        penalties(&drain(&mut engine)),
        vec![(peer, PeerAction::InvalidData)]
    );
    // Rules 3-5 failures reported by the verifier.
    let (peer, id, _, _) = requests[1];
    engine.response_invalid(2, id, "bad signature");
    assert_eq!(
        penalties(&drain(&mut engine)),
        vec![(peer, PeerAction::InvalidData)]
    );
    // No peer left to serve: both were proven wrong.
    engine.tick(10_000);
    assert!(range_requests(&drain(&mut engine)).is_empty());
}

#[test]
fn a_batch_above_a_target_that_dropped_shrinks_to_it() {
    let blocks = chain(40, 8, 0);
    let mut engine = SyncEngine::new(config(), local(&blocks, 0), 14).expect("a valid config");
    // Peer 1 claims 40 but serves nothing above 30; peer 2 honestly has 35.
    engine.peer_status(0, 1, status(&blocks, 40));
    let requests = range_requests(&drain(&mut engine));
    assert_eq!(requests.len(), 1);
    engine.peer_status(0, 2, status(&blocks, 35));
    let mut pending = requests;
    pending.extend(range_requests(&drain(&mut engine)));
    let mut now = 0;
    let mut imported = Vec::new();
    while engine.head_height() < 35 && now < 20_000 {
        now += 50;
        for (peer, id, start, count) in std::mem::take(&mut pending) {
            let served = if peer == 1 && start > 30 {
                Vec::new()
            } else {
                serve(&blocks, start, count.min(36u64.saturating_sub(start)))
            };
            engine.range_response(now, id, served);
        }
        engine.tick(now);
        let actions = drain(&mut engine);
        imported.extend(import_all(&mut engine, now, &actions));
        pending.extend(range_requests(&actions));
        pending.extend(range_requests(&drain(&mut engine)));
    }
    assert_eq!(imported, (1..=35).collect::<Vec<_>>());
    assert_eq!(
        engine.target(),
        35,
        "the liar's claim was capped by its own empty answer"
    );
    assert_eq!(engine.state(), SyncState::Synced);
}

#[test]
fn a_peer_with_a_stale_status_is_asked_for_a_fresh_one_before_it_gets_work() {
    let blocks = chain(30, 8, 0);
    let cfg = SyncConfig {
        status_stale_ms: 10_000,
        ..config()
    };
    let mut engine = SyncEngine::new(cfg, local(&blocks, 0), 15).expect("a valid config");
    engine.peer_status(0, 1, status(&blocks, 30));
    let (_, id, _, _) = range_requests(&drain(&mut engine))[0];
    // It stays silent past its Status' freshness; the retry asks for a Status, not blocks.
    engine.tick(20_000);
    let actions = drain(&mut engine);
    assert!(range_requests(&actions).is_empty(), "{actions:?}");
    assert!(actions.contains(&Action::RequestStatus { peer: 1 }));
    engine.request_failed(20_001, id, RequestFailure::Timeout);
    engine.peer_status(20_002, 1, status(&blocks, 30));
    assert_eq!(range_requests(&drain(&mut engine)).len(), 1);
}

/// The chain's head as local chain, with backfill to run from it down to genesis.
fn backfill_from_head(blocks: &[Block]) -> LocalChain {
    let head = blocks.len() as Height - 1;
    let mut start = local(blocks, head);
    start.backfill = Some(BackfillStart {
        lowest_height: head,
        lowest_parent_hash: blocks[head as usize - 1].hash(),
        floor_height: 0,
    });
    start
}

mod arbitrary;
mod backfill;
mod claims;
mod forks;
mod gossip;
mod pacing;
mod resting;
mod sizing;
mod startup;
mod wakeup;
