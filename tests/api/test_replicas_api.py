"""Replicated pools through the API: a VM's copies in GET /vms, declaring pools, promoting a
stale copy, the pet's worry and the metrics. Both tokens read; only the admin token writes."""
from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from haven.model.replica import CopyState, DiskCopy, PoolKind, PoolSpec, ReplicaRecord
from haven.model.spec import Disk, HostSpec
from haven.model.state import RequestAction, VmRequest, VmState

from .conftest import AUTH_ADMIN, AUTH_READ, Cluster
from .test_metrics import samples

PAIR = PoolSpec(name="pair", kind=PoolKind.REPLICATED, hosts=("h2", "h3"))
BOTH = pytest.mark.parametrize("auth", [AUTH_ADMIN, AUTH_READ], ids=["admin", "read"])


def list_pool(cluster: Cluster, host: str, *pools: str) -> None:
    key = cluster.layout.host(host)
    spec = HostSpec.model_validate_json(cluster.dump()[key])
    cluster.store.put(key, spec.model_copy(update={"pools": ("shared", *pools)}).model_dump_json())


def put_copy(cluster: Cluster, state: CopyState, since: float = 40.0, done: int = 0, total: int = 0,
             reason: str = "", primary: str = "h3", host: str = "h2") -> None:
    record = ReplicaRecord(vm="vault", primary=primary, generation=1, copies=(
        DiskCopy(disk=0, host=host, state=state, since=since, done=done, total=total, reason=reason),))
    cluster.store.put(cluster.layout.replica("vault"), record.model_dump_json())


def pair_vm(cluster: Cluster, state: VmState = VmState.STOPPED, copy: CopyState = CopyState.STALE,
            **kwargs: Any) -> None:
    """vault: on replicated pool `pair` (h2 and h3), primary h3, its copy on h2 `copy` since t=40."""
    list_pool(cluster, "h2", "pair")
    list_pool(cluster, "h3", "pair")
    cluster.store.put(cluster.layout.pool("pair"), PAIR.model_dump_json())
    cluster.put_vm("vault", "h3", state, memory=256, priority=3,
                   disks=(Disk(pool="pair", file="vault-0.raw"),), write_without_replica=True)
    put_copy(cluster, copy, **kwargs)


def promote(client: TestClient, body: Any, auth: dict[str, str] = AUTH_ADMIN, vm: str = "vault") -> Any:
    return client.post(f"/api/v1/vms/{vm}/promote", json=body, headers=auth)


def request_in(cluster: Cluster, vm: str) -> VmRequest | None:
    value = cluster.dump().get(cluster.layout.request(vm))
    return VmRequest.model_validate_json(value) if value else None


# -- GET /vms ------------------------------------------------------------------------------------

@BOTH
def test_a_vm_shows_its_copies_with_their_age_and_progress(client: TestClient, cluster: Cluster,
                                                           auth: dict[str, str]) -> None:
    pair_vm(cluster, VmState.RUNNING, CopyState.SYNCING, done=40, total=100, reason="resync after h2 returned")
    body = client.get("/api/v1/vms/vault", headers=auth).json()
    assert body["replicas"] == {
        "primary": "h3", "protected": False, "incoming": None, "promoted_at": None, "write_without_replica": True,
        "copies": [{"disk": 0, "host": "h2", "state": "syncing", "since": 40.0, "age_s": 60.0, "done": 40,
                    "total": 100, "progress": 0.4, "reason": "resync after h2 returned"}]}
    listed = {vm["name"]: vm for vm in client.get("/api/v1/vms", headers=auth).json()}
    assert listed["vault"]["replicas"] == body["replicas"]
    assert listed["web"]["replicas"] is None  # no replicated disk: no record


def test_a_vm_whose_copies_are_all_in_sync_is_protected(client: TestClient, cluster: Cluster) -> None:
    pair_vm(cluster, VmState.RUNNING, CopyState.IN_SYNC)
    replicas = client.get("/api/v1/vms/vault", headers=AUTH_READ).json()["replicas"]
    assert replicas["protected"] is True and replicas["copies"][0]["progress"] is None


# -- pools ---------------------------------------------------------------------------------------

