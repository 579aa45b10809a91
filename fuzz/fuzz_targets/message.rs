//! `cargo fuzz run message`: see `syncnode_fuzz::message_check` for the input layout and invariants.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| syncnode_fuzz::message_check::check(data));
