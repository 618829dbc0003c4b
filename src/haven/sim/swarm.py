"""Swarm testing: many seeded random fault schedules, a safety phase then a liveness phase.

One seed decides everything (cluster shape, faults, times), so a failing seed replays exactly:
`haven sim swarm --seed N --verbose`. Safety is checked after every simulated event. Liveness: once
every fault is healed (and any VM in error acknowledged, as an operator would), every
desired-running HA VM must run again within `LIVENESS_BOUND_S`. In a share of the seeds some hosts
have a power-fencing device (`SimFencer`), some of which fail. In a share of the seeds hosts are
shut down or rebooted cleanly under a random `shutdown_policy`, or power-cycle faster than their
lease expires; these come from a stream of their own, so the other faults of a seed stay the same.
With `services`, each seed also gets guest-cluster services (members pinned to their hosts) and
their faults (member crashes, hung guests, failing checks, operator moves), again from a stream of
their own; liveness then also asks every service to run on a member again, and the data-disk and
floating-IP invariants are counted (`disk_double_attach`, `ip_double_raise`: must be 0). A launch on
a replicated disk's copy that lacks an acknowledged write is counted too (`acknowledged_writes_lost`:
must be 0). With `pairs`, two hosts of each seed also hold a replicated pool with one to three HA
VMs on it, and faults aimed at the pair (its link cut, either host lost, moves between them).
With `failsafe`, every seed runs with `Settings.failsafe` on and gets store outages of its own
(`random_store_outages`): full ones, the store out of every host's reach (leases expire), one side
regaining it first, single hosts cut from it, and hosts isolated or powered off meanwhile.
With `fast_fencing`, every host has a power-fencing device and `Settings.heartbeat_timeout_s` is
set (`random_fast_fencing`): the leading manager switches off a host whose heartbeats stop while it
holds its lease. Devices fail from the start in some seeds and stop or start working during the
faults in others, and more heartbeat-stopping faults are added (hung daemons, host-to-host cuts that
leave the store reachable, power cuts shorter or longer than the lease), again from a stream of
their own.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from haven.model.replica import PoolKind, PoolSpec
from haven.model.service import ServicePhase
from haven.model.spec import (
    ClusterConfig,
    DesiredState,
    Disk,
    HostShutdownPolicy,
    HostSpec,
    Nic,
    RestartPolicy,
    ServiceSpec,
    Settings,
    VmSpec,
)
from haven.model.state import LocalState, VmState
from haven.runtime.layout import read_snapshot
from haven.sim.cluster import SimCluster
from haven.sim.faults import apply_fault
from haven.sim.guest import GuestState
from haven.sim.hypervisor import SimTimings

FAULT_WINDOW = (5.0, 40.0)
HEAL_AT = 50.0
LIVENESS_BOUND_S = 60.0
FENCED_SHARE = 0.25  # of the seeds, whose hosts may have power-fencing devices
DEPARTURE_SHARE = 0.4  # of the seeds, with clean shutdowns, reboots or fast power cycles


@dataclass
class SwarmRun:
    seed: int
    safety: list[str]
    liveness: list[str]
    recovery_s: float | None  # heal -> every HA VM running
    timeline: list[tuple[float, str]]
    lines: list[str] = field(default_factory=list)
    fence_devices: list[str] = field(default_factory=list)
    disk_double_attach: int = 0
    ip_double_raise: int = 0
    services: bool = False  # run with random_services
    acknowledged_writes_lost: int = 0
    pairs: bool = False  # run with random_pair
    failsafe: bool = False  # run with Settings.failsafe and random_store_outages
    fast_fencing: bool = False  # run with random_fast_fencing
    healthy_switched_off: int = 0  # SimFencer.healthy_switched_off: needless power-offs (not a violation)


def random_cluster(rng: random.Random) -> ClusterConfig:
    hosts = [HostSpec(name=f"h{i + 1}", address=f"10.0.0.{i + 1}", vcpus=8,
                      memory_mib=rng.choice((4096, 6144, 8192)),
                      cpu_models=("x86-64-v2",) if rng.random() < 0.8 else ("x86-64-v2", "x86-64-v3"))
             for i in range(rng.randint(3, 5))]
    budget = sum(h.memory_mib for h in hosts) * 0.4
    vms: list[VmSpec] = []
    for i in range(rng.randint(3, 12)):
        memory = rng.choice((256, 512, 768, 1024))
        if sum(v.memory_mib for v in vms) + memory > budget:
            break
        vms.append(VmSpec(
            name=f"vm{i + 1}", memory_mib=memory, vcpus=rng.randint(1, 4),
            priority=rng.choice((0, 1, 2, 2, 3, 3)),
            preferred_hosts=tuple(rng.sample([h.name for h in hosts], rng.randint(0, 2))),
            anti_affinity_group=rng.choice((None, "pair")) if i < 2 else None,
            migratable=rng.random() < 0.8,
            nics=(Nic(mac=f"52:54:00:00:00:{i + 1:02x}"),)))
    settings = Settings(failback=rng.random() < 0.3, balance=rng.random() < 0.3,
                        host_failures_to_tolerate=rng.choice((0, 1)))
    return ClusterConfig(name="swarm", settings=settings, hosts=tuple(hosts), vms=tuple(vms))


def random_faults(rng: random.Random, config: ClusterConfig) -> list[tuple[float, str]]:
    hosts = [h.name for h in config.hosts]
    vms = [v.name for v in config.vms]
    steps: list[tuple[float, str]] = []
    for _ in range(rng.randint(1, 6)):
        t = round(rng.uniform(*FAULT_WINDOW), 3)
        host = rng.choice(hosts)
        length = round(rng.uniform(0.5, 12.0), 3)
        kind = rng.choice(("power", "power", "store-cut", "partition", "pair", "store", "hang", "renew",
                           "skew", "crash", "failstart", "migrate", "drain", "isolate", "isolate", "restart"))
        if kind == "power":
            steps += [(t, f"power off {host}"), (t + length, f"power on {host}")]
        elif kind == "isolate":  # cut off alone, its VMs move on meanwhile, then it rejoins
            others = " ".join(h for h in hosts if h != host)
            steps += [(t, f"partition {host} | {others} store"), (t + length, f"heal {host}")]
            if rng.random() < 0.3:  # and its daemon restarts while it is cut off
                steps.append((round(t + rng.uniform(0.0, length), 3), f"restart {host}"))
            if vms and rng.random() < 0.5:  # an operator moves a VM during the isolation
                steps.append((round(t + rng.uniform(0.0, length), 3), f"migrate {rng.choice(vms)} live"))
        elif kind == "restart":
            steps.append((t, f"restart {host}"))
        elif kind == "store-cut":
            steps += [(t, f"cut {host} from store"), (t + length, f"heal {host}")]
        elif kind == "partition":
            side = rng.sample(hosts, rng.randint(1, len(hosts) - 1))
            rest = [h for h in hosts if h not in side] + ["store"]
            if rng.random() < 0.5:
                side, rest = [*side, "store"], [h for h in rest if h != "store"]
            steps += [(t, f"partition {' '.join(side)} | {' '.join(rest)}"), (t + length, "heal all")]
        elif kind == "pair":
            other = rng.choice([h for h in hosts if h != host])
            steps += [(t, f"cut {host} from {other}"), (t + length, f"heal {host}")]
        elif kind == "store":
            steps += [(t, "store down"), (t + min(length, 6.0), "store up")]
        elif kind == "hang":
            steps += [(t, f"hang {host}"), (t + length, f"unhang {host}")]
        elif kind == "renew":
            steps += [(t, f"slow renew {host} by {rng.uniform(0.1, 2.5):.3f}"), (t + length, f"normal renew {host}")]
        elif kind == "skew":
            steps += [(t, f"skew {host} {rng.uniform(0.85, 1.15):.3f}"), (t + length, f"skew {host} 1.0")]
        elif kind == "crash" and vms:
            steps.append((t, f"crash {rng.choice(vms)}"))
        elif kind == "failstart" and vms:
            steps.append((t, f"fail start {rng.choice(vms)} {rng.randint(1, 3)}"))
        elif kind == "migrate" and vms:
            target = f" to {rng.choice(hosts)}" if rng.random() < 0.5 else ""
            steps.append((t, f"migrate {rng.choice(vms)} {rng.choice(('live', 'quick', 'cold'))}{target}"))
        elif kind == "drain":
            steps += [(t, f"drain {host}"), (t + length, f"resume {host}")]
    return sorted(steps, key=lambda s: s[0])


def random_fencing(seed: int, config: ClusterConfig) -> tuple[list[str], list[str]]:
    """Hosts with a power-fencing device, and those whose device fails. Drawn from a stream of
    their own, so a seed's cluster and faults are the same with or without them."""
    rng = random.Random(f"fence {seed}")
    if rng.random() >= FENCED_SHARE:
        return [], []
    devices = [host.name for host in config.hosts if rng.random() < 0.7]
    return devices, [host for host in devices if rng.random() < 0.3]


