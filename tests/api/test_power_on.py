"""`POST /hosts/{name}/power-on` (`haven host power-on`): through the fence device of the node
serving the API, only for a host that is down, with the device's words when it fails."""
from __future__ import annotations

from fastapi.testclient import TestClient

from haven.api import create_app
from haven.ports.fencer import FenceOutcome
from haven.ports.store import Delete

from .conftest import ADMIN, AUTH_ADMIN, READ, Cluster


class Device:
    """A fence device per listed host that switches hosts on, or fails."""

    def __init__(self, hosts: set[str], works: bool = True) -> None:
        self.hosts, self.works = hosts, works
        self.switched_on: list[str] = []

    def has_device(self, host: str) -> bool:
        return host in self.hosts

    def power_off(self, host: str) -> bool:
        return False

    def last_outcome(self, host: str) -> FenceOutcome | None:
        return None

    def monitor(self, host: str) -> tuple[bool, str]:
        return True, "ok"

    def power_on(self, host: str) -> tuple[bool, str]:
        if not self.works:
            return False, "fence_ipmilan on: timed out after 20.00 s"
        self.switched_on.append(host)
        return True, "fence_ipmilan on exited 0 after 0.12 s"


def power_on(cluster: Cluster, device: Device | None, host: str) -> tuple[int, dict[str, object]]:
    app = create_app(cluster.store, cluster.layout, admin_token=ADMIN, read_token=READ, clock=cluster.clock,
                     power=device)
    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.post(f"/api/v1/hosts/{host}/power-on", headers=AUTH_ADMIN)
    return response.status_code, response.json()


def down(cluster: Cluster, host: str) -> None:
    cluster.store.txn([], [Delete(cluster.layout.alive(host))])


def test_a_host_that_is_down_is_switched_on_by_its_device(cluster: Cluster) -> None:
    down(cluster, "h3")
    device = Device({"h3"})
    status, body = power_on(cluster, device, "h3")
    assert status == 202, body
    assert device.switched_on == ["h3"]
    assert body["message"] == "host h3 powered on (fence_ipmilan on exited 0 after 0.12 s); it rejoins once its daemon is up"


def test_a_host_that_is_up_is_left_alone(cluster: Cluster) -> None:
    device = Device({"h3"})
    status, body = power_on(cluster, device, "h3")
    assert (status, body["detail"]) == (409, "host h3 is up (it holds its lease): nothing to power on")
    assert device.switched_on == []


def test_without_a_device_the_answer_says_what_to_do(cluster: Cluster) -> None:
    down(cluster, "h3")
    for device in (None, Device({"h1"})):
        status, body = power_on(cluster, device, "h3")
        assert status == 409
        assert str(body["detail"]).startswith("the node serving this API has no fence device for h3: switch it on")


def test_a_device_that_fails_is_a_502_with_its_words(cluster: Cluster) -> None:
    down(cluster, "h3")
    status, body = power_on(cluster, Device({"h3"}, works=False), "h3")
    assert (status, body["detail"]) == (502, "host h3 was not powered on: fence_ipmilan on: timed out after 20.00 s")


def test_an_unknown_host_is_404(cluster: Cluster) -> None:
    status, _ = power_on(cluster, Device({"h9"}), "h9")
    assert status == 404


def test_a_host_switched_off_before_its_lease_ran_out_may_be_switched_on(cluster: Cluster) -> None:
    """Fast fencing: the host is fenced (offline) while its lease has seconds to go."""
    from haven.model.state import HostState

    cluster.put_host("h3", state=HostState.OFFLINE)  # alive key still there
    device = Device({"h3"})
    status, body = power_on(cluster, device, "h3")
    assert status == 202, body
    assert device.switched_on == ["h3"]
