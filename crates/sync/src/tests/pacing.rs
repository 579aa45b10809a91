//! Requests paced to each peer's measured link: a small first request, several in flight sized
//! to the bandwidth-delay product, deadlines from the link that cost a slow peer nothing, and
//! the batch import waits for given to the peer that answers soonest.

use super::*;
use crate::pace::{FIRST_REQUEST_BLOCKS, Sample};
use crate::peers::{PeerEntry, Peers, Want};
use std::collections::BTreeMap;

fn paced_config() -> SyncConfig {
    SyncConfig {
        batch_size: 512,
        window_batches: 16,
        request_timeout_ms: 10_000,
        max_request_timeout_ms: 60_000,
        ..config()
    }
}

/// One peer behind a link of `delay_ms` one way and `bytes_per_ms` upload, its answers sent one
/// after another. Returns when each request's answer arrives.
struct Link {
    delay_ms: u64,
    bytes_per_ms: u64,
    free_at: u64,
}

impl Link {
    fn answer_at(&mut self, sent_ms: u64, bytes: u64) -> u64 {
        let start = (sent_ms + self.delay_ms).max(self.free_at);
        self.free_at = start + bytes / self.bytes_per_ms;
        self.free_at + self.delay_ms
    }
}

/// Syncs `blocks` from peer 1 behind `link`, stepping 5 ms, until the head reaches the top or
/// `until_ms`. Returns the sync time, the most requests peer 1 held at once, and every count.
fn sync_over(link: &mut Link, blocks: &[Block], until_ms: u64) -> (u64, usize, Vec<u64>) {
    let top = blocks.len() as u64 - 1;
    let mut engine = SyncEngine::new(paced_config(), local(blocks, 0), 5).expect("a valid config");
    engine.peer_status(0, 1, status(blocks, top));
    let mut pending: Vec<(u64, RequestId, Height, u64)> = Vec::new();
    let (mut now, mut most_held, mut counts) = (0, 0, Vec::new());
    while engine.head_height() < top && now < until_ms {
        let actions = drain(&mut engine);
        import_all(&mut engine, now, &actions);
        for (_, id, start, count) in range_requests(&actions) {
            let bytes: u64 = serve(blocks, start, count)
                .iter()
                .map(|b| b.size_bytes() as u64)
                .sum();
            pending.push((link.answer_at(now, bytes), id, start, count));
            counts.push(count);
        }
        most_held = most_held.max(pending.len());
        now += 5;
        let (due, rest): (Vec<_>, Vec<_>) = pending.into_iter().partition(|p| p.0 <= now);
        pending = rest;
        for (_, id, start, count) in due {
            engine.response_received(now, id);
            engine.range_response(now, id, serve(blocks, start, count));
        }
        engine.tick(now);
    }
    (now, most_held, counts)
}

#[test]
fn a_new_peer_gets_a_small_first_request_then_several_sized_to_its_link() {
    // 1 KiB blocks over 50 ms one way and 2,500 bytes/ms (20 Mbit/s): the link carries about
    // 2,400 blocks/s; one request at a time would leave it idle a round trip per request.
    let blocks = chain(6_000, 1_000, 0);
    let mut link = Link {
        delay_ms: 50,
        bytes_per_ms: 2_500,
        free_at: 0,
    };
    let (took, most_held, counts) = sync_over(&mut link, &blocks, 60_000);
    // Until a block arrived, batches are cut for the largest blocks (a few each); the first
    // request for more asks for 64 blocks, and later ones grow with the measured link.
    let first_small = counts.iter().position(|&c| c == FIRST_REQUEST_BLOCKS);
    let first_large = counts.iter().position(|&c| c > FIRST_REQUEST_BLOCKS);
    assert!(first_small.is_some() && first_small < first_large, "{counts:?}");
    assert!(most_held >= 2, "one request at a time: {most_held}");
    // The link's bound is 6,000 × 1,128 bytes / 2,500 bytes/ms ≈ 2.7 s, plus the start, while
    // blocks are unknown and batches are cut for the largest ones (3.6 s in all). A request at a
    // time (512 blocks: 100 ms round trip + 230 ms transfer) takes 4.7 s.
    assert!(took <= 4_000, "took {took} ms");
}