def random_departures(seed: int, config: ClusterConfig) -> tuple[ClusterConfig, list[tuple[float, str]]]:
    """Clean shutdowns and reboots under a random shutdown policy, and power cycles shorter than
    the lease TTL, for a share of the seeds."""
    rng = random.Random(f"departures {seed}")
    if rng.random() >= DEPARTURE_SHARE:
        return config, []
    policy = rng.choice(list(HostShutdownPolicy))
    config = config.model_copy(update={"settings": config.settings.model_copy(update={"shutdown_policy": policy})})
    hosts = [h.name for h in config.hosts]
    steps: list[tuple[float, str]] = []
    for _ in range(rng.randint(1, 3)):
        t, host = round(rng.uniform(*FAULT_WINDOW), 3), rng.choice(hosts)
        kind = rng.choice(("shutdown", "reboot", "cycle"))
        if kind == "shutdown":
            steps += [(t, f"shutdown {host}"), (round(t + rng.uniform(2.0, 15.0), 3), f"power on {host}")]
        elif kind == "reboot":
            steps.append((t, f"reboot {host} {rng.uniform(0.5, 10.0):.3f}"))
        else:
            steps += [(t, f"power off {host}"), (round(t + rng.uniform(0.05, 1.5), 3), f"power on {host}")]
    return config, steps


