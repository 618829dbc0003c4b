"""Write routes: they validate, then write intent in one transaction; the manager acts on it.

- create / update a VM: put `vms/<vm>/spec`; delete: delete it (only once the VM is stopped);
- start / stop, migrate / acknowledge, drain / resume: `runtime.intents`, which the CLI, the daemon
  and the simulator use too.

Every transaction is guarded by the mod revisions of the keys it checked, so a concurrent change
gives 409 instead of a decision taken on stale facts.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from fastapi import APIRouter, Depends

from haven.api import views
from haven.api.auth import require_admin
from haven.api.bodies import documented, model_body, parse, raw_mapping
from haven.api.context import ApiContext, ApiProblem, conflict, context, invalid, not_found
from haven.api.schemas import (
    CONFLICT,
    DRAIN_REFUSED,
    ERRORS,
    INVALID,
    NOT_FOUND,
    POWER_REFUSED,
    PROMOTE_REFUSED,
    SPEC_UPDATE,
    Accepted,
    DrainIn,
    MigrateIn,
    PromoteIn,
    PromoteOut,
)
from haven.api.spec_checks import cluster_problems
from haven.core.drain import drain_refusal
from haven.core.migration import Obstacle, migration_precondition
from haven.core.protection import host_state
from haven.core.replica import promote_refusal
from haven.core.scheduler import Capacity, build_loads
from haven.model.spec import DesiredState, VmSpec
from haven.model.state import HOST_UP, HostState, RequestAction, VmState
from haven.ports.store import Compare, Delete, Put
from haven.runtime import intents
from haven.runtime.intents import IntentConflict, IntentError, revision_of
from haven.runtime.layout import Snapshot

router = APIRouter(prefix="/api/v1", dependencies=[Depends(require_admin)],
                   responses={**ERRORS, **INVALID})


T = TypeVar("T")


def run_intent(ctx: ApiContext, write: Callable[[], T]) -> T:
    """Run one `intents` write: 404 for what does not exist, 409 for a conflict."""
    try:
        result = write()
    except IntentError as error:
        raise ApiProblem(404, str(error)) from None
    except IntentConflict as error:
        raise conflict(str(error)) from None
    if ctx.on_write is not None:
        ctx.on_write()
    return result


def _require_vm(snap: Snapshot, name: str) -> VmSpec:
    if name not in snap.specs:
        raise not_found("VM", name)
    return snap.specs[name]


def _vm_spec(ctx: ApiContext, snap: Snapshot, data: Any, name: str | None) -> VmSpec:
    if isinstance(data, dict) and name is not None:
        if data.get("name", name) != name:
            raise invalid("the spec's name differs from the URL",
                          [f"name: must be {name!r} (the VM in the URL), got {data.get('name')!r}"])
        data = {**data, "name": name}
    spec = parse(VmSpec, data, "VM spec")
    problems = cluster_problems(snap, spec)
    if problems:
        n = len(problems)
        raise invalid(f"the VM spec does not fit this cluster ({n} problem{'s' if n != 1 else ''})",
                      problems)
    return spec


def _accepted_vm(ctx: ApiContext, name: str, message: str, request_id: str | None = None) -> Accepted:
    snap = ctx.snapshot()
    vm = views.vm_out(snap, name, ctx.clock()) if name in snap.specs else None
    return Accepted(message=message, request_id=request_id, vm=vm)


@router.post("/vms", status_code=201, response_model=Accepted, responses=CONFLICT, tags=["write"],
             openapi_extra=documented(VmSpec, yaml=True))
def create_vm(ctx: ApiContext = Depends(context), data: Any = Depends(raw_mapping("VM spec"))) -> Accepted:
    """Declare a new VM (JSON or YAML body). The manager places and starts it if `desired` is
    running."""
    snap = ctx.snapshot()
    spec = _vm_spec(ctx, snap, data, None)
    if spec.name in snap.specs:
        raise conflict(f"VM {spec.name!r} already exists: use PUT /api/v1/vms/{spec.name} to change it")
    key = ctx.layout.vm_spec(spec.name)
    ctx.commit([Compare(key, mod_revision=0)], [Put(key, spec.model_dump_json())], f"VM {spec.name!r}")
    return _accepted_vm(ctx, spec.name, f"VM {spec.name} declared")


@router.put("/vms/{name}", response_model=Accepted, responses={**NOT_FOUND, **CONFLICT}, tags=["write"],
            openapi_extra=documented(VmSpec, yaml=True, component=SPEC_UPDATE))
def update_vm(name: str, ctx: ApiContext = Depends(context),
              data: Any = Depends(raw_mapping("VM spec"))) -> Accepted:
    """Replace an existing VM's spec. Its `name` comes from the URL: leave it out, or send the
    URL's (a spec read back from GET is accepted as it is)."""
    snap = ctx.snapshot()
    _require_vm(snap, name)
    spec = _vm_spec(ctx, snap, data, name)
    key = ctx.layout.vm_spec(name)
    ctx.commit([Compare(key, mod_revision=revision_of(ctx.get(key)))], [Put(key, spec.model_dump_json())],
               f"VM {name!r}")
    return _accepted_vm(ctx, name, f"VM {name} updated")


