"""Operator intents: one guarded transaction each; a conflict or a missing name changes nothing."""
from __future__ import annotations

import pytest

from haven.model.spec import DesiredState, HostSpec, MigrationKind, VmSpec
from haven.model.state import RequestAction, VmRequest
from haven.runtime import intents
from haven.runtime.intents import IntentConflict, IntentError
from haven.runtime.layout import Layout
from haven.sim.store import MemoryStore, MemoryStoreClient

LAYOUT = Layout("test")


class Meddling(MemoryStoreClient):
    """Another writer changes `key` just before each transaction lands."""

    def __init__(self, server: MemoryStore, key: str, value: str) -> None:
        super().__init__(server, "meddling", lambda: True)
        self.key, self.value = key, value

    def txn(self, compares, success, failure=()):  # type: ignore[no-untyped-def]
        self.put(self.key, self.value)
        return super().txn(compares, success, failure)


@pytest.fixture
def server() -> MemoryStore:
    server = MemoryStore(lambda: 0.0)
    store = server.client("setup", reachable=lambda: True)
    store.put(LAYOUT.vm_spec("web"), VmSpec(name="web").model_dump_json())
    store.put(LAYOUT.host("h1"), HostSpec(name="h1", address="10.0.0.1", vcpus=4, memory_mib=4096).model_dump_json())
    return server


def keys(server: MemoryStore) -> dict[str, str]:
    store = server.client("read", reachable=lambda: True)
    return {kv.key: kv.value for kv in store.get_prefix(LAYOUT.root)}


def test_a_request_lands_once_and_a_second_one_waits_for_the_manager(server: MemoryStore) -> None:
    store = server.client("api", reachable=lambda: True)
    req = intents.request(store, LAYOUT, "web", RequestAction.MIGRATE, MigrationKind.QUICK, "h1")
    assert VmRequest.model_validate_json(store.get(LAYOUT.request("web")).value) == req  # type: ignore[union-attr]
    before = keys(server)
    with pytest.raises(IntentConflict, match=f"pending migrate request \\({req.id}\\)"):
        intents.request(store, LAYOUT, "web", RequestAction.ACKNOWLEDGE)
    assert keys(server) == before


def test_names_that_do_not_exist_are_refused_without_a_write(server: MemoryStore) -> None:
    store = server.client("api", reachable=lambda: True)
    before = keys(server)
    with pytest.raises(IntentError, match="VM 'nope' does not exist"):
        intents.request(store, LAYOUT, "nope", RequestAction.MIGRATE)
    with pytest.raises(IntentError, match="host 'h9' does not exist"):
        intents.set_maintenance(store, LAYOUT, "h9", True)
    with pytest.raises(IntentError):
        intents.set_desired(store, LAYOUT, "nope", DesiredState.STOPPED)
    assert keys(server) == before


def test_a_change_between_check_and_write_is_a_conflict_not_a_lost_update(server: MemoryStore) -> None:
    resized = VmSpec(name="web", memory_mib=4096, desired=DesiredState.RUNNING).model_dump_json()
    store = Meddling(server, LAYOUT.vm_spec("web"), resized)
    with pytest.raises(IntentConflict, match="changed while this request was handled"):
        intents.set_desired(store, LAYOUT, "web", DesiredState.STOPPED)
    assert keys(server)[LAYOUT.vm_spec("web")] == resized  # the other writer's change stands
    with pytest.raises(IntentConflict):
        intents.request(store, LAYOUT, "web", RequestAction.MIGRATE)
    assert LAYOUT.request("web") not in keys(server)


def test_set_desired_says_whether_anything_changed(server: MemoryStore) -> None:
    store = server.client("api", reachable=lambda: True)
    assert intents.set_desired(store, LAYOUT, "web", DesiredState.STOPPED) is True
    assert intents.set_desired(store, LAYOUT, "web", DesiredState.STOPPED) is False
    spec = VmSpec.model_validate_json(store.get(LAYOUT.vm_spec("web")).value)  # type: ignore[union-attr]
    assert spec.desired is DesiredState.STOPPED
