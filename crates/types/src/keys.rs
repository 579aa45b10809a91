//! ed25519 signing keys and the development keys of PROTOCOL.md.

use crate::hash::{Hash, PublicKey, Signature};

/// An ed25519 signing key (RFC 8032 seed).
#[derive(Clone)]
pub struct SigningKey {
    inner: ed25519_zebra::SigningKey,
    public: PublicKey,
}

impl SigningKey {
    /// The key whose 32-byte secret seed is `seed`.
    pub fn from_seed(seed: [u8; 32]) -> Self {
        let inner = ed25519_zebra::SigningKey::from(seed);
        let vk_bytes: [u8; 32] = ed25519_zebra::VerificationKeyBytes::from(&inner).into();
        SigningKey {
            inner,
            public: PublicKey(vk_bytes),
        }
    }

    /// Development key `i`: seed `BLAKE3("syncnode/dev-key/" + decimal(i))`. For devnets and tests only.
    pub fn dev(index: u32) -> Self {
        Self::from_seed(dev_seed(index))
    }

    /// The public key.
    pub fn public_key(&self) -> PublicKey {
        self.public
    }

    /// Signs a block hash.
    pub fn sign(&self, block_hash: &Hash) -> Signature {
        Signature(self.inner.sign(&block_hash.0).into())
    }
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKey(public={})", self.public)
    }
}

/// The secret seed of development key `i`.
pub fn dev_seed(index: u32) -> [u8; 32] {
    Hash::of(format!("syncnode/dev-key/{index}").as_bytes()).0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize)]
    struct DevKeyVector {
        index: u32,
        seed: Hash,
        public: PublicKey,
    }

    #[test]
    fn dev_keys_match_vectors() {
        let text = include_str!("../../../testdata/vectors/dev_keys.json");
        let vectors: Vec<DevKeyVector> = serde_json::from_str(text).expect("vector file parses");
        assert!(!vectors.is_empty());
        for v in vectors {
            assert_eq!(dev_seed(v.index), v.seed.0, "seed of dev key {}", v.index);
            assert_eq!(
                SigningKey::dev(v.index).public_key(),
                v.public,
                "public of dev key {}",
                v.index
            );
        }
    }
}
