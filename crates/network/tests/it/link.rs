//! The lab's emulated links: two nodes whose links have a 100 ms one-way delay and 1 MB/s of
//! upload answer a one-block request no sooner than a round trip, and a 1,024-block range no
//! faster than the upload allows.

use std::sync::Arc;
use std::time::{Duration, Instant};

use syncnode_network::{BlocksByRangeRequest, LinkConfig};
use syncnode_proto::convert::encoded_block_field_len;

use crate::common::{MemSource, chain, connect, spawn_node, test_config};

const DELAY: Duration = Duration::from_millis(100);
const RATE: u64 = 1_000_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emulated_links_delay_and_throttle() {
    let blocks = chain("link", 1024, 1024);
    let genesis = blocks[0].hash();
    let link = LinkConfig {
        delay: DELAY,
        upload_bytes_per_sec: Some(RATE),
        loss: 0.0,
    };
    let config = || {
        let mut config = test_config(genesis);
        config.link = Some(link);
        config.request_timeout = Duration::from_secs(10);
        config
    };
    let mut seeder = spawn_node(config(), Arc::new(MemSource::new(blocks.clone()))).await;
    let mut node = spawn_node(config(), Arc::new(MemSource::new(blocks[..1].to_vec()))).await;
    connect(&mut seeder, &mut node).await;

    let mut round_trip = Duration::MAX;
    for _ in 0..3 {
        let started = Instant::now();
        let resp = node
            .handle
            .request_range(seeder.peer_id, BlocksByRangeRequest::new(1, 1).expect("valid"))
            .await
            .expect("one block");
        assert_eq!(resp.blocks.len(), 1);
        round_trip = round_trip.min(started.elapsed());
    }
    assert!(
        round_trip >= 2 * DELAY,
        "round trip {round_trip:?} is under two delays"
    );
    assert!(round_trip < Duration::from_secs(2), "round trip {round_trip:?}");

    let started = Instant::now();
    let resp = node
        .handle
        .request_range(seeder.peer_id, BlocksByRangeRequest::new(1, 1024).expect("valid"))
        .await
        .expect("a range");
    let elapsed = started.elapsed();
    assert_eq!(resp.blocks.len(), 1024);
    let bytes: usize = resp.blocks.iter().map(encoded_block_field_len).sum();
    let transfer = elapsed.saturating_sub(2 * DELAY).as_secs_f64();
    let rate = bytes as f64 / transfer;
    eprintln!(
        "round trip {round_trip:?}; {bytes} bytes in {elapsed:?}: {rate:.0} B/s through a {RATE} B/s link"
    );
    assert!(
        rate <= RATE as f64 * 1.1,
        "{rate:.0} B/s beats the {RATE} B/s upload"
    );
    assert!(
        rate >= RATE as f64 * 0.25,
        "{rate:.0} B/s is far under the {RATE} B/s upload"
    );
}