@router.delete("/vms/{name}", response_model=Accepted, responses={**NOT_FOUND, **CONFLICT}, tags=["write"])
def delete_vm(name: str, ctx: ApiContext = Depends(context)) -> Accepted:
    """Forget a stopped VM. A VM that still runs must be stopped first (POST .../stop); a member
    of a service must first leave it (change or delete the service)."""
    spec_key, placement_key = ctx.layout.vm_spec(name), ctx.layout.placement(name)
    spec_kv, placement_kv = ctx.get(spec_key), ctx.get(placement_key)
    if spec_kv is None:
        raise not_found("VM", name)
    snap = ctx.snapshot()
    owners = sorted(service for service, spec in snap.services.items() if name in spec.members)
    if owners:
        raise conflict(f"VM {name} is a member of service {owners[0]}: take it out of the service's members "
                       f"(PUT /api/v1/services/{owners[0]}) or delete the service first")
    placement = snap.placements.get(name)
    if placement is not None and placement.state != VmState.STOPPED:
        where = f" on {placement.host}" if placement.host else ""
        raise conflict(f"VM {name} is {placement.state.value}{where}: stop it first "
                       f"(POST /api/v1/vms/{name}/stop), then delete it once it is stopped")
    ctx.commit([Compare(spec_key, mod_revision=spec_kv.mod_revision),
                Compare(placement_key, mod_revision=revision_of(placement_kv))],
               [Delete(spec_key), Delete(ctx.layout.request(name))], f"VM {name!r}")
    return Accepted(message=f"VM {name} deleted")


def _set_desired(ctx: ApiContext, name: str, desired: DesiredState) -> Accepted:
    if not run_intent(ctx, lambda: intents.set_desired(ctx.store, ctx.layout, name, desired)):
        return _accepted_vm(ctx, name, f"VM {name} is already meant to be {desired.value}")
    verb = "start" if desired == DesiredState.RUNNING else "stop"
    return _accepted_vm(ctx, name, f"VM {name}: {verb} requested")


@router.post("/vms/{name}/start", status_code=202, response_model=Accepted, responses=NOT_FOUND,
             tags=["write"])
def start_vm(name: str, ctx: ApiContext = Depends(context)) -> Accepted:
    """Set `desired: running`."""
    return _set_desired(ctx, name, DesiredState.RUNNING)


@router.post("/vms/{name}/stop", status_code=202, response_model=Accepted, responses=NOT_FOUND,
             tags=["write"])
def stop_vm(name: str, ctx: ApiContext = Depends(context)) -> Accepted:
    """Set `desired: stopped` (an HA VM is then no longer restarted)."""
    return _set_desired(ctx, name, DesiredState.STOPPED)


def _check_migration(snap: Snapshot, name: str, body: MigrateIn) -> None:
    """The core's migration rules (`core.migration.migration_precondition`), worded for HTTP: 422
    for a request that can never work, 409 for one the cluster's present state rules out."""
    owners = sorted(service for service, spec in snap.services.items() if name in spec.members)
    if owners:  # a member is pinned to its host: the service moves between members instead
        raise invalid(f"VM {name} is a member of service {owners[0]} and never leaves its host: move the "
                      f"service instead (POST /api/v1/services/{owners[0]}/move)")
    view = snap.view()
    hosts = {host: host_state(h) for host, h in view.hosts.items()}
    refusal = migration_precondition(snap.specs[name], snap.placements.get(name), body.kind, body.target, hosts)
    if refusal is None:
        return
    target = body.target
    match refusal.obstacle:
        case Obstacle.UNKNOWN_TARGET:
            raise invalid(f"target host {target!r} does not exist",
                          [f"target: host {target!r} does not exist (hosts: {', '.join(sorted(snap.hosts))})"])
        case Obstacle.NOT_LIVE_MIGRATABLE:
            raise invalid(f"VM {name} may not be live-migrated",
                          [f"kind: VM {name} has migratable: false; use quick or cold"])
        case Obstacle.NOT_RUNNING:
            raise conflict(f"VM {name} is {refusal.state}: only a running VM can be migrated")
        case Obstacle.ALREADY_THERE:
            raise invalid(f"VM {name} already runs on {target}",
                          [f"target: VM {name} already runs on {target}; pick another host"])
        case Obstacle.TARGET_UNAVAILABLE:
            raise conflict(f"target host {target} is {refusal.state}: it takes no VMs now")
        case Obstacle.NOWHERE_TO_GO:
            raise conflict(f"no other host is online: VM {name} has nowhere to go")


