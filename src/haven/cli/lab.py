"""CLI commands: `haven lab ...` — a real cluster on this machine (root, QEMU, etcd).

`up` starts a detached supervisor (`haven lab supervise`) that keeps the lab running after the
command returns and serves the fault commands; `down` stops it and cleans up after it, also if
it died. `demo` runs the whole story in-process and prints measured times.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import click

from haven.cli.output import OUTPUT

UP_TIMEOUT_S = 600.0


class LabCliError(click.ClickException):
    def show(self, file: Any = None) -> None:
        click.echo(f"error: {self.message}", err=True)


def _need_root() -> None:
    if os.geteuid() != 0:
        raise LabCliError("haven lab needs root (network namespaces, taps, QEMU): run it with sudo")


def _need_tools() -> None:
    missing = [b for b in ("qemu-system-x86_64", "etcd", "ip") if shutil.which(b) is None]
    if missing:
        raise LabCliError(f"not installed: {', '.join(missing)} (run scripts/install.sh)")


def _running_state() -> dict[str, Any]:
    """The state of a lab that is up, or a one-line error."""
    from haven.lab.supervisor import read_state, supervisor_alive

    state = read_state()
    if state is None:
        raise LabCliError("the lab is not up (start it with `haven lab up`)")
    if not supervisor_alive(state):
        raise LabCliError("the lab's supervisor is gone (clean up with `haven lab down`)")
    if state.get("status") == "starting":
        raise LabCliError("the lab is still coming up (see `haven lab status` in a moment)")
    if state.get("status") != "up":
        raise LabCliError(f"the lab is {state.get('status')} (clean up with `haven lab down`)")
    return state


@click.group("lab")
def lab() -> None:
    """A real haven cluster on this machine: hosts as network namespaces, real QEMU guests.

    Needs root, QEMU and etcd (scripts/install.sh). `haven lab up` leaves it running; inject
    faults with crash/isolate/heal/stop-agent/cont-agent/power-on; `haven lab down` removes it.
    """


@lab.command("up")
@click.option("--hosts", type=click.IntRange(2, 8), default=3, show_default=True, help="number of hosts")
@click.option("--vms", type=click.IntRange(0, 20), default=3, show_default=True, help="number of HA VMs (128 MiB)")
@click.option("--services", type=click.IntRange(0, 8), default=0, show_default=True,
              help="guest-cluster services of the demo application, two members (128 MiB each) on two hosts")
@click.option("--pair", is_flag=True, help="two hosts and a witness, no shared storage: the VMs' disks are "
              "replicated between the hosts (--hosts is then 2)")
@click.option("--fencing", is_flag=True, help="a BMC per host (ipmi_sim, real IPMI) that fence_ipmilan switches: "
              "power fencing, `haven host power-on`")
@click.option("--fast", is_flag=True, help="the fast timing profile (a 1 s lease, a tuned etcd, fast fencing on "
              "heartbeats); implies --fencing")
@OUTPUT
def up(hosts: int, vms: int, services: int, pair: bool, fencing: bool, fast: bool, output: str) -> None:
    """Bring the lab up and leave it running (a detached supervisor keeps it).

    JSON: {state_file, hosts: {name: {address, namespace}}, vms: {name: {address, mac}}, api: {url,
    host, admin_token, read_token}, client_namespace}; progress goes to stderr."""
    from haven.lab.supervisor import ROOT, STATE_FILE, cleanup, read_state, supervisor_alive

    _need_root()
    _need_tools()
    if pair and (fencing or fast):
        raise LabCliError("--fencing and --fast need the shared-pool lab: drop --pair")
    state = read_state()
    if state is not None:
        if supervisor_alive(state):
            raise LabCliError(f"the lab is already {state.get('status', 'up')} (`haven lab down` first)")
        cleanup(state)  # a dead supervisor's leftovers
    ROOT.mkdir(parents=True, exist_ok=True)
    log_path = ROOT / "supervisor.log"
    started = time.monotonic()
    with open(log_path, "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "haven.cli.main", "lab", "supervise", "--hosts", str(hosts),
                                 "--vms", str(vms), "--services", str(services), *(["--pair"] if pair else []),
                                 *(["--fencing"] if fencing else []), *(["--fast"] if fast else [])],
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, cwd="/")
    with_services = f", {services} services" if services else ""
    if pair:
        hosts, with_services = 2, with_services + ", replicated disks and a witness"
    click.echo(f"bringing up {hosts} hosts, {vms} VMs{with_services} (supervisor {proc.pid}, log {log_path}) ...",
               err=output == "json")
    try:
        while True:
            time.sleep(0.3)
            state = read_state()
            status = state.get("status") if state and state.get("supervisor_pid") == proc.pid else None
            if status == "up":
                break
            if status == "failed" or proc.poll() is not None:
                why = (state or {}).get("error") or f"the supervisor exited ({proc.poll()})"
                if proc.poll() is None:
                    proc.wait(timeout=60)
                cleanup(read_state())
                raise LabCliError(f"lab up failed: {why} (see {log_path})")
            if time.monotonic() - started > UP_TIMEOUT_S:
                raise LabCliError(f"lab up timed out after {UP_TIMEOUT_S:g} s (see {log_path}; `haven lab down`)")
    except KeyboardInterrupt:
        click.echo("interrupted: tearing the lab down", err=True)
        _down()
        raise SystemExit(130) from None
    assert state is not None
    click.echo(f"lab up in {time.monotonic() - started:.0f} s (state {STATE_FILE})", err=output == "json")
    if output == "json":
        click.echo(json.dumps(_up_data(state, STATE_FILE), indent=2))
    else:
        _summary(state)


def _up_data(state: dict[str, Any], state_file: Path) -> dict[str, Any]:
    return {"state_file": str(state_file),
            "hosts": {name: {"address": h["address"], "namespace": h["namespace"]}
                      for name, h in state["hosts"].items()},
            "vms": {name: {"address": vm["address"], "mac": vm["mac"]} for name, vm in state["vms"].items()},
            "api": state["api"], "client_namespace": state["client_namespace"],
            "services": state.get("services") or {}}


def _summary(state: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    out = Console(highlight=False, soft_wrap=True)
    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in ("HOST", "MANAGEMENT", "NAMESPACE"):
        table.add_column(column)
    for name, host in state["hosts"].items():
        table.add_row(name, host["address"], host["namespace"])
    out.print(table)
    vms = Table(box=None, header_style="bold", pad_edge=False)
    for column in ("VM", "ADDRESS", "MAC"):
        vms.add_column(column)
    for name, vm in state["vms"].items():
        vms.add_row(name, vm["address"], vm["mac"] or "-")
    out.print(vms)
    services = state.get("services") or {}
    if services:
        table = Table(box=None, header_style="bold", pad_edge=False)
        for column in ("SERVICE", "URL", "MEMBERS"):
            table.add_column(column)
        for name, service in services.items():
            table.add_row(name, service["url"], ", ".join(service["members"]))
        out.print(table)
    api = state["api"]
    out.print(f"API (on {api['host']}): export HAVEN_API={api['url']} HAVEN_TOKEN={api['admin_token']}")
    out.print(f"probe a VM: ip netns exec {state['client_namespace']} busybox wget -qO- "
              f"http://{next(iter(state['vms'].values()))['address'] if state['vms'] else '<vm>'}/")
    out.print("faults: haven lab crash|isolate|heal|stop-agent|cont-agent|power-on HOST;  "
              "haven lab hang-guest|resume-guest VM;  haven lab status;  haven lab down")
    if state.get("pair"):
        out.print("the pair: haven lab cut-link|heal-link h1 h2;  haven lab witness down|up")


@lab.command("down")
def down() -> None:
    """Stop the lab and remove every namespace, bridge, process and run file (also after a failure)."""
    _need_root()
    _down()


def _down() -> None:
    from haven.lab.supervisor import cleanup, read_state, stop_supervisor, supervisor_alive

    state = read_state()
    went = None
    if state is not None and supervisor_alive(state):
        click.echo(f"stopping the supervisor (pid {state['supervisor_pid']}) ...")
        went = stop_supervisor(state)
    left = read_state()  # a supervisor that tore down by itself removed its state file
    done = cleanup(left or state, sweep=left is not None or went is not True)
    if went is False:
        click.echo("the supervisor did not stop in time: killed it")
    for line in done:
        click.echo(f"  {line}")
    click.echo("lab down" if state is not None or done else "lab: nothing to tear down")


@lab.command("status")
@OUTPUT
def status(output: str) -> None:
    """Hosts and VMs of the running lab, from the store.

    JSON: {status, slot, up_s, manager, api, hosts: [{name, address, state, lease, daemon, isolated,
    vms, manager}], vms: [{name, state, host, generation, address, qemu_on, reason}]}."""
    _need_root()
    from haven.lab.supervisor import read_state, supervisor_alive

    state = read_state()
    if state is None:
        raise LabCliError("the lab is not up (start it with `haven lab up`)")
    if not supervisor_alive(state):
        raise LabCliError("the lab's supervisor is gone (clean up with `haven lab down`)")
    if state.get("status") != "up":
        if output == "json":
            click.echo(json.dumps({"status": state.get("status"), "supervisor_pid": state["supervisor_pid"],
                                   "log": state["log"]}, indent=2))
        else:
            click.echo(f"lab {state.get('status')} (supervisor pid {state['supervisor_pid']}, log {state['log']})")
        return
    data = _status_data(state)
    if output == "json":
        click.echo(json.dumps(data, indent=2))
    else:
        _print_status(data)


def _status_data(state: dict[str, Any]) -> dict[str, Any]:
    from haven.core.protection import host_state
    from haven.drivers.etcd_store import EtcdStore
    from haven.lab.supervisor import pid_state
    from haven.ports.store import StoreError
    from haven.runtime.layout import Layout, read_snapshot

    store = EtcdStore(state["etcd"]["endpoints"], timeout=1.0)
    try:
        snap = read_snapshot(store, Layout(state["cluster"]), with_events=False)
    except StoreError as exc:
        raise LabCliError(f"cannot read the lab's store: {exc}") from None
    finally:
        store.close()
    view = snap.view()
    hosts = []
    for name, host in state["hosts"].items():
        # host_state: the words `haven host list` and the events use (a drain is `maintenance`).
        hosts.append({"name": name, "address": host["address"],
                      "state": host_state(view.hosts[name]).value if name in view.hosts else None,
                      "lease": name in snap.alive, "daemon": pid_state(host.get("daemon_pid")),
                      "isolated": bool(host.get("isolated")),
                      "vms": sorted(vm for vm, p in snap.placements.items() if p.host == name),
                      "manager": snap.manager == name})
    vms = []
    for name in sorted(snap.specs):
        p = snap.placements.get(name)
        vms.append({"name": name, "state": p.state.value if p else None, "host": p.host if p else None,
                    "generation": p.generation if p else None,
                    "address": state["vms"].get(name, {}).get("address"),
                    "qemu_on": [h for h, host in state["hosts"].items()
                                if _qemu_running(Path(host["run_dir"]), name)],
                    "reason": (p.reason if p else "") or ""})
    return {"status": "up", "slot": state["slot"], "up_s": round(time.time() - state["started"], 1),
            "manager": snap.manager, "api": state["api"]["url"], "hosts": hosts, "vms": vms}


def _print_status(data: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    from haven.cli.ops_render import styled

    out = Console(highlight=False, soft_wrap=True)
    out.print(f"[bold]lab[/] slot {data['slot']}, up {data['up_s'] / 60:.0f} min, "
              f"manager: {data['manager'] or '[red]none[/]'}, API {data['api']}")
    hosts = Table(box=None, header_style="bold", pad_edge=False)
    for column in ("HOST", "ADDRESS", "STATE", "LEASE", "DAEMON", "NETWORK", "VMS", ""):
        hosts.add_column(column)
    for host in data["hosts"]:
        hosts.add_row(host["name"], host["address"], styled(host["state"]) if host["state"] else "-",
                      "[green]held[/]" if host["lease"] else "[red]none[/]",
                      {"running": "[green]running[/]", "stopped": "[yellow]SIGSTOPped[/]"}.get(host["daemon"],
                                                                                            "[red]down[/]"),
                      "[red]isolated[/]" if host["isolated"] else "ok", ", ".join(host["vms"]) or "-",
                      "manager" if host["manager"] else "")
    out.print(hosts)
    vms_table = Table(box=None, header_style="bold", pad_edge=False)
    for column in ("VM", "STATE", "HOST", "GEN", "ADDRESS", "QEMU ON", "REASON"):
        vms_table.add_column(column)
    for vm in data["vms"]:
        vms_table.add_row(vm["name"], styled(vm["state"]) if vm["state"] else "-", vm["host"] or "-",
                          str(vm["generation"]) if vm["generation"] is not None else "-", vm["address"] or "-",
                          ", ".join(vm["qemu_on"]) or "-", vm["reason"])
    out.print(vms_table)


def _qemu_running(run_dir: Path, vm: str) -> bool:
    try:
        pid = int((run_dir / "vms" / vm / "qemu.pid").read_text().strip())
        return b"qemu-system" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return False


def _fault(cmd: str, target: str, kind: str = "hosts") -> None:
    """Ask the supervisor to inject `cmd` on `target`, one of the lab's `kind` ("hosts" or "vms")."""
    _need_root()
    from haven.lab.supervisor import send_command

    known = _running_state().get(kind) or {}
    if target not in known:
        noun = "host" if kind == "hosts" else "VM"
        raise LabCliError(f"unknown {noun} {target!r} ({noun}s: {', '.join(sorted(known))})")
    try:
        reply = send_command(cmd, target)
    except OSError as exc:
        raise LabCliError(f"the lab's supervisor does not answer ({exc}); `haven lab down` cleans up") from None
    if not reply.get("ok"):
        raise LabCliError(reply.get("error", "failed"))
    click.echo(reply.get("message", "done"))


