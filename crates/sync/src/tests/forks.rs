//! Fork choice through sync: forks of unequal length above and below finality, met at our head,
//! during forward sync and during backfill, against a model of the store's fork choice.

use std::collections::{BTreeMap, HashMap};

use super::*;

/// Finality depth of these tests' chains.
const DEPTH: u64 = 8;

/// `base` up to `at`, then its own blocks up to `len` (payloads of `salt`).
fn fork_of(base: &[Block], at: Height, len: Height, salt: u8) -> Vec<Block> {
    let mut blocks = base[..=at as usize].to_vec();
    extend_chain(&mut blocks, len, salt, |_| 8);
    blocks
}

/// The store's fork choice as `BlockStore::import_blocks` makes it: blocks already canonical are
/// skipped, an unknown parent does not link, a fork below the finalized block is rejected, a
/// chain not longer than ours is kept aside, a longer one becomes canonical.
struct ModelStore {
    blocks: HashMap<Hash, Block>,
    canon: BTreeMap<Height, Hash>,
    finalized: Height,
    /// Lowest replaced height of every reorg.
    reorgs: Vec<Height>,
}

impl ModelStore {
    fn new(chain: &[Block], head: Height) -> Self {
        let mut store = ModelStore {
            blocks: HashMap::new(),
            canon: BTreeMap::new(),
            finalized: head.saturating_sub(DEPTH),
            reorgs: Vec::new(),
        };
        for block in &chain[..=head as usize] {
            store.blocks.insert(block.hash(), block.clone());
            store.canon.insert(block.height(), block.hash());
        }
        store
    }

    fn head(&self) -> (Height, Hash) {
        let (height, hash) = self.canon.last_key_value().expect("genesis");
        (*height, *hash)
    }

    fn local(&self) -> LocalChain {
        let (head_height, head_hash) = self.head();
        LocalChain {
            head_height,
            head_hash,
            finalized_height: self.finalized,
            finality_depth: DEPTH,
            genesis_hash: self.canon[&0],
            backfill: None,
        }
    }

    fn import(&mut self, blocks: &[Block]) -> Result<(), ImportError> {
        let (head_height, head_hash) = self.head();
        let new: Vec<&Block> = blocks
            .iter()
            .skip_while(|b| self.canon.get(&b.height()) == Some(&b.hash()))
            .collect();
        let Some(first) = new.first() else {
            return Ok(());
        };
        let Some(parent) = self.blocks.get(&first.header.parent_hash) else {
            return Err(ImportError::DoesNotLink {
                height: head_height,
                hash: head_hash,
            });
        };
        // The fork point: down from the parent through blocks that are not canonical.
        let mut side = Vec::new();
        let mut at = parent.clone();
        while self.canon.get(&at.height()) != Some(&at.hash()) {
            side.push(at.clone());
            at = self.blocks[&at.header.parent_hash].clone();
        }
        if at.height() < self.finalized {
            return Err(ImportError::Rejected {
                height: first.height(),
                reason: "conflicts with the finalized block".into(),
            });
        }
        for block in &new {
            self.blocks.insert(block.hash(), (*block).clone());
        }
        let tip = new.last().expect("not empty");
        if tip.height() <= head_height && at.hash() != head_hash {
            return Err(ImportError::SideChain {
                height: head_height,
                hash: head_hash,
            });
        }
        if at.hash() != head_hash {
            self.reorgs.push(at.height() + 1);
        }
        self.canon.retain(|h, _| *h <= at.height());
        for block in side.iter().rev().chain(new.iter().copied()) {
            self.canon.insert(block.height(), block.hash());
        }
        self.finalized = self.finalized.max(tip.height().saturating_sub(DEPTH));
        Ok(())
    }

    /// Whether the canonical chain is `chain` up to its end.
    fn follows(&self, chain: &[Block]) -> bool {
        self.head().0 == chain.len() as Height - 1
            && chain
                .iter()
                .all(|b| self.canon.get(&b.height()) == Some(&b.hash()))
    }
}

