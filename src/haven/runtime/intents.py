"""Operator intents written to the store: what the API, the CLI, the daemon and scenarios ask for.

Each is one transaction guarded by the mod revisions of the keys it checked, so a concurrent
change makes it fail with `IntentConflict` instead of landing on stale facts, and a failure leaves
the store as it was. The manager acts on an intent in its next iteration.
"""
from __future__ import annotations

import uuid
from collections.abc import Sequence

from haven.model.service import ServiceRequest, ServiceSpec
from haven.model.spec import DesiredState, MigrationKind, VmSpec
from haven.model.state import HostAdmin, RequestAction, VmRequest
from haven.ports.store import Compare, KeyValue, Put, Store
from haven.runtime.layout import Layout


class IntentError(ValueError):
    """The intent names something that does not exist."""


class IntentConflict(RuntimeError):
    """The intent cannot land now: a request is pending, or what it checked changed meanwhile."""


def new_request_id() -> str:
    return uuid.uuid4().hex[:12]


def revision_of(kv: KeyValue | None) -> int:
    """The mod revision to guard a transaction with (0 = the key must not exist)."""
    return kv.mod_revision if kv is not None else 0


def _commit(store: Store, compares: Sequence[Compare], put: Put, what: str) -> None:
    if not store.txn(compares, [put]).succeeded:
        raise IntentConflict(f"{what} changed while this request was handled; read it again and retry")


def _spec(store: Store, layout: Layout, vm: str) -> tuple[KeyValue, VmSpec]:
    kv = store.get(layout.vm_spec(vm))
    if kv is None:
        raise IntentError(f"VM {vm!r} does not exist")
    return kv, VmSpec.model_validate_json(kv.value)


def set_desired(store: Store, layout: Layout, vm: str, desired: DesiredState) -> bool:
    """Start or stop a VM by its spec's `desired`; False if it already was."""
    kv, spec = _spec(store, layout, vm)
    if spec.desired == desired:
        return False
    changed = spec.model_copy(update={"desired": desired})
    _commit(store, [Compare(kv.key, mod_revision=kv.mod_revision)], Put(kv.key, changed.model_dump_json()),
            f"VM {vm!r}")
    return True


def request(store: Store, layout: Layout, vm: str, action: RequestAction,
            kind: MigrationKind = MigrationKind.LIVE, target: str | None = None,
            request_id: str | None = None) -> VmRequest:
    """Ask the manager to migrate a VM or acknowledge its error. One request at a time per VM:
    the manager clears it once handled."""
    spec_kv, _ = _spec(store, layout, vm)
    key, placement_key = layout.request(vm), layout.placement(vm)
    pending = store.get(key)
    if pending is not None:
        was = VmRequest.model_validate_json(pending.value)
        raise IntentConflict(f"VM {vm} already has a pending {was.action.value} request ({was.id}): "
                             "wait until the manager has handled it")
    req = VmRequest(id=request_id or new_request_id(), action=action, kind=kind, target=target)
    _commit(store, [Compare(key, mod_revision=0), Compare(spec_kv.key, mod_revision=spec_kv.mod_revision),
                    Compare(placement_key, mod_revision=revision_of(store.get(placement_key)))],
            Put(key, req.model_dump_json()), f"VM {vm!r}")
    return req


def set_maintenance(store: Store, layout: Layout, host: str, maintenance: bool,
                    request_id: str | None = None) -> HostAdmin:
    """Drain a host (maintenance) or resume it, as asked: whether a drain can finish is the
    caller's check (the API refuses one that cannot unless forced, `core.drain`); a scenario's
    `drain` is a forced drain."""
    host_key, admin_key = layout.host(host), layout.host_admin(host)
    host_kv = store.get(host_key)
    if host_kv is None:
        raise IntentError(f"host {host!r} does not exist")
    admin = HostAdmin(maintenance=maintenance, request_id=request_id or new_request_id())
    _commit(store, [Compare(host_key, mod_revision=host_kv.mod_revision),
                    Compare(admin_key, mod_revision=revision_of(store.get(admin_key)))],
            Put(admin_key, admin.model_dump_json()), f"host {host!r}")
    return admin


def _service(store: Store, layout: Layout, service: str) -> tuple[KeyValue, ServiceSpec]:
    kv = store.get(layout.service_spec(service))
    if kv is None:
        raise IntentError(f"service {service!r} does not exist")
    return kv, ServiceSpec.model_validate_json(kv.value)


def set_service_desired(store: Store, layout: Layout, service: str, desired: DesiredState) -> bool:
    """Start or stop a service by its spec's `desired`; False if it already was."""
    kv, spec = _service(store, layout, service)
    if spec.desired == desired:
        return False
    changed = spec.model_copy(update={"desired": desired})
    _commit(store, [Compare(kv.key, mod_revision=kv.mod_revision)], Put(kv.key, changed.model_dump_json()),
            f"service {service!r}")
    return True


def move_service(store: Store, layout: Layout, service: str, target: str | None = None,
                 request_id: str | None = None) -> ServiceRequest:
    """Ask the manager to move a running service to `target` (a member VM; None: the best other
    one). One request at a time per service: the manager clears it once handled."""
    spec_kv, spec = _service(store, layout, service)
    if target is not None and target not in spec.members:
        raise IntentError(f"{target!r} is not a member of service {service} ({', '.join(spec.members)})")
    key = layout.service_request(service)
    pending = store.get(key)
    if pending is not None:
        was = ServiceRequest.model_validate_json(pending.value)
        raise IntentConflict(f"service {service} already has a pending {was.action.value} request ({was.id}): "
                             "wait until the manager has handled it")
    req = ServiceRequest(id=request_id or new_request_id(), target=target)
    _commit(store, [Compare(key, mod_revision=0), Compare(spec_kv.key, mod_revision=spec_kv.mod_revision)],
            Put(key, req.model_dump_json()), f"service {service!r}")
    return req
