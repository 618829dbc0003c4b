"""What a stopping daemon does with its VMs (`NodeConfig.shutdown`, or KEEP for a restart).

A stop that is not a restart is a clean departure of the host (`runtime.leaving`): the daemon
announces it with the cluster's policy (`Settings.shutdown_policy`, a reboot told from a shutdown
by systemd) and its loops carry out what the manager decides, as the simulator's do.
"""
from __future__ import annotations

import subprocess
import time
from collections.abc import Callable

from haven.core.departure import resolve
from haven.core.events import Event, EventKind, SubjectKind
from haven.daemon.config import ShutdownPolicy
from haven.daemon.host_threads import HostThreads
from haven.daemon.lease_file import LeaseFile
from haven.model.spec import HostShutdownPolicy, Settings
from haven.model.state import Departure
from haven.ports.hypervisor import Hypervisor
from haven.runtime.layout import read_settings
from haven.runtime.leaving import Leaving

POLL_S = 0.2
REBOOT_TARGETS = ("reboot.target", "kexec.target", "soft-reboot.target")
Run = Callable[..., "subprocess.CompletedProcess[str]"]


def host_is_rebooting(run: Run = subprocess.run) -> bool:
    """Is this stop part of a reboot? systemd queues a reboot target for one; a shutdown queues
    poweroff.target or halt.target, and a plain `systemctl stop haven` neither: the host leaves
    then as for a shutdown (it may not come back soon)."""
    try:
        jobs = run(["systemctl", "list-jobs", "--no-legend", "--plain"], capture_output=True, text=True,
                   timeout=2.0, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return False
    return any(target in jobs for target in REBOOT_TARGETS)


def departure_for(policy: ShutdownPolicy, settings: Settings, reboot: bool) -> Departure:
    """The departure to announce: the node's own choice if it made one, else the cluster's."""
    if policy is ShutdownPolicy.MIGRATE:
        chosen = HostShutdownPolicy.MIGRATE
    elif policy is ShutdownPolicy.STOP:
        chosen = HostShutdownPolicy.FAILOVER
    else:
        chosen = resolve(settings.shutdown_policy, reboot)
    return Departure(policy=chosen, reboot=reboot)


def shut_down(policy: ShutdownPolicy, threads: HostThreads, hypervisor: Hypervisor, lease_file: LeaseFile,
              timeout_s: float, rebooting: Callable[[], bool] = host_is_rebooting) -> None:
    """KEEP: renew one last time and leave every VM running for the next run to take over.
    Otherwise leave the cluster cleanly: announce the departure and wait (at most `timeout_s`) while
    the loops move, freeze or fail over the VMs; kill what still runs then (never give the lease
    back with a VM alive), stop the loops and give the lease back."""
    keeper, clock = threads.keeper, threads.clock
    if policy is ShutdownPolicy.KEEP:
        keeper.emit(Event(clock.now(), f"agent {keeper.host.name}", EventKind.SHUTTING_DOWN,
                          subject_kind=SubjectKind.HOST, name=keeper.host.name, host=keeper.host.name,
                          reason=policy.value))
        threads.stopping.set()  # no new action: the next run decides from here
        keeper.renew()  # the next run has a full self-fence interval to take over
        lease_file.save(keeper.state)
        return
    reboot = rebooting()
    departure = departure_for(policy, read_settings(keeper.store, keeper.layout), reboot)
    leaving = Leaving(threads.agent, departure, timeout_s)
    while not leaving.step():
        time.sleep(POLL_S)
    leaving.finish()
    threads.stop()
    keeper.shutdown()
    lease_file.remove()
