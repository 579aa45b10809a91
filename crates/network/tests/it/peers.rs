//! Peer management and gossip: another genesis is banned, bans expire, gossip is validated.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use syncnode_network::{GossipAcceptance, NetworkEvent, PeerAction, PublishError, ScoreConfig};
use syncnode_types::{Block, SigningKey};

use crate::common::*;

/// True when no event matching `pick` arrives within `window`.
async fn quiet(node: &mut TestNode, window: Duration, pick: impl Fn(&NetworkEvent) -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + window;
    loop {
        match tokio::time::timeout_at(deadline, node.events.recv()).await {
            Err(_) => return true,
            Ok(None) => return true,
            Ok(Some(e)) if pick(&e) => return false,
            Ok(Some(_)) => {}
        }
    }
}

#[tokio::test]
async fn another_genesis_is_disconnected_and_banned() {
    let ours = chain("ours", 5, 16);
    let theirs = chain("theirs", 5, 16);
    let mut cfg = test_config(ours[0].hash());
    cfg.score = ScoreConfig {
        ban_duration_ms: 60_000,
        ..ScoreConfig::default()
    };
    let mut a = spawn_node(cfg, Arc::new(MemSource::new(ours))).await;
    let c = spawn_node(test_config(theirs[0].hash()), Arc::new(MemSource::new(theirs))).await;

    c.handle.dial(a.addr.clone()).await.expect("dial starts");
    let summary = a
        .wait_peer("c banned", c.peer_id, |s| s.banned && !s.connected)
        .await;
    assert!(summary.banned);
    // Neither side reports the other as a peer of its chain.
    let c_id = c.peer_id;
    assert!(
        quiet(&mut a, Duration::from_millis(300), |e| {
            matches!(e, NetworkEvent::PeerStatus { peer, .. } if *peer == c_id)
        })
        .await
    );
    // c dials again: refused while the ban lasts.
    let _ = c.handle.dial(a.addr.clone()).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let s = a.summary(c.peer_id).await.expect("remembered");
    assert!(s.banned && !s.connected);
    // a does not dial c either.
    assert!(a.handle.dial(c.addr.clone()).await.is_err());
}