@router.post("/vms/{name}/migrate", status_code=202, response_model=Accepted,
             responses={**NOT_FOUND, **CONFLICT}, tags=["write"],
             openapi_extra=documented(MigrateIn, required=False))
def migrate_vm(name: str, ctx: ApiContext = Depends(context),
               body: MigrateIn = Depends(model_body(MigrateIn, "migration request", optional=True))) -> Accepted:
    """Move a running VM: `live` (no visible outage), `quick` (save, move, restore) or `cold`
    (stop, boot on the target). `target: null` lets the scheduler pick the best host."""
    snap = ctx.snapshot()
    _require_vm(snap, name)
    _check_migration(snap, name, body)
    request = run_intent(ctx, lambda: intents.request(ctx.store, ctx.layout, name, RequestAction.MIGRATE, body.kind,
                                                   body.target))
    to = body.target or "the best host"
    return _accepted_vm(ctx, name, f"{body.kind.value} migration of VM {name} to {to} requested", request.id)


@router.post("/vms/{name}/acknowledge", status_code=202, response_model=Accepted,
             responses={**NOT_FOUND, **CONFLICT}, tags=["write"])
def acknowledge_vm(name: str, ctx: ApiContext = Depends(context)) -> Accepted:
    """Clear a VM's `error` state so the manager tries again."""
    snap = ctx.snapshot()
    _require_vm(snap, name)
    placement = snap.placements.get(name)
    if placement is None or placement.state != VmState.ERROR:
        state = placement.state.value if placement else "not placed yet"
        raise conflict(f"VM {name} is {state}, not in error: nothing to acknowledge")
    request = run_intent(ctx, lambda: intents.request(ctx.store, ctx.layout, name, RequestAction.ACKNOWLEDGE))
    return _accepted_vm(ctx, name, f"error of VM {name} acknowledged", request.id)


def _set_maintenance(ctx: ApiContext, name: str, maintenance: bool, force: bool = False) -> Accepted:
    if maintenance and not force:
        snap = ctx.snapshot()
        if name not in snap.hosts:
            raise not_found("host", name)
        refusal = drain_refusal(snap.view(), name)
        if refusal is not None:
            raise ApiProblem(409, refusal.detail, refusal.problems)
    admin = run_intent(ctx, lambda: intents.set_maintenance(ctx.store, ctx.layout, name, maintenance))
    snap = ctx.snapshot()
    host = views.host_out(snap, snap.view(), name)
    message = (f"host {name}: drain requested ({len(host.vms)} VM(s) to move)" if maintenance
               else f"host {name}: resume requested")
    return Accepted(message=message, request_id=admin.request_id, host=host)


@router.post("/hosts/{name}/drain", status_code=202, response_model=Accepted,
             responses={**NOT_FOUND, **DRAIN_REFUSED}, tags=["write"],
             openapi_extra=documented(DrainIn, required=False))
def drain_host(name: str, ctx: ApiContext = Depends(context),
               body: DrainIn = Depends(model_body(DrainIn, "drain request", optional=True))) -> Accepted:
    """Put a host in maintenance: the manager migrates its VMs away and places none there.

    Refused (409, one problem line per VM that cannot move) when an HA VM would find no other host,
    or when the host is down; `{"force": true}` drains anyway."""
    return _set_maintenance(ctx, name, True, body.force)


@router.post("/hosts/{name}/resume", status_code=202, response_model=Accepted, responses=NOT_FOUND,
             tags=["write"])
def resume_host(name: str, ctx: ApiContext = Depends(context)) -> Accepted:
    """End maintenance: the host takes VMs again."""
    return _set_maintenance(ctx, name, False)


