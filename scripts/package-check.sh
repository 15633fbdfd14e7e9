#!/usr/bin/env bash
# Installs the Debian package scripts/package.sh built on this machine and checks it the way an
# operator meets it: lintian (no error; each warning kept is overridden in
# deploy/debian/lintian-overrides with its reason), `dpkg -i`, `--version` and `--demo` from
# /usr/bin, `systemd-analyze verify` on the installed units, the conffile's mode, the man page and
# completions, then `dpkg -r` (the config stays) and `dpkg --purge` (it goes).
# Needs root (dpkg); uses sudo when not root. Leaves the machine without the package.
#
#   bash scripts/package-check.sh      (after scripts/package.sh; scripts/test.sh runs both)
set -euo pipefail
cd "$(dirname "$0")/.."
as_root=""
if [ "$(id -u)" -ne 0 ]; then as_root="sudo"; fi

pkg=nexudus-nevis-sync
version="$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)"
deb="$(ls target/debian/${pkg}_${version}*_amd64.deb)"
fail() { echo "scripts/package-check.sh: FAILED: $*" >&2; exit 1; }
echo "scripts/package-check.sh: ${deb} ($(du -k "${deb}" | cut -f1) KiB)"

# lintian: errors and warnings fail, unless overridden (deploy/debian/lintian-overrides, each with
# its reason); the overrides are shown beside the rest (O:), and infos (I:) are printed too.
lintian_out="$(lintian --fail-on error,warning --display-info "${deb}" 2>&1)" \
  || { echo "${lintian_out}"; fail "lintian"; }
echo "${lintian_out}"
lintian --show-overrides --tags non-standard-file-perm "${deb}" 2>/dev/null | grep '^O:' || true

# A previous interrupted run may have left it installed.
$as_root dpkg --purge "${pkg}" >/dev/null 2>&1 || true
trap '$as_root dpkg --purge "${pkg}" >/dev/null 2>&1 || true' EXIT
$as_root dpkg -i "${deb}"

[ "$(command -v ${pkg})" = "/usr/bin/${pkg}" ] || fail "${pkg} is not /usr/bin/${pkg} on PATH"
/usr/bin/${pkg} --version | grep -qx "${pkg} ${version}" || fail "--version is not ${version}"
echo "scripts/package-check.sh: $(/usr/bin/${pkg} --version)"
demo_out="$(cd "$(mktemp -d)" && timeout 120 /usr/bin/${pkg} --demo 2>&1)" \
  || { echo "${demo_out}"; fail "--demo from /usr/bin"; }
echo "${demo_out}" | tail -n 3

units=(/lib/systemd/system/${pkg}.service /lib/systemd/system/${pkg}-oneshot.service
  /lib/systemd/system/${pkg}.timer)
for unit in "${units[@]}"; do [ -f "${unit}" ] || fail "missing ${unit}"; done
verify_out="$(systemd-analyze verify "${units[@]}" 2>&1)" || { echo "${verify_out}"; fail "systemd-analyze verify"; }
# verify exits 0 on some warnings; any line about our units is one.
if echo "${verify_out}" | grep -q "${pkg}"; then echo "${verify_out}"; fail "systemd-analyze verify warned"; fi
echo "scripts/package-check.sh: systemd-analyze verify passed on the installed units"

conf=/etc/${pkg}/config.toml
[ "$(stat -c '%a %U:%G' "${conf}")" = "640 root:root" ] || fail "${conf} is $(stat -c '%a %U:%G' "${conf}")"
dpkg-query --showformat='${Conffiles}\n' --show "${pkg}" | grep -q " ${conf} " || fail "${conf} is no conffile"
man -w ${pkg} >/dev/null 2>&1 || [ -f /usr/share/man/man1/${pkg}.1.gz ] || fail "no man page"
zcat /usr/share/man/man1/${pkg}.1.gz | grep -q -- 'sync\\-now' || fail "man page without --sync-now"
for f in /usr/share/bash-completion/completions/${pkg} /usr/share/zsh/vendor-completions/_${pkg} \
  /usr/share/fish/vendor_completions.d/${pkg}.fish /usr/share/doc/${pkg}/changelog.Debian.gz \
  /usr/share/doc/${pkg}/examples/http-auth.conf; do
  [ -s "${f}" ] || fail "missing ${f}"
done
bash -c "source /usr/share/bash-completion/completions/${pkg}" || fail "bash completion does not load"

echo "# an operator's edit" | $as_root tee -a "${conf}" >/dev/null
$as_root dpkg -r "${pkg}"
[ ! -e /usr/bin/${pkg} ] || fail "dpkg -r left /usr/bin/${pkg}"
grep -q "an operator's edit" "${conf}" || fail "dpkg -r did not keep the edited ${conf}"
$as_root dpkg --purge "${pkg}"
[ ! -e "${conf}" ] && [ ! -e /etc/${pkg} ] || fail "dpkg --purge left ${conf}"
echo "scripts/package-check.sh: passed (installed, ran, verified, removed keeping the config, purged)"
