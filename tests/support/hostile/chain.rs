//! The honest chain a hostile peer holds, read from a seeder's export.

use super::*;

/// The honest chain a hostile peer bends, indexed by height (genesis at 0).
pub struct Chain {
    pub spec: ChainSpec,
    pub blocks: Vec<Block>,
    keys: DevChain,
}

impl Chain {
    /// The chain of `spec_path` from the bytes of `syncnode db export --from 0` (varint-framed
    /// protobuf `Block`s, ascending from genesis).
    pub fn from_export(spec_path: &Path, export: &[u8]) -> Arc<Chain> {
        let text = std::fs::read_to_string(spec_path).expect("read spec");
        let spec = ChainSpec::from_json(&text).expect("spec");
        let mut blocks = Vec::new();
        let mut at = 0;
        while at < export.len() {
            let (msg, used) =
                decode_frame::<pb::Block>(&export[at..], MAX_RESPONSE_FRAME).expect("export frame");
            blocks.push(Block::try_from(msg).expect("exported block"));
            at += used;
        }
        assert!(
            blocks.first().is_some_and(|g| g.hash() == spec.genesis_hash()),
            "the export must start at genesis"
        );
        let keys = DevChain::new(&spec).expect("dev authorities");
        Arc::new(Chain { spec, blocks, keys })
    }

    /// Height of the last block.
    pub fn head(&self) -> Height {
        self.blocks.len() as u64 - 1
    }

    /// The Status an honest node holding the whole chain sends.
    pub fn status(&self) -> pb::Status {
        let head = self.head();
        let finalized = head.saturating_sub(self.spec.finality_depth);
        let hash = |h: Height| Bytes::copy_from_slice(&self.blocks[h as usize].hash().0);
        pb::Status {
            genesis_hash: hash(0),
            head_height: head,
            head_hash: hash(head),
            finalized_height: finalized,
            finalized_hash: hash(finalized),
            earliest_height: 0,
        }
    }

    /// Honest blocks `start..start+count`, cut at the head.
    pub(super) fn range(&self, start: Height, count: u64) -> Vec<Block> {
        let len = self.blocks.len() as u64;
        let from = start.min(len);
        let to = start.saturating_add(count).min(len);
        self.blocks[from as usize..to as usize].to_vec()
    }

    pub(super) fn resign(
        &self,
        header: syncnode_types::BlockHeader,
        payload: Bytes,
        key: &SigningKey,
    ) -> Block {
        Block {
            signature: key.sign(&header.hash()),
            header,
            payload,
        }
    }

    /// `count` valid blocks from `start`, internally linked and signed by the scheduled
    /// authorities, whose first block's parent is a hash of no block of the chain.
    pub(super) fn unlinked(&self, start: Height, count: u64) -> Vec<Block> {
        let n = count.min(self.head().saturating_sub(start).saturating_add(1));
        let mut parent = Hash::of(format!("unlinked below {start}").as_bytes());
        let mut out = Vec::with_capacity(n as usize);
        for h in start..start + n {
            let timestamp = self.blocks[h as usize].header.timestamp_ms;
            let payload = Bytes::from(format!("another chain at {h}").into_bytes());
            let block = Block::new_signed(h, parent, timestamp, payload, self.keys.key_at(h));
            parent = block.hash();
            out.push(block);
        }
        out
    }

    /// Bends the last block of `blocks` to break the rule of `how`; returns whether it did (not
    /// for an empty answer, nor for misbehaviours that do not bend blocks).
    pub(super) fn bend_last(&self, how: Misbehaviour, blocks: &mut [Block]) -> bool {
        let Some(last) = blocks.last_mut() else {
            return false;
        };
        let h = last.height();
        let key = self.keys.key_at(h);
        let mut header = last.header;
        *last = match how {
            Misbehaviour::BadParent => {
                header.parent_hash = Hash::of(format!("no such parent of {h}").as_bytes());
                self.resign(header, last.payload.clone(), key)
            }
            Misbehaviour::StaleTimestamp => {
                let parent = &self.blocks[h.saturating_sub(1) as usize];
                header.timestamp_ms = parent.header.timestamp_ms;
                self.resign(header, last.payload.clone(), key)
            }
            Misbehaviour::BadPayloadHash => {
                let mut payload = last.payload.to_vec();
                payload.push(0x42);
                Block {
                    payload: Bytes::from(payload),
                    ..last.clone()
                }
            }
            Misbehaviour::OversizePayload => {
                let payload = Bytes::from(vec![0x17u8; MAX_PAYLOAD_BYTES + 1]);
                header.payload_hash = Hash::of(&payload);
                self.resign(header, payload, key)
            }
            Misbehaviour::WrongProposer => {
                let stranger = SigningKey::dev(4000);
                header.proposer = stranger.public_key();
                self.resign(header, last.payload.clone(), &stranger)
            }
            Misbehaviour::BadSignature | Misbehaviour::Reincarnating => {
                let mut sig = last.signature;
                sig.0[7] ^= 0x55;
                Block {
                    signature: sig,
                    ..last.clone()
                }
            }
            _ => return false,
        };
        true
    }
}
