"""A lab host's management controller: OpenIPMI's `ipmi_sim` speaking real IPMI over LAN.

`fence_ipmilan` (and `ipmitool`) talk to it exactly as to a server's BMC. What the lab needs of it
is chassis power, and `ipmi_sim` hands that to a program named by `chassis_control` in its
lan.conf, run through `sh -c` as
    PROGRAM get power          -> prints `power:1` (on) or `power:0` (off)
    PROGRAM set power 0|1      -> switches the power; exit status 0 = done
(`startcmd`/`startnow` do not serve here: ipmi_sim 2.0.33 answers chassis power control with
"invalid data field" unless `chassis_control` is set, and `startcmd` runs `exec CMD` under
`sh -c`, so it can only model a host that is one process.) The Bmc writes that program as a
small shell script around three commands it is given: `power_off` (the lab's power cut of the
host), `power_on` (boot it), `power_status` (exit 0 while the host runs, 1 while it is off, anything
else when it cannot tell: then the BMC fails the request rather than say "off"). So the state a client
reads is the host's real state, also after a crash the BMC did not cause. `power_on` runs in a
new session, so that the host it boots is not part of the BMC and outlives `stop()`.

The BMC itself must not be inside the host's power domain: in the lab, run it in the root
namespace (or a manager's), never in the host's namespace that a power cut empties.
"""
from __future__ import annotations

import contextlib
import os
import secrets
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from haven.model.fencing import FenceDevice

READY_TIMEOUT_S = 5.0
IPMI_USER = "haven"
IPMI_USER_ID = 2  # user 1 is IPMI's anonymous user
CIPHER_SUITE = "3"  # RMCP+ with HMAC-SHA1 + AES; without `-C` ipmitool first asks ipmi_sim for
                    # its cipher suites, which it does not answer: 10 s lost per call


class BmcError(RuntimeError):
    """The BMC simulator could not start; the message carries its log."""


@dataclass(frozen=True)
class BmcCredentials:
    username: str
    password: str
    password_file: Path  # the same password, mode 0600, for a fence device's `password_file`


