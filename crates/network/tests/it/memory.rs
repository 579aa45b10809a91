//! Memory held for slow readers: block responses handed to libp2p but not yet read by their
//! requesters are bounded in bytes (`max_serving_bytes`), not only in number of requests.

use std::sync::Arc;
use std::time::Duration;

use futures::AsyncWriteExt;
use syncnode_proto::convert::ResponseCode;
use syncnode_proto::frame::{encode_frame, read_frame};
use syncnode_proto::{BLOCKS_BY_RANGE_PROTOCOL, MAX_RESPONSE_FRAME, pb};

use crate::common::*;

/// Requests a client sends before it reads any answer.
const UNREAD: usize = 12;

#[tokio::test]
async fn unread_responses_are_bounded_in_bytes() {
    // 64 blocks of 256 KiB: a request for all of them is answered with a frame of ~16 MiB.
    let blocks = chain("memory", 64, 256 * 1024);
    let mut cfg = test_config(blocks[0].hash());
    cfg.request_timeout = Duration::from_secs(5);
    cfg.max_serving_bytes = 40 * 1024 * 1024;
    let budget = cfg.max_serving_bytes;
    let wait = cfg.request_timeout;
    let (source, live) = MemSource::tracked(blocks);
    let node = spawn_node(cfg, Arc::new(source)).await;
    let mut client = RawClient::connect(&node.addr).await;

    let request = encode_frame(&pb::BlocksByRangeRequest {
        start_height: 1,
        count: 64,
    });
    let mut streams = Vec::new();
    for _ in 0..UNREAD {
        let mut stream = client.open(node.peer_id, BLOCKS_BY_RANGE_PROTOCOL).await;
        stream.write_all(&request).await.expect("write");
        stream.close().await.expect("close write side");
        streams.push(stream);
    }
    // Every request is served or refused meanwhile (the serving budget is 3/4 of the request
    // timeout); none of the answers has been read.
    tokio::time::sleep(wait).await;
    let held = live.peak();

    let (mut served, mut served_bytes, mut busy) = (0usize, 0usize, 0usize);
    for mut stream in streams {
        let resp = bounded(
            "an answer",
            read_frame::<pb::BlocksResponse, _>(&mut stream, MAX_RESPONSE_FRAME),
        )
        .await
        .expect("an answer frame");
        if resp.code == ResponseCode::Ok as i32 {
            served += 1;
            served_bytes += prost::Message::encoded_len(&resp);
        } else {
            assert_eq!(resp.code, ResponseCode::ResourceUnavailable as i32);
            busy += 1;
        }
    }
    let largest = MAX_RESPONSE_FRAME;
    assert!(
        served_bytes <= budget + largest,
        "{served} answers of {served_bytes} bytes were held for a reader that read none (bound {budget})"
    );
    assert!(served >= 1, "the first answer always goes out");
    assert_eq!(served + busy, UNREAD);
    assert!(
        held <= budget,
        "{held} bytes of blocks held at once (bound {budget})"
    );
}

#[tokio::test]
async fn blocks_read_for_paced_answers_are_within_the_byte_bound() {
    // 256 blocks of 256 KiB; each request asks for 24 (6 MiB), the pacer sends 100 blocks a
    // second, so most answers wait for their turn: the blocks they hold must count meanwhile.
    let blocks = chain("paced", 256, 256 * 1024);
    let mut cfg = test_config(blocks[0].hash());
    cfg.request_timeout = Duration::from_secs(5);
    cfg.serve_blocks_per_sec = Some(100);
    cfg.max_serving_bytes = 8 * 1024 * 1024;
    let budget = cfg.max_serving_bytes;
    let (source, live) = MemSource::tracked(blocks);
    let node = spawn_node(cfg, Arc::new(source)).await;

    let (mut asks, mut clients) = (Vec::new(), Vec::new());
    for c in 0..3u64 {
        let mut client = RawClient::connect(&node.addr).await;
        for i in 0..8u64 {
            let request = encode_frame(&pb::BlocksByRangeRequest {
                start_height: 1 + (c * 8 + i) * 8,
                count: 24,
            });
            let mut stream = client.open(node.peer_id, BLOCKS_BY_RANGE_PROTOCOL).await;
            let start = 1 + (c * 8 + i) * 8;
            asks.push(tokio::spawn(async move {
                stream.write_all(&request).await.expect("write");
                stream.close().await.expect("close write side");
                let resp = read_frame::<pb::BlocksResponse, _>(&mut stream, MAX_RESPONSE_FRAME).await;
                (start, resp)
            }));
        }
        clients.push(client);
    }
    let (mut served, mut refused, mut short) = (0, 0, 0);
    for ask in asks {
        let (start, resp) = bounded("an answer", ask).await.expect("task");
        let resp = resp.expect("a frame");
        if resp.code == ResponseCode::Ok as i32 {
            // Cut to what was granted, an answer is still a non-empty prefix of the range.
            let heights: Vec<u64> = resp
                .blocks
                .iter()
                .filter_map(|b| Some(b.header.as_ref()?.height))
                .collect();
            let expected: Vec<u64> = (start..start + heights.len() as u64).collect();
            assert!(
                !heights.is_empty() && heights == expected,
                "from {start}: {heights:?}"
            );
            served += 1;
            short += usize::from(heights.len() < 24);
        } else {
            refused += 1;
        }
    }
    let peak = live.peak();
    // The maintenance tick publishes the gate's figures.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let gauge_peak = metric(&node, "syncnode_network_serving_bytes_held_peak");
    eprintln!(
        "paced flood: {served} served ({short} short), {refused} refused, peak {peak} bytes of blocks alive, gauge peak {gauge_peak} (bound {budget})"
    );
    assert!(served >= 1, "the flood is served");
    assert!(
        peak <= budget,
        "{peak} bytes of blocks held at once (bound {budget})"
    );
    assert!(
        gauge_peak > 0.0 && gauge_peak <= budget as f64,
        "serving bytes held peaked at {gauge_peak} (bound {budget})"
    );
}

/// The value of an unlabelled metric of `node`.
fn metric(node: &TestNode, name: &str) -> f64 {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &node.registry).expect("encode");
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no metric {name} in {text}"))
}
