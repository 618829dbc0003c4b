"""Starting one VM's QEMU process (`QemuLauncher`): disks, taps, the command line, and QEMU's
`-daemonize`, so that the VM outlives the agent and is never its child. No QMP, no states: what
the process is for (a boot, a migration target, a standby) is the caller's business.
"""
from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass

from haven.drivers.qemu_boot import create_disk
from haven.drivers.qemu_cmdline import DiskArg, VmPaths, build_cmdline, disk_format
from haven.drivers.qemu_config import QemuHostConfig
from haven.drivers.qemu_process import alive, proc_stat, qemu_error, read_pidfile, supports_o_direct
from haven.model.spec import VmSpec
from haven.ports.hypervisor import HypervisorError

UNIX_PATH_MAX = 107  # sun_path holds 108 bytes with the terminating NUL


class LaunchError(Exception):
    """The VM cannot be launched here (before any process was started)."""


@dataclass(frozen=True)
class Launched:
    pid: int | None  # from QEMU's pid file: the daemon, not the parent we waited for
    starttime: str
    error: str  # "" if the daemon runs; else why not (the caller kills `pid` if it is set)
    seconds: float


class QemuLauncher:
    def __init__(self, config: QemuHostConfig) -> None:
        self.config = config
        self.cmdline = config.cmdline()
        self._direct: dict[str, bool] = {}  # pool -> O_DIRECT works there (probed once)

    def check(self, spec: VmSpec, paths: VmPaths) -> None:
        """What can be refused at once, before a launch thread is started."""
        name = self.config.host_name
        for disk in spec.disks:
            self.config.pool_dir(disk.pool)
        if len(str(paths.qmp)) > UNIX_PATH_MAX:
            raise HypervisorError(f"{name}: run dir {self.config.run_dir} too long for a unix socket path")
        if spec.nics and self.config.tap_for is None:
            raise HypervisorError(f"{name}: {spec.name} has NICs but this host has no tap_for")

    def launch(self, spec: VmSpec, paths: VmPaths, incoming: str | None, new_disks: bool) -> Launched:
        """Run QEMU for `spec` and wait for its daemonizing parent. `incoming`: `-incoming`
        (tcp:ADDR:PORT, or defer for a standby). `new_disks`: create missing disks (a boot; a
        migration or restore target must find the source's). Raises LaunchError for a missing disk."""
        paths.dir.mkdir(parents=True, exist_ok=True)
        for stale in (paths.qmp, paths.pidfile, paths.serial, paths.stderr):
            stale.unlink(missing_ok=True)  # a stale pid file would name someone else's process
        t0 = time.monotonic()
        argv = build_cmdline(spec, self.cmdline, paths, self._disks(spec, new_disks), self._taps(spec), incoming)
        if self.config.network_namespace:
            argv = ["ip", "netns", "exec", self.config.network_namespace, *argv]
        with open(paths.stderr, "wb") as err:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=err, stderr=err,
                                    start_new_session=True, close_fds=True)
            try:
                rc = proc.wait(timeout=self.config.launch_timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                rc = -1
        pid = read_pidfile(paths.pidfile)
        stat = proc_stat(pid) if pid else None
        starttime = stat[1] if stat else ""
        error = ""
        if rc != 0 or not alive(pid, starttime):
            error = f"QEMU failed to start (rc {rc}): " + (qemu_error(paths.stderr) or "no message")
        return Launched(pid, starttime, error, time.monotonic() - t0)

    def _disks(self, spec: VmSpec, new_disks: bool) -> list[DiskArg]:
        disks = []
        guest = self.config.guest
        for disk, path in zip(spec.disks, self.config.disk_paths(spec), strict=True):
            if not path.exists():
                if not new_disks:
                    raise LaunchError(f"disk {path} missing")
                create_disk(path, disk.size_mib, disk_format(str(path)), guest.disk_filesystem if guest else None)
            disks.append(DiskArg(str(path), disk_format(str(path)), self._cache_mode(disk.pool)))
        return disks

    def _taps(self, spec: VmSpec) -> list[str]:
        tap_for = self.config.tap_for
        if not spec.nics:
            return []
        assert tap_for is not None  # `check` refused it otherwise
        return [tap_for(spec, i) for i in range(len(spec.nics))]

    def _cache_mode(self, pool: str) -> str:
        """cache=none (O_DIRECT: no stale page cache on shared storage) where the pool allows it."""
        if pool not in self._direct:
            self._direct[pool] = supports_o_direct(self.config.pool_dir(pool))
        return "none" if self._direct[pool] else "writeback"
