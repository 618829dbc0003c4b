"""The service routes over a simulated cluster (`haven sim serve`'s app, with the wall clock in the
test's hands): what they show, what they accept, what they refuse and why, and the pet's mood."""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from haven.api import create_app
from haven.api.sim_backend import SimBackend
from haven.sim.cluster import SimCluster
from haven.sim.scenario import cluster_from_scenario

from .conftest import ADMIN, AUTH_ADMIN, AUTH_READ, READ

SCENARIO = Path(__file__).with_name("services-scenario.yaml")
SETTLED_S = 8.0  # virtual seconds by which every member has booted and db runs on db1


@dataclass
class Sim:
    cluster: SimCluster
    client: TestClient
    wall: list[float]

    def advance(self, seconds: float) -> None:
        self.wall[0] += seconds
        self.client.get("/healthz")  # any store call brings the simulation to the wall clock

    def until(self, done: Any, limit_s: float = 30.0, step_s: float = 0.1) -> None:
        """Advance until `done()` holds (virtual seconds, at most `limit_s`)."""
        waited = 0.0
        while not done():
            assert waited < limit_s, f"not done after {limit_s} virtual seconds"
            self.advance(step_s)
            waited += step_s

    def get(self, path: str) -> Any:
        response = self.client.get(path, headers=AUTH_READ)
        assert response.status_code == 200, response.text
        return response.json()

    def service(self, name: str = "db") -> Any:
        return self.get(f"/api/v1/services/{name}")

    def fault(self, line: str) -> None:
        assert self.client.post("/api/v1/sim/fault", json={"line": line}, headers=AUTH_ADMIN).status_code == 202

    def stored(self) -> dict[str, str]:
        return {kv.key: kv.value for kv in self.cluster.client("test").get_prefix(self.cluster.layout.root)
                if "/events/" not in kv.key}


@pytest.fixture
def sim() -> Iterator[Sim]:
    cluster = cluster_from_scenario(SCENARIO)
    wall = [0.0]
    backend = SimBackend(cluster, 1.0, scenario=SCENARIO.stem, wall=lambda: wall[0])
    app = create_app(backend.store("api"), cluster.layout, admin_token=ADMIN, read_token=READ,
                     clock=backend.clock, on_write=backend.advance, sim_control=backend)
    with TestClient(app, raise_server_exceptions=False) as client:
        sim = Sim(cluster, client, wall)
        sim.advance(SETTLED_S)
        yield sim


def member(service: Any, name: str) -> Any:
    return next(m for m in service["members"] if m["name"] == name)


# --- reading ---

def test_list_shows_each_service_with_its_members_the_active_one_and_the_floating_ip(sim: Sim) -> None:
    services = {s["name"]: s for s in sim.get("/api/v1/services")}
    assert sorted(services) == ["db", "jobs"]
    db = services["db"]
    assert (db["phase"], db["active"], db["active_host"], db["floating_ip"]) == ("running", "db1", "h1",
                                                                                  "10.0.9.10/24")
    assert db["standbys"] == ["db2"] and db["generation"] >= 1
    assert [(m["name"], m["host"], m["active"], m["condition"]) for m in db["members"]] == [
        ("db1", "h1", True, "healthy"), ("db2", "h2", False, "healthy")]
    db1, db2 = member(db, "db1"), member(db, "db2")
    assert (db1["holds_disk"], db1["disk_mounted"], db1["holds_ip"], db1["app_started"]) == (True, True, True, True)
    assert (db2["holds_disk"], db2["holds_ip"], db2["app_started"]) == (False, False, False)
    assert db1["qemu"] and db1["guest"] == "answering" and db1["reported"] and db1["host_state"] == "online"
    assert db["state"]["active"] == "db1" and db["spec"]["data_disk"]["pool"] == "san"
    jobs = services["jobs"]
    assert (jobs["phase"], jobs["desired"], jobs["active"]) == ("stopped", "stopped", None)


def test_unknown_service_is_404(sim: Sim) -> None:
    for method, path in (("GET", "/api/v1/services/nope"), ("GET", "/api/v1/services/nope/history"),
                         ("POST", "/api/v1/services/nope/move"), ("POST", "/api/v1/services/nope/stop"),
                         ("POST", "/api/v1/services/nope/start"), ("DELETE", "/api/v1/services/nope")):
        response = sim.client.request(method, path, headers=AUTH_ADMIN)
        assert response.status_code == 404, (method, path)
        assert response.json()["detail"] == "service 'nope' does not exist"


def test_history_holds_the_services_own_events(sim: Sim) -> None:
    events = sim.get("/api/v1/services/db/history")["events"]
    assert events and all(e["subject"] == "service db" for e in events)
    assert any("running on db1" in e["message"] for e in events)


