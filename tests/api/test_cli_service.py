"""`haven service ...` over a live API serving a simulated cluster: tables and JSON, waiting with
progress, one-sentence errors with their exit codes, completion of service and member names."""
from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from haven.api import create_app
from haven.api.sim_backend import SimBackend
from haven.cli import ops_render
from haven.cli.main import cli
from haven.sim.scenario import cluster_from_scenario

from .conftest import ADMIN, READ, serve
from .test_cli_complete import complete, names

SCENARIO = Path(__file__).with_name("services-scenario.yaml")
SETTLED_S = 8.0  # virtual seconds by which db runs on db1 with db2 as its standby
STEP_S = 0.05  # virtual seconds the simulation moves on per store call: it advances as the CLI asks


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setattr(ops_render, "POLL_S", 0.02)
    cluster = cluster_from_scenario(SCENARIO)
    now = [0.0]

    def wall() -> float:
        now[0] += STEP_S
        return now[0]

    backend = SimBackend(cluster, 1.0, scenario=SCENARIO.stem, wall=wall)
    now[0] += SETTLED_S
    backend.advance()
    app = create_app(backend.store("api"), cluster.layout, admin_token=ADMIN, read_token=READ,
                     clock=backend.clock, on_write=backend.advance, sim_control=backend)
    with serve(app) as url:
        yield url


def run(url: str, *args: str, token: str = ADMIN) -> Result:
    return CliRunner().invoke(cli, list(args), env={"HAVEN_API": url, "HAVEN_TOKEN": token})


def service(url: str, name: str = "db") -> dict[str, object]:
    result = run(url, "service", "show", name, "-o", "json")
    assert result.exit_code == 0, result.output
    return json.loads(result.output)  # type: ignore[no-any-return]


def test_list_text_and_json(api: str) -> None:
    result = run(api, "service", "list")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split() == ["SERVICE", "PHASE", "ACTIVE", "HOST", "STANDBYS", "FLOATING", "IP", "DESIRED"]
    assert lines[1].split() == ["db", "running", "db1", "h1", "db2", "10.0.9.10/24", "running"]
    assert lines[2].split() == ["jobs", "stopped", "-", "-", "jobs1,", "jobs2", "10.0.9.11/24", "stopped"]
    data = json.loads(run(api, "service", "list", "-o", "json").output)
    assert [(s["name"], s["active"]) for s in data] == [("db", "db1"), ("jobs", None)]


def test_show_marks_the_active_member(api: str) -> None:
    result = run(api, "service", "show", "db")
    assert result.exit_code == 0, result.output
    assert "service db: running on db1 (h1)" in result.output
    assert "floating IP: 10.0.9.10/24" in result.output
    members = {line.split()[0]: line.split() for line in result.output.splitlines()
               if line.split() and line.split()[0] in ("db1", "db2")}
    assert members["db1"][1:5] == ["active", "h1", "healthy", "yes"] and "disk," in members["db1"]
    assert members["db2"][1:4] == ["standby", "h2", "healthy"]
    assert "service db: starting -> running on db1" in result.output  # the history
    data = service(api)
    assert data["active"] == "db1" and data["history"]


def test_move_waits_until_it_runs_on_the_target(api: str) -> None:
    result = run(api, "service", "move", "db", "--to", "db2")
    assert result.exit_code == 0, result.output
    assert "service db moved db1 -> db2 in" in result.output
    data = service(api)
    assert (data["phase"], data["active"]) == ("running", "db2")
    # JSON: the service as it is now, and where it went.
    result = run(api, "service", "move", "db", "-o", "json")
    assert result.exit_code == 0, result.output
    moved = json.loads(result.output)
    assert (moved["source"], moved["target"], moved["service"]["active"]) == ("db2", "db1", "db1")
    assert moved["result"] == "succeeded"


def test_move_no_wait_only_asks(api: str) -> None:
    result = run(api, "service", "move", "db", "--no-wait", "-o", "json")
    assert result.exit_code == 0, result.output
    answer = json.loads(result.output)
    assert answer["message"] == "move of service db to the best other member requested"
    # The simulation moves on with each store call: the manager has handled it, or will soon.
    for _ in range(20):
        data = service(api)
        if data["state"]["request_id"] == answer["request_id"]:
            break
    assert data["state"]["request_id"] == answer["request_id"] and data["active"] == "db2"


