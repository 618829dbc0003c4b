#!/usr/bin/env bash
# Install (see install.sh) and run the demo. As root with QEMU available it runs the real lab demo
# (namespaced hosts, real guests, a host crash and migrations); otherwise the simulated one.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
if [ "$(id -u)" -eq 0 ] && command -v qemu-system-x86_64 >/dev/null && haven lab --help >/dev/null 2>&1 \
   && haven lab demo --help >/dev/null 2>&1; then
  exec haven lab demo "$@"
fi
exec haven sim demo