def test_summary_counts_services_by_phase_and_the_pet_is_content(sim: Sim) -> None:
    summary = sim.get("/api/v1/summary")
    assert summary["services"]["running"] == 1 and summary["services"]["stopped"] == 1
    assert summary["protection"]["mood"] == "content"
    # web and the spares are the HA VMs: the members are counted through their services.
    assert summary["protection"]["reason"] == ("all 3 HA VMs run; the cluster survives 1 host failure; "
                                               "1 service runs with a healthy standby")


def test_the_pet_is_worried_without_a_healthy_standby_and_ill_when_the_service_is_down(sim: Sim) -> None:
    sim.fault("power off h2")  # db2's host
    sim.until(lambda: sim.get("/api/v1/summary")["protection"]["mood"] == "worried")
    reason = sim.get("/api/v1/summary")["protection"]["reason"]
    assert "service db has no healthy standby (db2 host lost)" in reason
    metrics = sim.client.get("/metrics", headers=AUTH_READ).text
    assert "haven_protection_level 1.0" in metrics and 'haven_services{phase="running"} 1.0' in metrics
    sim.fault("crash vm db1")  # and now the active one: nowhere to go
    sim.until(lambda: sim.service()["phase"] == "down")
    protection = sim.get("/api/v1/summary")["protection"]
    assert (protection["level"], protection["mood"]) == ("down", "ill")
    assert protection["reason"].startswith("service db is down: ")
    assert sim.service()["reason"] in protection["reason"]


# --- moving ---

def test_move_to_a_member_is_accepted_and_the_manager_moves_it(sim: Sim) -> None:
    before = sim.service()
    response = sim.client.post("/api/v1/services/db/move", json={"target": "db2"}, headers=AUTH_ADMIN)
    assert response.status_code == 202, response.text
    answer = response.json()
    assert answer["message"] == "move of service db to db2 requested"
    assert answer["service"]["request"] == {"id": answer["request_id"], "action": "move", "target": "db2"}
    sim.until(lambda: sim.service()["phase"] == "running" and sim.service()["active"] == "db2")
    after = sim.service()
    assert after["generation"] > before["generation"] and after["request"] is None
    assert after["standbys"] == ["db1"] and member(after, "db2")["holds_disk"]


def test_move_without_a_target_picks_the_other_healthy_member(sim: Sim) -> None:
    response = sim.client.post("/api/v1/services/db/move", headers=AUTH_ADMIN)
    assert response.status_code == 202, response.text
    assert response.json()["message"] == "move of service db to the best other member requested"
    sim.until(lambda: sim.service()["active"] == "db2" and sim.service()["phase"] == "running")


@pytest.mark.parametrize("body,status,detail,problem", [
    ({"target": "web"}, 422, "web is not a member of service db",
     "target: 'web' is not a member of service db (members: db1, db2)"),
    ({"target": "db1"}, 422, "service db already runs on db1",
     "target: service db already runs on db1; pick another member"),
    ({"target": ""}, 422, "the move request is not valid (1 problem)", "target: String should match pattern"),
    ({"to": "db2"}, 422, "the move request is not valid (1 problem)", "to: unknown field"),
])
def test_a_move_that_can_never_work_is_422_and_changes_nothing(sim: Sim, body: Any, status: int, detail: str,
                                                                problem: str) -> None:
    before = sim.stored()
    response = sim.client.post("/api/v1/services/db/move", json=body, headers=AUTH_ADMIN)
    assert response.status_code == status, response.text
    assert response.json()["detail"] == detail
    assert any(line.startswith(problem) for line in response.json()["problems"]), response.json()
    assert sim.stored() == before


def test_a_stopped_service_cannot_move(sim: Sim) -> None:
    response = sim.client.post("/api/v1/services/jobs/move", json={"target": "jobs2"}, headers=AUTH_ADMIN)
    assert response.status_code == 409
    assert response.json()["detail"] == ("service jobs is stopped (desired: stopped): start it before moving it "
                                         "(POST /api/v1/services/jobs/start)")
    assert sim.cluster.layout.service_request("jobs") not in sim.stored()


def test_a_move_to_an_unhealthy_member_is_409_with_the_managers_reason(sim: Sim) -> None:
    sim.fault("hang guest db2")
    sim.until(lambda: member(sim.service(), "db2")["condition"] != "healthy")
    condition = member(sim.service(), "db2")["condition"]  # the wall clock stands still until the next advance
    response = sim.client.post("/api/v1/services/db/move", json={"target": "db2"}, headers=AUTH_ADMIN)
    assert response.status_code == 409, response.text
    assert response.json()["detail"] == f"service db cannot move now: db2 is {condition}"
    response = sim.client.post("/api/v1/services/db/move", headers=AUTH_ADMIN)
    assert response.status_code == 409, response.text
    assert response.json()["detail"].startswith("service db cannot move now: no other healthy member (")
    assert sim.cluster.layout.service_request("db") not in sim.stored()


