"""The hardware watchdog driver (`drivers.hw_watchdog`) against a fake device: the timeout it sets
from the lease settings, a pet on each arm, the magic close on a clean stop, a clear error for a
device that is busy or refuses the timeout; the real device class only ever on a regular temp file
(never /dev/watchdog: opening it would start a timer that resets this machine); the node config
and the daemon's choice of watchdog."""
from __future__ import annotations

import errno
import logging
import os
from pathlib import Path

import pytest

from haven.daemon.config import NodeConfig, load_node_config
from haven.daemon.node import make_watchdog, refuse_without_watchdog
from haven.daemon.watchdog import FileWatchdog
from haven.drivers import hw_watchdog
from haven.drivers.hw_watchdog import (
    WDIOC_GETTIMEOUT,
    WDIOC_KEEPALIVE,
    WDIOC_SETTIMEOUT,
    DeviceWatchdog,
    LinuxWatchdogDevice,
    WatchdogDeviceError,
    device_timeout_s,
)
from haven.drivers.qemu_process import MonotonicClock
from haven.model.load import ConfigError
from haven.model.spec import HostSpec, Settings
from haven.model.state import LocalState
from haven.ports.hypervisor import LocalVm
from haven.runtime.layout import Layout
from haven.runtime.lease import LeaseKeeper

from .daemon_fakes import FakeNetwork, ThreadedFakeHypervisor

SETTINGS = Settings()  # TTL 2 s, margin 0.5 s: the self-fence fires 1.5 s after the last good renewal


@pytest.fixture(autouse=True)
def never_a_real_device(monkeypatch: pytest.MonkeyPatch) -> None:
    """A guard: nothing in these tests may open a watchdog device of this machine."""
    real_open = os.open

    def guarded(path, *args, **kwargs):
        if os.path.basename(os.fspath(path)).startswith("watchdog") and os.fspath(path).startswith("/dev"):
            raise AssertionError(f"a test tried to open {path}")
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", guarded)


class FakeWatchdogDevice:
    """A stand-in for a Linux watchdog device: records every call; can be busy, refuse a timeout,
    or round the timeout to a value of its own."""

    def __init__(self, busy: bool = False, refuse_timeout: bool = False, rounds_to: int | None = None,
                 keepalive_fails: bool = False) -> None:
        self.busy, self.refuse_timeout, self.rounds_to = busy, refuse_timeout, rounds_to
        self.keepalive_fails = keepalive_fails
        self.calls: list[object] = []
        self.timeout = 60  # softdog's default until set
        self.is_open = False

    def open(self) -> None:
        if self.busy:
            raise OSError(errno.EBUSY, os.strerror(errno.EBUSY))
        self.is_open = True
        self.calls.append("open")

    def set_timeout(self, seconds: int) -> None:
        self.calls.append(("set_timeout", seconds))
        if self.refuse_timeout:
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        self.timeout = self.rounds_to if self.rounds_to is not None else seconds

    def get_timeout(self) -> int:
        self.calls.append("get_timeout")
        return self.timeout

    def keepalive(self) -> None:
        self.calls.append("keepalive")
        if self.keepalive_fails:
            raise OSError(errno.EIO, os.strerror(errno.EIO))

    def magic_close(self) -> None:
        self.calls.append("magic_close")

    def close(self) -> None:
        self.is_open = False
        self.calls.append("close")


def watchdog(device: FakeWatchdogDevice, settings: Settings = SETTINGS) -> DeviceWatchdog:
    return DeviceWatchdog(Path("/dev/watchdog-fake"), settings, device)


# --- the ioctl numbers and the timeout ---

def test_the_ioctl_numbers_are_linuxs():
    assert WDIOC_KEEPALIVE == 0x80045705
    assert WDIOC_SETTIMEOUT == 0xC0045706
    assert WDIOC_GETTIMEOUT == 0x80045707


@pytest.mark.parametrize(("ttl", "margin", "timeout"), [
    (2.0, 0.5, 2),   # the defaults: 1.5 s rounded up
    (2.5, 0.5, 2),   # already whole: not rounded further
    (3.3, 0.3, 3),   # 2.9999999999999996 in floating point is still 3
    (4.0, 1.2, 3),   # 2.8 up
    (1.0, 0.3, 1),
])
def test_the_timeout_is_the_self_fence_interval_rounded_up(ttl, margin, timeout):
    settings = Settings(lease_ttl_s=ttl, self_fence_margin_s=margin, renew_interval_s=0.25)
    assert device_timeout_s(settings) == timeout
    # never before the self-fence deadline, and less than a second after it
    assert settings.self_fence_after_s - 1e-9 <= timeout < settings.self_fence_after_s + 1


