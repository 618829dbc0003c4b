"""SimFencer: the simulator's twin of a power-fencing device (`ports.fencer.Fencer`).

A scenario gives some hosts a device (`fence_devices: [h1, h2]`); the manager calls it when such a
host becomes lost, and it cuts the simulated host's power (`SimHost.power_off`: every VM there dies
with it) and confirms at once. The fault `fence fails H` breaks H's device: it then answers without
a confirmation and leaves the power on, so the manager falls back to lease expiry + `fence_grace_s`;
`fence works H` repairs it. A failing device fails its `monitor` too, as a real one would.
Outcomes have the driver's shape (`ports.fencer.FenceOutcome`), so the timeline reads alike.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from haven.ports.fencer import FenceOutcome

if TYPE_CHECKING:
    from haven.sim.cluster import SimCluster

DEVICE = "simulated"


class SimFencer:
    def __init__(self, cluster: SimCluster, devices: Iterable[str] = ()) -> None:
        self.cluster = cluster
        self.devices = set(devices)  # hosts with a fencing device
        self.failing: set[str] = set()  # hosts whose device does not work now
        self._last_off: dict[str, FenceOutcome] = {}
        # Power-offs of a host that was fine (its daemon running, the store in reach): what a false
        # alarm costs, e.g. fast fencing on heartbeats that stopped on the manager's side only.
        self.healthy_switched_off = 0

    def has_device(self, host: str) -> bool:
        return host in self.devices

    def power_off(self, host: str) -> bool:
        if host not in self.devices:
            return False
        if host in self.failing:
            self._last_off[host] = FenceOutcome(False, "the device did not answer", 0.0, DEVICE)
            return False
        target = self.cluster.hosts[host]
        if target.powered and not target.hung and target.reaches_store():
            self.healthy_switched_off += 1
        target.power_off()
        self._last_off[host] = FenceOutcome(True, "off, confirmed by status", 0.0, DEVICE)
        return True

    def last_outcome(self, host: str) -> FenceOutcome | None:
        return self._last_off.get(host)

    def monitor(self, host: str) -> tuple[bool, str]:
        if host not in self.devices:
            return False, "no fence device"
        if host in self.failing:
            return False, "the device did not answer"
        return True, "monitor ok"

    def power_on(self, host: str) -> tuple[bool, str]:
        if host not in self.devices or host in self.failing:
            return False, "no fence device" if host not in self.devices else "the device did not answer"
        self.cluster.hosts[host].power_on()
        return True, "on"
