"""`haven sim serve -o json`: one JSON line a script can read to find the server; a stop that
ends open event streams instead of cancelling them with a traceback."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]


def test_sim_serve_json_names_a_working_server() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    server = subprocess.Popen([sys.executable, "-m", "haven.cli.main", "sim", "serve",
                               str(ROOT / "tests" / "scenarios" / "host-power-off"), "--port", "0", "-o", "json"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert server.stdout is not None
        start = json.loads(server.stdout.readline())
        assert start.keys() == {"scenario", "speed", "url", "api", "dashboard", "admin_token", "read_token"}
        assert start["api"] == start["url"] + "/api/v1"
        auth = {"Authorization": f"Bearer {start['read_token']}"}
        answer = httpx.get(start["api"] + "/summary", headers=auth)
        assert answer.status_code == 200 and answer.json()["cluster"]

        # A follower holds the event stream open while the server stops.
        opened, ended = threading.Event(), threading.Event()

        def follow() -> None:
            try:
                with httpx.stream("GET", start["api"] + "/events/stream", headers=auth, timeout=30) as stream:
                    for _ in stream.iter_lines():
                        opened.set()
            except httpx.HTTPError:
                pass
            finally:
                ended.set()

        threading.Thread(target=follow, daemon=True).start()
        assert opened.wait(10)
        server.send_signal(signal.SIGINT)
        out, err = server.communicate(timeout=20)
        assert ended.wait(5)  # the stream ended with the server
        assert out == ""  # stdout held only the JSON line; the goodbye went to stderr
        assert "simulation stopped" in err
        assert "Traceback" not in err and "Cancel" not in err, err  # the stream was ended, not cancelled
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(timeout=10)
