"""Which accelerator works here: KVM only if it really boots the guest (LAB-NOTES: /dev/kvm may
open yet fail every Debian kernel), else TCG. Probed once per host kernel, QEMU and guest kernel."""
from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

from haven.drivers.qemu_boot import DirectBoot
from haven.drivers.qemu_cmdline import QEMU

DEFAULT_ACCEL_CACHE = Path("/var/cache/haven/accel.json")

_ACCEL_MEMO: dict[str, str] = {}


def _qemu_version(binary: str) -> str:
    try:
        return subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=20).stdout.split("\n")[0]
    except (OSError, subprocess.SubprocessError):
        return "?"


def probe_accel(guest: DirectBoot | None, binary: str = QEMU, cache_file: Path | None = DEFAULT_ACCEL_CACHE,
                boot_timeout: float = 6.0, silence_timeout: float = 2.0) -> str:
    """'kvm' if KVM really boots the direct-boot guest here, else 'tcg'. Cached in memory and on disk
    (keyed by host kernel, QEMU version and guest kernel).

    /dev/kvm missing or not openable -> tcg at once. Without a guest image to try -> kvm if the
    device opens. Otherwise boot the guest under KVM: ready line within `boot_timeout` -> kvm;
    QEMU died, or not one byte on the serial console within `silence_timeout` (what this
    machine's broken KVM does: it spins in the kernel), or no ready line in time -> tcg."""
    try:
        fd = os.open("/dev/kvm", os.O_RDWR)
        os.close(fd)
    except OSError:
        return "tcg"
    if guest is None or guest.ready_marker is None:
        return "kvm"
    marker = guest.ready_marker.encode()
    key = f"{os.uname().release}|{_qemu_version(binary)}|{Path(guest.kernel).resolve()}"
    if key in _ACCEL_MEMO:
        return _ACCEL_MEMO[key]
    cached: dict[str, str] = {}
    if cache_file is not None:
        try:
            cached = json.loads(cache_file.read_text())
        except (OSError, ValueError):
            cached = {}
        if cached.get(key) in ("kvm", "tcg"):
            _ACCEL_MEMO[key] = cached[key]
            return cached[key]
    result = "tcg"
    with tempfile.TemporaryDirectory(prefix="haven-kvm-probe-") as tmp:
        serial = Path(tmp) / "serial.log"
        proc = subprocess.Popen([binary, "-accel", "kvm", "-m", "128", "-nodefaults", "-no-user-config",
                                 "-display", "none", "-serial", f"file:{serial}", "-no-reboot",
                                 "-kernel", guest.kernel, "-initrd", guest.initrd,
                                 "-append", "console=ttyS0 panic=-1 haven.name=kvm-probe"],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            t0 = time.monotonic()
            while proc.poll() is None:
                elapsed = time.monotonic() - t0
                text = serial.read_bytes() if serial.exists() else b""
                if marker in text:
                    result = "kvm"
                    break
                if elapsed > boot_timeout or (not text and elapsed > silence_timeout):
                    break
                time.sleep(0.05)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    _ACCEL_MEMO[key] = result
    if cache_file is not None:
        try:
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            cached[key] = result
            tmpf = cache_file.with_name(f".{cache_file.name}.{os.getpid()}")
            tmpf.write_text(json.dumps(cached, indent=1))
            os.replace(tmpf, cache_file)
        except OSError:
            pass
    return result