/// Plays the node and the peers (each serving its own chain in full) until nothing is left to do
/// or `limit_ms` passes; returns every charge.
fn run(
    engine: &mut SyncEngine<u32>,
    store: &mut ModelStore,
    peers: &[(u32, &[Block])],
    limit_ms: u64,
) -> Vec<(u32, PeerAction)> {
    let mut charges = Vec::new();
    let mut now = 1;
    while now <= limit_ms {
        let actions = drain(engine);
        charges.extend(penalties(&actions));
        if actions.is_empty() {
            match engine.next_wakeup() {
                Some(at) => {
                    now = at;
                    engine.tick(now);
                    continue;
                }
                None => break,
            }
        }
        for action in actions {
            match action {
                Action::Import { id, blocks, .. } => {
                    let result = store.import(&blocks);
                    engine.import_result(now, id, result);
                }
                Action::SendRangeRequest {
                    peer,
                    id,
                    start_height,
                    count,
                    ..
                } => {
                    let chain = peers.iter().find(|(p, _)| *p == peer).map_or(&[][..], |(_, c)| c);
                    engine.range_response(now, id, serve(chain, start_height, count));
                }
                Action::SendRootRequest { peer, id, hashes, .. } => {
                    let chain = peers.iter().find(|(p, _)| *p == peer).map_or(&[][..], |(_, c)| c);
                    let found = chain.iter().filter(|b| hashes.contains(&b.hash())).cloned();
                    engine.root_response(now, id, found.collect());
                }
                Action::RequestStatus { peer } => {
                    if let Some((_, chain)) = peers.iter().find(|(p, _)| *p == peer) {
                        engine.peer_status(now, peer, head_status(chain));
                    }
                }
                _ => {}
            }
        }
        now += 1;
    }
    charges
}

fn head_status(chain: &[Block]) -> PeerStatus {
    status(chain, chain.len() as Height - 1)
}

#[test]
fn a_longer_fork_above_finality_wins_and_nobody_is_charged() {
    let a = chain(40, 8, 0);
    let b = fork_of(&a, 35, 50, 1);
    let mut store = ModelStore::new(&a, 40);
    let mut engine = SyncEngine::new(config(), store.local(), 1).expect("a valid config");
    engine.peer_status(0, 1, head_status(&a));
    engine.peer_status(0, 2, head_status(&b));
    let charges = run(&mut engine, &mut store, &[(1, &a), (2, &b)], 60_000);
    assert_eq!(charges, vec![], "a peer on a longer valid fork did nothing wrong");
    assert!(store.follows(&b), "the store switched to the longer fork");
    assert_eq!(store.reorgs, vec![36]);
    assert_eq!(engine.head_height(), 50, "forward sync follows the store's head");
    assert_eq!(engine.state(), SyncState::Synced);
}

#[test]
fn a_shorter_fork_met_while_syncing_is_kept_aside_and_nobody_is_charged() {
    let a = chain(60, 8, 0);
    // It branches at 15 and claims more than our head, but its chain ends below A's.
    let b = fork_of(&a, 15, 30, 1);
    let mut store = ModelStore::new(&a, 20);
    let mut engine = SyncEngine::new(config(), store.local(), 3).expect("a valid config");
    engine.peer_status(0, 1, head_status(&a));
    engine.peer_status(0, 2, head_status(&b));
    let charges = run(&mut engine, &mut store, &[(1, &a), (2, &b)], 60_000);
    assert_eq!(charges, vec![]);
    assert!(store.follows(&a), "the longest chain stays canonical");
    assert_eq!(store.reorgs, Vec::<Height>::new());
    assert_eq!(engine.head_height(), 60);
    assert_eq!(engine.state(), SyncState::Synced);
}

