"""Placement: filter -> rank -> select (Nomad-style), admission control and balancing.

Pure functions over `HostLoad`s, which the manager builds once per iteration and updates as it
places VMs, so one iteration never double-books a host.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from haven.model.spec import HostSpec, PlacementPolicy, Settings, VmSpec
from haven.model.state import Placement, VmState

# Placements in these states occupy their host (a migrating VM also occupies its target).
OCCUPYING = frozenset({VmState.STARTING, VmState.RUNNING, VmState.STOPPING, VmState.MIGRATING})


@dataclass
class HostLoad:
    spec: HostSpec
    usable: bool  # may receive VMs now (online, not draining, settled)
    memory_used: int = 0
    vcpus_used: int = 0
    groups: Counter[str] = field(default_factory=Counter)  # anti-affinity groups present
    vms: set[str] = field(default_factory=set)

    def add(self, vm: VmSpec) -> None:
        if vm.name in self.vms:
            return
        self.vms.add(vm.name)
        self.memory_used += vm.memory_mib
        self.vcpus_used += vm.vcpus
        if vm.anti_affinity_group:
            self.groups[vm.anti_affinity_group] += 1

    def remove(self, vm: VmSpec) -> None:
        if vm.name not in self.vms:
            return
        self.vms.discard(vm.name)
        self.memory_used -= vm.memory_mib
        self.vcpus_used -= vm.vcpus
        if vm.anti_affinity_group:
            self.groups[vm.anti_affinity_group] -= 1

    def memory_free(self, settings: Settings) -> int:
        return self.spec.memory_mib - settings.memory_reserve_mib - self.memory_used

    def memory_load(self) -> float:
        return self.memory_used / self.spec.memory_mib


def occupied_hosts(placement: Placement) -> tuple[str, ...]:
    if placement.state not in OCCUPYING or placement.host is None:
        return ()
    if placement.migration and placement.migration.target != placement.host:
        return (placement.host, placement.migration.target)
    return (placement.host,)


def build_loads(hosts: Mapping[str, HostSpec], usable: Iterable[str], specs: Mapping[str, VmSpec],
                placements: Iterable[Placement]) -> dict[str, HostLoad]:
    usable_set = set(usable)
    loads = {name: HostLoad(spec, name in usable_set) for name, spec in sorted(hosts.items())}
    for placement in placements:
        spec = specs.get(placement.vm)
        if spec is None:
            continue
        for host in occupied_hosts(placement):
            if host in loads:
                loads[host].add(spec)
    return loads


# --- filters: each returns None when the host can take the VM, else the reason it cannot ---

Filter = Callable[[VmSpec, HostLoad, Settings], str | None]


def filter_usable(vm: VmSpec, load: HostLoad, settings: Settings) -> str | None:
    return None if load.usable else "not accepting VMs (down, draining or settling)"


def filter_memory(vm: VmSpec, load: HostLoad, settings: Settings) -> str | None:
    free = load.memory_free(settings)
    if vm.name not in load.vms and vm.memory_mib > free:
        return f"needs {vm.memory_mib} MiB, {max(free, 0)} MiB free"
    return None


def filter_vcpus(vm: VmSpec, load: HostLoad, settings: Settings) -> str | None:
    limit = load.spec.vcpus * settings.vcpu_overcommit
    if vm.name not in load.vms and load.vcpus_used + vm.vcpus > limit:
        return f"vCPU overcommit limit {limit:g} reached"
    return None


def filter_cpu_model(vm: VmSpec, load: HostLoad, settings: Settings) -> str | None:
    return None if vm.cpu_model in load.spec.cpu_models else f"cannot present CPU model {vm.cpu_model}"


def filter_pools(vm: VmSpec, load: HostLoad, settings: Settings) -> str | None:
    missing = sorted(vm.pools - set(load.spec.pools))
    return f"cannot reach pool {', '.join(missing)}" if missing else None


def filter_anti_affinity(vm: VmSpec, load: HostLoad, settings: Settings) -> str | None:
    group = vm.anti_affinity_group
    if group and vm.name not in load.vms and load.groups[group] > 0:
        return f"already runs a VM of anti-affinity group {group}"
    return None


FILTERS: tuple[Filter, ...] = (filter_usable, filter_cpu_model, filter_pools, filter_memory,
                               filter_vcpus, filter_anti_affinity)


def why_not(vm: VmSpec, load: HostLoad, settings: Settings) -> str | None:
    for check in FILTERS:
        reason = check(vm, load, settings)
        if reason:
            return reason
    return None


# --- ranking: smaller key is better ---

def rank_key(vm: VmSpec, load: HostLoad, settings: Settings) -> tuple[int, float, str]:
    name = load.spec.name
    preferred = vm.preferred_hosts.index(name) if name in vm.preferred_hosts else len(vm.preferred_hosts)
    after = (load.memory_used + (0 if vm.name in load.vms else vm.memory_mib)) / load.spec.memory_mib
    fullness = after if settings.placement_policy is PlacementPolicy.SPREAD else -after
    return (preferred, round(fullness, 6), name)


@dataclass(frozen=True)
class Selection:
    host: str | None
    reason: str = ""  # why nothing fits, summarised

    def __bool__(self) -> bool:
        return self.host is not None


def select_host(vm: VmSpec, loads: Mapping[str, HostLoad], settings: Settings,
                exclude: Iterable[str] = (), prefer: str | None = None) -> Selection:
    """The best host for `vm`, or why there is none. `prefer` wins when feasible (restart in place)."""
    excluded = set(exclude)
    if prefer and prefer not in excluded and prefer in loads and why_not(vm, loads[prefer], settings) is None:
        return Selection(prefer)
    best: tuple[tuple[int, float, str], str] | None = None
    reasons: Counter[str] = Counter()
    for name, load in loads.items():
        if name in excluded:
            continue
        reason = why_not(vm, load, settings)
        if reason:
            reasons[reason.split(",")[0] if reason.startswith("needs") else reason] += 1
            continue
        key = rank_key(vm, load, settings)
        if best is None or key < best[0]:
            best = (key, name)
    if best:
        return Selection(best[1])
    if not reasons:
        return Selection(None, "no other host")
    summary = "; ".join(f"{count} host(s): {reason}" for reason, count in sorted(reasons.items()))
    return Selection(None, f"no host can take it ({summary})")


def admission_problem(vm: VmSpec, host: str, loads: Mapping[str, HostLoad], specs: Mapping[str, VmSpec],
                      settings: Settings) -> str | None:
    """Would starting `vm` on `host` leave the cluster unable to restart every HA VM after
    `host_failures_to_tolerate` host failures? The failed hosts assumed are those carrying the most
    HA memory (the worst case for a greedy check); survivors take the VMs largest first."""
    tolerate = settings.host_failures_to_tolerate
    if not vm.ha or tolerate == 0:
        return None
    usable = [load for load in loads.values() if load.usable or load.spec.name == host]

    def ha_memory(load: HostLoad) -> int:
        extra = vm.memory_mib if load.spec.name == host else 0
        return extra + sum(specs[v].memory_mib for v in load.vms if v in specs and specs[v].ha)

    failed = sorted(usable, key=lambda load: (-ha_memory(load), load.spec.name))[:tolerate]
    if len(failed) >= len(usable):
        return f"admission control: {len(usable)} usable host(s) cannot tolerate {tolerate} failure(s)"
    failed_names = {load.spec.name for load in failed}
    displaced = [specs[v] for load in failed for v in load.vms if v in specs and specs[v].ha]
    if host in failed_names:
        displaced.append(vm)
    free = {load.spec.name: load.memory_free(settings) - (vm.memory_mib if load.spec.name == host else 0)
            for load in usable if load.spec.name not in failed_names}
    for victim in sorted(displaced, key=lambda s: (-s.memory_mib, s.name)):
        target = max(free, key=lambda h: (free[h], h), default=None)
        if target is None or free[target] < victim.memory_mib:
            return (f"admission control: after losing {', '.join(sorted(failed_names))} the cluster "
                    f"could not restart {victim.name} ({victim.memory_mib} MiB); "
                    f"add capacity or lower host_failures_to_tolerate")
        free[target] -= victim.memory_mib
    return None


@dataclass(frozen=True)
class Move:
    vm: str
    source: str
    target: str


def plan_balance(loads: Mapping[str, HostLoad], specs: Mapping[str, VmSpec], movable: Iterable[str],
                 settings: Settings) -> list[Move]:
    """Live migrations that bring the most loaded hosts back toward the mean memory load.
    `movable` names the running, migratable VMs that may move this round."""
    usable = {name: load for name, load in loads.items() if load.usable}
    if len(usable) < 2:
        return []
    movable_set = set(movable)
    moves: list[Move] = []
    while len(moves) < settings.balance_max_moves:
        mean = sum(load.memory_load() for load in usable.values()) / len(usable)
        hot = max(usable.values(), key=lambda load: (load.memory_load(), load.spec.name))
        if hot.memory_load() - mean <= settings.balance_threshold:
            break
        best: tuple[float, str, str] | None = None
        for vm_name in sorted(hot.vms & movable_set):
            vm = specs[vm_name]
            others = {n: load for n, load in usable.items() if n != hot.spec.name}
            choice = select_host(vm, others, settings)
            if not choice.host:
                continue
            target = usable[choice.host]
            hot_after = (hot.memory_used - vm.memory_mib) / hot.spec.memory_mib
            target_after = (target.memory_used + vm.memory_mib) / target.spec.memory_mib
            spread = max(hot_after, target_after)
            if spread < hot.memory_load() and (best is None or (spread, vm_name) < best[:2]):
                best = (spread, vm_name, choice.host)
        if best is None:
            break
        _, vm_name, target_name = best
        hot.remove(specs[vm_name])
        usable[target_name].add(specs[vm_name])
        movable_set.discard(vm_name)
        moves.append(Move(vm_name, hot.spec.name, target_name))
    return moves
