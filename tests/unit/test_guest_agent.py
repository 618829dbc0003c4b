"""The guest-agent client against a stand-in agent on a Unix socket: a guest that hangs while a
command runs is reported when it stops answering, not when the command's whole timeout ends."""
from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from haven.drivers.guest_agent import GuestAgent, GuestAgentError


class _HangingAgent:
    """Answers the sync, starts the command, answers `answer_polls` status polls with "still
    running", then goes silent (the guest OS hung) while keeping the channel open."""

    def __init__(self, path: Path, answer_polls: int) -> None:
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(path))
        self.server.listen(1)
        self.answer_polls = answer_polls
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.server.accept()
        with conn, conn.makefile("rwb") as f:
            polls = 0
            for line in f:
                request = json.loads(line)
                command = request["execute"]
                if command == "guest-sync":
                    reply: object = request["arguments"]["id"]
                elif command == "guest-exec":
                    reply = {"pid": 7}
                else:
                    polls += 1
                    if polls > self.answer_polls:
                        time.sleep(10)  # hung: the answer never comes while the client waits
                        return
                    reply = {"exited": False}
                f.write(json.dumps({"return": reply}).encode() + b"\n")
                f.flush()

    def close(self) -> None:
        self.server.close()


@pytest.fixture
def hanging(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "qga.sock"
    agent = _HangingAgent(path, answer_polls=3)
    yield path
    agent.close()


def test_a_guest_that_hangs_during_a_command_is_reported_silent_before_the_commands_timeout(hanging: Path):
    started = time.monotonic()
    with pytest.raises(GuestAgentError, match="did not answer in time"):
        GuestAgent(hanging).exec(["check"], timeout=8.0, silence=0.3)
    assert time.monotonic() - started < 4.0  # not the 8 s the command itself was allowed
