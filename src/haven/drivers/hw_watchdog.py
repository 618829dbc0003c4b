"""DeviceWatchdog: the Watchdog port (`ports.fencer.Watchdog`) on a Linux watchdog device
(`/dev/watchdog`, a hardware timer or the kernel's `softdog`): the host resets when the agent
stops renewing its lease. The lab uses `daemon.watchdog.FileWatchdog` (a process that kills QEMUs)
instead; a node's config picks one (`watchdog_file` or `watchdog_device`).

The kernel's watchdog API (Documentation/watchdog/watchdog-api.rst): one process at a time may
hold the device open (another open fails with EBUSY); opening it starts the timer; an ioctl or a
write pets it; writing the magic character 'V' just before closing stops it, and any other close
leaves it running (the host then resets when it runs out). So a daemon that dies, hangs or is
killed leaves the timer running; only a clean stop (`disarm`) writes 'V'. A daemon restart that
keeps the VMs (SIGHUP, `shutdown: keep`) does not disarm either: the next run must open the device
and renew within the timeout, the same deadline the file watchdog enforces.

Each `arm` (every successful lease renewal) pets the device. The ioctls sit behind
`WatchdogDevice`, so that tests substitute a fake: nothing here opens a device on its own.
"""
from __future__ import annotations

import array
import contextlib
import errno
import fcntl
import logging
import math
import os
import threading
from pathlib import Path
from typing import Protocol

from haven.model.spec import Settings

log = logging.getLogger("haven.watchdog")

# The ioctl numbers of <linux/watchdog.h>, encoded as <asm-generic/ioctl.h> does (x86, arm, arm64,
# riscv, s390; powerpc, mips, sparc and alpha lay the direction and size bits out differently):
# bits 0-7 the number, 8-15 the type ('W'), 16-29 the argument's size, 30-31 the direction.
_IOC_NRSHIFT, _IOC_TYPESHIFT, _IOC_SIZESHIFT, _IOC_DIRSHIFT = 0, 8, 16, 30
_IOC_WRITE, _IOC_READ = 1, 2  # the direction, as seen from user space
_INT_SIZE = array.array("i").itemsize  # the ioctls' argument is a C int (4 bytes)
WATCHDOG_IOCTL_BASE = ord("W")


def _ioc(direction: int, kind: int, number: int, size: int) -> int:
    return (direction << _IOC_DIRSHIFT) | (size << _IOC_SIZESHIFT) | (kind << _IOC_TYPESHIFT) | (number << _IOC_NRSHIFT)


def _ior(kind: int, number: int, size: int) -> int:
    return _ioc(_IOC_READ, kind, number, size)


def _iowr(kind: int, number: int, size: int) -> int:
    return _ioc(_IOC_READ | _IOC_WRITE, kind, number, size)


WDIOC_KEEPALIVE = _ior(WATCHDOG_IOCTL_BASE, 5, _INT_SIZE)  # 0x80045705
WDIOC_SETTIMEOUT = _iowr(WATCHDOG_IOCTL_BASE, 6, _INT_SIZE)  # 0xc0045706
WDIOC_GETTIMEOUT = _ior(WATCHDOG_IOCTL_BASE, 7, _INT_SIZE)  # 0x80045707
MAGIC_CLOSE = b"V"


def device_timeout_s(settings: Settings) -> int:
    """The device's timeout for these lease settings: `lease_ttl_s - self_fence_margin_s`, rounded up.

    The agent kills its VMs `TTL - margin` after the send time of its last good renewal, and it
    pets the device when that renewal's answer comes back, so a little after the send time: with
    this timeout a host whose agent stops renewing resets no earlier than the self-fence fires (a
    reset is the backstop, not the mechanism: a host that merely lost the store gets its own
    self-fence first) and at most a second plus one store round trip later. Watchdog timeouts are
    whole seconds, hence the rounding up (never down: that would reset before the self-fence)."""
    return max(1, math.ceil(settings.self_fence_after_s - 1e-9))  # 1e-9: 2.5 - 0.5 is 2, not 3


class WatchdogDeviceError(RuntimeError):
    """The watchdog device cannot be used; the message names it and says what to do."""


class WatchdogDevice(Protocol):
    """The few operations of a Linux watchdog device. Failures raise OSError (with its errno)."""

    def open(self) -> None:
        """Open the device: this starts its timer."""

    def set_timeout(self, seconds: int) -> None:
        """WDIOC_SETTIMEOUT (also pets it)."""

    def get_timeout(self) -> int:
        """WDIOC_GETTIMEOUT: the timeout in force (a device may round the one set)."""

    def keepalive(self) -> None:
        """Pet it: the timer starts over."""

    def magic_close(self) -> None:
        """Write 'V': the next close stops the timer instead of leaving it running."""

    def close(self) -> None:
        """Close it (idempotent)."""


