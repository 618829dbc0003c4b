#!/usr/bin/env bash
# Install (see install.sh) and run every test: unit, golden scenarios, property and swarm tests,
# the store contract against real etcd, the API, the dashboard in headless Chromium, and the
# end-to-end tests on real QEMU guests in network namespaces (these need root). Lint (ruff) and type
# checks (mypy) on src/ run first: any violation fails the run before the tests start.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
check() {
    echo "== $*" >&2
    "$@" || { echo "FAILED: $* (see above; configured in pyproject.toml)" >&2; exit 1; }
}
check python3 -m ruff check src
check python3 -m mypy src
mkdir -p artifacts
exec python3 -m pytest -q -p no:cacheprovider "$@"