@BOTH
def test_pools_are_listed_declared_or_not(client: TestClient, cluster: Cluster, auth: dict[str, str]) -> None:
    pair_vm(cluster)
    pools = client.get("/api/v1/pools", headers=auth).json()
    assert [(p["name"], p["kind"], p["declared"], p["hosts"], p["vms"]) for p in pools] == [
        ("pair", "replicated", True, ["h2", "h3"], ["vault"]),
        ("shared", "shared", False, ["h1", "h2", "h3"], [])]  # the fixture's VMs have no disk
    assert client.get("/api/v1/pools/pair", headers=auth).json()["spec"] == PAIR.model_dump(mode="json")
    missing = client.get("/api/v1/pools/nas", headers=auth)
    assert missing.status_code == 404 and missing.json()["detail"] == "pool 'nas' does not exist"


def test_the_admin_declares_a_replicated_pool(client: TestClient, cluster: Cluster) -> None:
    list_pool(cluster, "h1", "mirror")
    list_pool(cluster, "h2", "mirror")
    response = client.put("/api/v1/pools/mirror", json={"kind": "replicated", "hosts": ["h1", "h2"]},
                          headers=AUTH_ADMIN)
    assert response.status_code == 200, response.text
    assert response.json()["message"] == "replicated pool mirror on h1 and h2 declared"
    assert response.json()["pool"]["hosts"] == ["h1", "h2"]
    stored = PoolSpec.model_validate_json(cluster.dump()[cluster.layout.pool("mirror")])
    assert stored == PoolSpec(name="mirror", kind=PoolKind.REPLICATED, hosts=("h1", "h2"))
    again = client.put("/api/v1/pools/mirror", content=b"kind: replicated\nhosts: [h1, h2]\n",
                       headers={**AUTH_ADMIN, "Content-Type": "application/yaml"})
    assert again.status_code == 200 and again.json()["message"] == "pool mirror is already declared so"


def test_a_read_only_token_cannot_declare_a_pool(client: TestClient, cluster: Cluster) -> None:
    list_pool(cluster, "h1", "mirror")
    list_pool(cluster, "h2", "mirror")
    before = cluster.dump()
    response = client.put("/api/v1/pools/mirror", json={"kind": "replicated", "hosts": ["h1", "h2"]},
                          headers=AUTH_READ)
    assert response.status_code == 403
    assert cluster.dump() == before


@pytest.mark.parametrize("listed,body,problems", [
    ((), {"kind": "replicated", "hosts": ["h1", "h9"]},
     ["replicated pool mirror: host 'h9' is not a declared host",
      "host h1 holds a copy of replicated pool mirror: add it to its pools"]),
    (("h1",), {"kind": "replicated", "hosts": ["h1", "h2"]},
     ["host h2 holds a copy of replicated pool mirror: add it to its pools"]),
    (("h1", "h2", "h3"), {"kind": "replicated", "hosts": ["h1", "h2"]},
     ["host h3 lists replicated pool mirror, which lives on h1 and h2 only"]),
])
def test_a_pool_that_does_not_fit_the_cluster_writes_nothing(client: TestClient, cluster: Cluster,
                                                             listed: tuple[str, ...], body: Any,
                                                             problems: list[str]) -> None:
    for host in listed:
        list_pool(cluster, host, "mirror")
    before = cluster.dump()
    response = client.put("/api/v1/pools/mirror", json=body, headers=AUTH_ADMIN)
    assert response.status_code == 422, response.text
    n = len(problems)
    assert response.json() == {"detail": f"the pool does not fit this cluster ({n} problem{'s' if n > 1 else ''})",
                               "problems": problems}
    assert cluster.dump() == before


