"""The fencing section of the lab bench (issue 12). Measurement only; lab_bench.py reports.

Three labs in one run, each with a BMC per host (ipmi_sim, real IPMI) driven by fence_ipmilan:
- default timings, no fast fencing: per run, a power cut of a non-manager host with its BMC
  working (lost at lease expiry -> power-off confirmed -> restart, no grace), and one with its BMC
  stopped (lost at lease expiry -> the grace): the crash RTO excluding guest boot with and without
  a working device, side by side; the IPMI off + confirmation time from the manager's events; and
  a power cut of the manager's own host: its lost -> fenced wait beside the others' (a new
  manager takes over first).
- fast fencing (heartbeat_timeout_s FAST_TIMEOUT_S): per run, a power cut timed to the new QEMU's
  start (cut -> start), and a host isolated (alive, cut from the store and its peers) while the
  process table is sampled every 15 ms: samples with a VM's QEMU on two hosts.
- failsafe: per run, every etcd member killed for OUTAGE_S seconds: VMs whose QEMU stopped.
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from haven.core.events import EventKind, SubjectKind
from haven.lab.cluster import Lab
from haven.lab.demo import CrashSample, events_since, fences_settled, measure_crash, wait_healthy
from haven.lab.sampler import QemuSampler, lab_qemus
from haven.model.state import VmState

FAST_TIMEOUT_S = 0.3
OUTAGE_S = 10.0
SETTLE = {"host_settle_s": 0.0}


def back_on(lab: Lab, host: str) -> None:
    """Undo a crash or an isolation of `host` and wait until everything runs and answers, one VM
    at least on every host."""
    lab.heal(host)
    lab.power_on(host)
    wait_healthy(lab)
    lab.spread_vms(120)


def victim(lab: Lab, manager: bool = False) -> str:
    """A host running a VM: the manager's if `manager`, else another (no one would hear the
    manager's heartbeats stop)."""
    snap = lab.snapshot()
    return next(h for h in sorted(lab.members, reverse=True) if (h == snap.manager) == manager
                and any(p.host == h for p in snap.placements.values()))


def crash(lab: Lab, with_device: bool, manager: bool = False) -> tuple[CrashSample, float | None]:
    """A power cut of a host running a VM (the manager's if `manager`): the sample, and the
    power-off's IPMI time."""
    host = victim(lab, manager)
    bmc = lab.bmcs[host]
    if not with_device:
        bmc.stop()
    since = time.monotonic()
    try:
        sample = measure_crash(lab, host)[0]
    finally:
        if not bmc.running:
            lab.wait(lambda s: fences_settled(lab, host, since), 60, f"the power fences of {host} given up")
            bmc.start()
    offs = [e.seconds for e in events_since(lab, since) if e.kind is EventKind.POWER_FENCE and e.new == "off"
            and (e.subject_kind, e.name) == (SubjectKind.HOST, host) and e.seconds is not None]
    back_on(lab, host)
    return sample, offs[0] if offs else None


def isolate(lab: Lab) -> int:
    """Isolate a non-manager host running a VM; samples with a VM's QEMU on two hosts until every VM
    runs again elsewhere."""
    host = victim(lab)
    with QemuSampler(lab.root / "run") as sampler:
        lab.isolate(host)
        lab.wait(lambda s: all(p.state is VmState.RUNNING and p.host != host for p in s.placements.values()),
                 120, f"every VM away from {host}")
    back_on(lab, host)
    return len(sampler.overlaps)


def store_outage(lab: Lab) -> int:
    """Every etcd member killed for OUTAGE_S: how many VMs' QEMUs stopped (or changed)."""
    assert lab.etcd is not None
    before = {vm: pid for pid, _, vm in lab_qemus(lab.root / "run")}
    for i in range(3):
        lab.etcd.kill_member(i)
    time.sleep(OUTAGE_S)
    for i in range(3):
        lab.etcd.restart_member(i, wait=False)
    lab.etcd.wait_healthy(30)
    time.sleep(5.0)  # renewals resume: a VM killed now counts too
    after = {vm: pid for pid, _, vm in lab_qemus(lab.root / "run")}
    wait_healthy(lab)
    return sum(after.get(vm) != pid for vm, pid in before.items())


def bench_fencing(root: Path, runs: int) -> dict[str, Any]:
    out: dict[str, Any] = {"with_device": [], "lease_only": [], "power_fence_s": [], "fast": [],
                           "fencing_wait": [], "fencing_wait_manager_crashed": [],
                           "isolated_double_runs": 0, "isolated_runs": 0, "store_outage_vm_stops": 0,
                           "store_outages": 0}
    with Lab(hosts=3, vms=3, root=root, fencing=True, settings=SETTLE) as lab:
        wait_healthy(lab)
        lab.spread_vms(120)
        for run in range(runs):  # alternate on the same lab: the device's effect alone
            sample, off = crash(lab, with_device=True)
            out["with_device"].append(sample.excl_boot)
            if off is not None:
                out["power_fence_s"].append(off)
            lease_only, _ = crash(lab, with_device=False)
            out["lease_only"].append(lease_only.excl_boot)
            takeover, _ = crash(lab, with_device=True, manager=True)  # a new manager must take over first
            for got, key in ((sample, "fencing_wait"), (takeover, "fencing_wait_manager_crashed")):
                if got.fencing is not None:
                    out[key].append(got.fencing)
            print(f"  run {run + 1}/{runs}: crash -> QEMU started {sample.excl_boot:.2f} s with the device "
                  f"(IPMI off+confirm {off} s, lost -> fenced {sample.fencing} s), {lease_only.excl_boot:.2f} s "
                  f"without; the manager's host: lost -> fenced {takeover.fencing} s", flush=True)
    shutil.rmtree(root / "run", ignore_errors=True)
    fast = {**SETTLE, "heartbeat_timeout_s": FAST_TIMEOUT_S}
    with Lab(hosts=3, vms=3, root=root, fencing=True, settings=fast) as lab:
        wait_healthy(lab)
        lab.spread_vms(120)
        for run in range(runs):
            sample, _ = crash(lab, with_device=True)
            out["fast"].append(sample.excl_boot)
            doubles = isolate(lab)
            out["isolated_double_runs"] += doubles
            out["isolated_runs"] += 1
            print(f"  fast run {run + 1}/{runs}: cut -> QEMU started {sample.excl_boot:.2f} s (lost after "
                  f"{sample.detection} s); isolated host: {doubles} double-run samples", flush=True)
    shutil.rmtree(root / "run", ignore_errors=True)
    with Lab(hosts=3, vms=3, root=root, settings={**SETTLE, "failsafe": True, "lease_ttl_s": 3.0}) as lab:
        wait_healthy(lab)
        for run in range(runs):
            stops = store_outage(lab)
            out["store_outage_vm_stops"] += stops
            out["store_outages"] += 1
            print(f"  failsafe run {run + 1}/{runs}: {OUTAGE_S:g} s without etcd, {stops} VM(s) stopped", flush=True)
    return out