/// Every range request among `actions`: id, start, count and deadline.
fn sends(actions: &[Action<u32>]) -> Vec<(RequestId, Height, u64, u64)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::SendRangeRequest {
                id,
                start_height,
                count,
                timeout_ms,
                ..
            } => Some((*id, *start_height, *count, *timeout_ms)),
            _ => None,
        })
        .collect()
}

#[test]
fn a_late_answer_on_a_measured_link_costs_nothing_and_its_next_deadline_is_the_configured_one() {
    let blocks = chain(3_000, 1_000, 0);
    let mut engine = SyncEngine::new(paced_config(), local(&blocks, 0), 2).expect("a valid config");
    engine.peer_status(0, 1, status(&blocks, 3_000));
    let mut pending = sends(&drain(&mut engine));
    assert_eq!(
        pending[0].3, 10_000,
        "a peer not measured yet gets the configured deadline"
    );
    // A quick link: every request answered 20 ms after it was sent, for 100 ms.
    let mut now = 0;
    while now < 100 {
        now += 20;
        for (id, start, count, _) in std::mem::take(&mut pending) {
            engine.range_response(now, id, serve(&blocks, start, count));
        }
        let actions = drain(&mut engine);
        import_all(&mut engine, now, &actions);
        pending = sends(&actions);
    }
    // Measured now, its requests have deadlines of their own, well under 10 s.
    assert!(!pending.is_empty());
    assert!(pending.iter().all(|r| r.3 < 10_000), "{pending:?}");
    // It falls silent. Past those deadlines: no charge, and its next request waits the full 10 s.
    let (mut charged, mut later) = (Vec::new(), Vec::new());
    while now < 10_000 {
        now += 10;
        engine.tick(now);
        let actions = drain(&mut engine);
        charged.extend(penalties(&actions));
        later.extend(sends(&actions));
    }
    assert!(charged.is_empty(), "a late answer was charged: {charged:?}");
    assert!(
        !later.is_empty() && later.iter().all(|r| r.3 >= 10_000),
        "{later:?}"
    );
    // Silent through the configured deadline too: that is a timeout, charged.
    while now < 25_000 {
        now += 100;
        engine.tick(now);
        charged.extend(penalties(&drain(&mut engine)));
    }
    assert!(charged.contains(&(1, PeerAction::Timeout)), "{charged:?}");
}

/// A peer serving `blocks` whose link was measured on `answers` answers of 100,000 bytes, each
/// alone on its link: `rtt` ms round trip, `bytes_per_ms` throughput.
fn measured_entry(blocks: &[Block], answers: u64, rtt: u64, bytes_per_ms: u64) -> PeerEntry {
    let mut entry = PeerEntry::new(status(blocks, blocks.len() as u64 - 1), 0);
    for i in 0..answers {
        let sent_ms = i * 10_000;
        entry.pace.answered(Sample {
            sent_ms,
            arrived_ms: sent_ms + rtt + 100_000 / bytes_per_ms,
            bytes: 100_000,
            alone: true,
        });
    }
    entry
}

/// A batch over 1..=10 expected to bring 500,000 bytes, the one import waits for or not.
fn want(urgent: bool) -> Want {
    Want {
        from: 1,
        to: 10,
        bytes: 500_000,
        urgent,
    }
}

#[test]
fn the_batch_import_waits_for_goes_to_the_peer_that_answers_soonest() {
    let blocks = chain(10, 8, 0);
    let cfg = paced_config();
    let mut peers: Peers<u32> = Peers::new();
    let measured = |rtt, bytes_per_ms| measured_entry(&blocks, 8, rtt, bytes_per_ms);
    peers.entries.insert(1, measured(400, 100));
    peers.entries.insert(2, measured(40, 2_500));
    peers.entries.insert(3, PeerEntry::new(status(&blocks, 10), 0));
    let mut jitter = crate::jitter::Jitter::new(9);
    for _ in 0..20 {
        let urgent = peers.pick(&cfg, &mut jitter, 0, want(true), &BTreeMap::new(), None);
        assert_eq!(
            urgent.peer,
            Some(2),
            "the fast measured peer gets the urgent batch"
        );
        let other = peers.pick(&cfg, &mut jitter, 0, want(false), &BTreeMap::new(), None);
        assert_eq!(
            other.peer,
            Some(3),
            "a peer not measured yet is tried on other batches"
        );
    }
    // The fast peer loaded with requests: the slow one answers sooner.
    if let Some(fast) = peers.entries.get_mut(&2) {
        fast.in_flight = vec![(RequestId(1), 30_000_000)];
    }
    let urgent = peers.pick(&cfg, &mut jitter, 0, want(true), &BTreeMap::new(), None);
    assert_eq!(urgent.peer, Some(1));
    // Busy with two requests, the fast peer would still answer long before the slow one: the
    // batch waits for it rather than go to the slow link (a peer not measured yet still gets
    // the batches import does not wait for).
    if let Some(fast) = peers.entries.get_mut(&2) {
        fast.in_flight = vec![(RequestId(1), 500_000), (RequestId(2), 500_000)];
    }
    let urgent = peers.pick(&cfg, &mut jitter, 0, want(true), &BTreeMap::new(), None);
    assert_eq!(urgent.peer, None);
    let other = peers.pick(&cfg, &mut jitter, 0, want(false), &BTreeMap::new(), None);
    assert_eq!(other.peer, Some(3));
}