#[test]
fn a_fork_below_finality_is_refused_and_its_peer_charged() {
    let a = chain(40, 8, 0);
    // Leaves A at 20, below our finalized height 32: invalid for us, however long.
    let b = fork_of(&a, 20, 60, 1);
    let mut store = ModelStore::new(&a, 40);
    let mut engine = SyncEngine::new(config(), store.local(), 5).expect("a valid config");
    engine.peer_status(0, 1, head_status(&a));
    engine.peer_status(0, 2, head_status(&b));
    let charges = run(&mut engine, &mut store, &[(1, &a), (2, &b)], 60_000);
    assert_eq!(charges, vec![(2, PeerAction::ProvenWrong)]);
    assert!(store.follows(&a));
    assert_eq!(engine.head_height(), 40);
    assert_eq!(
        engine.state(),
        SyncState::Synced,
        "a discredited claim does not hold the target"
    );
}

#[test]
fn an_equal_fork_is_not_fetched_first_seen_stays() {
    let a = chain(40, 8, 0);
    let b = fork_of(&a, 35, 40, 1);
    let store = ModelStore::new(&a, 40);
    let mut engine = SyncEngine::new(config(), store.local(), 7).expect("a valid config");
    engine.peer_status(0, 2, head_status(&b));
    let actions = drain(&mut engine);
    assert_eq!(range_requests(&actions), vec![]);
    assert_eq!(penalties(&actions), vec![]);
    assert!(store.follows(&a));
    assert_eq!(engine.state(), SyncState::Synced);
}

#[test]
fn a_reorg_during_forward_sync_ends_on_the_longest_chain() {
    for seed in 0..20 {
        let a = chain(40, 8, 0);
        let b = fork_of(&a, 36, 55, 1);
        let mut store = ModelStore::new(&a, 10);
        let mut engine = SyncEngine::new(config(), store.local(), seed).expect("a valid config");
        engine.peer_status(0, 1, head_status(&a));
        engine.peer_status(0, 2, head_status(&a));
        engine.peer_status(0, 3, head_status(&b));
        let charges = run(&mut engine, &mut store, &[(1, &a), (2, &a), (3, &b)], 120_000);
        assert_eq!(charges, vec![], "seed {seed}");
        assert!(store.follows(&b), "seed {seed}: on the longer fork");
        assert_eq!(engine.head_height(), 55, "seed {seed}");
        assert_eq!(engine.state(), SyncState::Synced, "seed {seed}");
    }
}

#[test]
fn a_reorg_during_backfill_leaves_backfill_to_finish() {
    let a = chain(40, 8, 0);
    let b = fork_of(&a, 34, 52, 1);
    // Started from a checkpoint at 30: nothing below it yet, backfill to genesis to do.
    let mut store = ModelStore::new(&a, 40);
    store.canon.retain(|h, _| *h == 0 || *h >= 30);
    let mut local = store.local();
    local.finalized_height = 30;
    local.backfill = Some(BackfillStart {
        lowest_height: 30,
        lowest_parent_hash: a[29].hash(),
        floor_height: 0,
    });
    let mut engine = SyncEngine::new(config(), local, 11).expect("a valid config");
    engine.peer_status(0, 1, head_status(&a));
    engine.peer_status(0, 2, head_status(&b));
    let mut charges = Vec::new();
    let mut now = 0;
    // Backfill imports go below the checkpoint; the model store only takes them in.
    while now < 120_000 && (engine.backfill_complete() != Some(true) || engine.state() != SyncState::Synced) {
        now += 1;
        for action in drain(&mut engine) {
            match action {
                Action::Import {
                    id,
                    blocks,
                    direction: Direction::Backfill,
                } => {
                    for block in &blocks {
                        store.blocks.insert(block.hash(), block.clone());
                        store.canon.insert(block.height(), block.hash());
                    }
                    engine.import_result(now, id, Ok(()));
                }
                Action::Import { id, blocks, .. } => {
                    let result = store.import(&blocks);
                    engine.import_result(now, id, result);
                }
                Action::SendRangeRequest {
                    peer,
                    id,
                    start_height,
                    count,
                    ..
                } => {
                    let chain: &[Block] = if peer == 1 { &a } else { &b };
                    engine.range_response(now, id, serve(chain, start_height, count));
                }
                Action::Penalise { peer, action, .. } if action != PeerAction::UsefulResponse => {
                    charges.push((peer, action))
                }
                _ => {}
            }
        }
        engine.tick(now);
    }
    assert_eq!(charges, vec![]);
    assert!(store.follows(&b), "the longer fork won");
    assert_eq!(store.reorgs, vec![35]);
    assert_eq!(engine.backfill_complete(), Some(true));
    assert_eq!(engine.state(), SyncState::Synced);
}

