//! Claims that cannot hold the target: peers that claim far more than they serve and refuse, err
//! or reset; a claim that went stale; short answers from a pacing server; an empty backfill
//! answer after a peer's earliest height rose; caps that a Status naming a new head lifts only
//! after a long interval, that blocks delivered above them lift, and that outlast a reconnect.

use super::*;
use crate::peers::{CAP_HOLD_MS, PeerEntry};

/// How a peer of these tests answers a range request for `count` blocks from `start`.
#[derive(Debug, Clone, Copy)]
enum Serves {
    /// Honest up to its head `.0`.
    Upto(Height),
    /// At most `.1` blocks per answer, honest up to its head `.0`.
    Paced(Height, u64),
    /// Fails every request the way given.
    Fails(fn() -> RequestFailure),
}

fn liar_status(head: Height) -> PeerStatus {
    PeerStatus {
        head_height: head,
        head_hash: Hash::of(b"a head nobody has"),
        finalized_height: 0,
        earliest_height: 0,
    }
}

/// A liar's Status naming a head of its own invention, another for every `n`.
fn flapping_status(head: Height, n: u64) -> PeerStatus {
    PeerStatus {
        head_hash: Hash::of(&n.to_be_bytes()),
        ..liar_status(head)
    }
}

/// Steps every 10 ms until `until_ms`: imports succeed, each peer answers per `peers`, and a peer
/// asked for its Status sends the one listed (`None`: it never answers). Returns the actions seen.
fn run(
    engine: &mut SyncEngine<u32>,
    blocks: &[Block],
    peers: &[(u32, Serves, Option<PeerStatus>)],
    (from_ms, until_ms): (u64, u64),
) -> Vec<Action<u32>> {
    let mut seen = Vec::new();
    let mut now = from_ms;
    while now < until_ms {
        now += 10;
        let actions = drain(engine);
        import_all(engine, now, &actions);
        for action in &actions {
            if let Action::RequestStatus { peer } = action
                && let Some((_, _, Some(status))) = peers.iter().find(|p| p.0 == *peer)
            {
                engine.peer_status(now, *peer, *status);
            }
        }
        for (peer, id, start, count) in range_requests(&actions) {
            let Some((_, serves, _)) = peers.iter().find(|p| p.0 == peer) else {
                continue;
            };
            match *serves {
                Serves::Upto(head) => {
                    let count = count.min((head + 1).saturating_sub(start));
                    engine.range_response(now, id, serve(blocks, start, count));
                }
                Serves::Paced(head, most) => {
                    let count = count.min((head + 1).saturating_sub(start)).min(most);
                    engine.range_response(now, id, serve(blocks, start, count));
                }
                Serves::Fails(failure) => engine.request_failed(now, id, failure()),
            }
        }
        seen.extend(actions);
        engine.tick(now);
    }
    seen
}

fn refuse() -> RequestFailure {
    RequestFailure::ResourceUnavailable
}

fn reset() -> RequestFailure {
    RequestFailure::Disconnected
}

/// An honest peer with 65 blocks and liars claiming 65,000 that refuse (`RESOURCE_UNAVAILABLE`,
/// as the node reports `SERVER_ERROR` too) or reset every request: the node syncs to 65, says
/// `Synced`, charges nobody, and stays synced while the liars repeat their claim.
#[test]
fn liars_that_refuse_or_reset_are_capped_uncharged_and_the_node_syncs() {
    let blocks = chain(65, 8, 0);
    for (seed, failure) in [(31, refuse as fn() -> RequestFailure), (32, reset)] {
        let mut engine = SyncEngine::new(config(), local(&blocks, 0), seed).expect("a valid config");
        let peers = [
            (1, Serves::Upto(65), Some(status(&blocks, 65))),
            (2, Serves::Fails(failure), Some(liar_status(65_000))),
            (3, Serves::Fails(failure), Some(liar_status(65_000))),
        ];
        for (peer, _, status) in &peers {
            let status = status.expect("listed");
            engine.peer_status(0, *peer, status);
        }
        assert_eq!(engine.target(), 65_000);
        let actions = run(&mut engine, &blocks, &peers, (0, 10_000));
        assert_eq!(engine.head_height(), 65, "{:?}", engine.stats());
        assert_eq!(engine.target(), 65, "the liars' claims are capped");
        assert_eq!(engine.state(), SyncState::Synced);
        assert!(
            penalties(&actions).is_empty(),
            "refusing is not charged: {actions:?}"
        );
        // The liars repeat their claim (same head): it stays capped, the node stays synced.
        for t in [10_000, 40_000, 70_000] {
            for (peer, _, status) in &peers {
                let status = status.expect("listed");
                engine.peer_status(t, *peer, status);
            }
            run(&mut engine, &blocks, &peers, (t, t + 1_000));
            assert_eq!((engine.target(), engine.state()), (65, SyncState::Synced));
        }
    }
}