#[test]
fn a_peer_measured_slow_is_asked_again_once_it_was_left_idle_for_a_while() {
    let blocks = chain(10, 8, 0);
    let cfg = paced_config();
    let mut peers: Peers<u32> = Peers::new();
    let measured = |rtt, bytes_per_ms| measured_entry(&blocks, 1, rtt, bytes_per_ms);
    // Peer 1 was measured slow once (at start-up, say); peer 2 is fast and busy.
    peers.entries.insert(1, measured(400, 100));
    peers.entries.insert(2, measured(40, 2_500));
    if let Some(fast) = peers.entries.get_mut(&2) {
        fast.in_flight = vec![(RequestId(1), 500_000), (RequestId(2), 500_000)];
    }
    let mut jitter = crate::jitter::Jitter::new(3);
    let pick = |peers: &Peers<u32>, jitter: &mut crate::jitter::Jitter, now, urgent| {
        peers
            .pick(&cfg, jitter, now, want(urgent), &BTreeMap::new(), None)
            .peer
    };
    let idle_for = crate::peers::REPROBE_AFTER_MS;
    assert_eq!(
        pick(&peers, &mut jitter, idle_for - 1, false),
        None,
        "it waits for the fast peer"
    );
    assert_eq!(
        pick(&peers, &mut jitter, idle_for, false),
        Some(1),
        "asked again, to be measured"
    );
    assert_eq!(
        pick(&peers, &mut jitter, idle_for, true),
        None,
        "not with the batch import waits for"
    );
    if let Some(slow) = peers.entries.get_mut(&1) {
        slow.in_flight = vec![(RequestId(3), 1_000)];
        slow.asked_ms = idle_for;
    }
    assert_eq!(
        pick(&peers, &mut jitter, 2 * idle_for, false),
        None,
        "only while it holds no request"
    );
}

