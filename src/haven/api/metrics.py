"""`GET /metrics`: Prometheus text, from a collector that reads the store at each scrape.

Gauges come from the snapshot; counters and histograms the runtime does not export are derived
from the event log's fields (`api.event_stats` says how). `haven_store_errors_total{source="api"}`
counts the store failures this API process met (no event reports the cluster's own, so there is
no `source="cluster"` series: it could never move).

Per-host capacity and use are the numbers the dashboard and `haven host list` show (a migrating VM
counts on its source and its target). The protection level is exposed twice: as a number to alert
on (`haven_protection_level`) and as one series per level, 1 on the current one, to graph by name.

Replicated pools: one series per copy of a VM's disk (`disk` is its index in the VM's disks, `host`
the copy's host), `haven_replica_in_sync` 1 while it holds every acknowledged write and
`haven_replica_sync_progress_ratio` the share of the disk copied (1 in sync, 0 stale).
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from importlib import metadata

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from haven.api import views
from haven.api.auth import require_read
from haven.api.context import ApiContext, context
from haven.api.event_stats import EventStats, Histogram
from haven.api.schemas import ERRORS
from haven.core.protection import host_state
from haven.model.replica import CopyState
from haven.model.service import ServicePhase
from haven.model.state import HostState, VmState
from haven.ports.store import StoreError
from haven.runtime.layout import Snapshot

router = APIRouter(dependencies=[Depends(require_read)], responses=ERRORS)

LEVELS = {"protected": 0, "degraded": 1, "down": 2}
MIB = 1024 * 1024


def version() -> str:
    """The installed haven's version ("unknown" when run from a source tree never installed)."""
    try:
        return metadata.version("haven")
    except metadata.PackageNotFoundError:
        return "unknown"


def _histogram(name: str, doc: str, labels: list[str],
               series: list[tuple[list[str], Histogram]]) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, doc, labels=labels)
    for values, hist in series:
        family.add_metric(values, hist.cumulative(), hist.total)
    return family


