//! Fuzz harnesses of syncnode: the checks behind each `cargo fuzz` target, in a library so that
//! the seeds can also be replayed by `cargo test` in this folder.
//!
//! - [`frame_check`]: varint framing with limits, the slice decoder and the async reader;
//! - [`message_check`]: every message of `syncnode.proto`, decoding and conversion to types;
//! - [`validity_check`]: the block validity rules 1–6 on mutated and arbitrary blocks.
//!
//! Each asserts invariants (round trips, agreement with an independent oracle, allocation bounds),
//! so a wrong answer is a crash just like a panic in the code under test.

#![forbid(unsafe_code)]

pub mod frame_check;
pub mod message_check;
pub mod reader;
pub mod validity_check;
pub mod wire;
