"""CLI commands: `haven plan ...` — what-if, capacity and topology planning."""
from __future__ import annotations

import json
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from haven.cli.ops_client import EXIT_USAGE, CliError
from haven.cli.output import OUTPUT
from haven.model.load import ConfigError, load_cluster_config, load_yaml_file, validate
from haven.model.spec import ClusterConfig, VmSpec

CONFIG = click.option("--config", "config_path", required=True,
                      type=click.Path(exists=True, dir_okay=False, path_type=Path),
                      help="A cluster declaration (YAML: settings, hosts, vms); VMs are placed as haven would.")


@click.group("plan")
def plan() -> None:
    """Plan ahead: host failures, spare capacity, host cluster vs guest clusters.

    For a running cluster the same planners answer at the API (`/api/v1/plan/...`)."""


def _cluster(path: Path) -> ClusterConfig:
    try:
        return load_cluster_config(path)
    except ConfigError as error:
        raise CliError(error.explain(), EXIT_USAGE) from None


@plan.command("what-if")
@CONFIG
@click.option("--fail", "fail", multiple=True, required=True, help="A host that dies (repeat for more).")
@OUTPUT
def what_if_command(config_path: Path, fail: tuple[str, ...], output: str) -> None:
    """What restarts where, what cannot, and how long it takes, if these hosts die now."""
    from haven.plan.present import from_config
    from haven.plan.whatif import what_if

    config = _cluster(config_path)
    try:
        report = what_if(config, from_config(config), list(fail))
    except ValueError as error:  # e.g. an unknown host: the user's input, so a usage error
        raise CliError(str(error), EXIT_USAGE) from None
    if output == "json":
        click.echo(json.dumps({"failed": report.failed, "worst_recovery_s": report.worst_recovery_s,
                               "lost": report.lost, "vms": [o.__dict__ for o in report.outcomes]}))
        return
    table = Table(title=f"if {', '.join(fail)} died now")
    for column in ("vm", "priority", "was on", "restarts on", "back after", "why not"):
        table.add_column(column)
    for o in report.outcomes:
        table.add_row(o.vm, str(o.priority), o.before, o.after or "-",
                      f"{o.recovery_s:.1f} s" if o.recovery_s is not None else "-", o.reason)
    Console().print(table)
    worst = f"{report.worst_recovery_s:.1f} s" if report.worst_recovery_s is not None else "-"
    click.echo(f"worst recovery {worst}; not restarted: {', '.join(report.lost) or 'none'}")


@plan.command("capacity")
@CONFIG
@click.option("--vm-size", required=True, help="The size of one more VM, e.g. '2x4096' (vCPUs x MiB).")
@OUTPUT
def capacity_command(config_path: Path, vm_size: str, output: str) -> None:
    """How many more VMs of a size fit while keeping the host-failure reserve."""
    from haven.plan.capacity import capacity
    from haven.plan.present import from_config

    try:
        vcpus, memory = (int(part) for part in vm_size.lower().split("x"))
        size = VmSpec(name="planned", vcpus=vcpus, memory_mib=memory)
    except ValueError:
        raise CliError("--vm-size takes VCPUSxMIB, e.g. 2x4096 (at least 72 MiB)", EXIT_USAGE) from None
    config = _cluster(config_path)
    report = capacity(config, from_config(config), size)
    if output == "json":
        click.echo(json.dumps(report.__dict__))
        return
    click.echo(f"{report.fits} more VM(s) of {vcpus} vCPU / {memory} MiB fit "
               f"(keeping room for {config.settings.host_failures_to_tolerate} host failure(s))")
    for host, count in report.per_host.items():
        click.echo(f"  {host}: {count}")
    click.echo(f"the next one does not: {report.limited_by}")


@plan.command("topology")
@click.option("-f", "--file", "path", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="YAML: workloads {count, vcpus, memory_mib}, hosts [...], licensing {model, price}.")
@OUTPUT
def topology_command(path: Path, output: str) -> None:
    """Host cluster (Diagram A) against guest clusters (Diagram B): instances, clusters, licences."""
    from haven.plan.topology import TopologyInput, compare

    try:
        data = validate(TopologyInput, load_yaml_file(path), str(path))
    except ConfigError as error:
        raise CliError(error.explain(), EXIT_USAGE) from None
    results = compare(data)
    if output == "json":
        click.echo(json.dumps([r.model_dump() for r in results]))
        return
    table = Table(title=f"{data.workloads.count} HA workloads on {len(data.hosts)} hosts "
                        f"({data.licensing.model.value} licences at {data.licensing.price:g})")
    for column in ("topology", "OS instances", "clusters", "licence cost", "host failures survived",
                   "dissimilar hosts"):
        table.add_column(column)
    for r in results:
        table.add_row(r.name, str(r.os_instances), str(r.clusters), f"{r.licence_cost:,.0f}",
                      str(r.host_failures_survived), r.dissimilar_hosts)
    Console().print(table)


def register(cli: click.Group) -> None:
    cli.add_command(plan)
