"""The server-sent event stream, over a real socket."""
from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator

import httpx

from .conftest import AUTH_READ, Cluster, live_ctx


def read_events(lines: Iterator[str], count: int, timeout: float = 10.0) -> list[dict]:
    """Read `count` events. Takes the line iterator so the caller keeps it: dropping a half-read
    httpx iterator closes the connection."""
    events: list[dict] = []
    deadline = time.monotonic() + timeout
    kind = ""
    for line in lines:
        if line.startswith("event: "):
            kind = line[7:]
        elif line.startswith("data: ") and kind == "event":
            events.append(json.loads(line[6:]))
            if len(events) == count:
                return events
        assert time.monotonic() < deadline, f"got only {events}"
    return events


def wait_for(condition: Callable[[], bool], message: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, message
        time.sleep(0.02)


def test_stream_delivers_new_events_and_ends_on_disconnect(live: str, cluster: Cluster) -> None:
    def later() -> None:
        time.sleep(0.3)
        cluster.event(50.0, "vm web", "running -> migrating (live to h2)")
        cluster.event(51.0, "vm web", "migrating -> running on h2")

    writer = threading.Thread(target=later)
    with httpx.Client(base_url=live, headers=AUTH_READ, timeout=10) as client:
        with client.stream("GET", "/api/v1/events/stream") as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            writer.start()
            lines = response.iter_lines()
            events = read_events(lines, 2)
            wait_for(lambda: live_ctx(live).open_streams == 1, "the stream is not counted as open")
        # The stream starts at the end of the log: the three seeded events are not replayed.
        assert [e["message"] for e in events] == ["running -> migrating (live to h2)",
                                                  "migrating -> running on h2"]
        # After the client went away the server ends the stream and still answers.
        assert client.get("/api/v1/summary").status_code == 200
    wait_for(lambda: live_ctx(live).open_streams == 0, "the stream did not end after the client left")
    writer.join()


def test_stream_resumes_after_last_event_id(live: str) -> None:
    with httpx.Client(base_url=live, headers=AUTH_READ, timeout=10) as client:
        first = client.get("/api/v1/events", params={"after": "", "limit": 1}).json()["next"]
        with client.stream("GET", "/api/v1/events/stream",
                           headers={"Last-Event-ID": first}) as response:
            lines = response.iter_lines()
            events = read_events(lines, 2)
    assert [e["message"] for e in events] == ["starting -> running on h1", "offline -> online"]


def test_stream_with_max_s_ends_by_itself(live: str) -> None:
    started = time.monotonic()
    with httpx.Client(base_url=live, headers=AUTH_READ, timeout=10) as client:
        response = client.get("/api/v1/events/stream", params={"max_s": 0.6})
    assert response.status_code == 200 and ": connected" in response.text
    assert time.monotonic() - started < 5


def test_stream_needs_a_token(live: str) -> None:
    assert httpx.get(f"{live}/api/v1/events/stream", timeout=5).status_code == 401