class LinuxWatchdogDevice:
    """The real device: os.open and fcntl.ioctl on `path`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd: int | None = None

    def _fd(self) -> int:
        if self.fd is None:
            raise OSError(errno.EBADF, "not open", str(self.path))
        return self.fd

    def open(self) -> None:
        # Close-on-exec: a QEMU started by the daemon must not inherit (and so hold) the device.
        self.fd = os.open(self.path, os.O_WRONLY | os.O_CLOEXEC)

    def set_timeout(self, seconds: int) -> None:
        fcntl.ioctl(self._fd(), WDIOC_SETTIMEOUT, array.array("i", [seconds]), True)

    def get_timeout(self) -> int:
        value = array.array("i", [0])
        fcntl.ioctl(self._fd(), WDIOC_GETTIMEOUT, value, True)
        return value[0]

    def keepalive(self) -> None:
        try:
            fcntl.ioctl(self._fd(), WDIOC_KEEPALIVE, array.array("i", [0]), True)
        except OSError as error:  # a driver without WDIOF_KEEPALIVEPING: any write but 'V' pets
            if error.errno != errno.EOPNOTSUPP:
                raise
            os.write(self._fd(), b"\0")

    def magic_close(self) -> None:
        os.write(self._fd(), MAGIC_CLOSE)

    def close(self) -> None:
        fd, self.fd = self.fd, None
        if fd is not None:
            os.close(fd)


def explain(path: Path, doing: str, error: OSError) -> WatchdogDeviceError:
    """A clear message for a device that failed: what happened and what to do."""
    advice = {
        errno.ENOENT: "no such device: load the hardware's watchdog driver, or `modprobe softdog` on a host "
                      "without one (docs/INSTALL.md)",
        errno.ENODEV: "no such device: load the hardware's watchdog driver, or `modprobe softdog`",
        errno.EBUSY: "another process holds it (only one may): systemd's RuntimeWatchdogSec=, the watchdog "
                     "daemon, wdmd or sbd, or an old haven daemon still running; stop that, or give haven "
                     "another device (watchdog_device: /dev/watchdog1)",
        errno.EACCES: "permission denied: run `haven node run` as root",
        errno.EPERM: "permission denied: run `haven node run` as root",
        errno.ENOTTY: "not a watchdog device (it does not know the watchdog ioctls): watchdog_device must "
                      "name one, such as /dev/watchdog",
        errno.EINVAL: "the device refuses this value (out of its range): pick lease settings whose "
                      "lease_ttl_s - self_fence_margin_s it supports, or another device",
        errno.EOPNOTSUPP: "the device cannot change its timeout: use another device (or softdog)",
    }.get(error.errno or 0, error.strerror or str(error))
    return WatchdogDeviceError(f"watchdog device {path}: {doing} failed: {advice} ({error.strerror or error})")


class DeviceWatchdog:
    """The Watchdog port, on a watchdog device this process holds from `open` to `disarm`."""

    def __init__(self, path: Path, settings: Settings, device: WatchdogDevice | None = None) -> None:
        self.path = path
        self.settings = settings
        self.timeout_s = device_timeout_s(settings)
        self.device: WatchdogDevice = device if device is not None else LinuxWatchdogDevice(path)
        self.actual_timeout_s: int | None = None  # as the device took it, once open
        self._open = False
        self._lock = threading.Lock()  # the renew thread and the main thread may both arm

    def open(self) -> None:
        """Take the device and set its timeout. Call it once the previous daemon is gone (it held
        the device). Raises WatchdogDeviceError, leaving the device closed and stopped."""
        with self._lock:
            self._open_locked()

    def _open_locked(self) -> None:
        if self._open:
            return
        try:
            self.device.open()
        except OSError as error:
            raise explain(self.path, "open", error) from None
        try:  # the timer runs from here: any failure must stop it again before giving up
            doing = f"setting the timeout to {self.timeout_s} s (WDIOC_SETTIMEOUT)"
            self.device.set_timeout(self.timeout_s)
            doing = "reading the timeout back (WDIOC_GETTIMEOUT)"
            actual = self.device.get_timeout()
        except OSError as error:
            self._stop()
            raise explain(self.path, doing, error) from None
        if actual < self.timeout_s:
            self._stop()
            raise WatchdogDeviceError(
                f"watchdog device {self.path}: it took a timeout of {actual} s for the {self.timeout_s} s asked: "
                f"it would reset this host before the agent's own self-fence deadline (lease_ttl_s - "
                f"self_fence_margin_s = {self.settings.self_fence_after_s:g} s); use another device")
        if actual != self.timeout_s:
            log.warning("watchdog device %s rounded the timeout of %d s up to %d s: a host whose agent stops "
                        "renewing resets up to %d s after its last renewal", self.path, self.timeout_s, actual, actual)
        if actual > self.settings.lease_ttl_s + self.settings.fence_grace_s:
            log.warning("watchdog device %s: its %d s timeout ends after lease expiry + fence_grace_s (%g s), when "
                        "the cluster may already restart this host's VMs elsewhere: for a hung agent it is no "
                        "backstop (make lease_ttl_s - self_fence_margin_s a whole number of seconds)", self.path,
                        actual, self.settings.lease_ttl_s + self.settings.fence_grace_s)
        self.actual_timeout_s = actual
        self._open = True
        log.info("watchdog device %s armed: the host resets %d s after the last lease renewal", self.path, actual)

    def _stop(self) -> None:
        """Magic close, then close: the kernel stops the timer."""
        try:
            self.device.magic_close()
        except OSError as error:
            log.error("watchdog device %s: the magic close failed (%s): the host resets in %s s unless "
                      "the device is opened again", self.path, error, self.actual_timeout_s or "its default")
        finally:
            with contextlib.suppress(OSError):  # a close cannot undo anything: the magic close decided
                self.device.close()

    def arm(self, deadline: float) -> None:
        """Pet the device (after each successful renewal). The device counts its own whole seconds
        from now (`device_timeout_s`), so `deadline` itself is not used. Not open yet (or disarmed):
        opens it first, raising WatchdogDeviceError if it cannot. A failed pet is logged, not
        raised: the next renewal pets again, and a device that cannot be petted resets the host."""
        with self._lock:
            self._open_locked()
            try:
                self.device.keepalive()
            except OSError as error:
                log.error("%s", explain(self.path, "keepalive (WDIOC_KEEPALIVE)", error))

    def disarm(self) -> None:
        """Clean stop: write the magic close character, then close; the host is not reset."""
        with self._lock:
            if self._open:
                self._open = False
                self._stop()
