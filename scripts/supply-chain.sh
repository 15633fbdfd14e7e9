#!/usr/bin/env bash
# The supply-chain check: `cargo deny check` with deny.toml, offline where it can be. Advisories
# come from the first of these that is there:
#   1. the RustSec snapshot beside the project (../shared/advisory-db, or $NNS_ADVISORY_DB): CI
#      and the developers' machines have it. cargo-deny wants a git repository under a name it
#      derives from its default database address, so the snapshot is copied into a scratch
#      directory outside the project (never into it), committed once, and the check pointed at it;
#   2. else cargo-deny's own database, fetched into a scratch directory (a machine with access to
#      the advisory database's host);
#   3. else nothing: licenses, bans and sources are still checked, and one loud line says that
#      advisories were not checked and why. A clean clone on a closed machine passes this way; the
#      line is there so that nobody mistakes it for a full check.
#
#   bash scripts/supply-chain.sh        (scripts/test.sh runs it; cargo-deny from scripts/tools.sh,
#                                        or the one on PATH when there is one)
set -euo pipefail
cd "$(dirname "$0")/.."

if command -v cargo-deny >/dev/null 2>&1; then
  deny="$(command -v cargo-deny)"
else
  deny="$(bash scripts/tools.sh)/cargo-deny"
fi
# The fetch of cargo-deny's own database, bounded: a closed machine must not wait on it.
fetch_timeout="${NNS_ADVISORY_FETCH_TIMEOUT:-120}"

scratch="$(mktemp -d)"
trap 'rm -rf "${scratch}"' EXIT

# config DB_PATH [DEFAULT_URLS]: deny.toml with db-path pointed at DB_PATH (the file names it by
# a placeholder); with DEFAULT_URLS, without the empty db-urls, so cargo-deny uses its default.
config() {
  if [ "${2:-}" = "default-urls" ]; then
    sed -e "s|^db-path = .*|db-path = \"$1\"|" -e '/^db-urls = /d' deny.toml
  else
    sed "s|^db-path = .*|db-path = \"$1\"|" deny.toml
  fi >"${scratch}/deny.toml"
}

check() {
  "${deny}" "$@" --color never --config "${scratch}/deny.toml" check "${checks[@]}"
}

snapshot="${NNS_ADVISORY_DB:-../shared/advisory-db}"
if [ -f "${snapshot}/SNAPSHOT.md" ]; then
  db="${scratch}/dbs/advisory-db-3157b0e258782691"
  mkdir -p "${db}"
  cp -R "${snapshot}/." "${db}/"
  git -C "${db}" init --quiet
  git -C "${db}" add -A
  git -C "${db}" -c user.name=snapshot -c user.email=snapshot@localhost \
    commit --quiet --no-gpg-sign -m "advisory-db snapshot"
  config "${scratch}/dbs"
  # "commit <sha> of <date>" in SNAPSHOT.md, possibly across a line break.
  date_line="$(tr '\n' ' ' <"${snapshot}/SNAPSHOT.md" | grep -E -o 'commit [0-9a-f]+ +of [0-9]{4}-[0-9]{2}-[0-9]{2}' | head -n1 | tr -s ' ' || true)"
  echo "scripts/supply-chain.sh: advisories from the snapshot in ${snapshot}: ${date_line:-date unknown}"
  checks=(advisories licenses bans sources)
  check --offline
  echo "scripts/supply-chain.sh: passed against the advisory snapshot ${date_line:-date unknown}"
  exit 0
fi

echo "scripts/supply-chain.sh: no advisory snapshot at ${snapshot}; fetching cargo-deny's own" \
  "advisory database (at most ${fetch_timeout} s)"
config "${scratch}/fetched" default-urls
if timeout "${fetch_timeout}" "${deny}" --color never --config "${scratch}/deny.toml" fetch db \
  >"${scratch}/fetch.log" 2>&1; then
  checks=(advisories licenses bans sources)
  check
  echo "scripts/supply-chain.sh: passed against cargo-deny's advisory database, fetched now"
  exit 0
fi

why="$(grep -v '^\s*$' "${scratch}/fetch.log" | tail -n1 | cut -c1-200)"
checks=(licenses bans sources)
check --offline
echo "scripts/supply-chain.sh: WARNING: ADVISORIES NOT CHECKED: no snapshot at ${snapshot} and" \
  "cargo-deny's database could not be fetched (${why:-timed out}); licenses, bans and sources passed"
