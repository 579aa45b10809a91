//! A deterministic discrete-event simulator of the sync engine against many peers, honest and not.
//!
//! Each seed builds a network (peer kinds, latencies, where the node starts) and plays it out in
//! simulated time: the simulator plays the node (it sends requests to simulated peers, verifies
//! rules 3–5 of responses, imports into an in-memory store checking rules 1–2, applies penalties
//! to a `PeerScores` and disconnects or bans per its verdict) and the peers (they answer per their
//! kind, gossip new blocks as the chain grows, send Status). Every seed must end with the true
//! chain, no honest peer charged for data faults or banned, the window respected, in bounded time.
//!
//! A failing seed prints `seed N failed: ...`; add it to `REGRESSION_SEEDS`. `SIM_SEEDS=n` changes
//! the number of seeds of `many_seeds`, `SIM_SEED=n` runs one seed with a trace of its actions.

mod fixture;
mod node;
mod peers;

use fixture::fixture;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::sync::OnceLock;

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use syncnode_sync::{
    Action, BackfillStart, Direction, ImportError, LocalChain, PeerAction, PeerScores, PeerStatus,
    RequestFailure, RequestId, ScoreConfig, SyncConfig, SyncEngine, SyncState, Verdict,
};
use syncnode_types::validity::{check_link, check_standalone};
use syncnode_types::{Block, ChainSpec, Hash, Height, Signature, SigningKey};

/// Seeds that once failed; each runs in `regression_seeds`.
/// 1, 3, 9: a batch reaching above a target that dropped (a head liar caught) was never served.
/// 42, 94: a fork search pinned to a peer that could not serve its first batch, or resting.
const REGRESSION_SEEDS: &[u64] = &[1, 3, 9, 42, 94];
/// Seeds of `hostile_seeds` that once failed.
/// 10149, 10224: a fork search given up while its last import was pending.
const HOSTILE_REGRESSION_SEEDS: &[u64] = &[10149, 10224];

/// Blocks in the true chain; the last `GROWTH` appear during the run, one per `SLOT_MS`.
const LEN: Height = 1_500;
const GROWTH: Height = 30;
const SLOT_MS: u64 = 1_000;
/// Where the second fork leaves the true chain (used when the node starts at or above it).
const FORK_B_AT: Height = 100;
/// Where the third fork leaves the true chain, above finality near the head, and where it ends:
/// for a while longer than the true chain, which then outgrows it.
const FORK_C_AT: Height = LEN - GROWTH - 12;
const FORK_C_END: Height = LEN - GROWTH + 6;
/// How far a peer on the third fork is ahead of the network head (until its fork ends).
const FORK_C_LEAD: Height = 5;
/// Finality depth of the simulated chain.
const FINALITY_DEPTH: u64 = 32;
/// Simulated time after which a run counts as not terminating.
const TIME_LIMIT_MS: u64 = 3 * 60 * 60 * 1000;
const AUTHORITIES: u32 = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Serves the true chain fast.
    Honest,
    /// Serves the true chain, often slower than the timeout.
    Slow,
    /// Drops some requests, rate-limits some.
    Flaky,
    /// Claims a head far above what it serves.
    HeadLiar,
    /// Corrupts signatures.
    BadSignature,
    /// Answers with blocks at heights not asked for.
    WrongHeights,
    /// Serves a different, validly signed fork that leaves the true chain below finality.
    Fork,
    /// Serves a validly signed fork that leaves the true chain above finality near the head, for
    /// a while longer than it: an honest peer on another fork.
    ShortFork,
    /// Disconnects in the middle of requests.
    Disconnecting,
    /// Sends Status but never answers a request.
    Silent,
}

impl Kind {
    /// Never sends wrong data (may be slow, flaky or drop off).
    fn truthful(self) -> bool {
        matches!(
            self,
            Kind::Honest | Kind::Slow | Kind::Flaky | Kind::Disconnecting | Kind::ShortFork
        )
    }
}

struct SimPeer {
    kind: Kind,
    earliest: Height,
    /// How far behind the network head it is.
    lag: Height,
    latency: (u64, u64),
    connected: bool,
    epoch: u64,
    banned: bool,
}