#[test]
fn the_batch_import_waits_for_is_hedged_when_its_peer_is_late_and_the_first_answer_wins() {
    let blocks = chain(40_000, 100, 0);
    let mut engine = SyncEngine::new(paced_config(), local(&blocks, 0), 4).expect("a valid config");
    engine.peer_status(0, 1, status(&blocks, 40_000));
    engine.peer_status(0, 2, status(&blocks, 40_000));
    // Both peers answer 20 ms after each request, for 100 ms: both are measured.
    let mut pending: Vec<(u32, RequestId, Height, u64)> = range_requests(&drain(&mut engine));
    let mut now = 0;
    let mut charged = Vec::new();
    while now < 100 {
        now += 20;
        for (_, id, start, count) in std::mem::take(&mut pending) {
            engine.range_response(now, id, serve(&blocks, start, count));
        }
        let actions = drain(&mut engine);
        charged.extend(penalties(&actions));
        import_all(&mut engine, now, &actions);
        pending = range_requests(&actions);
    }
    // The batch import waits for is the lowest request out; its peer holds it (answering its
    // others) until the hedge, then falls silent.
    let &(silent, primary, start, count) = pending.iter().min_by_key(|r| r.2).expect("requests out");
    let mut hedged = None;
    while now < 1_400 && engine.head_height() < start + count - 1 {
        now += 10;
        let due: Vec<_> = std::mem::take(&mut pending);
        for (peer, id, s, c) in due {
            if peer == silent && (id == primary || hedged.is_some()) {
                pending.push((peer, id, s, c));
            } else {
                engine.range_response(now, id, serve(&blocks, s, c));
            }
        }
        engine.tick(now);
        let actions = drain(&mut engine);
        charged.extend(penalties(&actions));
        import_all(&mut engine, now, &actions);
        for request in range_requests(&actions) {
            if request.2 == start && request.0 != silent {
                hedged.get_or_insert(now);
            }
            pending.push(request);
        }
    }
    let hedged = hedged.expect("the late batch was never asked of the other peer");
    assert!(hedged < 1_000, "hedged only at {hedged} ms");
    assert!(
        engine.head_height() >= start + count - 1,
        "the hedge's answer was not imported"
    );
    // The late peer rests: while the brisk one serves, it gets no new batch.
    let until = now + 2_000;
    while now < until {
        now += 10;
        for (peer, id, s, c) in std::mem::take(&mut pending) {
            if peer == silent {
                pending.push((peer, id, s, c));
            } else {
                engine.range_response(now, id, serve(&blocks, s, c));
            }
        }
        engine.tick(now);
        let actions = drain(&mut engine);
        charged.extend(penalties(&actions));
        import_all(&mut engine, now, &actions);
        let sent = range_requests(&actions);
        assert!(
            sent.iter().all(|r| r.0 != silent),
            "the late peer got work: {sent:?}"
        );
        pending.extend(sent);
    }
    // The silent peer's answer comes at last: dropped, and nobody was charged for the race.
    engine.range_response(now + 10, primary, serve(&blocks, start, count));
    charged.extend(penalties(&drain(&mut engine)));
    assert!(charged.is_empty(), "{charged:?}");
}

/// Syncs `blocks` from `start` with peers 1..=`peers`, all new to us, every one but `silent`
/// answering 5 ms after each request; `silent` never answers. Returns when `done`, if by
/// `until_ms`.
fn sync_beside_a_silent_peer(
    (cfg, start): (SyncConfig, LocalChain),
    blocks: &[Block],
    (peers, silent): (u32, u32),
    until_ms: u64,
    done: impl Fn(&SyncEngine<u32>) -> bool,
) -> Option<u64> {
    let top = blocks.len() as u64 - 1;
    let mut engine = SyncEngine::new(cfg, start, 7).expect("a valid config");
    for peer in 1..=peers {
        engine.peer_status(0, peer, status(blocks, top));
    }
    let mut pending: Vec<(u64, u32, RequestId, Height, u64)> = Vec::new();
    let mut now = 0;
    while now < until_ms {
        let actions = drain(&mut engine);
        let charged = penalties(&actions);
        assert!(
            charged.iter().all(|(p, _)| *p == silent),
            "an honest peer was charged: {charged:?}"
        );
        import_all(&mut engine, now, &actions);
        if done(&engine) {
            return Some(now);
        }
        for (peer, id, start, count) in range_requests(&actions) {
            if peer != silent {
                pending.push((now + 5, peer, id, start, count));
            }
        }
        now += 5;
        let (due, rest): (Vec<_>, Vec<_>) = pending.into_iter().partition(|p| p.0 <= now);
        pending = rest;
        for (_, _, id, start, count) in due {
            engine.response_received(now, id);
            engine.range_response(now, id, serve(blocks, start, count));
        }
        engine.tick(now);
    }
    None
}

#[test]
fn a_silent_peer_new_to_us_does_not_hold_up_import_for_a_whole_timeout() {
    // As a node starts: every peer is new to us, so the first batches go to peers not measured
    // yet, the silent one among them. The batch import waits for must move to a brisk peer
    // long before the configured 10 s deadline runs out, whichever batch the silent peer holds.
    let blocks = chain(2_000, 100, 0);
    let cfg = SyncConfig {
        batch_size: 16,
        window_batches: 16,
        request_timeout_ms: 10_000,
        max_request_timeout_ms: 60_000,
        ..config()
    };
    for silent in 1..=3 {
        let start = (cfg.clone(), local(&blocks, 0));
        let took =
            sync_beside_a_silent_peer(start, &blocks, (3, silent), 30_000, |e| e.head_height() >= 2_000);
        let took = took.unwrap_or_else(|| panic!("not synced in 30 s beside silent peer {silent}"));
        assert!(
            took < 3_000,
            "synced only after {took} ms beside silent peer {silent}"
        );
    }
}

