//! Arbitrary event sequences: the engine stands and keeps its bounds whatever it is fed.

use super::*;

/// Any sequence of events, however absurd, leaves the engine standing and within its bounds.
#[test]
fn arbitrary_event_sequences_never_panic() {
    use rand::rngs::StdRng;
    use rand::{RngExt, SeedableRng};
    let blocks = chain(120, 8, 0);
    let fork = chain(120, 8, 3);
    for seed in 0..200u64 {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut start = local(&blocks, rng.random_range(0..60));
        if rng.random_bool(0.5) {
            start.backfill = Some(BackfillStart {
                lowest_height: rng.random_range(0..60),
                lowest_parent_hash: blocks[rng.random_range(0..60)].hash(),
                floor_height: rng.random_range(0..20),
            });
        }
        let cfg = config();
        let mut engine = SyncEngine::new(cfg.clone(), start, seed).expect("a valid config");
        let mut now = 0u64;
        let mut sent: Vec<RequestId> = Vec::new();
        let mut imports: Vec<ImportId> = Vec::new();
        for _ in 0..400 {
            now += rng.random_range(0..3_000);
            let peer = rng.random_range(0..6u32);
            let id = match sent.len() {
                n if n > 0 && rng.random_bool(0.8) => sent[rng.random_range(0..n)],
                _ => RequestId(rng.random_range(0..60)),
            };
            let import = match imports.len() {
                n if n > 0 && rng.random_bool(0.8) => imports[rng.random_range(0..n)],
                _ => ImportId(rng.random_range(0..30)),
            };
            let source = if rng.random_bool(0.7) { &blocks } else { &fork };
            let from = rng.random_range(0..130usize);
            let picked: Vec<Block> = source
                .iter()
                .skip(from)
                .take(rng.random_range(0..15))
                .cloned()
                .collect();
            match rng.random_range(0..12) {
                0 => {
                    let head = match rng.random_range(0..4) {
                        0 => u64::MAX,
                        _ => rng.random_range(0..200),
                    };
                    let status = PeerStatus {
                        head_height: head,
                        head_hash: Hash::of(&head.to_be_bytes()),
                        finalized_height: rng.random_range(0..u64::MAX),
                        earliest_height: rng.random_range(0..100),
                    };
                    engine.peer_status(now, peer, status);
                }
                1 => engine.peer_disconnected(now, &peer),
                2 | 3 => engine.range_response(now, id, picked),
                4 => engine.root_response(now, id, picked),
                5 => engine.response_invalid(now, id, "bad"),
                6 => engine.request_failed(now, id, RequestFailure::Timeout),
                7 => {
                    let result = match rng.random_range(0..4) {
                        0 => Err(ImportError::Local("x".into())),
                        1 => Err(ImportError::Rejected {
                            height: rng.random_range(0..130),
                            reason: "x".into(),
                        }),
                        2 => Err(ImportError::DoesNotLink {
                            height: rng.random_range(0..120),
                            hash: Hash::ZERO,
                        }),
                        _ => Ok(()),
                    };
                    engine.import_result(now, import, result);
                }
                8 => {
                    if let Some(block) = picked.first() {
                        engine.gossip_block(now, peer, block.clone());
                    }
                }
                9 => engine.local_head_changed(now, rng.random_range(0..120), Hash::ZERO),
                10 => engine.response_received(now, id),
                _ => engine.tick(now),
            }
            let stats = engine.stats();
            assert!(stats.buffered_bytes <= cfg.window_bytes);
            assert!(stats.forward_batches <= cfg.window_batches);
            assert!(stats.lookups <= cfg.max_lookups);
            assert!(stats.in_flight_requests <= stats.peers * cfg.max_requests_per_peer + 6);
            while let Some(action) = engine.poll_action() {
                match action {
                    Action::SendRangeRequest { id, .. } | Action::SendRootRequest { id, .. } => sent.push(id),
                    Action::Import { id, .. } => imports.push(id),
                    _ => {}
                }
            }
            if sent.len() > 20 {
                sent.drain(..10);
            }
            if imports.len() > 20 {
                imports.drain(..10);
            }
        }
    }
}
