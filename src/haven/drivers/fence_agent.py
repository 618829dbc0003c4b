"""FenceAgentFencer: power fencing (`ports.fencer.Fencer`) through the ClusterLabs fence agents.

The agents' documented interface, shared by all ~70 of them: no arguments, options as `key=value`
lines on standard input (`action=off|on|status|monitor`, `ip=...`, ...), the outcome in the exit
status. `off` and `on` exit 0 once the device reports the new state; `status` exits 0 for on,
2 for off, anything else for "unknown"; `monitor` exits 0 when the device answers.

`power_off` is true only on a positive confirmation: `off` succeeded *and* a separate `status`
then says off, both within the device's `timeout_s`. Everything else (no device, an error, a hang,
a missing agent, a secret file gone public) is false, with the reason kept in `last_outcome` for
the manager's event. An agent runs in its own session and the whole session is killed at the
deadline: agents run helpers (fence_ipmilan runs ipmitool) that would otherwise outlive it.
"""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from haven.model.fencing import FenceDevice, SecretFileError
from haven.ports.fencer import FenceOutcome

STATUS_ON, STATUS_OFF = 0, 2  # the agents' exit status for `status`
OUTPUT_KEPT = 400  # characters of an agent's output kept for an event
AGENT_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"  # agents find ipmitool & co. here


class Power(StrEnum):
    ON = "on"
    OFF = "off"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class AgentRun:
    """One run of an agent. `returncode` is None when it did not finish (timeout, did not start)."""
    action: str
    returncode: int | None
    output: str
    elapsed_s: float

    def describe(self) -> str:
        if self.returncode is None:
            return f"{self.action}: {self.output}"
        tail = f": {self.output}" if self.output else ""
        return f"{self.action} exited {self.returncode} after {self.elapsed_s:.2f} s{tail}"


class FenceAgentFencer:
    def __init__(self, devices: Mapping[str, FenceDevice]) -> None:
        self.devices = dict(devices)
        self._lock = threading.Lock()
        self._last_off: dict[str, FenceOutcome] = {}
        self._last_monitor: dict[str, FenceOutcome] = {}

    # --- the port ---

    def has_device(self, host: str) -> bool:
        return host in self.devices

    def power_off(self, host: str) -> bool:
        start = time.monotonic()
        device = self.devices.get(host)
        if device is None:
            return self._record_off(host, False, "no fence device", start)
        deadline = start + device.timeout_s
        off = self.run(host, "off", deadline)
        if off.returncode != 0:
            return self._record_off(host, False, f"{device.agent} {off.describe()}", start)
        status = self.run(host, "status", deadline)
        if status.returncode != STATUS_OFF:
            said = "still on" if status.returncode == STATUS_ON else status.describe()
            return self._record_off(host, False, f"{device.agent} off not confirmed: status {said}", start)
        return self._record_off(host, True, f"{device.agent}: off, confirmed by status", start)

    # --- the rest of the device's life: status, power-on, the periodic check ---

    def status(self, host: str) -> Power:
        device = self.devices.get(host)
        if device is None:
            return Power.UNKNOWN
        run = self.run(host, "status", time.monotonic() + device.timeout_s)
        if run.returncode == STATUS_ON:
            return Power.ON
        return Power.OFF if run.returncode == STATUS_OFF else Power.UNKNOWN

    def power_on(self, host: str) -> tuple[bool, str]:
        device = self.devices.get(host)
        if device is None:
            return False, "no fence device"
        run = self.run(host, "on", time.monotonic() + device.timeout_s)
        return run.returncode == 0, f"{device.agent} {run.describe()}"

    def monitor(self, host: str) -> tuple[bool, str]:
        """Does the device answer? (The agents' `monitor`: log in, read the state.)"""
        start = time.monotonic()
        device = self.devices.get(host)
        if device is None:
            ok, detail = False, "no fence device"
        else:
            run = self.run(host, "monitor", start + device.timeout_s)
            ok = run.returncode == 0
            detail = f"{device.agent} monitor ok in {run.elapsed_s:.2f} s" if ok else f"{device.agent} {run.describe()}"
        with self._lock:
            self._last_monitor[host] = FenceOutcome(ok, detail, time.monotonic() - start,
                                                    device.agent if device else "")
        return ok, detail

    def last_outcome(self, host: str) -> FenceOutcome | None:
        """The last power-off of `host`: why it failed, for the manager's event."""
        with self._lock:
            return self._last_off.get(host)

    def last_monitor(self, host: str) -> FenceOutcome | None:
        with self._lock:
            return self._last_monitor.get(host)

    # --- running an agent ---

    def run(self, host: str, action: str, deadline: float) -> AgentRun:
        """Run `host`'s agent with `action` until `deadline` (monotonic) at the latest."""
        device = self.devices[host]
        start = time.monotonic()
        path = device.agent_path()
        if path is None:
            return AgentRun(action, None, f"agent {device.agent} not found (install Debian's fence-agents)", 0.0)
        try:
            stdin, secret = agent_input(device, action)
        except (SecretFileError, OSError) as exc:
            return AgentRun(action, None, f"no password: {exc}", 0.0)
        timeout = deadline - start
        if timeout <= 0:
            return AgentRun(action, None, "no time left before the deadline", 0.0)
        try:
            proc = subprocess.Popen([str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, start_new_session=True, close_fds=True,
                                    env={**os.environ, "PATH": AGENT_PATH, "LANG": "C", "LC_ALL": "C"})
        except OSError as exc:
            return AgentRun(action, None, f"agent {path} did not start: {exc}", 0.0)
        try:
            out, _ = proc.communicate(stdin.encode(), timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_session(proc)
            return AgentRun(action, None, f"timed out after {time.monotonic() - start:.2f} s", time.monotonic() - start)
        return AgentRun(action, proc.returncode, _tail(out.decode(errors="replace"), secret), time.monotonic() - start)

    def _record_off(self, host: str, ok: bool, detail: str, start: float) -> bool:
        device = self.devices.get(host)
        with self._lock:
            self._last_off[host] = FenceOutcome(ok, detail, time.monotonic() - start, device.agent if device else "")
        return ok


def agent_input(device: FenceDevice, action: str) -> tuple[str, str | None]:
    """The agent's standard input for `action`, and the secret in it (to keep it out of logs)."""
    lines = [f"action={action}"] + [f"{key}={value}" for key, value in device.options.items()]
    secret = device.read_password()
    if secret is not None:
        if "\n" in secret or "\r" in secret:
            raise SecretFileError(f"password file {device.password_file} holds a line break")
        lines.append(f"password={secret}")
    if device.password_script is not None:
        lines.append(f"password_script={device.password_script}")
    return "".join(line + "\n" for line in lines), secret


def _kill_session(proc: subprocess.Popen[bytes]) -> None:
    """Kill the agent and every helper it started (same session), then reap it."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    try:
        proc.communicate(timeout=2.0)
    except subprocess.TimeoutExpired:  # a helper that left the session holds the pipe: let it
        proc.kill()
        proc.wait()


def _tail(output: str, secret: str | None) -> str:
    """The end of an agent's output, one line, without the password (agents may echo commands)."""
    if secret:
        output = output.replace(secret, "[secret]")
    lines = [line.strip() for line in output.splitlines() if line.strip() and "DeprecationWarning" not in line
             and "from pipes import" not in line]
    return " | ".join(lines)[-OUTPUT_KEPT:]