@router.post("/hosts/{name}/power-on", status_code=202, response_model=Accepted,
             responses={**NOT_FOUND, **POWER_REFUSED}, tags=["write"])
def power_on_host(name: str, ctx: ApiContext = Depends(context)) -> Accepted:
    """Switch a powered-off host on through its fence device (the one configured on the node
    serving this API). The host rejoins once its daemon has started and taken a lease."""
    snap = ctx.snapshot()
    if name not in snap.hosts:
        raise not_found("host", name)
    record = snap.records.get(name)
    if name in snap.alive and (record is None or record.state in HOST_UP):  # a fenced host's lease may linger
        raise conflict(f"host {name} is up (it holds its lease): nothing to power on")
    if ctx.power is None or not ctx.power.has_device(name):
        raise conflict(f"the node serving this API has no fence device for {name}: switch it on by hand, "
                       f"or add the device to that node's fencing config")
    done, detail = ctx.power.power_on(name)
    if not done:
        raise ApiProblem(502, f"host {name} was not powered on: {detail}")
    snap = ctx.snapshot()
    return Accepted(message=f"host {name} powered on ({detail}); it rejoins once its daemon is up",
                    host=views.host_out(snap, snap.view(), name))


def _promote_capacity(snap: Snapshot) -> Capacity:
    """The hosts' loads as the manager would see them now: online hosts take VMs."""
    view = snap.view()
    usable = [name for name, h in view.hosts.items() if host_state(h) is HostState.ONLINE]
    placements = [p for name, p in snap.placements.items() if name in snap.specs]
    return Capacity(build_loads(snap.hosts, usable, snap.specs, placements), snap.settings)


@router.post("/vms/{name}/promote", status_code=202, response_model=PromoteOut,
             responses={**NOT_FOUND, **PROMOTE_REFUSED}, tags=["write"], openapi_extra=documented(PromoteIn))
def promote_vm(name: str, ctx: ApiContext = Depends(context),
               body: PromoteIn = Depends(model_body(PromoteIn, "promote request"))) -> PromoteOut:
    """Start a VM that runs nowhere from its copy on `target` although that copy lacks writes (a
    replicated pool whose primary's disk is gone): the writes it lacks are lost, so the request
    needs `accept_data_loss: true`. The manager's own rule (`core.replica.promote_refusal`) is
    asked first: 422 when the VM has no copy there, 409 when it runs, when the copy lacks nothing
    (no promotion needed) or when the target cannot take it. The answer says how stale the copy is."""
    snap = ctx.snapshot()
    spec = _require_vm(snap, name)
    record, placement = snap.replicas.get(name), snap.placements.get(name)
    hosts = sorted({c.host for c in record.copies}) if record is not None else []
    if record is None or not hosts:
        raise invalid(f"VM {name} has no copy on a replicated pool: there is nothing to promote",
                      [f"target: VM {name} has no replica"])
    if body.target not in hosts:
        raise invalid(f"VM {name} has no copy on {body.target}",
                      [f"target: name the host whose copy to start from ({', '.join(hosts)})"])
    if placement is None:
        raise conflict(f"VM {name} was never placed: the manager starts it where its copies are current")
    refusal = promote_refusal(snap.view(), spec, placement, body.target, _promote_capacity(snap))
    if refusal is not None:
        raise conflict(refusal)
    copy = record.behind(body.target)
    assert copy is not None  # promote_refusal refuses a target whose copies lack nothing
    now = ctx.clock()
    stale_s = views.age(copy.since, now)
    staleness = f"{copy.state.value} for {stale_s:.0f} s" + (f" ({copy.reason})" if copy.reason else "")
    if not body.accept_data_loss:
        raise invalid(f"starting VM {name} from its copy on {body.target} loses every write that copy lacks: "
                      f"it is {staleness}; send accept_data_loss: true to do it anyway",
                      ["accept_data_loss: must be true"])
    request = run_intent(ctx, lambda: intents.request(ctx.store, ctx.layout, name, RequestAction.PROMOTE,
                                                   target=body.target))
    snap = ctx.snapshot()
    return PromoteOut(message=f"promotion of VM {name} to {body.target} requested: its copy there is {staleness}; "
                      "the writes it lacks are lost", request_id=request.id, target=body.target,
                      state=copy.state.value, since=copy.since, stale_s=stale_s, reason=copy.reason,
                      vm=views.vm_out(snap, name, now))
