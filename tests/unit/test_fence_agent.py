"""FenceAgentFencer and the fence device model, against a fake fence agent.

The fake (written to a temporary directory as `fake_fence_agent`) speaks the agents' stdin
interface: it records every run's `key=value` lines and answers per its scenario file:
  works     off -> the power goes off; status -> 0 (on) or 2 (off)
  stays-on  off -> exits 0, but the power stays on (status keeps answering 0)
  hangs     never answers; starts a helper (as fence_ipmilan starts ipmitool) that holds its output
  fails     every action exits 1 ("Unable to connect/login to fencing device")
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from haven.drivers.fence_agent import FenceAgentFencer, Power
from haven.model.fencing import FenceDevice, FencingConfig

FAKE_AGENT = f"""#!{sys.executable}
import json, os, subprocess, sys, time
here = os.path.dirname(os.path.abspath(__file__))
options = dict(line.rstrip("\\n").split("=", 1) for line in sys.stdin if "=" in line)
with open(os.path.join(here, "runs.jsonl"), "a") as f:
    f.write(json.dumps({{"argv": sys.argv[1:], "options": options}}) + "\\n")
scenario = open(os.path.join(here, "scenario")).read().strip()
power = os.path.join(here, "power")
action = options.get("action")
if scenario == "hangs":
    helper = subprocess.Popen(["sleep", "60"])
    open(os.path.join(here, "helper.pid"), "w").write(str(helper.pid))
    time.sleep(60)
if scenario == "fails":
    print("Failed: Unable to connect/login to fencing device", file=sys.stderr)
    sys.exit(1)
state = open(power).read().strip() if os.path.exists(power) else "on"
if action == "off":
    if scenario == "works":
        open(power, "w").write("off")
    print("Success: Powered OFF")
elif action == "on":
    open(power, "w").write("on")
    print("Success: Powered ON")
elif action == "status":
    print("Status: " + state.upper())
    sys.exit(2 if state == "off" else 0)