def test_a_second_move_waits_for_the_first(sim: Sim) -> None:
    assert sim.client.post("/api/v1/services/db/move", json={"target": "db2"}, headers=AUTH_ADMIN).status_code == 202
    response = sim.client.post("/api/v1/services/db/move", json={"target": "db2"}, headers=AUTH_ADMIN)
    assert response.status_code == 409
    assert "already has a pending move request" in response.json()["detail"]


def test_a_service_not_running_yet_cannot_move(sim: Sim) -> None:
    assert sim.client.post("/api/v1/services/jobs/start", headers=AUTH_ADMIN).status_code == 202
    response = sim.client.post("/api/v1/services/jobs/move", headers=AUTH_ADMIN)
    assert response.status_code == 409, response.text  # the manager has not started it yet
    assert "only a running service can be moved" in response.json()["detail"]


# --- start and stop ---

def test_stop_then_start(sim: Sim) -> None:
    response = sim.client.post("/api/v1/services/db/stop", headers=AUTH_ADMIN)
    assert response.status_code == 202 and response.json()["message"] == "service db: stop requested"
    assert response.json()["service"]["desired"] == "stopped"
    again = sim.client.post("/api/v1/services/db/stop", headers=AUTH_ADMIN).json()
    assert again["message"] == "service db is already meant to be stopped"
    sim.until(lambda: sim.service()["phase"] == "stopped")
    stopped = sim.service()
    assert stopped["active"] is None
    assert not any(m["holds_disk"] or m["holds_ip"] or m["app_started"] for m in stopped["members"])
    assert sim.get("/api/v1/summary")["protection"]["reason"] == "all 3 HA VMs run; the cluster survives 1 host failure"
    response = sim.client.post("/api/v1/services/db/start", headers=AUTH_ADMIN)
    assert response.status_code == 202 and response.json()["message"] == "service db: start requested"
    sim.until(lambda: sim.service()["phase"] == "running")
    assert sim.service()["active"] == "db1"


def test_the_read_only_token_changes_nothing(sim: Sim) -> None:
    before = sim.stored()
    for path in ("/api/v1/services/db/move", "/api/v1/services/db/stop", "/api/v1/services/jobs/start"):
        response = sim.client.post(path, headers=AUTH_READ)
        assert response.status_code == 403, path
    assert sim.client.delete("/api/v1/services/jobs", headers=AUTH_READ).status_code == 403
    assert sim.client.post("/api/v1/services/db/stop").status_code == 401
    assert sim.stored() == before


# --- declaring ---

NEW = {"name": "cache", "members": ["spare1", "spare3"], "start": ["c", "start"], "stop": ["c", "stop"],
       "check": ["c", "check"], "floating_ip": "10.0.9.12/24", "desired": "stopped"}


def test_create_update_and_delete_a_service(sim: Sim) -> None:
    response = sim.client.post("/api/v1/services", json=NEW, headers=AUTH_ADMIN)
    assert response.status_code == 201, response.text
    assert response.json()["message"] == "service cache declared"
    assert response.json()["service"]["phase"] == "stopped"  # declared stopped: nothing to wait for
    assert sim.client.post("/api/v1/services", json=NEW, headers=AUTH_ADMIN).status_code == 409
    # PUT: the URL names it; a spec read back from GET is accepted as it is.
    spec = sim.service("cache")["spec"]
    response = sim.client.put("/api/v1/services/cache", json={**spec, "check_interval_s": 5}, headers=AUTH_ADMIN)
    assert response.status_code == 200, response.text
    assert sim.service("cache")["spec"]["check_interval_s"] == 5
    renamed = sim.client.put("/api/v1/services/cache", json={**spec, "name": "other"}, headers=AUTH_ADMIN)
    assert renamed.status_code == 422 and renamed.json()["problems"] == [
        "name: must be 'cache' (the service in the URL), got 'other'"]
    response = sim.client.delete("/api/v1/services/cache", headers=AUTH_ADMIN)
    assert response.status_code == 200 and response.json()["message"] == "service cache deleted"
    assert sim.client.get("/api/v1/services/cache", headers=AUTH_READ).status_code == 404


def test_create_from_yaml(sim: Sim) -> None:
    body = ("name: cache\nmembers: [spare1, spare3]\nstart: [c, start]\nstop: [c, stop]\ncheck: [c, check]\n"
            "floating_ip: 10.0.9.12/24\n")
    response = sim.client.post("/api/v1/services", content=body, headers={**AUTH_ADMIN,
                                                                           "Content-Type": "application/yaml"})
    assert response.status_code == 201, response.text
    assert sim.service("cache")["desired"] == "running"