def random_services(seed: int, config: ClusterConfig) -> tuple[ClusterConfig, list[tuple[float, str]]]:
    """One to three services of two or three members each, every member pinned to its own host,
    and faults aimed at them."""
    rng = random.Random(f"services {seed}")
    hosts = [h.name for h in config.hosts]
    pools = ("san",)
    config = config.model_copy(update={"hosts": tuple(h.model_copy(update={"pools": (*h.pools, *pools)})
                                                      if "san" not in h.pools else h for h in config.hosts)})
    vms, services = list(config.vms), []
    steps: list[tuple[float, str]] = []
    for n in range(rng.randint(1, 3)):
        name = f"svc{n + 1}"
        members = []
        for i, host in enumerate(rng.sample(hosts, rng.randint(2, min(3, len(hosts))))):
            member = f"{name}m{i + 1}"
            vms.append(VmSpec(name=member, memory_mib=256, preferred_hosts=(host,), restricted=True,
                              restart=RestartPolicy(max_restarts=10, window_s=600.0),
                              nics=(Nic(mac=f"52:54:00:01:{n:02x}:{i:02x}"),)))
            members.append(member)
        services.append(ServiceSpec(
            name=name, members=tuple(members), start=(f"/srv/{name}", "start"), stop=(f"/srv/{name}", "stop"),
            check=(f"/srv/{name}", "check"), floating_ip=f"10.0.9.{10 + n}/24",
            data_disk=Disk(pool="san") if rng.random() < 0.8 else None,
            check_interval_s=rng.choice((0.5, 1.0, 2.0)), failure_threshold=rng.randint(1, 3),
            ping_timeout_s=rng.choice((0.5, 1.0)), stop_timeout_s=rng.choice((2.0, 5.0)),
            failed_hold_s=rng.choice((0.0, 30.0, 300.0))))
        for _ in range(rng.randint(1, 4)):
            t, member = round(rng.uniform(*FAULT_WINDOW), 3), rng.choice(members)
            length = round(rng.uniform(0.5, 12.0), 3)
            kind = rng.choice(("crash", "hang", "check", "check", "move"))
            if kind == "crash":
                steps.append((t, f"crash vm {member}"))
            elif kind == "hang":
                steps += [(t, f"hang guest {member}"), (t + length, f"unhang guest {member}")]
            elif kind == "check":
                steps += [(t, f"fail check {name} on {member}"), (t + length, f"pass check {name} on {member}")]
            else:
                steps.append((t, f"move service {name}" + (f" to {member}" if rng.random() < 0.5 else "")))
    return config.model_copy(update={"vms": tuple(vms), "services": tuple(services)}), steps