#[derive(Debug)]
enum Outcome {
    Range(Vec<Block>),
    Root(Vec<Block>),
    Fail(RequestFailure),
}

#[derive(Debug)]
enum Event {
    Tick,
    Grow,
    Status {
        peer: u32,
        epoch: u64,
    },
    Reply {
        peer: u32,
        epoch: u64,
        id: RequestId,
        outcome: Outcome,
    },
    Drop {
        peer: u32,
        epoch: u64,
    },
    Reconnect {
        peer: u32,
    },
    Gossip {
        peer: u32,
        epoch: u64,
        height: Height,
    },
    ImportDone {
        id: syncnode_sync::ImportId,
        result: Result<(), ImportError>,
    },
    /// The node's verification of a range answer finished (the peer was told to be free when the
    /// answer arrived, as the node does; the peer may be gone by now).
    Verified {
        id: RequestId,
        blocks: Vec<Block>,
    },
}

struct Sim {
    rng: StdRng,
    now: u64,
    seq: u64,
    queue: BinaryHeap<Reverse<(u64, u64, usize)>>,
    events: HashMap<usize, Event>,
    next_event: usize,
    engine: SyncEngine<u32>,
    config: SyncConfig,
    peers: BTreeMap<u32, SimPeer>,
    scores: PeerScores<u32>,
    charges: Vec<(u32, PeerAction)>,
    net_head: Height,
    /// The node's store: the canonical chain, and blocks of other forks by hash.
    store: BTreeMap<Height, Block>,
    side: HashMap<Hash, Block>,
    head: Height,
    finalized: Height,
    lowest: Height,
    /// Last block of the last forward import emitted (the engine promises each links to it).
    emitted_tip: Hash,
    /// Parent hash of the first block of the last backfill import emitted.
    emitted_low_parent: Hash,
    fork_source: u8,
    checkpoint: Option<Height>,
    backfill_completions: u32,
    trace: bool,
    counts: BTreeMap<String, u64>,
    profile: Profile,
}

/// How hostile a run's network is.
#[derive(Debug, Clone, Copy)]
struct Profile {
    /// Peers `0..honest` are honest with full history; the rest are drawn at random.
    honest: u32,
    /// The random kinds are drawn from `first_kind..12` of the table in `make_peers` (2 and up: no
    /// more honest ones).
    first_kind: u32,
    /// Chance that an import fails for a local reason.
    local_failure: f64,
}

const MIXED: Profile = Profile {
    honest: 2,
    first_kind: 0,
    local_failure: 0.01,
};
const HOSTILE: Profile = Profile {
    honest: 1,
    first_kind: 2,
    local_failure: 0.05,
};

impl Sim {
    fn new(seed: u64, profile: Profile, trace: bool) -> Sim {
        let fx = fixture();
        let mut rng = StdRng::seed_from_u64(seed);
        let config = SyncConfig {
            batch_size: [16, 32, 64][rng.random_range(0..3)],
            window_batches: rng.random_range(2..10),
            backfill_batch_size: 32,
            backfill_window_batches: rng.random_range(1..5),
            request_timeout_ms: 2_000,
            max_request_timeout_ms: 16_000,
            retry_min_delay_ms: 200,
            retry_max_delay_ms: 5_000,
            stall_after_ms: 20_000,
            status_stale_ms: 30_000,
            max_lookup_depth: 16,
            ..SyncConfig::default()
        };
        let net_head = LEN - GROWTH;
        // Where the node starts: from genesis, part-way, or from a checkpoint with backfill.
        let (head, checkpoint) = match rng.random_range(0..4) {
            0 => (0, None),
            1 => (rng.random_range(FORK_B_AT..600), None),
            2 => (rng.random_range(1..400), None),
            _ => {
                let c = rng.random_range(200..900);
                (c, Some(c))
            }
        };
        let mut store = BTreeMap::new();
        store.insert(0, fx.chain[0].clone());
        let lowest = checkpoint.unwrap_or(0);
        for h in lowest..=head {
            store.insert(h, fx.chain[h as usize].clone());
        }
        let local = LocalChain {
            head_height: head,
            head_hash: fx.chain[head as usize].hash(),
            finalized_height: head,
            finality_depth: FINALITY_DEPTH,
            genesis_hash: fx.chain[0].hash(),
            backfill: checkpoint.map(|c| BackfillStart {
                lowest_height: c,
                lowest_parent_hash: fx.chain[c as usize].header.parent_hash,
                floor_height: 0,
            }),
        };
        let engine = SyncEngine::new(config.clone(), local, seed ^ 0x5eed).expect("a valid config");
        let mut sim = Sim {
            rng,
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            events: HashMap::new(),
            next_event: 0,
            engine,
            config,
            peers: BTreeMap::new(),
            scores: PeerScores::new(ScoreConfig::default()),
            charges: Vec::new(),
            net_head,
            store,
            side: HashMap::new(),
            head,
            finalized: head,
            lowest,
            emitted_tip: fx.chain[head as usize].hash(),
            emitted_low_parent: fx.chain[lowest as usize].header.parent_hash,
            fork_source: if head >= FORK_B_AT { 2 } else { 1 },
            checkpoint,
            backfill_completions: 0,
            trace,
            counts: BTreeMap::new(),
            profile,
        };
        sim.make_peers();
        sim
    }

