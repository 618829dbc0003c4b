"""Write routes for services (guest clusters); they validate, then write intent, as the VM routes do.

- create / update a service: put `services/<svc>/spec`; delete: delete it (only once it is stopped);
- start / stop: the spec's `desired`; move: a `ServiceRequest` (`runtime.intents`, which scenarios
  use too). The manager acts on them in its next iteration.

A move is refused here when the manager would refuse it: the API asks the core's own rule
(`core.service.move_refusal`, which `decide_services` applies to a request) on the cluster as it
is now, so the rule is written once.
"""
from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from haven.api import views
from haven.api.auth import require_admin
from haven.api.bodies import documented, model_body, parse, raw_mapping
from haven.api.context import ApiContext, conflict, context, invalid, not_found
from haven.api.routes_write import run_intent
from haven.api.schemas import (
    CONFLICT,
    ERRORS,
    INVALID,
    NOT_FOUND,
    SERVICE_SPEC_UPDATE,
    Accepted,
    ServiceMoveIn,
)
from haven.api.spec_checks import service_problems
from haven.core.service import move_refusal
from haven.model.service import ServicePhase, ServiceSpec
from haven.model.spec import DesiredState
from haven.ports.store import Compare, Delete, Put
from haven.runtime import intents
from haven.runtime.intents import revision_of
from haven.runtime.layout import Snapshot

router = APIRouter(prefix="/api/v1", dependencies=[Depends(require_admin)],
                   responses={**ERRORS, **INVALID})

def _require(snap: Snapshot, name: str) -> ServiceSpec:
    if name not in snap.services:
        raise not_found("service", name)
    return snap.services[name]


def _service_spec(snap: Snapshot, data: Any, name: str | None) -> ServiceSpec:
    if isinstance(data, dict) and name is not None:
        if data.get("name", name) != name:
            raise invalid("the spec's name differs from the URL",
                          [f"name: must be {name!r} (the service in the URL), got {data.get('name')!r}"])
        data = {**data, "name": name}
    spec = parse(ServiceSpec, data, "service spec")
    problems = service_problems(snap, spec)
    if problems:
        n = len(problems)
        raise invalid(f"the service spec does not fit this cluster ({n} problem{'s' if n != 1 else ''})",
                      problems)
    return spec


def _accepted(ctx: ApiContext, name: str, message: str, request_id: str | None = None) -> Accepted:
    snap = ctx.snapshot()
    service = views.service_out(snap, snap.view(), name) if name in snap.services else None
    return Accepted(message=message, request_id=request_id, service=service)


@router.post("/services", status_code=201, response_model=Accepted, responses=CONFLICT, tags=["write"],
             openapi_extra=documented(ServiceSpec, yaml=True))
def create_service(ctx: ApiContext = Depends(context),
                   data: Any = Depends(raw_mapping("service spec"))) -> Accepted:
    """Declare a new service (JSON or YAML body) over member VMs already declared, each pinned to
    its own host (exactly one preferred host). The manager starts it if `desired` is running."""
    snap = ctx.snapshot()
    spec = _service_spec(snap, data, None)
    if spec.name in snap.services:
        raise conflict(f"service {spec.name!r} already exists: use PUT /api/v1/services/{spec.name} to change it")
    key = ctx.layout.service_spec(spec.name)
    ctx.commit([Compare(key, mod_revision=0)], [Put(key, spec.model_dump_json())], f"service {spec.name!r}")
    return _accepted(ctx, spec.name, f"service {spec.name} declared")


@router.put("/services/{name}", response_model=Accepted, responses={**NOT_FOUND, **CONFLICT}, tags=["write"],
            openapi_extra=documented(ServiceSpec, yaml=True, component=SERVICE_SPEC_UPDATE))
def update_service(name: str, ctx: ApiContext = Depends(context),
                   data: Any = Depends(raw_mapping("service spec"))) -> Accepted:
    """Replace an existing service's spec. Its `name` comes from the URL: leave it out, or send the
    URL's (a spec read back from GET is accepted as it is)."""
    snap = ctx.snapshot()
    _require(snap, name)
    spec = _service_spec(snap, data, name)
    key = ctx.layout.service_spec(name)
    ctx.commit([Compare(key, mod_revision=revision_of(ctx.get(key)))], [Put(key, spec.model_dump_json())],
               f"service {name!r}")
    return _accepted(ctx, name, f"service {name} updated")


@router.delete("/services/{name}", response_model=Accepted, responses={**NOT_FOUND, **CONFLICT},
               tags=["write"])
