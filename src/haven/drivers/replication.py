"""Synchronous replication of a VM's disk to the other host of a replicated pair.

The replica's host serves its copy over NBD (`ReplicaExport`: `qemu-storage-daemon`, raw image
opened with O_DIRECT and exported write-through, so every write it acknowledges is on its disk).
The primary's QEMU mirrors the disk there (`start_mirror`: `blockdev-mirror` in `write-blocking`
mode, left in the ready state for good): a guest write is acknowledged only after the replica has it.

The fence-peer rule (docs/LAB-NOTES.md, "Replicated disks: what a lost replica does to guest
writes"): QEMU never returns a replica's error to the guest, it acknowledges the write on the
primary alone. So the NBD client waits `NBD_RECONNECT_DELAY_S` for a lost replica instead of
failing: the guest's writes block. The agent marks the replica stale in the store, and only then
calls `release_mirror`, which cuts the connection and cancels the job: the blocked writes complete
on the primary, whose replica is already known to lack them.
"""
from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from haven.drivers.qemu_monitor import Monitor
from haven.drivers.qemu_process import alive, proc_stat, read_pidfile, sigkill, wait_dead
from haven.drivers.qmp import QmpClient, QmpError
from haven.ports.replication import MirrorPhase, MirrorState, ReplicationError

# Long enough that no outage ends it by itself: the job is only ever released by the agent, after
# the stale mark is durable.
NBD_RECONNECT_DELAY_S = 3600
START_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class ReplicaExport:
    """One disk's replica, served over NBD from the replica's host. The server is a daemon of its
    own (like QEMU): it outlives the agent, which finds it again through its pid file."""

    image: Path
    size_mib: int
    address: str
    port: int
    export: str  # the NBD export name the primary asks for
    run_dir: Path  # pid file and log
    namespace: str | None = None  # the lab's host namespace

    @property
    def pidfile(self) -> Path:
        return self.run_dir / f"nbd-{self.export}.pid"

    @property
    def log(self) -> Path:
        return self.run_dir / f"nbd-{self.export}.log"

    def process(self) -> tuple[int, str] | None:
        """(pid, start time) of the running server: a reused pid is not ours."""
        pid = read_pidfile(self.pidfile)
        stat = proc_stat(pid) if pid is not None else None
        return (pid, stat[1]) if pid is not None and stat is not None and alive(pid, stat[1]) else None

    def running(self) -> bool:
        return self.process() is not None

    def start(self) -> None:
        """Serve the image (created empty, raw, when missing: a first full sync fills it)."""
        if self.running():
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.pidfile.unlink(missing_ok=True)
        if not self.image.exists():
            self.image.parent.mkdir(parents=True, exist_ok=True)
            with open(self.image, "wb") as image:  # raw and sparse: the first sync writes it
                image.truncate(self.size_mib << 20)
        argv = ["qemu-storage-daemon",
                "--blockdev", f"driver=file,filename={self.image},node-name=file,cache.direct=on",
                "--blockdev", "driver=raw,file=file,node-name=replica",
                "--nbd-server", f"addr.type=inet,addr.host={self.address},addr.port={self.port}",
                "--export", f"type=nbd,id=export,node-name=replica,name={self.export},writable=on,writethrough=on",
                "--pidfile", str(self.pidfile), "--daemonize"]
        if self.namespace:
            argv = ["ip", "netns", "exec", self.namespace, *argv]
        with open(self.log, "wb") as log:
            done = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                  start_new_session=True, timeout=START_TIMEOUT_S, check=False)
        if done.returncode != 0 or not self.running():
            raise ReplicationError(f"NBD server for {self.image} did not start: "
                                   f"{self.log.read_text(errors='replace').strip()[-300:] or done.returncode}")

    def stop(self) -> None:
        """Stop serving (before the replica is booted: the server holds the image's lock)."""
        process = self.process()
        if process is not None:
            os.kill(process[0], signal.SIGTERM)
            if not wait_dead(*process, 5.0):
                sigkill(*process)
                wait_dead(*process, 5.0)
        self.pidfile.unlink(missing_ok=True)


def job_id(disk: int) -> str:
    return f"replica-{disk}"


def _node(disk: int) -> str:
    return f"replica{disk}"


def start_mirror(monitor: Monitor, disk: int, address: str, port: int, export: str) -> None:
    """Connect to the replica and start copying disk `disk` (QEMU's node `disk<N>`) to it; from
    then on every guest write waits for the replica."""
    with monitor.session() as client:
        if job_id(disk) in _jobs(client):
            return
        if _node(disk) not in _nodes(client):
            client.execute("blockdev-add", {
                "driver": "nbd", "node-name": _node(disk), "export": export,
                "server": {"type": "inet", "host": address, "port": str(port)},
                "reconnect-delay": NBD_RECONNECT_DELAY_S})
        client.execute("blockdev-mirror", {
            "job-id": job_id(disk), "device": f"disk{disk}", "target": _node(disk), "sync": "full",
            "copy-mode": "write-blocking", "on-target-error": "stop", "auto-dismiss": False})


def mirror_state(monitor: Monitor, disk: int) -> MirrorState:
    with monitor.session() as client:
        job = _jobs(client).get(job_id(disk))
    if job is None:
        return MirrorState(MirrorPhase.ABSENT)
    done, total = int(job.get("offset", 0)), int(job.get("len", 0))
    if job.get("io-status", "ok") != "ok" or job.get("status") in ("paused", "standby", "aborting", "concluded"):
        return MirrorState(MirrorPhase.BROKEN, done, total)
    return MirrorState(MirrorPhase.IN_SYNC if job.get("ready") else MirrorPhase.SYNCING, done, total)


def release_mirror(monitor: Monitor, disk: int, timeout: float = 5.0) -> None:
    """Stop replicating disk `disk`: writes waiting for a lost replica complete on this host alone.
    Call it only after the replica is marked stale where the manager reads it."""
    deadline = time.monotonic() + timeout
    with monitor.session(timeout) as client:
        if _node(disk) in _nodes(client):
            # Cuts a connection that looks alive but is not answering (a peer gone silent).
            client.execute("yank", {"instances": [{"type": "block-node", "node-name": _node(disk)}]})
        jobs = _jobs(client)
        if job_id(disk) in jobs and jobs[job_id(disk)].get("status") not in ("concluded", "null"):
            # force: QEMU fails the requests waiting for a reconnection instead of draining them.
            client.execute("block-job-cancel", {"device": job_id(disk), "force": True})
        while (job := _jobs(client).get(job_id(disk))) is not None and job.get("status") != "concluded":
            if time.monotonic() > deadline:
                raise ReplicationError(f"replication job of disk {disk} did not end within {timeout:g} s")
            time.sleep(0.01)
        if job is not None:
            client.execute("job-dismiss", {"id": job_id(disk)})
        if _node(disk) in _nodes(client):
            client.execute("blockdev-del", {"node-name": _node(disk)})


def _jobs(client: QmpClient) -> dict[str, dict[str, Any]]:
    return {job["device"]: job for job in client.execute("query-block-jobs")}


def _nodes(client: QmpClient) -> set[str]:
    try:
        return {node["node-name"] for node in client.execute("query-named-block-nodes", {"flat": True})}
    except QmpError:
        return set()
