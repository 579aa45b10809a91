//! The sans-IO sync engine (being written).

#![forbid(unsafe_code)]

pub mod peer_score;
