"""End-to-end: two hosts and a witness, no shared storage (issue 11), on real QEMU guests.

The VM's disk is replicated between h1 and h2 (QEMU's synchronous mirror to the other host's NBD
export); each host and the witness run one etcd member in their own namespaces. The guest writes
1, 2, 3... to its disk, each synced (`SeqWriter`: the last acknowledged number is known outside).
After every failure the surviving copy must hold every acknowledged number, a sampler of the
machine's process table must never see the VM's QEMU on both hosts, and once everything is healed
and the VM stopped cleanly, `e2fsck -fn` must find both copies clean.
"""
from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from haven.lab.cluster import Lab
from haven.lab.pair import SeqWriter, fsck_clean, protected, read_seq
from haven.lab.sampler import QemuSampler
from haven.model.replica import CopyState
from haven.model.spec import DesiredState
from haven.model.state import VmState
from haven.runtime import intents

MISSING = [b for b in ("qemu-system-x86_64", "qemu-storage-daemon", "etcd", "ip", "e2fsck") if shutil.which(b) is None]
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root (namespaces, taps)"),
    pytest.mark.skipif(bool(MISSING), reason=f"not installed: {', '.join(MISSING)} (run scripts/install.sh)"),
]

VM = "vm1"


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with Lab(vms=1, pair=True, root=Path("/tmp/haven-pair-e2e"), settings={"host_settle_s": 0.0}) as running:
        yield running


def running_on(lab: Lab, not_on: str | None = None) -> str:
    snap = lab.wait(lambda s: (p := s.placements.get(VM)) and p.state is VmState.RUNNING and p.host != not_on, 120,
                    f"{VM} running" + (f" elsewhere than {not_on}" if not_on else ""))
    host = snap.placements[VM].host
    assert host is not None
    return host


@pytest.fixture
def healthy(lab: Lab) -> Iterator[Lab]:
    """Everything healed, the VM running with its other copy in sync; afterwards the same again,
    then the VM stopped cleanly and both copies checked with e2fsck, and started again."""
    lab.restore_hosts(120)
    running_on(lab)
    lab.wait(lambda s: protected(s, VM), 120, "the copies in sync")
    yield lab
    lab.restore_hosts(120)
    running_on(lab)
    lab.wait(lambda s: protected(s, VM), 120, "the copies in sync again")
    assert lab.store is not None
    intents.set_desired(lab.store, lab.layout, VM, DesiredState.STOPPED)
    lab.wait(lambda s: s.placements[VM].state is VmState.STOPPED and not lab.qemu_hosts(VM), 120, "stopped")
    try:
        for host in lab.members:
            clean, said = fsck_clean(lab.copy_image(VM, host))
            assert clean, f"{host}'s copy: {said}"
    finally:
        intents.set_desired(lab.store, lab.layout, VM, DesiredState.RUNNING)
        running_on(lab)


def until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout:g} s waiting for {what}"
        time.sleep(0.1)


def other(host: str) -> str:
    return "h2" if host == "h1" else "h1"


def no_double_run(sampler: QemuSampler) -> None:
    assert sampler.samples > 10 and not sampler.overlaps, sampler.overlaps


def test_primary_power_cut_fails_over_to_the_in_sync_copy_with_every_acknowledged_write(healthy: Lab) -> None:
    lab = healthy
    primary = running_on(lab)
    with QemuSampler(lab.root / "run") as sampler:
        with SeqWriter(lab.members[primary].run_dir, VM) as writer:
            lab.wait(lambda s: writer.acked >= writer.start + 10, 60, "ten acknowledged writes")
            lab.crash(primary)
            lab.wait(lambda s: writer.stopped(), 60, "the writer to notice")
        survivor = running_on(lab, not_on=primary)
        on_disk = read_seq(lab.members[survivor].run_dir, VM)
        no_double_run(sampler)
    assert writer.acked <= on_disk <= writer.acked + 1  # one more: in flight, on both, never acknowledged
    record = lab.snapshot().replicas[VM]
    assert record.primary == survivor and record.copies[0].state is CopyState.STALE


