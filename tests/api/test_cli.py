"""The operator CLI over a live API: output, waiting with progress, exit codes."""
from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from click.testing import CliRunner, Result

from haven.cli import ops
from haven.model.state import HostRecord, HostState, Migration, Placement, VmRequest, VmState

from .conftest import ADMIN, READ, Cluster


@click.group()
def cli() -> None:
    """Just the ops commands (the real `haven` adds the other areas)."""


ops.register(cli)


def run(url: str, *args: str, token: str | None = ADMIN) -> Result:
    env = {"HAVEN_API": url, "HAVEN_TOKEN": token or ""}
    return CliRunner().invoke(cli, list(args), env=env)


class FakeManager:
    """Acts on requests like the manager would, slowly enough for the CLI to show progress."""

    def __init__(self, cluster: Cluster, step_s: float = 0.4) -> None:
        self.cluster, self.step_s = cluster, step_s
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        c = self.cluster
        while not self.stop.wait(0.1):
            dump = c.dump()
            for key, value in dump.items():
                if key.endswith("/request"):
                    self.migrate(VmRequest.model_validate_json(value), key.split("/")[-2])
                if "/hostadmin/" in key and '"maintenance":true' in value:
                    host = key.split("/")[-1]
                    for vm in ("web", "db"):
                        placement = Placement.model_validate_json(dump[c.layout.placement(vm)])
                        if placement.host == host:
                            time.sleep(self.step_s)
                            c.store.put(c.layout.placement(vm), placement.model_copy(
                                update={"host": "h3"}).model_dump_json())
                    c.store.put(c.layout.host_state(host),
                                HostRecord(host=host, state=HostState.MAINTENANCE).model_dump_json())

    def migrate(self, request: VmRequest, vm: str) -> None:
        c = self.cluster
        old = Placement.model_validate_json(c.dump()[c.layout.placement(vm)])
        target = request.target or "h3"
        moving = old.model_copy(update={"state": VmState.MIGRATING, "request_id": request.id, "migration": Migration(
            kind=request.kind, source=old.host or "", target=target, generation=2, started=0.0)})
        c.store.put(c.layout.placement(vm), moving.model_dump_json())
        c.store.delete(c.layout.request(vm))
        time.sleep(self.step_s)
        c.store.put(c.layout.placement(vm), moving.model_copy(update={
            "state": VmState.RUNNING, "host": target, "migration": None, "generation": 2}).model_dump_json())

    def __enter__(self) -> FakeManager:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=5)


@pytest.fixture
def manager(cluster: Cluster, live: str) -> Iterator[FakeManager]:
    with FakeManager(cluster) as fake:
        yield fake


def test_status_text_and_json(live: str) -> None:
    result = run(live, "status")
    assert result.exit_code == 5, result.output  # down (test_cli_status.py has every level)
    assert "(x_x) ill (down): HA VM broken (error) is not running" in result.output
    assert "h1" in result.output and "manager" in result.output
    data = json.loads(run(live, "status", "--output", "json").output)
    assert data["summary"]["manager"] == "h1" and len(data["hosts"]) == 3


def test_lists_and_show(live: str) -> None:
    assert "cache" in run(live, "vm", "list").output
    show = run(live, "vm", "show", "web")
    assert show.exit_code == 0 and "t=12.000 manager  vm web: starting -> running on h1" in show.output
    host = json.loads(run(live, "host", "show", "h1", "-o", "json").output)
    assert host["vms"] == ["db", "web"]


def test_migrate_waits_and_reports_timing(live: str, manager: FakeManager) -> None:
    result = run(live, "vm", "migrate", "web", "--quick", "--to", "h2")
    assert result.exit_code == 0, result.output
    assert "VM web moved h1 -> h2 (quick) in" in result.output
    data = json.loads(run(live, "vm", "migrate", "web", "--to", "h3", "-o", "json").output)
    assert data["result"] == "succeeded" and data["source"] == "h2" and data["target"] == "h3"
    assert data["seconds"] >= manager.step_s
    assert data["vm"]["state"] == "running" and data["vm"]["host"] == "h3"  # the final state, not the request's


