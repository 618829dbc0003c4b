"""Placement: filter -> rank -> select (Nomad-style), admission control and balancing.

Pure functions over `HostLoad`s, which the manager builds once per iteration and updates as it
places VMs, so one iteration never double-books a host.
"""
from __future__ import annotations

import bisect
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import combinations

from haven.model.spec import HostSpec, PlacementPolicy, Settings, VmSpec
from haven.model.state import HOLDING_STATES, Placement

FREE_MIB = re.compile(r", -?\d+ MiB free$")

# Beyond this many combinations of failed hosts, check only the hosts carrying the most HA memory.
MAX_COMBINATIONS = 500


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
    if placement.state not in HOLDING_STATES or placement.host is None:
        return ()
    if placement.migration and placement.migration.target != placement.host:
        return (placement.host, placement.migration.target)
    return (placement.host,)


def build_loads(hosts: Mapping[str, HostSpec], usable: Iterable[str], specs: Mapping[str, VmSpec],
                placements: Iterable[Placement]) -> dict[str, HostLoad]:
    usable_set = set(usable)
    loads = {name: HostLoad(spec, name in usable_set) for name, spec in sorted(hosts.items())}
    for placement in placements:
        if placement.state not in HOLDING_STATES or placement.host is None:
            continue  # the common case, kept cheap: this loop sees every VM of the cluster
        spec = specs.get(placement.vm)
        if spec is None:
            continue
        for host in occupied_hosts(placement):
            if host in loads:
                loads[host].add(spec)
    return loads


# --- filters: each returns None when the host can take the VM, else the reason it cannot ---

Confine = Callable[[VmSpec, str], str | None]  # a reason of the round's own (VM, host name)

Filter = Callable[[VmSpec, HostLoad, Settings], str | None]


def filter_allowed(vm: VmSpec, load: HostLoad, settings: Settings) -> str | None:
    return None if vm.allows(load.spec.name) else f"allowed only on {', '.join(sorted(vm.preferred_set))}"


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


FILTERS: tuple[Filter, ...] = (filter_allowed, filter_usable, filter_cpu_model, filter_pools, filter_memory,
                               filter_vcpus, filter_anti_affinity)


def why_not(vm: VmSpec, load: HostLoad, settings: Settings) -> str | None:
    for check in FILTERS:
        reason = check(vm, load, settings)
        if reason:
            return reason
    return None


@dataclass(frozen=True)
class Selection:
    host: str | None
    reason: str = ""  # why nothing fits, summarised

    def __bool__(self) -> bool:
        return self.host is not None


