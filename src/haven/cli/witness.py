"""CLI command: `haven witness` — the third vote of a two-host pair (daemon.witness)."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import click

from haven.cli.ops_client import EXIT_USAGE, CliError


@click.command("witness")
@click.option("--name", default="witness", show_default=True, help="this member's name in the cluster")
@click.option("--address", required=True, help="the address the pair's hosts reach this machine at")
@click.option("--data-dir", type=click.Path(path_type=Path), default=Path("/var/lib/haven-witness"),
              show_default=True, help="etcd's data (small: the cluster's records)")
@click.option("--cluster", required=True,
              help="every member, e.g. h1=http://10.0.0.1:2380,h2=http://10.0.0.2:2380,witness=http://10.0.0.3:2380")
@click.option("--join", is_flag=True, help="the cluster runs already (add the member with etcdctl member add first)")
@click.option("--dry-run", is_flag=True, help="print the etcd command line and exit")
def witness(name: str, address: str, data_dir: Path, cluster: str, join: bool, dry_run: bool) -> None:
    """Run the witness of a two-host pair: an etcd member and nothing else, on any third machine.

    Two hosts cannot tell a dead peer from a broken link between them; the witness's vote lets the
    one that still reaches it carry on and fail VMs over, and without a quorum nobody does."""
    from haven.daemon.witness import Witness, WitnessConfigError

    member = Witness(name, address, data_dir, cluster, join)
    try:
        argv = member.argv(shutil.which("etcd") or "etcd")
    except WitnessConfigError as error:
        raise CliError(str(error), EXIT_USAGE) from None
    if dry_run:
        click.echo(" ".join(argv))
        return
    if shutil.which("etcd") is None:
        raise CliError("etcd is not installed: apt-get install etcd-server", EXIT_USAGE)
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.execvp(argv[0], argv)  # the member is the whole process: systemd supervises it directly


def register(cli: click.Group) -> None:
    cli.add_command(witness)
