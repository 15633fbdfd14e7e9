#!/usr/bin/env bash
# Builds deploy/Dockerfile's runtime stage and runs it, without a Docker daemon (none runs on the
# CI machine) and without an image registry (none is reachable):
#   1. a debian:bookworm-slim base made with debootstrap (minbase) from the mirror this machine's
#      apt is configured with (read at run time from /etc/apt), imported with buildah under the
#      name the Dockerfile's runtime stage uses;
#   2. the runtime stage built with buildah (--isolation chroot --storage-driver vfs --pull=never),
#      around the release binary built on the host (`--target runtime` skips the build stage; a
#      copy of the Dockerfile names a host-built stage in its place);
#   3. `--demo` run in the image by podman (--runtime runc --cgroup-manager cgroupfs) as the
#      image's non-root user (65532) with a read-only root filesystem, no capabilities and no
#      network; the image's size printed.
# NNS_IMAGE_KEEP=1 keeps the built image in the storage (dropped by default: vfs copies every
# layer). NNS_IMAGE_FULL=1 builds every stage instead (cargo compiles again inside, with the host's CA
# file mounted for the crate downloads): slow, and not part of --full.
#
#   bash scripts/image.sh            (root; or: bash scripts/test.sh --full)
#
# Optional, not in .ci/run: it needs root, namespaces, and several minutes (see docs/deployment.md
# and the timings printed at the end). Installs buildah, podman, runc, debootstrap when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
as_root=""
if [ "$(id -u)" -ne 0 ]; then as_root="sudo"; fi
start="${SECONDS}"
version="$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)"
image="localhost/nexudus-nevis-sync:${version}"
base="$(sed -n 's/^FROM \([^ ]*\)$/\1/p' deploy/Dockerfile | tail -n1)"
[ -n "${base}" ] || { echo "scripts/image.sh: no runtime FROM line in deploy/Dockerfile" >&2; exit 1; }

missing=()
for tool in buildah podman runc debootstrap; do
  command -v "${tool}" >/dev/null 2>&1 || [ -x "/usr/sbin/${tool}" ] || missing+=("${tool}")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "scripts/image.sh: installing ${missing[*]} with apt-get"
  $as_root apt-get update -qq
  $as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
    buildah podman runc debootstrap
fi

# Everything under one scratch directory outside the project: storage (vfs), the rootfs.
work="${NNS_IMAGE_WORK:-/var/tmp/nexudus-nevis-sync-image}"
$as_root mkdir -p "${work}"
storage=(--root "${work}/storage" --runroot "${work}/run" --storage-driver vfs)

