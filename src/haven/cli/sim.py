"""CLI commands: `haven sim ...` — the simulated cluster (no root needed)."""
from __future__ import annotations

import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import click

from haven.cli.sim_serve import register_serve
from haven.model.load import ConfigError
from haven.sim.scenario import EXPECTED_FILE, load_scenario, run_scenario
from haven.sim.swarm import SwarmRun, run_seed, summarize


@click.group("sim")
def sim() -> None:
    """Run haven's real decision core on a simulated cluster in virtual time."""


@sim.command("run")
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.option("--check", is_flag=True, help=f"Compare with the scenario's {EXPECTED_FILE}; exit 1 on a difference.")
def run(path: Path, check: bool) -> None:
    """Run the scenario at PATH (a folder with scenario.yaml, or a YAML file) and print its timeline."""
    try:
        result = run_scenario(load_scenario(path))
    except ConfigError as error:
        raise click.ClickException(error.explain()) from None
    click.echo("\n".join(result.lines))
    if result.violations:
        click.secho(f"{len(result.violations)} safety violation(s)", fg="red", err=True)
        sys.exit(1)
    if check:
        expected = (path / EXPECTED_FILE) if path.is_dir() else path.with_name(EXPECTED_FILE)
        if not expected.exists() or expected.read_text().splitlines() != result.lines:
            click.secho(f"timeline differs from {expected}", fg="red", err=True)
            sys.exit(1)


@sim.command("demo")
def demo() -> None:
    """A simulated cluster: a host loses power, its VMs come back; then a live migration and a drain."""
    scenario = load_scenario(Path(__file__).parent.parent / "sim" / "demo.yaml")
    result = run_scenario(scenario)
    for line in result.lines:
        style = {"fault": "red", "operator": "cyan"}.get(line.split()[1])
        click.secho(line, fg=style, bold=style is not None)
    click.echo(f"\nsafety violations: {len(result.violations)}")
    if result.violations:
        sys.exit(1)


def _runs(seeds: range, jobs: int) -> list[SwarmRun]:
    if jobs <= 1:
        return [run_seed(seed) for seed in seeds]
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        return list(pool.map(run_seed, seeds, chunksize=max(1, len(seeds) // (jobs * 8))))


@sim.command("swarm")
@click.option("--seeds", default=200, show_default=True, help="How many seeded random schedules to run.")
@click.option("--first", default=0, show_default=True, help="First seed.")
@click.option("--seed", type=int, default=None, help="Replay one seed.")
@click.option("--verbose", is_flag=True, help="With --seed: print the whole timeline.")
@click.option("--jobs", default=os.cpu_count() or 1, show_default=True, help="Worker processes.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def swarm(seeds: int, first: int, seed: int | None, verbose: bool, jobs: int, as_json: bool) -> None:
    """Run random fault schedules; report safety and liveness violations and the worst recovery."""
    started = time.perf_counter()
    if seed is not None:
        runs = [run_seed(seed, keep_log=verbose)]
        if verbose:
            click.echo("faults: " + "; ".join(f"t={t:g} {line}" for t, line in runs[0].timeline))
            click.echo("\n".join(runs[0].lines))
    else:
        runs = _runs(range(first, first + seeds), jobs)
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
    if summary["safety_violations"] or summary["liveness_violations"]:
        sys.exit(1)


def register(cli: click.Group) -> None:
    register_serve(sim)
    cli.add_command(sim)
