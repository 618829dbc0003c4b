"""Storage pools: list them (any token) and declare one (admin).

A pool not declared is a shared one, reached by the hosts that list it; a replicated pool (two
hosts' local disks, model.replica) must be declared: `PUT /pools/<name>` writes `pools/<name>`
in one transaction guarded by the revisions of the keys it checked, after the model's own check
(`model.spec.pool_problems`: both hosts declared, both list the pool, no other host does).
"""
from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from haven.api import views
from haven.api.auth import require_admin, require_read
from haven.api.bodies import documented, parse, raw_mapping
from haven.api.context import ApiContext, conflict, context, invalid, not_found
from haven.api.schemas import (
    CONFLICT,
    ERRORS,
    INVALID,
    NOT_FOUND,
    POOL_SPEC_UPDATE,
    READ_ERRORS,
    Accepted,
    PoolOut,
)
from haven.model.spec import PoolKind, PoolSpec, pool_problems
from haven.ports.store import Compare, Put
from haven.runtime.intents import revision_of
from haven.runtime.layout import Snapshot

router = APIRouter(prefix="/api/v1")


def pools(snap: Snapshot) -> dict[str, PoolSpec]:
    """The declared pools, and the undeclared ones hosts list (shared, as the model reads them)."""
    found = {name: PoolSpec(name=name) for spec in snap.hosts.values() for name in spec.pools}
    return {**found, **snap.pools}


@router.get("/pools", response_model=list[PoolOut], dependencies=[Depends(require_read)], responses=READ_ERRORS,
            tags=["read"])
def list_pools(ctx: ApiContext = Depends(context)) -> list[PoolOut]:
    """Every storage pool: the declared ones, and the shared ones hosts list without a declaration
    (`declared: false`). A replicated pool names its two hosts."""
    snap = ctx.snapshot()
    return [views.pool_out(snap, pool) for _, pool in sorted(pools(snap).items())]


@router.get("/pools/{name}", response_model=PoolOut, dependencies=[Depends(require_read)],
            responses={**READ_ERRORS, **NOT_FOUND}, tags=["read"])
def get_pool(name: str, ctx: ApiContext = Depends(context)) -> PoolOut:
    snap = ctx.snapshot()
    pool = pools(snap).get(name)
    if pool is None:
        raise not_found("pool", name)
    return views.pool_out(snap, pool)


def _pool_spec(data: Any, name: str) -> PoolSpec:
    if isinstance(data, dict):
        if data.get("name", name) != name:
            raise invalid("the pool's name differs from the URL",
                          [f"name: must be {name!r} (the pool in the URL), got {data.get('name')!r}"])
        data = {**data, "name": name}
    return parse(PoolSpec, data, "pool spec")


@router.put("/pools/{name}", response_model=Accepted, dependencies=[Depends(require_admin)],
            responses={**ERRORS, **INVALID, **CONFLICT}, tags=["write"],
            openapi_extra=documented(PoolSpec, yaml=True, component=POOL_SPEC_UPDATE))
def put_pool(name: str, ctx: ApiContext = Depends(context),
             data: Any = Depends(raw_mapping("pool spec"))) -> Accepted:
    """Declare a storage pool, or change one no VM uses (JSON or YAML body). A replicated pool
    names its two hosts, which must be declared and list the pool in their `pools`, and no other
    host may list it; its VMs' disks are raw images. Refused (422, one line per problem) otherwise,
    with nothing written."""
    spec = _pool_spec(data, name)
    snap = ctx.snapshot()
    problems = pool_problems([spec], snap.hosts.values(), snap.specs.values())
    if problems:
        n = len(problems)
        raise invalid(f"the pool does not fit this cluster ({n} problem{'s' if n != 1 else ''})", problems)
    key = ctx.layout.pool(name)
    old = snap.pools.get(name)
    users = sorted(vm for vm, vm_spec in snap.specs.items() if name in vm_spec.pools)
    was = old or PoolSpec(name=name)  # an undeclared pool is a shared one
    if was != spec and users and PoolKind.REPLICATED in (was.kind, spec.kind):
        # Their disks live where the pool's old kind put them: the copies would not be where it says.
        raise conflict(f"pool {name} holds disks of VM{'s' if len(users) > 1 else ''} {', '.join(users)}: "
                       "move them to another pool (or delete them) before changing its kind or hosts")
    guards = [Compare(key, mod_revision=revision_of(ctx.get(key)))]
    for host in spec.hosts:  # the hosts it was checked against: a change to them meanwhile is a conflict
        guards.append(Compare(ctx.layout.host(host), mod_revision=revision_of(ctx.get(ctx.layout.host(host)))))
    if old == spec:
        return Accepted(message=f"pool {name} is already declared so", pool=views.pool_out(snap, spec))
    ctx.commit(guards, [Put(key, spec.model_dump_json())], f"pool {name!r}")
    where = f" on {' and '.join(spec.hosts)}" if spec.hosts else ""
    verb = "declared" if old is None else "changed"
    return Accepted(message=f"{spec.kind.value} pool {name}{where} {verb}",
                    pool=views.pool_out(ctx.snapshot(), spec))