/// The last batch (61..=70) reaches past the honest peer's head (65) and the peer claiming 70
/// only rate-limits us (no sign of a false claim): the honest peer is asked for it all the same,
/// serves the part it has, and the batch keeps it.
#[test]
fn a_batch_is_served_in_part_by_a_peer_whose_head_covers_its_start() {
    let blocks = chain(65, 8, 0);
    let mut engine = SyncEngine::new(config(), local(&blocks, 0), 33).expect("a valid config");
    engine.peer_status(0, 2, liar_status(70));
    engine.peer_status(0, 1, status(&blocks, 65));
    let peers = [
        (1, Serves::Upto(65), Some(status(&blocks, 65))),
        (
            2,
            Serves::Fails(|| RequestFailure::RateLimited),
            Some(liar_status(70)),
        ),
    ];
    let actions = run(&mut engine, &blocks, &peers, (0, 5_000));
    let partial = range_requests(&actions)
        .into_iter()
        .any(|(peer, _, start, count)| peer == 1 && start <= 65 && start + count - 1 > 65);
    assert!(
        partial,
        "the honest peer was not asked for the batch reaching past its head"
    );
    // 61..=65 wait in the batch for 66..=70, which only peer 2 claims.
    assert_eq!(engine.head_height(), 60);
    assert_eq!(engine.stats().buffered_blocks, 5, "the part it has was kept");
}

/// A liar that stops refreshing its Status: once stale, its claim no longer sets the target (it
/// is asked for a fresh Status, which never comes), while rate limiting never capped it.
#[test]
fn a_stale_claim_no_longer_sets_the_target() {
    let blocks = chain(30, 8, 0);
    let cfg = SyncConfig {
        status_stale_ms: 5_000,
        ..config()
    };
    let mut engine = SyncEngine::new(cfg, local(&blocks, 0), 34).expect("a valid config");
    engine.peer_status(0, 1, status(&blocks, 30));
    engine.peer_status(0, 2, liar_status(30_000));
    // Peer 2 answers no Status request (not listed); its range requests are rate limited.
    let peers = [
        (1, Serves::Upto(30), Some(status(&blocks, 30))),
        (2, Serves::Fails(|| RequestFailure::RateLimited), None),
    ];
    let mut actions = run(&mut engine, &blocks, &peers[..1], (0, 10));
    engine.peer_status(10, 1, status(&blocks, 30));
    actions.extend(run(&mut engine, &blocks, &peers, (10, 4_000)));
    assert_eq!(engine.target(), 30_000, "fresh, it still counts");
    // Peer 1 keeps its Status fresh; peer 2 does not.
    engine.peer_status(4_000, 1, status(&blocks, 30));
    actions.extend(run(&mut engine, &blocks, &peers, (4_000, 8_000)));
    assert!(actions.contains(&Action::RequestStatus { peer: 2 }));
    assert_eq!(engine.head_height(), 30);
    assert_eq!((engine.target(), engine.state()), (30, SyncState::Synced));
}

/// A server that paces its output (a few blocks per answer, well inside its head) is neither
/// charged nor capped, and sync completes.
#[test]
fn a_pacing_servers_short_answers_are_not_charged_nor_capped() {
    let blocks = chain(60, 8, 0);
    let mut engine = SyncEngine::new(config(), local(&blocks, 0), 35).expect("a valid config");
    let peers = [(1, Serves::Paced(60, 3), Some(status(&blocks, 60)))];
    engine.peer_status(0, 1, status(&blocks, 60));
    let actions = run(&mut engine, &blocks, &peers, (0, 5_000));
    assert!(penalties(&actions).is_empty(), "{actions:?}");
    assert!(
        !actions
            .iter()
            .any(|a| matches!(a, Action::TargetChanged(t) if *t < 60))
    );
    assert_eq!((engine.head_height(), engine.state()), (60, SyncState::Synced));
}

