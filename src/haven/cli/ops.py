"""CLI commands over the API: status, host ..., vm ..., pool ..., events.

Every command takes `--api URL` (env HAVEN_API), `--token` (env HAVEN_TOKEN) and `-o/--output
text|json`; NAME arguments complete from the API in the shell (cli/complete.py).
Tables go to stdout; progress displays go to stderr so `--output json` stays machine-readable.
"""
from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from haven.cli import ops_render as render
from haven.cli.complete import host_name_list, host_names, pool_names, replica_hosts, vm_names
from haven.cli.follow import follow as follow_events
from haven.cli.ops_client import (
    DEFAULT_API,
    EXIT_CODES_HELP,
    EXIT_FAILED,
    EXIT_USAGE,
    STATUS_EXIT,
    STATUS_EXIT_CODES_HELP,
    ApiClient,
    CliError,
)
from haven.cli.output import OUTPUT_CHOICES

F = TypeVar("F", bound=Callable[..., Any])


def _store(name: str) -> Callable[[click.Context, click.Parameter, Any], Any]:
    def callback(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        ctx.meta[f"haven.{name}"] = value
        return value
    return callback


def common(fn: F) -> F:
    """--api, --token and --output on a command (kept in ctx.meta)."""
    fn = click.option("--output", "-o", type=click.Choice(OUTPUT_CHOICES), default="text",
                      show_default=True, expose_value=False, callback=_store("output"),
                      help="text tables, or JSON for scripts")(fn)
    fn = click.option("--token", envvar="HAVEN_TOKEN", default=None, expose_value=False,
                      callback=_store("token"), help="API token [env HAVEN_TOKEN]")(fn)
    fn = click.option("--api", envvar="HAVEN_API", default=DEFAULT_API, show_default=True,
                      expose_value=False, callback=_store("api"), help="API URL [env HAVEN_API]")(fn)
    return fn


# NAME arguments complete from the API when shell completion is on (README: "Shell completion").
VM_NAME = click.argument("name", shell_complete=vm_names)
HOST_NAME = click.argument("name", shell_complete=host_names)


def refuse_timeout_with_no_wait(no_wait: bool) -> None:
    """--timeout only bounds the wait, so asking for both is a mistake worth telling."""
    ctx = click.get_current_context()
    if no_wait and ctx.get_parameter_source("timeout") is click.core.ParameterSource.COMMANDLINE:
        raise click.UsageError("--timeout has no effect with --no-wait: use one or the other")


def refuse_timeout_without_wait(wait: bool) -> None:
    """--timeout only bounds --wait, so a timeout without it is a mistake worth telling."""
    ctx = click.get_current_context()
    if not wait and ctx.get_parameter_source("timeout") is click.core.ParameterSource.COMMANDLINE:
        raise click.UsageError("--timeout only bounds --wait: add --wait or drop --timeout")


def post_spec_file(path: Path, url: str) -> dict[str, Any]:
    """Send a YAML or JSON spec file as it is (the API parses and validates it)."""
    try:
        content = path.read_bytes()
    except OSError as error:
        raise CliError(f"cannot read {path} ({error.strerror})", EXIT_USAGE) from None
    kind = "application/json" if path.suffix == ".json" else "application/yaml"
    answer: dict[str, Any] = client().request("POST", url, content=content, headers={"Content-Type": kind})
    return answer


def client() -> ApiClient:
    meta = click.get_current_context().meta
    return ApiClient(meta["haven.api"], meta.get("haven.token"))


def as_json() -> bool:
    return click.get_current_context().meta.get("haven.output") == "json"


def emit(data: Any, text: Callable[[], None]) -> None:
    if as_json():
        click.echo(json.dumps(data, indent=2))
    else:
        text()


# -- status ------------------------------------------------------------------------------------

@click.command("status", epilog=STATUS_EXIT_CODES_HELP)
@common
def status() -> None:
    """The cluster at a glance: protection level, hosts, VMs and services by state. The exit code is the
    protection level, so scripts and monitoring can use it without parsing."""
    api = client()
    summary, hosts = api.get("/api/v1/summary"), api.get("/api/v1/hosts")
    emit({"summary": summary, "hosts": hosts}, lambda: render.status(summary, hosts))
    # An unknown level (a newer server) is not "protected": say so rather than exit 0.
    click.get_current_context().exit(STATUS_EXIT.get(summary["protection"]["level"], EXIT_FAILED))


# -- hosts --------------------------------------------------------------------------------------

@click.group("host", epilog=EXIT_CODES_HELP)
def host() -> None:
    """List and inspect hosts; drain a host for maintenance and resume it."""


@host.command("list", epilog=EXIT_CODES_HELP)
@common
def host_list() -> None:
    """Every host with its state, usage and VMs."""
    hosts = client().get("/api/v1/hosts")
    emit(hosts, lambda: render.hosts_table(hosts))


@host.command("show", epilog=EXIT_CODES_HELP)
@HOST_NAME
@common
def host_show(name: str) -> None:
    """One host in detail."""
    data = client().get(f"/api/v1/hosts/{name}")
    emit(data, lambda: render.host_detail(data))


@host.command("drain", epilog=EXIT_CODES_HELP)
@HOST_NAME
@click.option("--no-wait", is_flag=True, help="return once the request is accepted")
@click.option("--timeout", type=click.FloatRange(min=1), default=600, show_default=True,
              help="seconds to wait for the drain to finish")
@click.option("--force", is_flag=True, help="drain even if a VM cannot move (it stays) or the host is down")
@common
def host_drain(name: str, no_wait: bool, timeout: float, force: bool) -> None:
    """Put host NAME in maintenance: its VMs move to other hosts, it takes no new ones.
    Shows progress until the host is empty (unless --no-wait). A drain that cannot finish is
    refused with the VMs that cannot move, unless --force."""
    refuse_timeout_with_no_wait(no_wait)
    api = client()
    answer = api.post(f"/api/v1/hosts/{name}/drain", {"force": True} if force else None)
    if no_wait:
        emit(answer, lambda: click.echo(answer["message"]))
        return
    total = len(answer["host"]["vms"])
    result = render.wait(f"draining {name}", total, timeout, api,
                         lambda: _drain_progress(api, name, total))
    # The accepted answer shows the host before the drain: JSON callers want the final state.
    final = api.get(f"/api/v1/hosts/{name}")
    emit({**answer, "host": final, **result},
         lambda: click.echo(f"host {name} drained in {render.timing(result)}"))


def _drain_progress(api: ApiClient, name: str, total: int) -> tuple[int, str, bool]:
    data = api.get(f"/api/v1/hosts/{name}")
    if not data["maintenance_requested"]:
        raise CliError(f"the drain of {name} was cancelled (the host was resumed)", EXIT_FAILED)
    left = len(data["vms"])
    done = data["state"] == "maintenance" and left == 0
    return total - min(left, total), f"{left} VM(s) left on {name}", done


@host.command("resume", epilog=EXIT_CODES_HELP)
@HOST_NAME
@common
def host_resume(name: str) -> None:
    """End maintenance on host NAME: it takes VMs again."""
    answer = client().post(f"/api/v1/hosts/{name}/resume")
    emit(answer, lambda: click.echo(answer["message"]))


@host.command("power-on", epilog=EXIT_CODES_HELP)
@HOST_NAME
@click.option("--no-wait", is_flag=True, help="return once the device has switched the host on")
@click.option("--timeout", type=click.FloatRange(min=1), default=300, show_default=True,
              help="seconds to wait for the host to rejoin")
@common
def host_power_on(name: str, no_wait: bool, timeout: float) -> None:
    """Switch host NAME on through its fence device, then wait until it is back in the cluster
    (unless --no-wait). For a host a power fence switched off, once it is repaired."""
    refuse_timeout_with_no_wait(no_wait)
    api = client()
    answer = api.post(f"/api/v1/hosts/{name}/power-on")
    if no_wait:
        emit(answer, lambda: click.echo(answer["message"]))
        return
    click.echo(answer["message"], err=True)
    result = render.wait(f"rejoin of {name}", 1, timeout, api, lambda: _rejoin_progress(api, name))
    final = api.get(f"/api/v1/hosts/{name}")
    emit({**answer, "host": final, **result},
         lambda: click.echo(f"host {name} is {final['state']} after {render.timing(result)}"))


def _rejoin_progress(api: ApiClient, name: str) -> tuple[int, str, bool]:
    data = api.get(f"/api/v1/hosts/{name}")
    back = data["alive"] and data["state"] in ("online", "maintenance")
    return int(back), f"{name} is {data['state']}", back


# -- VMs ----------------------------------------------------------------------------------------

@click.group("vm", epilog=EXIT_CODES_HELP)
def vm() -> None:
    """Declare, inspect, start, stop and migrate VMs."""


@vm.command("list", epilog=EXIT_CODES_HELP)
@common
def vm_list() -> None:
    """Every VM with its state and host."""
    vms = client().get("/api/v1/vms")
    emit(vms, lambda: render.vms_table(vms))


@vm.command("show", epilog=EXIT_CODES_HELP)
@VM_NAME
@common
def vm_show(name: str) -> None:
    """One VM: spec, placement, agents' reports and recent history."""
    api = client()
    data = api.get(f"/api/v1/vms/{name}")
    history = api.get(f"/api/v1/vms/{name}/history", limit=10)["events"]
    emit({**data, "history": history}, lambda: render.vm_detail(data, history))


@vm.command("create", epilog=EXIT_CODES_HELP)
@click.option("-f", "--file", "path", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="the VM spec, YAML or JSON")
@common
def vm_create(path: Path) -> None:
    """Declare a VM from a YAML or JSON spec file, e.g.

    \b
        name: web
        memory_mib: 256
        priority: 3
        disks: [{pool: shared, size_mib: 64}]
    """
    answer = post_spec_file(path, "/api/v1/vms")
    emit(answer, lambda: click.echo(answer["message"]))


@vm.command("delete", epilog=EXIT_CODES_HELP)
@VM_NAME
@common
def vm_delete(name: str) -> None:
    """Forget a stopped VM (stop it first)."""
    answer = client().request("DELETE", f"/api/v1/vms/{name}")
    emit(answer, lambda: click.echo(answer["message"]))


def _simple(action: str, doc: str) -> None:
    @vm.command(action, help=doc, epilog=EXIT_CODES_HELP)
    @VM_NAME
    @common
    def command(name: str) -> None:
        answer = client().post(f"/api/v1/vms/{name}/{action}")
        emit(answer, lambda: click.echo(answer["message"]))


_simple("start", "Start VM NAME (sets desired: running).")
_simple("acknowledge", "Clear the error state of VM NAME so the manager tries again.")


@vm.command("stop", epilog=EXIT_CODES_HELP)
@VM_NAME
@click.option("--wait", is_flag=True, help="show progress until the VM is stopped")
@click.option("--timeout", type=click.FloatRange(min=1), default=300, show_default=True,
              help="seconds to wait with --wait")
@common
def vm_stop(name: str, wait: bool, timeout: float) -> None:
    """Stop VM NAME (sets desired: stopped; it is no longer restarted)."""
    refuse_timeout_without_wait(wait)
    api = client()
    answer = api.post(f"/api/v1/vms/{name}/stop")
    if not wait:
        emit(answer, lambda: click.echo(answer["message"]))
        return
    result = render.wait(f"stop of VM {name}", None, timeout, api, lambda: _stop_progress(api, name))
    # Like migrate and drain: JSON callers get the VM as it is now, not as it was when accepted.
    final = api.get(f"/api/v1/vms/{name}")
    emit({**answer, "vm": final, **result},
         lambda: click.echo(f"VM {name} stopped in {render.timing(result)}"))


def _stop_progress(api: ApiClient, name: str) -> tuple[int, str, bool]:
    data = api.get(f"/api/v1/vms/{name}")
    if data["desired"] != "stopped":
        raise CliError(f"VM {name} was started again while stopping it", EXIT_FAILED)
    if data["state"] == "error":
        raise CliError(f"VM {name} is in error: {data['reason'] or 'the stop failed'}", EXIT_FAILED)
    where = f" on {data['host']}" if data["host"] else ""
    return 0, f"{data['state']}{where}", data["state"] == "stopped"


@vm.command("migrate", epilog=EXIT_CODES_HELP)
@VM_NAME
@click.option("--live", is_flag=True, help="no visible outage (default)")
@click.option("--quick", is_flag=True, help="save, move, restore")
@click.option("--cold", is_flag=True, help="stop, then boot on the target")
@click.option("--to", "target", default=None, metavar="HOST", shell_complete=host_names,
              help="target host (default: the best host)")
@click.option("--no-wait", is_flag=True, help="return once the request is accepted")
@click.option("--timeout", type=click.FloatRange(min=1), default=300, show_default=True,
              help="seconds to wait for the migration to finish")
@common
def vm_migrate(name: str, live: bool, quick: bool, cold: bool, target: str | None, no_wait: bool,
               timeout: float) -> None:
    """Move running VM NAME to another host. Shows progress until it runs on the target."""
    # Separate flags so that two kinds given at once are refused, not silently resolved by order.
    chosen = [kind for kind, on in (("live", live), ("quick", quick), ("cold", cold)) if on]
    if len(chosen) > 1:
        raise click.UsageError(f"choose one migration kind, not {' and '.join('--' + k for k in chosen)}")
    kind = chosen[0] if chosen else "live"
    refuse_timeout_with_no_wait(no_wait)
    api = client()
    before = api.get(f"/api/v1/vms/{name}")
    answer = api.post(f"/api/v1/vms/{name}/migrate", {"kind": kind, "target": target})
    if no_wait:
        emit(answer, lambda: click.echo(answer["message"]))
        return
    source, request_id = before["host"], answer["request_id"]
    result = render.wait(f"{kind} migration of {name}", None, timeout, api,
                         lambda: _migration_progress(api, name, source, request_id))
    after = api.get(f"/api/v1/vms/{name}")
    result = {**result, "source": source, "target": after["host"]}
    # `after` replaces the accepted answer's VM, which is still on the source (or migrating).
    emit({**answer, "vm": after, **result},
         lambda: click.echo(f"VM {name} moved {source} -> {after['host']} ({kind}) in {render.timing(result)}"))


def _migration_progress(api: ApiClient, name: str, source: str, request_id: str) -> tuple[int, str, bool]:
    data = api.get(f"/api/v1/vms/{name}")
    placement = data["placement"] or {}
    pending = data["request"] is not None and data["request"]["id"] == request_id
    if pending:
        return 0, "waiting for the manager", False
    if data["state"] == "error":
        raise CliError(f"VM {name} is in error: {data['reason'] or 'migration failed'}", EXIT_FAILED)
    if data["state"] == "migrating":
        migration = placement.get("migration") or {}
        return 0, f"{source} -> {migration.get('target', '?')}", False
    if data["state"] == "running":
        if data["host"] != source:
            return 1, f"running on {data['host']}", True
        if placement.get("request_id") == request_id:
            raise CliError(f"VM {name} stayed on {source}: {data['reason'] or 'the migration did not complete'}",
                           EXIT_FAILED)
    return 0, data["state"], False


@vm.command("promote", epilog=EXIT_CODES_HELP)
@VM_NAME
@click.option("--to", "target", required=True, metavar="HOST", shell_complete=replica_hosts,
              help="the host whose copy to start the VM from")
@click.option("--accept-data-loss", is_flag=True,
              help="start it although that copy lacks writes: the writes it lacks are lost")
@common
def vm_promote(name: str, target: str, accept_data_loss: bool) -> None:
    """Start VM NAME, which runs nowhere, from its copy on a replicated pool's other host although
    that copy lacks writes: for the day its primary's disk is gone. Says how stale the copy is
    first; without --accept-data-loss it only says so and exits 2. Refused (exit 1) while the VM
    runs, when the copy lacks nothing, or when the host cannot take the VM."""
    api = client()
    vm = api.get(f"/api/v1/vms/{name}")
    copy = _copy_on(vm, target)
    if copy is not None and accept_data_loss and copy["state"] != "in-sync" and vm["state"] in PROMOTABLE:
        # stderr, so that -o json stays one document; said before anything is asked.
        click.echo(f"the copy of VM {name} on {target} is {render.staleness(copy)}; the writes it lacks "
                   "will be lost", err=True)
    try:
        answer = api.post(f"/api/v1/vms/{name}/promote", {"target": target, "accept_data_loss": accept_data_loss})
    except CliError as error:
        if "accept_data_loss: must be true" not in error.problems or copy is None:
            raise
        raise CliError(f"starting VM {name} from its copy on {target} would lose every write that copy lacks: "
                       f"it is {render.staleness(copy)}; pass --accept-data-loss to do it anyway", EXIT_USAGE) \
            from None
    emit(answer, lambda: click.echo(answer["message"]))


PROMOTABLE = ("stopped", "recovering", "error")  # core.replica.PROMOTABLE_STATES: runs nowhere


def _copy_on(vm: dict[str, Any], host: str) -> dict[str, Any] | None:
    """The first copy on `host` that is not in sync (the one a promotion would lose writes by)."""
    copies = [c for c in (vm.get("replicas") or {}).get("copies", []) if c["host"] == host]
    return next((c for c in copies if c["state"] != "in-sync"), copies[0] if copies else None)


# -- pools --------------------------------------------------------------------------------------

@click.group("pool", epilog=EXIT_CODES_HELP)
def pool() -> None:
    """Storage pools: shared (a directory every host reaching it sees) or replicated (two hosts'
    local disks, mirrored synchronously)."""


@pool.command("list", epilog=EXIT_CODES_HELP)
@common
def pool_list() -> None:
    """Every pool: its kind, hosts and the VMs with a disk on it."""
    pools = client().get("/api/v1/pools")
    emit(pools, lambda: render.pools_table(pools))


@pool.command("show", epilog=EXIT_CODES_HELP)
@click.argument("name", shell_complete=pool_names)
@common
def pool_show(name: str) -> None:
    """One pool."""
    data = client().get(f"/api/v1/pools/{name}")
    emit(data, lambda: render.pools_table([data]))


@pool.command("create", epilog=EXIT_CODES_HELP)
@click.argument("name")
@click.option("--replicated", is_flag=True, help="two hosts' local disks, mirrored (name them with --hosts)")
@click.option("--hosts", default=None, metavar="H1,H2", shell_complete=host_name_list,
              help="the replicated pool's two hosts; each must list the pool in its pools")
@click.option("-f", "--file", "path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="the pool spec, YAML or JSON (instead of --replicated/--hosts)")
@common
def pool_create(name: str, replicated: bool, hosts: str | None, path: Path | None) -> None:
    """Declare pool NAME, e.g. `haven pool create pair --replicated --hosts h1,h2`, or from a spec
    file:

    \b
        kind: replicated
        hosts: [h1, h2]
    """
    if path is not None and (replicated or hosts):
        raise click.UsageError("give the pool in a file (-f) or with --replicated/--hosts, not both")
    if hosts and not replicated:
        raise click.UsageError("--hosts names the hosts of a replicated pool: add --replicated")
    if path is not None:
        try:
            content = path.read_bytes()
        except OSError as error:
            raise CliError(f"cannot read {path} ({error.strerror})", EXIT_USAGE) from None
        kind = "application/json" if path.suffix == ".json" else "application/yaml"
        answer = client().request("PUT", f"/api/v1/pools/{name}", content=content, headers={"Content-Type": kind})
    else:
        body: dict[str, Any] = {"kind": "replicated" if replicated else "shared"}
        if hosts:
            body["hosts"] = [h.strip() for h in hosts.split(",") if h.strip()]
        answer = client().put(f"/api/v1/pools/{name}", body)
    emit(answer, lambda: click.echo(answer["message"]))


# -- events -------------------------------------------------------------------------------------

@click.command("events", epilog=EXIT_CODES_HELP)
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True,
              help="how many recent events to show")
@click.option("--follow", "-f", is_flag=True, help="keep printing new events (Ctrl-C to stop)")
@common
def events(limit: int, follow: bool) -> None:
    """Recent cluster events, oldest first; with --follow, new ones as they happen (also through
    a pipe). If the connection drops, --follow says so on stderr, reconnects and resumes after the
    last event shown. JSON: one event object per line."""
    api = client()
    page = api.get("/api/v1/events", limit=limit)
    for event in page["events"]:
        render.event_line(event, as_json())
    if not follow:
        return
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how a follow ends
        # An empty log has no last id: "" follows it from its start, so no event is missed.
        follow_events(api, page["next"] or "", lambda event: render.event_line(event, as_json()))


def register(cli: click.Group) -> None:
    """Add this module's commands to the top-level group."""
    for command in (status, host, vm, pool, events):
        cli.add_command(command)
