"""Checks of a VM or service spec against the cluster it is declared in (the model checks the
spec alone; `model.spec.check_services` the rules a whole config must follow).

Each problem is one 'field: problem' line, as `model.load` writes them, or for the rules between
services and their members one 'service NAME: problem' line, as `check_services` writes them.
"""
from __future__ import annotations

from haven.model.service import ServiceSpec, check_services
from haven.model.spec import VmSpec, affinity_problems
from haven.runtime.layout import Snapshot


def service_problems(snap: Snapshot, spec: ServiceSpec) -> list[str]:
    """What keeps `spec` from being declared (or replacing the service of its name) here: members
    that are no declared VM, not pinned to one host each, share a host or another service; a
    floating IP or data disk already in use; a pool some member's host cannot reach."""
    others = [other for name, other in sorted(snap.services.items()) if name != spec.name]
    # The new spec comes last, so a clash with an existing service is reported as its problem.
    mine = f"service {spec.name}: "
    return [problem for problem in check_services([*others, spec], snap.specs.values(), snap.hosts.values())
            if problem.startswith(mine)]


def broken_services(snap: Snapshot, spec: VmSpec) -> list[str]:
    """The service rules `spec` would break by replacing the VM of its name (a member no longer
    pinned to one host, or now sharing its host with another member)."""
    if not any(spec.name in service.members for service in snap.services.values()):
        return []
    services, hosts = list(snap.services.values()), list(snap.hosts.values())
    before = set(check_services(services, snap.specs.values(), hosts))
    after = check_services(services, {**snap.specs, spec.name: spec}.values(), hosts)
    return [problem for problem in after if problem not in before]


def cluster_problems(snap: Snapshot, spec: VmSpec) -> list[str]:
    problems: list[str] = broken_services(snap, spec)
    hosts = snap.hosts
    for i, level in enumerate(spec.preference_levels):
        for pref in level:
            if pref not in hosts:
                problems.append(f"preferred_hosts[{i}]: host {pref!r} does not exist "
                                f"(hosts: {', '.join(sorted(hosts)) or 'none'})")
    # Groups that could never be placed with this spec in them.
    if spec.affinity_group or (spec.anti_affinity_group and spec.restricted):
        group = [other for name, other in snap.specs.items() if name != spec.name
                 and ((spec.affinity_group and other.affinity_group == spec.affinity_group)
                      or (spec.anti_affinity_group and other.anti_affinity_group == spec.anti_affinity_group))]
        field = "affinity_group" if spec.affinity_group else "anti_affinity_group"
        problems += [f"{field}: {problem}" for problem in affinity_problems([*group, spec])]
    if hosts:
        pools = {pool for h in hosts.values() for pool in h.pools}
        for i, disk in enumerate(spec.disks):
            if disk.pool not in pools:
                problems.append(f"disks[{i}].pool: no host reaches pool {disk.pool!r} "
                                f"(pools: {', '.join(sorted(pools)) or 'none'})")
        models = {m for h in hosts.values() for m in h.cpu_models}
        if spec.cpu_model not in models:
            problems.append(f"cpu_model: no host offers {spec.cpu_model!r} "
                            f"(offered: {', '.join(sorted(models))})")
        room = max(h.memory_mib for h in hosts.values()) - snap.settings.memory_reserve_mib
        if spec.memory_mib > room:
            problems.append(f"memory_mib: {spec.memory_mib} MiB fits on no host (at most {room} MiB "
                            f"after the {snap.settings.memory_reserve_mib} MiB reserve)")
    owners = {nic.mac: name for name, other in snap.specs.items() if name != spec.name
              for nic in other.nics}
    seen: set[str] = set()
    for i, nic in enumerate(spec.nics):
        if nic.mac in owners:
            problems.append(f"nics[{i}].mac: {nic.mac} is already used by VM {owners[nic.mac]}")
        elif nic.mac in seen:
            problems.append(f"nics[{i}].mac: {nic.mac} is used twice in this spec")
        seen.add(nic.mac)
    return problems