/// An empty answer inside a peer's claim caps it; a Status naming a new head lifts the cap only
/// once the cap is `CAP_HOLD_MS` old.
#[test]
fn a_cap_holds_against_a_new_head_for_a_long_interval() {
    let blocks = chain(40, 8, 0);
    let mut engine = SyncEngine::new(config(), local(&blocks, 0), 36).expect("a valid config");
    engine.peer_status(0, 1, status(&blocks, 30));
    let peers = [(1, Serves::Upto(20), Some(status(&blocks, 30)))];
    let actions = run(&mut engine, &blocks, &peers, (0, 3_000));
    assert_eq!(penalties(&actions), vec![(1, PeerAction::BrokenPromise)]);
    assert_eq!((engine.head_height(), engine.target()), (20, 20));
    engine.peer_status(3_000, 1, status(&blocks, 30));
    assert_eq!(engine.target(), 20, "the same head: still capped");
    engine.peer_status(3_001, 1, status(&blocks, 40));
    assert_eq!(engine.target(), 20, "a new head at once: still capped");
    let later = CAP_HOLD_MS + 1;
    engine.peer_status(later, 1, status(&blocks, 40));
    assert_eq!(engine.target(), 40, "a new head after the interval lifts the cap");
    let peers = [(1, Serves::Upto(40), Some(status(&blocks, 40)))];
    run(&mut engine, &blocks, &peers, (later, later + 3_000));
    assert_eq!((engine.head_height(), engine.state()), (40, SyncState::Synced));
}

/// The peers of a run: each with how it serves and the Status it sends when asked.
type Listed = (u32, Serves, Option<PeerStatus>);

/// Synced to 65 from an honest peer while a liar claiming 65,000 refuses every request and is
/// capped; returns the engine and the peers of that run.
fn capped_liar(seed: u64) -> (SyncEngine<u32>, Vec<Block>, [Listed; 2]) {
    let blocks = chain(65, 8, 0);
    let mut engine = SyncEngine::new(config(), local(&blocks, 0), seed).expect("a valid config");
    let peers = [
        (1, Serves::Upto(65), Some(status(&blocks, 65))),
        (2, Serves::Fails(refuse), Some(flapping_status(65_000, 0))),
    ];
    engine.peer_status(0, 1, status(&blocks, 65));
    engine.peer_status(0, 2, flapping_status(65_000, 0));
    run(&mut engine, &blocks, &peers, (0, 10_000));
    assert_eq!((engine.target(), engine.state()), (65, SyncState::Synced));
    (engine, blocks, peers)
}

/// A liar naming a new head in every Status cannot hold the target: its word lifts no cap within
/// `CAP_HOLD_MS`, so the node stays synced through a minute of such Statuses, one a second.
#[test]
fn a_liar_naming_a_new_head_in_every_status_cannot_hold_the_target() {
    let (mut engine, blocks, peers) = capped_liar(39);
    for n in 1..=60 {
        let t = 10_000 + n * 1_000;
        engine.peer_status(t, 1, status(&blocks, 65));
        engine.peer_status(t, 2, flapping_status(65_000, n));
        assert_eq!(engine.target(), 65, "the liar's Status {n} lifted its cap");
        let actions = run(&mut engine, &blocks, &peers, (t, t + 1_000));
        assert!(penalties(&actions).is_empty(), "{actions:?}");
        assert_eq!((engine.target(), engine.state()), (65, SyncState::Synced));
    }
}

/// Once `CAP_HOLD_MS` passed, a new head lifts a liar's cap, but having been caught it is capped
/// again at its first refusal (not after another run of tries).
#[test]
fn a_liar_believed_again_after_the_interval_is_capped_at_its_first_refusal() {
    let (mut engine, blocks, peers) = capped_liar(40);
    let later = CAP_HOLD_MS + 10_000;
    engine.peer_status(later, 1, status(&blocks, 65));
    engine.peer_status(later, 2, flapping_status(65_000, 1));
    assert_eq!(engine.target(), 65_000, "lifted after the interval");
    let actions = run(&mut engine, &blocks, &peers, (later, later + 3_000));
    let refused = range_requests(&actions).iter().filter(|r| r.0 == 2).count();
    assert_eq!(refused, 1, "{actions:?}");
    assert_eq!((engine.target(), engine.state()), (65, SyncState::Synced));
}