/// Connections `node` refused once their handshake was done (a ban, a limit), as its libp2p
/// metrics count them.
fn denied(node: &TestNode) -> f64 {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &node.registry).expect("encode");
    text.lines()
        .filter(|l| l.contains("connections_incoming_error") && l.contains("error=\"Denied\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn a_ban_expires() {
    let blocks = chain("ban", 5, 16);
    let genesis = blocks[0].hash();
    let ban = Duration::from_secs(3);
    let mut cfg = test_config(genesis);
    cfg.score = ScoreConfig {
        ban_duration_ms: ban.as_millis() as u64,
        ..ScoreConfig::default()
    };
    let mut a = spawn_node(cfg, Arc::new(MemSource::new(blocks.clone()))).await;
    let mut b = spawn_node(test_config(genesis), Arc::new(MemSource::new(blocks.clone()))).await;
    connect(&mut a, &mut b).await;

    // The node reports invalid data: a ban at once.
    let before_ban = std::time::Instant::now();
    a.handle
        .report(b.peer_id, PeerAction::InvalidData, "test: invalid block")
        .await;
    let b_id = b.peer_id;
    a.wait_event("b disconnected", |e| match e {
        NetworkEvent::PeerDisconnected { peer } if *peer == b_id => Some(()),
        _ => None,
    })
    .await;
    assert!(a.summary(b.peer_id).await.expect("known").banned);

    // While banned, b's dial reaches a and is refused.
    let refused = denied(&a);
    let _ = b.handle.dial(a.addr.clone()).await;
    bounded("b's dial refused", async {
        while denied(&a) <= refused {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let s = a.summary(b.peer_id).await.expect("known");
    assert!(s.banned && !s.connected, "a banned peer is not accepted");

    // The ban is lifted by the maintenance tick once it has run out, not before.
    a.wait_peer("ban lifted", b.peer_id, |s| !s.banned).await;
    assert!(
        before_ban.elapsed() >= ban,
        "lifted after {:?}",
        before_ban.elapsed()
    );
    b.handle.dial(a.addr.clone()).await.expect("dial");
    a.wait_status(b.peer_id).await;
    let s = a.summary(b.peer_id).await.expect("known");
    assert!(s.connected && !s.banned);
    assert!(s.score < 0.0, "on probation after a ban, not forgiven");
}

#[tokio::test]
async fn reported_violations_disconnect_before_they_ban() {
    let blocks = chain("score", 5, 16);
    let genesis = blocks[0].hash();
    let mut a = spawn_node(test_config(genesis), Arc::new(MemSource::new(blocks.clone()))).await;
    let mut b = spawn_node(test_config(genesis), Arc::new(MemSource::new(blocks.clone()))).await;
    connect(&mut a, &mut b).await;
    for _ in 0..2 {
        a.handle
            .report(b.peer_id, PeerAction::Timeout, "test: timeout")
            .await;
    }
    let s = a.wait_peer("score", b.peer_id, |s| s.score < -15.0).await;
    assert!(s.connected, "two timeouts keep the peer");
    a.handle
        .report(b.peer_id, PeerAction::Timeout, "test: timeout")
        .await;
    let s = a.wait_peer("disconnect", b.peer_id, |s| !s.connected).await;
    assert!(!s.banned, "timeouts alone disconnect, never ban");
}

fn child_block(parent: &Block, payload: &'static [u8]) -> Block {
    Block::new_signed(
        parent.height() + 1,
        parent.hash(),
        parent.header.timestamp_ms + 1000,
        Bytes::from_static(payload),
        &SigningKey::dev(0),
    )
}

#[tokio::test]
async fn gossip_is_forwarded_only_after_validation() {
    let blocks = chain("gossip", 3, 16);
    let genesis = blocks[0].hash();
    let src = Arc::new(MemSource::new(blocks.clone()));
    let mut a = spawn_node(test_config(genesis), src.clone()).await;
    let mut b = spawn_node(test_config(genesis), src.clone()).await;
    let mut c = spawn_node(test_config(genesis), src.clone()).await;
    // A line a — b — c: c hears a's blocks only through b.
    connect(&mut b, &mut a).await;
    connect(&mut c, &mut b).await;

    let block = child_block(&blocks[3], b"first");
    // Publish once a knows b's subscription (meshes form on the 100 ms heartbeat).
    bounded("a publishes", async {
        loop {
            match a.handle.publish(block.clone()).await {
                Ok(()) => break,
                Err(PublishError::NoPeers) => tokio::time::sleep(Duration::from_millis(100)).await,
                Err(e) => panic!("publish: {e}"),
            }
        }
    })
    .await;
    let a_id = a.peer_id;
    let (message_id, got) = b
        .wait_event("b receives the block", |e| match e {
            NetworkEvent::GossipBlock {
                peer,
                message_id,
                block,
            } if *peer == a_id => Some((message_id.clone(), block.clone())),
            _ => None,
        })
        .await;
    assert_eq!(got, block);
    assert_eq!(
        message_id.0,
        syncnode_types::Hash::of(&syncnode_network::gossip::encode_block(&block))
            .0
            .to_vec(),
        "message id is BLAKE3 of the published bytes"
    );

    // Not forwarded while b has not validated it.
    assert!(
        quiet(&mut c, Duration::from_millis(700), |e| {
            matches!(e, NetworkEvent::GossipBlock { .. })
        })
        .await,
        "forwarded before validation"
    );
    b.handle
        .report_gossip(message_id, a.peer_id, GossipAcceptance::Accept)
        .await;
    let b_id = b.peer_id;
    let got = c
        .wait_event("c receives the block via b", |e| match e {
            NetworkEvent::GossipBlock { peer, block, .. } if *peer == b_id => Some(block.clone()),
            _ => None,
        })
        .await;
    assert_eq!(got, block);

    // Publishing the same block again is a duplicate.
    assert_eq!(a.handle.publish(block).await, Err(PublishError::Duplicate));
}

/// The peers `node` has connections to.
async fn connected(node: &TestNode) -> Vec<libp2p::PeerId> {
    let peers = node.handle.peers().await;
    peers
        .into_iter()
        .filter(|s| s.connected)
        .map(|s| s.peer_id)
        .collect()
}

/// Polls until `node` is connected to exactly `want` (in any order).
async fn wait_connected(node: &TestNode, what: &str, mut want: Vec<libp2p::PeerId>) {
    want.sort();
    bounded(what, async {
        loop {
            let mut now = connected(node).await;
            now.sort();
            if now == want {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn a_full_node_lets_a_few_newcomers_in_for_their_grace_then_prunes_them() {
    let blocks = chain("full", 3, 16);
    let genesis = blocks[0].hash();
    let src = Arc::new(MemSource::new(blocks));
    let mut cfg = test_config(genesis);
    cfg.max_peers = 1;
    cfg.excess_inbound = 1;
    cfg.excess_grace = Duration::from_secs(2);
    let mut a = spawn_node(cfg, src.clone()).await;
    let mut b = spawn_node(test_config(genesis), src.clone()).await;
    let mut c = spawn_node(test_config(genesis), src.clone()).await;
    let d = spawn_node(test_config(genesis), src.clone()).await;
    connect(&mut a, &mut b).await;

    // c comes over the limit: let in, it speaks with a during its grace.
    connect(&mut a, &mut c).await;
    // d finds the one excess slot taken.
    let _ = d.handle.dial(a.addr.clone()).await;
    let d_id = d.peer_id;
    assert!(
        quiet(&mut a, Duration::from_millis(700), |e| {
            matches!(e, NetworkEvent::PeerStatus { peer, .. } if *peer == d_id)
        })
        .await,
        "no one beyond max_peers + excess_inbound"
    );
    let mut both = vec![b.peer_id, c.peer_id];
    both.sort();
    let mut now = connected(&a).await;
    now.sort();
    assert_eq!(now, both, "the newcomer is kept during its grace");
    // After the grace, the newest of the equal inbound peers goes.
    wait_connected(&a, "the excess peer pruned", vec![b.peer_id]).await;
}

#[tokio::test]
async fn a_newcomer_whose_only_bootnode_is_full_still_ends_connected_to_others() {
    let blocks = chain("crowded", 3, 16);
    let genesis = blocks[0].hash();
    let src = Arc::new(MemSource::new(blocks));
    let mut cfg = test_config(genesis);
    cfg.kademlia = true;
    cfg.discovery_interval = Duration::from_millis(500);
    cfg.excess_grace = Duration::from_secs(3);
    let mut boot_cfg = cfg.clone();
    boot_cfg.max_peers = 2;
    let boot = spawn_node(boot_cfg, src.clone()).await;
    cfg.bootnodes = vec![boot.addr.clone()];
    let mut running = Vec::new();
    for _ in 0..2 {
        cfg.keypair = libp2p::identity::Keypair::generate_ed25519();
        let node = spawn_node(cfg.clone(), src.clone()).await;
        boot.wait_peer("a peer of the bootnode", node.peer_id, |s| s.connected)
            .await;
        running.push(node);
    }
    let others: Vec<_> = running.iter().map(|n| n.peer_id).collect();
    // The bootnode is full; the newcomer knows no one else.
    cfg.keypair = libp2p::identity::Keypair::generate_ed25519();
    let newcomer = spawn_node(cfg, src.clone()).await;
    bounded("the newcomer connected to a peer besides its bootnode", async {
        loop {
            let now = connected(&newcomer).await;
            if now.iter().any(|p| others.contains(p)) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    // The bootnode goes back to its limit, and the newcomer keeps the others.
    // The newcomer learns of the prune when the closed connection reaches it, a moment later.
    wait_connected(&boot, "the bootnode back at its limit", others.clone()).await;
    bounded(
        "the newcomer pruned by the bootnode, keeping the peers it found",
        async {
            loop {
                let kept = connected(&newcomer).await;
                if !kept.contains(&boot.peer_id) {
                    assert!(
                        kept.iter().any(|p| others.contains(p)),
                        "the newcomer keeps the peers it found: {kept:?}"
                    );
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        },
    )
    .await;
}

#[tokio::test]
async fn quic_transport_carries_the_protocols() {
    let blocks = chain("quic", 8, 16);
    let genesis = blocks[0].hash();
    let src = Arc::new(MemSource::new(blocks));
    let mut cfg = test_config(genesis);
    cfg.listen = vec!["/ip4/127.0.0.1/udp/0/quic-v1".parse().expect("addr")];
    let mut a = spawn_node_at(cfg, src.clone(), "/quic-v1").await;
    let mut b = spawn_node(test_config(genesis), src.clone()).await;
    connect(&mut a, &mut b).await;
    let req = syncnode_network::BlocksByRangeRequest::new(1, 8).expect("valid");
    let resp = b.handle.request_range(a.peer_id, req).await.expect("answer");
    assert_eq!(resp.blocks.len(), 8);
}

#[tokio::test]
async fn kademlia_finds_peers_through_a_bootnode() {
    let blocks = chain("kad", 3, 16);
    let genesis = blocks[0].hash();
    let src = Arc::new(MemSource::new(blocks));
    let mut cfg = test_config(genesis);
    cfg.kademlia = true;
    cfg.discovery_interval = Duration::from_millis(500);
    let boot = spawn_node(cfg.clone(), src.clone()).await;
    cfg.bootnodes = vec![boot.addr.clone()];
    cfg.keypair = libp2p::identity::Keypair::generate_ed25519();
    let b = spawn_node(cfg.clone(), src.clone()).await;
    cfg.keypair = libp2p::identity::Keypair::generate_ed25519();
    let mut c = spawn_node(cfg, src.clone()).await;
    // c knows only the bootnode; it learns of b through the DHT and dials it.
    c.wait_status(b.peer_id).await;
}

#[tokio::test]
async fn undecodable_gossip_is_rejected_and_charged() {
    use futures::StreamExt;
    use libp2p::{gossipsub, noise, tcp, yamux};

    let blocks = chain("junk", 3, 16);
    let genesis = blocks[0].hash();
    let mut a = spawn_node(test_config(genesis), Arc::new(MemSource::new(blocks))).await;

    // A plain gossipsub peer on the blocks topic that publishes bytes that are not a Block.
    let mut junk = libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(tcp::Config::default(), noise::Config::new, yamux::Config::default)
        .expect("tcp")
        .with_behaviour(|key| {
            let config = gossipsub::ConfigBuilder::default()
                .heartbeat_interval(Duration::from_millis(100))
                .build()
                .expect("config");
            let behaviour: gossipsub::Behaviour =
                gossipsub::Behaviour::new(gossipsub::MessageAuthenticity::Signed(key.clone()), config)
                    .expect("gossipsub");
            behaviour
        })
        .expect("behaviour")
        .build();
    let junk_id = *junk.local_peer_id();
    let topic = gossipsub::IdentTopic::new(syncnode_proto::gossip_topic(&genesis));
    junk.behaviour_mut().subscribe(&topic).expect("subscribe");
    junk.dial(a.addr.clone()).expect("dial");
    bounded("junk published", async {
        loop {
            tokio::select! {
                _ = junk.select_next_some() => {}
                _ = tokio::time::sleep(Duration::from_millis(100)) => {
                    if junk.behaviour_mut().publish(topic.clone(), vec![0xff, 0xff, 0x01]).is_ok() {
                        break;
                    }
                }
            }
        }
    })
    .await;
    // Keep the junk peer's swarm running while the node judges the message.
    let driver = tokio::spawn(async move {
        loop {
            junk.select_next_some().await;
        }
    });
    let s = a
        .wait_peer("junk sender charged", junk_id, |s| s.score <= -20.0)
        .await;
    assert!(!s.banned);
    assert!(
        quiet(&mut a, Duration::from_millis(200), |e| matches!(
            e,
            NetworkEvent::GossipBlock { .. }
        ))
        .await,
        "junk never reaches the node as a block"
    );
    driver.abort();
}

/// Gossipsub's own score is on: a peer whose message the node rejects (here without the node's
/// score book being told, so only gossipsub acts) falls below zero and is pruned from the mesh.
#[tokio::test]
async fn a_rejected_sender_loses_its_mesh_place_by_gossipsub_score() {
    use futures::StreamExt;
    use libp2p::{gossipsub, noise, tcp, yamux};

    let blocks = chain("meshscore", 3, 16);
    let genesis = blocks[0].hash();
    let mut a = spawn_node(test_config(genesis), Arc::new(MemSource::new(blocks.clone()))).await;
    let mut x = libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(tcp::Config::default(), noise::Config::new, yamux::Config::default)
        .expect("tcp")
        .with_behaviour(|key| {
            let config = gossipsub::ConfigBuilder::default()
                .heartbeat_interval(Duration::from_millis(100))
                .message_id_fn(|m: &gossipsub::Message| syncnode_network::gossip::message_id(&m.data))
                .build()
                .expect("config");
            let behaviour: gossipsub::Behaviour =
                gossipsub::Behaviour::new(gossipsub::MessageAuthenticity::Signed(key.clone()), config)
                    .expect("gossipsub");
            behaviour
        })
        .expect("behaviour")
        .build();
    let x_id = *x.local_peer_id();
    let topic = gossipsub::IdentTopic::new(syncnode_proto::gossip_topic(&genesis));
    x.behaviour_mut().subscribe(&topic).expect("subscribe");
    x.dial(a.addr.clone()).expect("dial");
    let a_id = a.peer_id;
    let in_mesh =
        |x: &libp2p::Swarm<gossipsub::Behaviour>| x.behaviour().mesh_peers(&topic.hash()).any(|p| *p == a_id);
    bounded("x and a in one mesh", async {
        while !in_mesh(&x) {
            x.select_next_some().await;
        }
    })
    .await;
    let block = child_block(&blocks[3], b"judged invalid");
    x.behaviour_mut()
        .publish(topic.clone(), syncnode_network::gossip::encode_block(&block))
        .expect("publish");
    let driver = async {
        loop {
            x.select_next_some().await;
        }
    };
    let message_id = tokio::select! {
        id = a.wait_event("a receives x's block", |e| match e {
            NetworkEvent::GossipBlock { peer, message_id, .. } if *peer == x_id => Some(message_id.clone()),
            _ => None,
        }) => id,
        _ = driver => unreachable!("the driver loops"),
    };
    assert!(a.handle.gossip_score(x_id).await.is_some_and(|s| s >= 0.0));
    a.handle
        .report_gossip(message_id, x_id, GossipAcceptance::Reject)
        .await;
    // A PRUNE changes x's mesh without a swarm event: look again at least every 50 ms.
    bounded("x pruned from a's mesh", async {
        while in_mesh(&x) {
            let _ = tokio::time::timeout(Duration::from_millis(50), x.select_next_some()).await;
        }
    })
    .await;
    let score = a.handle.gossip_score(x_id).await.expect("x is scored");
    assert!(score <= -70.0, "one invalid message costs about 100, got {score}");
    let s = a.summary(x_id).await.expect("x known");
    assert!(s.connected && !s.banned, "only gossipsub acted: {s:?}");
}

#[tokio::test]
async fn one_ip_cannot_bring_identities_without_end() {
    let blocks = chain("per-ip", 5, 16);
    let mut cfg = test_config(blocks[0].hash());
    // Loopback is exempt by default; here it stands for a host on the internet.
    cfg.ip_limits.exempt_loopback = false;
    cfg.ip_limits.max_peers_per_ip = 2;
    let a = spawn_node(cfg, Arc::new(MemSource::new(blocks))).await;
    let mut clients = Vec::new();
    for _ in 0..2 {
        let client = RawClient::connect(&a.addr).await;
        a.wait_peer("an identity within the limit", client.peer_id, |s| s.connected)
            .await;
        clients.push(client);
    }
    let refused = denied(&a);
    let third = RawClient::connect(&a.addr).await;
    bounded("the third identity refused", async {
        while denied(&a) <= refused {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(a.summary(third.peer_id).await.is_none_or(|s| !s.connected));
    // The first two stay connected.
    for c in &clients {
        assert!(a.summary(c.peer_id).await.is_some_and(|s| s.connected));
    }
}

#[tokio::test]
async fn loopback_is_exempt_from_the_per_ip_limits() {
    let blocks = chain("per-ip-loopback", 5, 16);
    let mut cfg = test_config(blocks[0].hash());
    cfg.ip_limits.max_peers_per_ip = 1;
    let a = spawn_node(cfg, Arc::new(MemSource::new(blocks))).await;
    let mut clients = Vec::new();
    for _ in 0..3 {
        let client = RawClient::connect(&a.addr).await;
        a.wait_peer("a loopback identity", client.peer_id, |s| s.connected)
            .await;
        clients.push(client);
    }
}

/// `try_request_status` fetches a peer's Status at once, not at the next status interval.
#[tokio::test]
async fn a_status_requested_now_arrives_before_the_interval() {
    let blocks = chain("ours", 5, 16);
    let source = Arc::new(MemSource::new(blocks.clone()));
    let mut cfg = test_config(blocks[0].hash());
    cfg.status_interval = Duration::from_secs(3600);
    let mut a = spawn_node(cfg, source.clone()).await;
    let mut b = spawn_node(test_config(blocks[0].hash()), source).await;
    connect(&mut a, &mut b).await;
    // Both ends ask for a Status on connect: a hears b's twice (b's request, b's answer).
    a.wait_status(b.peer_id).await;
    b.status.send_modify(|s| s.head_height += 7);
    let moved = b.status.borrow().head_height;
    assert!(a.handle.try_request_status(b.peer_id));
    let b_id = b.peer_id;
    let fresh = a
        .wait_event("b's fresh status", |e| match e {
            NetworkEvent::PeerStatus { peer, status } if *peer == b_id && status.head_height == moved => {
                Some(*status)
            }
            _ => None,
        })
        .await;
    assert_eq!(fresh.head_height, moved);
}
