"""Tap devices for VM NICs on a host's VM bridge (a VM keeps its MAC and IP on any host)."""
from __future__ import annotations

import subprocess
import zlib
from collections.abc import Callable

from haven.model.spec import VmSpec

IFNAMSIZ = 15


def tap_name(vm: str, nic_index: int = 0) -> str:
    """A stable interface name for a VM's NIC, within the kernel's 15-character limit."""
    full = f"tap{nic_index}-{vm}" if nic_index else f"tap-{vm}"
    if len(full) <= IFNAMSIZ:
        return full
    digest = f"{zlib.crc32(vm.encode()) & 0xFFFFF:05x}"
    return full[: IFNAMSIZ - len(digest) - 1] + "-" + digest


def bridge_taps(bridge: str) -> Callable[[VmSpec, int], str]:
    """`tap_for(spec, nic_index)` for the QEMU driver: the tap exists and is on `bridge` afterwards."""

    def tap_for(spec: VmSpec, nic_index: int) -> str:
        tap = tap_name(spec.name, nic_index)
        exists = subprocess.run(["ip", "link", "show", "dev", tap], capture_output=True).returncode == 0
        if not exists:
            subprocess.run(["ip", "tuntap", "add", "dev", tap, "mode", "tap"], check=True, capture_output=True)
        subprocess.run(["ip", "link", "set", tap, "master", bridge, "up"], check=True, capture_output=True)
        return tap

    return tap_for
