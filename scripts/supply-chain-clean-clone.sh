#!/usr/bin/env bash
# The supply-chain check as a user who cloned the repository meets it: a clone of HEAD in a fresh
# folder, with no advisory snapshot beside it (no ../shared), must pass scripts/supply-chain.sh
# (exit 0) and say which advisories it checked: cargo-deny's own database when it could be
# fetched, else the one loud line that they were not checked. scripts/test.sh runs it after the
# check with the snapshot; cargo-deny comes from PATH (scripts/test.sh puts target/tools/bin
# there), so the clone installs nothing.
set -euo pipefail
cd "$(dirname "$0")/.."

scratch="$(mktemp -d)"
trap 'rm -rf "${scratch}"' EXIT
git clone --quiet --no-hardlinks . "${scratch}/project"
out="${scratch}/out.log"
if ! (cd "${scratch}/project" && env -u NNS_ADVISORY_DB NNS_ADVISORY_FETCH_TIMEOUT=60 \
  bash scripts/supply-chain.sh) >"${out}" 2>&1; then
  cat "${out}" >&2
  echo "scripts/supply-chain-clean-clone.sh: the check fails on a clean clone" >&2
  exit 1
fi
if ! grep -E -q "ADVISORIES NOT CHECKED|passed against cargo-deny's advisory database" "${out}"; then
  cat "${out}" >&2
  echo "scripts/supply-chain-clean-clone.sh: a clean clone did not say which advisories it checked" >&2
  exit 1
fi
grep -E "ADVISORIES NOT CHECKED|passed against" "${out}"
echo "scripts/supply-chain-clean-clone.sh: a clean clone without ../shared passes"
