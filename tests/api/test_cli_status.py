"""`haven status` answers with its exit code, and every host view uses the same state words."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from haven.cli.main import cli
from haven.model.fencing import FenceCheck
from haven.model.state import HostState, VmState

from .conftest import ADMIN, Cluster
from .test_cli import run


def protect(cluster: Cluster) -> None:
    """The conftest cluster is down (VM `broken` is in error): run it on h3 instead."""
    cluster.put_vm("broken", "h3", VmState.RUNNING)


@pytest.mark.parametrize("level,code", [("protected", 0), ("degraded", 1), ("down", 5)])
def test_status_exit_code_is_the_protection_level(cluster: Cluster, live: str, level: str, code: int) -> None:
    if level != "down":
        protect(cluster)
    if level == "degraded":  # only h1 left to take VMs: losing it strands its HA VMs
        cluster.put_host("h2", state=HostState.MAINTENANCE)
        cluster.put_host("h3", state=HostState.MAINTENANCE)
    text = run(live, "status")
    assert text.exit_code == code, text.output
    data = run(live, "status", "-o", "json")
    assert data.exit_code == code
    assert json.loads(data.output)["summary"]["protection"]["level"] == level  # JSON still printed


@pytest.mark.parametrize("url,token,args,code", [
    ("http://127.0.0.1:9", ADMIN, [], 3),
    (None, "wrong", [], 4),
    (None, ADMIN, ["--bogus"], 2),
])
def test_status_exit_codes_when_it_cannot_tell(live: str, url: str | None, token: str, args: list[str],
                                               code: int) -> None:
    result = run(url or live, "status", *args, token=token)
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output


def test_status_help_lists_its_exit_codes() -> None:
    text = CliRunner().invoke(cli, ["status", "--help"]).output
    for line in ("0  protected", "1  degraded", "2  usage error", "3  cannot reach the API", "4  authentication",
                 "5  down"):
        assert line in text


def test_a_draining_host_is_in_maintenance_everywhere(cluster: Cluster, live: str) -> None:
    assert run(live, "host", "drain", "h1", "--no-wait").exit_code == 0
    # The manager has not acted yet: h1 still has both VMs, its record still says online.
    listing = run(live, "host", "list")
    row = next(line for line in listing.output.splitlines() if line.startswith("h1"))
    assert "maintenance" in row and "VMs moving out" in row
    show = run(live, "host", "show", "h1")
    assert "host h1: maintenance" in show.output and "requested, moving 2 VM(s) away" in show.output
    assert json.loads(run(live, "host", "show", "h1", "-o", "json").output)["state"] == "maintenance"
    for output in (listing.output, show.output):
        assert "draining" not in output  # the word events never use for a host


def test_each_host_shows_its_fence_device_check(cluster: Cluster, live: str) -> None:
    """The leading manager's last check of each fence device, in the status table, `host show`
    and its JSON; a host without one says so."""
    cluster.store.put(cluster.layout.fence_check("h1"),
                      FenceCheck(ok=False, detail="fence_ipmilan monitor: timed out after 20.00 s",
                                 checked_at=1700000000.0).model_dump_json())
    cluster.store.put(cluster.layout.fence_check("h2"),
                      FenceCheck(ok=True, detail="fence_ipmilan monitor ok in 0.18 s",
                                 checked_at=1700000000.0).model_dump_json())
    protect(cluster)
    status = run(live, "status").output.splitlines()
    assert "fence devices: failing h1; ok h2; none h3" in status
    rows = {line.split()[0]: line for line in status if line[:2] in ("h1", "h2", "h3")}
    assert "fence device failing" in rows["h1"]
    assert "fence" not in rows["h2"] and "fence" not in rows["h3"]
    show = run(live, "host", "show", "h1").output
    assert "fence device: failing: fence_ipmilan monitor: timed out after 20.00 s" in show
    assert "fence device: none" in run(live, "host", "show", "h3").output
    data = json.loads(run(live, "host", "show", "h2", "-o", "json").output)
    assert data["fence_device"] == {"ok": True, "detail": "fence_ipmilan monitor ok in 0.18 s",
                                    "checked_at": 1700000000.0}
    assert json.loads(run(live, "host", "show", "h3", "-o", "json").output)["fence_device"] is None
