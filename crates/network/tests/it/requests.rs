//! Status exchange and the block protocols answered as PROTOCOL.md says.

use std::sync::Arc;
use std::time::{Duration, Instant};

use syncnode_network::{BlocksByRangeRequest, BlocksByRootRequest, Quota, RequestError};
use syncnode_proto::MAX_RESPONSE_FRAME;
use syncnode_proto::convert::{ResponseCode, encoded_block_field_len};
use syncnode_types::{Block, Hash, MAX_PAYLOAD_BYTES};

use crate::common::*;

#[tokio::test]
async fn status_is_exchanged_on_connect_and_repeated() {
    let chain_a = chain("status", 30, 16);
    let genesis = chain_a[0].hash();
    let src_a = Arc::new(MemSource::new(chain_a));
    let src_b = Arc::new(MemSource::new(chain("status", 5, 16)));
    let mut cfg = test_config(genesis);
    cfg.status_interval = Duration::from_millis(300);
    cfg.rate_limits.status = Quota::new(100, 100.0);
    let mut a = spawn_node(cfg.clone(), src_a.clone()).await;
    cfg.keypair = libp2p::identity::Keypair::generate_ed25519();
    let mut b = spawn_node(cfg, src_b.clone()).await;

    b.handle.dial(a.addr.clone()).await.expect("dial");
    let seen_by_b = b.wait_status(a.peer_id).await;
    assert_eq!(seen_by_b, src_a.status());
    let seen_by_a = a.wait_status(b.peer_id).await;
    assert_eq!(seen_by_a, src_b.status());

    // The node's watch is what peers see; and Status is re-sent on the interval.
    let mut newer = src_a.status();
    newer.head_height = 31;
    a.status.send(newer).expect("watch");
    let start = Instant::now();
    let again = b
        .wait_event("a repeated status", |e| match e {
            syncnode_network::NetworkEvent::PeerStatus { peer, status }
                if *peer == a.peer_id && status.head_height == 31 =>
            {
                Some(*status)
            }
            _ => None,
        })
        .await;
    assert_eq!(again.head_height, 31);
    assert!(start.elapsed() < Duration::from_secs(5));

    let summary = b.wait_peer("a's summary", a.peer_id, |s| s.agent.is_some()).await;
    assert!(summary.connected);
    assert_eq!(
        summary.agent.as_deref(),
        Some(concat!("syncnode/", env!("CARGO_PKG_VERSION")))
    );

    // Metrics are registered and counted.
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &a.registry).expect("encode");
    assert!(text.contains("syncnode_network_requests_total"), "{text}");
    assert!(text.contains("libp2p_"), "libp2p metrics registered");
}

#[tokio::test]
async fn range_and_root_requests_follow_the_protocol() {
    let blocks = chain("serve", 50, 64);
    let genesis = blocks[0].hash();
    let src = Arc::new(MemSource::new(blocks.clone()));
    let mut a = spawn_node(test_config(genesis), src.clone()).await;
    let mut b = spawn_node(
        test_config(genesis),
        Arc::new(MemSource::new(blocks[..1].to_vec())),
    )
    .await;
    connect(&mut a, &mut b).await;

    let heights = |bs: &[Block]| bs.iter().map(Block::height).collect::<Vec<_>>();
    let req = BlocksByRangeRequest::new(10, 5).expect("valid");
    let resp = b
        .handle
        .request_range(a.peer_id, req)
        .await
        .expect("range answer");
    assert_eq!(resp.code, ResponseCode::Ok);
    assert_eq!(heights(&resp.blocks), vec![10, 11, 12, 13, 14]);
    assert_eq!(resp.blocks[0], blocks[10]);

    // Stops at the head.
    let req = BlocksByRangeRequest::new(45, 100).expect("valid");
    let resp = b
        .handle
        .request_range(a.peer_id, req)
        .await
        .expect("range answer");
    assert_eq!(heights(&resp.blocks), vec![45, 46, 47, 48, 49, 50]);

    // Beyond the head: OK with no blocks.
    let req = BlocksByRangeRequest::new(1000, 10).expect("valid");
    let resp = b
        .handle
        .request_range(a.peer_id, req)
        .await
        .expect("range answer");
    assert_eq!(resp.code, ResponseCode::Ok);
    assert!(resp.blocks.is_empty());

    // By root: request order, missing ones skipped.
    let hashes = vec![blocks[7].hash(), Hash::of(b"unknown"), blocks[3].hash()];
    let req = BlocksByRootRequest::new(hashes).expect("valid");
    let resp = b.handle.request_roots(a.peer_id, req).await.expect("root answer");
    assert_eq!(resp.blocks, vec![blocks[7].clone(), blocks[3].clone()]);

    // To a peer we are not connected to: Disconnected at once.
    let stranger = libp2p::PeerId::random();
    let req = BlocksByRangeRequest::new(1, 1).expect("valid");
    assert_eq!(
        b.handle.request_range(stranger, req).await,
        Err(RequestError::Disconnected)
    );
}

