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
    let node = spawn_node(cfg, Arc::new(MemSource::new(blocks))).await;
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
    // Every request is served or refused meanwhile; none of the answers has been read.
    tokio::time::sleep(Duration::from_secs(2)).await;

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
}
