//! Every request limit, written as raw bytes on a raw stream: the peer is charged (and, as a
//! violation costs past the disconnect threshold, disconnected) and the node goes on serving.

use std::sync::Arc;
use std::time::Duration;

use futures::{AsyncReadExt, AsyncWriteExt};
use syncnode_network::{BlocksByRangeRequest, PeerId};
use syncnode_proto::convert::ResponseCode;
use syncnode_proto::frame::{encode_frame, read_frame};
use syncnode_proto::{
    BLOCKS_BY_RANGE_PROTOCOL, BLOCKS_BY_ROOT_PROTOCOL, MAX_REQUEST_FRAME, MAX_RESPONSE_FRAME, pb,
};

use crate::common::*;

struct Fixture {
    a: TestNode,
    b: TestNode,
}

/// Node `a` serves a short chain; `b` is an honest peer that checks `a` still serves.
async fn fixture() -> Fixture {
    let blocks = chain("limits", 20, 16);
    let genesis = blocks[0].hash();
    let mut cfg = test_config(genesis);
    cfg.request_timeout = Duration::from_secs(1);
    let mut a = spawn_node(cfg, Arc::new(MemSource::new(blocks.clone()))).await;
    let mut b = spawn_node(
        test_config(genesis),
        Arc::new(MemSource::new(blocks[..1].to_vec())),
    )
    .await;
    connect(&mut a, &mut b).await;
    Fixture { a, b }
}

impl Fixture {
    async fn still_serves(&self) {
        let req = BlocksByRangeRequest::new(1, 3).expect("valid");
        let resp = self
            .b
            .handle
            .request_range(self.a.peer_id, req)
            .await
            .expect("served");
        assert_eq!(resp.blocks.len(), 3);
    }

    async fn assert_charged(&self, peer: PeerId) {
        let s = self
            .a
            .wait_peer("the offender charged", peer, |s| s.score < 0.0)
            .await;
        assert!(
            s.score <= -20.0,
            "a violation costs past the disconnect line: {}",
            s.score
        );
        self.a
            .wait_peer("the offender disconnected", peer, |s| !s.connected)
            .await;
    }
}

/// Sends one request frame and reads the answer frame.
async fn ask_raw(
    client: &mut RawClient,
    node: PeerId,
    protocol: &'static str,
    frame: &[u8],
) -> pb::BlocksResponse {
    let mut stream = client.open(node, protocol).await;
    stream.write_all(frame).await.expect("write");
    stream.close().await.expect("close write side");
    bounded(
        "raw answer",
        read_frame::<pb::BlocksResponse, _>(&mut stream, MAX_RESPONSE_FRAME),
    )
    .await
    .expect("an answer frame")
}