def test_open_sets_the_timeout_from_the_settings_and_reads_it_back():
    device = FakeWatchdogDevice()
    dog = watchdog(device, Settings(lease_ttl_s=4.0, self_fence_margin_s=1.2))
    dog.open()
    assert device.calls == ["open", ("set_timeout", 3), "get_timeout"]
    assert dog.actual_timeout_s == 3


# --- pets and the clean stop ---

def test_each_arm_pets_the_device():
    device = FakeWatchdogDevice()
    dog = watchdog(device)
    dog.open()
    for deadline in (1.75, 2.25, 2.75):
        dog.arm(deadline)
    assert device.calls[3:] == ["keepalive"] * 3


def test_an_arm_before_open_opens_first():
    device = FakeWatchdogDevice()
    watchdog(device).arm(1.75)
    assert device.calls == ["open", ("set_timeout", 2), "get_timeout", "keepalive"]


def test_disarm_writes_the_magic_close_then_closes():
    device = FakeWatchdogDevice()
    dog = watchdog(device)
    dog.arm(1.75)
    dog.disarm()
    assert device.calls[-2:] == ["magic_close", "close"] and not device.is_open
    dog.disarm()  # twice, or never opened: nothing to do
    watchdog(other := FakeWatchdogDevice()).disarm()
    assert device.calls[-2:] == ["magic_close", "close"] and other.calls == []


def test_a_failed_pet_is_logged_not_raised(caplog):
    device = FakeWatchdogDevice(keepalive_fails=True)
    dog = watchdog(device)
    with caplog.at_level(logging.ERROR, "haven.watchdog"):
        dog.arm(1.75)
    assert "keepalive" in caplog.text and "/dev/watchdog-fake" in caplog.text


def test_the_keeper_pets_on_every_renewal_and_disarms_on_shutdown():
    net = FakeNetwork()
    store = net.client("h1")
    device = FakeWatchdogDevice()
    spec = HostSpec(name="h1", address="10.0.0.1", vcpus=4, memory_mib=4096)
    keeper = LeaseKeeper(spec, store, ThreadedFakeHypervisor("h1", net, Layout("t")), MonotonicClock(),
                         Layout("t"), SETTINGS, lambda event: None, watchdog(device))
    assert keeper.register()
    keeper.renew()
    keeper.renew()
    assert device.calls.count("keepalive") == 3
    keeper.shutdown()
    assert device.calls[-2:] == ["magic_close", "close"]


# --- clear errors ---

def test_a_busy_device_is_a_clear_error():
    device = FakeWatchdogDevice(busy=True)
    with pytest.raises(WatchdogDeviceError) as caught:
        watchdog(device).open()
    message = str(caught.value)
    assert "/dev/watchdog-fake" in message and "another process holds it" in message
    assert "RuntimeWatchdogSec" in message  # what to stop
    assert device.calls == []


def test_a_device_that_refuses_the_timeout_is_a_clear_error_and_is_stopped_again():
    device = FakeWatchdogDevice(refuse_timeout=True)
    with pytest.raises(WatchdogDeviceError) as caught:
        watchdog(device).open()
    message = str(caught.value)
    assert "/dev/watchdog-fake" in message and "WDIOC_SETTIMEOUT" in message and "refuses" in message
    # opening started its timer: stopped again, or the host would reset for a refused start
    assert device.calls[-2:] == ["magic_close", "close"] and not device.is_open


def test_a_device_that_rounds_the_timeout_up_says_so(caplog):
    device = FakeWatchdogDevice(rounds_to=4)
    dog = watchdog(device)
    with caplog.at_level(logging.WARNING, "haven.watchdog"):
        dog.open()
    assert dog.actual_timeout_s == 4
    assert "rounded the timeout of 2 s up to 4 s" in caplog.text
    assert "after lease expiry + fence_grace_s" in caplog.text  # 4 s > TTL 2 s + grace 0.3 s


def test_a_device_that_shortens_the_timeout_is_refused():
    device = FakeWatchdogDevice(rounds_to=1)
    with pytest.raises(WatchdogDeviceError, match="before the agent's own self-fence deadline"):
        watchdog(device).open()
    assert device.calls[-2:] == ["magic_close", "close"]


