"""How the CLI shows things: rich tables, event lines, and progress while waiting."""
from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import click
from rich.console import Console
from rich.markup import escape
from rich.padding import Padding
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from haven.cli.ops_client import EXIT_FAILED, ApiClient, CliError

POLL_S = 0.5
FACES = {"content": "(^_^)", "worried": "(o_o;)", "ill": "(x_x)"}
MOOD_STYLE = {"content": "green", "worried": "yellow", "ill": "red"}
STATE_STYLE = {"running": "green", "online": "green", "starting": "cyan", "migrating": "magenta",
               "stopping": "yellow", "maintenance": "blue", "recovering": "dark_orange", "lost": "dark_orange",
               "error": "bold red", "fenced": "red", "stopped": "dim", "offline": "dim", "pending": "dim",
               "moving": "magenta", "down": "bold red",  # service phases
               "healthy": "green", "booting": "cyan", "no report": "yellow",  # member conditions
               "in-sync": "green", "syncing": "cyan", "stale": "yellow"}  # replica copies


def console() -> Console:
    return Console(highlight=False, soft_wrap=True)


def styled(state: str) -> str:
    return f"[{STATE_STYLE.get(state, 'white')}]{state}[/]"


def mib(value: int) -> str:
    return f"{value / 1024:.1f} GiB" if value >= 1024 else f"{value} MiB"


def status(summary: dict[str, Any], hosts: list[dict[str, Any]]) -> None:
    out = console()
    p = summary["protection"]
    style = MOOD_STYLE.get(p["mood"], "white")
    sim = summary.get("simulation")
    clock = f"sim t={summary['time']:.1f} s" if sim else f"t={summary['time']:.1f}"
    out.print(f"[bold]cluster {summary['cluster']}[/]  manager: {summary['manager'] or '[red]none[/]'}  {clock}")
    out.print(f"[{style}]{FACES.get(p['mood'], '(?_?)')} {p['mood']} ({p['level']})[/]: {p['reason']}")

    def counts(d: dict[str, int]) -> str:
        return ", ".join(f"{styled(k)} {v}" for k, v in d.items() if v) or "none"

    out.print(f"hosts: {counts(summary['hosts'])}")
    out.print(f"VMs:   {counts(summary['vms'])}")
    if any(summary.get("services", {}).values()):  # absent from an older server's answer
        out.print(f"services: {counts(summary['services'])}")
    out.print(f"fence devices: {fence_devices(hosts)}")
    hosts_table(hosts)


def hosts_table(hosts: list[dict[str, Any]]) -> None:
    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in ("HOST", "STATE", "MEMORY", "VCPUS", "VMS", ""):
        table.add_column(column)
    for h in hosts:
        mem, cpu = h["memory_mib"], h["vcpus"]
        table.add_row(h["name"], styled(h["state"]), f"{mib(mem['used'])} / {mib(mem['total'])}",
                      f"{cpu['used']} / {cpu['total']}", ", ".join(h["vms"]) or "-", host_notes(h))
    console().print(table)


def host_notes(h: dict[str, Any]) -> str:
    """What the state alone does not say. The STATE column keeps the words of
    `model.state.HostState` (the ones events use): a drain is `maintenance` with VMs still to move."""
    notes = ["manager"] if h["manager"] else []
    if h["draining"]:
        notes.append("VMs moving out")
    if (h.get("fence_device") or {}).get("ok") is False:
        notes.append("fence device failing")
    return ", ".join(notes)


def fence_devices(hosts: list[dict[str, Any]]) -> str:
    """Each host's fence device by its last check, failing ones first, in a line; `host show`
    gives the device's own words."""
    checks = {h["name"]: h.get("fence_device") for h in hosts}  # absent from an older server's answer
    failing = [name for name, c in checks.items() if c and not c["ok"]]
    ok = [name for name, c in checks.items() if c and c["ok"]]
    none = [name for name, c in checks.items() if not c]
    parts = ([f"[red]failing[/] {', '.join(failing)}"] if failing else []) + \
        ([f"[green]ok[/] {', '.join(ok)}"] if ok else []) + ([f"none {', '.join(none)}"] if none else [])
    return "; ".join(parts) or "none"


def fence_line(h: dict[str, Any]) -> str:
    check = h.get("fence_device")
    if not check:
        return "none (recovery waits for lease expiry + grace)"
    return f"{'[green]ok[/]' if check['ok'] else '[red]failing[/]'}: {check['detail']}"


