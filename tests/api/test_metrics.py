"""Prometheus metrics: gauges from the snapshot, counters derived from the event log."""
from __future__ import annotations

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from .conftest import AUTH_READ, Cluster


def samples(client: TestClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = client.get("/metrics", headers=AUTH_READ)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(response.text) for s in family.samples}


def test_gauges(client: TestClient, cluster: Cluster) -> None:
    cluster.store.delete(cluster.layout.alive("h3"))
    m = samples(client)
    assert m[("haven_hosts", (("state", "online"),))] == 2
    assert m[("haven_hosts", (("state", "lost"),))] == 1
    assert m[("haven_vms", (("state", "running"),))] == 3
    assert m[("haven_vms", (("state", "error"),))] == 1
    assert m[("haven_protection_level", ())] == 2  # broken is in error: down
    assert m[("haven_manager_active", ())] == 1 and m[("haven_store_up", ())] == 1


def test_counters_from_events(client: TestClient, cluster: Cluster) -> None:
    cluster.event(20.0, "host h2", "online -> lost (lease expired)")
    cluster.event(20.0, "vm cache", "running -> recovering (host h2 lost)")
    cluster.event(20.3, "vm cache", "recovering -> starting on h3 (generation 2, priority 2)")
    cluster.event(24.5, "vm cache", "starting -> running on h3")
    cluster.event(30.0, "vm web", "running -> migrating (live to h2)")
    cluster.event(31.0, "vm web", "migrating -> running on h2 (live, downtime 40 ms)")
    cluster.event(40.0, "vm db", "running -> migrating (quick to h3)")
    cluster.event(41.0, "vm db", "migrating -> running on h1 (migration failed: target died)")
    cluster.event(50.0, "manager", "h2 elected manager")
    cluster.event(51.0, "store h1", "store unreachable for 1.2 s", source="store")
    m = samples(client)
    assert m[("haven_failovers_total", ())] == 1
    assert m[("haven_recovery_seconds_count", ())] == 1
    assert m[("haven_recovery_seconds_sum", ())] == 4.5
    assert m[("haven_recovery_seconds_bucket", (("le", "4.0"),))] == 0
    assert m[("haven_recovery_seconds_bucket", (("le", "5.0"),))] == 1
    assert m[("haven_migrations_total", (("kind", "live"), ("result", "succeeded")))] == 1
    assert m[("haven_migrations_total", (("kind", "quick"), ("result", "failed")))] == 1
    assert m[("haven_migration_downtime_seconds_sum", (("kind", "live"),))] == 0.04
    assert m[("haven_manager_changes_total", ())] == 1
    assert m[("haven_store_errors_total", (("source", "cluster"),))] == 1


def test_counters_count_each_event_once(client: TestClient, cluster: Cluster) -> None:
    cluster.event(20.0, "vm cache", "recovering -> starting on h3")
    assert samples(client)[("haven_failovers_total", ())] == 1
    assert samples(client)[("haven_failovers_total", ())] == 1
    cluster.event(30.0, "vm web", "recovering -> starting on h3")
    assert samples(client)[("haven_failovers_total", ())] == 2