#[tokio::test]
async fn invalid_counts_are_refused_and_charged() {
    let f = fixture().await;
    let cases: Vec<(&'static str, Vec<u8>)> = vec![
        (
            BLOCKS_BY_RANGE_PROTOCOL,
            encode_frame(&pb::BlocksByRangeRequest {
                start_height: 1,
                count: 0,
            }),
        ),
        (
            BLOCKS_BY_RANGE_PROTOCOL,
            encode_frame(&pb::BlocksByRangeRequest {
                start_height: 1,
                count: 1025,
            }),
        ),
        (
            BLOCKS_BY_ROOT_PROTOCOL,
            encode_frame(&pb::BlocksByRootRequest {
                hashes: (0..129u8).map(|i| bytes::Bytes::from(vec![i; 32])).collect(),
            }),
        ),
        (
            BLOCKS_BY_ROOT_PROTOCOL,
            encode_frame(&pb::BlocksByRootRequest { hashes: vec![] }),
        ),
    ];
    let valid = encode_frame(&pb::BlocksByRangeRequest {
        start_height: 1,
        count: 3,
    });
    for (protocol, frame) in cases {
        let mut client = RawClient::connect(&f.a.addr).await;
        let resp = ask_raw(&mut client, f.a.peer_id, protocol, &frame).await;
        assert_eq!(resp.code, ResponseCode::InvalidRequest as i32, "{protocol}");
        assert!(resp.blocks.is_empty());
        // One mistake is charged but forgiven: the requester stays and is served next.
        let s =
            f.a.wait_peer("the mistake charged", client.peer_id, |s| s.score < 0.0)
                .await;
        assert!(s.connected && !s.banned, "one invalid request cuts nobody off");
        assert!(
            s.score > -20.0,
            "one mistake stays above the disconnect line: {}",
            s.score
        );
        // Past any disconnect grace (1–2 s), the requester is still there and is served.
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert!(f.a.summary(client.peer_id).await.is_some_and(|s| s.connected));
        let resp = ask_raw(&mut client, f.a.peer_id, BLOCKS_BY_RANGE_PROTOCOL, &valid).await;
        assert_eq!(resp.code, ResponseCode::Ok as i32, "served after one mistake");
        assert_eq!(resp.blocks.len(), 3);
        // A second one, once answered, costs the connection.
        let resp = ask_raw(&mut client, f.a.peer_id, protocol, &frame).await;
        assert_eq!(
            resp.code,
            ResponseCode::InvalidRequest as i32,
            "{protocol}, again"
        );
        let s =
            f.a.wait_peer("the repeat disconnected", client.peer_id, |s| !s.connected)
                .await;
        assert!(s.score <= -20.0, "two mistakes cost the connection: {}", s.score);
    }
    // The largest valid request is answered.
    let mut client = RawClient::connect(&f.a.addr).await;
    let frame = encode_frame(&pb::BlocksByRangeRequest {
        start_height: 1,
        count: 1024,
    });
    let resp = ask_raw(&mut client, f.a.peer_id, BLOCKS_BY_RANGE_PROTOCOL, &frame).await;
    assert_eq!(resp.code, ResponseCode::Ok as i32);
    assert_eq!(resp.blocks.len(), 20);
    f.still_serves().await;
}

/// Writes `bytes` (and optionally keeps the stream open) and expects the node to reset it.
async fn send_bad_bytes(f: &Fixture, bytes: &[u8], keep_open: bool) -> PeerId {
    let mut client = RawClient::connect(&f.a.addr).await;
    let mut stream = client.open(f.a.peer_id, BLOCKS_BY_RANGE_PROTOCOL).await;
    stream.write_all(bytes).await.expect("write");
    stream.flush().await.expect("flush");
    if !keep_open {
        let _ = stream.close().await;
    }
    // No answer frame: the stream is reset or closed without one.
    let mut buf = Vec::new();
    let read = bounded("the stream to end", stream.read_to_end(&mut buf)).await;
    assert!(
        read.is_err() || buf.is_empty(),
        "no answer to a bad frame: {buf:?}"
    );
    client.peer_id
}

#[tokio::test]
async fn oversize_frame_is_a_violation() {
    let f = fixture().await;
    // A length one over the request limit, then a few bytes: refused before any allocation.
    let mut bytes = Vec::new();
    prost::encoding::encode_varint(MAX_REQUEST_FRAME as u64 + 1, &mut bytes);
    bytes.extend_from_slice(&[0u8; 16]);
    let offender = send_bad_bytes(&f, &bytes, true).await;
    f.assert_charged(offender).await;
    f.still_serves().await;
}

#[tokio::test]
async fn undecodable_frame_is_a_violation() {
    let f = fixture().await;
    // Three bytes of field 31 with the invalid wire type 7.
    let offender = send_bad_bytes(&f, &[3, 0xff, 0xff, 0xff], false).await;
    f.assert_charged(offender).await;
    f.still_serves().await;
}

#[tokio::test]
async fn stalled_requester_is_a_violation() {
    let f = fixture().await;
    // Announces 100 bytes, sends 10, then waits: the 1 s deadline of the test config ends it.
    let mut bytes = Vec::new();
    prost::encoding::encode_varint(100, &mut bytes);
    bytes.extend_from_slice(&[0u8; 10]);
    let offender = send_bad_bytes(&f, &bytes, true).await;
    f.assert_charged(offender).await;
    f.still_serves().await;
    // An honest peer's normal request is not affected, and it was never charged.
    let s = f.a.summary(f.b.peer_id).await.expect("b known");
    assert!(s.score >= 0.0 && s.connected);
}
