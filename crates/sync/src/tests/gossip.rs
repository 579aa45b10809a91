//! Following the head by gossip while range sync has batches out: a peer whose Status shows it a
//! block ahead makes forward sync fetch that block, and a gossiped block on our tip must not wait
//! for that request (nor be lost to it); blocks gossiped above the range, and a lookup's chain
//! that range sync reaches, import when it gets there.

use super::*;

/// An engine synced at 5 with peer 1 there too, and peer 2 whose Status shows it at 6: the
/// engine asks peer 2 for block 6 by range. Returns that request.
fn one_block_behind(blocks: &[Block]) -> (SyncEngine<u32>, (u32, RequestId, Height, u64)) {
    let mut engine = SyncEngine::new(config(), local(blocks, 5), 3).expect("a valid config");
    engine.peer_status(0, 1, status(blocks, 5));
    drain(&mut engine);
    engine.peer_status(10, 2, status(blocks, 6));
    let requests = range_requests(&drain(&mut engine));
    assert_eq!(requests.len(), 1, "{requests:?}");
    assert_eq!((requests[0].0, requests[0].2), (2, 6));
    (engine, requests[0])
}

#[test]
fn a_gossiped_block_on_the_tip_imports_while_its_range_request_is_out() {
    let blocks = chain(10, 8, 0);
    let (mut engine, (_, id, start, count)) = one_block_behind(&blocks);
    engine.gossip_block(20, 1, blocks[6].clone());
    assert_eq!(
        import_drained(&mut engine, 21),
        vec![6],
        "not held for the range request"
    );
    assert_eq!(engine.head_height(), 6);
    // The range answer comes after: nothing more to import, and its peer is not charged.
    engine.range_response(30, id, serve(&blocks, start, count));
    let actions = drain(&mut engine);
    assert!(import_all(&mut engine, 30, &actions).is_empty(), "{actions:?}");
    assert!(penalties(&actions).is_empty(), "{actions:?}");
    // The next block follows by gossip.
    engine.gossip_block(40, 1, blocks[7].clone());
    assert_eq!(import_drained(&mut engine, 41), vec![7]);
    assert_eq!(engine.state(), SyncState::Synced);
}

#[test]
fn a_gossiped_block_on_the_tip_follows_a_batch_being_imported() {
    let blocks = chain(10, 8, 0);
    let (mut engine, (_, id, start, count)) = one_block_behind(&blocks);
    // The range answer arrives first: block 6 is offered for import, not yet confirmed.
    engine.range_response(20, id, serve(&blocks, start, count));
    let offered = drain(&mut engine);
    let import = offered.iter().find_map(|a| match a {
        Action::Import { id, blocks, .. } => Some((*id, blocks.len())),
        _ => None,
    });
    let Some((import_6, 1)) = import else {
        panic!("expected block 6 offered, got {offered:?}");
    };
    // 6 again by gossip is not imported twice; 7, on the tip, is queued behind the import of 6.
    engine.gossip_block(21, 1, blocks[6].clone());
    engine.gossip_block(22, 1, blocks[7].clone());
    let queued = drain(&mut engine);
    engine.import_result(23, import_6, Ok(()));
    assert_eq!(import_all(&mut engine, 24, &queued), vec![7], "{queued:?}");
    assert_eq!(engine.head_height(), 7);
}

/// The root request among `actions`: its peer, id and the one hash asked for.
fn root_request(actions: &[Action<u32>]) -> Option<(u32, RequestId, Hash)> {
    actions.iter().find_map(|a| match a {
        Action::SendRootRequest { peer, id, hashes, .. } => Some((*peer, *id, hashes[0])),
        _ => None,
    })
}

#[test]
fn a_lookup_that_range_sync_reaches_imports_with_the_blocks_gossiped_meanwhile() {
    let blocks = chain(10, 8, 0);
    let mut engine = SyncEngine::new(config(), local(&blocks, 5), 3).expect("a valid config");
    engine.peer_status(0, 1, status(&blocks, 5));
    drain(&mut engine);
    // 8 arrives by gossip while we are at 5: its parents are looked up, 7 comes back.
    engine.gossip_block(10, 1, blocks[8].clone());
    let (peer, first, hash) = root_request(&drain(&mut engine)).expect("a lookup of 7");
    assert_eq!((peer, hash), (1, blocks[7].hash()));
    engine.root_response(20, first, vec![blocks[7].clone()]);
    let (_, second, hash) = root_request(&drain(&mut engine)).expect("a lookup of 6");
    assert_eq!(hash, blocks[6].hash());
    // A Status shows peer 2 at 7: range sync fetches 6..=7 while 9 arrives by gossip.
    engine.peer_status(30, 2, status(&blocks, 7));
    let requests = range_requests(&drain(&mut engine));
    assert_eq!(requests.len(), 1, "{requests:?}");
    let (_, id, start, count) = requests[0];
    engine.gossip_block(40, 1, blocks[9].clone());
    engine.range_response(50, id, serve(&blocks, start, count));
    let mut imported = Vec::new();
    for now in 51..60 {
        imported.extend(import_drained(&mut engine, now));
    }
    assert_eq!(
        imported,
        vec![6, 7, 8, 9],
        "the lookup's blocks above the tip are kept"
    );
    assert_eq!(engine.head_height(), 9);
    // The lookup's last answer, no longer wanted, costs its peer nothing.
    engine.root_response(61, second, vec![blocks[6].clone()]);
    let actions = drain(&mut engine);
    assert!(penalties(&actions).is_empty(), "{actions:?}");
    assert!(import_all(&mut engine, 62, &actions).is_empty(), "{actions:?}");
}
