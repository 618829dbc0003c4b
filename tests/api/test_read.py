"""Read routes: summary, hosts, VMs, history, events."""
from __future__ import annotations

from fastapi.testclient import TestClient

from .conftest import AUTH_READ, Cluster


def get(client: TestClient, path: str, **params: object) -> dict:
    response = client.get(path, headers=AUTH_READ, params=params)
    assert response.status_code == 200, response.text
    return response.json()


def test_summary(client: TestClient) -> None:
    s = get(client, "/api/v1/summary")
    assert s["cluster"] == "demo" and s["manager"] == "h1" and s["time"] == 100.0
    assert s["hosts"]["online"] == 3 and s["hosts"]["lost"] == 0
    assert s["vms"]["running"] == 3 and s["vms"]["stopped"] == 1 and s["vms"]["error"] == 1
    # broken (priority 2, desired running) is in error: the pet is ill and says why.
    assert s["protection"] == {"level": "down", "mood": "ill",
                               "reason": "HA VM broken (error) is not running"}
    assert s["simulation"] is None


def test_summary_content_once_the_error_vm_is_gone(client: TestClient, cluster: Cluster) -> None:
    cluster.store.delete(cluster.layout.vm("broken"), prefix=True)
    assert get(client, "/api/v1/summary")["protection"]["mood"] == "content"


def test_hosts_show_usage_vms_and_manager(client: TestClient) -> None:
    hosts = {h["name"]: h for h in get(client, "/api/v1/hosts")}
    assert list(hosts) == ["h1", "h2", "h3"]
    h1 = hosts["h1"]
    assert h1["vms"] == ["db", "web"] and h1["manager"] and h1["state"] == "online"
    assert h1["memory_mib"] == {"used": 1536, "total": 4096}
    assert h1["vcpus"] == {"used": 2, "total": 4}
    assert hosts["h3"]["vms"] == [] and not hosts["h3"]["manager"]


def test_host_state_follows_the_lease(client: TestClient, cluster: Cluster) -> None:
    cluster.store.delete(cluster.layout.alive("h2"))
    h2 = get(client, "/api/v1/hosts/h2")
    assert h2["state"] == "lost" and h2["alive"] is False


def test_unknown_host_and_vm_are_404_with_a_message(client: TestClient) -> None:
    for path, text in (("/api/v1/hosts/h9", "host 'h9' does not exist"),
                       ("/api/v1/vms/nope", "VM 'nope' does not exist"),
                       ("/api/v1/vms/nope/history", "VM 'nope' does not exist")):
        response = client.get(path, headers=AUTH_READ)
        assert response.status_code == 404 and response.json()["detail"] == text


def test_vms_list_and_detail(client: TestClient) -> None:
    vms = {v["name"]: v for v in get(client, "/api/v1/vms")}
    assert set(vms) == {"batch", "broken", "cache", "db", "web"}
    web = get(client, "/api/v1/vms/web")
    assert web["state"] == "running" and web["host"] == "h1" and web["ha"] is True
    assert web["spec"]["nics"][0]["mac"] == "52:54:00:00:00:01"
    assert web["placement"]["generation"] == 1 and web["request"] is None


def test_vm_history_only_has_its_events(client: TestClient) -> None:
    history = get(client, "/api/v1/vms/web/history")["events"]
    assert [e["message"] for e in history] == ["stopped -> starting on h1 (generation 1)",
                                               "starting -> running on h1"]
    assert history[1]["line"].startswith("t=12.000 manager")


def test_events_paging(client: TestClient, cluster: Cluster) -> None:
    for i in range(5):
        cluster.event(20.0 + i, "cluster", f"tick {i}")
    newest = get(client, "/api/v1/events", limit=2)
    assert [e["message"] for e in newest["events"]] == ["tick 3", "tick 4"]
    first = get(client, "/api/v1/events", after="", limit=3)
    assert len(first["events"]) == 3 and first["events"][0]["subject"] == "vm web"
    rest = get(client, "/api/v1/events", after=first["next"], limit=100)
    assert [e["message"] for e in rest["events"]] == ["tick 0", "tick 1", "tick 2", "tick 3", "tick 4"]
    assert rest["next"] == rest["events"][-1]["id"]
    empty = get(client, "/api/v1/events", after=rest["next"])
    assert empty == {"events": [], "next": rest["next"]}


def test_events_are_ordered_by_write_not_by_timestamp(client: TestClient, cluster: Cluster) -> None:
    last = get(client, "/api/v1/events", limit=1)["next"]
    cluster.event(5.0, "host h2", "late report from a slow clock")
    fresh = get(client, "/api/v1/events", after=last)["events"]
    assert [e["message"] for e in fresh] == ["late report from a slow clock"]


def test_bad_query_is_422_naming_the_parameter(client: TestClient) -> None:
    response = client.get("/api/v1/events", headers=AUTH_READ, params={"limit": 0})
    assert response.status_code == 422
    assert response.json()["problems"][0].startswith("limit:")


def test_health_needs_no_token(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok", "cluster": "demo", "store": "reachable"}


def test_events_are_served_as_fields_with_their_sentence(client: TestClient, cluster: Cluster) -> None:
    from haven.core.events import Event, EventKind, SubjectKind
    from haven.model.spec import MigrationKind
    cluster.emit(Event(30.0, "manager", EventKind.MIGRATED, subject_kind=SubjectKind.VM, name="web", old="migrating",
                       new="running", host="h2", migration=MigrationKind.LIVE, from_host="h1", to_host="h2",
                       generation=2, seconds=1.224, downtime_s=0.023))
    event = get(client, "/api/v1/events")["events"][-1]
    assert (event["kind"], event["subject_kind"], event["name"]) == ("migrated", "vm", "web")
    assert (event["old"], event["new"], event["migration"]) == ("migrating", "running", "live")
    assert event["downtime_s"] == 0.023 and event["seconds"] == 1.224
    assert event["message"] == "migrating -> running on h2 (live from h1, 1.224 s)"
    assert get(client, "/api/v1/vms/web/history")["events"][-1]["kind"] == "migrated"
