"""Operator intents written to the store: what the API, the CLI and scenarios ask for.

Each is one atomic write; the manager acts on it in its next iteration.
"""
from __future__ import annotations

import uuid

from haven.model.spec import DesiredState, MigrationKind, VmSpec
from haven.model.state import HostAdmin, RequestAction, VmRequest
from haven.ports.store import Store
from haven.runtime.layout import Layout


class IntentError(ValueError):
    """The intent names something that does not exist."""


def _spec(store: Store, layout: Layout, vm: str) -> VmSpec:
    kv = store.get(layout.vm_spec(vm))
    if kv is None:
        raise IntentError(f"no VM named {vm!r}")
    return VmSpec.model_validate_json(kv.value)


def set_desired(store: Store, layout: Layout, vm: str, desired: DesiredState) -> None:
    spec = _spec(store, layout, vm)
    store.put(layout.vm_spec(vm), spec.model_copy(update={"desired": desired}).model_dump_json())


def request(store: Store, layout: Layout, vm: str, action: RequestAction,
            kind: MigrationKind = MigrationKind.LIVE, target: str | None = None,
            request_id: str | None = None) -> VmRequest:
    _spec(store, layout, vm)
    req = VmRequest(id=request_id or uuid.uuid4().hex[:12], action=action, kind=kind, target=target)
    store.put(layout.request(vm), req.model_dump_json())
    return req


def set_maintenance(store: Store, layout: Layout, host: str, maintenance: bool,
                    request_id: str | None = None) -> None:
    if store.get(layout.host(host)) is None:
        raise IntentError(f"no host named {host!r}")
    admin = HostAdmin(maintenance=maintenance, request_id=request_id or uuid.uuid4().hex[:12])
    store.put(layout.host_admin(host), admin.model_dump_json())
