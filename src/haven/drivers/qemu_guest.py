"""The guest port (`ports.guest`) over `QemuHypervisor`: thin adapters, no decisions.

The guest agent client (`drivers.guest_agent`) already pings with a timeout and runs a command to
its exit status; QMP hot-plug (`drivers.qemu_hotplug`) confirms an unplug before it returns. This
only translates names (a pool-relative image path to the pool's directory) and errors.
"""
from __future__ import annotations

import shlex
from collections.abc import Sequence

from haven.drivers.guest_agent import GuestAgentError
from haven.drivers.qemu import QemuHypervisor
from haven.drivers.qemu_boot import create_disk
from haven.drivers.qemu_cmdline import disk_format
from haven.ports.guest import GuestError, GuestResult
from haven.ports.hypervisor import HypervisorError

FIRST_FAILED = 100  # exec_steps' shell exits 100 + the index of the command that failed


class QemuGuest:
    def __init__(self, hypervisor: QemuHypervisor) -> None:
        self.hv = hypervisor

    def ping(self, vm: str, timeout: float) -> bool:
        try:
            return self.hv.guest_agent(vm).ping(timeout)
        except HypervisorError:  # not (or no longer) one of ours: it answers nothing
            return False

    def exec(self, vm: str, argv: Sequence[str], timeout: float, silence: float | None = None) -> GuestResult:
        try:
            result = self.hv.guest_agent(vm).exec(list(argv), timeout, silence)
        except (GuestAgentError, OSError, HypervisorError) as error:
            raise GuestError(f"{vm}: {error}") from error
        return GuestResult(result.exit_code, result.stdout, result.stderr)

    def exec_steps(self, vm: str, steps: Sequence[Sequence[str]], timeout: float) -> tuple[int, GuestResult]:
        # One shell in the guest runs them all; the exit status says which one failed.
        script = "\n".join(f"{shlex.join(argv)} || exit {FIRST_FAILED + i}" for i, argv in enumerate(steps))
        result = self.exec(vm, ("/bin/sh", "-c", script), timeout)
        if result.ok:
            return len(steps), result
        failed = result.exit_code - FIRST_FAILED
        return (failed if 0 <= failed < len(steps) else 0), result

    def attach_disk(self, vm: str, device_id: str, path: str, size_mib: int) -> None:
        pool, _, file = path.partition("/")
        image = self.hv.config.pool_dir(pool) / file
        if not image.exists():  # a new service's first start; only the member allowed to attach gets here
            guest = self.hv.config.guest
            try:
                create_disk(image, size_mib, disk_format(str(image)), guest.disk_filesystem if guest else None)
            except OSError as error:
                raise HypervisorError(f"cannot create the data disk {image}: {error}") from error
        self.hv.attach_disk(vm, device_id, str(image))

    def detach_disk(self, vm: str, device_id: str) -> None:
        self.hv.detach_disk(vm, device_id)

    def attached_disks(self, vm: str) -> set[str]:
        if self.hv.pid(vm) is None:
            return set()  # no QEMU, nothing plugged into it
        # A monitor that does not answer raises: "none" would be a guess, and the runner reads
        # an unknown as "still attached".
        return self.hv.attached_disks(vm)
