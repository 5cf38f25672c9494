#!/usr/bin/env bash
# Installs the Debian packages the lab and the benchmarks need, only when something is missing.
set -euo pipefail

packages=(samba samba-ad-dc winbind krb5-user ldb-tools ldap-utils chrony faketime prometheus iproute2
  prometheus-blackbox-exporter chromium time
  libkrb5-dev gcc python3-dev  # python-gssapi builds from source against MIT Kerberos
  systemd make)  # systemd-analyze verifies deploy/systemd/; make runs in tests/unit/test_deploy.py

missing=()
for pkg in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null; then
    exec sudo "$0" "$@"
  fi
  echo "install-system-deps: missing ${missing[*]}; run as root (the lab needs root anyway)" >&2
  exit 1
fi

echo "install-system-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# Debian starts daemons on install where it can; the lab runs its own and stops strays itself.
apt-get install -y -qq "${missing[@]}" >/dev/null
