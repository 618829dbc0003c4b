"""A client that notices a service is back quickly without flooding a slow guest, and the clock
conversion its records need (they carry wall-clock times; the cluster's events, monotonic ones)."""
from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable

from haven.lab.cluster import Lab, LabError
from haven.lab.netns import HttpProbe, popen_in

WALL_TO_MONO = time.time() - time.monotonic()
FAILOVER_PROBES = 3  # requests in flight at most: one stuck on the dead member must not hide the new one


def mono(wall: float) -> float:
    return wall - WALL_TO_MONO


_SERVICE_PROBE = r"""
import json, signal, socket, sys, threading, time
target, interval, connect_timeout, read_timeout = sys.argv[1], *map(float, sys.argv[2:5])
concurrency = int(sys.argv[5])
host, _, port = target.partition(":")
stop = False
slots = threading.Semaphore(concurrency)
out = threading.Lock()
def _stop(*_):
    global stop
    stop = True
signal.signal(signal.SIGTERM, _stop)
def request(t0):
    rec = {"t": t0}
    try:
        sock = socket.create_connection((host, int(port or 80)), timeout=connect_timeout)
        try:
            sock.settimeout(read_timeout)
            sock.sendall(b"GET / HTTP/1.0\r\nHost: " + target.encode() + b"\r\n\r\n")
            data = b""
            while True:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                data += chunk
        finally:
            sock.close()
        head, _, body = data.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.") or b" 200 " not in head.split(b"\r\n")[0] + b" ":
            raise ValueError(head[:40])
        rec["body"] = json.loads(body)
    except Exception as exc:
        rec["error"] = type(exc).__name__
    rec["dt"] = time.time() - t0
    with out:
        sys.stdout.write(json.dumps(rec) + "\n"); sys.stdout.flush()
    slots.release()
while not stop:
    slots.acquire()
    t0 = time.time()
    threading.Thread(target=request, args=(t0,), daemon=True).start()
    delay = interval - (time.time() - t0)
    if delay > 0 and not stop:
        time.sleep(delay)
"""


class ServiceProbe(HttpProbe):
    """GET http://target/ (`address` or `address:port`) every `interval` s from `namespace`, at
    most `concurrency` requests at a time (a TCG guest forks a CGI per request: a flood would slow
    it down), with a short connect timeout and a long read timeout: while the service is down each
    attempt fails within `connect_timeout`, and once it is back a slow first answer still counts.
    One request at a time misses a failover by up to `read_timeout`: the request in flight when the
    server died blocks the next (seen in the lab: 3 s of a 1 s failover); a failover is measured
    with more. Records as HttpProbe's."""

    def __init__(self, namespace: str, target: str, interval: float = 0.05, connect_timeout: float = 0.2,
                 read_timeout: float = 3.0, concurrency: int = 1) -> None:
        self.records = []
        self.proc = popen_in(namespace, [sys.executable, "-u", "-c", _SERVICE_PROBE, target, str(interval),
                                         str(connect_timeout), str(read_timeout), str(concurrency)],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()


def vm_back(lab: Lab, vm: str, fault: Callable[[], object], timeout: float = 180.0) -> float:
    """Seconds from `fault()` until the VM's HTTP answers from a new boot (its disk's boot count),
    seen by the same client as the service's failovers."""
    assert lab.net is not None
    before = lab.wait_answer(vm, 30, request_timeout=1.0)
    probe = ServiceProbe(lab.client.namespace, lab.vm_address(vm), concurrency=FAILOVER_PROBES)
    try:
        time.sleep(0.3)
        t0 = time.monotonic()
        fault()
        while time.monotonic() - t0 < timeout:
            time.sleep(0.05)
            for record in list(probe.records):
                body = record.get("body")
                if body and body.get("boot_count", 0) > before.get("boot_count", 0) and mono(record["t"]) > t0:
                    return round(mono(record["t"] + record["dt"]) - t0, 3)
    finally:
        probe.stop()
    raise LabError(f"{vm} did not answer from a new boot within {timeout:g} s")