def random_pair(seed: int, config: ClusterConfig) -> tuple[ClusterConfig, list[tuple[float, str]]]:
    """A replicated pool on two of the hosts, one to three HA VMs on it (some with a disk big
    enough that a resync takes seconds), and faults aimed at the pair."""
    rng = random.Random(f"pair {seed}")
    pair = rng.sample([h.name for h in config.hosts], 2)
    vms = list(config.vms)
    names: list[str] = []
    for i in range(rng.randint(1, 3)):
        name = f"db{i + 1}"
        size = rng.choice((64, 64, 512, 2048))
        vms.append(VmSpec(name=name, memory_mib=rng.choice((256, 512)), priority=rng.choice((2, 3)),
                          preferred_hosts=(rng.choice(pair),) if rng.random() < 0.5 else (),
                          migratable=rng.random() < 0.8,
                          disks=(Disk(pool="pair", size_mib=size, file=f"{name}-0.raw"),),
                          nics=(Nic(mac=f"52:54:00:02:00:{i:02x}"),)))
        names.append(name)
    # The pair's hosts grow by what its VMs need: the cluster keeps the headroom random_cluster gave
    # it, or admission control would rightly keep VMs stopped, which the liveness phase counts.
    extra = sum(v.memory_mib for v in vms[len(config.vms):])
    hosts = tuple(h.model_copy(update={"pools": (*h.pools, "pair"), "memory_mib": h.memory_mib + extra})
                  if h.name in pair else h for h in config.hosts)
    steps: list[tuple[float, str]] = []
    for _ in range(rng.randint(1, 4)):
        t, host = round(rng.uniform(*FAULT_WINDOW), 3), rng.choice(pair)
        length = round(rng.uniform(0.5, 12.0), 3)
        kind = rng.choice(("link", "link", "power", "power", "migrate", "drain"))
        if kind == "link":
            steps += [(t, f"cut-link {pair[0]} {pair[1]}"), (t + length, f"heal-link {pair[0]} {pair[1]}")]
        elif kind == "power":
            steps += [(t, f"power off {host}"), (t + length, f"power on {host}")]
        elif kind == "migrate":
            steps.append((t, f"migrate {rng.choice(names)} {rng.choice(('live', 'quick', 'cold'))}"))
        else:
            steps += [(t, f"drain {host}"), (t + length, f"resume {host}")]
    pool = PoolSpec(name="pair", kind=PoolKind.REPLICATED, hosts=(pair[0], pair[1]))
    return config.model_copy(update={"hosts": hosts, "vms": tuple(vms), "pools": (pool,)}), steps