#[tokio::test]
async fn response_is_truncated_at_the_frame_limit() {
    let blocks = chain("big", 20, MAX_PAYLOAD_BYTES);
    let genesis = blocks[0].hash();
    let mut a = spawn_node(test_config(genesis), Arc::new(MemSource::new(blocks.clone()))).await;
    let mut cfg_b = test_config(genesis);
    cfg_b.request_timeout = Duration::from_secs(10);
    let mut b = spawn_node(cfg_b, Arc::new(MemSource::new(blocks[..1].to_vec()))).await;
    connect(&mut a, &mut b).await;

    let req = BlocksByRangeRequest::new(1, 20).expect("valid");
    let resp = b
        .handle
        .request_range(a.peer_id, req)
        .await
        .expect("range answer");
    let total: usize = resp.blocks.iter().map(encoded_block_field_len).sum();
    assert!(total <= MAX_RESPONSE_FRAME, "{total} over the frame limit");
    let next = encoded_block_field_len(&blocks[resp.blocks.len() + 1]);
    assert!(
        total + next > MAX_RESPONSE_FRAME,
        "cut only when the next block would not fit"
    );
    assert_eq!(resp.blocks.len(), 15);
    for (i, block) in resp.blocks.iter().enumerate() {
        assert_eq!(block.height(), 1 + i as u64, "no height skipped");
    }
}

#[tokio::test]
async fn rate_limited_requests_are_refused() {
    let blocks = chain("rate", 40, 16);
    let genesis = blocks[0].hash();
    let mut cfg = test_config(genesis);
    cfg.rate_limits.blocks_by_range = Quota::new(10, 0.01);
    let mut a = spawn_node(cfg, Arc::new(MemSource::new(blocks.clone()))).await;
    let mut b = spawn_node(
        test_config(genesis),
        Arc::new(MemSource::new(blocks[..1].to_vec())),
    )
    .await;
    connect(&mut a, &mut b).await;

    let req = BlocksByRangeRequest::new(1, 8).expect("valid");
    let ok = b
        .handle
        .request_range(a.peer_id, req)
        .await
        .expect("first fits the burst");
    assert_eq!(ok.blocks.len(), 8);
    let refused = b.handle.request_range(a.peer_id, req).await;
    assert!(
        matches!(
            refused,
            Err(RequestError::Refused {
                code: ResponseCode::RateLimited,
                ..
            })
        ),
        "{refused:?}"
    );
    // Other protocols have their own buckets.
    let roots = BlocksByRootRequest::new(vec![blocks[2].hash()]).expect("valid");
    let resp = b
        .handle
        .request_roots(a.peer_id, roots)
        .await
        .expect("root answer");
    assert_eq!(resp.blocks.len(), 1);
}

