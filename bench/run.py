"""Run every benchmark: the core and simulator speed, then the real-cluster lab (root only).

    python3 bench/run.py [--runs 10] [--skip-core] [--skip-lab] [--json artifacts/lab-bench.json]

Extra options after `--` go to bench/lab_bench.py (e.g. `-- --live-runs 10`).
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10, help="host crashes for the RTO (lab bench)")
    parser.add_argument("--skip-core", action="store_true", help="skip bench/core_bench.py")
    parser.add_argument("--skip-lab", action="store_true", help="skip bench/lab_bench.py")
    parser.add_argument("--json", default=None, help="lab bench: also write every sample to this file")
    parser.add_argument("lab_args", nargs="*", help="more options for bench/lab_bench.py (after --)")
    args = parser.parse_args()
    failed = 0
    if not args.skip_core:
        print("== core and simulator (bench/core_bench.py) ==", flush=True)
        failed |= subprocess.run([sys.executable, str(HERE / "core_bench.py")]).returncode
    if not args.skip_lab:
        print("\n== real cluster lab (bench/lab_bench.py) ==", flush=True)
        extra = ["--json", args.json] if args.json else []
        failed |= subprocess.run([sys.executable, str(HERE / "lab_bench.py"), "--runs", str(args.runs), *extra,
                                  *args.lab_args]).returncode
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
