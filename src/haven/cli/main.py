"""The `haven` command: one entry point, one sub-module per area."""
from __future__ import annotations

import click

from haven.cli import lab, node, ops, ops_service, plan, sim, witness


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="haven")
def cli() -> None:
    """haven keeps your virtual machines running across a cluster of KVM/QEMU hosts.

    Try it without root: `haven sim run tests/scenarios/host-power-off` prints a simulated
    host failure and the recovery; `haven sim serve ...` runs a simulated cluster with the API
    and dashboard.

    Shell completion (commands, VM, host and service names): eval "$(_HAVEN_COMPLETE=bash_source haven)"
    in ~/.bashrc; zsh_source for zsh, fish_source for fish (see the README).
    """


for module in (ops, ops_service, sim, plan, node, lab, witness):
    module.register(cli)


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
