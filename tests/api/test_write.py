"""Write routes: validation, the intent they write, and atomicity."""
from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi.testclient import TestClient

from haven.api import create_app
from haven.model.spec import VmSpec
from haven.model.state import HostAdmin, HostState, RequestAction, VmRequest
from haven.ports.store import Put

from .conftest import ADMIN, AUTH_ADMIN, READ, Cluster


def post(client: TestClient, path: str, body: Any = None, **kwargs: Any) -> Any:
    return client.post(path, json=body, headers=AUTH_ADMIN, **kwargs)


def spec_in(cluster: Cluster, name: str) -> VmSpec:
    return VmSpec.model_validate_json(cluster.dump()[cluster.layout.vm_spec(name)])


def request_in(cluster: Cluster, name: str) -> VmRequest | None:
    value = cluster.dump().get(cluster.layout.request(name))
    return VmRequest.model_validate_json(value) if value else None


# -- create / update / delete ---------------------------------------------------------------

def test_create_from_json(client: TestClient, cluster: Cluster) -> None:
    response = post(client, "/api/v1/vms", {"name": "new", "memory_mib": 256, "priority": 3})
    assert response.status_code == 201, response.text
    assert response.json()["vm"]["state"] == "pending"
    assert spec_in(cluster, "new").priority == 3


def test_create_from_yaml(client: TestClient, cluster: Cluster) -> None:
    yaml = b"name: fromyaml\nmemory_mib: 200\ndisks:\n  - pool: shared\n"
    response = client.post("/api/v1/vms", content=yaml,
                           headers={**AUTH_ADMIN, "Content-Type": "application/yaml"})
    assert response.status_code == 201, response.text
    assert spec_in(cluster, "fromyaml").disks[0].pool == "shared"


def test_create_twice_is_a_conflict(client: TestClient) -> None:
    response = post(client, "/api/v1/vms", {"name": "web"})
    assert response.status_code == 409 and "PUT /api/v1/vms/web" in response.json()["detail"]


def test_invalid_spec_gets_one_line_per_problem(client: TestClient, cluster: Cluster) -> None:
    before = cluster.dump()
    response = post(client, "/api/v1/vms", {"name": "Bad_Name", "memory_mib": 10, "colour": "red"})
    assert response.status_code == 422
    body = response.json()
    assert body["detail"] == "the VM spec is not valid (3 problems)"
    assert sorted(p.split(":")[0] for p in body["problems"]) == ["colour", "memory_mib", "name"]
    assert any("unknown field" in p for p in body["problems"])
    assert cluster.dump() == before


def test_spec_must_fit_the_cluster(client: TestClient) -> None:
    response = post(client, "/api/v1/vms", {
        "name": "misfit", "preferred_hosts": ["h1", "h9"], "disks": [{"pool": "nas"}],
        "cpu_model": "EPYC-v9", "memory_mib": 100000, "nics": [{"mac": "52:54:00:00:00:01"}]})
    assert response.status_code == 422
    problems = response.json()["problems"]
    assert [p.split(":")[0] for p in problems] == ["preferred_hosts[1]", "disks[0].pool", "cpu_model",
                                                   "memory_mib", "nics[0].mac"]
    assert "already used by VM web" in problems[-1]


@pytest.mark.parametrize("content,ctype,problem", [
    (b"{oops", "application/json", "not valid JSON"),
    (b"key: [unclosed", "application/yaml", "not valid YAML"),
    (b"[1, 2]", "application/json", "must be an object"),
    (b"", "application/json", "needs a VM spec body"),
])
def test_unparsable_bodies_are_422(client: TestClient, content: bytes, ctype: str, problem: str) -> None:
    response = client.post("/api/v1/vms", content=content, headers={**AUTH_ADMIN, "Content-Type": ctype})
    assert response.status_code == 422 and problem in response.json()["detail"]


