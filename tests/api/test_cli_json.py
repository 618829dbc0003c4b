"""The JSON of the API commands has the shapes the README's table names (the API's schemas)."""
from __future__ import annotations

import json
from typing import Any

from haven.api.schemas import Accepted, EventOut, HostOut, SummaryOut, VmOut

from .test_cli import run


def as_json(url: str, *args: str) -> Any:
    result = run(url, *args, "-o", "json")
    assert result.exit_code in (0, 5), result.output  # 5: `status` of this (down) cluster
    return json.loads(result.stdout)


def test_reads(live: str) -> None:
    status = as_json(live, "status")
    assert status.keys() == {"summary", "hosts"}
    SummaryOut.model_validate(status["summary"])
    for host in status["hosts"] + as_json(live, "host", "list"):
        HostOut.model_validate(host)
    for vm in as_json(live, "vm", "list"):
        VmOut.model_validate(vm)
    HostOut.model_validate(as_json(live, "host", "show", "h2"))
    shown = as_json(live, "vm", "show", "web")
    for event in shown.pop("history"):
        EventOut.model_validate(event)
    VmOut.model_validate(shown)


def test_events_are_json_lines(live: str) -> None:
    lines = run(live, "events", "-o", "json").stdout.splitlines()
    assert len(lines) == 3
    for line in lines:
        EventOut.model_validate_json(line)


def test_writes_answer_accepted(live: str) -> None:
    for args in (["vm", "start", "batch"], ["vm", "stop", "cache"], ["host", "resume", "h3"],
                 ["vm", "migrate", "web", "--no-wait"]):
        Accepted.model_validate(as_json(live, *args))