@pytest.mark.parametrize("change,problem", [
    ({"members": ["spare1", "db1"]}, "service cache: vm db1 is already a member of service db"),
    ({"members": ["spare1", "ghost"]}, "service cache: member ghost is not a declared VM"),
    ({"members": ["spare1", "web"]}, "service cache: member web must be pinned to one host"),
    ({"members": ["spare1", "db1x"]}, "service cache: member db1x is not a declared VM"),
    ({"floating_ip": "10.0.9.10/24"}, "service cache: floating IP 10.0.9.10 is already service db's"),
    ({"data_disk": {"pool": "nas"}}, "service cache: host h1 (member spare1) cannot reach pool nas"),
])
def test_a_service_that_does_not_fit_the_cluster_is_422(sim: Sim, change: dict[str, Any], problem: str) -> None:
    before = sim.stored()
    response = sim.client.post("/api/v1/services", json={**NEW, **change}, headers=AUTH_ADMIN)
    assert response.status_code == 422, response.text
    assert response.json()["detail"].startswith("the service spec does not fit this cluster")
    assert any(line.startswith(problem) for line in response.json()["problems"]), response.json()
    assert sim.stored() == before


def test_members_sharing_a_host_are_refused(sim: Sim) -> None:
    response = sim.client.post("/api/v1/services", json={**NEW, "members": ["spare1", "db1"], "name": "x"},
                               headers=AUTH_ADMIN)
    assert response.status_code == 422
    assert "service x: members spare1 and db1 are both on host h1; one host failure would take both" in \
        response.json()["problems"]


def test_an_invalid_spec_says_each_problem(sim: Sim) -> None:
    response = sim.client.post("/api/v1/services", json={**NEW, "members": ["spare1"], "floating_ip": "10.0.9.12"},
                               headers=AUTH_ADMIN)
    assert response.status_code == 422
    problems = response.json()["problems"]
    assert len(problems) == 2 and any(p.startswith("members:") for p in problems) and any(
        p.startswith("floating_ip:") and "prefix length" in p for p in problems)


def test_a_running_service_is_not_deleted(sim: Sim) -> None:
    response = sim.client.delete("/api/v1/services/db", headers=AUTH_ADMIN)
    assert response.status_code == 409
    assert response.json()["detail"] == ("service db is running on db1: stop it first "
                                         "(POST /api/v1/services/db/stop), then delete it once it is stopped")
    assert sim.cluster.layout.service_spec("db") in sim.stored()


def test_a_stopped_service_is_deleted_and_its_members_stay(sim: Sim) -> None:
    assert sim.client.delete("/api/v1/services/jobs", headers=AUTH_ADMIN).status_code == 200
    assert [s["name"] for s in sim.get("/api/v1/services")] == ["db"]
    assert sim.client.get("/api/v1/vms/jobs1", headers=AUTH_READ).status_code == 200


def test_a_member_vm_cannot_be_deleted_or_unpinned(sim: Sim) -> None:
    response = sim.client.delete("/api/v1/vms/jobs1", headers=AUTH_ADMIN)
    assert response.status_code == 409
    assert response.json()["detail"].startswith("VM jobs1 is a member of service jobs")
    spec = sim.get("/api/v1/vms/jobs1")["spec"]
    response = sim.client.put("/api/v1/vms/jobs1", json={**spec, "preferred_hosts": [], "restricted": False},
                              headers=AUTH_ADMIN)
    assert response.status_code == 422
    assert "service jobs: member jobs1 must be pinned to one host (give it exactly one preferred host)" in \
        response.json()["problems"]
    moved = sim.client.put("/api/v1/vms/jobs1", json={**spec, "preferred_hosts": ["h3"]}, headers=AUTH_ADMIN)
    assert moved.status_code == 422
    assert any("are both on host h3" in p for p in moved.json()["problems"])
    # A change that keeps it pinned where it is goes through.
    assert sim.client.put("/api/v1/vms/jobs1", json={**spec, "memory_mib": 384}, headers=AUTH_ADMIN).status_code == 200


def test_a_member_vm_is_not_migrated(sim: Sim) -> None:
    response = sim.client.post("/api/v1/vms/db1/migrate", json={"kind": "live", "target": "h3"}, headers=AUTH_ADMIN)
    assert response.status_code == 422
    assert response.json()["detail"] == ("VM db1 is a member of service db and never leaves its host: move the "
                                         "service instead (POST /api/v1/services/db/move)")
    assert sim.cluster.layout.request("db1") not in sim.stored()
