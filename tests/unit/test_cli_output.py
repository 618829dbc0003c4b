"""Every command that reports on the cluster takes -o/--output text|json, as the README says."""
from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from haven.cli.main import cli

ROOT = Path(__file__).resolve().parents[2]
SCENARIO = str(ROOT / "tests" / "scenarios" / "host-power-off")

# Commands that only act or run until stopped; the README lists the same ones.
WITHOUT_OUTPUT = {
    "node run", "node watchdog", "lab down", "lab crash", "lab isolate", "lab heal", "lab stop-agent",
    "lab cont-agent", "lab power-on", "lab hang-guest", "lab resume-guest", "lab demo",
    "lab cut-link", "lab heal-link", "lab witness", "witness",
}


def commands(group: click.Group, prefix: str = "") -> Iterator[tuple[str, click.Command]]:
    for name, command in sorted(group.commands.items()):
        if command.hidden:
            continue
        path = f"{prefix}{name}"
        if isinstance(command, click.Group):
            yield from commands(command, path + " ")
        else:
            yield path, command


def output_option(command: click.Command) -> click.Option | None:
    return next((p for p in command.params if isinstance(p, click.Option) and "--output" in p.opts), None)


def test_every_command_has_output_but_the_named_exceptions() -> None:
    every = dict(commands(cli))
    assert every.keys() >= WITHOUT_OUTPUT, "an exception names a command that does not exist"
    for path, command in every.items():
        option = output_option(command)
        if path in WITHOUT_OUTPUT:
            assert option is None, f"haven {path} has -o now: drop it from the exceptions (and the README)"
            continue
        assert option is not None, f"haven {path} has no -o/--output"
        assert "-o" in option.opts
        assert isinstance(option.type, click.Choice) and list(option.type.choices) == ["text", "json"]
        assert option.default == "text"


def test_the_readme_names_the_same_exceptions() -> None:
    text = " ".join((ROOT / "README.md").read_text().split())  # backticked names may wrap lines
    sentence = re.search(r"The commands without `-o` [^:]*:(.*?)\. ", text)
    assert sentence, "the README no longer lists the commands without -o"
    assert set(re.findall(r"`haven ([a-z -]+)`", sentence.group(1))) == WITHOUT_OUTPUT


def run_json(*args: str) -> object:
    result = CliRunner().invoke(cli, [*args, "-o", "json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_sim_run_json() -> None:
    data = run_json("sim", "run", SCENARIO, "--check")
    assert isinstance(data, dict) and data.keys() == {"lines", "violations", "matches_expected"}
    expected = (Path(SCENARIO) / "expected.log").read_text().splitlines()
    assert data["lines"] == expected and data["violations"] == [] and data["matches_expected"] is True
    assert run_json("sim", "run", SCENARIO)["matches_expected"] is None  # type: ignore[index]


def test_sim_demo_json() -> None:
    data = run_json("sim", "demo")
    assert isinstance(data, dict) and data["violations"] == [] and data["matches_expected"] is None
    assert any(" fault " in line for line in data["lines"])


def test_sim_swarm_json_and_its_old_flag() -> None:
    data = run_json("sim", "swarm", "--seeds", "2", "--jobs", "1")
    assert isinstance(data, dict) and data["runs"] == 2 and data["safety_violations"] == 0
    old = CliRunner().invoke(cli, ["sim", "swarm", "--seeds", "2", "--jobs", "1", "--json"])
    assert json.loads(old.stdout).keys() == data.keys()


def test_swarm_verbose_does_not_mix_with_json() -> None:
    result = CliRunner().invoke(cli, ["sim", "swarm", "--seed", "3", "--verbose", "-o", "json"])
    assert result.exit_code == 2 and "--verbose prints a timeline" in result.output


@pytest.mark.parametrize("args", [["sim", "run", SCENARIO], ["sim", "demo"]])
def test_text_output_is_the_timeline(args: list[str]) -> None:
    result = CliRunner().invoke(cli, [*args, "-o", "text"])
    assert result.exit_code == 0 and result.output.startswith("t=")


@pytest.mark.parametrize("extra", [["run"], ["serve", "--port", "0"]])
def test_a_bad_scenario_is_exit_2(extra: list[str], tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("hosts: [\n")
    result = CliRunner().invoke(cli, ["sim", *extra, str(bad)])
    assert result.exit_code == 2, result.output
    assert result.output.startswith(f"error: {bad} is not valid") and "Traceback" not in result.output
