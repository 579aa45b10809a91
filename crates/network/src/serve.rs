//! Serving blocks to peers: the [`BlockSource`] the node implements, and the serving policy.
//!
//! The event loop validates a request (→ `INVALID_REQUEST`), applies the peer's rate limit
//! (→ `RATE_LIMITED`) and the bound on queued work (→ `RESOURCE_UNAVAILABLE`), then hands the
//! request to [`serve`], which runs on its own task: it waits, holding nothing, for its
//! requester's turn at the [`ServeGate`] (room in the byte budget `max_serving_bytes` and, with
//! the pacer on, blocks it may send now), then for one of `max_concurrent_serving` permits,
//! reads no more than it was granted from the source on a blocking thread, and [`sanitize`]s
//! the answer so that whatever the source returns, the response holds consecutive heights from
//! the start (or requested hashes in request order) and fits the response frame and its room.
//! The room travels with the response until libp2p has written it, so the bytes of blocks read
//! and not yet written never exceed `max_serving_bytes`, and nothing waits for the pacer once it
//! holds blocks. Every wait is bounded by the serving budget, a fraction of the response
//! deadline; a request that cannot be served within it is answered `RESOURCE_UNAVAILABLE`,
//! never left to time out.

use std::sync::Arc;
use std::time::{Duration, Instant};

use libp2p::PeerId;

use syncnode_proto::MAX_RESPONSE_FRAME;
use syncnode_proto::convert::{
    BlocksByRangeRequest, BlocksByRootRequest, BlocksResponse, ResponseCode, encoded_block_field_len,
};
use syncnode_types::{Block, Hash, Height};
use tokio::sync::Semaphore;

use crate::error::SourceError;
use crate::serve_gate::{HeldBytes, ServeGate};

/// Where served blocks come from; the node implements it over its store. Called on a blocking
/// thread (never on the swarm task), at most `max_concurrent_serving` calls at once.
pub trait BlockSource: Send + Sync + 'static {
    /// Blocks of the canonical chain at heights `start, start + 1, ...`, at most `count`,
    /// stopping at the head, at the first height not held, or before the block whose
    /// [`encoded_block_field_len`] would take the total over `max_bytes`.
    fn blocks_by_range(&self, start: Height, count: u64, max_bytes: usize)
    -> Result<Vec<Block>, SourceError>;

    /// The blocks with these hashes that are held, in request order, skipping those not held,
    /// stopping before the total of [`encoded_block_field_len`] would exceed `max_bytes`.
    fn blocks_by_root(&self, hashes: &[Hash], max_bytes: usize) -> Result<Vec<Block>, SourceError>;
}

/// A validated block request.
#[derive(Debug, Clone)]
pub enum BlockQuery {
    Range(BlocksByRangeRequest),
    Root(BlocksByRootRequest),
}

impl BlockQuery {
    /// Blocks asked for: the rate-limit and pacing cost.
    pub fn cost(&self) -> u64 {
        match self {
            BlockQuery::Range(r) => r.count,
            BlockQuery::Root(r) => r.hashes.len() as u64,
        }
    }
}

/// What serving tasks share.
pub struct ServeContext {
    pub source: Arc<dyn BlockSource>,
    pub permits: Arc<Semaphore>,
    /// Room for the bytes read and not yet written, and the pacer, shared per requester.
    pub gate: ServeGate,
    /// How long a serving task may take from receipt of the request.
    pub budget: Duration,
}

/// Serves one validated request for `peer`, with the room its blocks hold until written
/// (`None` for an error answer). Never panics; every failure becomes a response code.
pub async fn serve(
    ctx: Arc<ServeContext>,
    peer: PeerId,
    query: BlockQuery,
    received: Instant,
) -> (BlocksResponse, Option<HeldBytes>) {
    let deadline = received + ctx.budget;
    let remaining = || deadline.saturating_duration_since(Instant::now());
    let unavailable = |why: &str| {
        (
            BlocksResponse::error(ResponseCode::ResourceUnavailable, why),
            None,
        )
    };

    // The requester's turn first, holding nothing else; the answer is cut to what it was
    // granted rather than waiting for more.
    let Some(grant) = ctx.gate.admit(peer, query.cost(), deadline).await else {
        return unavailable("busy");
    };
    let mut query = query;
    match &mut query {
        BlockQuery::Range(r) => r.count = r.count.min(grant.blocks),
        BlockQuery::Root(r) => r
            .hashes
            .truncate(usize::try_from(grant.blocks).unwrap_or(usize::MAX)),
    }
    let mut held = grant.held;
    let permit = match tokio::time::timeout(remaining(), ctx.permits.clone().acquire_owned()).await {
        Ok(Ok(permit)) => permit,
        Ok(Err(_)) => return unavailable("shutting down"),
        Err(_) => return unavailable("busy"),
    };

    let source = ctx.source.clone();
    let q = query.clone();
    let room = held.bytes();
    let read = tokio::task::spawn_blocking(move || {
        // The permit is held by the blocking call itself: a source call that outlives the
        // budget still counts against the concurrency bound until it returns.
        let _permit = permit;
        match &q {
            BlockQuery::Range(r) => source.blocks_by_range(r.start_height, r.count, room),
            BlockQuery::Root(r) => source.blocks_by_root(&r.hashes, room),
        }
    });
    let mut read = read;
    let blocks = match tokio::time::timeout(remaining(), &mut read).await {
        Ok(Ok(Ok(blocks))) => blocks,
        Ok(Ok(Err(e))) => {
            tracing::warn!(error = %e, "block source failed");
            return (
                BlocksResponse::error(ResponseCode::ServerError, "block source failed"),
                None,
            );
        }
        Ok(Err(join)) => {
            tracing::error!(error = %join, "block source task failed");
            return (
                BlocksResponse::error(ResponseCode::ServerError, "block source failed"),
                None,
            );
        }
        Err(_) => {
            // What the read returns still takes its room until it is dropped.
            tokio::spawn(async move {
                let _ = read.await;
                drop(held);
            });
            return unavailable("block source too slow");
        }
    };
    let blocks = sanitize(&query, blocks, room);
    held.shrink_to(blocks.iter().map(encoded_block_field_len).sum());
    (BlocksResponse::ok(blocks), Some(held))
}