class HavenCollector(Collector):
    def __init__(self, ctx: ApiContext) -> None:
        self.ctx = ctx
        self.stats = EventStats()

    def collect(self) -> Iterator[Metric]:
        ctx = self.ctx
        up = GaugeMetricFamily("haven_store_up", "1 if the API could read the store at this scrape")
        try:
            snap = ctx.snapshot()
            prefix = ctx.layout.events()
            self.stats.update(views.events_from(ctx.get_prefix(prefix), prefix))
        except StoreError:
            ctx.count_store_error()
            snap = None
        up.add_metric([], 1 if snap is not None else 0)
        yield up
        build = GaugeMetricFamily("haven_build_info", "the haven version serving this API (always 1)",
                                  labels=["version"])
        build.add_metric([version()], 1)
        yield build
        if snap is not None:
            yield from self._gauges(snap)
            yield from self._hosts(snap)
            yield from self._replicas(snap)
        yield from self._derived()

    def _gauges(self, snap: Snapshot) -> Iterator[Metric]:
        view = snap.view()
        hosts = GaugeMetricFamily("haven_hosts", "hosts by state", labels=["state"])
        by_state = Counter(host_state(h).value for h in view.hosts.values())
        for state in HostState:
            hosts.add_metric([state.value], by_state.get(state.value, 0))
        yield hosts
        vms = GaugeMetricFamily("haven_vms", "VMs by state ('pending': not placed yet)", labels=["state"])
        by_vm_state = Counter(views.vm_state(snap, name) for name in snap.specs)
        for value in [*(s.value for s in VmState), views.PENDING]:
            vms.add_metric([value], by_vm_state.get(value, 0))
        yield vms
        services = GaugeMetricFamily("haven_services", "services by phase ('pending': not decided yet)",
                                     labels=["phase"])
        by_phase = Counter(views.service_phase(snap, name) for name in snap.services)
        for value in [*(s.value for s in ServicePhase), views.PENDING]:
            services.add_metric([value], by_phase.get(value, 0))
        yield services
        protection = views.protection(snap, view)
        level = GaugeMetricFamily("haven_protection_level",
                                  "0 protected (content), 1 degraded (worried), 2 down (ill)")
        level.add_metric([], LEVELS[protection.level])
        yield level
        by_level = GaugeMetricFamily("haven_protection_state", "1 for the current protection level, 0 "
                                     "for the others", labels=["level"])
        for name in LEVELS:
            by_level.add_metric([name], 1 if name == protection.level else 0)
        yield by_level
        manager = GaugeMetricFamily("haven_manager_active", "1 if a manager holds the leader key")
        manager.add_metric([], 1 if snap.manager else 0)
        yield manager

    def _hosts(self, snap: Snapshot) -> Iterator[Metric]:
        view = snap.view()
        families = {
            "memory_capacity": GaugeMetricFamily("haven_host_memory_capacity_bytes", "memory of the host "
                                                 "(its reserve included)", labels=["host"]),
            "memory_used": GaugeMetricFamily("haven_host_memory_used_bytes", "memory held by the VMs "
                                             "placed on the host", labels=["host"]),
            "memory_reserve": GaugeMetricFamily("haven_host_memory_reserve_bytes", "memory kept free "
                                                "on the host for itself (settings.memory_reserve_mib)",
                                                labels=["host"]),
            "vcpus_capacity": GaugeMetricFamily("haven_host_vcpus", "vCPUs of the host", labels=["host"]),
            "vcpus_used": GaugeMetricFamily("haven_host_vcpus_used", "vCPUs of the VMs placed on the host",
                                            labels=["host"]),
        }
        fence_ok = GaugeMetricFamily("haven_fence_device_ok", "1 if the host's power-fence device passed its "
                                     "last check, 0 if it failed (no series: no device)", labels=["host"])
        for name, check in sorted(snap.fence_checks.items()):
            fence_ok.add_metric([name], 1 if check.ok else 0)
        yield fence_ok
        for name in sorted(snap.hosts):
            host = views.host_out(snap, view, name)
            families["memory_capacity"].add_metric([name], host.memory_mib.total * MIB)
            families["memory_used"].add_metric([name], host.memory_mib.used * MIB)
            families["memory_reserve"].add_metric([name], host.memory_reserve_mib * MIB)
            families["vcpus_capacity"].add_metric([name], host.vcpus.total)
            families["vcpus_used"].add_metric([name], host.vcpus.used)
        yield from families.values()

    def _replicas(self, snap: Snapshot) -> Iterator[Metric]:
        labels = ["vm", "disk", "host"]
        in_sync = GaugeMetricFamily("haven_replica_in_sync", "1 if the copy of the VM's disk on the host "
                                    "holds every acknowledged write (the VM may fail over to it), else 0",
                                    labels=labels)
        progress = GaugeMetricFamily("haven_replica_sync_progress_ratio", "share of the disk copied to the "
                                     "replica: done / total while syncing, 1 in sync, 0 stale", labels=labels)
        for vm, record in sorted(snap.replicas.items()):
            if vm not in snap.specs:
                continue
            for copy in record.copies:
                values = [vm, str(copy.disk), copy.host]
                in_sync.add_metric(values, 1 if copy.state is CopyState.IN_SYNC else 0)
                if copy.state is CopyState.IN_SYNC:
                    ratio = 1.0
                elif copy.state is CopyState.SYNCING and copy.total:
                    ratio = min(1.0, copy.done / copy.total)
                else:
                    ratio = 0.0
                progress.add_metric(values, ratio)
        yield in_sync
        yield progress

    def _derived(self) -> Iterator[Metric]:
        s = self.stats
        with s.lock:
            failovers = CounterMetricFamily("haven_failovers", "VM restarts after a host failure "
                                            "(from the event log)")
            failovers.add_metric([], s.failovers)
            yield failovers
            yield _histogram("haven_recovery_seconds", "from recovering to running again, per VM "
                             "(from the event log)", [], [([], s.recovery)])
            migrations = CounterMetricFamily("haven_migrations", "finished migrations (from the "
                                             "event log)", labels=["kind", "result"])
            for (kind, result), n in sorted(s.migrations.items()):
                migrations.add_metric([kind, result], n)
            yield migrations
            yield _histogram("haven_migration_duration_seconds", "successful migrations, request to "
                             "running on the target (from the event log)", ["kind"],
                             [([kind], h) for kind, h in sorted(s.duration.items())])
            yield _histogram("haven_migration_downtime_seconds", "guest pause during a migration: "
                             "reported, or a quick migration's whole duration (from the event log)",
                             ["kind"], [([kind], h) for kind, h in sorted(s.downtime.items())])
            changes = CounterMetricFamily("haven_manager_changes", "managers taking office "
                                          "(from the event log)")
            changes.add_metric([], s.manager_changes)
            yield changes
            errors = CounterMetricFamily("haven_store_errors", "store failures met by this API",
                                         labels=["source"])
            errors.add_metric(["api"], self.ctx.store_errors)
            yield errors


def make_registry(ctx: ApiContext) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(HavenCollector(ctx))
    return registry


@router.get("/metrics", tags=["read"], response_class=Response,
            responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}})
def metrics(request: Request, ctx: ApiContext = Depends(context)) -> Response:
    """Prometheus metrics (scrape with the read-only token as a bearer token)."""
    return Response(generate_latest(request.app.state.registry), media_type=CONTENT_TYPE_LATEST)
