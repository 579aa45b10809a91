//! Hostile peers end to end: a real `syncnode run` process syncs (forward, and backfill from a
//! checkpoint) from one honest seeder among sixteen hostile peers (one per misbehaviour of
//! `syncnode_e2e::hostile`), and a seeding node serves an honest client while twenty clients flood
//! it with maximal range requests.
//!
//! The node must end with exactly the seeder's chain (`db check`, `db export` byte-identical), ban
//! every identity that sent invalid data, never ban the honest seeder, and keep its peak RSS
//! (VmHWM) under a stated bound. The chain is `ADVERSARIAL_BLOCKS` long (short by default, for
//! `make test`, where the backfill scenario also leaves out the two slow peers; `make adversarial`
//! runs the full size with every peer). Figures go to stderr (`--nocapture`).
//!
//! What each misbehaviour costs, by the score policy (`syncnode_proto::peer_score`): a block that
//! breaks a rule, at a wrong height or not asked for is `InvalidData` (-100, banned at once); a
//! batch that does not link is `ProvenWrong` once the honest chain imports (-60, banned); a frame
//! over the limit or undecodable is a `ProtocolViolation` (-30: disconnected, banned on the second,
//! so those peers come back once); silence and trickling are timeouts (-8 each: disconnected after
//! three, never banned here); a Status that claims too much costs a `BrokenPromise` (-5) and the
//! peer's claim is capped; a flood is served or refused (`RATE_LIMITED`, `RESOURCE_UNAVAILABLE`),
//! never charged.

use std::path::Path;
use std::time::{Duration, Instant};

use syncnode_e2e::client::{self, Outcome};
use syncnode_e2e::hostile::{Chain, HostileConfig, HostilePeer, Misbehaviour, PeerStats};
use syncnode_e2e::node::{Node, chain_with_history, http_json, wait_for};
use syncnode_e2e::*;

/// Chain length of the short form run by `make test`: long enough that the sync outlasts the
/// first round of offences, so that the peers that come back (after a disconnection, or under a
/// new identity) are asked again and offend a second time.
const SHORT_BLOCKS: u64 = 10_000;
/// Blocks per range request of the node under test: small, so that every peer gets work.
const BATCH: &str = "16";
/// Peak RSS bound of the node under test while it syncs among hostile peers, in MiB. The sync
/// window is 64 MiB of blocks at most; the rest is the runtime, libp2p and parity-db.
const SYNC_RSS_BOUND_MIB: u64 = 320;
/// Peak RSS bound of a seeder flooded by twenty clients, in MiB.
const SERVE_RSS_BOUND_MIB: u64 = 512;