def _fault_command(cmd: str, help_text: str) -> None:
    @lab.command(cmd, help=help_text)
    @click.argument("host")
    def command(host: str) -> None:
        _fault(cmd, host)


_fault_command("crash", "Power-cut HOST: kill its daemon, watchdog and QEMUs at once.")
_fault_command("isolate", "Cut HOST's management leg (store, peers); its VM network stays.")
_fault_command("heal", "Bring HOST's network legs back up.")
_fault_command("stop-agent", "SIGSTOP HOST's daemon (a hung agent); its watchdog keeps running.")
_fault_command("cont-agent", "SIGCONT HOST's daemon.")
_fault_command("power-on", "Boot a crashed HOST again: a fresh daemon and watchdog.")


@lab.command("hang-guest")
@click.argument("vm")
def hang_guest(vm: str) -> None:
    """Hang VM's guest OS: its vCPUs stop, its QEMU stays (the guest agent goes silent)."""
    _fault("hang-guest", vm, "vms")


@lab.command("resume-guest")
@click.argument("vm")
def resume_guest(vm: str) -> None:
    """Let a hung guest run again."""
    _fault("resume-guest", vm, "vms")


def _link_command(cmd: str, help_text: str) -> None:
    @lab.command(cmd, help=help_text)
    @click.argument("host_a")
    @click.argument("host_b")
    def command(host_a: str, host_b: str) -> None:
        state = _running_state()
        if not state.get("pair"):
            raise LabCliError(f"{cmd} needs a pair lab (`haven lab up --pair`)")
        if sorted((host_a, host_b)) != sorted(state.get("hosts") or {}):
            raise LabCliError(f"the pair is {' and '.join(sorted(state.get('hosts') or {}))}: "
                              f"haven lab {cmd} {' '.join(sorted(state.get('hosts') or {}))}")
        _fault(cmd, host_a)


