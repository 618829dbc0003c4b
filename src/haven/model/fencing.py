"""Power-fencing devices: which ClusterLabs fence agent cuts a host's power, with which options.

A device is configured per host on the nodes that may run the manager (a config file, never the
store: the store is readable by every host, a BMC password is not for every host). The agent is
any of the ~70 `fence_*` programs of Debian's `fence-agents` (`fence_ipmilan`, `fence_redfish`,
`fence_apc`, ...); `options` are its documented stdin options (`fence_<name> -o metadata`), except
`action`, which haven sets, and the password, which comes from a root-only file or a script.
Validation looks at the machine it runs on: the agent must be installed and the secret file private.
"""
from __future__ import annotations

import os
import re
import shutil
import stat
from pathlib import Path

from pydantic import Field, field_validator, model_validator

from haven.model.spec import NAME_PATTERN, Frozen

AGENT_PACKAGE = "fence-agents"  # Debian's package of the ClusterLabs agents
AGENT_DIRS = ("/usr/sbin", "/sbin", "/usr/local/sbin", "/usr/bin", "/usr/local/bin")
OPTION_NAME = r"^[a-z][a-z0-9_-]*$"
# Options haven sets itself, or secrets that must not sit in a config file.
RESERVED = {"action": "haven sets the action itself",
            "password": "use password_file", "passwd": "use password_file",
            "password_script": "use the device's password_script", "passwd_script": "use the device's password_script"}


class SecretFileError(ValueError):
    """A secret file others could read (or change): haven refuses it rather than leak the secret."""


def check_private(path: Path, what: str, allow_read: bool = False) -> None:
    """`path` must be a regular file owned by the user haven runs as (root in production) that no
    one else can change, nor read unless `allow_read` (a script may be public; a password not)."""
    try:
        info = path.stat()
    except OSError as exc:
        raise SecretFileError(f"{what} {path}: {exc.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        raise SecretFileError(f"{what} {path} is not a regular file")
    if info.st_uid != os.geteuid():
        raise SecretFileError(f"{what} {path} is owned by uid {info.st_uid}, not by uid {os.geteuid()} "
                              f"that haven runs as: chown it")
    mode = stat.S_IMODE(info.st_mode)
    forbidden = 0o022 if allow_read else 0o077
    if mode & forbidden:
        others = "changed" if allow_read else "read"
        raise SecretFileError(f"{what} {path} can be {others} by others than its owner (mode {mode:04o}): "
                              f"chmod {'go-w' if allow_read else '600'} {path}")


def find_agent(agent: str) -> Path | None:
    """The agent's executable: an absolute path as given, else a name looked up where Debian
    installs the agents (they live in /usr/sbin, which a non-login PATH may lack)."""
    if os.path.isabs(agent):
        return Path(agent) if os.access(agent, os.X_OK) and os.path.isfile(agent) else None
    path = os.pathsep.join([*AGENT_DIRS, os.environ.get("PATH", "")])
    found = shutil.which(agent, path=path)
    return Path(found) if found else None


class FenceDevice(Frozen):
    """One host's fence device. Times in seconds."""

    agent: str = Field(description="a fence agent's name (fence_ipmilan) or an absolute path to one")
    options: dict[str, str] = Field(default_factory=dict, description="the agent's stdin options, e.g. ip, "
                                    "ipport, username, lanplus")
    password_file: Path | None = Field(default=None, description="its first line is the password; mode 0600")
    password_script: Path | None = Field(default=None, description="a program printing the password "
                                         "(the agent runs it)")
    timeout_s: float = Field(default=20.0, gt=0, description="hard limit for power off + confirmation, "
                             "and for one monitor or status run")

    @field_validator("agent")
    @classmethod
    def _agent_installed(cls, agent: str) -> str:
        if not os.path.isabs(agent) and not re.fullmatch(r"fence_[a-z0-9_]+", agent):
            raise ValueError(f"{agent!r} is not a fence agent's name (fence_<device>) nor an absolute path")
        if find_agent(agent) is None:
            if os.path.isabs(agent):
                raise ValueError(f"fence agent {agent} is not an executable file")
            raise ValueError(f"fence agent {agent} is not installed: install Debian's {AGENT_PACKAGE} "
                             f"(apt-get install {AGENT_PACKAGE}), which carries the ClusterLabs agents")
        return agent

    @field_validator("options")
    @classmethod
    def _options(cls, options: dict[str, str]) -> dict[str, str]:
        for name, value in options.items():
            if not re.fullmatch(OPTION_NAME, name):
                raise ValueError(f"option name {name!r} is not a fence agent option (lower case, digits, _ or -)")
            if name.replace("-", "_") in RESERVED:
                raise ValueError(f"option {name!r} is not allowed here: {RESERVED[name.replace('-', '_')]}")
            if "\n" in value or "\r" in value or "\0" in value:
                # one option per stdin line: a line break would smuggle in another option
                raise ValueError(f"option {name!r} holds a line break or NUL")
        return options

    @model_validator(mode="after")
    def _secrets(self) -> FenceDevice:
        if self.password_file is not None and self.password_script is not None:
            raise ValueError("give password_file or password_script, not both")
        if self.password_file is not None:
            check_private(self.password_file, "password file")
        if self.password_script is not None:
            check_private(self.password_script, "password script", allow_read=True)
        return self

    def agent_path(self) -> Path | None:
        return find_agent(self.agent)

    def read_password(self) -> str | None:
        """The password from `password_file`, read at each use (so it can be rotated), after the
        same checks as at load: a file made readable since is refused then too."""
        if self.password_file is None:
            return None
        check_private(self.password_file, "password file")
        lines = self.password_file.read_text().splitlines()
        if not lines or not lines[0]:
            raise SecretFileError(f"password file {self.password_file} is empty")
        return lines[0]


class FencingConfig(Frozen):
    """The fence devices this node's manager may use, by host name; a host without one is
    recovered after lease expiry + `fence_grace_s` only."""

    devices: dict[str, FenceDevice] = Field(default_factory=dict)
    monitor_interval_s: float = Field(default=60.0, gt=0, description="how often each device is checked")

    @field_validator("devices")
    @classmethod
    def _host_names(cls, devices: dict[str, FenceDevice]) -> dict[str, FenceDevice]:
        for host in devices:
            if not re.fullmatch(NAME_PATTERN, host):
                raise ValueError(f"{host!r} is not a valid host name")
        return devices


class FenceCheck(Frozen):
    """The last periodic check of a host's fence device, as the leading manager stored it (for
    `haven status`, the dashboard and /metrics): a device that fails it will fail a fence too."""

    ok: bool
    detail: str = Field(description="the agent's words: why it failed, or how long the check took")
    checked_at: float = Field(description="when (Unix time; simulator time in the simulator)")
