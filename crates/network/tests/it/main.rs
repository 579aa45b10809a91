//! Real swarms on 127.0.0.1: Status, the block protocols and their limits, rate limits, bans,
//! gossip. Every wait is bounded (`common::WAIT`).

mod common;
mod limits;
mod link;
mod memory;
mod outbound;
mod peers;
mod requests;
mod serving;
