"""Prometheus metrics: gauges from the snapshot, counters derived from the event log's fields.

The counters are checked on events the code really writes: a simulated cluster runs a golden
scenario (tests/scenarios) and /metrics is read over its store, as an operator's Prometheus would.
"""
from __future__ import annotations

import ast
import functools
from pathlib import Path

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from haven.api import create_app
from haven.api.event_stats import COUNTED_KINDS
from haven.core.events import EventKind
from haven.sim.cluster import SimCluster
from haven.sim.scenario import load_scenario, run_scenario

from .conftest import ADMIN, AUTH_READ, READ, Cluster

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
SCENARIOS = Path(__file__).parents[1] / "scenarios"
SRC = Path(__file__).parents[2] / "src" / "haven"


def samples(client: TestClient) -> Samples:
    response = client.get("/metrics", headers=AUTH_READ)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(response.text) for s in family.samples}


@functools.cache
def ran(scenario: str) -> SimCluster:
    return run_scenario(load_scenario(SCENARIOS / scenario)).cluster


def scraped(scenario: str) -> Samples:
    """/metrics over the store of a simulated cluster that played `scenario`."""
    cluster = ran(scenario)
    app = create_app(cluster.client("api"), cluster.layout, admin_token=ADMIN, read_token=READ,
                     clock=lambda: cluster.now)
    with TestClient(app, raise_server_exceptions=False) as client:
        return samples(client)


def test_gauges(client: TestClient, cluster: Cluster) -> None:
    cluster.store.delete(cluster.layout.alive("h3"))
    m = samples(client)
    assert m[("haven_hosts", (("state", "online"),))] == 2
    assert m[("haven_hosts", (("state", "lost"),))] == 1
    assert m[("haven_vms", (("state", "running"),))] == 3
    assert m[("haven_vms", (("state", "error"),))] == 1
    assert m[("haven_protection_level", ())] == 2  # broken is in error: down
    assert m[("haven_manager_active", ())] == 1 and m[("haven_store_up", ())] == 1


def test_failovers_and_recovery_after_a_power_cut() -> None:
    # h1 loses power: web and db each go running -> recovering -> starting on h2 -> running,
    # 3.3 s each (lease expiry, fence grace, boot), and h2 takes the manager over.
    m = scraped("host-power-off")
    assert m[("haven_failovers_total", ())] == 2
    assert m[("haven_recovery_seconds_count", ())] == 2
    assert round(m[("haven_recovery_seconds_sum", ())], 3) == 6.6
    assert m[("haven_recovery_seconds_bucket", (("le", "3.0"),))] == 0
    assert m[("haven_recovery_seconds_bucket", (("le", "4.0"),))] == 2
    assert m[("haven_manager_changes_total", ())] == 2  # h1 first, then h2


def test_migrations_by_kind_and_result() -> None:
    m = scraped("drain-live-and-quick")
    assert m[("haven_migrations_total", (("kind", "live"), ("result", "succeeded")))] == 2
    assert m[("haven_migrations_total", (("kind", "quick"), ("result", "succeeded")))] == 1
    assert round(m[("haven_migration_duration_seconds_sum", (("kind", "live"),))], 3) == 2.448
    # A quick migration pauses the guest from save to restore: its whole duration is downtime.
    assert round(m[("haven_migration_downtime_seconds_sum", (("kind", "quick"),))], 3) == 0.812
    # The simulated hypervisor hands a live migration over at once and reports a zero pause.
    assert m[("haven_migration_downtime_seconds_count", (("kind", "live"),))] == 2
    assert m[("haven_migration_downtime_seconds_sum", (("kind", "live"),))] == 0.0
    aborted = scraped("migration-target-dies-live")
    assert aborted[("haven_migrations_total", (("kind", "live"), ("result", "failed")))] == 1
    assert ("haven_migration_duration_seconds_count", (("kind", "live"),)) not in aborted
    lost_source = scraped("migration-source-dies-quick-save")
    assert lost_source[("haven_migrations_total", (("kind", "quick"), ("result", "failed")))] == 1
    cold = scraped("migrate-cold-to-host")
    assert cold[("haven_migrations_total", (("kind", "cold"), ("result", "succeeded")))] == 1


DERIVED = set(COUNTED_KINDS)


def test_every_derived_metric_moves_in_the_golden_scenarios() -> None:
    """A counter nothing can move is a lie on a dashboard: each one the event log feeds must move
    in some scenario, from events the runtime wrote to the store (not made up by a test)."""
    moved: set[str] = set()
    exposed: set[str] = set()
    migrations: set[tuple[str, str]] = set()
    for folder in sorted(p for p in SCENARIOS.iterdir() if p.is_dir()):
        for (name, labels), value in scraped(folder.name).items():
            family = name.removesuffix("_total").removesuffix("_count")
            if family in DERIVED:
                exposed.add(family)
                if value > 0 and (name.endswith("_total") or name.endswith("_count")):
                    moved.add(family)
            if name == "haven_migrations_total" and value > 0:
                migrations.add((dict(labels)["kind"], dict(labels)["result"]))
    assert exposed == DERIVED, "a derived metric is missing from /metrics, or from event_stats.COUNTED_KINDS"
    assert moved == DERIVED, f"never moved: {sorted(DERIVED - moved)}"
    assert {kind for kind, _ in migrations} == {"live", "quick", "cold"}
    assert {result for _, result in migrations} == {"succeeded", "failed"}


def _kinds_constructed_in_src() -> set[str]:
    """`EventKind.X` named anywhere in the code that writes events (not in the readers)."""
    names = set()
    for path in sorted(SRC.rglob("*.py")):
        if path.parent.name == "api" or path == SRC / "core" / "events.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "EventKind":
                names.add(node.attr)
    return names


def test_every_counted_kind_is_written_by_the_code() -> None:
    written = _kinds_constructed_in_src()
    counted = {kind.name for kinds in COUNTED_KINDS.values() for kind in kinds}
    assert counted <= written, f"counted but never written: {sorted(counted - written)}"


def test_counters_count_each_event_once(client: TestClient, cluster: Cluster) -> None:
    failovers = [e for e in ran("two-hosts-fail").events
                 if e.kind is EventKind.STATE_CHANGE and (e.old, e.new) == ("recovering", "starting")]
    assert len(failovers) >= 2
    cluster.emit(failovers[0])
    assert samples(client)[("haven_failovers_total", ())] == 1
    assert samples(client)[("haven_failovers_total", ())] == 1
    cluster.emit(failovers[1])
    assert samples(client)[("haven_failovers_total", ())] == 2


def test_an_old_sentence_only_event_is_served_but_not_counted(client: TestClient, cluster: Cluster) -> None:
    # The form older versions wrote: an upgraded API shows it, and does not guess from the words.
    cluster.event(20.0, "vm cache", "recovering -> starting on h3 (generation 2, priority 2, host h2 fenced)")
    cluster.event(21.0, "host h2", "became the active manager")
    m = samples(client)
    assert m[("haven_failovers_total", ())] == 0 and m[("haven_manager_changes_total", ())] == 0
    events = client.get("/api/v1/events", headers=AUTH_READ).json()["events"]
    assert events[-1]["kind"] == "text" and events[-1]["message"] == "became the active manager"


def test_no_cluster_store_error_series_that_nothing_could_move(client: TestClient) -> None:
    m = samples(client)
    assert ("haven_store_errors_total", (("source", "cluster"),)) not in m
    assert ("haven_store_errors_total", (("source", "api"),)) in m

