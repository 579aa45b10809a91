//! Our requests to a misbehaving responder: a silent one times out (not charged by the
//! network), a bad answer frame is a protocol violation (charged), a refusal is reported as its
//! code.

use std::sync::Arc;
use std::time::{Duration, Instant};

use syncnode_network::{BlocksByRangeRequest, RequestError};
use syncnode_proto::convert::ResponseCode;
use syncnode_proto::frame::encode_frame;
use syncnode_proto::{BLOCKS_BY_RANGE_PROTOCOL, MAX_RESPONSE_FRAME, pb};

use crate::common::*;

async fn node_and_raw_peer(answer: Option<Vec<u8>>) -> (TestNode, RawClient) {
    let blocks = chain("outbound", 5, 16);
    let mut cfg = test_config(blocks[0].hash());
    cfg.request_timeout = Duration::from_secs(1);
    let a = spawn_node(cfg, Arc::new(MemSource::new(blocks))).await;
    let mut raw = RawClient::connect(&a.addr).await;
    raw.answer_raw(BLOCKS_BY_RANGE_PROTOCOL, answer);
    a.wait_peer("raw peer connected", raw.peer_id, |s| s.connected)
        .await;
    (a, raw)
}

#[tokio::test]
async fn a_silent_responder_times_out_uncharged() {
    let (a, raw) = node_and_raw_peer(None).await;
    let start = Instant::now();
    let req = BlocksByRangeRequest::new(1, 4).expect("valid");
    let result = a.handle.request_range(raw.peer_id, req).await;
    assert_eq!(result, Err(RequestError::Timeout));
    assert!(start.elapsed() < Duration::from_secs(3), "{:?}", start.elapsed());
    // Timeouts are the engine's to judge: the network itself did not charge.
    let s = a.summary(raw.peer_id).await.expect("known");
    assert_eq!(s.score, 0.0);
}

#[tokio::test]
async fn an_oversize_response_is_a_charged_violation() {
    let mut bytes = Vec::new();
    prost::encoding::encode_varint(MAX_RESPONSE_FRAME as u64 + 1, &mut bytes);
    bytes.extend_from_slice(&[0u8; 64]);
    let (a, raw) = node_and_raw_peer(Some(bytes)).await;
    let req = BlocksByRangeRequest::new(1, 4).expect("valid");
    let result = a.handle.request_range(raw.peer_id, req).await;
    assert!(
        matches!(result, Err(RequestError::ProtocolViolation(_))),
        "{result:?}"
    );
    a.wait_peer("responder charged", raw.peer_id, |s| s.score <= -20.0)
        .await;
}

#[tokio::test]
async fn an_undecodable_response_is_a_charged_violation() {
    let (a, raw) = node_and_raw_peer(Some(vec![3, 0xff, 0xff, 0xff])).await;
    let req = BlocksByRangeRequest::new(1, 4).expect("valid");
    let result = a.handle.request_range(raw.peer_id, req).await;
    assert!(
        matches!(result, Err(RequestError::ProtocolViolation(_))),
        "{result:?}"
    );
    a.wait_peer("responder charged", raw.peer_id, |s| s.score <= -20.0)
        .await;
}

#[tokio::test]
async fn a_refusal_is_reported_with_its_code() {
    let refusal = encode_frame(&pb::BlocksResponse {
        code: ResponseCode::ResourceUnavailable as i32,
        blocks: vec![],
        error_message: "shutting down".into(),
    });
    let (a, raw) = node_and_raw_peer(Some(refusal)).await;
    let req = BlocksByRangeRequest::new(1, 4).expect("valid");
    let result = a.handle.request_range(raw.peer_id, req).await;
    assert_eq!(
        result,
        Err(RequestError::Refused {
            code: ResponseCode::ResourceUnavailable,
            message: "shutting down".into()
        })
    );
    let s = a.summary(raw.peer_id).await.expect("known");
    assert_eq!(s.score, 0.0, "a refusal is not a violation");
}
