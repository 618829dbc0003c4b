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
    # Message formats as the manager writes them (tests/scenarios/*/expected.log).
    cluster.event(20.0, "host h2", "online -> lost (lease expired)")
    cluster.event(20.0, "vm cache", "running -> recovering (host h2 lost)")
    cluster.event(20.3, "vm cache", "recovering -> starting on h3 (generation 2, priority 2, host h2 fenced)")
    cluster.event(24.5, "vm cache", "starting -> running on h3")
    cluster.event(30.0, "vm web", "running -> migrating (live h1 -> h2, operator request)")
    cluster.event(31.2, "vm web", "migrating -> running on h2 (live from h1, 1.224 s)")
    cluster.event(40.0, "vm db", "running -> migrating (live h1 -> h3, drain h1)")
    cluster.event(41.0, "vm db", "migrating -> running on h1 (live migration to h3 aborted: target h3 lost)")
    cluster.event(42.0, "vm db", "running -> migrating (quick h1 -> h2, operator request)")
    cluster.event(43.4, "vm db", "migrating -> running on h2 (quick from h1, 1.424 s)")
    cluster.event(44.0, "vm web", "running -> migrating (cold h2 -> h3, operator request)")
    cluster.event(45.0, "vm web", "migrating -> starting on h3 (generation 3, priority 2, cold migration from h2)")
    cluster.event(50.0, "host h2", "became the active manager")
    cluster.event(51.0, "host h1", "store unreachable for 1.2 s", source="store")
    m = samples(client)
    assert m[("haven_failovers_total", ())] == 1
    assert m[("haven_recovery_seconds_count", ())] == 1
    assert m[("haven_recovery_seconds_sum", ())] == 4.5
    assert m[("haven_recovery_seconds_bucket", (("le", "4.0"),))] == 0
    assert m[("haven_recovery_seconds_bucket", (("le", "5.0"),))] == 1
    assert m[("haven_migrations_total", (("kind", "live"), ("result", "succeeded")))] == 1
    assert m[("haven_migrations_total", (("kind", "live"), ("result", "failed")))] == 1
    assert m[("haven_migrations_total", (("kind", "quick"), ("result", "succeeded")))] == 1
    assert m[("haven_migrations_total", (("kind", "cold"), ("result", "succeeded")))] == 1
    assert m[("haven_migration_duration_seconds_sum", (("kind", "live"),))] == 1.224
    assert m[("haven_migration_downtime_seconds_sum", (("kind", "quick"),))] == 1.424
    assert ("haven_migration_downtime_seconds_count", (("kind", "live"),)) not in m
    assert m[("haven_manager_changes_total", ())] == 1
    assert m[("haven_store_errors_total", (("source", "cluster"),))] == 1


def test_counters_count_each_event_once(client: TestClient, cluster: Cluster) -> None:
    cluster.event(20.0, "vm cache", "recovering -> starting on h3")
    assert samples(client)[("haven_failovers_total", ())] == 1
    assert samples(client)[("haven_failovers_total", ())] == 1
    cluster.event(30.0, "vm web", "recovering -> starting on h3")
    assert samples(client)[("haven_failovers_total", ())] == 2