@pytest.mark.parametrize("body,detail,problem", [
    ({"kind": "replicated", "hosts": ["h1"]}, "the pool spec is not valid (1 problem)", "needs two different hosts"),
    ({"kind": "replicated", "hosts": ["h1", "h2"], "name": "other"}, "the pool's name differs from the URL",
     "name: must be 'mirror'"),
    ({"kind": "raid"}, "the pool spec is not valid (1 problem)", "kind"),
    ({"hosts": ["h1"]}, "the pool spec is not valid (1 problem)", "hosts are named for a replicated pool only"),
])
def test_an_invalid_pool_spec_writes_nothing(client: TestClient, cluster: Cluster, body: Any, detail: str,
                                            problem: str) -> None:
    before = cluster.dump()
    response = client.put("/api/v1/pools/mirror", json=body, headers=AUTH_ADMIN)
    assert response.status_code == 422, response.text
    assert response.json()["detail"] == detail
    assert any(problem in line for line in response.json()["problems"]), response.json()
    assert cluster.dump() == before


def test_a_replicated_pool_in_use_cannot_change_its_hosts(client: TestClient, cluster: Cluster) -> None:
    pair_vm(cluster)
    list_pool(cluster, "h1", "pair")
    list_pool(cluster, "h3")
    before = cluster.dump()
    response = client.put("/api/v1/pools/pair", json={"kind": "replicated", "hosts": ["h1", "h2"]},
                          headers=AUTH_ADMIN)
    assert response.status_code == 409
    assert response.json()["detail"].startswith("pool pair holds disks of VM vault")
    assert cluster.dump() == before


# -- promote -------------------------------------------------------------------------------------

def test_promote_says_how_stale_the_copy_is_and_writes_the_request(client: TestClient, cluster: Cluster) -> None:
    pair_vm(cluster, reason="h2 lost")
    response = promote(client, {"target": "h2", "accept_data_loss": True})
    assert response.status_code == 202, response.text
    body = response.json()
    assert {k: body[k] for k in ("target", "state", "since", "stale_s", "reason")} == {
        "target": "h2", "state": "stale", "since": 40.0, "stale_s": 60.0, "reason": "h2 lost"}
    assert body["message"] == ("promotion of VM vault to h2 requested: its copy there is stale for 60 s (h2 lost); "
                               "the writes it lacks are lost")
    request = request_in(cluster, "vault")
    assert request is not None and request.id == body["request_id"]
    assert (request.action, request.target) == (RequestAction.PROMOTE, "h2")
    assert body["vm"]["request"]["action"] == "promote"


def test_promote_without_accepting_the_loss_is_refused_and_says_what_would_be_lost(
        client: TestClient, cluster: Cluster) -> None:
    pair_vm(cluster, reason="h2 lost")
    before = cluster.dump()
    for body in ({"target": "h2"}, {"target": "h2", "accept_data_loss": False}):
        response = promote(client, body)
        assert response.status_code == 422
        assert response.json() == {
            "detail": "starting VM vault from its copy on h2 loses every write that copy lacks: it is stale for "
                      "60 s (h2 lost); send accept_data_loss: true to do it anyway",
            "problems": ["accept_data_loss: must be true"]}
    assert cluster.dump() == before


def test_a_read_only_token_cannot_promote(client: TestClient, cluster: Cluster) -> None:
    pair_vm(cluster)
    before = cluster.dump()
    assert promote(client, {"target": "h2", "accept_data_loss": True}, AUTH_READ).status_code == 403
    assert cluster.dump() == before


@pytest.mark.parametrize("setup,vm,body,status,detail", [
    ({}, "web", {"target": "h2", "accept_data_loss": True}, 422,
     "VM web has no copy on a replicated pool: there is nothing to promote"),
    ({}, "vault", {"target": "h1", "accept_data_loss": True}, 422, "VM vault has no copy on h1"),
    ({}, "nope", {"target": "h2", "accept_data_loss": True}, 404, "VM 'nope' does not exist"),
    ({"state": VmState.RUNNING}, "vault", {"target": "h2", "accept_data_loss": True}, 409,
     "vm vault is running: promote only a VM that runs nowhere"),
    ({"copy": CopyState.IN_SYNC}, "vault", {"target": "h2", "accept_data_loss": True}, 409,
     "the copy on h2 lacks nothing: no promotion needed"),
    ({}, "vault", {"accept_data_loss": True}, 422, "the promote request is not valid (1 problem)"),
])
def test_promote_refusals(client: TestClient, cluster: Cluster, setup: dict[str, Any], vm: str, body: Any,
                          status: int, detail: str) -> None:
    pair_vm(cluster, **setup)
    before = cluster.dump()
    response = promote(client, body, vm=vm)
    assert response.status_code == status, response.text
    assert response.json()["detail"] == detail
    assert cluster.dump() == before