def delete_service(name: str, ctx: ApiContext = Depends(context)) -> Accepted:
    """Forget a stopped service (its member VMs stay). One that still runs must be stopped first
    (POST .../stop). The manager's record stays, so a service declared again under this name
    continues its generation (its fencing token) instead of starting over."""
    spec_key, state_key = ctx.layout.service_spec(name), ctx.layout.service_state(name)
    spec_kv, state_kv = ctx.get(spec_key), ctx.get(state_key)
    if spec_kv is None:
        raise not_found("service", name)
    state = ctx.snapshot().service_states.get(name)
    if state is not None and state.phase is not ServicePhase.STOPPED:
        where = f" on {state.active}" if state.active else ""
        raise conflict(f"service {name} is {state.phase.value}{where}: stop it first "
                       f"(POST /api/v1/services/{name}/stop), then delete it once it is stopped")
    ctx.commit([Compare(spec_key, mod_revision=spec_kv.mod_revision),
                Compare(state_key, mod_revision=revision_of(state_kv))],
               [Delete(spec_key), Delete(ctx.layout.service_request(name))], f"service {name!r}")
    return Accepted(message=f"service {name} deleted")


def _set_desired(ctx: ApiContext, name: str, desired: DesiredState) -> Accepted:
    if not run_intent(ctx, lambda: intents.set_service_desired(ctx.store, ctx.layout, name, desired)):
        return _accepted(ctx, name, f"service {name} is already meant to be {desired.value}")
    verb = "start" if desired == DesiredState.RUNNING else "stop"
    return _accepted(ctx, name, f"service {name}: {verb} requested")


@router.post("/services/{name}/start", status_code=202, response_model=Accepted, responses=NOT_FOUND,
             tags=["write"])
def start_service(name: str, ctx: ApiContext = Depends(context)) -> Accepted:
    """Set `desired: running`: the manager starts it on the best healthy member."""
    return _set_desired(ctx, name, DesiredState.RUNNING)


@router.post("/services/{name}/stop", status_code=202, response_model=Accepted, responses=NOT_FOUND,
             tags=["write"])
def stop_service(name: str, ctx: ApiContext = Depends(context)) -> Accepted:
    """Set `desired: stopped`: the active member stops the application, drops the floating IP and
    releases the data disk; it no longer fails over. The member VMs keep running."""
    return _set_desired(ctx, name, DesiredState.STOPPED)


def _check_move(ctx: ApiContext, snap: Snapshot, name: str, target: str | None) -> None:
    """422 for a move that can never work, 409 for one the service's present state rules out."""
    spec = snap.services[name]
    if target is not None and target not in spec.members:
        raise invalid(f"{target} is not a member of service {name}",
                      [f"target: {target!r} is not a member of service {name} (members: {', '.join(spec.members)})"])
    state = snap.service_states.get(name)
    if spec.desired is DesiredState.STOPPED:
        raise conflict(f"service {name} is stopped (desired: stopped): start it before moving it "
                       f"(POST /api/v1/services/{name}/start)")
    if state is None or state.phase is not ServicePhase.RUNNING:
        phase = state.phase.value if state else "not started yet"
        why = f" ({state.reason})" if state and state.reason else ""
        raise conflict(f"service {name} is {phase}{why}: only a running service can be moved; retry once it runs")
    if target is not None and target == state.active:
        raise invalid(f"service {name} already runs on {target}",
                      [f"target: service {name} already runs on {target}; pick another member"])
    # The rest (a healthy member to go to) is the manager's rule: ask it.
    service = views.service_view(snap, name)
    hosts, host_of = views.service_facts(snap.view(), snap)
    refusal = move_refusal(service.spec, service.state, service.facts, hosts, host_of, target, ctx.clock())
    if refusal is not None:
        raise conflict(f"service {name} cannot move now: {refusal}")


@router.post("/services/{name}/move", status_code=202, response_model=Accepted,
             responses={**NOT_FOUND, **CONFLICT}, tags=["write"],
             openapi_extra=documented(ServiceMoveIn, required=False))
def move_service(name: str, ctx: ApiContext = Depends(context),
                 body: ServiceMoveIn = Depends(model_body(ServiceMoveIn, "move request", optional=True))) -> Accepted:
    """Move a running service to another member: the active one stops the application, drops the
    floating IP and releases the data disk, then the target takes them. `target: null` lets the
    manager pick the best other healthy member."""
    snap = ctx.snapshot()
    _require(snap, name)
    _check_move(ctx, snap, name, body.target)
    request = run_intent(ctx, lambda: intents.move_service(ctx.store, ctx.layout, name, body.target))
    to = body.target or "the best other member"
    return _accepted(ctx, name, f"move of service {name} to {to} requested", request.id)
