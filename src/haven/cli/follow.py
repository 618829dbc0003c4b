"""`haven events --follow`: print events as they arrive, and ride out a lost connection.

The stream names every event by its id (the store revision that wrote it, then its key), and ids
only grow. So the follower keeps the id of the last event it printed and reconnects with
`?after=<id>`: nothing is printed twice and, as long as the store's bounded log still holds them,
nothing written while it was away is missed. A log that started over is shown from its start.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import click

from haven.cli.ops_client import ApiClient, Unreachable

# Waits between reconnection attempts: quick for a restart, then no more than one try in 8 s.
BACKOFF_S = (0.5, 1.0, 2.0, 4.0, 8.0)
# After the server ended a stream on purpose (it does on `max_s` and on shutdown).
REOPEN_S = 0.5


def follow(api: ApiClient, cursor: str, show: Callable[[dict[str, Any]], None],
           sleep: Callable[[float], None] = time.sleep) -> None:
    """Print every event after `cursor` (an event id; "" for the whole log) until interrupted."""
    lost = False
    failures = 0

    def connected() -> None:
        nonlocal lost, failures
        if lost:
            click.echo("reconnected" + (": resuming after the last event shown" if cursor else ""), err=True)
        lost, failures = False, 0

    while True:
        try:
            if lost and cursor and _log_started_over(api, cursor):
                click.echo("the event log started over (a new cluster or store): showing it from its start",
                           err=True)
                cursor = ""
            for event in api.stream_events(cursor, on_connect=connected):
                if event["id"] <= cursor:  # never twice, whatever the server resends
                    continue
                cursor = event["id"]
                show(event)
            delay = REOPEN_S
        except Unreachable as error:  # a wrong token or a refusal does not heal by retrying: not caught
            if not lost:
                click.echo(f"connection lost, reconnecting… ({error.reason})", err=True)
                lost = True
            delay = BACKOFF_S[min(failures, len(BACKOFF_S) - 1)]
            failures += 1
        sleep(delay)


def _log_started_over(api: ApiClient, cursor: str) -> bool:
    """Ids only grow and the log drops only its oldest events, so a log whose newest event is older
    than the last one shown is another log: `haven sim serve` restarted, or a store rebuilt. (One
    that has already grown past the cursor cannot be told apart by ids.)"""
    newest = api.get("/api/v1/events", limit=1)["events"]
    return not newest or newest[-1]["id"] < cursor
