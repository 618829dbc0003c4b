"""A host leaving the cluster cleanly (a shutdown or a reboot), as the daemon and the simulator both
run it: announce the departure on the alive key, let the manager decide what each VM does
(`core.departure`) and the agent carry it out, then go once nothing is placed to run here.

`step` is one look, cheap enough to repeat every few hundred milliseconds: the daemon calls it from
its main thread while its loops keep running, the simulator from a timer on virtual time. Neither
stops a VM itself; the loops do, through placements, as for any other decision.
"""
from __future__ import annotations

from haven.core.departure import holds
from haven.core.events import EventKind
from haven.model.state import DEAD_LOCAL_STATES, Departure, HostRecord, Placement
from haven.ports.store import StoreError
from haven.runtime.agent_loop import AgentLoop
from haven.runtime.layout import KeyKind


class Leaving:
    def __init__(self, agent: AgentLoop, departure: Departure, timeout_s: float) -> None:
        self.agent = agent
        self.departure = departure
        self.deadline = agent.clock.now() + timeout_s
        self.announced_under = 0  # the lease the announcement was written under
        agent.event(EventKind.SHUTTING_DOWN, reason=f"{'reboot' if departure.reboot else 'shutdown'}: "
                    f"{departure.policy.value}")

    @property
    def timed_out(self) -> bool:
        return self.agent.clock.now() >= self.deadline

    def step(self) -> bool:
        """Announce (again after a lease change, until the store takes it); True once this host
        may go: the manager has recorded the departure, no VM of ours is alive here and no placement
        holds it (the manager has recorded where each VM went); or once the time is up."""
        keeper, agent = self.agent.keeper, self.agent
        if self.timed_out:
            return True
        lease = keeper.lease_id
        if lease and self.announced_under != lease and keeper.announce(self.departure):
            self.announced_under = lease
        if not lease or self.announced_under != lease:
            return False
        if any(vm.state not in DEAD_LOCAL_STATES for vm in agent.hypervisor.list().values()):
            return False
        # The store's word, not the agent's cache (another thread's): a placement it has not seen yet
        # counts. And the manager must have recorded the departure: else it would read the lease's
        # end as a lost host (safe, but a fence and a grace for nothing).
        host = agent.host.name
        try:
            record = agent.store.get(agent.layout.host_state(host))
            items = agent.store.get_prefix(agent.layout.root + "vms/")
        except StoreError:
            return False
        if record is None or HostRecord.model_validate_json(record.value).leaving is not self.departure.policy:
            return False
        for kv in items:
            key = agent.layout.parse(kv.key)
            if key is not None and key.kind is KeyKind.PLACEMENT and holds(Placement.model_validate_json(kv.value),
                                                                           host):
                return False
        return True

    def finish(self) -> int:
        """Launch nothing more and kill what still runs (only if the time ran out); the caller then
        gives the lease back. Returns how many VMs were killed."""
        return self.agent.close("the host left before its VMs could (shutdown timeout)")
