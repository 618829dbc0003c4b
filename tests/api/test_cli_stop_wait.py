"""`haven vm stop --wait`: progress until the VM is stopped, then its final state."""
from __future__ import annotations

import json
import threading
from collections.abc import Iterator

import pytest

from haven.model.spec import DesiredState, VmSpec
from haven.model.state import Placement, VmState

from .conftest import Cluster
from .test_cli import run


class Stopper:
    """Stops VMs whose spec says `desired: stopped`, through `stopping` as the manager does."""

    def __init__(self, cluster: Cluster, step_s: float = 0.4) -> None:
        self.cluster, self.step_s = cluster, step_s
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        c = self.cluster
        while not self.done.wait(0.05):
            for vm in ("web", "db", "cache"):
                spec = VmSpec.model_validate_json(c.dump()[c.layout.vm_spec(vm)])
                placement = Placement.model_validate_json(c.dump()[c.layout.placement(vm)])
                if spec.desired != DesiredState.STOPPED or placement.state == VmState.STOPPED:
                    continue
                c.store.put(c.layout.placement(vm), placement.model_copy(
                    update={"state": VmState.STOPPING}).model_dump_json())
                if self.done.wait(self.step_s):
                    return
                c.store.put(c.layout.placement(vm), placement.model_copy(
                    update={"state": VmState.STOPPED, "host": None}).model_dump_json())

    def __enter__(self) -> Stopper:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.thread.join(timeout=5)


@pytest.fixture
def stopper(cluster: Cluster, live: str) -> Iterator[Stopper]:
    with Stopper(cluster) as fake:
        yield fake


def test_stop_waits_until_stopped(live: str, stopper: Stopper) -> None:
    result = run(live, "vm", "stop", "web", "--wait")
    assert result.exit_code == 0, result.output
    assert "VM web stopped in" in result.output
    assert json.loads(run(live, "vm", "show", "web", "-o", "json").output)["state"] == "stopped"


def test_stop_wait_json_shows_the_final_state(live: str, stopper: Stopper) -> None:
    result = run(live, "vm", "stop", "db", "--wait", "-o", "json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["result"] == "succeeded" and data["seconds"] >= stopper.step_s
    assert data["vm"]["state"] == "stopped" and data["vm"]["host"] is None and data["vm"]["desired"] == "stopped"


def test_stop_without_wait_returns_at_once(live: str, cluster: Cluster) -> None:
    data = json.loads(run(live, "vm", "stop", "cache", "-o", "json").output)
    assert data["message"] == "VM cache: stop requested"
    assert data["vm"]["state"] == "running"  # nobody stopped it: the command did not wait


def test_stop_wait_gives_up_after_the_timeout(live: str) -> None:
    result = run(live, "vm", "stop", "web", "--wait", "--timeout", "1")  # no manager acts on it
    assert result.exit_code == 1
    assert "gave up waiting after 1 s for the stop of VM web (running on h1)" in result.output


def test_timeout_without_wait_is_a_usage_error(live: str) -> None:
    result = run(live, "vm", "stop", "web", "--timeout", "5")
    assert result.exit_code == 2 and "--timeout only bounds --wait" in result.output
