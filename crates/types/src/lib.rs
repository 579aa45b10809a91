//! The chain of syncnode, as pure data and pure functions: no I/O, no async, no clock.
//!
//! - [`Hash`](struct@Hash), [`PublicKey`], [`Signature`]: fixed-size byte strings shown as lowercase hex.
//! - [`BlockHeader`] and [`Block`]: a header's 112 bytes (height BE, parent hash, timestamp BE,
//!   payload hash, proposer) are hashed with BLAKE3 to give the block hash; the protobuf encoding is
//!   never hashed. The proposer signs the 32-byte block hash with ed25519.
//! - [`ChainSpec`]: the JSON definition of a chain. Unknown fields are refused, every field is
//!   validated, and the genesis block is derived from it (never trusted from outside), so the genesis
//!   hash names the network.
//! - [`validity`]: the rules of PROTOCOL.md section 1. Rules 3–5 (payload, proposer schedule,
//!   signature) need no parent and are checked per block or per batch, with one ZIP-215 batch
//!   verification of all signatures; rules 1–2 (link to the parent) are checked in order at import;
//!   rule 6 (not from the future) only for gossip. Every error names its rule.
//! - [`SigningKey::dev`]: the development keys, seed `BLAKE3("syncnode/dev-key/" + i)`, and
//!   [`DevChain`], which signs deterministic chains with them for devnets, tests and benchmarks.
//!
//! Invariants: a [`Block`] value may be invalid (it is what a peer sent); validity is only ever
//! established by the functions of [`validity`]. Genesis (height 0) is valid only when it equals
//! [`ChainSpec::genesis`] exactly.

#![forbid(unsafe_code)]

mod block;
mod dev_chain;
mod hash;
mod keys;
mod spec;
pub mod validity;

pub use block::{Block, BlockHeader, HEADER_BYTES_LEN, Height, MAX_PAYLOAD_BYTES};
pub use dev_chain::{DevChain, NotADevKey};
pub use hash::{Hash, HexError, LengthError, PublicKey, Signature};
pub use keys::{SigningKey, dev_seed};
pub use spec::{ChainSpec, SpecError};
pub use validity::{BatchError, BlockError};

#[cfg(test)]
mod prop_tests;
#[cfg(test)]
mod vector_tests;