def test_update(client: TestClient, cluster: Cluster) -> None:
    response = client.put("/api/v1/vms/web", json={"memory_mib": 640, "nics": [{"mac": "52:54:00:00:00:01"}]},
                          headers=AUTH_ADMIN)
    assert response.status_code == 200, response.text
    assert spec_in(cluster, "web").memory_mib == 640


def test_update_checks_name_and_existence(client: TestClient) -> None:
    response = client.put("/api/v1/vms/web", json={"name": "db"}, headers=AUTH_ADMIN)
    assert response.status_code == 422 and response.json()["problems"][0].startswith("name:")
    assert client.put("/api/v1/vms/ghost", json={}, headers=AUTH_ADMIN).status_code == 404


def test_delete_refuses_a_running_vm(client: TestClient, cluster: Cluster) -> None:
    response = client.delete("/api/v1/vms/web", headers=AUTH_ADMIN)
    assert response.status_code == 409
    assert response.json()["detail"].startswith("VM web is running on h1: stop it first")
    assert cluster.layout.vm_spec("web") in cluster.dump()


def test_delete_a_stopped_vm(client: TestClient, cluster: Cluster) -> None:
    assert client.delete("/api/v1/vms/batch", headers=AUTH_ADMIN).status_code == 200
    assert cluster.layout.vm_spec("batch") not in cluster.dump()
    assert client.delete("/api/v1/vms/batch", headers=AUTH_ADMIN).status_code == 404


# -- start / stop ----------------------------------------------------------------------------

def test_stop_and_start_change_desired(client: TestClient, cluster: Cluster) -> None:
    assert post(client, "/api/v1/vms/web/stop").status_code == 202
    assert spec_in(cluster, "web").desired == "stopped"
    again = post(client, "/api/v1/vms/web/stop")
    assert "already meant to be stopped" in again.json()["message"]
    assert post(client, "/api/v1/vms/web/start").status_code == 202
    assert spec_in(cluster, "web").desired == "running"


# -- migrate / acknowledge -------------------------------------------------------------------

def test_migrate_writes_a_request(client: TestClient, cluster: Cluster) -> None:
    response = post(client, "/api/v1/vms/web/migrate", {"kind": "quick", "target": "h2"})
    assert response.status_code == 202, response.text
    request = request_in(cluster, "web")
    assert request is not None and request.id == response.json()["request_id"]
    assert (request.action, request.kind, request.target) == (RequestAction.MIGRATE, "quick", "h2")


def test_migrate_without_body_is_live_to_the_best_host(client: TestClient, cluster: Cluster) -> None:
    assert post(client, "/api/v1/vms/web/migrate").status_code == 202
    request = request_in(cluster, "web")
    assert request is not None and (request.kind, request.target) == ("live", None)


@pytest.mark.parametrize("vm,body,status,text", [
    ("web", {"kind": "live", "target": "h9"}, 422, "target: host 'h9' does not exist"),
    ("web", {"kind": "teleport"}, 422, "kind:"),
    ("web", {"kind": "live", "speed": 9}, 422, "speed: unknown field"),
    ("web", {"target": "h1"}, 422, "target: VM web already runs on h1"),
    ("cache", {"kind": "live"}, 422, "kind: VM cache has migratable: false"),
    ("batch", {"kind": "cold"}, 409, "VM batch is stopped: only a running VM can be migrated"),
    ("ghost", {}, 404, "VM 'ghost' does not exist"),
])
def test_migrate_validation(client: TestClient, cluster: Cluster, vm: str, body: dict, status: int,
                            text: str) -> None:
    before = cluster.dump()
    response = post(client, f"/api/v1/vms/{vm}/migrate", body)
    assert response.status_code == status, response.text
    answer = response.json()
    assert any(text in line for line in [answer["detail"], *answer["problems"]]), answer
    assert cluster.dump() == before


