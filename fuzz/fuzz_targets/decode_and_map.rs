//! Fuzz target: Nexudus page bodies through the decoder, the mapper and the diff (see
//! `exercise.rs`). Run: `cargo +nightly fuzz run decode_and_map fuzz/corpus/decode_and_map`.
#![no_main]

use libfuzzer_sys::fuzz_target;

include!("exercise.rs");

fuzz_target!(|body: &[u8]| exercise(body));
