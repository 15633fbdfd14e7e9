#!/usr/bin/env bash
# Fuzz smoke run: the decode_and_map target (fuzz/fuzz_targets/) for a few seconds, starting from
# the corpus kept in fuzz/corpus/. Exits non-zero when libFuzzer finds a crash; the input that
# crashed is left in fuzz/artifacts/decode_and_map/ and printed here.
#
#   bash fuzz/smoke.sh [seconds]     (default 15)
#
# Runs on the stable toolchain: without a sanitizer (`-s none`) cargo-fuzz needs no nightly
# flags, and the dev profile keeps the build short (debug assertions and overflow checks stay
# on). Installs cargo-fuzz when it is missing. New inputs the run discovers go to a scratch
# directory, not into the repository's corpus: to grow the kept corpus, run the fuzzer longer by
# hand and merge (see fuzz/README.md).
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${1:-15}"
case "$seconds" in
  ''|*[!0-9]*) echo "usage: $0 [seconds]" >&2; exit 2 ;;
esac

if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --version 0.13.2 --locked
fi

scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT

# -rss_limit_mb and -timeout turn a memory blow-up or a hang on one input into a failure too.
cargo fuzz run decode_and_map --sanitizer none --dev "$scratch" fuzz/corpus/decode_and_map -- \
  -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1
echo "fuzz smoke: decode_and_map ran ${seconds}s with no crash"