/// Synced on A at 40 beside a peer on B, a rival of equal height (nothing to fetch: the first
/// seen stays), when that peer gossips `gossiped` of B, which its Status does not name yet. The
/// tests give it a second of engine time: no Status round or stall comes to help.
fn gossip_rival(b: &[Block], gossiped: Height) -> (ModelStore, SyncEngine<u32>) {
    let a = chain(40, 8, 0);
    let store = ModelStore::new(&a, 40);
    let mut engine = SyncEngine::new(config(), store.local(), 13).expect("a valid config");
    engine.peer_status(0, 1, head_status(&a));
    engine.peer_status(0, 2, head_status(&b[..=40]));
    assert_eq!(
        range_requests(&drain(&mut engine)),
        vec![],
        "an equal rival is not fetched"
    );
    engine.gossip_block(1, 2, b[gossiped as usize].clone());
    (store, engine)
}

#[test]
fn a_longer_fork_shown_by_gossip_is_fetched_at_once_and_nobody_is_charged() {
    let a = chain(40, 8, 0);
    for top in [41, 42] {
        // B leaves A at 36; its peer gossips its newest block (at 42 after one it did not).
        let b = fork_of(&a, 36, top, 1);
        let (mut store, mut engine) = gossip_rival(&b, top);
        let charges = run(&mut engine, &mut store, &[(1, &a), (2, &b)], 1_000);
        assert_eq!(charges, vec![], "top {top}: being on a longer fork is no fault");
        assert!(
            store.follows(&b),
            "top {top}: the store switched to the longer fork"
        );
        assert_eq!(store.reorgs, vec![37], "top {top}");
        assert_eq!(engine.head_height(), top);
        assert_eq!(engine.state(), SyncState::Synced);
    }
}

#[test]
fn a_gossiped_rival_no_higher_than_our_head_changes_nothing() {
    let a = chain(40, 8, 0);
    let b = fork_of(&a, 36, 40, 1);
    let (mut store, mut engine) = gossip_rival(&b, 40);
    let actions = drain(&mut engine);
    assert!(
        actions.is_empty(),
        "equal heights: the first seen stays: {actions:?}"
    );
    let charges = run(&mut engine, &mut store, &[(1, &a), (2, &b)], 1_000);
    assert_eq!(charges, vec![]);
    assert!(store.follows(&a));
    assert_eq!(engine.head_height(), 40);
}

#[test]
fn a_longer_fork_shown_by_gossip_that_conflicts_with_finality_is_refused_and_charged() {
    let a = chain(40, 8, 0);
    // Leaves A at 20, below our finalized height 32.
    let b = fork_of(&a, 20, 41, 1);
    let (mut store, mut engine) = gossip_rival(&b, 41);
    let charges = run(&mut engine, &mut store, &[(1, &a), (2, &b)], 1_000);
    assert_eq!(charges, vec![(2, PeerAction::ProvenWrong)]);
    assert!(store.follows(&a));
    assert_eq!(engine.head_height(), 40);
    assert_eq!(engine.state(), SyncState::Synced);
}