def test_migrate_to_a_host_in_maintenance_or_lost_is_refused(client: TestClient, cluster: Cluster) -> None:
    cluster.store.put(cluster.layout.host_admin("h2"), HostAdmin(maintenance=True).model_dump_json())
    cluster.store.delete(cluster.layout.alive("h3"))
    for target, state in (("h2", "maintenance"), ("h3", "lost")):
        response = post(client, "/api/v1/vms/web/migrate", {"target": target})
        assert response.status_code == 409
        assert response.json()["detail"] == f"target host {target} is {state}: it takes no VMs now"
    response = post(client, "/api/v1/vms/web/migrate", {})
    assert response.status_code == 409 and "no other host is online" in response.json()["detail"]


def test_one_pending_request_at_a_time(client: TestClient, cluster: Cluster) -> None:
    assert post(client, "/api/v1/vms/web/migrate", {"target": "h2"}).status_code == 202
    first = request_in(cluster, "web")
    response = post(client, "/api/v1/vms/web/migrate", {"target": "h3"})
    assert response.status_code == 409 and "pending migrate request" in response.json()["detail"]
    assert request_in(cluster, "web") == first


def test_acknowledge_only_an_error(client: TestClient, cluster: Cluster) -> None:
    response = post(client, "/api/v1/vms/web/acknowledge")
    assert response.status_code == 409 and "not in error" in response.json()["detail"]
    assert post(client, "/api/v1/vms/broken/acknowledge").status_code == 202
    request = request_in(cluster, "broken")
    assert request is not None and request.action == RequestAction.ACKNOWLEDGE


# -- drain / resume --------------------------------------------------------------------------

def test_drain_and_resume(client: TestClient, cluster: Cluster) -> None:
    response = post(client, "/api/v1/hosts/h1/drain")
    assert response.status_code == 202
    assert response.json()["message"] == "host h1: drain requested (2 VM(s) to move)"
    admin = HostAdmin.model_validate_json(cluster.dump()[cluster.layout.host_admin("h1")])
    assert admin.maintenance and admin.request_id == response.json()["request_id"]
    host = response.json()["host"]
    assert host["state"] == "maintenance" and host["draining"] is True
    assert post(client, "/api/v1/hosts/h1/resume").status_code == 202
    assert not HostAdmin.model_validate_json(cluster.dump()[cluster.layout.host_admin("h1")]).maintenance
    assert post(client, "/api/v1/hosts/h9/drain").status_code == 404


def test_a_drain_that_cannot_finish_is_refused_with_the_reason(client: TestClient, cluster: Cluster) -> None:
    cluster.put_host("h2", memory=1536)  # 1536 - 256 reserve - 512 (cache) = 768 MiB free
    cluster.put_host("h3", alive=False, state=HostState.OFFLINE)
    before = cluster.dump()
    response = post(client, "/api/v1/hosts/h1/drain")
    assert response.status_code == 409, response.text
    assert response.json() == {
        "detail": "the drain of h1 cannot finish: VM db has nowhere to go; make room on another host, "
                  "or force the drain to leave them running there",
        "problems": [("VM db (1024 MiB, priority 3) cannot move: h2, the only other online host, has 768 MiB "
                      "free (256 MiB missing)")]}
    assert cluster.dump() == before  # nothing written
    forced = post(client, "/api/v1/hosts/h1/drain", {"force": True})
    assert forced.status_code == 202, forced.text
    assert HostAdmin.model_validate_json(cluster.dump()[cluster.layout.host_admin("h1")]).maintenance


def test_a_drain_is_checked_in_priority_order(client: TestClient, cluster: Cluster) -> None:
    """db (priority 3) takes h2's last room first, as the manager would, so web (priority 2) and
    alpha (priority 1) are left behind, not db (by name, alpha would have gone first)."""
    cluster.put_host("h2", memory=1792)  # 1024 MiB free
    cluster.put_host("h3", alive=False, state=HostState.LOST)
    cluster.put_vm("alpha", "h1", priority=1)
    response = post(client, "/api/v1/hosts/h1/drain")
    assert response.status_code == 409
    assert response.json()["detail"].startswith("the drain of h1 cannot finish: 2 VMs (web, alpha) have nowhere")
    assert response.json()["problems"] == [
        "VM web (512 MiB, priority 2) cannot move: h2, the only other online host, has 0 MiB free (512 MiB missing)",
        ("VM alpha (512 MiB, priority 1) cannot move: h2, the only other online host, has 0 MiB free "
         "(512 MiB missing)")]