"""


@pytest.fixture
def agent(tmp_path: Path) -> Path:
    path = tmp_path / "agent" / "fake_fence_agent"
    path.parent.mkdir()
    path.write_text(FAKE_AGENT)
    path.chmod(0o755)
    scenario(path, "works")
    return path


@pytest.fixture
def password_file(tmp_path: Path) -> Path:
    path = tmp_path / "bmc-h1.password"
    path.write_text("s3cret-pw\n")
    path.chmod(0o600)
    return path


def scenario(agent: Path, name: str) -> None:
    (agent.parent / "scenario").write_text(name)


def runs(agent: Path) -> list[dict[str, object]]:
    log = agent.parent / "runs.jsonl"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def device(agent: Path, password_file: Path | None, timeout_s: float = 5.0) -> FenceDevice:
    return FenceDevice(agent=str(agent), options={"ip": "192.0.2.10", "ipport": "623", "username": "admin",
                                                  "lanplus": "1"},
                       password_file=password_file, timeout_s=timeout_s)


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_off_is_confirmed_by_a_status_that_says_off(agent: Path, password_file: Path) -> None:
    fencer = FenceAgentFencer({"h1": device(agent, password_file)})
    assert fencer.status("h1") is Power.ON
    assert fencer.power_off("h1") is True
    assert fencer.status("h1") is Power.OFF
    done = runs(agent)
    assert [r["options"]["action"] for r in done] == ["status", "off", "status", "status"]  # type: ignore[index]
    off = done[1]
    assert off["argv"] == []  # everything on stdin: nothing (no password) on a command line
    assert off["options"] == {"action": "off", "ip": "192.0.2.10", "ipport": "623", "username": "admin",
                              "lanplus": "1", "password": "s3cret-pw"}
    outcome = fencer.last_outcome("h1")
    assert outcome is not None and outcome.ok and "confirmed" in outcome.detail


def test_an_off_the_status_does_not_confirm_is_no_fence(agent: Path, password_file: Path) -> None:
    scenario(agent, "stays-on")
    fencer = FenceAgentFencer({"h1": device(agent, password_file)})
    assert fencer.power_off("h1") is False
    outcome = fencer.last_outcome("h1")
    assert outcome is not None and not outcome.ok and "still on" in outcome.detail


def test_a_hanging_agent_is_killed_with_its_helpers_at_the_timeout(agent: Path, password_file: Path) -> None:
    scenario(agent, "hangs")
    fencer = FenceAgentFencer({"h1": device(agent, password_file, timeout_s=1.0)})
    start = time.monotonic()
    assert fencer.power_off("h1") is False
    assert time.monotonic() - start < 2.5
    outcome = fencer.last_outcome("h1")
    assert outcome is not None and "timed out" in outcome.detail
    helper = int((agent.parent / "helper.pid").read_text())
    deadline = time.monotonic() + 2.0
    while pid_alive(helper) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not pid_alive(helper), "the agent's helper outlived the timeout"


def test_an_agent_that_fails_fails_the_fence_and_the_monitor(agent: Path, password_file: Path) -> None:
    scenario(agent, "fails")
    fencer = FenceAgentFencer({"h1": device(agent, password_file)})
    assert fencer.power_off("h1") is False
    assert [r["options"]["action"] for r in runs(agent)] == ["off"]  # type: ignore[index]  # no status after
    ok, detail = fencer.monitor("h1")
    assert not ok and "exited 1" in detail and "Unable to connect" in detail
    assert fencer.status("h1") is Power.UNKNOWN


def test_monitor_reports_a_working_device(agent: Path, password_file: Path) -> None:
    fencer = FenceAgentFencer({"h1": device(agent, password_file)})
    ok, detail = fencer.monitor("h1")
    assert ok and "monitor ok" in detail
    last = fencer.last_monitor("h1")
    assert last is not None and last.ok


def test_a_host_without_a_device_is_never_confirmed_off(agent: Path, password_file: Path) -> None:
    fencer = FenceAgentFencer({"h1": device(agent, password_file)})
    assert fencer.power_off("h2") is False
    assert fencer.monitor("h2") == (False, "no fence device")
    assert runs(agent) == []


def test_an_unknown_agent_names_the_package_to_install() -> None:
    with pytest.raises(ValidationError, match="apt-get install fence-agents"):
        FenceDevice(agent="fence_nosuchdevice")


def test_an_agent_gone_after_loading_fails_the_fence(agent: Path, password_file: Path) -> None:
    fencer = FenceAgentFencer({"h1": device(agent, password_file)})
    agent.unlink()
    assert fencer.power_off("h1") is False
    outcome = fencer.last_outcome("h1")
    assert outcome is not None and "not found" in outcome.detail


def test_a_password_file_others_can_read_is_refused(agent: Path, password_file: Path) -> None:
    password_file.chmod(0o644)
    with pytest.raises(ValidationError, match=f"password file {password_file} can be read by others.*0644"):
        device(agent, password_file)


def test_a_password_file_made_public_after_loading_is_not_used(agent: Path, password_file: Path) -> None:
    fencer = FenceAgentFencer({"h1": device(agent, password_file)})
    password_file.chmod(0o640)
    assert fencer.power_off("h1") is False
    assert runs(agent) == []  # the agent never saw the password
    outcome = fencer.last_outcome("h1")
    assert outcome is not None and str(password_file) in outcome.detail


def test_options_cannot_smuggle_an_action_or_a_password(agent: Path) -> None:
    with pytest.raises(ValidationError, match="line break"):
        FenceDevice(agent=str(agent), options={"ip": "192.0.2.10\naction=on"})
    with pytest.raises(ValidationError, match="use password_file"):
        FenceDevice(agent=str(agent), options={"password": "in-the-config"})
    with pytest.raises(ValidationError, match="haven sets the action"):
        FenceDevice(agent=str(agent), options={"action": "reboot"})


def test_a_password_script_is_passed_to_the_agent(agent: Path, tmp_path: Path) -> None:
    script = tmp_path / "get-password"
    script.write_text("#!/bin/sh\necho s3cret\n")
    script.chmod(0o755)  # readable is fine for a script; writable by others is not
    fencer = FenceAgentFencer({"h1": FenceDevice(agent=str(agent), password_script=script)})
    assert fencer.monitor("h1")[0]
    assert runs(agent)[0]["options"] == {"action": "monitor", "password_script": str(script)}
    script.chmod(0o777)
    with pytest.raises(ValidationError, match="can be changed by others"):
        FenceDevice(agent=str(agent), password_script=script)


def test_fencing_config_is_keyed_by_valid_host_names(agent: Path) -> None:
    config = FencingConfig(devices={"h1": {"agent": str(agent)}})
    assert config.devices["h1"].timeout_s == 20.0
    with pytest.raises(ValidationError, match="not a valid host name"):
        FencingConfig(devices={"H_1": {"agent": str(agent)}})


def test_the_secret_never_reaches_the_kept_output(agent: Path, password_file: Path) -> None:
    # an agent that echoes its input (as a verbose agent logs its commands) must not leak the password
    agent.write_text(f"#!{sys.executable}\nimport sys\nsys.stdout.write(sys.stdin.read())\nsys.exit(1)\n")
    fencer = FenceAgentFencer({"h1": device(agent, password_file)})
    ok, detail = fencer.monitor("h1")
    assert not ok and "s3cret-pw" not in detail and "[secret]" in detail
