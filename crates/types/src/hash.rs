//! 32-byte BLAKE3 hashes and the ed25519 byte types, shown as lowercase hex.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Error parsing a fixed-length hex value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HexError {
    #[error("expected {expected} hex characters, got {got}")]
    Length { expected: usize, got: usize },
    #[error("not lowercase hex: {0}")]
    Invalid(String),
}

/// Error converting a byte slice of the wrong length into a fixed-size value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{what} must be {expected} bytes, got {got}")]
pub struct LengthError {
    pub what: &'static str,
    pub expected: usize,
    pub got: usize,
}

macro_rules! fixed_bytes {
    ($(#[$doc:meta])* $name:ident, $len:expr, $what:expr) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub [u8; $len]);

        impl $name {
            /// Length in bytes.
            pub const LEN: usize = $len;
            /// All zero bytes.
            pub const ZERO: Self = Self([0u8; $len]);

            /// The raw bytes.
            pub fn as_bytes(&self) -> &[u8; $len] {
                &self.0
            }

            /// Copies a slice of exactly `LEN` bytes.
            pub fn from_slice(bytes: &[u8]) -> Result<Self, LengthError> {
                let array: [u8; $len] = bytes.try_into().map_err(|_| LengthError {
                    what: $what,
                    expected: $len,
                    got: bytes.len(),
                })?;
                Ok(Self(array))
            }

            /// Lowercase hex, no prefix.
            pub fn to_hex(&self) -> String {
                hex::encode(self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_hex())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.to_hex())
            }
        }

        impl FromStr for $name {
            type Err = HexError;
            fn from_str(s: &str) -> Result<Self, HexError> {
                if s.len() != $len * 2 {
                    return Err(HexError::Length { expected: $len * 2, got: s.len() });
                }
                if s.bytes().any(|b| b.is_ascii_uppercase()) {
                    return Err(HexError::Invalid(s.to_owned()));
                }
                let mut out = [0u8; $len];
                hex::decode_to_slice(s, &mut out).map_err(|_| HexError::Invalid(s.to_owned()))?;
                Ok(Self(out))
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.to_hex())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

fixed_bytes!(
    /// A 32-byte BLAKE3 hash.
    Hash,
    32,
    "hash"
);
fixed_bytes!(
    /// A 32-byte ed25519 public key.
    PublicKey,
    32,
    "public key"
);
fixed_bytes!(
    /// A 64-byte ed25519 signature.
    Signature,
    64,
    "signature"
);

impl Hash {
    /// BLAKE3 of `data`.
    pub fn of(data: &[u8]) -> Self {
        Self(*blake3::hash(data).as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_and_errors() {
        let h = Hash::of(b"abc");
        let s = h.to_string();
        assert_eq!(s.len(), 64);
        assert_eq!(s.parse::<Hash>(), Ok(h));
        assert!(matches!("00".parse::<Hash>(), Err(HexError::Length { .. })));
        assert!(matches!(
            s.to_uppercase().parse::<Hash>(),
            Err(HexError::Invalid(_))
        ));
        assert!(matches!(
            format!("zz{}", &s[2..]).parse::<Hash>(),
            Err(HexError::Invalid(_))
        ));
        assert!(Hash::from_slice(&[0u8; 31]).is_err());
        assert!(Signature::from_slice(&[0u8; 64]).is_ok());
    }
}
