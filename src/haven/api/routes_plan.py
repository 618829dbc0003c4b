"""Planning routes: the same pure planners as `haven plan`, over the live cluster. Read-only."""
from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from pydantic import StringConstraints

from haven.api.auth import require_read
from haven.api.bodies import documented, model_body
from haven.api.context import ApiContext, context, invalid
from haven.api.schemas import INVALID, READ_ERRORS, TopologyIn
from haven.model.spec import NAME_PATTERN, VmSpec
from haven.model.state import HostState
from haven.plan.capacity import capacity
from haven.plan.present import from_snapshot
from haven.plan.topology import Topology, compare
from haven.plan.whatif import what_if

router = APIRouter(prefix="/api/v1/plan", dependencies=[Depends(require_read)], responses=READ_ERRORS, tags=["plan"])


@router.get("/what-if")
def plan_what_if(fail: list[Annotated[str, StringConstraints(pattern=NAME_PATTERN)]] = Query(
                     ..., min_length=1, max_length=16, description="hosts that die (names of this cluster's hosts)"),
                 ctx: ApiContext = Depends(context)) -> dict[str, Any]:
    """Replays the cluster as it is now in the simulator with these hosts lost: what restarts
    where, what cannot (and why), and when."""
    config, running = from_snapshot(ctx.snapshot(), ctx.layout.cluster)
    unknown = sorted(set(fail) - {h.name for h in config.hosts})
    if unknown:
        raise invalid("fail names unknown hosts", [f"fail: no host named {h!r}" for h in unknown])
    report = what_if(config, running, fail)
    return {"failed": list(report.failed), "worst_recovery_s": report.worst_recovery_s, "lost": report.lost,
            "vms": [asdict(o) for o in report.outcomes]}


@router.get("/capacity")
def plan_capacity(vcpus: int = Query(1, ge=1, le=512), memory_mib: int = Query(..., ge=72, le=16_777_216),
                  ctx: ApiContext = Depends(context)) -> dict[str, Any]:
    """How many more VMs of this size fit while keeping the host-failure reserve."""
    snapshot = ctx.snapshot()
    config, running = from_snapshot(snapshot, ctx.layout.cluster)
    usable = {h for h, r in snapshot.records.items() if r.state is HostState.ONLINE and h in snapshot.alive}
    return asdict(capacity(config, running, VmSpec(name="planned", vcpus=vcpus, memory_mib=memory_mib), usable))


@router.post("/topology", response_model=list[Topology], responses=INVALID,
             openapi_extra=documented(TopologyIn))
def plan_topology(data: TopologyIn = Depends(model_body(TopologyIn, "topology request"))) -> list[Topology]:
    """Host cluster (Diagram A) against guest clusters (Diagram B) for these workloads and hosts."""
    return compare(data)
