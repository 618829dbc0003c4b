"""`haven events --follow` through a pipe, across an API server restart."""
from __future__ import annotations

import os
import queue
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import pytest
import uvicorn

from haven.api import create_app
from haven.api.sim_backend import LockedStore

from .conftest import ADMIN, Cluster, make_cluster

SRC = str(Path(__file__).resolve().parents[2] / "src")


class Server:
    """The API over one store, stopped and started again on the same port (a daemon restart)."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.port = 0
        self.server: uvicorn.Server | None = None
        self.thread: threading.Thread | None = None
        self.sock: socket.socket | None = None

    def start(self) -> None:
        c = self.cluster
        app = create_app(c.store, c.layout, admin_token=ADMIN, read_token="read", clock=c.clock)
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", self.port))
        self.port = self.sock.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=1))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < deadline, "the API server did not start"
            time.sleep(0.02)

    def stop(self) -> None:
        if self.server is not None and self.thread is not None and self.sock is not None:
            self.server.should_exit = True
            self.thread.join(timeout=10)
            self.sock.close()
        self.server = self.thread = self.sock = None


@pytest.fixture
def server(cluster: Cluster) -> Iterator[Server]:
    cluster.store = LockedStore(cluster.store, threading.RLock())  # type: ignore[assignment]
    api = Server(cluster)
    api.start()
    try:
        yield api
    finally:
        api.stop()


def lines_of(stream: IO[str]) -> queue.Queue[str]:
    q: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        for line in stream:
            q.put(line.rstrip("\n"))

    threading.Thread(target=pump, daemon=True).start()
    return q


def next_line(q: queue.Queue[str], what: str, timeout: float = 10.0) -> str:
    try:
        return q.get(timeout=timeout)
    except queue.Empty:
        raise AssertionError(f"no line within {timeout:g} s: expected {what}") from None


@contextmanager
def following(server: Server) -> Iterator[tuple[subprocess.Popen[str], queue.Queue[str], queue.Queue[str]]]:
    """`haven events --follow --limit 1` in a process, its stdout a pipe; killed at the end."""
    env = {**os.environ, "PYTHONPATH": SRC, "HAVEN_API": f"http://127.0.0.1:{server.port}",
           "HAVEN_TOKEN": ADMIN}
    env.pop("PYTHONUNBUFFERED", None)  # a pipe, buffered as usual: the command must flush itself
    follower = subprocess.Popen([sys.executable, "-m", "haven.cli.main", "events", "--follow", "--limit", "1"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        yield follower, lines_of(follower.stdout), lines_of(follower.stderr)  # type: ignore[arg-type]
    finally:
        follower.terminate()
        follower.wait(timeout=10)
        for stream in (follower.stdout, follower.stderr):
            if stream is not None:
                stream.close()


def test_follow_prints_through_a_pipe_and_resumes_after_a_restart(cluster: Cluster, server: Server) -> None:
    with following(server) as (follower, out, err):
        assert next_line(out, "the last event") == "t=13.000 manager  host h3: offline -> online"
        cluster.event(20.0, "vm db", "running -> stopping")
        assert next_line(out, "a new event") == "t=20.000 manager  vm db: running -> stopping"

        server.stop()
        assert next_line(err, "the lost connection").startswith("connection lost, reconnecting…")
        cluster.event(21.0, "vm db", "stopping -> stopped")  # written while nobody serves the log
        server.start()
        cluster.event(22.0, "vm web", "running -> stopping")

        assert next_line(out, "the event written while down") == "t=21.000 manager  vm db: stopping -> stopped"
        assert next_line(out, "the event after the restart") == "t=22.000 manager  vm web: running -> stopping"
        assert next_line(err, "the reconnection") == "reconnected: resuming after the last event shown"
        with pytest.raises(AssertionError, match="no line"):
            next_line(out, "nothing: no event is repeated", timeout=1.5)
        assert follower.poll() is None  # still following


def test_a_log_that_started_over_is_shown_from_its_start(cluster: Cluster, server: Server) -> None:
    with following(server) as (_, out, err):
        assert next_line(out, "the last event") == "t=13.000 manager  host h3: offline -> online"
        cluster.event(20.0, "vm db", "running -> stopping")
        assert next_line(out, "a new event") == "t=20.000 manager  vm db: running -> stopping"
        server.stop()
        assert next_line(err, "the lost connection").startswith("connection lost, reconnecting…")
        fresh = make_cluster()  # `haven sim serve` started again: a new store, its revisions start over
        fresh.store = LockedStore(fresh.store, threading.RLock())  # type: ignore[assignment]
        server.cluster = fresh
        server.start()
        assert next_line(err, "the new log") == ("the event log started over (a new cluster or store): "
                                                 "showing it from its start")
        fresh.event(14.0, "vm web", "running -> stopping")
        assert [next_line(out, "the new log's events") for _ in range(4)] == [
            "t=10.000 manager  vm web: stopped -> starting on h1 (generation 1)",
            "t=12.000 manager  vm web: starting -> running on h1",
            "t=13.000 manager  host h3: offline -> online",
            "t=14.000 manager  vm web: running -> stopping"]