fn blocks() -> u64 {
    std::env::var("ADVERSARIAL_BLOCKS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(SHORT_BLOCKS)
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn peer_id(node: &Node) -> String {
    node.status().expect("status")["peer_id"]
        .as_str()
        .expect("peer id")
        .to_owned()
}

fn synced_full(height: u64) -> impl Fn(&serde_json::Value) -> bool {
    move |s| {
        s["sync_state"] == "synced"
            && s["head_height"] == height
            && s["earliest_height"] == 0
            && s["backfill_complete"] == true
    }
}

/// Peak RSS (VmHWM) of a running node, in MiB.
fn peak_rss_mib(node: &Node) -> u64 {
    client::memory_kib(node.child.0.id())
        .map(|(hwm, _)| hwm / 1024)
        .expect("/proc status of the node")
}

fn stop_and_compare(node: &mut Node, reference: &[u8], head: u64) {
    assert!(
        node.stop(),
        "{} did not stop cleanly:\n{}",
        node.name,
        node.log_tail(30)
    );
    assert_eq!(db_check_ok(&node.data_dir), head);
    assert!(
        db_export(&node.data_dir, 0, head) == reference,
        "{}'s chain differs from the honest seeder's",
        node.name
    );
}

/// Syncs a node with `extra` flags from the honest seeder alone; returns the time it took.
fn baseline(name: &str, spec: &Path, dir: &Path, seeder: &Node, extra: &[String], head: u64) -> Duration {
    let mut list = args(&["--bootnode", &seeder.multiaddr(), "--batch-size", BATCH]);
    list.extend_from_slice(extra);
    let started = Instant::now();
    let node = Node::start(name, spec, &dir.join(name), &list);
    node.wait_status(
        Duration::from_secs(300),
        "synced from the seeder alone",
        synced_full(head),
    );
    started.elapsed()
}

/// One honest seeder, sixteen hostile peers, one node under test started with `extra` flags.
struct Scenario {
    name: &'static str,
    head: u64,
    reference: Vec<u8>,
    seeder: Node,
    _rt: tokio::runtime::Runtime,
    hostiles: Vec<HostilePeer>,
    node: Node,
    elapsed: Duration,
    baseline: Duration,
}

/// `skip_slow` leaves out the silent and the trickling peer: each costs the node a request
/// deadline (10 s) per batch it holds, which the short form of `make test` cannot afford twice
/// (the forward scenario keeps them; the full size keeps them everywhere).
fn scenario(
    name: &'static str,
    extra: impl Fn(&Node) -> Vec<String>,
    dir: &Path,
    skip_slow: bool,
) -> Scenario {
    let head = blocks();
    let (spec, seed) = chain_with_history(dir, "seed", head, 256);
    let reference = db_export(&seed, 0, head);
    let chain = Chain::from_export(&spec, &reference);
    let seeder = Node::start("seeder", &spec, &seed, &[]);
    let base = baseline("baseline", &spec, dir, &seeder, &extra(&seeder), head);

    let rt = client::runtime();
    let config = HostileConfig {
        max_identities: 4,
        flood_streams: 8,
        flood_for: Duration::from_secs(30),
        ..HostileConfig::default()
    };
    let hostiles: Vec<HostilePeer> = Misbehaviour::ALL
        .iter()
        .filter(|how| !skip_slow || !matches!(how, Misbehaviour::Silent | Misbehaviour::Trickle))
        .map(|how| HostilePeer::spawn(rt.handle(), chain.clone(), *how, config))
        .collect();
    let mut list = args(&["--bootnode", &seeder.multiaddr(), "--batch-size", BATCH]);
    for h in &hostiles {
        list.extend(["--bootnode".to_string(), h.addr.to_string()]);
    }
    list.extend(extra(&seeder));
    let started = Instant::now();
    let node = Node::start(name, &spec, &dir.join(name), &list);
    let node_id = peer_id(&node).parse().expect("peer id");
    let node_addr = node.multiaddr().parse().expect("multiaddr");
    for h in &hostiles {
        h.set_node(node_id, Clone::clone(&node_addr));
    }
    let timeout = Duration::from_secs(60 + head / 20);
    wait_for(timeout, &format!("{name} synced among hostile peers"), || {
        synced_full(head)(&node.status()?).then_some(())
    });
    Scenario {
        name,
        head,
        reference,
        seeder,
        _rt: rt,
        hostiles,
        node,
        elapsed: started.elapsed(),
        baseline: base,
    }
}

impl Scenario {
    fn peers(&self) -> Vec<serde_json::Value> {
        http_json(self.node.http, "/peers")
            .and_then(|v| v.as_array().cloned())
            .expect("/peers")
    }

    fn entry(peers: &[serde_json::Value], id: &str) -> Option<serde_json::Value> {
        peers.iter().find(|p| p["peer_id"] == id).cloned()
    }

    /// Identities that sent invalid data and are not (yet) banned.
    fn unbanned_offenders(&self) -> Vec<String> {
        let peers = self.peers();
        let mut out = Vec::new();
        for h in self.hostiles.iter().filter(|h| h.how.sends_invalid_data()) {
            for (id, stats) in h.lives() {
                let offended = PeerStats::get(&stats.hostile_answers) > 0;
                let banned = Self::entry(&peers, &id.to_string()).is_some_and(|p| p["banned"] == true);
                if offended && !banned {
                    out.push(format!("{:?} {id}", h.how));
                }
            }
        }
        out
    }

    /// Checks bans, the honest seeder's standing, memory and the chain; prints the figures.
    fn check(mut self) {
        // Every misbehaviour that sends invalid data must have been exercised.
        for h in self.hostiles.iter().filter(|h| h.how.sends_invalid_data()) {
            assert!(
                h.total(|s| &s.hostile_answers) > 0,
                "{:?} was never asked for blocks: the scenario did not test it",
                h.how
            );
        }
        self.print_table();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = self.unbanned_offenders();
            if left.is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "offenders not banned: {left:?}\n/peers: {:?}\n{}",
                self.peers(),
                self.node.log_tail(60)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        let peers = self.peers();
        let seeder_id = peer_id(&self.seeder);
        let honest = Self::entry(&peers, &seeder_id).expect("the honest seeder in /peers");
        assert_eq!(honest["banned"], false, "the honest seeder was banned: {honest}");
        assert_eq!(
            honest["connected"], true,
            "the honest seeder was dropped: {honest}"
        );
        assert!(
            honest["score"].as_f64().is_some_and(|s| s > -20.0),
            "the honest seeder lost standing: {honest}"
        );
        let rss = peak_rss_mib(&self.node);
        let reincarnated = self
            .hostiles
            .iter()
            .find(|h| h.how == Misbehaviour::Reincarnating)
            .map(|h| {
                let lives = h.lives();
                let banned = lives
                    .iter()
                    .filter(|(id, _)| {
                        Self::entry(&peers, &id.to_string()).is_some_and(|p| p["banned"] == true)
                    })
                    .count();
                (lives.len(), banned)
            })
            .unwrap_or((0, 0));
        assert!(
            reincarnated.1 >= 2,
            "the reincarnating peer should have been banned under at least two identities: {reincarnated:?}"
        );
        eprintln!(
            "[{}] {} blocks: synced among hostile peers in {:.1} s, from the honest seeder alone in {:.1} s; peak RSS {} MiB (bound {} MiB); reincarnating peer: {} identities, {} banned",
            self.name,
            self.head,
            self.elapsed.as_secs_f64(),
            self.baseline.as_secs_f64(),
            rss,
            SYNC_RSS_BOUND_MIB,
            reincarnated.0,
            reincarnated.1
        );
        assert!(
            rss < SYNC_RSS_BOUND_MIB,
            "peak RSS {rss} MiB over the bound of {SYNC_RSS_BOUND_MIB} MiB"
        );
        self.print_table();
        let head = self.head;
        let reference = std::mem::take(&mut self.reference);
        stop_and_compare(&mut self.node, &reference, head);
    }

    /// What each hostile peer did, and how the node judged its first identity.
    fn print_table(&self) {
        let peers = self.peers();
        for h in &self.hostiles {
            let (id, _) = h.lives()[0];
            let seen = Self::entry(&peers, &id.to_string());
            let (score, banned, connected) = seen.as_ref().map_or((0.0, false, false), |p| {
                (
                    p["score"].as_f64().unwrap_or(0.0),
                    p["banned"] == true,
                    p["connected"] == true,
                )
            });
            eprintln!(
                "[{}]   {:<15} requests {:>4}, hostile answers {:>4}, connections {:>2}: score {:>7.1}, banned {}, connected {}",
                self.name,
                format!("{:?}", h.how),
                h.total(|s| &s.range_requests),
                h.total(|s| &s.hostile_answers),
                h.total(|s| &s.connections),
                score,
                banned,
                connected
            );
        }
    }
}

#[test]
fn forward_sync_among_hostile_peers_ends_with_the_honest_chain() {
    let dir = tempfile::tempdir().expect("tmp");
    scenario("forward", |_| Vec::new(), dir.path(), false).check();
}

#[test]
fn backfill_among_hostile_peers_ends_with_the_honest_chain() {
    let dir = tempfile::tempdir().expect("tmp");
    let checkpoint = move |seeder: &Node| {
        let height = blocks() * 3 / 4;
        let block = http_json(seeder.http, &format!("/blocks/{height}")).expect("checkpoint block");
        let cp = format!("{height}:{}", block["hash"].as_str().expect("hash"));
        args(&["--checkpoint", &cp])
    };
    let short = blocks() <= SHORT_BLOCKS;
    scenario("backfill", checkpoint, dir.path(), short).check();
}

/// Flooding clients of the serving scenario, and the streams each keeps busy.
const FLOODERS: usize = 20;
const FLOOD_STREAMS: usize = 8;
/// The seeder's `max_serving_bytes` (the network's default, 64 MiB).
const SERVING_BYTES_BOUND: u64 = 64 * 1024 * 1024;
/// The seeder's pacer: blocks served per second to all peers together, well below what the
/// flood asks for (160 streams of 1,024 blocks), so it binds throughout.
const SERVE_BLOCKS_PER_SEC: &str = "2000";

#[test]
fn a_flooded_seeder_still_answers_an_honest_client() {
    let head = blocks().min(5000);
    let flood_for = Duration::from_secs(if blocks() > SHORT_BLOCKS { 60 } else { 15 });
    let dir = tempfile::tempdir().expect("tmp");
    // 4 KiB blocks: a maximal request asks for 4 MiB.
    let (spec, seed) = chain_with_history(dir.path(), "seed", head, 4096);
    let status = Chain::from_export(&spec, &db_export(&seed, 0, head)).status();
    let pacer = args(&["--serve-blocks-per-sec", SERVE_BLOCKS_PER_SEC]);
    let seeder = Node::start("seeder", &spec, &seed, &pacer);
    let seeder_id: libp2p::PeerId = peer_id(&seeder).parse().expect("peer id");
    let addr: libp2p::Multiaddr = seeder.multiaddr().parse().expect("addr");
    let rt = client::runtime();

    let connect = |rt: &tokio::runtime::Runtime| {
        let _in_runtime = rt.enter();
        let mut swarm = client::raw_swarm(libp2p::identity::Keypair::generate_ed25519());
        let control = swarm.behaviour().new_control();
        swarm.dial(addr.clone()).expect("dial");
        let (tx, rx) = std::sync::mpsc::channel();
        rt.spawn(async move {
            use futures::StreamExt;
            let mut tx = Some(tx);
            while let Some(event) = swarm.next().await {
                if let libp2p::swarm::SwarmEvent::ConnectionEstablished { .. } = event
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(());
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(10)).expect("connected");
        control
    };

    let until = Instant::now() + flood_for;
    let stats: Vec<_> = (0..FLOODERS)
        .map(|_| {
            let control = connect(&rt);
            let stats = std::sync::Arc::new(PeerStats::default());
            rt.spawn(client::flood(
                control,
                seeder_id,
                status.clone(),
                FLOOD_STREAMS,
                until,
                stats.clone(),
            ));
            stats
        })
        .collect();
    // Let the flood fill every queue before the honest client asks.
    std::thread::sleep(Duration::from_secs(2));
    let mut honest = connect(&rt);
    let mut latencies = Vec::new();
    let mut outcomes = Vec::new();
    let mut round = 0u64;
    while Instant::now() < until {
        round += 1;
        let start = (round * 37) % head;
        let asked = Instant::now();
        let outcome = rt.block_on(client::range_request(
            &mut honest,
            seeder_id,
            start,
            64,
            Duration::from_secs(20),
        ));
        latencies.push(asked.elapsed());
        outcomes.push(outcome);
        std::thread::sleep(Duration::from_millis(250));
    }
    // The maintenance tick (1 s) publishes the serving byte budget's peak.
    std::thread::sleep(Duration::from_millis(1500));
    let held_peak = seeder
        .metric("syncnode_network_serving_bytes_held_peak")
        .expect("serving bytes peak metric") as u64;
    let (hwm, _) = client::memory_kib(seeder.child.0.id()).expect("/proc status");
    let hwm_mib = hwm / 1024;
    let sum = |f: fn(&PeerStats) -> &std::sync::atomic::AtomicU64| {
        stats.iter().map(|s| PeerStats::get(f(s))).sum::<u64>()
    };
    let ok = outcomes
        .iter()
        .filter(|o| matches!(o, Outcome::Ok(n) if *n > 0))
        .count();
    let worst = latencies.iter().max().copied().unwrap_or_default();
    let mut sorted = latencies.clone();
    sorted.sort();
    let median = sorted.get(sorted.len() / 2).copied().unwrap_or_default();
    eprintln!(
        "[serve] {FLOODERS} flooders x {FLOOD_STREAMS} streams for {:?}: sent {}, ok {}, refused {}, failed {}; honest client: {} requests, {} answered with blocks, median {:.0} ms, worst {:.0} ms; seeder paced at {SERVE_BLOCKS_PER_SEC} blocks/s, peak RSS {hwm_mib} MiB (bound {SERVE_RSS_BOUND_MIB} MiB), peak serving bytes held {held_peak} (bound {SERVING_BYTES_BOUND}); outcomes {:?}",
        flood_for,
        sum(|s| &s.flood_sent),
        sum(|s| &s.flood_ok),
        sum(|s| &s.flood_refused),
        sum(|s| &s.flood_failed),
        outcomes.len(),
        ok,
        median.as_secs_f64() * 1000.0,
        worst.as_secs_f64() * 1000.0,
        outcomes
            .iter()
            .filter(|o| !matches!(o, Outcome::Ok(_)))
            .take(10)
            .collect::<Vec<_>>()
    );
    assert!(
        outcomes.len() >= 10,
        "too few honest requests: {}",
        outcomes.len()
    );
    assert!(
        !outcomes.contains(&Outcome::Failed),
        "an honest request went unanswered: {outcomes:?}"
    );
    assert!(
        worst < Duration::from_secs(10),
        "an honest request took {worst:?}, beyond the 10 s deadline"
    );
    assert!(
        ok * 2 >= outcomes.len(),
        "most honest requests must get blocks, not a refusal: {ok} of {}",
        outcomes.len()
    );
    assert!(hwm_mib < SERVE_RSS_BOUND_MIB, "seeder peak RSS {hwm_mib} MiB");
    assert!(
        held_peak > 0 && held_peak <= SERVING_BYTES_BOUND,
        "{held_peak} bytes of blocks held for responses at once (bound {SERVING_BYTES_BOUND})"
    );
}