class Capacity:
    """Host loads for one manager iteration, with the usable hosts kept in rank order so that
    selecting a host costs a few checks, not one per host.

    Rank: the VM's preferred hosts first, one level at a time (the hosts of one level ranked as
    below); then, unless the VM is restricted to its preferred hosts, every other host: by
    `placement_policy`, the least loaded host (spread) or the most loaded (pack) by memory; then
    the most free memory (on a tie between hosts of different sizes the bigger one has more
    headroom left); then the host name.
    """

    def __init__(self, loads: Mapping[str, HostLoad], settings: Settings,
                 usable: Iterable[str] | None = None, confine: Confine | None = None) -> None:
        """`loads` is not modified: a host's load is copied the first time this round changes it.
        `usable` overrides each load's own flag. `confine` adds a reason of its own per VM and
        host (core.replica: a copy that lacks writes)."""
        self.confine = confine
        usable_set = None if usable is None else set(usable)
        self.loads = {name: HostLoad(load.spec, load.usable if usable_set is None else name in usable_set,
                                     load.memory_used, load.vcpus_used, load.groups, load.vms)
                      for name, load in loads.items()}
        self._copied: set[str] = set()
        self.settings = settings
        self._sign = 1 if settings.placement_policy is PlacementPolicy.SPREAD else -1
        self._order = sorted(self._key(load) for load in self.loads.values() if load.usable)

    def _key(self, load: HostLoad) -> tuple[float, int, str]:
        return (self._sign * round(load.memory_load(), 9), -load.memory_free(self.settings), load.spec.name)

    def _moving(self, host: str, change: Callable[[HostLoad], None]) -> None:
        load = self.loads.get(host)
        if load is None:
            return
        if host not in self._copied:  # copy on write: the caller's sets stay as they were
            load.groups, load.vms = Counter(load.groups), set(load.vms)
            self._copied.add(host)
        if load.usable:
            del self._order[bisect.bisect_left(self._order, self._key(load))]
        change(load)
        if load.usable:
            bisect.insort(self._order, self._key(load))

    def add(self, host: str, vm: VmSpec) -> None:
        self._moving(host, lambda load: load.add(vm))

    def remove(self, host: str, vm: VmSpec) -> None:
        self._moving(host, lambda load: load.remove(vm))

    def why_not(self, vm: VmSpec, host: str, mates: Sequence[VmSpec] = ()) -> str | None:
        """Why `host` cannot take `vm` (and, with it, `mates`: VMs kept together with it that
        must land on the same host in the same move); None when it can."""
        load = self.loads.get(host)
        if load is None:
            return f"unknown host {host}"
        reason = why_not(vm, load, self.settings) or (self.confine(vm, host) if self.confine else None)
        if reason or not mates:
            return reason
        scratch = HostLoad(load.spec, load.usable, load.memory_used, load.vcpus_used, Counter(load.groups),
                           set(load.vms))
        scratch.add(vm)
        for mate in mates:
            reason = why_not(mate, scratch, self.settings) or (self.confine(mate, host) if self.confine else None)
            if reason:
                return f"together with {mate.name}: {reason}"
            scratch.add(mate)
        return None

    def select(self, vm: VmSpec, exclude: Iterable[str] = (), prefer: str | None = None,
               only: Iterable[str] | None = None, mates: Sequence[VmSpec] = ()) -> Selection:
        """The best host for `vm` (with `mates`, see `why_not`), or why there is none. `prefer`
        wins when feasible (restart in place); `only` limits the candidates."""
        excluded = set(exclude)
        if only is not None:
            excluded |= set(self.loads) - set(only)

        def fits(name: str) -> bool:
            return name not in excluded and name in self.loads and self.why_not(vm, name, mates) is None

        if prefer and fits(prefer):
            return Selection(prefer)
        for level in vm.preference_levels:
            best = min((self._key(self.loads[name]) for name in level if fits(name)), default=None)
            if best is not None:
                return Selection(best[-1])
        if not vm.restricted:
            for *_, name in self._order:
                if fits(name):
                    return Selection(name)
        return Selection(None, self._nowhere(vm, excluded, mates))

    def _nowhere(self, vm: VmSpec, excluded: set[str], mates: Sequence[VmSpec]) -> str:
        """Why no host can take `vm`: for a restricted VM host by host, else counted by reason."""
        if vm.restricted:
            allowed = sorted(vm.preferred_set)
            details = [f"{name} {self.why_not(vm, name, mates) or 'excluded'}" for name in allowed
                       if name not in excluded]
            return f"allowed only on {', '.join(allowed)}" + (f": {'; '.join(details)}" if details else "")
        reasons: Counter[str] = Counter()
        for name in self.loads:
            if name not in excluded:
                reason = self.why_not(vm, name, mates) or ""
                reasons[FREE_MIB.sub("", reason)] += 1  # hosts with different room count as one reason
        if not reasons:
            return "no other host"
        summary = "; ".join(f"{count} host(s): {reason}" for reason, count in sorted(reasons.items()))
        return f"no host can take it ({summary})"


# --- surviving host failures: the one check behind admission control and the protection level ---

@dataclass(frozen=True, slots=True)
class Shortfall:
    """Why the HA VMs could not all restart after some host failures."""

    lost: tuple[str, ...]  # the failed hosts assumed, sorted (every usable host when there are too few)
    displaced_mib: int  # HA memory on them
    room_mib: int  # memory left free on the survivors
    stranded: tuple[str, int] | None = None  # the first VM (name, MiB) left without room; None: too few hosts


