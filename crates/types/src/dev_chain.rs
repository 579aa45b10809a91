//! Building valid chains signed by development keys: for `syncnode chain generate`, devnets,
//! tests and benchmarks. Deterministic: the same spec and sizes give the same blocks.

use bytes::Bytes;

use crate::block::{Block, BlockHeader, Height};
use crate::keys::SigningKey;
use crate::spec::ChainSpec;

/// Dev key indices searched when matching a spec's authorities to dev keys.
const MAX_DEV_KEY_INDEX: u32 = 4096;

/// A spec authority that is not one of the development keys.
#[derive(Debug, Clone, thiserror::Error)]
#[error("authority {0} of the chain spec is not a development key (indices 0..{MAX_DEV_KEY_INDEX})")]
pub struct NotADevKey(pub crate::PublicKey);

/// Signs blocks for a chain whose authorities are all development keys.
#[derive(Debug, Clone)]
pub struct DevChain {
    spec: ChainSpec,
    keys: Vec<SigningKey>,
}

impl DevChain {
    /// Finds the dev key of every authority of `spec`.
    pub fn new(spec: &ChainSpec) -> Result<Self, NotADevKey> {
        let keys = spec
            .authorities
            .iter()
            .map(|a| {
                (0..MAX_DEV_KEY_INDEX)
                    .map(SigningKey::dev)
                    .find(|k| k.public_key() == *a)
                    .ok_or(NotADevKey(*a))
            })
            .collect::<Result<_, _>>()?;
        Ok(DevChain {
            spec: spec.clone(),
            keys,
        })
    }

    /// The chain spec.
    pub fn spec(&self) -> &ChainSpec {
        &self.spec
    }

    /// The key scheduled to sign at `height`.
    pub fn key_at(&self, height: Height) -> &SigningKey {
        &self.keys[(height % self.keys.len() as u64) as usize]
    }

    /// The deterministic payload of `size` bytes for `height`.
    pub fn payload(height: Height, size: usize) -> Bytes {
        let mut hasher = blake3::Hasher::new();
        hasher.update(b"syncnode/dev-payload/");
        hasher.update(&height.to_be_bytes());
        let mut out = vec![0u8; size];
        hasher.finalize_xof().fill(&mut out);
        Bytes::from(out)
    }

    /// The header after `parent` for `payload`: slot timestamp (or 1 ms after the parent's, if
    /// later) and the scheduled proposer. Headers chain without signatures, so a caller can build
    /// them in order and sign them in parallel.
    pub fn header_after(&self, parent: &BlockHeader, payload: &[u8]) -> BlockHeader {
        let height = parent.height + 1;
        BlockHeader {
            height,
            parent_hash: parent.hash(),
            timestamp_ms: self.spec.slot_timestamp_ms(height).max(parent.timestamp_ms + 1),
            payload_hash: crate::Hash::of(payload),
            proposer: self.key_at(height).public_key(),
        }
    }

    /// Signs `header` with its scheduled key.
    pub fn seal(&self, header: BlockHeader, payload: Bytes) -> Block {
        let signature = self.key_at(header.height).sign(&header.hash());
        Block {
            header,
            payload,
            signature,
        }
    }

    /// The signed block after `parent` with `payload`.
    pub fn child(&self, parent: &BlockHeader, payload: Bytes) -> Block {
        self.seal(self.header_after(parent, &payload), payload)
    }

    /// `count` blocks after `parent`, each with a `payload_bytes` deterministic payload.
    pub fn extend(&self, parent: &BlockHeader, count: u64, payload_bytes: usize) -> Vec<Block> {
        let mut out: Vec<Block> = Vec::with_capacity(count as usize);
        for _ in 0..count {
            let header = out.last().map_or(*parent, |b| b.header);
            out.push(self.child(&header, Self::payload(header.height + 1, payload_bytes)));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validity::{check_link, verify_standalone_batch};

    #[test]
    fn builds_valid_deterministic_chains() {
        let spec = ChainSpec::dev("t", 3, 1_000, 10, 4).expect("spec");
        let dev = DevChain::new(&spec).expect("dev keys");
        let genesis = spec.genesis();
        let blocks = dev.extend(&genesis.header, 20, 100);
        verify_standalone_batch(&blocks, &spec).expect("valid");
        check_link(&blocks[0].header, &genesis.header).expect("links to genesis");
        for w in blocks.windows(2) {
            check_link(&w[1].header, &w[0].header).expect("links");
        }
        assert_eq!(blocks, dev.extend(&genesis.header, 20, 100));
        let mut other = spec.clone();
        other.authorities[1] = crate::PublicKey([7; 32]);
        assert!(DevChain::new(&other).is_err());
    }
}
