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
from haven.api.metrics import version
from haven.core.events import EventKind
from haven.model.fencing import FenceCheck
from haven.model.state import VmState
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


MIB = 1024 * 1024


def test_build_info_names_the_installed_version(client: TestClient) -> None:
    m = samples(client)
    assert version() not in ("", "unknown")  # the test runs against an installed haven
    assert m[("haven_build_info", (("version", version()),))] == 1
    assert [key for key in m if key[0] == "haven_build_info"] == [("haven_build_info", (("version", version()),))]


def test_capacity_and_use_per_host(client: TestClient, cluster: Cluster) -> None:
    # h1 runs web (512 MiB) and db (1024 MiB); h2 runs cache (512 MiB); h3 is empty; 1 vCPU each.
    cluster.put_vm("big", "h3", VmState.MIGRATING, memory=2048, vcpus=2)
    m = samples(client)
    used = {host: m[("haven_host_memory_used_bytes", (("host", host),))] / MIB for host in ("h1", "h2", "h3")}
    assert used == {"h1": 1536, "h2": 512, "h3": 2048}
    assert m[("haven_host_memory_capacity_bytes", (("host", "h2"),))] == 4096 * MIB
    assert m[("haven_host_memory_reserve_bytes", (("host", "h2"),))] == 256 * MIB
    assert [m[("haven_host_vcpus_used", (("host", h),))] for h in ("h1", "h2", "h3")] == [2, 1, 2]
    assert m[("haven_host_vcpus", (("host", "h1"),))] == 4
    # The numbers are the ones the dashboard shows for each host.
    for host in client.get("/api/v1/hosts", headers=AUTH_READ).json():
        labels = (("host", host["name"]),)
        assert m[("haven_host_memory_used_bytes", labels)] == host["memory_mib"]["used"] * MIB
        assert m[("haven_host_vcpus_used", labels)] == host["vcpus"]["used"]


def _state(m: Samples) -> dict[str, float]:
    return {dict(labels)["level"]: value for (name, labels), value in m.items() if name == "haven_protection_state"}


def test_protection_level_as_a_labelled_state(client: TestClient, cluster: Cluster) -> None:
    assert _state(samples(client)) == {"protected": 0, "degraded": 0, "down": 1}  # broken is in error
    cluster.put_vm("broken", "h3")
    assert _state(samples(client)) == {"protected": 1, "degraded": 0, "down": 0}
    # Two 2,048 MiB VMs on one host: losing it leaves more HA memory than the others have free.
    cluster.put_vm("big1", "h3", memory=2048)
    cluster.put_vm("big2", "h3", memory=1536)
    cluster.put_vm("big3", "h2", memory=3072)
    m = samples(client)
    assert _state(m) == {"protected": 0, "degraded": 1, "down": 0}
    assert m[("haven_protection_level", ())] == 1


def test_metrics_need_a_token(client: TestClient) -> None:
    # As the README says: scrape with the read-only token; /healthz needs none.
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/metrics", headers={"Authorization": f"Bearer {ADMIN}"}).status_code == 200
    assert client.get("/healthz").status_code == 200


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
    m = scraped("drain-live-and-quick")  # each VM moves twice: away on the drain, back on resume
    assert m[("haven_migrations_total", (("kind", "live"), ("result", "succeeded")))] == 4
    assert m[("haven_migrations_total", (("kind", "quick"), ("result", "succeeded")))] == 2
    assert round(m[("haven_migration_duration_seconds_sum", (("kind", "live"),))], 3) == 4.896
    # A quick migration pauses the guest from save to restore: its whole duration is downtime.
    assert round(m[("haven_migration_downtime_seconds_sum", (("kind", "quick"),))], 3) == 1.624
    # The simulated hypervisor hands a live migration over at once and reports a zero pause.
    assert m[("haven_migration_downtime_seconds_count", (("kind", "live"),))] == 4
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
                if value > 0 and name.endswith(("_total", "_count")):
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



def test_fence_device_ok_per_host_with_a_device(client: TestClient, cluster: Cluster) -> None:
    for host, ok in (("h1", True), ("h2", False)):
        cluster.store.put(cluster.layout.fence_check(host),
                          FenceCheck(ok=ok, detail="checked", checked_at=1.0).model_dump_json())
    m = samples(client)
    assert m[("haven_fence_device_ok", (("host", "h1"),))] == 1
    assert m[("haven_fence_device_ok", (("host", "h2"),))] == 0
    assert ("haven_fence_device_ok", (("host", "h3"),)) not in m  # no device: no series