# --- the real device class, on regular temp files only ---

def test_a_regular_file_is_not_a_watchdog_device(tmp_path: Path):
    path = tmp_path / "watchdog"
    path.write_bytes(b"")
    device = LinuxWatchdogDevice(path)
    with pytest.raises(WatchdogDeviceError) as caught:
        DeviceWatchdog(path, SETTINGS, device).open()
    message = str(caught.value)
    assert str(path) in message and "not a watchdog device" in message and "WDIOC_SETTIMEOUT" in message
    assert device.fd is None  # closed again
    assert path.read_bytes() == b"V"  # after the magic close


def test_a_missing_device_is_a_clear_error(tmp_path: Path):
    with pytest.raises(WatchdogDeviceError, match=r"no such device: .*softdog"):
        DeviceWatchdog(tmp_path / "watchdog", SETTINGS).open()


def test_the_real_class_pets_with_an_ioctl_and_falls_back_to_a_write(tmp_path: Path, monkeypatch):
    path = tmp_path / "watchdog"
    path.write_bytes(b"")
    device = LinuxWatchdogDevice(path)
    device.open()
    requests: list[int] = []

    def no_keepalive_ping(fd, request, arg, mutate):
        requests.append(request)
        raise OSError(errno.EOPNOTSUPP, os.strerror(errno.EOPNOTSUPP))

    monkeypatch.setattr(hw_watchdog.fcntl, "ioctl", no_keepalive_ping)
    device.keepalive()
    device.magic_close()
    device.close()
    device.close()
    assert requests == [WDIOC_KEEPALIVE]
    assert path.read_bytes() == b"\0V"


# --- the node config and the daemon's choice ---

NODE = """\
etcd: [http://127.0.0.1:1]
host: {name: h1, address: 10.0.0.1, vcpus: 4, memory_mib: 4096}
pools: {shared: /tmp}
"""


def node_config(tmp_path: Path, extra: str) -> NodeConfig:
    path = tmp_path / "node.yaml"
    path.write_text(NODE + extra)
    return load_node_config(path)


def test_the_config_takes_one_kind_of_watchdog_not_both(tmp_path: Path):
    assert node_config(tmp_path, "watchdog_device: /dev/watchdog\n").watchdog_device == Path("/dev/watchdog")
    with pytest.raises(ConfigError) as caught:
        node_config(tmp_path, "watchdog_device: /dev/watchdog\nwatchdog_file: /run/haven/watchdog.deadline\n")
    assert len(caught.value.problems) == 1
    assert "watchdog_file" in caught.value.problems[0] and "watchdog_device" in caught.value.problems[0]
    assert "not both" in caught.value.problems[0]


def test_the_node_builds_the_watchdog_its_config_names(tmp_path: Path):
    device_path = tmp_path / "watchdog"  # never opened: make_watchdog opens nothing
    dog = make_watchdog(node_config(tmp_path, f"watchdog_device: {device_path}\n"), SETTINGS)
    assert isinstance(dog, DeviceWatchdog) and dog.path == device_path and dog.timeout_s == 2
    assert isinstance(dog.device, LinuxWatchdogDevice) and dog.device.fd is None
    assert not device_path.exists()
    dog = make_watchdog(node_config(tmp_path, f"watchdog_file: {tmp_path / 'run' / 'watchdog.deadline'}\n"),
                        SETTINGS)
    assert isinstance(dog, FileWatchdog)
    assert make_watchdog(node_config(tmp_path, ""), SETTINGS) is None


class StubHypervisor:
    def __init__(self, vms: dict[str, LocalState]) -> None:
        self.vms = {name: LocalVm(name, 1, state) for name, state in vms.items()}
        self.killed: list[str] = []

    def list(self) -> dict[str, LocalVm]:
        return self.vms

    def kill(self, name: str) -> None:
        self.killed.append(name)


def test_without_its_device_the_daemon_kills_the_vms_it_cannot_protect(caplog):
    hypervisor = StubHypervisor({"web": LocalState.RUNNING, "db": LocalState.STOPPED})
    with caplog.at_level(logging.ERROR, "haven.node"):
        refuse_without_watchdog(WatchdogDeviceError("watchdog device /dev/x: open failed: busy"), hypervisor)
    assert hypervisor.killed == ["web"]
    assert "/dev/x" in caplog.text and "killed 1 VM(s)" in caplog.text