def test_a_priority_0_vm_without_room_does_not_block_a_drain(client: TestClient, cluster: Cluster) -> None:
    """The manager stops it (the drain finishes), so it is no reason to refuse; it is listed when an
    HA VM blocks the drain anyway."""
    cluster.put_host("h2", alive=False, state=HostState.FENCED)
    cluster.put_host("h3", memory=1024)  # 768 MiB free
    cluster.put_vm("web", "h1", memory=1024, priority=0)
    cluster.put_vm("db", "h1", memory=512, priority=0)
    assert post(client, "/api/v1/hosts/h1/drain").status_code == 202
    post(client, "/api/v1/hosts/h1/resume")
    cluster.put_vm("db", "h1", memory=1024, priority=3)
    cluster.put_host("h2")  # two candidates now: each one's reason
    cluster.put_vm("hog", "h2", memory=3584)
    response = post(client, "/api/v1/hosts/h1/drain")
    assert response.status_code == 409
    assert response.json()["problems"] == [
        ("VM db (1024 MiB, priority 3) cannot move: h2 has 0 MiB free (1024 MiB missing); "
         "h3 has 768 MiB free (256 MiB missing)"),
        ("VM web (1024 MiB, priority 0) would be stopped (priority 0): h2 has 0 MiB free (1024 MiB missing); "
         "h3 has 768 MiB free (256 MiB missing)")]


def test_a_drain_with_no_other_host_online_says_so(client: TestClient, cluster: Cluster) -> None:
    cluster.put_host("h2", alive=False, state=HostState.OFFLINE)
    cluster.put_host("h3", state=HostState.MAINTENANCE)
    response = post(client, "/api/v1/hosts/h1/drain")
    assert response.status_code == 409
    assert response.json()["problems"][0] == ("VM db (1024 MiB, priority 3) cannot move: no other host is online "
                                              "(h2 is offline, h3 is in maintenance)")


def test_a_drain_of_a_down_host_is_refused_unless_forced(client: TestClient, cluster: Cluster) -> None:
    cluster.put_host("h3", alive=False, state=HostState.OFFLINE)
    response = post(client, "/api/v1/hosts/h3/drain", {"force": False})
    assert response.status_code == 409
    assert response.json()["detail"].startswith("host h3 is offline: it runs no VM to drain")
    assert cluster.layout.host_admin("h3") not in cluster.dump()
    assert post(client, "/api/v1/hosts/h3/drain", {"force": True}).status_code == 202


@pytest.mark.parametrize("body,problem", [
    ({"force": "maybe"}, "force: "), ({"forse": True}, "forse: "), ([True], "(body): expected an object")])
def test_a_drain_body_is_validated(client: TestClient, body: Any, problem: str) -> None:
    response = post(client, "/api/v1/hosts/h1/drain", body)
    assert response.status_code == 422
    assert response.json()["problems"][0].startswith(problem), response.json()


# -- atomicity -------------------------------------------------------------------------------

class RacingStore:
    """Lets another writer change `key` just before the API's transaction."""

    def __init__(self, cluster: Cluster, key: str, value: str) -> None:
        self._store, self._key, self._value = cluster.store, key, value

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def txn(self, compares: Any, success: Any, failure: Any = ()) -> Any:
        self._store.put(self._key, self._value)
        return self._store.txn(compares, success, failure)