# The swarm's clocks run at 0.85..1.15 of true speed: a manager's wait must cover a peer's extension,
# TTL - margin on the slowest clock against TTL - margin + skew on the fastest (core.failsafe).
SWARM_FAILSAFE_SKEW_S = 0.6


def random_store_outages(seed: int, config: ClusterConfig) -> tuple[ClusterConfig, list[tuple[float, str]]]:
    """Failsafe on, and one to three store outages of several kinds (a stream of its own)."""
    rng = random.Random(f"failsafe {seed}")
    settings = config.settings.model_copy(update={"failsafe": True, "failsafe_skew_s": SWARM_FAILSAFE_SKEW_S})
    hosts = [h.name for h in config.hosts]
    steps: list[tuple[float, str]] = []
    for _ in range(rng.randint(1, 3)):
        t = round(rng.uniform(*FAULT_WINDOW), 3)
        length = round(rng.uniform(1.0, 10.0), 3)
        end = round(t + length, 3)
        host = rng.choice(hosts)
        kind = rng.choice(("down", "down", "unreachable", "one-side", "cut", "down+isolate", "down+power"))
        if kind == "down":  # etcd without quorum: leases keep, restarted on return
            steps += [(t, "store down"), (end, "store up")]
        elif kind == "unreachable":  # etcd fine, nobody reaches it: leases expire meanwhile
            steps += [(t, f"partition {' '.join(hosts)} | store"), (end, "heal all")]
        elif kind == "one-side":  # as above, then some hosts reach it again before the others
            side = rng.sample(hosts, rng.randint(1, len(hosts) - 1))
            rest = [h for h in hosts if h not in side]
            back = round(t + rng.uniform(0.5, length), 3)
            steps += [(t, f"partition {' '.join(hosts)} | store"),
                      (back, f"partition {' '.join(side)} | {' '.join(rest)} store"),
                      (round(back + length, 3), "heal all")]
        elif kind == "cut":  # one host loses the store, its peers do not
            steps += [(t, f"cut {host} from store"), (end, f"heal {host}")]
        elif kind == "down+isolate":  # during an outage, one host loses its peers too
            others = " ".join(h for h in hosts if h != host)
            at = round(t + rng.uniform(0.0, length), 3)
            steps += [(t, "store down"), (at, f"partition {host} | {others} store"), (end, "store up"),
                      (round(end + rng.uniform(0.0, 5.0), 3), f"heal {host}")]
        else:  # during an outage, one host loses its power
            at = round(t + rng.uniform(0.0, length), 3)
            steps += [(t, "store down"), (at, f"power off {host}"), (end, "store up"),
                      (round(end + rng.uniform(0.0, 5.0), 3), f"power on {host}")]
    return config.model_copy(update={"settings": settings}), steps


@dataclass
class FastFencing:
    config: ClusterConfig
    devices: list[str]
    steps: list[tuple[float, str]]
    fence_delay_s: float  # SimTimings.fence_delay_s: the device's round trip