_link_command("cut-link", "Cut the pair's direct link (HOST_A HOST_B); both keep their path to the witness.")
_link_command("heal-link", "Bring the pair's direct link back.")


@lab.command("witness")
@click.argument("state", type=click.Choice(["down", "up"]))
def witness(state: str) -> None:
    """Stop or restart the pair lab's witness (its etcd member: the third vote)."""
    if not _running_state().get("pair"):
        raise LabCliError("witness needs a pair lab (`haven lab up --pair`)")
    _fault(f"witness-{state}", next(iter(_running_state().get("hosts") or {"h1": None})))


@lab.command("supervise", hidden=True)
@click.option("--hosts", type=click.IntRange(2, 8), default=3)
@click.option("--vms", type=click.IntRange(0, 20), default=3)
@click.option("--services", type=click.IntRange(0, 8), default=0)
@click.option("--pair", is_flag=True)
@click.option("--fencing", is_flag=True)
@click.option("--fast", is_flag=True)
def supervise(hosts: int, vms: int, services: int, pair: bool, fencing: bool, fast: bool) -> None:
    """Keep a lab running (started detached by `haven lab up`)."""
    _need_root()
    from haven.lab.supervisor import Supervisor

    raise SystemExit(Supervisor(hosts, vms, services=services, pair=pair, fencing=fencing or fast, fast=fast).run())


@lab.command("demo")
@click.option("--keep", is_flag=True, help="leave the lab up after the report, until Ctrl-C")
@click.option("--vms", type=click.IntRange(2, 6), default=4, show_default=True, help="HA VMs (128 MiB each)")
def demo(keep: bool, vms: int) -> None:
    """The real thing: a 3-host lab, a host crash, a live and a quick migration, measured."""
    _need_root()
    _need_tools()
    from haven.lab.demo import run_demo

    raise SystemExit(run_demo(keep=keep, vms=vms))


def register(cli: click.Group) -> None:
    """Add this module's commands to the top-level group."""
    cli.add_command(lab)
