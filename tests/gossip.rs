//! Gossip among hostile gossipsub peers, end to end: a real `syncnode run` process, and real
//! gossipsub peers (`support::gossip`) that announce blocks to it, honestly or not.
//!
//! The node holds blocks 0..=20 of a chain; an honest announcer holds the chain to height 60
//! and announces its blocks one by one while claiming in its Status only what it announced, so
//! the node can learn them only by gossip (the next Status poll is 30 s away). Each test checks
//! that the node follows an honest announcement within a second of it, whatever the hostile
//! peers do, and that the honest announcer is never charged. The flood figures (announcements
//! sent, time to cut off, node CPU seconds from /proc) are printed on stderr.

use std::time::{Duration, Instant};

use syncnode_e2e::gossip::{
    GossipPeer, bad_signature, far_ahead, forged_copy, other_chain, status_at, undecodable, wrong_proposer,
};
use syncnode_e2e::hostile::Chain;
use syncnode_e2e::node::{Node, http_get, http_json, now_s, wait_for};
use syncnode_e2e::{client, db_export, generate, write_spec};
use syncnode_network::gossip::encode_block;
use syncnode_types::{Block, DevChain};

/// How soon after its announcement the node must hold an honest block.
const FOLLOW_WITHIN: Duration = Duration::from_secs(1);
/// The node's head at start; the announcer holds the chain to `FULL`.
const START: u64 = 20;
const FULL: u64 = 60;

struct Net {
    _dir: tempfile::TempDir,
    node: Node,
    blocks: Vec<Block>,
    dev: DevChain,
}

impl Net {
    /// A node on blocks 0..=START of a one-authority chain whose blocks 0..=FULL lie in the past.
    fn start() -> Net {
        let dir = tempfile::tempdir().expect("tempdir");
        let genesis_ms = ((now_s() - 300) * 1000).to_string();
        let spec = write_spec(
            dir.path(),
            "gossip",
            1,
            &["--genesis-timestamp-ms", &genesis_ms, "--slot-ms", "1000"],
        );
        let full = dir.path().join("full");
        generate(&spec, &full, FULL, 256);
        let chain = Chain::from_export(&spec, &db_export(&full, 0, FULL));
        let data = dir.path().join("node");
        generate(&spec, &data, START, 256);
        let node = Node::start("node", &spec, &data, &[]);
        let head_hash = node
            .status()
            .and_then(|s| s["head_hash"].as_str().map(str::to_owned));
        assert_eq!(
            head_hash.as_deref(),
            Some(chain.blocks[START as usize].hash().to_string().as_str()),
            "the node's store is a prefix of the announcer's chain"
        );
        let dev = DevChain::new(&chain.spec).expect("dev chain");
        Net {
            _dir: dir,
            node,
            blocks: chain.blocks.clone(),
            dev,
        }
    }

    fn block(&self, h: u64) -> &Block {
        &self.blocks[h as usize]
    }

    /// A gossip peer connected to the node that claims our start head in its Status and serves
    /// `blocks` by root.
    fn peer(&self, rt: &tokio::runtime::Runtime, blocks: Vec<Block>) -> GossipPeer {
        let addr = self.node.multiaddr().parse().expect("multiaddr");
        let peer = GossipPeer::spawn(
            rt.handle(),
            addr,
            status_at(self.block(0), self.block(START)),
            blocks,
        );
        peer.wait_subscribed(Duration::from_secs(20));
        peer
    }

    /// The announcer publishes block `h`; returns how long after that the node's head reached
    /// `h`.
    fn announce_and_follow(&self, announcer: &GossipPeer, h: u64) -> Duration {
        let data = encode_block(self.block(h));
        let started = Instant::now();
        announcer.publish(data).expect("the announcer publishes");
        wait_for(
            Duration::from_secs(10),
            &format!("the node to follow block {h}"),
            || (self.node.status_u64("head_height")? >= h).then_some(()),
        );
        let took = started.elapsed();
        announcer.set_head(self.block(h));
        took
    }