def test_after_a_resync_the_vm_fails_over_the_other_way(healthy: Lab) -> None:
    lab = healthy  # the last test left the VM on one host and the other copy resynced by `healthy`
    primary = running_on(lab)
    with QemuSampler(lab.root / "run") as sampler:
        with SeqWriter(lab.members[primary].run_dir, VM) as writer:
            lab.wait(lambda s: writer.acked >= writer.start + 5, 60, "acknowledged writes")
            lab.crash(primary)
            lab.wait(lambda s: writer.stopped(), 60, "the writer to notice")
        survivor = running_on(lab, not_on=primary)
        on_disk = read_seq(lab.members[survivor].run_dir, VM)
        no_double_run(sampler)
    assert writer.acked <= on_disk <= writer.acked + 1


def test_a_cut_link_marks_the_replica_stale_and_writes_go_on_without_a_failover(healthy: Lab) -> None:
    lab = healthy
    primary = running_on(lab)
    with QemuSampler(lab.root / "run") as sampler:
        with SeqWriter(lab.members[primary].run_dir, VM) as writer:
            lab.wait(lambda s: len(writer.latencies) >= 5, 60, "acknowledged writes")
            lab.cut_link("h1", "h2")
            cut_at = writer.acked
            snap = lab.wait(lambda s: s.replicas[VM].copies[0].state is CopyState.STALE, 30, "the copy stale")
            assert snap.replicas[VM].copies[0].reason == "the replica did not answer"
            lab.wait(lambda s: writer.acked >= cut_at + 5, 30, "writes going on alone")
            lab.heal_link("h1", "h2")
            lab.wait(lambda s: protected(s, VM), 60, "resynced after the link healed")
            lab.wait(lambda s: writer.acked >= cut_at + 10, 30, "writes going on replicated")
        no_double_run(sampler)
    assert lab.snapshot().placements[VM].host == primary and lab.qemu_hosts(VM) == [primary]


def test_replica_host_crash_then_primary_crash_does_not_fail_over_onto_the_stale_copy(healthy: Lab) -> None:
    lab = healthy
    primary = running_on(lab)
    replica = other(primary)
    with QemuSampler(lab.root / "run") as sampler:
        with SeqWriter(lab.members[primary].run_dir, VM) as writer:
            lab.crash(replica)
            lab.wait(lambda s: s.replicas[VM].copies[0].state is CopyState.STALE, 30, "the copy stale")
            stale_at = writer.acked
            lab.wait(lambda s: writer.acked >= stale_at + 5, 30, "writes the replica lacks")
            lab.power_on(replica)
            lab.wait(lambda s: s.records[replica].state.value == "online", 60, "the replica's host back")
            lab.crash(primary)
            lab.wait(lambda s: writer.stopped(), 60, "the writer to notice")
        # Its lease expires, it is fenced, and still nothing starts on the stale copy.
        snap = lab.wait(lambda s: s.records[primary].state.value in ("fenced", "offline"), 60, "primary fenced")
        time.sleep(5)
        snap = lab.snapshot()
        assert lab.qemu_hosts(VM) == [], "started on the copy that lacks acknowledged writes"
        assert snap.placements[VM].state is VmState.RECOVERING
        assert "lacks writes" in snap.placements[VM].reason, snap.placements[VM].reason
        lab.power_on(primary)
        assert running_on(lab) == primary
        on_disk = read_seq(lab.members[primary].run_dir, VM)
        no_double_run(sampler)
    assert writer.acked <= on_disk <= writer.acked + 1


def test_witness_down_then_a_host_crash_fails_nothing_over(healthy: Lab) -> None:
    lab = healthy
    primary = running_on(lab)
    with QemuSampler(lab.root / "run") as sampler:
        with SeqWriter(lab.members[primary].run_dir, VM) as writer:
            lab.wait(lambda s: len(writer.latencies) >= 3, 60, "acknowledged writes")
            lab.witness(up=False)
            lab.crash(primary)
            until(writer.stopped, 60, "the writer to notice")  # the store has no quorum: do not ask it
        time.sleep(8)  # well past lease expiry + grace: the survivor alone has no quorum
        assert lab.qemu_hosts(VM) == []
        lab.witness(up=True)
        survivor = running_on(lab, not_on=primary)  # the store is back: the in-sync copy takes over
        on_disk = read_seq(lab.members[survivor].run_dir, VM)
        no_double_run(sampler)
    assert writer.acked <= on_disk <= writer.acked + 1