@pytest.mark.parametrize("method,path,body,key", [
    ("PUT", "/api/v1/vms/web", {"memory_mib": 300}, "vm_spec"),
    ("POST", "/api/v1/vms/web/stop", None, "vm_spec"),
    ("POST", "/api/v1/vms/web/migrate", {"target": "h2"}, "placement"),
    ("POST", "/api/v1/hosts/h1/drain", None, "host_admin"),
])
def test_a_concurrent_change_gives_409_and_no_write(cluster: Cluster, method: str, path: str,
                                                    body: dict | None, key: str) -> None:
    name = path.split("/")[4]
    racing_key = getattr(cluster.layout, key)(name)
    racing_value = cluster.dump().get(racing_key, json.dumps({"maintenance": False}))
    racing = RacingStore(cluster, racing_key, racing_value)
    app = create_app(racing, cluster.layout, admin_token=ADMIN, read_token=READ,  # type: ignore[arg-type]
                     clock=cluster.clock)
    with TestClient(app, raise_server_exceptions=False) as client:
        before = cluster.dump()
        response = client.request(method, path, json=body, headers=AUTH_ADMIN)
    assert response.status_code == 409, response.text
    assert "changed while this request was handled" in response.json()["detail"]
    assert cluster.dump() == {**before, racing_key: racing_value}  # only the racer's write


def test_on_write_is_called_after_accepted_writes_only(cluster: Cluster) -> None:
    calls: list[int] = []
    app = create_app(cluster.store, cluster.layout, admin_token=ADMIN, read_token=READ, clock=cluster.clock,
                     on_write=lambda: calls.append(1))
    with TestClient(app) as client:
        post(client, "/api/v1/hosts/h1/drain")
        post(client, "/api/v1/vms/web/migrate", {"target": "h9"})
    assert calls == [1]


def test_txn_is_the_only_write_path(cluster: Cluster) -> None:
    """Every accepted write goes through one transaction (never several puts)."""
    ops: list[list[Any]] = []

    class Recording(RacingStore):
        def txn(self, compares: Any, success: Any, failure: Any = ()) -> Any:
            ops.append(list(success))
            return self._store.txn(compares, success, failure)

        def put(self, *args: Any, **kwargs: Any) -> Any:
            raise AssertionError("the API must write through txn")

    app = create_app(Recording(cluster, "", ""), cluster.layout, admin_token=ADMIN,  # type: ignore[arg-type]
                     read_token=READ, clock=cluster.clock)
    with TestClient(app) as client:
        post(client, "/api/v1/vms", {"name": "fresh"})
        post(client, "/api/v1/vms/web/migrate", {"target": "h3"})
    assert [[type(op) for op in batch] for batch in ops] == [[Put], [Put]]


def test_placement_policies_are_checked_against_the_cluster(client: TestClient, cluster: Cluster) -> None:
    cluster.put_vm("cache", "h1", affinity_group="shop", anti_affinity_group="apart")
    response = post(client, "/api/v1/vms", {
        "name": "app", "preferred_hosts": [["h1", "h9"], "h2"], "affinity_group": "shop",
        "anti_affinity_group": "apart"})
    assert response.status_code == 422
    problems = response.json()["problems"]
    assert problems[0].startswith("preferred_hosts[0]: host 'h9' does not exist")
    assert problems[1] == ("affinity_group: vm cache: keep-together group 'shop' also holds vm app of its "
                           "anti-affinity group 'apart': they can never share a host")
    twice = post(client, "/api/v1/vms", {"name": "app", "preferred_hosts": ["h1", ["h2", "h1"]]})
    assert twice.status_code == 422 and twice.json()["problems"] == ["preferred_hosts: host 'h1' is named twice"]
    created = post(client, "/api/v1/vms", {"name": "app", "preferred_hosts": [["h1", "h2"]], "restricted": True,
                                           "failback": True, "affinity_group": "shop"})
    assert created.status_code == 201, created.json()
    assert spec_in(cluster, "app").preference_levels == (("h1", "h2"),)
