"""The manager's part of replicated pools (model.replica): where a VM may start, and who its
primary is once it does.

The rule that keeps every acknowledged write: a VM starts only on a host whose copy of each of
its replicated disks holds everything acknowledged, which is its primary, or a host whose
replicas the primary's agent last recorded in sync. Nothing else lifts it but an operator's
`promote`, which accepts the loss in so many words.
"""
from __future__ import annotations

from haven.core.decision import Decision
from haven.core.scheduler import Capacity, Confine, why_not
from haven.model.replica import ReplicaRecord, first_record, moved_record
from haven.model.spec import VmSpec
from haven.model.state import ClusterView, Placement, VmState

STARTED_STATES = frozenset({VmState.STARTING, VmState.RUNNING})
# Runs nowhere (its host lost or fenced, or stopped): the states a promotion may start it from.
PROMOTABLE_STATES = frozenset({VmState.STOPPED, VmState.RECOVERING, VmState.ERROR})


def copy_refusal(record: ReplicaRecord | None, host: str) -> str | None:
    """Why starting the VM on `host` could lose an acknowledged write (None when it cannot)."""
    if record is None:
        return None  # never started: no copy holds anything yet
    if record.incoming is not None and host != record.incoming:
        return f"a move to {record.incoming} is under way: only its copy is sure to hold every write"
    behind = record.behind(host)
    if behind is None:
        return None
    detail = f", {behind.reason}" if behind.reason else ""
    return f"its copy there lacks writes ({behind.state.value}{detail}); {record.primary} has them"


def confine(view: ClusterView) -> Confine | None:
    """The copy rule for this view's VMs (None when no VM has a replica record)."""
    if not view.replicas:
        return None
    replicas = view.replicas
    return lambda vm, host: copy_refusal(replicas.get(vm.name), host)


def record_primaries(view: ClusterView, decision: Decision, now: float) -> None:
    """For each VM this decision starts (or finds running) on a host that is not its recorded
    primary, record that host as the primary, in the same transaction as the placement; for one
    it starts migrating, record the target as `incoming` (before its switchover can happen)."""
    if not view.pools:
        return
    for name, placement in sorted(decision.placements.items()):
        host = placement.host
        record = view.replicas.get(name)
        if name in decision.replicas or host is None:
            continue
        if record is not None and placement.state is VmState.MIGRATING and placement.migration is not None:
            target = placement.migration.target
            if target != record.primary and record.incoming != target:
                decision.replicas[name] = record.model_copy(update={"incoming": target})
            continue
        if placement.state not in STARTED_STATES:
            continue
        spec = view.vms[name].spec
        if record is None:
            new = first_record(spec, view.pools, host, placement.generation, now)
        elif record.primary != host:
            why = f"{host} took over at generation {placement.generation}"
            new = moved_record(record, host, placement.generation, now, why)
        elif record.incoming is not None:  # a migration that did not happen: the primary kept it
            new = record.model_copy(update={"incoming": None})
        else:
            continue
        if new is not None:
            decision.replicas[name] = new


def promote_refusal(view: ClusterView, vm: VmSpec, placement: Placement, target: str | None,
                    capacity: Capacity) -> str | None:
    """Why the operator may not start `vm` from its copy on `target` now (None: they may)."""
    record = view.replicas.get(vm.name)
    if record is None or not record.copies:
        return f"vm {vm.name} has no replicated disk"
    hosts = sorted({c.host for c in record.copies})
    if target is None or target not in hosts:
        return f"name the host whose copy to start from ({', '.join(hosts)})"
    if placement.state not in PROMOTABLE_STATES:
        return f"vm {vm.name} is {placement.state.value}: promote only a VM that runs nowhere"
    if record.holds_everything(target):
        return f"the copy on {target} lacks nothing: no promotion needed"
    load = capacity.loads.get(target)
    reason = why_not(vm, load, capacity.settings) if load is not None else f"unknown host {target}"
    return f"{target} cannot take it: {reason}" if reason else None


def promoted(view: ClusterView, vm: str, target: str, generation: int, now: float) -> ReplicaRecord:
    """The record once the operator promoted the copy on `target`: it is the primary, the old
    primary's copies are stale, and the record says the loss was accepted."""
    record = view.replicas[vm]
    new = moved_record(record, target, generation, now, f"{target} promoted by the operator")
    return new.model_copy(update={"promoted_at": now})