def host_detail(h: dict[str, Any]) -> None:
    out = console()
    out.print(f"[bold]host {h['name']}[/]: {styled(h['state'])}{'  (manager)' if h['manager'] else ''}")
    if h["reason"]:
        out.print(f"  reason:      {h['reason']}")
    spec = h["spec"]
    out.print(f"  address:     {spec['address']}")
    out.print(f"  memory:      {mib(h['memory_mib']['used'])} used of {mib(h['memory_mib']['total'])} "
              f"({mib(h['memory_reserve_mib'])} reserved)")
    out.print(f"  vCPUs:       {h['vcpus']['used']} used of {h['vcpus']['total']}")
    out.print(f"  CPU:         {spec['cpu_vendor']}, models {', '.join(spec['cpu_models'])}")
    out.print(f"  pools:       {', '.join(spec['pools'])}")
    maintenance = "no"
    if h["maintenance_requested"]:
        maintenance = f"requested, moving {len(h['vms'])} VM(s) away" if h["draining"] else "requested"
    out.print(f"  maintenance: {maintenance}")
    out.print(f"  VMs:         {', '.join(h['vms']) or '-'}")
    out.print(f"  fence device: {fence_line(h)}")


def vms_table(vms: list[dict[str, Any]]) -> None:
    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in ("VM", "STATE", "HOST", "MEMORY", "VCPUS", "PRIORITY", "DESIRED"):
        table.add_column(column)
    for v in vms:
        spec = v["spec"]
        table.add_row(v["name"], styled(v["state"]), v["host"] or "-", mib(spec["memory_mib"]),
                      str(spec["vcpus"]), str(spec["priority"]), v["desired"])
    console().print(table)


def vm_detail(v: dict[str, Any], history: list[dict[str, Any]]) -> None:
    out = console()
    spec, placement = v["spec"], v["placement"]
    out.print(f"[bold]vm {v['name']}[/]: {styled(v['state'])}" + (f" on {v['host']}" if v["host"] else ""))
    if v["reason"]:
        out.print(f"  reason:     {v['reason']}")
    out.print(f"  desired:    {v['desired']}   priority {spec['priority']}{'' if v['ha'] else ' (not HA)'}")
    out.print(f"  size:       {spec['vcpus']} vCPU, {mib(spec['memory_mib'])}, CPU model {spec['cpu_model']}")
    if placement:
        out.print(f"  generation: {placement['generation']}")
        if placement.get("migration"):
            m = placement["migration"]
            out.print(f"  migration:  {m['kind']} {m['source']} -> {m['target']}")
    for status in v["statuses"]:
        out.print(f"  agent {status['host']}: {status['state']} (generation {status['generation']})")
    if v["request"]:
        r = v["request"]
        out.print(f"  pending:    {r['action']} {r.get('kind', '')} {r.get('target') or ''} ({r['id']})")
    if v.get("replicas"):  # absent from an older server's answer
        replicas_block(out, v["replicas"])
    if history:
        out.print("  history:")
        for event in history:
            out.print(f"    {event['line']}", markup=False)


def duration(seconds: float) -> str:
    """An age as people read it: 45 s, 12 min, 3 h 5 min, 2 d 4 h."""
    s = int(max(0.0, seconds))
    if s < 120:
        return f"{s} s"
    if s < 7200:
        return f"{s // 60} min"
    if s < 172800:
        return f"{s // 3600} h {s % 3600 // 60} min"
    return f"{s // 86400} d {s % 86400 // 3600} h"


def copy_age(c: dict[str, Any]) -> str:
    """'since t=40.0 (1 min ago)'; the age is on the API's clock."""
    ago = f" ({duration(c['age_s'])} ago)" if c.get("age_s") is not None else ""
    return f"since t={c['since']:.1f}{ago}"


def copy_state(c: dict[str, Any]) -> str:
    """'in-sync', 'syncing 40%' (rounded down: 99.9% is not done)."""
    if c["state"] == "syncing" and c.get("progress") is not None:
        return f"syncing {int(c['progress'] * 100)}%"
    return c["state"]


def replicas_block(out: Console, r: dict[str, Any]) -> None:
    protected = "[green]protected[/]" if r["protected"] else "[yellow]not protected[/]: a copy is not in sync"
    out.print("  replicas:")
    out.print(f"    primary:    {r['primary']} ({protected})")
    for c in r["copies"]:
        reason = f"  {escape(c['reason'])}" if c["reason"] else ""
        out.print(f"    disk {c['disk']}:     copy on {c['host']}: "
                  f"[{STATE_STYLE.get(c['state'], 'white')}]{copy_state(c)}[/] {copy_age(c)}{reason}")
    if r.get("incoming"):
        out.print(f"    incoming:   {r['incoming']} (a migration is under way)")
    if r.get("promoted_at") is not None:
        out.print(f"    promoted:   at t={r['promoted_at']:.1f} (the operator accepted the loss of the "
                  "writes its copy lacked)")
    out.print(f"    write without replica: {'yes' if r['write_without_replica'] else 'no'}")


def staleness(c: dict[str, Any]) -> str:
    """How stale a copy is, in a sentence's middle: 'stale since t=40.0 (1 min ago): h2 lost'."""
    return f"{copy_state(c)} {copy_age(c)}" + (f": {c['reason']}" if c["reason"] else "")


def pools_table(pools: list[dict[str, Any]]) -> None:
    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in ("POOL", "KIND", "HOSTS", "VMS", ""):
        table.add_column(column)
    for p in pools:
        table.add_row(p["name"], p["kind"], ", ".join(p["hosts"]) or "-", ", ".join(p["vms"]) or "-",
                      "" if p["declared"] else "[dim]not declared[/]")
    console().print(table)


