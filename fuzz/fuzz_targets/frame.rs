//! `cargo fuzz run frame`: see `syncnode_fuzz::frame_check` for the input layout and invariants.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| syncnode_fuzz::frame_check::check(data));
