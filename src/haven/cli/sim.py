"""CLI commands: `haven sim ...` — the simulated cluster (no root needed)."""
from __future__ import annotations

import functools
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import click

from haven.cli.ops_client import EXIT_USAGE, CliError
from haven.cli.output import OUTPUT
from haven.cli.sim_serve import register_serve
from haven.model.load import ConfigError
from haven.sim.scenario import EXPECTED_FILE, load_scenario, run_scenario
from haven.sim.swarm import SwarmRun, run_seed, summarize


@click.group("sim")
def sim() -> None:
    """Run haven's real decision core on a simulated cluster in virtual time."""


def timeline_json(lines: list[str], violations: list[str], matches_expected: bool | None) -> None:
    """The JSON of `sim run` and `sim demo`: {"lines", "violations", "matches_expected"}; the
    last is null unless --check compared the timeline with the scenario's expected log."""
    click.echo(json.dumps({"lines": lines, "violations": violations, "matches_expected": matches_expected},
                          indent=2))


@sim.command("run")
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.option("--check", is_flag=True, help=f"Compare with the scenario's {EXPECTED_FILE}; exit 1 on a difference.")
@OUTPUT
def run(path: Path, check: bool, output: str) -> None:
    """Run the scenario at PATH (a folder with scenario.yaml, or a YAML file) and print its timeline."""
    try:
        result = run_scenario(load_scenario(path))
    except ConfigError as error:
        raise CliError(error.explain(), EXIT_USAGE) from None  # bad input: exit 2, as everywhere
    matches: bool | None = None
    if check:
        expected = (path / EXPECTED_FILE) if path.is_dir() else path.with_name(EXPECTED_FILE)
        matches = expected.exists() and expected.read_text().splitlines() == result.lines
    if output == "json":
        timeline_json(result.lines, result.violations, matches)
    else:
        click.echo("\n".join(result.lines))
    if result.violations:
        click.secho(f"{len(result.violations)} safety violation(s)", fg="red", err=True)
        sys.exit(1)
    if matches is False:
        click.secho(f"timeline differs from {expected}", fg="red", err=True)
        sys.exit(1)


@sim.command("demo")
@OUTPUT
def demo(output: str) -> None:
    """A simulated cluster: a host loses power, its VMs come back; then a live migration and a drain."""
    scenario = load_scenario(Path(__file__).parent.parent / "sim" / "demo.yaml")
    result = run_scenario(scenario)
    if output == "json":
        timeline_json(result.lines, result.violations, None)
    else:
        for line in result.lines:
            style = {"fault": "red", "operator": "cyan"}.get(line.split()[1])
            click.secho(line, fg=style, bold=style is not None)
        click.echo(f"\nsafety violations: {len(result.violations)}")
    if result.violations:
        sys.exit(1)


def _runs(seeds: range, jobs: int, services: bool = False, pairs: bool = False,
          failsafe: bool = False, fast_fencing: bool = False) -> list[SwarmRun]:
    run = functools.partial(run_seed, services=services, pairs=pairs, failsafe=failsafe, fast_fencing=fast_fencing)
    if jobs <= 1:
        return [run(seed) for seed in seeds]
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        return list(pool.map(run, seeds, chunksize=max(1, len(seeds) // (jobs * 8))))


@sim.command("swarm")
@click.option("--seeds", default=200, show_default=True, help="How many seeded random schedules to run.")
@click.option("--first", default=0, show_default=True, help="First seed.")
@click.option("--seed", type=int, default=None, help="Replay one seed.")
@click.option("--verbose", is_flag=True, help="With --seed: print the whole timeline.")
@click.option("--jobs", default=os.cpu_count() or 1, show_default=True, help="Worker processes.")
@click.option("--services", is_flag=True, help="Give every seed guest-cluster services and faults aimed at them.")
@click.option("--pairs", is_flag=True, help="Give every seed a replicated pair of hosts, VMs on it and faults "
              "aimed at it.")
@click.option("--failsafe", is_flag=True, help="Run every seed with the failsafe setting on, and store outages "
              "(full, partial, one side back first, with hosts isolated or off meanwhile).")
@click.option("--fast-fencing", is_flag=True, help="Give every host a fence device and every seed heartbeats "
              "(heartbeat_timeout_s 0.3-0.5 s), failing devices in some, and faults that stop heartbeats.")
@click.option("--json", "json_flag", is_flag=True, hidden=True, help="The same as -o json (kept for scripts).")
@OUTPUT
def swarm(seeds: int, first: int, seed: int | None, verbose: bool, jobs: int, services: bool, pairs: bool,
          failsafe: bool, fast_fencing: bool, json_flag: bool, output: str) -> None:
    """Run random fault schedules; report safety and liveness violations and the worst recovery.

    JSON: {runs, safety_violations, liveness_violations, worst_recovery_s, disk_double_attach,
    ip_double_raise, acknowledged_writes_lost, healthy_hosts_switched_off, failing_seeds, replay, seconds}
    (healthy_hosts_switched_off: power fences that cut a host whose daemon ran and reached the store)."""
    as_json = json_flag or output == "json"
    if as_json and verbose:
        raise click.UsageError("--verbose prints a timeline: it does not mix with -o json")
    started = time.perf_counter()
    if seed is not None:
        runs = [run_seed(seed, keep_log=verbose, services=services, pairs=pairs, failsafe=failsafe,
                         fast_fencing=fast_fencing)]
        if verbose:
            click.echo("faults: " + "; ".join(f"t={t:g} {line}" for t, line in runs[0].timeline))
            click.echo("\n".join(runs[0].lines))
    else:
        runs = _runs(range(first, first + seeds), jobs, services, pairs, failsafe, fast_fencing)
    summary = summarize(runs)
    summary["seconds"] = round(time.perf_counter() - started, 2)
    if as_json:
        click.echo(json.dumps(summary))
    else:
        click.echo(f"runs {summary['runs']}, safety violations {summary['safety_violations']}, "
                   f"liveness violations {summary['liveness_violations']}, worst recovery after healing "
                   f"{summary['worst_recovery_s']:.1f} s ({summary['seconds']} s)")
        for run_ in runs:
            for line in run_.safety + run_.liveness:
                click.echo(f"seed {run_.seed}: {line}")
        for command in summary["replay"]:
            click.echo(f"replay: {command}")
    if (summary["safety_violations"] or summary["liveness_violations"] or summary["disk_double_attach"]
            or summary["acknowledged_writes_lost"]):
        sys.exit(1)


def register(cli: click.Group) -> None:
    register_serve(sim)
    cli.add_command(sim)
