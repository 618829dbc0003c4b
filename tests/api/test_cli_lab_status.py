"""`haven lab status -o json` from a store, without a lab: the same host words as `haven host list`."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from haven.cli import lab
from haven.runtime import intents

from .conftest import Cluster


class Store:
    """The test cluster's store where the lab's etcd would be."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster

    def __getattr__(self, name: str) -> Any:
        return getattr(self.cluster.store, name)

    def close(self) -> None:
        pass


def test_lab_status_json(cluster: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    intents.set_maintenance(cluster.store, cluster.layout, "h2", True)  # asked, the manager has not acted
    state = {"status": "up", "slot": 0, "started": time.time() - 120, "supervisor_pid": os.getpid(),
             "log": "/dev/null", "cluster": cluster.layout.cluster, "etcd": {"endpoints": ["127.0.0.1:1"]},
             "api": {"url": "http://10.77.0.10:8470"},
             "hosts": {name: {"address": f"10.77.0.{i}", "daemon_pid": os.getpid(), "run_dir": str(tmp_path)}
                       for i, name in enumerate(("h1", "h2", "h3"), start=11)},
             "vms": {"web": {"address": "10.78.0.100", "mac": None}}}
    monkeypatch.setattr("haven.drivers.etcd_store.EtcdStore", lambda endpoints, timeout: Store(cluster))
    monkeypatch.setattr("haven.lab.supervisor.read_state", lambda: state)
    monkeypatch.setattr("haven.lab.supervisor.supervisor_alive", lambda state: True)
    monkeypatch.setattr(lab, "_need_root", lambda: None)

    result = CliRunner().invoke(lab.lab, ["status", "-o", "json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["manager"] == "h1" and data["api"] == "http://10.77.0.10:8470"
    hosts = {h["name"]: h for h in data["hosts"]}
    assert hosts["h2"]["state"] == "maintenance"  # what `haven host list` says, not the stale record
    assert hosts["h1"]["vms"] == ["db", "web"] and hosts["h1"]["lease"] is True
    assert hosts["h1"]["daemon"] == "running" and hosts["h1"]["isolated"] is False
    web = next(vm for vm in data["vms"] if vm["name"] == "web")
    assert web == {"name": "web", "state": "running", "host": "h1", "generation": 1, "address": "10.78.0.100",
                   "qemu_on": [], "reason": ""}
    text = CliRunner().invoke(lab.lab, ["status"])
    assert text.exit_code == 0 and "maintenance" in text.output