def failure_shortfall(free: Mapping[str, int], ha: Mapping[str, Sequence[tuple[str, int]]],
                      failures: int) -> Shortfall | None:
    """Can every HA VM restart on the survivors whichever `failures` of these hosts die?

    `free`: MiB each usable host can still take (reserve deducted); `ha`: the HA VMs (name, MiB)
    each one carries. Every combination of failed hosts is tried, not only the hosts with the most
    HA memory: a failed host also takes its free room with it, so the worst case is not always the
    heaviest host. Beyond MAX_COMBINATIONS combinations only the heaviest are tried. The displaced
    VMs go largest first into the first survivor with room, survivors largest first (first fit
    decreasing). None when they always fit."""
    hosts = sorted(free)
    if failures <= 0 or not any(ha.get(h) for h in hosts):
        return None

    def ha_mib(names: Iterable[str]) -> int:
        return sum(mib for h in names for _, mib in ha.get(h, ()))

    if len(hosts) <= failures:
        return Shortfall(tuple(hosts), ha_mib(hosts), 0)
    n_combos = 1
    for i in range(failures):
        n_combos = n_combos * (len(hosts) - i) // (i + 1)
    scenarios: Iterable[tuple[str, ...]] = combinations(hosts, failures)
    if n_combos > MAX_COMBINATIONS:
        scenarios = [tuple(sorted(sorted(hosts, key=lambda h: (-ha_mib((h,)), h))[:failures]))]
    for lost in scenarios:
        displaced = sorted((vm for h in lost for vm in ha.get(h, ())), key=lambda vm: (-vm[1], vm[0]))
        bins = sorted((max(0, free[h]) for h in hosts if h not in lost), reverse=True)
        room = sum(bins)
        for name, mib in displaced:
            for i, left in enumerate(bins):
                if left >= mib:
                    bins[i] = left - mib
                    break
            else:
                return Shortfall(lost, sum(mib for _, mib in displaced), room, (name, mib))
    return None


def admission_problem(vm: VmSpec, host: str, loads: Mapping[str, HostLoad], specs: Mapping[str, VmSpec],
                      settings: Settings) -> str | None:
    """Would starting `vm` on `host` leave the cluster unable to restart every HA VM after
    `host_failures_to_tolerate` host failures (`failure_shortfall`)?"""
    tolerate = settings.host_failures_to_tolerate
    if not vm.ha or tolerate == 0:
        return None
    usable = [load for load in loads.values() if load.usable or load.spec.name == host]
    free = {load.spec.name: load.memory_free(settings) for load in usable}
    ha = {load.spec.name: [(v, specs[v].memory_mib) for v in sorted(load.vms) if v in specs and specs[v].ha]
          for load in usable}
    if host in ha and vm.name not in loads[host].vms:  # as if started there
        free[host] -= vm.memory_mib
        ha[host].append((vm.name, vm.memory_mib))
    short = failure_shortfall(free, ha, tolerate)
    if short is None:
        return None
    if short.stranded is None:
        return f"admission control: {len(usable)} usable host(s) cannot tolerate {tolerate} failure(s)"
    name, mib = short.stranded
    return (f"admission control: after losing {', '.join(short.lost)} the cluster could not restart "
            f"{name} ({mib} MiB); add capacity or lower host_failures_to_tolerate")


@dataclass(frozen=True)
class Move:
    vm: str
    source: str
    target: str


def plan_balance(loads: Mapping[str, HostLoad], specs: Mapping[str, VmSpec], movable: Iterable[str],
                 settings: Settings, confine: Confine | None = None) -> list[Move]:
    """Live migrations that bring the most loaded hosts back toward the mean memory load.
    `movable` names the running, migratable VMs that may move this round; `confine` as for
    `Capacity`."""
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
            choice = Capacity(usable, settings, confine=confine).select(vm, exclude=(hot.spec.name,))
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