/// A capped liar that reconnects is still capped, whatever head its Status names.
#[test]
fn a_cap_outlasts_a_reconnect() {
    let (mut engine, blocks, peers) = capped_liar(41);
    engine.peer_disconnected(10_000, &2);
    engine.peer_status(10_001, 2, flapping_status(65_000, 1));
    assert_eq!(
        engine.target(),
        65,
        "the reconnected liar's claim is still capped"
    );
    run(&mut engine, &blocks, &peers, (10_001, 13_000));
    assert_eq!((engine.target(), engine.state()), (65, SyncState::Synced));
}

/// Blocks a capped peer delivers above its cap lift it: evidence, where its word did not.
#[test]
fn a_cap_is_lifted_by_blocks_delivered_above_it() {
    let blocks = chain(40, 8, 0);
    let mut entry = PeerEntry::new(status(&blocks, 30), 0);
    entry.lacks(21);
    assert_eq!(entry.believed_head(), 20);
    entry.refresh(status(&blocks, 40), 1_000);
    assert_eq!(entry.believed_head(), 20, "its word alone lifts nothing");
    entry.delivered(20);
    assert_eq!(entry.believed_head(), 20, "nothing above the cap");
    entry.delivered(25);
    assert_eq!(entry.believed_head(), 40);
}

/// A peer whose earliest height rose since its Status answers a backfill request empty: no charge,
/// no cap on its head, a fresh Status asked for, and it is not asked that low again meanwhile.
#[test]
fn an_empty_backfill_answer_after_pruning_costs_nothing_and_caps_no_head() {
    let blocks = chain(50, 8, 0);
    let mut engine = SyncEngine::new(config(), backfill_from_head(&blocks), 37).expect("a valid config");
    engine.peer_status(0, 1, status(&blocks, 50));
    let requests = range_requests(&drain(&mut engine));
    let (peer, id, start, _) = requests[0];
    assert_eq!(peer, 1);
    engine.range_response(1, id, Vec::new());
    let actions = drain(&mut engine);
    assert!(penalties(&actions).is_empty(), "{actions:?}");
    assert!(actions.contains(&Action::RequestStatus { peer: 1 }));
    assert_eq!(engine.target(), 50, "its head is believed");
    let later = run(&mut engine, &blocks, &[], (1, 3_000));
    assert!(
        range_requests(&later).iter().all(|r| r.2 > start),
        "asked at or below {start} again before its fresh Status: {later:?}"
    );
    // Its fresh Status tells where its history now starts; backfill goes on from another peer.
    let pruned = PeerStatus {
        earliest_height: start + 1,
        ..status(&blocks, 50)
    };
    engine.peer_status(3_000, 1, pruned);
    engine.peer_status(3_000, 2, status(&blocks, 50));
    let peers = [
        (1, Serves::Upto(50), Some(pruned)),
        (2, Serves::Upto(50), Some(status(&blocks, 50))),
    ];
    run(&mut engine, &blocks, &peers, (3_000, 8_000));
    assert_eq!(engine.backfill_complete(), Some(true));
}

/// Liars asked for several batches at once refuse some above the import point first and are
/// capped above it; the next refusal below such a cap lowers it at once (no second run of tries),
/// so the node soon says `Synced` at its own head.
#[test]
fn a_capped_liar_refusing_lower_is_capped_lower_at_once() {
    let blocks = chain(20, 8, 0);
    let mut engine = SyncEngine::new(config(), local(&blocks, 20), 38).expect("a valid config");
    let peers: Vec<_> = (1..=3)
        .map(|p| (p, Serves::Fails(refuse), Some(liar_status(20_000))))
        .collect();
    for (peer, _, status) in &peers {
        engine.peer_status(0, *peer, status.expect("listed"));
    }
    let mut asked = 0;
    let mut now = 0;
    while engine.state() != SyncState::Synced && now < 5_000 {
        asked += range_requests(&run(&mut engine, &blocks, &peers, (now, now + 10))).len();
        now += 10;
    }
    assert_eq!((engine.target(), engine.state()), (20, SyncState::Synced));
    // Three tries each and one more below the first cap: well under a second of backoffs
    // (a second run of three tries each took about two).
    assert!(
        now <= 1_000,
        "synced only at {now} ms, after {asked} refused requests"
    );
}
