//! Replays the fuzz corpus (`fuzz/corpus/decode_and_map/`) through the fuzz target's own function
//! on the stable toolchain, so every input the fuzzer kept is checked by `cargo test` too.

include!("../fuzz/fuzz_targets/exercise.rs");

#[test]
fn every_corpus_input_goes_through_decoder_mapper_and_diff_without_panic() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/decode_and_map");
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).expect("the corpus is kept in the repository") {
        let path = entry.expect("corpus entry").path();
        let body = std::fs::read(&path).expect("corpus file");
        exercise(&body);
        count += 1;
    }
    assert!(count >= 10, "the corpus holds its seed inputs ({count})");
}
