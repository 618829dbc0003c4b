"""Store keys: `Layout` writes every key name and `Layout.parse` is their one reader."""
from __future__ import annotations

from haven.runtime.layout import KeyKind, Layout, StoreKey

LAYOUT = Layout("c1")


def test_every_key_the_layout_writes_parses_back():
    cases = {
        LAYOUT.config(): StoreKey(KeyKind.CONFIG),
        LAYOUT.manager(): StoreKey(KeyKind.MANAGER),
        LAYOUT.host("h1"): StoreKey(KeyKind.HOST, host="h1"),
        LAYOUT.host_admin("h1"): StoreKey(KeyKind.HOST_ADMIN, host="h1"),
        LAYOUT.host_state("h1"): StoreKey(KeyKind.HOST_STATE, host="h1"),
        LAYOUT.alive("h1"): StoreKey(KeyKind.ALIVE, host="h1"),
        LAYOUT.vm_spec("web"): StoreKey(KeyKind.VM_SPEC, vm="web"),
        LAYOUT.placement("web"): StoreKey(KeyKind.PLACEMENT, vm="web"),
        LAYOUT.request("web"): StoreKey(KeyKind.REQUEST, vm="web"),
        LAYOUT.status("h2", "web"): StoreKey(KeyKind.STATUS, host="h2", vm="web"),
        LAYOUT.events() + "000000001.500000-agent-h1-000007": StoreKey(KeyKind.EVENT),
    }
    for key, parsed in cases.items():
        assert LAYOUT.parse(key) == parsed, key


def test_keys_the_layout_does_not_define_parse_to_none():
    for key in ("/haven/other/config", "/haven/c1/", "/haven/c1/vms/web/disk", "/haven/c1/vms/web",
                "/haven/c1/hosts/h1/extra", "/haven/c1/status/h1", "/haven/c1/unknown/x"):
        assert LAYOUT.parse(key) is None, key