#[test]
fn a_silent_peer_does_not_hold_up_backfill_for_a_whole_timeout() {
    // Backfill's lowest batch waits on the silent peer as forward sync's first one would: it is
    // hedged the same way, long before the configured deadline runs out.
    let blocks = chain(2_000, 100, 0);
    let cfg = SyncConfig {
        backfill_batch_size: 16,
        backfill_window_batches: 4,
        request_timeout_ms: 10_000,
        max_request_timeout_ms: 60_000,
        ..config()
    };
    for silent in 1..=3 {
        let start = (cfg.clone(), backfill_from_head(&blocks));
        let took = sync_beside_a_silent_peer(start, &blocks, (3, silent), 60_000, |e| {
            e.backfill_complete() == Some(true)
        });
        let took = took.unwrap_or_else(|| panic!("backfill not done in 60 s beside silent peer {silent}"));
        assert!(
            took < 3_000,
            "backfilled only after {took} ms beside silent peer {silent}"
        );
    }
}

#[test]
fn eight_distant_peers_are_kept_busy_by_the_default_window() {
    // The lab's wan run: 8 peers, each 50 ms one way and 2,500 bytes/ms, and each request pays
    // its stream's negotiation round trip before it reaches the peer (eager multistream-select:
    // the proposal, its echo, then the request), so an answer begins 3 delays after its send.
    // Fed to the link's bound, 8 links carry 20,000 bytes/ms; the batches between download and
    // import must cover every peer's bandwidth-delay product plus that round trip.
    let blocks = chain(40_000, 1_000, 0);
    let top = blocks.len() as u64 - 1;
    let config = SyncConfig {
        request_timeout_ms: 10_000,
        ..SyncConfig::default()
    };
    let mut engine = SyncEngine::new(config, local(&blocks, 0), 5).expect("a valid config");
    let mut links: BTreeMap<u32, Link> = BTreeMap::new();
    for peer in 1..=8 {
        engine.peer_status(0, peer, status(&blocks, top));
        let link = Link {
            delay_ms: 50,
            bytes_per_ms: 2_500,
            free_at: 0,
        };
        links.insert(peer, link);
    }
    let mut pending: Vec<(u64, RequestId, Height, u64)> = Vec::new();
    // Imports one after another, each 40 µs a block (verification and the store's write).
    let mut importing: Vec<(u64, ImportId)> = Vec::new();
    let (mut now, mut import_free) = (0, 0);
    while engine.head_height() < top && now < 60_000 {
        let actions = drain(&mut engine);
        for action in &actions {
            if let Action::Import { id, blocks, .. } = action {
                import_free = import_free.max(now) + blocks.len() as u64 * 40 / 1_000;
                importing.push((import_free, *id));
            }
        }
        let (done, rest): (Vec<_>, Vec<_>) = importing.into_iter().partition(|i| i.0 <= now);
        importing = rest;
        for (_, id) in done {
            engine.import_result(now, id, Ok(()));
        }
        for (peer, id, start, count) in range_requests(&actions) {
            let bytes: u64 = serve(&blocks, start, count)
                .iter()
                .map(|b| b.size_bytes() as u64)
                .sum();
            let link = links.get_mut(&peer).expect("a peer of the test");
            // The negotiation's round trip, then the request as one would send it alone.
            pending.push((link.answer_at(now + 100, bytes), id, start, count));
        }
        now += 5;
        let (due, rest): (Vec<_>, Vec<_>) = pending.into_iter().partition(|p| p.0 <= now);
        pending = rest;
        for (_, id, start, count) in due {
            engine.response_received(now, id);
            engine.range_response(now, id, serve(&blocks, start, count));
        }
        engine.tick(now);
    }
    // 40,000 × ~1,130 bytes over 20,000 bytes/ms is 2.3 s; the start (batches cut for the
    // largest blocks, small first requests) adds about a second.
    assert_eq!(engine.head_height(), top, "synced by {now} ms");
    // At import's rate too (40 µs a block, 1.6 s) the window must hold what the links carry
    // while the batch import waits for is still on its way: 16 batches took 4.0 s, 32 take 3.5.
    assert!(now <= 3_700, "took {now} ms");
}
