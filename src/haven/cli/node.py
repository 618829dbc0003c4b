"""CLI commands: `haven node ...` — run a real host."""
from __future__ import annotations

from pathlib import Path

import click

from haven.cli.ops_client import EXIT_USAGE, CliError
from haven.model.load import ConfigError


@click.group("node")
def node() -> None:
    """Run haven on a real host (root, QEMU, etcd)."""


@node.command("run")
@click.option("--config", "config_path", required=True, type=click.Path(exists=True, path_type=Path),
              help="The node's YAML configuration.")
def run(config_path: Path) -> None:
    """Run the host daemon: lease, agent, manager candidate and (if configured) the API."""
    from haven.daemon.config import load_node_config
    from haven.daemon.node import run_node

    try:
        config = load_node_config(config_path)
    except ConfigError as error:
        raise CliError(error.explain(), EXIT_USAGE) from None  # bad input: exit 2, as everywhere
    raise SystemExit(run_node(config))


@node.command("watchdog")
@click.option("--deadline-file", required=True, type=click.Path(path_type=Path),
              help="The file the agent writes its deadline to.")
@click.option("--run-dir", required=True, type=click.Path(path_type=Path),
              help="The host's QEMU run directory (pid files).")
def watchdog(deadline_file: Path, run_dir: Path) -> None:
    """The watchdog process: kills the host's QEMUs when the agent misses its deadline."""
    from haven.daemon.watchdog import run_watchdog

    run_watchdog(deadline_file, run_dir)


def register(cli: click.Group) -> None:
    cli.add_command(node)