class Bmc:
    def __init__(self, name: str, root: Path, address: str, port: int, power_off: Sequence[str],
                 power_on: Sequence[str], power_status: Sequence[str], netns: str | None = None) -> None:
        self.name = name
        self.dir = root / f"bmc-{name}"
        self.address = address
        self.port = port
        self.power_off_cmd = list(power_off)
        self.power_on_cmd = list(power_on)
        self.power_status_cmd = list(power_status)
        self.netns = netns  # run ipmi_sim in this network namespace (None: this one)
        self.credentials = BmcCredentials(IPMI_USER, secrets.token_urlsafe(12), self.dir / "password")
        self.proc: subprocess.Popen[bytes] | None = None

    # --- lifecycle ---

    def __enter__(self) -> Bmc:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        for binary in ("ipmi_sim", "ipmitool"):
            if shutil.which(binary) is None:
                raise BmcError(f"{binary} is not installed: apt-get install openipmi ipmitool")
        if any(c.isspace() for c in str(self.dir)):
            raise BmcError(f"{self.dir}: ipmi_sim runs its chassis program through `sh -c`: no spaces in the path")
        self.write_files()
        argv = ["ipmi_sim", "-n", "-c", str(self.dir / "lan.conf"), "-f", str(self.dir / "bmc.emu"),
                "-s", str(self.dir / "state")]
        if self.netns:
            argv = ["ip", "netns", "exec", self.netns, *argv]
        with open(self.dir / "ipmi_sim.log", "ab") as log:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True, cwd=self.dir)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Kill ipmi_sim and any chassis command it is running (not a host it powered on). Idempotent."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=2.0)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5.0)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _wait_ready(self) -> None:
        """Until ipmi_sim answers a real IPMI request (a session and `chassis power status`)."""
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise BmcError(f"ipmi_sim for {self.name} exited {self.proc.returncode}: {self._log_tail()}")
            if self.ipmitool("chassis", "power", "status", timeout=1.0).returncode == 0:
                return
            if time.monotonic() > deadline:
                raise BmcError(f"ipmi_sim for {self.name} did not answer on {self.address}:{self.port} within "
                               f"{READY_TIMEOUT_S:g} s: {self._log_tail()}")
            time.sleep(0.05)

    def _log_tail(self) -> str:
        try:
            return " | ".join((self.dir / "ipmi_sim.log").read_text(errors="replace").splitlines()[-5:])
        except OSError:
            return "(no log)"

    # --- what clients need ---

    def fence_device(self, timeout_s: float = 10.0) -> FenceDevice:
        """A `fence_ipmilan` device for this BMC. `power_wait=0`: the agent's default waits 2 s after
        the off before it reads the state back, which this BMC does not need."""
        return FenceDevice(agent="fence_ipmilan", options={
            "ip": self.address, "ipport": str(self.port), "username": self.credentials.username,
            "lanplus": "1", "cipher": CIPHER_SUITE, "power_wait": "0"},
            password_file=self.credentials.password_file, timeout_s=timeout_s)

    def ipmitool(self, *command: str, timeout: float = 5.0) -> subprocess.CompletedProcess[str]:
        """Run `ipmitool` against this BMC (for tests and readiness); the password goes through
        the environment (`-E`), not the command line."""
        argv = ["ipmitool", "-I", "lanplus", "-C", CIPHER_SUITE, "-H", self.address, "-p", str(self.port),
                "-U", self.credentials.username, "-E", "-N", "1", "-R", "1", *command]
        if self.netns:
            argv = ["ip", "netns", "exec", self.netns, *argv]
        env = {**os.environ, "IPMI_PASSWORD": self.credentials.password}
        try:
            return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)
        except subprocess.TimeoutExpired:
            return subprocess.CompletedProcess(argv, -1, "", "timed out")

    # --- the files ipmi_sim reads ---

    def write_files(self) -> None:
        (self.dir / "state").mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o700)  # lan.conf holds the password in clear
        _write(self.dir / "lan.conf", self.lan_conf(), 0o600)
        _write(self.dir / "bmc.emu", EMU, 0o600)
        _write(self.dir / "chassis", self.chassis_script(), 0o700)
        _write(self.credentials.password_file, self.credentials.password + "\n", 0o600)

    def lan_conf(self) -> str:
        user = self.credentials
        return "\n".join([
            f'# ipmi_sim configuration for lab host {self.name} (generated by haven.lab.bmc)',
            f'name "haven-{self.name}"',
            "set_working_mc 0x20",
            "  startlan 1",
            f"    addr {self.address} {self.port}",
            "    priv_limit admin",
            "    allowed_auths_callback md5",
            "    allowed_auths_user md5",
            "    allowed_auths_operator md5",
            "    allowed_auths_admin md5",
            "    guid " + secrets.token_hex(16),
            "  endlan",
            f'  chassis_control "{self.dir / "chassis"}"',
            f'  user {IPMI_USER_ID} true "{user.username}" "{user.password}" admin 10 md5',
            ""])

    def chassis_script(self) -> str:
        off, on, status = (shlex.join(c) for c in (self.power_off_cmd, self.power_on_cmd, self.power_status_cmd))
        return f"""#!/bin/sh
# ipmi_sim's chassis_control program for lab host {self.name} (generated by haven.lab.bmc).
# ipmi_sim runs it as `chassis get power ...` and `chassis set power 0|1 ...`. The status command
# exits 0 for on, 1 for off; anything else is an error, never "off" (that would confirm a fence).
power() {{ {status} >/dev/null 2>&1 </dev/null; case $? in 0) echo 1 ;; 1) echo 0 ;; *) exit 1 ;; esac; }}
cmd=$1; shift
while [ $# -gt 0 ]; do
  parm=$1; shift
  case "$cmd $parm" in
    "get power") state=$(power) || exit 1; echo "power:$state" ;;
    "set power")
      value=$1; shift
      state=$(power) || exit 1
      # switching to the state it is in does nothing: never boot a running host twice
      if [ "$value" = 0 ]; then
        if [ "$state" = 1 ]; then {off} >/dev/null 2>&1 </dev/null || exit 1; fi
      else
        if [ "$state" = 0 ]; then setsid -w {on} >/dev/null 2>&1 </dev/null || exit 1; fi
      fi ;;
    *) exit 1 ;;
  esac
done
"""


# One BMC at IPMB address 0x20 that is a chassis device (device support 0x9f includes bit 7,
# "chassis device"); ipmi_sim starts empty without it.
EMU = """mc_setbmc 0x20
mc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02
mc_enable 0x20
"""


def _write(path: Path, text: str, mode: int) -> None:
    path.touch(mode=mode, exist_ok=True)
    os.chmod(path, mode)  # before the content: a secret is never in a file others can read
    path.write_text(text)
