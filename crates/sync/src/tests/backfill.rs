//! Backfill: down to genesis and no further, and the charge for history that does not chain.

use super::*;

#[test]
fn backfill_reaches_genesis_then_does_no_more_work() {
    let blocks = chain(40, 8, 0);
    let mut start = local(&blocks, 40);
    start.backfill = Some(BackfillStart {
        lowest_height: 30,
        lowest_parent_hash: blocks[29].hash(),
        floor_height: 0,
    });
    let mut engine = SyncEngine::new(config(), start, 11).expect("a valid config");
    engine.peer_status(0, 1, status(&blocks, 40));
    assert_eq!(engine.state(), SyncState::Backfilling);
    engine.peer_status(0, 2, status(&blocks, 40));
    let mut now = 0;
    let mut imported = Vec::new();
    let mut complete = 0;
    while now < 200 {
        now += 1;
        let actions = drain(&mut engine);
        for action in &actions {
            match action {
                Action::Import {
                    id,
                    blocks: got,
                    direction,
                } => {
                    assert_eq!(*direction, Direction::Backfill);
                    imported.push((got[0].height(), got[got.len() - 1].height()));
                    engine.import_result(now, *id, Ok(()));
                }
                Action::BackfillComplete { lowest_height } => {
                    assert_eq!(*lowest_height, 1);
                    complete += 1;
                }
                _ => {}
            }
        }
        for (_, id, start, count) in range_requests(&actions) {
            engine.range_response(now, id, serve(&blocks, start, count));
        }
        engine.tick(now);
    }
    assert_eq!(imported, vec![(20, 29), (10, 19), (1, 9)]);
    assert_eq!(complete, 1, "completion is announced exactly once");
    assert_eq!(engine.backfill_complete(), Some(true));
    assert_eq!(engine.state(), SyncState::Synced);
    // Terminal: more events and time bring no backfill work.
    engine.peer_status(300, 3, status(&blocks, 40));
    engine.tick(100_000);
    assert!(drain(&mut engine).iter().all(|a| !matches!(
        a,
        Action::SendRangeRequest { .. } | Action::Import { .. } | Action::BackfillComplete { .. }
    )));
    assert_eq!(engine.stats().backfill_batches, 0);
}

#[test]
fn backfill_charges_a_batch_that_does_not_chain_to_the_stored_history() {
    let blocks = chain(40, 8, 0);
    let fork = chain(40, 8, 5);
    let mut start = local(&blocks, 40);
    start.backfill = Some(BackfillStart {
        lowest_height: 21,
        lowest_parent_hash: blocks[20].hash(),
        floor_height: 11,
    });
    let mut engine = SyncEngine::new(config(), start, 12).expect("a valid config");
    engine.peer_status(0, 1, status(&blocks, 40));
    let (_, id, start_height, count) = range_requests(&drain(&mut engine))[0];
    assert_eq!((start_height, count), (11, 10));
    engine.range_response(1, id, serve(&fork, 11, 10));
    assert_eq!(penalties(&drain(&mut engine)), vec![(1, PeerAction::ProvenWrong)]);
    assert_eq!(engine.backfill_complete(), Some(false));
}
