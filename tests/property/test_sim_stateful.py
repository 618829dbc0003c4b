"""Hypothesis stateful test over the simulator: faults and operator commands in any order.

Rules are lines of the fault language (`haven.sim.faults`) and "let time pass". After every step:
no VM active on two hosts, none started before its old host was fenced, no host over its memory.
At the end every fault is healed and every desired-running VM must run again within
`LIVENESS_BOUND_S` of virtual time (errors acknowledged, as an operator would).

Derandomized and without an example database, so CI sees the same programs on every run.
"""
from __future__ import annotations

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from haven.model.spec import ClusterConfig, DesiredState, HostSpec, Settings, VmSpec
from haven.model.state import ACTIVE_LOCAL_STATES, LocalState, VmState
from haven.runtime.layout import read_snapshot
from haven.sim.cluster import SimCluster
from haven.sim.faults import apply_fault
from haven.sim.swarm import heal_everything

HOSTS = ("h1", "h2", "h3")
VMS = ("db", "web1", "web2", "legacy")
LIVENESS_BOUND_S = 60.0


def cluster_config(failback: bool, balance: bool) -> ClusterConfig:
    hosts = tuple(HostSpec(name=name, address=f"10.0.0.{i + 1}", vcpus=8, memory_mib=4096)
                  for i, name in enumerate(HOSTS))
    vms = (
        VmSpec(name="db", memory_mib=1024, priority=3, preferred_hosts=("h1",)),
        VmSpec(name="web1", memory_mib=512, priority=2, anti_affinity_group="web"),
        VmSpec(name="web2", memory_mib=512, priority=2, anti_affinity_group="web", preferred_hosts=("h2", "h3")),
        VmSpec(name="legacy", memory_mib=768, priority=1, migratable=False),
    )
    return ClusterConfig(name="prop", settings=Settings(failback=failback, balance=balance),
                         hosts=hosts, vms=vms)


hosts = st.sampled_from(HOSTS)
vms = st.sampled_from(VMS)


