#!/usr/bin/env bash
# Install everything haven needs on a fresh Debian 12 machine (root): system packages for the real
# lab (QEMU, etcd, network tools, the guest's parts), the browser for the dashboard test, and the
# Python package with its test extras. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(etcd-server etcd-client qemu-system-x86 qemu-utils busybox-static cpio e2fsprogs
              iproute2 iputils-arping iputils-ping chromium openipmi ipmitool fence-agents)
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "not root: skipping system packages (${missing[*]}); the real lab and browser tests need them" >&2
  fi
fi

python3 -m pip install -q --disable-pip-version-check -e ".[test]" 2>&1 | grep -v -E "^WARNING: (Running pip as|Location)" || true
# Fail loudly if the install did not work (the API's imports include its packaged Swagger UI).
python3 -c "import haven.api, swagger_ui_bundle"
