//! `cargo fuzz run validity`: see `syncnode_fuzz::validity_check` for the input layout and invariants.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| syncnode_fuzz::validity_check::check(data));
