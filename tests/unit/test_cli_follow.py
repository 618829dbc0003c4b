"""The follower's retry rules, without a server: backoff, one message per outage, no retry on auth."""
from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from haven.cli.follow import BACKOFF_S, follow
from haven.cli.ops_client import EXIT_AUTH, CliError, Unreachable


class Stop(Exception):
    """Ends the endless follow loop in a test."""


class FakeApi:
    """Fails `outage` times, then streams `events` once per connection; a `get` for the newest id."""

    def __init__(self, outage: int, events: list[dict[str, Any]]) -> None:
        self.outage, self.events = outage, events
        self.afters: list[str | None] = []

    def stream_events(self, after: str | None = None,
                      on_connect: Callable[[], None] | None = None) -> Iterator[dict[str, Any]]:
        self.afters.append(after)
        if self.outage:
            self.outage -= 1
            raise Unreachable("cannot reach the haven API", "connection refused")
        if on_connect:
            on_connect()
        yield from self.events

    def get(self, path: str, **params: Any) -> Any:
        return {"events": self.events[-1:]}


def run(api: FakeApi, cursor: str, rounds: int) -> tuple[list[str], list[float]]:
    shown: list[str] = []
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        if len(sleeps) >= rounds:
            raise Stop

    with pytest.raises(Stop):
        follow(api, cursor, lambda event: shown.append(event["id"]), sleep)  # type: ignore[arg-type]
    return shown, sleeps


def test_backoff_grows_to_its_cap_then_resets(capsys: pytest.CaptureFixture[str]) -> None:
    api = FakeApi(outage=7, events=[{"id": "02"}, {"id": "03"}])
    shown, sleeps = run(api, "01", rounds=9)
    assert sleeps[:7] == [*BACKOFF_S, BACKOFF_S[-1], BACKOFF_S[-1]]
    assert sleeps[7:] == [0.5, 0.5]  # connected again: back to reopening at once
    assert shown == ["02", "03"]  # the second connection resent them: shown once
    assert set(api.afters[:8]) == {"01"} and api.afters[8] == "03"
    err = capsys.readouterr().err.splitlines()
    assert err == ["connection lost, reconnecting… (connection refused)",
                   "reconnected: resuming after the last event shown"]  # one note per outage, not per try


def test_an_auth_error_is_not_retried() -> None:
    class Refusing(FakeApi):
        def stream_events(self, after: str | None = None,
                          on_connect: Callable[[], None] | None = None) -> Iterator[dict[str, Any]]:
            raise CliError("invalid token", EXIT_AUTH)

    with pytest.raises(CliError) as error:
        follow(Refusing(0, []), "01", print, lambda s: None)  # type: ignore[arg-type]
    assert error.value.exit_code == EXIT_AUTH