/// Enforces the protocol on what the source returned: for a range, the longest prefix of
/// consecutive heights from the start (at most `count`); for roots, the blocks that match the
/// requested hashes in request order; in both cases cut before the response frame would exceed
/// `max_bytes` (itself at most [`MAX_RESPONSE_FRAME`]).
pub fn sanitize(query: &BlockQuery, blocks: Vec<Block>, max_bytes: usize) -> Vec<Block> {
    let limit = max_bytes.min(MAX_RESPONSE_FRAME);
    let mut out = Vec::with_capacity(blocks.len());
    let mut bytes = 0usize;
    let mut fits = |block: &Block| {
        bytes = bytes.saturating_add(encoded_block_field_len(block));
        bytes <= limit
    };
    match query {
        BlockQuery::Range(r) => {
            for (i, block) in blocks.into_iter().enumerate() {
                let expected = r.start_height.checked_add(i as u64);
                if i as u64 >= r.count || Some(block.height()) != expected || !fits(&block) {
                    break;
                }
                out.push(block);
            }
        }
        BlockQuery::Root(r) => {
            let mut wanted = r.hashes.iter();
            for block in blocks {
                let hash = block.hash();
                // Advance through the request to this block's hash; a block not asked for (or
                // out of order) is dropped.
                if !wanted.any(|h| *h == hash) {
                    tracing::warn!(%hash, "block source returned a block not asked for");
                    break;
                }
                if !fits(&block) {
                    break;
                }
                out.push(block);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use syncnode_types::SigningKey;

    fn chain(n: u64, payload: usize) -> Vec<Block> {
        let key = SigningKey::dev(0);
        let mut parent = Hash::ZERO;
        (0..n)
            .map(|h| {
                let b = Block::new_signed(h, parent, 1000 + h, Bytes::from(vec![7u8; payload]), &key);
                parent = b.hash();
                b
            })
            .collect()
    }

    #[test]
    fn range_is_cut_at_a_skipped_height_and_at_count() {
        let blocks = chain(10, 8);
        let q = BlockQuery::Range(BlocksByRangeRequest::new(2, 5).expect("valid"));
        let mut given: Vec<Block> = blocks[2..9].to_vec();
        assert_eq!(sanitize(&q, given.clone(), MAX_RESPONSE_FRAME).len(), 5);
        given.remove(2); // heights 2,3,5,...
        let out = sanitize(&q, given, MAX_RESPONSE_FRAME);
        assert_eq!(out.iter().map(Block::height).collect::<Vec<_>>(), vec![2, 3]);
    }

    #[test]
    fn roots_keep_request_order_and_drop_strangers() {
        let blocks = chain(6, 8);
        let hashes = vec![blocks[1].hash(), blocks[3].hash(), blocks[4].hash()];
        let q = BlockQuery::Root(BlocksByRootRequest::new(hashes).expect("valid"));
        let out = sanitize(&q, vec![blocks[1].clone(), blocks[4].clone()], MAX_RESPONSE_FRAME);
        assert_eq!(out.len(), 2);
        let out = sanitize(&q, vec![blocks[4].clone(), blocks[1].clone()], MAX_RESPONSE_FRAME);
        assert_eq!(out.len(), 1, "out of order: cut at the first block out of order");
        let out = sanitize(&q, vec![blocks[0].clone()], MAX_RESPONSE_FRAME);
        assert!(out.is_empty());
    }

    #[test]
    fn response_fits_the_frame_limit() {
        let payload = syncnode_types::MAX_PAYLOAD_BYTES;
        let blocks = chain(20, payload);
        let q = BlockQuery::Range(BlocksByRangeRequest::new(0, 20).expect("valid"));
        let out = sanitize(&q, blocks, MAX_RESPONSE_FRAME);
        let total: usize = out.iter().map(encoded_block_field_len).sum();
        assert!(total <= MAX_RESPONSE_FRAME);
        assert_eq!(out.len(), 15);
    }
}