    fn make_peers(&mut self) {
        let count = self.rng.random_range(6..16u32);
        for id in 0..count {
            // `profile.honest` honest peers with full history always; the rest at random.
            let kind = if id < self.profile.honest {
                Kind::Honest
            } else {
                match self.rng.random_range(self.profile.first_kind..12) {
                    0 | 1 => Kind::Honest,
                    2 => Kind::Slow,
                    3 => Kind::Flaky,
                    4 => Kind::HeadLiar,
                    5 => Kind::BadSignature,
                    6 => Kind::WrongHeights,
                    7 => Kind::Fork,
                    8 => Kind::Silent,
                    9 => Kind::ShortFork,
                    _ => Kind::Disconnecting,
                }
            };
            let earliest = if id >= self.profile.honest && self.rng.random_bool(0.3) {
                self.rng.random_range(0..LEN / 2)
            } else {
                0
            };
            let lag = if id >= self.profile.honest && self.rng.random_bool(0.3) {
                self.rng.random_range(0..200)
            } else {
                0
            };
            let latency = match kind {
                Kind::Slow => (500, 6_000),
                _ => (5, 300),
            };
            self.peers.insert(
                id,
                SimPeer {
                    kind,
                    earliest,
                    lag,
                    latency,
                    connected: false,
                    epoch: 0,
                    banned: false,
                },
            );
            let at = self.rng.random_range(0..3_000);
            self.schedule(at, Event::Reconnect { peer: id });
        }
        self.schedule(0, Event::Tick);
        self.schedule(SLOT_MS, Event::Grow);
    }

    fn schedule(&mut self, delay: u64, event: Event) {
        let id = self.next_event;
        self.next_event += 1;
        self.seq += 1;
        self.events.insert(id, event);
        self.queue.push(Reverse((self.now + delay, self.seq, id)));
    }

    fn latency(&mut self, peer: u32) -> u64 {
        let (lo, hi) = self.peers.get(&peer).map_or((5, 300), |p| p.latency);
        self.rng.random_range(lo..=hi)
    }