@pytest.mark.parametrize("args,token,code,lines", [
    (["service", "move", "db", "--to", "web"], ADMIN, 2,
     ["error: web is not a member of service db",
      "  - target: 'web' is not a member of service db (members: db1, db2)"]),
    (["service", "move", "db", "--to", "db1"], ADMIN, 2, ["error: service db already runs on db1"]),
    (["service", "move", "jobs"], ADMIN, 1, ["error: service jobs is stopped (desired: stopped): start it"]),
    (["service", "show", "nope"], ADMIN, 2, ["error: service 'nope' does not exist"]),
    (["service", "stop", "nope"], ADMIN, 2, ["error: service 'nope' does not exist"]),
    (["service", "stop", "db"], READ, 4, ["error: this token may only read: changes need the admin token"]),
    (["service", "delete", "db"], ADMIN, 1, ["error: service db is running on db1: stop it first"]),
    (["service", "stop", "db", "--timeout", "5"], ADMIN, 2, ["--timeout only bounds --wait"]),
    (["service", "move", "db", "--no-wait", "--timeout", "5"], ADMIN, 2, ["--timeout has no effect with --no-wait"]),
])
def test_mistakes_are_one_sentence_with_an_exit_code(api: str, args: list[str], token: str, code: int,
                                                     lines: list[str]) -> None:
    result = run(api, *args, token=token)
    assert result.exit_code == code, result.output
    for line in lines:
        assert line in result.output
    assert "Traceback" not in result.output


def test_stop_and_start_wait(api: str) -> None:
    result = run(api, "service", "stop", "db", "--wait")
    assert result.exit_code == 0, result.output
    assert "service db stopped in" in result.output
    data = service(api)
    assert (data["phase"], data["active"], data["desired"]) == ("stopped", None, "stopped")
    result = run(api, "service", "start", "db", "--wait", "-o", "json")
    assert result.exit_code == 0, result.output
    started = json.loads(result.output)
    assert started["service"]["phase"] == "running" and started["result"] == "succeeded"
    result = run(api, "service", "start", "db")
    assert result.exit_code == 0 and "service db is already meant to be running" in result.output


def test_create_and_delete(api: str, tmp_path: Path) -> None:
    spec = tmp_path / "cache.yaml"
    spec.write_text("name: cache\nmembers: [spare1, spare3]\nstart: [c, start]\nstop: [c, stop]\n"
                    "check: [c, check]\nfloating_ip: 10.0.9.12/24\ndesired: stopped\n")
    result = run(api, "service", "create", "-f", str(spec))
    assert result.exit_code == 0 and "service cache declared" in result.output, result.output
    result = run(api, "service", "delete", "cache")
    assert result.exit_code == 0 and "service cache deleted" in result.output, result.output
    spec.write_text("name: bad\nmembers: [spare1, db1]\nstart: [c]\nstop: [c]\ncheck: [c]\nfloating_ip: 10.0.9.13/24\n")
    result = run(api, "service", "create", "-f", str(spec))
    assert result.exit_code == 2, result.output
    assert "  - service bad: vm db1 is already a member of service db" in result.output


def test_status_counts_services(api: str) -> None:
    result = run(api, "status")
    assert result.exit_code == 0, result.output
    assert "services: stopped 1, running 1" in result.output
    assert "1 service runs with a healthy standby" in result.output


@pytest.mark.parametrize("words,expected", [
    ("haven service show ", ["db", "jobs"]),
    ("haven service move j", ["jobs"]),
    ("haven service move db --to ", ["db1", "db2"]),
    ("haven service move jobs --to jobs", ["jobs1", "jobs2"]),
])
def test_names_complete_from_the_api(api: str, words: str, expected: list[str]) -> None:
    result = complete(words, api)
    assert result.exit_code == 0, result.output
    assert names(result) == expected
