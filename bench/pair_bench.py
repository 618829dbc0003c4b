"""The pair section of the lab bench (issue 11): two hosts and a witness, no shared storage,
beside a two-host shared-storage lab in the same run. Measurement only; lab_bench.py reports.

Per pair run: a power cut of the VM's host while the guest writes synced numbers (SeqWriter),
timed to the guest's HTTP answer from a new boot on the other host; the surviving copy must hold
the last acknowledged number; a sampler of the process table counts the samples in which the
VM's QEMU ran on both hosts. Then the crashed host is powered on and the time from its return
(online) to its copy in sync again is a full resync; once, the pair's link is cut for 10 s and
the time from the heal to in-sync is the resync after an outage. Synced-write latency inside the
guest: `sync` after a 4 KiB write, 200 times in one guest shell, once replicated, once with the
replica cut off (the same VM on the same disk writing alone: the local figure).
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from haven.drivers.guest_agent import GuestAgent
from haven.drivers.qemu_cmdline import VmPaths
from haven.lab.cluster import Lab
from haven.lab.demo import accelerator
from haven.lab.pair import SeqWriter, protected, read_seq
from haven.lab.probe import vm_back
from haven.lab.sampler import QemuSampler
from haven.model.replica import CopyState
from haven.model.state import HostState, VmState

VM = "vm1"
WRITES = 200  # synced 4 KiB writes per latency sample
SETTLE = {"host_settle_s": 0.0}


def placed_running(lab: Lab) -> str:
    snap = lab.wait(lambda s: (p := s.placements.get(VM)) and p.state is VmState.RUNNING, 120, "running")
    host = snap.placements[VM].host
    assert host is not None
    return host


def write_latency_ms(lab: Lab, host: str) -> float:
    """Median-free mean of WRITES synced 4 KiB writes in one guest shell, minus the same shell
    doing nothing: the guest agent's round trip is not in it."""
    agent = GuestAgent(VmPaths.under(lab.members[host].run_dir / "vms", VM).guest_agent)
    loop = (f"i=0; while [ $i -lt {WRITES} ]; do dd if=/dev/zero of=/mnt/disk/lat bs=4096 count=1 "
            "conv=notrunc 2>/dev/null; sync; i=$((i+1)); done")
    empty = f"i=0; while [ $i -lt {WRITES} ]; do i=$((i+1)); done"

    def timed(script: str) -> float:
        started = time.monotonic()
        result = agent.exec(["/bin/sh", "-c", script], timeout=300)
        assert result.ok, result.stderr
        return time.monotonic() - started

    return round((timed(loop) - timed(empty)) / WRITES * 1000, 3)


def crash_rto(lab: Lab, host: str) -> float:
    return vm_back(lab, VM, lambda: lab.crash(host))


def wait_online(lab: Lab, host: str) -> None:
    lab.wait(lambda s: (r := s.records.get(host)) is not None and r.state is HostState.ONLINE
             and host in s.alive, 120, f"{host} online")


def bench_pair(root: Path, runs: int) -> dict[str, Any]:
    out: dict[str, Any] = {"pair_crash": [], "shared_crash": [], "resync_full": [], "lost": 0, "double_runs": 0,
                           "latency_local_ms": [], "latency_replicated_ms": []}
    with Lab(vms=1, pair=True, root=root, settings=SETTLE) as lab:
        out["accel"] = accelerator(lab)
        primary = placed_running(lab)
        lab.wait(lambda s: protected(s, VM), 120, "in sync")
        lab.wait_answer(VM, 60)
        for _ in range(3):  # alternate, on the same VM and disk
            out["latency_replicated_ms"].append(write_latency_ms(lab, primary))
            lab.cut_link("h1", "h2")
            lab.wait(lambda s: s.replicas[VM].copies[0].state is CopyState.STALE, 30, "the copy stale")
            out["latency_local_ms"].append(write_latency_ms(lab, primary))
            lab.heal_link("h1", "h2")
            lab.wait(lambda s: protected(s, VM), 60, "resynced")
        lab.cut_link("h1", "h2")
        lab.wait(lambda s: s.replicas[VM].copies[0].state is CopyState.STALE, 30, "the copy stale")
        time.sleep(10.0)
        lab.heal_link("h1", "h2")
        t0 = time.monotonic()
        lab.wait(lambda s: protected(s, VM), 60, "resynced after the outage")
        out["resync_after_outage"] = round(time.monotonic() - t0, 3)
        for run in range(runs):
            primary = placed_running(lab)
            lab.wait(lambda s: protected(s, VM), 120, "in sync")
            lab.wait_answer(VM, 60)
            with QemuSampler(lab.root / "run") as sampler:
                with SeqWriter(lab.members[primary].run_dir, VM) as writer:
                    lab.wait(lambda s, w=writer: w.acked >= w.start + 3, 60, "acknowledged writes")
                    out["pair_crash"].append(crash_rto(lab, primary))
                survivor = placed_running(lab)
                on_disk = read_seq(lab.members[survivor].run_dir, VM)
            out["lost"] += int(on_disk < writer.acked)
            out["double_runs"] += len(sampler.overlaps)
            lab.power_on(primary)
            wait_online(lab, primary)
            t0 = time.monotonic()
            lab.wait(lambda s: protected(s, VM), 120, "the returning copy resynced")
            out["resync_full"].append(round(time.monotonic() - t0, 3))
            print(f"  pair run {run + 1}/{runs}: back after {out['pair_crash'][-1]:.2f} s on {survivor}, "
                  f"acked {writer.acked} on disk {on_disk}, resync {out['resync_full'][-1]:.2f} s", flush=True)
    shutil.rmtree(root / "run", ignore_errors=True)
    with Lab(hosts=2, vms=1, root=root, settings=SETTLE) as lab:  # the same shape on shared storage
        for run in range(runs):
            lab.wait_answer(VM, 120)
            host = placed_running(lab)
            out["shared_crash"].append(crash_rto(lab, host))
            lab.power_on(host)
            wait_online(lab, host)
            print(f"  shared run {run + 1}/{runs}: back after {out['shared_crash'][-1]:.2f} s", flush=True)
    return out
