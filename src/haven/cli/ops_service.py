"""CLI commands over the API for services (guest clusters): haven service list | show | move |
start | stop | create | delete.

Built like `haven vm ...` (cli/ops.py): `--api`, `--token`, `-o/--output text|json` on every
command, names completed from the API, progress on stderr while waiting.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from haven.cli import ops_render as render
from haven.cli.complete import service_members, service_names
from haven.cli.ops import (
    client,
    common,
    emit,
    post_spec_file,
    refuse_timeout_with_no_wait,
    refuse_timeout_without_wait,
)
from haven.cli.ops_client import EXIT_CODES_HELP, EXIT_FAILED, ApiClient, CliError

SERVICE_NAME = click.argument("name", shell_complete=service_names)


@click.group("service", epilog=EXIT_CODES_HELP)
def service() -> None:
    """Services (guest clusters): an application that fails over between member VMs, each pinned
    to its own host, with a floating IP and an optional data disk. List, inspect, move, start and
    stop them."""


@service.command("list", epilog=EXIT_CODES_HELP)
@common
def service_list() -> None:
    """Every service with its phase, active member, healthy standbys and floating IP."""
    services = client().get("/api/v1/services")
    emit(services, lambda: render.services_table(services))


@service.command("show", epilog=EXIT_CODES_HELP)
@SERVICE_NAME
@common
def service_show(name: str) -> None:
    """One service: spec, the manager's decision, each member's host and health, recent history."""
    api = client()
    data = api.get(f"/api/v1/services/{name}")
    history = api.get(f"/api/v1/services/{name}/history", limit=10)["events"]
    emit({**data, "history": history}, lambda: render.service_detail(data, history))


@service.command("create", epilog=EXIT_CODES_HELP)
@click.option("-f", "--file", "path", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="the service spec, YAML or JSON")
@common
def service_create(path: Path) -> None:
    """Declare a service from a YAML or JSON spec file; its members must be declared VMs, each
    pinned to its own host (one preferred host), e.g.

    \b
        name: db
        members: [db1, db2]
        start: [/usr/local/bin/db, start]
        stop: [/usr/local/bin/db, stop]
        check: [/usr/local/bin/db, check]
        floating_ip: 10.0.9.10/24
        data_disk: {pool: san}
    """
    answer = post_spec_file(path, "/api/v1/services")
    emit(answer, lambda: click.echo(answer["message"]))


@service.command("delete", epilog=EXIT_CODES_HELP)
@SERVICE_NAME
@common
def service_delete(name: str) -> None:
    """Forget a stopped service (stop it first); its member VMs stay."""
    answer = client().request("DELETE", f"/api/v1/services/{name}")
    emit(answer, lambda: click.echo(answer["message"]))


@service.command("move", epilog=EXIT_CODES_HELP)
@SERVICE_NAME
@click.option("--to", "target", default=None, metavar="VM", shell_complete=service_members,
              help="the member to move to (default: the best other healthy member)")
@click.option("--no-wait", is_flag=True, help="return once the request is accepted")
@click.option("--timeout", type=click.FloatRange(min=1), default=300, show_default=True,
              help="seconds to wait for the move to finish")
@common
def service_move(name: str, target: str | None, no_wait: bool, timeout: float) -> None:
    """Move running service NAME to another member: the active one stops the application and
    releases the floating IP and the data disk, then the target takes them over. Shows progress
    until it runs on the new member (unless --no-wait)."""
    refuse_timeout_with_no_wait(no_wait)
    api = client()
    # Where it runs before asking: the accepted answer may already show it moving (active: the target).
    source = api.get(f"/api/v1/services/{name}")["active"]
    answer = api.post(f"/api/v1/services/{name}/move", {"target": target})
    if no_wait:
        emit(answer, lambda: click.echo(answer["message"]))
        return
    request_id = answer["request_id"]
    result = render.wait(f"move of service {name}", None, timeout, api,
                         lambda: _move_progress(api, name, source, request_id))
    after = api.get(f"/api/v1/services/{name}")
    result = {**result, "source": source, "target": after["active"]}
    emit({**answer, "service": after, **result},
         lambda: click.echo(f"service {name} moved {source} -> {after['active']} in {render.timing(result)}"))


def _last_event(api: ApiClient, name: str) -> str:
    events = api.get(f"/api/v1/services/{name}/history", limit=1)["events"]
    return f" ({events[-1]['message']})" if events else ""


def _move_progress(api: ApiClient, name: str, source: str, request_id: str) -> tuple[int, str, bool]:
    data = api.get(f"/api/v1/services/{name}")
    if data["request"] is not None and data["request"]["id"] == request_id:
        return 0, "waiting for the manager", False
    if data["desired"] != "running":
        raise CliError(f"service {name} was stopped while moving it", EXIT_FAILED)
    phase, active = data["phase"], data["active"]
    if phase == "down":
        raise CliError(f"service {name} is down: {data['reason'] or 'no member can run it'}", EXIT_FAILED)
    if phase == "moving":
        return 0, f"{source} -> {active}", False
    if phase == "running":
        if active != source:
            return 1, f"running on {active}", True
        if (data["state"] or {}).get("request_id") == request_id:
            raise CliError(f"service {name} stayed on {source}: the manager did not move it"
                           f"{_last_event(api, name)}", EXIT_FAILED)
    return 0, phase, False


def _desired(action: str, desired: str, goal: str, doc: str) -> None:
    @service.command(action, help=doc, epilog=EXIT_CODES_HELP)
    @SERVICE_NAME
    @click.option("--wait", is_flag=True, help=f"show progress until the service is {goal}")
    @click.option("--timeout", type=click.FloatRange(min=1), default=300, show_default=True,
                  help="seconds to wait with --wait")
    @common
    def command(name: str, wait: bool, timeout: float) -> None:
        refuse_timeout_without_wait(wait)
        api = client()
        answer = api.post(f"/api/v1/services/{name}/{action}")
        if not wait:
            emit(answer, lambda: click.echo(answer["message"]))
            return
        result = render.wait(f"{action} of service {name}", None, timeout, api,
                             lambda: _desired_progress(api, name, desired, goal))
        final = api.get(f"/api/v1/services/{name}")
        emit({**answer, "service": final, **result},
             lambda: click.echo(f"service {name} {goal} in {render.timing(result)}"))


def _desired_progress(api: ApiClient, name: str, desired: str, goal: str) -> tuple[int, str, bool]:
    data: dict[str, Any] = api.get(f"/api/v1/services/{name}")
    if data["desired"] != desired:
        raise CliError(f"service {name} was set to {data['desired']} meanwhile", EXIT_FAILED)
    where = f" on {data['active']}" if data["active"] else ""
    why = f": {data['reason']}" if data["reason"] else ""
    return 0, f"{data['phase']}{where}{why}", data["phase"] == goal


_desired("start", "running", "running",
         "Start service NAME (sets desired: running): the manager starts it on the best healthy member.")
_desired("stop", "stopped", "stopped",
         "Stop service NAME (sets desired: stopped): the application stops, the floating IP and the data "
         "disk are released; it no longer fails over. Its member VMs keep running.")


def register(cli: click.Group) -> None:
    """Add this module's commands to the top-level group."""
    cli.add_command(service)