#[test]
fn a_chain_that_does_not_hang_off_a_finalized_head_is_refused_and_its_peer_charged() {
    let a = chain(60, 8, 0);
    let b = fork_of(&a, 20, 80, 1);
    for peers in [vec![2u32], vec![1, 2], vec![2, 1]] {
        // Our head is finalized (a checkpoint): nothing that does not build on it can be ours.
        let mut store = ModelStore::new(&a, 30);
        store.finalized = 30;
        let mut engine = SyncEngine::new(config(), store.local(), 5).expect("a valid config");
        let chains: Vec<(u32, &[Block])> = peers
            .iter()
            .map(|p| (*p, if *p == 1 { &a[..] } else { &b[..] }))
            .collect();
        for (peer, chain) in &chains {
            engine.peer_status(0, *peer, head_status(chain));
        }
        let charges = run(&mut engine, &mut store, &chains, 60_000);
        assert_eq!(charges, vec![(2, PeerAction::ProvenWrong)], "peers {peers:?}");
        assert_eq!(store.head().0, if peers.contains(&1) { 60 } else { 30 });
    }
}

#[test]
fn a_batch_after_an_offered_block_the_store_refuses_is_not_taken_for_a_fork() {
    let a = chain(40, 8, 0);
    // Peer 2's blocks link to our head but break a rule only the store checks (for example a
    // timestamp): they pass every check before import, and the store refuses them.
    let forged = fork_of(&a, 20, 40, 1);
    let mut engine = SyncEngine::new(config(), local(&a, 20), 9).expect("a valid config");
    engine.peer_status(0, 2, head_status(&forged));
    let first = range_requests(&drain(&mut engine));
    assert!(
        first.iter().all(|(p, _, _, _)| *p == 2) && first.iter().any(|(_, _, s, _)| *s == 21),
        "peer 2, alone, is asked for the first batch: {first:?}"
    );
    engine.peer_status(0, 1, head_status(&a));
    let mut pending = first;
    let mut asked_of_1: Vec<(Height, u64)> = Vec::new();
    let mut charges = Vec::new();
    let mut imported = Vec::new();
    for now in 1..2_000 {
        let mut actions = drain(&mut engine);
        if actions.is_empty() && pending.is_empty() {
            match engine.next_wakeup() {
                Some(at) => engine.tick(at.max(now)),
                None => break,
            }
            actions = drain(&mut engine);
        }
        charges.extend(penalties(&actions));
        pending.extend(range_requests(&actions));
        // Answers first, then the store's word on the imports offered: the honest batch above
        // the forged one is complete before the store refuses the forged one.
        for (peer, id, start, count) in std::mem::take(&mut pending) {
            let chain = if peer == 1 { &a } else { &forged };
            if peer == 1 {
                asked_of_1.push((start, count));
            }
            engine.range_response(now, id, serve(chain, start, count));
        }
        let later = drain(&mut engine);
        pending.extend(range_requests(&later));
        for action in actions.iter().chain(later.iter()) {
            match action {
                Action::Import { id, blocks, .. } => {
                    let refused = blocks.iter().find(|b| a[b.height() as usize].hash() != b.hash());
                    let result = match refused {
                        Some(b) => Err(ImportError::Rejected {
                            height: b.height(),
                            reason: "rule 2".into(),
                        }),
                        None => {
                            imported.extend(blocks.iter().map(Block::height));
                            Ok(())
                        }
                    };
                    engine.import_result(now, *id, result);
                }
                other if later.iter().any(|l| std::ptr::eq(l, other)) => {
                    charges.extend(penalties(std::slice::from_ref(other)))
                }
                _ => {}
            }
        }
    }
    assert_eq!(
        imported,
        (21..=40).collect::<Vec<_>>(),
        "the honest chain, in order"
    );
    assert!(
        charges.iter().all(|(p, _)| *p == 2),
        "the honest peer is never charged: {charges:?}"
    );
    assert!(charges.contains(&(2, PeerAction::InvalidData)));
    let mut heights: Vec<Height> = asked_of_1.iter().flat_map(|(s, c)| *s..s + c).collect();
    heights.sort_unstable();
    let len = heights.len();
    heights.dedup();
    assert_eq!(
        heights.len(),
        len,
        "no height is asked of the honest peer twice (no fork search forgot its batches): {asked_of_1:?}"
    );
}