def random_fast_fencing(seed: int, config: ClusterConfig) -> FastFencing:
    """Fast fencing on: every host has a fence device, heartbeats time out after 0.3 to 0.5 s,
    and in half the seeds a device takes up to 3 s to switch a host off and answer. Some seeds
    start with a device failing, some break or repair devices during the faults; and faults that
    stop a host's heartbeats while it keeps (or may keep) its lease: hung daemons, cuts between two
    hosts (the store still in reach of both), a host cut from its peers but not from the store,
    power cuts (some shorter than the lease, around the heartbeat timeout)."""
    rng = random.Random(f"fast fencing {seed}")
    timeout = round(rng.uniform(0.3, 0.5), 3)
    delay = round(rng.uniform(0.05, 3.0), 3) if rng.random() < 0.5 else 0.0
    settings = config.settings.model_copy(update={"heartbeat_timeout_s": timeout})
    hosts = [h.name for h in config.hosts]
    steps: list[tuple[float, str]] = []
    if rng.random() < 0.3:  # broken from the start (and repaired in some seeds)
        host = rng.choice(hosts)
        steps.append((0.0, f"fence fails {host}"))
        if rng.random() < 0.5:
            steps.append((round(rng.uniform(*FAULT_WINDOW), 3), f"fence works {host}"))
    for _ in range(rng.randint(1, 4)):
        t = round(rng.uniform(*FAULT_WINDOW), 3)
        host = rng.choice(hosts)
        length = round(rng.uniform(0.2, 8.0), 3)
        kind = rng.choice(("hang", "hang", "peer-cut", "peer-cut", "peers-only", "power", "fence-breaks"))
        if kind == "hang":
            steps += [(t, f"hang {host}"), (round(t + length, 3), f"unhang {host}")]
        elif kind == "peer-cut":  # two hosts lose each other, both still reach the store
            other = rng.choice([h for h in hosts if h != host])
            steps += [(t, f"cut {host} from {other}"), (round(t + length, 3), f"heal {host}")]
        elif kind == "peers-only":  # one host loses every peer, not the store
            steps += [(t, f"partition {host} store | {' '.join(h for h in hosts if h != host)} store"),
                      (round(t + length, 3), "heal all")]
        elif kind == "power":
            length = round(rng.uniform(0.05, 1.5), 3) if rng.random() < 0.5 else length
            steps += [(t, f"power off {host}"), (round(t + length, 3), f"power on {host}")]
        else:  # a device breaks for a while, and may be needed meanwhile
            steps += [(t, f"fence fails {host}"), (round(t + length, 3), f"fence works {host}")]
    return FastFencing(config.model_copy(update={"settings": settings}), hosts, steps, delay)


def heal_everything(config: ClusterConfig) -> list[str]:
    lines = ["heal all", "store up"]
    for service in config.services:
        for member in service.members:
            lines += [f"unhang guest {member}", f"pass check {service.name} on {member}"]
    for host in config.hosts:
        lines += [f"power on {host.name}", f"unhang {host.name}", f"normal renew {host.name}",
                  f"skew {host.name} 1.0", f"resume {host.name}"]
    return lines


def run_seed(seed: int, keep_log: bool = False, services: bool = False, pairs: bool = False,
             failsafe: bool = False, fast_fencing: bool = False) -> SwarmRun:
    rng = random.Random(seed)
    config = random_cluster(rng)
    timeline = random_faults(rng, config)
    devices, failing = random_fencing(seed, config)
    config, departures = random_departures(seed, config)
    if services:
        config, service_faults = random_services(seed, config)
        departures = departures + service_faults
    if pairs:
        config, pair_faults = random_pair(seed, config)
        departures = departures + pair_faults
    if failsafe:
        config, outages = random_store_outages(seed, config)
        departures = departures + outages
    timings = SimTimings()
    if fast_fencing:
        fast = random_fast_fencing(seed, config)
        config, devices, failing = fast.config, fast.devices, []
        departures = departures + fast.steps
        timings = SimTimings(fence_delay_s=fast.fence_delay_s)
    timeline = [(0.0, f"fence fails {host}") for host in failing] + sorted(timeline + departures, key=lambda s: s[0])
    cluster = SimCluster(config, timings, fence_devices=devices)
    for at, line in timeline:
        cluster.advance_to(min(at, HEAL_AT))
        if at < HEAL_AT:
            apply_fault(cluster, line)
    cluster.advance_to(HEAL_AT)
    for line in heal_everything(config):
        apply_fault(cluster, line)
    recovery = None
    t = HEAL_AT
    while t < HEAL_AT + LIVENESS_BOUND_S:
        t = round(t + 0.5, 3)
        cluster.advance_to(t)
        for host in cluster.hosts.values():
            if not host.powered:  # shut down (or still leaving at the heal): boot it, as an operator would
                apply_fault(cluster, f"power on {host.name}")
        _acknowledge_errors(cluster, config)
        if not _unhealthy(cluster, config):
            recovery = t - HEAL_AT
            break
    liveness = [] if recovery is not None else [
        f"not running {LIVENESS_BOUND_S:g} s after healing: {', '.join(_unhealthy(cluster, config))}"]
    cluster.advance_to(t + 5.0)  # safety keeps being checked a little longer
    monitor = cluster.world.monitor
    return SwarmRun(seed, list(monitor.violations), liveness, recovery, timeline,
                    cluster.log_lines() + monitor.violations if keep_log else [], devices,
                    monitor.disk_double_attach, monitor.ip_double_raise, services,
                    acknowledged_writes_lost=monitor.acknowledged_writes_lost, pairs=pairs, failsafe=failsafe,
                    fast_fencing=fast_fencing, healthy_switched_off=cluster.fencer.healthy_switched_off)


