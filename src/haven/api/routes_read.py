"""Read-only routes: summary, hosts, VMs, services, their histories, events (paged)."""
from __future__ import annotations

from fastapi import APIRouter, Depends, Query

from haven.api import views
from haven.api.auth import require_read
from haven.api.context import ApiContext, context, not_found
from haven.api.schemas import NOT_FOUND, READ_ERRORS, EventPage, HostOut, ServiceOut, SummaryOut, VmOut
from haven.core.events import SubjectKind

router = APIRouter(prefix="/api/v1", dependencies=[Depends(require_read)], responses=READ_ERRORS)

MAX_PAGE = 1000


@router.get("/summary", response_model=SummaryOut, tags=["read"])
def get_summary(ctx: ApiContext = Depends(context)) -> SummaryOut:
    """The cluster at a glance: hosts and VMs by state, the active manager, and the protection
    level with the dashboard pet's mood and a one-line reason."""
    simulation = ctx.sim_control.info() if ctx.sim_control is not None else None
    return views.summary(ctx.snapshot(), ctx.layout.cluster, ctx.clock(), simulation)


@router.get("/hosts", response_model=list[HostOut], tags=["read"])
def list_hosts(ctx: ApiContext = Depends(context)) -> list[HostOut]:
    """Every declared host with its state, usage and VMs."""
    snap = ctx.snapshot()
    view = snap.view()
    return [views.host_out(snap, view, name) for name in sorted(snap.hosts)]


@router.get("/hosts/{name}", response_model=HostOut, responses=NOT_FOUND, tags=["read"])
def get_host(name: str, ctx: ApiContext = Depends(context)) -> HostOut:
    snap = ctx.snapshot()
    if name not in snap.hosts:
        raise not_found("host", name)
    return views.host_out(snap, snap.view(), name)


@router.get("/vms", response_model=list[VmOut], tags=["read"])
def list_vms(ctx: ApiContext = Depends(context)) -> list[VmOut]:
    """Every VM: spec, placement, the agents' reports, a pending request."""
    snap = ctx.snapshot()
    now = ctx.clock()
    return [views.vm_out(snap, name, now) for name in sorted(snap.specs)]


@router.get("/vms/{name}", response_model=VmOut, responses=NOT_FOUND, tags=["read"])
def get_vm(name: str, ctx: ApiContext = Depends(context)) -> VmOut:
    snap = ctx.snapshot()
    if name not in snap.specs:
        raise not_found("VM", name)
    return views.vm_out(snap, name, ctx.clock())


@router.get("/vms/{name}/history", response_model=EventPage, responses=NOT_FOUND, tags=["read"])
def vm_history(name: str, ctx: ApiContext = Depends(context),
               limit: int = Query(200, ge=1, le=MAX_PAGE)) -> EventPage:
    """The VM's events still in the (bounded) event log, oldest first."""
    if ctx.get(ctx.layout.vm_spec(name)) is None:
        raise not_found("VM", name)
    prefix = ctx.layout.events()
    events = [e for e in views.events_from(ctx.get_prefix(prefix), prefix)
              if e.subject_kind is SubjectKind.VM and e.name == name]
    events = events[-limit:]
    return EventPage(events=events, next=events[-1].id if events else None)


@router.get("/services", response_model=list[ServiceOut], tags=["read"])
def list_services(ctx: ApiContext = Depends(context)) -> list[ServiceOut]:
    """Every service (guest cluster): spec, the manager's phase and active member, and each member
    with its host and what its host's agent reports."""
    snap = ctx.snapshot()
    view = snap.view()
    return [views.service_out(snap, view, name) for name in sorted(snap.services)]


@router.get("/services/{name}", response_model=ServiceOut, responses=NOT_FOUND, tags=["read"])
def get_service(name: str, ctx: ApiContext = Depends(context)) -> ServiceOut:
    snap = ctx.snapshot()
    if name not in snap.services:
        raise not_found("service", name)
    return views.service_out(snap, snap.view(), name)


@router.get("/services/{name}/history", response_model=EventPage, responses=NOT_FOUND, tags=["read"])
def service_history(name: str, ctx: ApiContext = Depends(context),
                    limit: int = Query(200, ge=1, le=MAX_PAGE)) -> EventPage:
    """The service's events still in the (bounded) event log, oldest first."""
    if ctx.get(ctx.layout.service_spec(name)) is None:
        raise not_found("service", name)
    prefix = ctx.layout.events()
    subject = f"service {name}"
    events = [e for e in views.events_from(ctx.get_prefix(prefix), prefix) if e.subject == subject]
    events = events[-limit:]
    return EventPage(events=events, next=events[-1].id if events else None)


@router.get("/events", response_model=EventPage, tags=["read"])
def list_events(ctx: ApiContext = Depends(context),
                after: str | None = Query(None, max_length=200,
                                          description="an event id: return the events after it"),
                limit: int = Query(100, ge=1, le=MAX_PAGE)) -> EventPage:
    """Events oldest first. Without `after`: the newest `limit` events; with it: the next page.
    `next` is the cursor for the following page (the last id returned, or `after` if none)."""
    prefix = ctx.layout.events()
    events = views.page(views.events_from(ctx.get_prefix(prefix), prefix), after, limit)
    return EventPage(events=events, next=events[-1].id if events else after)
