"""`haven plan ...`: -o/--output text|json like the other commands, and exit 2 on bad input."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from haven.cli.main import cli

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
CLUSTER = str(EXAMPLES / "cluster.yaml")
TOPOLOGY = str(EXAMPLES / "topology.yaml")


def run(*args: str) -> Result:
    return CliRunner().invoke(cli, ["plan", *args])


@pytest.mark.parametrize("args", [
    ["what-if", "--config", CLUSTER, "--fail", "h1"],
    ["capacity", "--config", CLUSTER, "--vm-size", "2x4096"],
    ["topology", "-f", TOPOLOGY],
])
def test_output_text_and_json(args: list[str]) -> None:
    text = run(*args, "-o", "text")
    assert text.exit_code == 0, text.output
    assert not text.output.lstrip().startswith(("{", "["))
    data = run(*args, "-o", "json")
    assert data.exit_code == 0, data.output
    json.loads(data.output)
    assert run(*args, "--output", "json").output == data.output


@pytest.mark.parametrize("args,message", [
    (["what-if", "--config", CLUSTER, "--fail", "h9"], "h9"),
    (["capacity", "--config", CLUSTER, "--vm-size", "big"], "--vm-size takes VCPUSxMIB"),
    (["capacity", "--config", CLUSTER, "--vm-size", "2x4096", "-o", "yaml"], "'yaml' is not one of"),
    (["what-if", "--config", "EXAMPLES", "--fail", "h1"], "EXAMPLES"),
    (["what-if", "--config", str(EXAMPLES), "--fail", "h1"], "is a directory"),
    (["topology", "-f", CLUSTER], "is not valid"),
])
def test_bad_input_is_exit_2(args: list[str], message: str) -> None:
    result = run(*args)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output