# 1. The base image, once per work directory.
if ! $as_root buildah "${storage[@]}" inspect --type image "${base}" >/dev/null 2>&1; then
  # The mirror apt uses here: the first deb822 URIs line or one-line `deb` entry for Debian.
  mirror="$(sed -n 's/^URIs: *\([^ ]*\/debian\)\/\{0,1\}$/\1/p' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -n1)"
  if [ -z "${mirror}" ]; then
    mirror="$(sed -n 's/^deb \(\[[^]]*\] \)\{0,1\}\([^ ]*\/debian\)\/\{0,1\} .*/\2/p' \
      /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null | head -n1)"
  fi
  [ -n "${mirror}" ] || { echo "scripts/image.sh: no Debian mirror in /etc/apt" >&2; exit 1; }
  rootfs="${work}/rootfs"
  $as_root rm -rf "${rootfs}"
  t="${SECONDS}"
  $as_root debootstrap --variant=minbase bookworm "${rootfs}" "${mirror}" >"${work}/debootstrap.log" 2>&1 \
    || { tail -n 20 "${work}/debootstrap.log"; exit 1; }
  # What -slim drops: apt lists and caches, documentation.
  $as_root rm -rf "${rootfs}"/var/lib/apt/lists/* "${rootfs}"/var/cache/apt/*.bin \
    "${rootfs}"/usr/share/doc/* "${rootfs}"/usr/share/man/*
  echo "scripts/image.sh: debootstrap took $((SECONDS - t)) s"
  $as_root tar -C "${rootfs}" -c . | $as_root buildah "${storage[@]}" import - "${base}" >/dev/null \
    2>&1 || {
    # buildah has no import: make the image from scratch with the tree copied in.
    ctr="$($as_root buildah "${storage[@]}" from scratch)"
    mnt="$($as_root buildah "${storage[@]}" mount "${ctr}")"
    $as_root cp -a "${rootfs}/." "${mnt}/"
    $as_root buildah "${storage[@]}" umount "${ctr}" >/dev/null
    $as_root buildah "${storage[@]}" commit --quiet "${ctr}" "${base}" >/dev/null
    $as_root buildah "${storage[@]}" rm "${ctr}" >/dev/null
  }
  $as_root rm -rf "${rootfs}"
fi

# 2. The image.
t="${SECONDS}"
if [ "${NNS_IMAGE_FULL:-0}" = "1" ]; then
  # The build stage's base (rust:…) cannot be made here like the runtime's: it must already be in
  # the storage, e.g. `podman --root … load` of an archive saved where a registry is reachable.
  builder="$(sed -n 's/^FROM \([^ ]*\) AS build$/\1/p' deploy/Dockerfile)"
  if ! $as_root buildah "${storage[@]}" inspect --type image "${builder}" >/dev/null 2>&1; then
    echo "scripts/image.sh: NNS_IMAGE_FULL=1 needs the image ${builder} in ${work}/storage;" \
      "no image registry is reachable here to pull it (see docs/deployment.md)" >&2
    exit 1
  fi
  ca="/etc/ssl/certs/ca-certificates.crt"
  $as_root buildah "${storage[@]}" build --isolation chroot --pull=never --layers=false \
    --volume "${ca}:${ca}:ro" -f deploy/Dockerfile -t "${image}" .
else
  [ -x target/release/nexudus-nevis-sync ] || cargo build --release --locked --bin nexudus-nevis-sync
  ctx="${work}/context"
  $as_root rm -rf "${ctx}"
  $as_root mkdir -p "${ctx}/out"
  $as_root cp target/release/nexudus-nevis-sync "${ctx}/out/"
  # The Dockerfile with its build stage replaced by the host's binary: everything from the
  # runtime FROM on is the Dockerfile's own text.
  {
    echo "FROM scratch AS build"
    echo "COPY out/nexudus-nevis-sync /out/nexudus-nevis-sync"
    sed -n '/^FROM '"${base//\//\\/}"'$/,$p' deploy/Dockerfile
  } | $as_root tee "${ctx}/Dockerfile" >/dev/null
  $as_root buildah "${storage[@]}" build --isolation chroot --pull=never --layers=false \
    -f "${ctx}/Dockerfile" -t "${image}" "${ctx}"
fi
echo "scripts/image.sh: image build took $((SECONDS - t)) s"

# 3. Run --demo in it: non-root (the image's USER), read-only root, no capabilities, no network.
t="${SECONDS}"
podman=(podman "${storage[@]}" --runtime runc --cgroup-manager cgroupfs --events-backend none)
# podman's default limits (open files 1048576, processes) are above the hard limits a sandboxed
# host may set, and without CAP_SYS_RESOURCE runc cannot raise them ("error setting rlimit type
# 7"/"6": operation not permitted): ask for limits below any such host's, ample for the binary.
run=(run --rm --pull=never --ulimit nofile=4096:4096 --ulimit nproc=4096:4096 --read-only
  --network none)
$as_root "${podman[@]}" "${run[@]}" --cap-drop ALL --security-opt no-new-privileges \
  "${image}" --version
user="$($as_root "${podman[@]}" "${run[@]}" --entrypoint /usr/bin/id "${image}" -u)"
[ "${user}" = "65532" ] || { echo "scripts/image.sh: the image runs as uid ${user}, not 65532" >&2; exit 1; }
$as_root "${podman[@]}" "${run[@]}" --cap-drop ALL --security-opt no-new-privileges \
  --workdir /tmp --tmpfs /tmp "${image}" --demo | tail -n 5
echo "scripts/image.sh: --demo in the image took $((SECONDS - t)) s"

size="$($as_root "${podman[@]}" image inspect --format '{{.Size}}' "${image}")"
echo "scripts/image.sh: image size of ${image}: $((size / 1024 / 1024)) MiB (${size} bytes);" \
  "base $($as_root "${podman[@]}" image inspect --format '{{.Size}}' "${base}") bytes"
echo "scripts/image.sh: ${image} built and ran --demo as uid 65532 with a read-only root" \
  "in $((SECONDS - start)) s"

# vfs keeps a full copy per layer: drop the image (and any left from earlier runs) unless asked to
# keep it, so repeated runs do not fill the disk; the base stays for the next run.
if [ "${NNS_IMAGE_KEEP:-0}" != "1" ]; then
  $as_root "${podman[@]}" rmi -f "${image}" >/dev/null
  $as_root "${podman[@]}" image prune -f >/dev/null
fi