def services_table(services: list[dict[str, Any]]) -> None:
    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in ("SERVICE", "PHASE", "ACTIVE", "HOST", "STANDBYS", "FLOATING IP", "DESIRED"):
        table.add_column(column)
    for s in services:
        table.add_row(s["name"], styled(s["phase"]), s["active"] or "-", s["active_host"] or "-",
                      ", ".join(s["standbys"]) or "[yellow]none healthy[/]", s["floating_ip"], s["desired"])
    console().print(table)


def member_role(service: dict[str, Any], member: dict[str, Any]) -> str:
    if member["active"]:
        return "[bold]active[/]"
    return "standby" if member["name"] in service["standbys"] else "-"


def member_holds(member: dict[str, Any]) -> str:
    held = [word for word, on in (("disk", member["holds_disk"]), ("mounted", member["disk_mounted"]),
                                  ("IP", member["holds_ip"]), ("app", member["app_started"])) if on]
    return ", ".join(held) or "-"


def service_detail(s: dict[str, Any], history: list[dict[str, Any]]) -> None:
    out = console()
    spec = s["spec"]
    where = f" on {s['active']}" + (f" ({s['active_host']})" if s["active_host"] else "") if s["active"] else ""
    out.print(f"[bold]service {s['name']}[/]: {styled(s['phase'])}{where}")
    if s["reason"]:
        out.print(f"  reason:      {s['reason']}", markup=False)
    out.print(f"  desired:     {s['desired']}   generation {s['generation']}")
    out.print(f"  floating IP: {s['floating_ip']}")
    disk = spec.get("data_disk")
    if disk:
        out.print(f"  data disk:   pool {disk['pool']}, {disk.get('file') or s['name'] + '-data.qcow2'}, "
                  f"mounted at {spec['mount_point']}")
    out.print(f"  standbys:    {', '.join(s['standbys']) or '[yellow]none healthy[/]'}")
    out.print(f"  check:       every {spec['check_interval_s']:g} s, moves after {spec['failure_threshold']} "
              "failures in a row")
    if s["request"]:
        r = s["request"]
        out.print(f"  pending:     {r['action']} to {r.get('target') or 'the best other member'} ({r['id']})")
    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in ("MEMBER", "ROLE", "HOST", "CONDITION", "QEMU", "GUEST", "HOLDS", "CHECKS", "DETAIL"):
        table.add_column(column)
    for m in s["members"]:
        host = f"{m['host']} ({m['host_state']})" if m["host"] and m["host_state"] != "online" else m["host"] or "-"
        table.add_row(m["name"], member_role(s, m), host, styled(m["condition"]), "yes" if m["qemu"] else "no",
                      m["guest"] or "-", member_holds(m), str(m["check_failures"]), escape(m["detail"] or ""))
    out.print("  members:")
    out.print(Padding(table, (0, 0, 0, 4), expand=False))
    if history:
        out.print("  history:")
        for event in history:
            out.print(f"    {event['line']}", markup=False)


def event_line(event: dict[str, Any], as_json: bool) -> None:
    # click.echo flushes each line, so `haven events -f | grep ...` sees it at once.
    click.echo(json.dumps(event) if as_json else event["line"])


def timing(result: dict[str, Any]) -> str:
    text = f"{result['seconds']:.1f} s"
    cluster = result.get("cluster_seconds")
    if cluster is not None and abs(cluster - result["seconds"]) > 0.05:
        text += f" (cluster clock {cluster:.1f} s)"
    return text


def _cluster_time(api: ApiClient) -> float | None:
    try:
        return float(api.get("/api/v1/summary")["time"])
    except (CliError, KeyError, TypeError, ValueError):
        return None


def wait(what: str, total: int | None, timeout: float, api: ApiClient,
         step: Callable[[], tuple[int, str, bool]]) -> dict[str, Any]:
    """Poll `step` -> (completed, detail, done) under a progress display on stderr until done.
    Returns the timing; raises CliError on timeout."""
    started, cluster_started = time.monotonic(), _cluster_time(api)
    columns = [SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
               TextColumn("{task.fields[detail]}"), TimeElapsedColumn()]
    with Progress(*columns, console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task(what, total=max(total, 1) if total is not None else None, detail="requested")
        while True:
            completed, detail, done = step()
            progress.update(task, completed=completed, detail=detail)
            if done:
                if total is not None:
                    progress.update(task, completed=max(total, 1))
                break
            if time.monotonic() - started > timeout:
                raise CliError(f"gave up waiting after {timeout:g} s for the {what} ({detail}); it may "
                               "still finish in the cluster", EXIT_FAILED)
            time.sleep(POLL_S)
    seconds = time.monotonic() - started
    cluster_now = _cluster_time(api)
    cluster = cluster_now - cluster_started if cluster_now is not None and cluster_started is not None else None
    return {"result": "succeeded", "seconds": round(seconds, 3),
            "cluster_seconds": round(cluster, 3) if cluster is not None else None}
