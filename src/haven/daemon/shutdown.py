"""What a stopping daemon does with its VMs (`NodeConfig.shutdown`, or KEEP for a restart)."""
from __future__ import annotations

import contextlib
import time

from haven.core.events import Event, EventKind, SubjectKind
from haven.daemon.config import ShutdownPolicy
from haven.daemon.host_threads import HostThreads
from haven.daemon.lease_file import LeaseFile
from haven.model.state import ACTIVE_LOCAL_STATES
from haven.ports.hypervisor import Hypervisor
from haven.ports.store import StoreError
from haven.runtime import intents

POLL_S = 0.2


def shut_down(policy: ShutdownPolicy, threads: HostThreads, hypervisor: Hypervisor, lease_file: LeaseFile,
              timeout_s: float) -> None:
    """KEEP: renew one last time and leave every VM running for the next run to take over.
    MIGRATE: drain this host and wait (at most `timeout_s`) for its VMs to leave; STOP: stop them.
    Then give the lease back; the loops keep running meanwhile, so the VMs can leave."""
    keeper, clock = threads.keeper, threads.clock
    keeper.emit(Event(clock.now(), f"agent {keeper.host.name}", EventKind.SHUTTING_DOWN, subject_kind=SubjectKind.HOST,
                      name=keeper.host.name, host=keeper.host.name, reason=policy.value))
    if policy is ShutdownPolicy.KEEP:
        threads.stopping.set()  # no new action: the next run decides from here
        keeper.renew()  # the next run has a full self-fence interval to take over
        lease_file.save(keeper.state)
        return
    if policy is ShutdownPolicy.MIGRATE:
        # On failure the VMs stay: the timeout below still bounds the wait.
        with contextlib.suppress(StoreError, intents.IntentConflict):
            intents.set_maintenance(keeper.store, keeper.layout, keeper.host.name, True)
    else:
        for name in list(hypervisor.list()):
            hypervisor.stop(name)
    ends = clock.now() + timeout_s
    while clock.now() < ends and any(vm.state in ACTIVE_LOCAL_STATES for vm in hypervisor.list().values()):
        time.sleep(POLL_S)
    threads.stop()
    keeper.shutdown()
    lease_file.remove()