def _acknowledge_errors(cluster: SimCluster, config: ClusterConfig) -> None:
    snapshot = read_snapshot(cluster.operator, cluster.layout, with_events=False)
    for name, placement in snapshot.placements.items():
        if placement.state is VmState.ERROR and name not in snapshot.requests:
            apply_fault(cluster, f"acknowledge {name}")


def _unhealthy(cluster: SimCluster, config: ClusterConfig) -> list[str]:
    snapshot = read_snapshot(cluster.operator, cluster.layout, with_events=False)
    copies = cluster.world.monitor.active_copies()
    bad = []
    for spec in config.vms:
        if spec.desired is not DesiredState.RUNNING:
            continue
        placement = snapshot.placements.get(spec.name)
        running = (placement is not None and placement.state is VmState.RUNNING
                   and copies.get(spec.name) == [placement.host])
        if not running:
            bad.append(f"{spec.name} ({placement.state.value if placement else 'unplaced'})")
    for service in config.services:  # running on a member that holds all of it
        state = snapshot.service_states.get(service.name)
        if state is None or state.phase is not ServicePhase.RUNNING or state.active is None:
            bad.append(f"service {service.name} ({state.phase.value if state else 'unknown'})")
            continue
        guest = _guest_of(cluster, state.active)
        if guest is None or service.floating_ip not in guest.ips or service.name not in guest.started:
            bad.append(f"service {service.name} (not up in {state.active})")
    return bad


def _guest_of(cluster: SimCluster, vm: str) -> GuestState | None:
    for hv in cluster.world.hypervisors.values():
        found = hv.vms.get(vm)
        if found is not None and found.state is LocalState.RUNNING:
            return found.guest
    return None


def summarize(runs: list[SwarmRun]) -> dict[str, Any]:
    recoveries = [r.recovery_s for r in runs if r.recovery_s is not None]
    failing_runs = [r for r in runs if r.safety or r.liveness]
    failing = [r.seed for r in failing_runs]
    return {
        "runs": len(runs),
        "safety_violations": sum(len(r.safety) for r in runs),
        "liveness_violations": sum(len(r.liveness) for r in runs),
        "worst_recovery_s": max(recoveries, default=0.0),
        "disk_double_attach": sum(r.disk_double_attach for r in runs),
        "ip_double_raise": sum(r.ip_double_raise for r in runs),
        "acknowledged_writes_lost": sum(r.acknowledged_writes_lost for r in runs),
        "healthy_hosts_switched_off": sum(r.healthy_switched_off for r in runs),
        "failing_seeds": failing[:20],
        "replay": [f"haven sim swarm --seed {r.seed}{' --services' if r.services else ''}"
                   f"{' --pairs' if r.pairs else ''}{' --failsafe' if r.failsafe else ''}"
                   f"{' --fast-fencing' if r.fast_fencing else ''} --verbose"
                   for r in failing_runs[:5]],
    }