    /// `/peers` entry of `peer`.
    fn peer_entry(&self, peer: &GossipPeer) -> Option<serde_json::Value> {
        let id = peer.peer_id.to_string();
        http_json(self.node.http, "/peers")?
            .as_array()?
            .iter()
            .find(|p| p["peer_id"].as_str() == Some(id.as_str()))
            .cloned()
    }

    /// Counters of `syncnode_network_gossip_blocks` by kind (received, undecodable, dropped).
    fn gossip_counts(&self) -> String {
        let (_, body) = http_get(self.node.http, "/metrics").unwrap_or_default();
        body.lines()
            .filter(|l| l.starts_with("syncnode_network_gossip_blocks"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Asserts the node never charged `peer` and still holds it connected.
    fn assert_uncharged(&self, peer: &GossipPeer, who: &str) {
        let entry = self.peer_entry(peer).unwrap_or_else(|| panic!("{who} is a peer"));
        assert_eq!(entry["banned"], false, "{who} banned: {entry}");
        assert_eq!(entry["connected"], true, "{who} disconnected: {entry}");
        let score = entry["score"].as_f64().unwrap_or(f64::NAN);
        assert!(score >= 0.0, "{who} charged: {entry}");
    }

    fn assert_banned(&self, peer: &GossipPeer, who: &str) {
        let entry = wait_for(Duration::from_secs(5), &format!("{who} banned"), || {
            self.peer_entry(peer).filter(|e| e["banned"] == true)
        });
        assert_eq!(entry["connected"], false, "{who} still connected: {entry}");
    }
}

/// CPU seconds (user + system) process `pid` has used, from /proc/PID/stat.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc stat");
    // Fields after the command name (which ends with ')'): utime and stime are 12th and 13th.
    let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>().expect("utime") + fields[12].parse::<f64>().expect("stime");
    let hz = std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .unwrap_or(100.0);
    ticks / hz
}

#[test]
fn a_forged_copy_announced_first_does_not_delay_the_real_block() {
    let net = Net::start();
    let rt = client::runtime();
    let announcer = net.peer(&rt, net.blocks.clone());
    let mut forgers = Vec::new();
    for h in START + 1..=START + 3 {
        let forger = net.peer(&rt, Vec::new());
        forger
            .publish(forged_copy(net.block(h)))
            .expect("the forger publishes");
        // The node has judged the forged copy once it cut the forger off.
        wait_for(Duration::from_secs(10), "the forger cut off", || {
            forger.cut_off_at()
        });
        let took = net.announce_and_follow(&announcer, h);
        eprintln!("gossip: block {h} followed {took:?} after its announcement; a forged copy came first");
        assert!(
            took < FOLLOW_WITHIN,
            "block {h} took {took:?} after a forged copy:\n{}",
            net.node.log_tail(30)
        );
        forgers.push(forger);
    }
    for (i, forger) in forgers.iter().enumerate() {
        net.assert_banned(forger, &format!("forger {i}"));
    }
    net.assert_uncharged(&announcer, "the honest announcer");
}

/// The messages of a flood: `n` announcements cycling through rule 5, rule 4, another chain's
/// block, undecodable bytes, and blocks far ahead of the head.
fn flood_messages(net: &Net, n: u64) -> Vec<Vec<u8>> {
    let head = net.block(START).header;
    (0..n)
        .map(|i| match i % 5 {
            0 => bad_signature(&net.dev, &head, i),
            1 => wrong_proposer(&head, i),
            2 => other_chain(i),
            3 => undecodable(i),
            _ => far_ahead(&net.dev, &head, 1000, i),
        })
        .collect()
}

#[test]
fn a_flood_of_invalid_announcements_is_cut_off_while_honest_ones_flow() {
    let net = Net::start();
    let rt = client::runtime();
    let announcer = net.peer(&rt, net.blocks.clone());
    // In the node's mesh before the flood, still there after it: gossipsub did not charge it.
    announcer.wait_in_mesh(Duration::from_secs(10));
    let flooder = net.peer(&rt, Vec::new());
    let messages = flood_messages(&net, 500);
    let pid = net.node.child.0.id();
    let cpu_before = cpu_seconds(pid);
    let started = Instant::now();
    let sent = std::thread::scope(|s| {
        let flood = s.spawn(|| flooder.flood(messages));
        for h in START + 1..=START + 5 {
            let took = net.announce_and_follow(&announcer, h);
            eprintln!("gossip flood: honest block {h} followed {took:?} after its announcement");
            assert!(took < FOLLOW_WITHIN, "block {h} took {took:?} during the flood");
            std::thread::sleep(Duration::from_millis(200));
        }
        flood.join().expect("flood thread")
    });
    let cut_off = flooder
        .cut_off_at()
        .map(|at| at.saturating_duration_since(started))
        .expect("the flooder is cut off");
    let cpu = cpu_seconds(pid) - cpu_before;
    let wall = started.elapsed();
    eprintln!(
        "gossip flood: {sent} announcements sent, flooder cut off after {cut_off:?}, node CPU {cpu:.2} s over {wall:.1?}; node counters: {}",
        net.gossip_counts()
    );
    net.assert_banned(&flooder, "the flooder");
    net.assert_uncharged(&announcer, "the honest announcer");
    assert!(announcer.node_in_mesh(), "the node pruned the honest announcer");
    assert!(sent >= 1, "the flood started");
    assert!(cut_off < Duration::from_secs(2), "cut off after {cut_off:?}");
    assert!(cpu < 3.0, "node CPU {cpu:.2} s during the flood");
}

#[test]
fn blocks_far_ahead_are_ignored_cheaply_and_not_charged() {
    let net = Net::start();
    let rt = client::runtime();
    let announcer = net.peer(&rt, net.blocks.clone());
    let sender = net.peer(&rt, Vec::new());
    let head = net.block(START).header;
    let messages: Vec<Vec<u8>> = (0..500)
        .map(|i| far_ahead(&net.dev, &head, 1000 + i, i))
        .collect();
    let pid = net.node.child.0.id();
    let cpu_before = cpu_seconds(pid);
    let started = Instant::now();
    let sent = sender.flood(messages);
    let took = net.announce_and_follow(&announcer, START + 1);
    std::thread::sleep(Duration::from_secs(1));
    let cpu = cpu_seconds(pid) - cpu_before;
    eprintln!(
        "gossip far ahead: {sent} announcements sent, honest block followed {took:?} after its announcement, node CPU {cpu:.2} s over {:.1?}",
        started.elapsed()
    );
    assert_eq!(sent, 500);
    assert!(took < FOLLOW_WITHIN, "honest block took {took:?}");
    assert_eq!(net.node.status_u64("head_height"), Some(START + 1));
    // Far ahead is no proof of fault (we may be behind): ignored, never charged.
    net.assert_uncharged(&sender, "the far-ahead sender");
    net.assert_uncharged(&announcer, "the honest announcer");
    assert!(cpu < 3.0, "node CPU {cpu:.2} s for 500 ignored blocks");
}

/// A producer whose clock runs ahead announces a block beyond rule 6 of our clock: the node
/// ignores it and does not charge the producer, who may have followed its own clock honestly.
#[test]
fn a_block_beyond_rule_6_is_ignored_and_its_announcer_not_charged() {
    let net = Net::start();
    let rt = client::runtime();
    let announcer = net.peer(&rt, net.blocks.clone());
    let parent = net.block(START);
    let early = Block::new_signed(
        START + 1,
        parent.hash(),
        now_s() * 1000 + 20_000,
        bytes::Bytes::from_static(b"from a clock 20 s ahead"),
        net.dev.key_at(START + 1),
    );
    announcer
        .publish(encode_block(&early))
        .expect("the announcer publishes");
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(net.node.status_u64("head_height"), Some(START));
    net.assert_uncharged(&announcer, "the announcer of an early block");
    let took = net.announce_and_follow(&announcer, START + 1);
    assert!(took < FOLLOW_WITHIN, "the next block took {took:?}");
}