class SimClusterMachine(RuleBasedStateMachine):
    cluster: SimCluster

    @initialize(failback=st.booleans(), balance=st.booleans())
    def start(self, failback: bool, balance: bool) -> None:
        self.config = cluster_config(failback, balance)
        self.cluster = SimCluster(self.config)
        self.cluster.advance_to(4.0)  # everything has booted

    def apply(self, line: str) -> None:
        apply_fault(self.cluster, line)

    # --- time ---

    @rule(dt=st.sampled_from((0.1, 0.3, 0.5, 1.0, 1.7, 2.5, 4.0, 8.0)))
    def let_time_pass(self, dt: float) -> None:
        self.cluster.advance_to(round(self.cluster.now + dt, 3))

    # --- faults ---

    @rule(host=hosts, on=st.booleans())
    def power(self, host: str, on: bool) -> None:
        self.apply(f"power {'on' if on else 'off'} {host}")

    @rule(host=hosts, peer=st.sampled_from(HOSTS + ("store",)))
    def cut(self, host: str, peer: str) -> None:
        if peer != host:
            self.apply(f"cut {host} from {peer}")

    @rule(side=st.sets(st.sampled_from(HOSTS + ("store",)), min_size=1, max_size=3))
    def partition(self, side: set[str]) -> None:
        rest = [h for h in HOSTS + ("store",) if h not in side]
        if rest:
            self.apply(f"partition {' '.join(sorted(side))} | {' '.join(rest)}")

    @rule(host=st.sampled_from(HOSTS + ("all",)))
    def heal(self, host: str) -> None:
        self.apply(f"heal {host}")

    @rule(up=st.booleans())
    def store(self, up: bool) -> None:
        self.apply(f"store {'up' if up else 'down'}")

    @rule(host=hosts, hung=st.booleans())
    def hang(self, host: str, hung: bool) -> None:
        self.apply(f"{'hang' if hung else 'unhang'} {host}")

    @rule(host=hosts, delay=st.sampled_from((0.0, 0.4, 1.2, 1.7, 2.5)))
    def renew_late(self, host: str, delay: float) -> None:
        self.apply(f"slow renew {host} by {delay}" if delay else f"normal renew {host}")

    @rule(host=hosts, rate=st.sampled_from((0.9, 1.0, 1.1, 1.5)))
    def skew(self, host: str, rate: float) -> None:
        self.apply(f"skew {host} {rate}")

    @rule(vm=vms)
    def crash(self, vm: str) -> None:
        self.apply(f"crash {vm}")

    @rule(vm=vms, count=st.integers(1, 3))
    def fail_start(self, vm: str, count: int) -> None:
        self.apply(f"fail start {vm} {count}")

    # --- operator commands ---

    @rule(vm=vms, command=st.sampled_from(("start", "stop", "acknowledge")))
    def operate(self, vm: str, command: str) -> None:
        self.apply(f"{command} {vm}")

    @rule(vm=vms, kind=st.sampled_from(("live", "quick", "cold")), to=st.sampled_from(HOSTS + ("",)))
    def migrate(self, vm: str, kind: str, to: str) -> None:
        self.apply(f"migrate {vm} {kind}" + (f" to {to}" if to else ""))

    @rule(host=hosts, on=st.booleans())
    def maintenance(self, host: str, on: bool) -> None:
        self.apply(f"{'drain' if on else 'resume'} {host}")

    # --- invariants ---

    @invariant()
    def no_safety_violation(self) -> None:
        assert not self.cluster.world.monitor.violations, "\n".join(self.cluster.world.monitor.violations)

    @invariant()
    def no_host_over_its_memory(self) -> None:
        world = self.cluster.world
        for host, hv in world.hypervisors.items():
            used = sum(vm.spec.memory_mib for vm in hv.vms.values()
                       if vm.state in ACTIVE_LOCAL_STATES or vm.state is LocalState.INCOMING)
            assert used <= world.memory[host], f"{host} holds {used} MiB of {world.memory[host]} MiB"

    # --- liveness, once everything is healed ---

    def teardown(self) -> None:
        if not hasattr(self, "cluster"):
            return
        cluster = self.cluster
        for line in heal_everything(self.config):
            apply_fault(cluster, line)
        healed = cluster.now
        while cluster.now < healed + LIVENESS_BOUND_S:
            cluster.advance_to(round(cluster.now + 0.5, 3))
            self.acknowledge_errors()
            if not self.unhealthy():
                break
        assert not self.unhealthy(), (f"not running {LIVENESS_BOUND_S:g} s after healing: "
                                      f"{', '.join(self.unhealthy())}")
        self.no_safety_violation()

    def acknowledge_errors(self) -> None:
        snapshot = read_snapshot(self.cluster.operator, self.cluster.layout, with_events=False)
        for name, placement in sorted(snapshot.placements.items()):
            if placement.state is VmState.ERROR and name not in snapshot.requests:
                apply_fault(self.cluster, f"acknowledge {name}")

    def unhealthy(self) -> list[str]:
        """Desired-running VMs (as the operator last asked) not running exactly where placed."""
        snapshot = read_snapshot(self.cluster.operator, self.cluster.layout, with_events=False)
        copies = self.cluster.world.monitor.active_copies()
        bad = []
        for name, spec in sorted(snapshot.specs.items()):
            if spec.desired is not DesiredState.RUNNING:
                continue
            p = snapshot.placements.get(name)
            if p is None or p.state is not VmState.RUNNING or copies.get(name) != [p.host]:
                bad.append(f"{name} ({p.state.value if p else 'unplaced'})")
        return bad


SimClusterMachine.TestCase.settings = settings(
    max_examples=300, stateful_step_count=40, deadline=None, derandomize=True, database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much], print_blob=True)
test_sim_cluster = SimClusterMachine.TestCase