/// Whether a request was refused `RESOURCE_UNAVAILABLE` (the serving queue or a share is full).
fn refused_busy<T>(result: &Result<T, RequestError>) -> bool {
    matches!(
        result,
        Err(RequestError::Refused {
            code: ResponseCode::ResourceUnavailable,
            ..
        })
    )
}

#[tokio::test]
async fn serving_queue_is_bounded() {
    let blocks = chain("queue", 10, 16);
    let genesis = blocks[0].hash();
    let mut cfg = test_config(genesis);
    cfg.max_concurrent_serving = 1;
    cfg.max_queued_serving = 1;
    cfg.request_timeout = Duration::from_secs(5);
    let src = Arc::new(MemSource::with_delay(blocks.clone(), Duration::from_millis(400)));
    let mut a = spawn_node(cfg, src).await;
    let mut b = spawn_node(
        test_config(genesis),
        Arc::new(MemSource::new(blocks[..1].to_vec())),
    )
    .await;
    connect(&mut a, &mut b).await;

    let req = BlocksByRangeRequest::new(1, 2).expect("valid");
    let asks = (0..5).map(|_| b.handle.request_range(a.peer_id, req));
    let results = bounded("flood answers", futures::future::join_all(asks)).await;
    let ok = results.iter().filter(|r| r.is_ok()).count();
    let busy = results.iter().filter(|r| refused_busy(r)).count();
    assert_eq!(ok + busy, 5, "{results:?}");
    assert!(ok >= 1 && busy >= 1, "{results:?}");
    // The flood cost the requester nothing: an honest peer is not charged for our limits.
    let s = a.summary(b.peer_id).await.expect("b known");
    assert!(s.score >= 0.0 && s.connected);
}

#[tokio::test]
async fn global_serving_cap_paces_blocks() {
    let blocks = chain("pace", 60, 16);
    let genesis = blocks[0].hash();
    let mut cfg = test_config(genesis);
    cfg.serve_blocks_per_sec = Some(20);
    cfg.request_timeout = Duration::from_secs(5);
    let mut a = spawn_node(cfg, Arc::new(MemSource::new(blocks.clone()))).await;
    let mut b = spawn_node(
        test_config(genesis),
        Arc::new(MemSource::new(blocks[..1].to_vec())),
    )
    .await;
    connect(&mut a, &mut b).await;

    let start = Instant::now();
    let mut served = 0u64;
    let mut asked = 0;
    // An answer is cut to the blocks the pacer has for it (never none): ask on from where the
    // last one stopped.
    while served < 40 && asked < 40 {
        asked += 1;
        let req = BlocksByRangeRequest::new(1 + served, 40 - served).expect("valid");
        let resp = b.handle.request_range(a.peer_id, req).await.expect("answer");
        assert!(!resp.blocks.is_empty(), "an answer with no block");
        assert_eq!(resp.blocks[0].height(), 1 + served);
        served += resp.blocks.len() as u64;
    }
    assert_eq!(served, 40);
    // 40 blocks at 20/s with a one-second burst take at least ~1 s.
    assert!(
        start.elapsed() >= Duration::from_millis(900),
        "{:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn shutdown_stops_the_network() {
    let blocks = chain("stop", 3, 16);
    let genesis = blocks[0].hash();
    let src = Arc::new(MemSource::new(blocks));
    let mut a = spawn_node(test_config(genesis), src.clone()).await;
    let mut b = spawn_node(test_config(genesis), src).await;
    connect(&mut a, &mut b).await;
    a.handle.shutdown().await;
    let b_id = b.peer_id;
    let a_id = a.peer_id;
    b.wait_event("a gone", |e| match e {
        syncnode_network::NetworkEvent::PeerDisconnected { peer } if *peer == a_id => Some(()),
        _ => None,
    })
    .await;
    let req = BlocksByRangeRequest::new(1, 1).expect("valid");
    assert_eq!(
        a.handle.request_range(b_id, req).await,
        Err(RequestError::Stopped)
    );
    assert!(a.handle.peers().await.is_empty());
}

#[tokio::test]
async fn one_peer_cannot_take_every_serving_slot() {
    // Eight slots (one running, seven queued), at most two per requester. Peer b asks eight at
    // once: two are taken, six refused busy. Peer c, asking after it, is still served.
    let blocks = chain("share", 10, 16);
    let genesis = blocks[0].hash();
    let mut cfg = test_config(genesis);
    cfg.max_concurrent_serving = 1;
    cfg.max_queued_serving = 7;
    cfg.max_serving_per_peer = 2;
    cfg.request_timeout = Duration::from_secs(5);
    let src = Arc::new(MemSource::with_delay(blocks.clone(), Duration::from_millis(300)));
    let mut a = spawn_node(cfg, src).await;
    let idle = || Arc::new(MemSource::new(blocks[..1].to_vec()));
    let mut b = spawn_node(test_config(genesis), idle()).await;
    let mut c = spawn_node(test_config(genesis), idle()).await;
    connect(&mut a, &mut b).await;
    connect(&mut a, &mut c).await;

    let req = BlocksByRangeRequest::new(1, 2).expect("valid");
    let flood = futures::future::join_all((0..8).map(|_| b.handle.request_range(a.peer_id, req)));
    let late = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        c.handle.request_range(a.peer_id, req).await
    };
    let (flooded, late) = bounded("answers", futures::future::join(flood, late)).await;
    let ok = flooded.iter().filter(|r| r.is_ok()).count();
    assert_eq!(ok, 2, "{flooded:?}");
    assert!(
        flooded.iter().filter(|r| r.is_err()).all(refused_busy),
        "{flooded:?}"
    );
    assert_eq!(late.expect("the other peer is served").blocks.len(), 2);
}

