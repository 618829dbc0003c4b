#!/usr/bin/env bash
# Install (see install.sh) and run every test: unit, golden scenarios, property and swarm tests,
# the store contract against real etcd, the API, the dashboard in headless Chromium, and the
# end-to-end tests on real QEMU guests in network namespaces (these need root).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
mkdir -p artifacts
exec python3 -m pytest -q -p no:cacheprovider "$@"
