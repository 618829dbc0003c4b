"""Golden scenarios: each folder under tests/scenarios/ is a cluster, a timeline of faults and
commands, and the log it must produce (docs/DESIGN.md section 9).

To accept a new log after checking it line by line:
    python -c "from haven.sim.scenario import load_scenario, run_scenario; \
print('\\n'.join(run_scenario(load_scenario('tests/scenarios/NAME')).lines))" > tests/scenarios/NAME/expected.log
"""
from __future__ import annotations

import difflib
from pathlib import Path

import pytest

from haven.model.load import ConfigError
from haven.sim.scenario import EXPECTED_FILE, SCENARIO_FILE, load_scenario, run_scenario

SCENARIOS = Path(__file__).parent / "scenarios"
FOLDERS = sorted(p for p in SCENARIOS.iterdir() if p.is_dir())


def test_there_are_enough_scenarios():
    assert len(FOLDERS) >= 30


@pytest.mark.parametrize("folder", FOLDERS, ids=[f.name for f in FOLDERS])
def test_scenario_matches_its_golden_log(folder: Path):
    result = run_scenario(load_scenario(folder))
    safety = [line for line in result.lines if "SAFETY" in line]
    assert not safety, "\n".join(safety)
    expected = (folder / EXPECTED_FILE).read_text().splitlines()
    if result.lines != expected:
        diff = difflib.unified_diff(expected, result.lines, f"{folder.name}/{EXPECTED_FILE}", "this run",
                                    lineterm="")
        pytest.fail("the log differs from the golden file:\n" + "\n".join(diff), pytrace=False)


@pytest.mark.parametrize("folder", FOLDERS, ids=[f.name for f in FOLDERS])
def test_scenario_folder_is_complete(folder: Path):
    assert (folder / SCENARIO_FILE).is_file()
    assert (folder / EXPECTED_FILE).is_file()
    readme = (folder / "README.md").read_text().strip().splitlines()
    assert len(readme) == 1 and readme[0], f"{folder.name}/README.md must be one line saying what it proves"


def test_a_scenario_run_twice_gives_the_same_log():
    folder = SCENARIOS / "manager-failover"
    first = run_scenario(load_scenario(folder)).lines
    second = run_scenario(load_scenario(folder)).lines
    assert first == second


def _write(tmp_path: Path, text: str) -> Path:
    (tmp_path / SCENARIO_FILE).write_text(text)
    return tmp_path


GOOD = """
hosts:
  - {name: h1, vcpus: 8, memory_mib: 4096}
  - {name: h2, vcpus: 8, memory_mib: 4096}
vms:
  - {name: web, memory_mib: 512, preferred_hosts: [h1]}
timeline:
  - {at: 5, do: power off h1}
until: 10
"""


def test_the_invalid_scenario_template_is_valid(tmp_path: Path):
    assert run_scenario(load_scenario(_write(tmp_path, GOOD))).safe


@pytest.mark.parametrize(("change", "message"), [
    (("until: 10", "untill: 10"), "untill: unknown field (check the spelling)"),
    (("memory_mib: 512,", "memory: 512,"), "vms[0].memory: unknown field"),
    (("do: power off h1", "do: explode h1"), "timeline at 5: unknown fault 'explode'; known: "),
    (("do: power off h1", "do: power off h9"), "timeline at 5: unknown host 'h9'; hosts: h1, h2"),
    (("do: power off h1", "do: power sideways h1"), "timeline at 5: usage: power on|off HOST"),
    (("[h1]", "[h9]"), "preferred host 'h9' is not a declared host"),
    (("at: 5", "at: 50"), "timeline step at 50 is after until 10"),
    (("until: 10", "fence_devices: [h9]\nuntil: 10"), "fence_devices: no host named 'h9'"),
    (("do: power off h1", "do: fence fails h1"), "timeline at 5: host h1 has no fencing device"),
])
def test_an_invalid_scenario_is_a_clear_config_error(tmp_path: Path, change: tuple[str, str], message: str):
    folder = _write(tmp_path, GOOD.replace(*change))
    with pytest.raises(ConfigError) as caught:
        run_scenario(load_scenario(folder))
    assert message in str(caught.value)
    assert caught.value.explain().count("\n") == len(caught.value.problems)  # one line per problem