#[tokio::test]
async fn flooders_leave_a_serving_slot_to_a_peer_holding_none() {
    // Eight slots (one running, seven queued), up to eight per requester. Peers b and d each ask
    // eight at once: each is held to its fair share and the last slot is kept, so peer c, asking
    // after them, is still served.
    let blocks = chain("fair", 10, 16);
    let genesis = blocks[0].hash();
    let mut cfg = test_config(genesis);
    cfg.max_concurrent_serving = 1;
    cfg.max_queued_serving = 7;
    cfg.max_serving_per_peer = 8;
    cfg.request_timeout = Duration::from_secs(8);
    let src = Arc::new(MemSource::with_delay(blocks.clone(), Duration::from_millis(200)));
    let mut a = spawn_node(cfg, src).await;
    let idle = || Arc::new(MemSource::new(blocks[..1].to_vec()));
    let mut b = spawn_node(test_config(genesis), idle()).await;
    let mut c = spawn_node(test_config(genesis), idle()).await;
    let mut d = spawn_node(test_config(genesis), idle()).await;
    connect(&mut a, &mut b).await;
    connect(&mut a, &mut c).await;
    connect(&mut a, &mut d).await;

    let req = BlocksByRangeRequest::new(1, 2).expect("valid");
    let flood = futures::future::join_all(
        (0..8)
            .map(|_| b.handle.request_range(a.peer_id, req))
            .chain((0..8).map(|_| d.handle.request_range(a.peer_id, req))),
    );
    let late = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        c.handle.request_range(a.peer_id, req).await
    };
    let (flooded, late) = bounded("answers", futures::future::join(flood, late)).await;
    let ok = flooded.iter().filter(|r| r.is_ok()).count();
    assert!((2..=7).contains(&ok), "{flooded:?}");
    assert!(
        flooded.iter().filter(|r| r.is_err()).all(refused_busy),
        "{flooded:?}"
    );
    assert_eq!(late.expect("the peer holding no slot is served").blocks.len(), 2);
}