    fn handle(&mut self, event: Event) -> Result<(), String> {
        match event {
            Event::Tick => {
                self.engine.tick(self.now);
                self.schedule(100, Event::Tick);
            }
            Event::Grow => {
                if self.net_head < LEN {
                    self.net_head += 1;
                    let height = self.net_head;
                    let ids: Vec<u32> = self.peers.keys().copied().collect();
                    for peer in ids {
                        let Some(p) = self.peers.get(&peer) else { continue };
                        if !p.connected || !p.kind.truthful() || p.kind == Kind::ShortFork || p.lag > 0 {
                            continue;
                        }
                        let epoch = p.epoch;
                        let delay = self.latency(peer);
                        if self.rng.random_bool(0.5) {
                            self.schedule(delay, Event::Gossip { peer, epoch, height });
                        }
                        if self.rng.random_bool(0.2) {
                            self.schedule(delay, Event::Status { peer, epoch });
                        }
                    }
                    self.schedule(SLOT_MS, Event::Grow);
                }
            }
            Event::Status { peer, epoch } => {
                if self.connected_epoch(peer, epoch) {
                    let status = self.status_of(&self.peers[&peer]);
                    self.engine.peer_status(self.now, peer, status);
                    self.schedule(10_000, Event::Status { peer, epoch });
                }
            }
            Event::Reconnect { peer } => {
                if let Some(p) = self.peers.get_mut(&peer)
                    && !p.connected
                    && !p.banned
                {
                    p.connected = true;
                    let epoch = p.epoch;
                    self.schedule(5, Event::Status { peer, epoch });
                }
            }
            Event::Drop { peer, epoch } => {
                if self.connected_epoch(peer, epoch) {
                    self.disconnect(peer, false);
                }
            }
            Event::Gossip { peer, epoch, height } => {
                if self.connected_epoch(peer, epoch) {
                    let block = fixture().chain[height as usize].clone();
                    self.engine.gossip_block(self.now, peer, block);
                }
            }
            Event::Reply {
                peer,
                epoch,
                id,
                outcome,
            } => {
                if !self.connected_epoch(peer, epoch) {
                    return Ok(());
                }
                match outcome {
                    Outcome::Fail(failure) => self.engine.request_failed(self.now, id, failure),
                    Outcome::Range(blocks) if !self.verified(&blocks) => {
                        self.engine.response_invalid(self.now, id, "rule 5")
                    }
                    Outcome::Root(blocks) if !self.verified(&blocks) => {
                        self.engine.response_invalid(self.now, id, "rule 5")
                    }
                    Outcome::Range(blocks) => {
                        // Verification takes time off the engine's thread: up to 1 ms per 4 blocks.
                        self.engine.response_received(self.now, id);
                        let delay = self.rng.random_range(0..=blocks.len() as u64 / 4 + 1);
                        self.schedule(delay, Event::Verified { id, blocks });
                    }
                    Outcome::Root(blocks) => self.engine.root_response(self.now, id, blocks),
                }
            }
            Event::ImportDone { id, result } => {
                if self.trace {
                    println!("{:>8} import {id:?} done: {result:?}", self.now);
                }
                self.engine.import_result(self.now, id, result);
                if self.trace {
                    println!("{:>8} engine head {}", self.now, self.engine.head_height());
                }
            }
            Event::Verified { id, blocks } => self.engine.range_response(self.now, id, blocks),
        }
        self.pump()
    }

    fn done(&self) -> bool {
        self.net_head == LEN
            && self.head == LEN
            && self.engine.state() == SyncState::Synced
            && self
                .checkpoint
                .is_none_or(|_| self.engine.backfill_complete() == Some(true))
    }

    fn run(mut self) -> Result<Summary, String> {
        self.pump()?;
        while !self.done() {
            let Some(Reverse((at, _, id))) = self.queue.pop() else {
                return Err("event queue ran dry".into());
            };
            if at > TIME_LIMIT_MS {
                return Err(format!(
                    "no termination by {TIME_LIMIT_MS} ms: head {} of {LEN}, state {:?}, target {}, stats {:?}",
                    self.head,
                    self.engine.state(),
                    self.engine.target(),
                    self.engine.stats()
                ));
            }
            self.now = at;
            if let Some(event) = self.events.remove(&id) {
                self.handle(event)?;
            }
        }
        self.verify_outcome()?;
        Ok(Summary {
            sim_ms: self.now,
            counts: self.counts,
        })
    }

    fn verify_outcome(&self) -> Result<(), String> {
        let fx = fixture();
        for h in 0..=LEN {
            let got = self.store.get(&h).map(Block::hash);
            if got != Some(fx.chain[h as usize].hash()) {
                return Err(format!("height {h} of the final chain differs: {got:?}"));
            }
        }
        if self.checkpoint.is_some() && self.backfill_completions != 1 {
            return Err(format!("backfill completed {} times", self.backfill_completions));
        }
        for (peer, action) in &self.charges {
            let p = &self.peers[peer];
            let data_fault = matches!(
                action,
                PeerAction::InvalidData | PeerAction::ProvenWrong | PeerAction::BrokenPromise
            );
            if p.kind == Kind::Honest {
                return Err(format!("honest peer {peer} charged {action:?}"));
            }
            if p.kind.truthful() && data_fault {
                return Err(format!("truthful peer {peer} ({:?}) charged {action:?}", p.kind));
            }
        }
        for (peer, p) in &self.peers {
            if p.kind == Kind::Honest && p.banned {
                return Err(format!("honest peer {peer} banned"));
            }
        }
        Ok(())
    }
}