def test_drain_json_shows_the_drained_host(live: str, manager: FakeManager) -> None:
    result = run(live, "host", "drain", "h1", "-o", "json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["result"] == "succeeded"
    assert data["host"]["vms"] == [] and data["host"]["state"] == "maintenance"


def test_migrate_no_wait_only_writes_the_request(live: str, cluster: Cluster) -> None:
    result = run(live, "vm", "migrate", "web", "--cold", "--no-wait")
    assert result.exit_code == 0 and "cold migration of VM web to the best host requested" in result.output
    request = VmRequest.model_validate_json(cluster.dump()[cluster.layout.request("web")])
    assert request.kind == "cold" and request.target is None


def test_drain_waits_until_the_host_is_empty(live: str, manager: FakeManager) -> None:
    result = run(live, "host", "drain", "h1")
    assert result.exit_code == 0, result.output
    assert "host h1 drained in" in result.output
    assert json.loads(run(live, "host", "show", "h1", "-o", "json").output)["vms"] == []


def test_create_from_a_yaml_file(live: str, cluster: Cluster, tmp_path: Path) -> None:
    spec = tmp_path / "api.yaml"
    spec.write_text("name: api\nmemory_mib: 256\npriority: 3\n")
    result = run(live, "vm", "create", "-f", str(spec))
    assert result.exit_code == 0 and "VM api declared" in result.output
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: api2\nmemory_mib: 1\nprefered_hosts: [h1]\n")
    result = run(live, "vm", "create", "-f", str(bad))
    assert result.exit_code == 2
    assert "error: the VM spec is not valid (2 problems)" in result.output
    assert "  - prefered_hosts: unknown field (check the spelling)" in result.output


@pytest.mark.parametrize("args,token,code,message", [
    (["vm", "show", "ghost"], ADMIN, 2, "error: VM 'ghost' does not exist"),
    (["vm", "migrate", "batch"], ADMIN, 1, "error: VM batch is stopped: only a running VM can be migrated"),
    (["vm", "acknowledge", "web"], ADMIN, 1, "not in error: nothing to acknowledge"),
    (["host", "drain", "h1"], READ, 4, "error: this token may only read: changes need the admin token"),
    (["status"], None, 4, "pass --token or set HAVEN_TOKEN"),
    (["status"], "wrong", 4, "error: invalid token"),
    (["vm", "migrate", "web", "--sideways"], ADMIN, 2, "No such option '--sideways'"),
    (["vm", "migrate", "web", "--quick", "--live"], ADMIN, 2, "choose one migration kind, not --live and --quick"),
    (["vm", "migrate", "web", "--cold", "--quick", "--no-wait"], ADMIN, 2, "choose one migration kind"),
    (["host", "drain", "h1", "--no-wait", "--timeout", "5"], ADMIN, 2, "--timeout has no effect with --no-wait"),
])
def test_errors_are_one_sentence_with_an_exit_code(live: str, args: list[str], token: str | None, code: int,
                                                   message: str) -> None:
    result = run(live, *args, token=token)
    assert result.exit_code == code, result.output
    assert message in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("suffix", ["/", "/api/v1", "/api/v1/", "//"])
def test_api_accepts_the_printed_url(live: str, suffix: str) -> None:
    result = run(live + suffix, "vm", "list")
    assert result.exit_code == 0, result.output
    assert "cache" in result.output


@pytest.mark.parametrize("url", ["127.0.0.1:8470", "http://[::1"])
def test_a_malformed_api_url_is_a_usage_error(url: str) -> None:
    result = run(url, "vm", "list")
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: --api / HAVEN_API")
    assert "Traceback" not in result.output


def test_unreachable_api_is_exit_3() -> None:
    result = run("http://127.0.0.1:9", "vm", "list")
    assert result.exit_code == 3
    assert result.output.startswith("error: cannot reach the haven API at http://127.0.0.1:9")


def test_events_and_follow(live: str, cluster: Cluster) -> None:
    assert run(live, "events", "--limit", "1").output == "t=13.000 manager  host h3: offline -> online\n"
    lines = [json.loads(line) for line in run(live, "events", "-o", "json").output.splitlines()]
    assert [e["subject"] for e in lines] == ["vm web", "vm web", "host h3"]
    client = ops.ApiClient(live, READ)
    threading.Timer(0.3, lambda: cluster.event(60.0, "vm db", "running -> stopping")).start()
    stream = client.stream_events(client.get("/api/v1/events")["next"])
    assert next(stream)["message"] == "running -> stopping"
    stream.close()
    client.close()


def test_help_documents_exit_codes() -> None:
    result = CliRunner().invoke(cli, ["vm", "migrate", "--help"])
    assert "3  cannot reach the API" in result.output and "--to HOST" in result.output


def test_a_drain_that_cannot_finish_is_refused_unless_forced(live: str, cluster: Cluster) -> None:
    cluster.put_host("h2", memory=1536)  # 768 MiB free: db (1024 MiB) cannot follow
    cluster.put_host("h3", alive=False, state=HostState.OFFLINE)
    refused = run(live, "host", "drain", "h1")
    assert refused.exit_code == 1, refused.output
    assert refused.output.startswith("error: the drain of h1 cannot finish: VM db has nowhere to go")
    assert ("  - VM db (1024 MiB, priority 3) cannot move: h2, the only other online host, has 768 MiB free "
            "(256 MiB missing)") in refused.output
    assert cluster.layout.host_admin("h1") not in cluster.dump()
    forced = run(live, "host", "drain", "h1", "--force", "--no-wait")
    assert forced.exit_code == 0, forced.output
    assert "host h1: drain requested (2 VM(s) to move)" in forced.output
    assert '"maintenance":true' in cluster.dump()[cluster.layout.host_admin("h1")]
