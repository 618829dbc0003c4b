"""SimFencer: the simulator's twin of a power-fencing device (`ports.fencer.Fencer`).

A scenario gives some hosts a device (`fence_devices: [h1, h2]`); the manager calls it when such a
host becomes lost, and it cuts the simulated host's power (`SimHost.power_off`: every VM there dies
with it) and confirms at once. The fault `fence fails H` breaks H's device: it then answers without
a confirmation and leaves the power on, so the manager falls back to lease expiry + `fence_grace_s`;
`fence works H` repairs it.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from haven.sim.cluster import SimCluster


class SimFencer:
    def __init__(self, cluster: SimCluster, devices: Iterable[str] = ()) -> None:
        self.cluster = cluster
        self.devices = set(devices)  # hosts with a fencing device
        self.failing: set[str] = set()  # hosts whose device does not work now

    def power_off(self, host: str) -> bool:
        if host not in self.devices or host in self.failing:
            return False
        self.cluster.hosts[host].power_off()
        return True
