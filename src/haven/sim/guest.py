"""The simulator's twin of the guest port (`ports.guest`): a fake QEMU guest agent in every VM of
one host, and disk hot-plug.

The guest answers while its VM runs, unless `hang guest VM` made it silent. It understands the
commands haven sends (`drivers.guest_steps`: mount, unmount, raise and drop the floating IP) and
each service's start, stop and check commands; a check fails while `fail check SERVICE on VM`
holds, or when the application is not started. A hot-plug (either way) lands `hotplug_s` later.
What a guest holds lives on its `SimVm`, so a new boot starts with nothing.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from haven.drivers import guest_steps
from haven.model.service import ServiceSpec
from haven.model.state import LocalState
from haven.ports.guest import GuestError, GuestResult
from haven.ports.hypervisor import HypervisorError

if TYPE_CHECKING:
    from haven.sim.hypervisor import FakeHypervisor, SimVm

INTERFACE = "eth0"  # the member's NIC, as the guest sees it


@dataclass
class GuestState:
    """What one boot of a guest holds."""

    disks: dict[str, str] = field(default_factory=dict)  # device id -> image path, plugged into QEMU
    mounted: dict[str, str] = field(default_factory=dict)  # mount point -> device id
    ips: set[str] = field(default_factory=set)  # address/prefix
    started: set[str] = field(default_factory=set)  # services whose application runs here


def command_table(services: Iterable[ServiceSpec]) -> dict[tuple[str, ...], tuple[str, str]]:
    """argv -> (service, start|stop|check): how the fake guest knows what a command is."""
    table: dict[tuple[str, ...], tuple[str, str]] = {}
    for svc in services:
        for what, argv in (("start", svc.start), ("stop", svc.stop), ("check", svc.check)):
            table.setdefault(tuple(argv), (svc.name, what))
    return table


class SimGuest:
    def __init__(self, hv: FakeHypervisor, commands: dict[tuple[str, ...], tuple[str, str]]) -> None:
        self.hv = hv
        self.world = hv.world
        self.commands = commands

    def _vm(self, vm: str) -> SimVm | None:
        found = self.hv.vms.get(vm)
        return found if found is not None and found.state is LocalState.RUNNING else None

    def ping(self, vm: str, timeout: float) -> bool:
        return self._vm(vm) is not None and vm not in self.world.hung_guests

    def exec(self, vm: str, argv: Sequence[str], timeout: float, silence: float | None = None) -> GuestResult:
        found = self._vm(vm)
        if found is None or vm in self.world.hung_guests:
            raise GuestError(f"{vm}: the guest agent did not answer within {silence or timeout:g} s")
        return self._run(vm, found.guest, list(argv))

    def _run(self, vm: str, guest: GuestState, argv: list[str]) -> GuestResult:
        args = argv[4:]
        if len(args) == 2 and argv == guest_steps.mount_data(*args):
            if args[0] not in guest.disks:
                return GuestResult(3, stderr=f"no disk with serial {args[0]}")
            guest.mounted[args[1]] = args[0]
        elif len(args) == 1 and argv == guest_steps.unmount_data(*args):
            guest.mounted.pop(args[0], None)
        elif len(args) == 3 and argv == guest_steps.raise_ip(*args[:2]):
            guest.ips.add(args[0])
            self.hv.changed()  # the IP invariant is checked on change
        elif len(args) == 2 and argv == guest_steps.drop_ip(*args):
            guest.ips.discard(args[0])
            self.hv.changed()
        else:
            known = self.commands.get(tuple(argv))
            if known is None:
                return GuestResult(127, stderr=f"{argv[0]}: not found")
            service, what = known
            if what == "start":
                guest.started.add(service)
            elif what == "stop":
                guest.started.discard(service)
            elif service not in guest.started or (service, vm) in self.world.failing_checks:
                return GuestResult(1, stderr=f"{service} is not healthy")
        return GuestResult(0)

    def exec_steps(self, vm: str, steps: Sequence[Sequence[str]], timeout: float) -> tuple[int, GuestResult]:
        result = GuestResult(0)
        for i, argv in enumerate(steps):
            result = self.exec(vm, argv, timeout)
            if not result.ok:
                return i, result
        return len(steps), result

    def attach_disk(self, vm: str, device_id: str, path: str, size_mib: int) -> None:
        found = self._vm(vm)
        if found is None:
            raise HypervisorError(f"{vm} is not running here")
        if device_id in found.guest.disks:
            return

        def plugged() -> None:
            if self.hv.vms.get(vm) is found and found.state is LocalState.RUNNING:
                found.guest.disks[device_id] = path
                self.hv.changed()

        self.hv.loop.after(self.hv.timings.hotplug_s, plugged)

    def detach_disk(self, vm: str, device_id: str) -> None:
        found = self._vm(vm)
        if found is None or device_id not in found.guest.disks:
            return
        if device_id in found.guest.mounted.values():
            raise HypervisorError(f"{vm}: {device_id} is still mounted in the guest")

        def unplugged() -> None:
            found.guest.disks.pop(device_id, None)
            self.hv.changed()

        self.hv.loop.after(self.hv.timings.hotplug_s, unplugged)

    def attached_disks(self, vm: str) -> set[str]:
        found = self._vm(vm)
        return set(found.guest.disks) if found is not None else set()
