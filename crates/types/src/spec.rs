//! The chain spec (PROTOCOL.md section 1) and the genesis block derived from it.

use std::collections::HashSet;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::block::{Block, BlockHeader, Height};
use crate::hash::{Hash, PublicKey, Signature};
use crate::keys::SigningKey;

/// Why a chain spec was refused.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("chain spec is not valid JSON for this schema: {0}")]
    Json(#[from] serde_json::Error),
    #[error("chain spec name must not be empty")]
    EmptyName,
    #[error("chain spec name must not contain '|'")]
    NameHasSeparator,
    #[error("chain spec needs at least one authority")]
    NoAuthorities,
    #[error("chain spec lists authority {0} more than once")]
    DuplicateAuthority(PublicKey),
    #[error("slot_ms must be at least 1")]
    ZeroSlot,
    #[error("finality_depth must be at least 1")]
    ZeroFinalityDepth,
}

/// A chain's definition. Unknown JSON fields are refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChainSpec {
    pub name: String,
    pub genesis_timestamp_ms: u64,
    pub slot_ms: u64,
    pub finality_depth: u64,
    pub authorities: Vec<PublicKey>,
}

impl ChainSpec {
    /// Parses and validates a JSON chain spec.
    pub fn from_json(text: &str) -> Result<Self, SpecError> {
        let spec: ChainSpec = serde_json::from_str(text)?;
        spec.validate()?;
        Ok(spec)
    }

    /// Pretty JSON, as `syncnode chain spec` prints it.
    pub fn to_json(&self) -> String {
        // Serialising plain strings and integers cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// A spec whose authorities are development keys `0..authorities`.
    pub fn dev(
        name: &str,
        authorities: u32,
        genesis_timestamp_ms: u64,
        slot_ms: u64,
        finality_depth: u64,
    ) -> Result<Self, SpecError> {
        let spec = ChainSpec {
            name: name.to_owned(),
            genesis_timestamp_ms,
            slot_ms,
            finality_depth,
            authorities: (0..authorities)
                .map(|i| SigningKey::dev(i).public_key())
                .collect(),
        };
        spec.validate()?;
        Ok(spec)
    }

    /// Checks every field's rule.
    pub fn validate(&self) -> Result<(), SpecError> {
        if self.name.is_empty() {
            return Err(SpecError::EmptyName);
        }
        // The genesis payload joins fields with '|'; a name containing it would be ambiguous.
        if self.name.contains('|') {
            return Err(SpecError::NameHasSeparator);
        }
        if self.authorities.is_empty() {
            return Err(SpecError::NoAuthorities);
        }
        let mut seen = HashSet::new();
        for a in &self.authorities {
            if !seen.insert(a) {
                return Err(SpecError::DuplicateAuthority(*a));
            }
        }
        if self.slot_ms == 0 {
            return Err(SpecError::ZeroSlot);
        }
        if self.finality_depth == 0 {
            return Err(SpecError::ZeroFinalityDepth);
        }
        Ok(())
    }

    /// The authority scheduled to propose at `height` (rule 4).
    pub fn authority_at(&self, height: Height) -> PublicKey {
        let n = self.authorities.len() as u64;
        // validate() guarantees n >= 1; fall back to zero key rather than divide by zero.
        match n {
            0 => PublicKey::ZERO,
            _ => self.authorities[(height % n) as usize],
        }
    }

    /// The UTF-8 genesis payload.
    pub fn genesis_payload(&self) -> String {
        let authorities: Vec<String> = self.authorities.iter().map(|a| a.to_hex()).collect();
        format!(
            "syncnode-genesis-v1|{}|{}|{}|{}|{}",
            self.name,
            self.genesis_timestamp_ms,
            self.slot_ms,
            self.finality_depth,
            authorities.join(",")
        )
    }

    /// The genesis block: height 0, zero parent, zero proposer, zero signature.
    pub fn genesis(&self) -> Block {
        let payload = Bytes::from(self.genesis_payload().into_bytes());
        Block {
            header: BlockHeader {
                height: 0,
                parent_hash: Hash::ZERO,
                timestamp_ms: self.genesis_timestamp_ms,
                payload_hash: Hash::of(&payload),
                proposer: PublicKey::ZERO,
            },
            payload,
            signature: Signature::ZERO,
        }
    }

    /// The genesis hash, which names the network.
    pub fn genesis_hash(&self) -> Hash {
        self.genesis().hash()
    }

    /// The timestamp of slot `height`: genesis time plus `height` slots.
    pub fn slot_timestamp_ms(&self, height: Height) -> u64 {
        self.genesis_timestamp_ms
            .saturating_add(height.saturating_mul(self.slot_ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn vector_spec() -> ChainSpec {
        ChainSpec::from_json(include_str!("../../../testdata/vectors/chain_spec.json"))
            .expect("vector spec is valid")
    }

    #[derive(Deserialize)]
    struct GenesisVector {
        payload_utf8: String,
        payload_hash: Hash,
        header_bytes: String,
        hash: Hash,
    }

    #[test]
    fn genesis_matches_vector() {
        let v: GenesisVector = serde_json::from_str(include_str!("../../../testdata/vectors/genesis.json"))
            .expect("vector parses");
        let spec = vector_spec();
        let g = spec.genesis();
        assert_eq!(spec.genesis_payload(), v.payload_utf8);
        assert_eq!(g.header.payload_hash, v.payload_hash);
        assert_eq!(hex::encode(g.header.to_bytes()), v.header_bytes);
        assert_eq!(g.hash(), v.hash);
        assert_eq!(spec.genesis_hash(), v.hash);
    }

    #[test]
    fn dev_spec_uses_dev_keys() {
        let spec = ChainSpec::dev("vectors", 2, 1_700_000_000_000, 1000, 2).expect("valid");
        assert_eq!(spec, vector_spec());
    }

    #[test]
    fn refuses_bad_specs() {
        let good = vector_spec().to_json();
        let with_extra = good.replacen("\"name\"", "\"nmae\": \"x\", \"name\"", 1);
        assert!(matches!(
            ChainSpec::from_json(&with_extra),
            Err(SpecError::Json(_))
        ));
        let mut s = vector_spec();
        s.authorities.clear();
        assert!(matches!(s.validate(), Err(SpecError::NoAuthorities)));
        let mut s = vector_spec();
        s.authorities.push(s.authorities[0]);
        assert!(matches!(s.validate(), Err(SpecError::DuplicateAuthority(_))));
        let mut s = vector_spec();
        s.slot_ms = 0;
        assert!(matches!(s.validate(), Err(SpecError::ZeroSlot)));
        let mut s = vector_spec();
        s.finality_depth = 0;
        assert!(matches!(s.validate(), Err(SpecError::ZeroFinalityDepth)));
        let mut s = vector_spec();
        s.name = String::new();
        assert!(matches!(s.validate(), Err(SpecError::EmptyName)));
        assert!(ChainSpec::from_json("{").is_err());
        let missing = good.replace("\"slot_ms\": 1000,", "");
        assert!(ChainSpec::from_json(&missing).is_err());
    }
}