struct Summary {
    sim_ms: u64,
    counts: BTreeMap<String, u64>,
}

/// What an action counts as in the run's summary.
fn label(action: &Action<u32>) -> String {
    match action {
        Action::SendRangeRequest { .. } => "range requests".into(),
        Action::SendRootRequest { .. } => "root requests".into(),
        Action::RequestStatus { .. } => "status requests".into(),
        Action::Import {
            direction, blocks, ..
        } if blocks.len() == 1 => format!("{direction:?} single-block imports"),
        Action::Import { direction, .. } => format!("{direction:?} imports"),
        Action::Penalise { action, .. } => format!("charge {action:?}"),
        Action::StateChanged(state) => format!("state {state:?}"),
        Action::TargetChanged(_) => "target changes".into(),
        Action::BackfillComplete { .. } => "backfill completions".into(),
    }
}

fn short(action: &Action<u32>) -> String {
    match action {
        Action::Import {
            id,
            blocks,
            direction,
        } => format!(
            "Import {id:?} {direction:?} {}..={}",
            blocks.first().map_or(0, Block::height),
            blocks.last().map_or(0, Block::height)
        ),
        other => format!("{other:?}"),
    }
}

/// Runs one seed, turning a panic inside the engine into a failure naming the seed.
fn run_seed(seed: u64, profile: Profile, trace: bool) -> Result<Summary, String> {
    std::panic::catch_unwind(|| Sim::new(seed, profile, trace).run()).unwrap_or_else(|panic| {
        let message = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        Err(format!("panicked: {message}"))
    })
}

fn run_seeds(seeds: impl Iterator<Item = u64>, profile: Profile) {
    let started = std::time::Instant::now();
    let mut failures = Vec::new();
    let mut runs = 0u64;
    let mut longest = 0u64;
    let mut totals: BTreeMap<String, u64> = BTreeMap::new();
    for seed in seeds {
        runs += 1;
        match run_seed(seed, profile, false) {
            Ok(summary) => {
                longest = longest.max(summary.sim_ms);
                for (k, v) in summary.counts {
                    *totals.entry(k).or_insert(0) += v;
                }
            }
            Err(error) => {
                println!("seed {seed} failed ({profile:?}): {error}");
                failures.push(seed);
            }
        }
    }
    if runs == 0 {
        return;
    }
    println!(
        "{runs} seeds in {:.1?}, longest run {} s simulated",
        started.elapsed(),
        longest / 1000
    );
    println!("actions over all runs: {totals:#?}");
    assert!(
        failures.is_empty(),
        "failing seeds (add them to REGRESSION_SEEDS): {failures:?}"
    );
}

#[test]
fn many_seeds() {
    fixture();
    if let Some(seed) = std::env::var("SIM_SEED").ok().and_then(|s| s.parse().ok()) {
        let profile = if std::env::var("SIM_HOSTILE").is_ok() {
            HOSTILE
        } else {
            MIXED
        };
        if let Err(error) = run_seed(seed, profile, true) {
            panic!("seed {seed} failed: {error}");
        }
        return;
    }
    let count = std::env::var("SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(500u64);
    run_seeds(0..count, MIXED);
}

/// One honest peer among adversaries, and a flaky store.
#[test]
fn hostile_seeds() {
    let count = std::env::var("SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(500u64);
    run_seeds(10_000..10_000 + count, HOSTILE);
    run_seeds(HOSTILE_REGRESSION_SEEDS.iter().copied(), HOSTILE);
}

#[test]
fn regression_seeds() {
    run_seeds(REGRESSION_SEEDS.iter().copied(), MIXED);
}