def test_promote_onto_a_host_without_room_is_refused(client: TestClient, cluster: Cluster) -> None:
    pair_vm(cluster)
    cluster.put_vm("hog", "h2", memory=3500)
    response = promote(client, {"target": "h2", "accept_data_loss": True})
    assert response.status_code == 409
    assert response.json()["detail"].startswith("h2 cannot take it: ")


def test_a_second_promote_while_one_is_pending_is_a_conflict(client: TestClient, cluster: Cluster) -> None:
    pair_vm(cluster)
    assert promote(client, {"target": "h2", "accept_data_loss": True}).status_code == 202
    response = promote(client, {"target": "h2", "accept_data_loss": True})
    assert response.status_code == 409 and "already has a pending promote request" in response.json()["detail"]


# -- the pet and the metrics ---------------------------------------------------------------------

def protection(client: TestClient) -> dict[str, str]:
    return client.get("/api/v1/summary", headers=AUTH_READ).json()["protection"]


def test_the_pet_is_worried_while_a_running_vms_pair_is_unprotected(client: TestClient, cluster: Cluster) -> None:
    cluster.put_vm("broken", "h1")  # the fixture's VM in error runs again: the cluster is protected
    pair_vm(cluster, VmState.RUNNING, CopyState.IN_SYNC)
    assert protection(client)["mood"] == "content"
    put_copy(cluster, CopyState.SYNCING, done=40, total=100)
    assert protection(client) == {"level": "degraded", "mood": "worried",
                                  "reason": "vm vault on h3 has no in-sync replica (disk 0 on h2 syncing (40%))"}
    put_copy(cluster, CopyState.STALE, reason="h2 lost")
    assert protection(client)["reason"] == "vm vault on h3 has no in-sync replica (disk 0 on h2 stale (h2 lost))"
    cluster.put_vm("vault", "h3", VmState.STOPPED, memory=256, priority=0,
                   disks=(Disk(pool="pair", file="vault-0.raw"),))
    assert protection(client)["mood"] == "content"  # a VM that does not run needs no replica now


def test_replica_metrics(client: TestClient, cluster: Cluster) -> None:
    pair_vm(cluster, VmState.RUNNING, CopyState.SYNCING, done=25, total=100)
    labels = (("disk", "0"), ("host", "h2"), ("vm", "vault"))
    got = samples(client)
    assert got[("haven_replica_in_sync", labels)] == 0
    assert got[("haven_replica_sync_progress_ratio", labels)] == 0.25
    put_copy(cluster, CopyState.IN_SYNC)
    got = samples(client)
    assert got[("haven_replica_in_sync", labels)] == 1
    assert got[("haven_replica_sync_progress_ratio", labels)] == 1


def test_the_new_routes_are_documented(client: TestClient) -> None:
    document = client.get("/openapi.json").json()
    paths = document["paths"]
    body = paths["/api/v1/vms/{name}/promote"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/PromoteIn"}
    assert {"403", "404", "409", "422"} <= set(paths["/api/v1/vms/{name}/promote"]["post"]["responses"])
    assert "403" not in paths["/api/v1/pools"]["get"]["responses"]
    assert {"403", "409", "422"} <= set(paths["/api/v1/pools/{name}"]["put"]["responses"])
    assert {"PromoteIn", "PoolSpec", "ReplicasOut"} <= set(document["components"]["schemas"])


def test_a_shared_pool_in_use_cannot_become_replicated(client: TestClient, cluster: Cluster) -> None:
    list_pool(cluster, "h1", "nas")
    list_pool(cluster, "h2", "nas")
    cluster.put_vm("files", None, VmState.STOPPED, disks=(Disk(pool="nas", file="files-0.raw"),))
    before = cluster.dump()
    response = client.put("/api/v1/pools/nas", json={"kind": "replicated", "hosts": ["h1", "h2"]},
                          headers=AUTH_ADMIN)
    assert response.status_code == 409 and "holds disks of VM files" in response.json()["detail"]
    assert cluster.dump() == before
