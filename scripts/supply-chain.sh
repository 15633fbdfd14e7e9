#!/usr/bin/env bash
# The supply-chain check: `cargo deny check advisories licenses bans sources` with deny.toml,
# offline. Advisories come from the RustSec snapshot in ../shared/advisory-db (beside the
# project, never copied into it): cargo-deny wants a git repository under a name it derives from
# its default database address, so the snapshot is copied into a scratch directory outside the
# project, committed once, and the check pointed at it. Prints the snapshot's date.
#
#   bash scripts/supply-chain.sh        (scripts/test.sh runs it; cargo-deny from scripts/tools.sh)
set -euo pipefail
cd "$(dirname "$0")/.."

snapshot="${NNS_ADVISORY_DB:-../shared/advisory-db}"
if [ ! -f "${snapshot}/SNAPSHOT.md" ]; then
  echo "scripts/supply-chain.sh: no advisory snapshot at ${snapshot} (expected ../shared/advisory-db" \
    "beside the project, see its SNAPSHOT.md)" >&2
  exit 1
fi
bin_dir="$(bash scripts/tools.sh)"

scratch="$(mktemp -d)"
trap 'rm -rf "${scratch}"' EXIT
db="${scratch}/dbs/advisory-db-3157b0e258782691"
mkdir -p "${db}"
cp -R "${snapshot}/." "${db}/"
git -C "${db}" init --quiet
git -C "${db}" add -A
git -C "${db}" -c user.name=snapshot -c user.email=snapshot@localhost \
  commit --quiet --no-gpg-sign -m "advisory-db snapshot"
# deny.toml names the database directory by a placeholder; the copy of it the check reads
# points at the scratch directory.
sed "s|^db-path = .*|db-path = \"${scratch}/dbs\"|" deny.toml >"${scratch}/deny.toml"

# "commit <sha> of <date>" in SNAPSHOT.md, possibly across a line break.
date_line="$(tr '\n' ' ' <"${snapshot}/SNAPSHOT.md" | grep -E -o 'commit [0-9a-f]+ +of [0-9]{4}-[0-9]{2}-[0-9]{2}' | head -n1 | tr -s ' ' || true)"
echo "scripts/supply-chain.sh: advisories from the snapshot in ${snapshot}: ${date_line:-date unknown}"
"${bin_dir}/cargo-deny" --offline --color never --config "${scratch}/deny.toml" \
  check advisories licenses bans sources
echo "scripts/supply-chain.sh: passed against the advisory snapshot ${date_line:-date unknown}"
