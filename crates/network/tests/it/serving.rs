//! What a node serves while its own sync is behind, and while it is synced.

use std::sync::Arc;
use std::time::{Duration, Instant};

use syncnode_network::BlocksByRangeRequest;

use crate::common::*;

/// Asks `server` for the first 1,024 blocks over and over until `until`; returns the blocks got.
async fn pull_until(client: &TestNode, server: &TestNode, until: Instant) -> u64 {
    let req = BlocksByRangeRequest::new(1, 1024).expect("valid");
    let mut got = 0;
    while Instant::now() < until {
        if let Ok(resp) = client.handle.request_range(server.peer_id, req).await {
            got += resp.blocks.len() as u64;
        }
    }
    got
}

#[tokio::test]
async fn a_syncing_node_serves_at_most_its_cap_and_a_synced_one_the_full_quota() {
    const CAP: u32 = 200;
    let blocks = chain("syncing-cap", 1025, 16);
    let genesis = blocks[0].hash();
    let mut cfg = test_config(genesis);
    cfg.serve_blocks_per_sec_while_syncing = Some(CAP);
    cfg.request_timeout = Duration::from_secs(5);
    let mut a = spawn_node(cfg, Arc::new(MemSource::new(blocks.clone()))).await;
    let own = || Arc::new(MemSource::new(blocks[..1].to_vec()));
    let mut b = spawn_node(test_config(genesis), own()).await;
    let mut c = spawn_node(test_config(genesis), own()).await;
    connect(&mut a, &mut b).await;
    connect(&mut a, &mut c).await;

    // Synced: every answer is whole, at once.
    let req = BlocksByRangeRequest::new(1, 1024).expect("valid");
    for _ in 0..4 {
        let resp = bounded("synced answer", b.handle.request_range(a.peer_id, req)).await;
        assert_eq!(resp.expect("answer").blocks.len(), 1024);
    }

    // Syncing: two requesters asking for all they can get share the cap (one second of burst,
    // then `CAP` a second).
    a.handle.set_syncing(true);
    let start = Instant::now();
    let until = start + Duration::from_millis(1500);
    let (got_b, got_c) = bounded(
        "syncing answers",
        futures::future::join(pull_until(&b, &a, until), pull_until(&c, &a, until)),
    )
    .await;
    let elapsed = start.elapsed().as_secs_f64();
    let most = f64::from(CAP) * (1.0 + elapsed) + f64::from(CAP / 10);
    let total = (got_b + got_c) as f64;
    assert!(
        total <= most,
        "served {total} blocks in {elapsed:.2} s, cap allows {most:.0}"
    );
    assert!(
        total >= f64::from(CAP),
        "served only {total} blocks in {elapsed:.2} s"
    );
    assert!(got_b > 0 && got_c > 0, "b got {got_b}, c got {got_c}");

    // Synced again: whole answers at once.
    a.handle.set_syncing(false);
    let resp = bounded("synced again", b.handle.request_range(a.peer_id, req)).await;
    assert_eq!(resp.expect("answer").blocks.len(), 1024);
}
