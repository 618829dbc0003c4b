"""Shell completion of VM and host names from the API: right names, and silence when it is away."""
from __future__ import annotations

import time

import pytest
from click.testing import CliRunner, Result

from haven.cli.main import cli

from .conftest import ADMIN


def complete(words: str, url: str, token: str = ADMIN, shell: str = "bash") -> Result:
    """What the shell's completion script gets for the command line `words` (Tab after its end)."""
    args = words.split(" ")
    env = {"_HAVEN_COMPLETE": f"{shell}_complete", "COMP_WORDS": words, "COMP_CWORD": str(len(args) - 1),
           "HAVEN_API": url, "HAVEN_TOKEN": token}
    return CliRunner().invoke(cli, [], env=env, prog_name="haven")


def names(result: Result) -> list[str]:
    # bash's protocol: one "type,value" line per candidate
    return [line.split(",", 1)[1] for line in result.output.splitlines()]


@pytest.mark.parametrize("words,expected", [
    ("haven vm show ", ["batch", "broken", "cache", "db", "web"]),
    ("haven vm migrate b", ["batch", "broken"]),
    ("haven vm stop w", ["web"]),
    ("haven host show ", ["h1", "h2", "h3"]),
    ("haven host resume h", ["h1", "h2", "h3"]),
    ("haven host drain h", ["h1", "h2", "h3"]),
    ("haven vm migrate web --to h", ["h1", "h2", "h3"]),
])
def test_names_come_from_the_api(live: str, words: str, expected: list[str]) -> None:
    result = complete(words, live)
    assert result.exit_code == 0, result.output
    assert names(result) == expected


def test_api_given_on_the_command_line_wins(live: str) -> None:
    result = complete(f"haven host show --api {live} h", "http://127.0.0.1:9")
    assert names(result) == ["h1", "h2", "h3"]


@pytest.mark.parametrize("url,token", [("http://127.0.0.1:9", ADMIN), ("not a url", ADMIN), (None, "wrong")])
def test_quiet_and_fast_without_the_api(live: str, url: str | None, token: str) -> None:
    started = time.monotonic()
    result = complete("haven vm show ", url or live, token)
    assert time.monotonic() - started < 3
    assert result.exit_code == 0 and result.output.strip() == ""  # no candidates, no message, no traceback
