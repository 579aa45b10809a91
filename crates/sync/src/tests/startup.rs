//! At start-up our head is unchecked: the state is `Syncing` until a peer's Status arrives, or,
//! for a node alone, until `alone_after_ms` passes.

use super::*;

#[test]
fn a_node_is_not_synced_before_a_peer_checked_its_head() {
    let blocks = chain(10, 8, 0);
    let mut engine = SyncEngine::new(config(), local(&blocks, 10), 1).expect("a valid config");
    assert_eq!(engine.state(), SyncState::Syncing, "no peer has seen our head");
    engine.tick(100);
    assert_eq!(engine.state(), SyncState::Syncing);
    // A peer at our head: nothing to fetch, we are in sync.
    engine.peer_status(200, 1, status(&blocks, 10));
    assert_eq!(engine.state(), SyncState::Synced);
}

#[test]
fn a_peer_ahead_at_start_up_keeps_the_node_syncing_until_it_caught_up() {
    let blocks = chain(20, 8, 0);
    let mut engine = SyncEngine::new(config(), local(&blocks, 10), 1).expect("a valid config");
    engine.peer_status(50, 1, status(&blocks, 20));
    assert_eq!(engine.state(), SyncState::Syncing);
    let mut now = 50;
    while engine.head_height() < 20 && now < 200 {
        now += 1;
        honest_step(&mut engine, now, &blocks);
    }
    assert_eq!(engine.head_height(), 20);
    assert_eq!(engine.state(), SyncState::Synced);
}

#[test]
fn a_node_alone_counts_as_synced_once_no_peer_came_in_time() {
    let blocks = chain(10, 8, 0);
    let config = config();
    let alone_after_ms = config.alone_after_ms;
    let mut engine = SyncEngine::new(config, local(&blocks, 10), 1).expect("a valid config");
    assert_eq!(
        engine.next_wakeup(),
        Some(alone_after_ms),
        "the engine asks to be ticked then"
    );
    engine.tick(alone_after_ms - 1);
    assert_eq!(engine.state(), SyncState::Syncing);
    engine.tick(alone_after_ms);
    assert_eq!(engine.state(), SyncState::Synced);
    assert_eq!(
        drain(&mut engine).last(),
        Some(&Action::StateChanged(SyncState::Synced))
    );
}
