//! The JSON shapes of the HTTP API, shared by the server, `syncnode status` and subscribers.

use serde::{Deserialize, Serialize};
use syncnode_types::{Block, BlockHeader, Hash, PublicKey, Signature};

/// `GET /status`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StatusJson {
    pub peer_id: String,
    pub listen_addrs: Vec<String>,
    pub genesis_hash: Hash,
    pub head_height: u64,
    pub head_hash: Hash,
    pub finalized_height: u64,
    pub finalized_hash: Hash,
    pub earliest_height: u64,
    /// `synced`, `syncing`, `backfilling` or `stalled`.
    pub sync_state: String,
    /// Connected peers.
    pub peers: usize,
    /// The highest head a peer credibly claims.
    pub target_height: u64,
    /// History is complete down to genesis or the configured floor.
    pub backfill_complete: bool,
    /// The data directory's space.
    #[serde(default)]
    pub disk: DiskJson,
}

/// The `disk` of `GET /status`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct DiskJson {
    /// `ok`, or `disk_full` while imports are paused for lack of space.
    pub state: String,
    /// Bytes free to the node on the data directory's filesystem.
    pub free_bytes: u64,
    /// The floor below which imports pause (`--min-free-space`).
    pub min_free_bytes: u64,
    pub data_dir: String,
}

/// One entry of `GET /peers`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PeerJson {
    pub peer_id: String,
    pub connected: bool,
    pub score: f64,
    pub banned: bool,
    /// From its latest Status, as the sync engine holds it.
    pub head_height: Option<u64>,
    pub earliest_height: Option<u64>,
    /// The head it counts for in the sync target (see `/status`'s `target_height`).
    #[serde(default)]
    pub counts_for: Option<u64>,
    pub agent: Option<String>,
}

/// A block as JSON: fixed-size fields as lowercase hex, the payload as hex.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BlockJson {
    pub height: u64,
    pub hash: Hash,
    pub parent_hash: Hash,
    pub timestamp_ms: u64,
    pub payload_hash: Hash,
    pub proposer: PublicKey,
    pub signature: Signature,
    pub payload: String,
}

impl From<&Block> for BlockJson {
    fn from(b: &Block) -> Self {
        BlockJson {
            height: b.header.height,
            hash: b.hash(),
            parent_hash: b.header.parent_hash,
            timestamp_ms: b.header.timestamp_ms,
            payload_hash: b.header.payload_hash,
            proposer: b.header.proposer,
            signature: b.signature,
            payload: hex::encode(&b.payload),
        }
    }
}

impl TryFrom<&BlockJson> for Block {
    type Error = String;
    fn try_from(j: &BlockJson) -> Result<Self, String> {
        let payload = hex::decode(&j.payload).map_err(|e| format!("payload: {e}"))?;
        let block = Block {
            header: BlockHeader {
                height: j.height,
                parent_hash: j.parent_hash,
                timestamp_ms: j.timestamp_ms,
                payload_hash: j.payload_hash,
                proposer: j.proposer,
            },
            payload: payload.into(),
            signature: j.signature,
        };
        if block.hash() != j.hash {
            return Err(format!("block hashes to {}, not {}", block.hash(), j.hash));
        }
        Ok(block)
    }
}
