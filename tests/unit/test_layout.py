"""Store keys: `Layout` writes every key name and `Layout.parse` is their one reader."""
from __future__ import annotations

from haven.runtime.layout import STATE_PREFIXES, KeyKind, Layout, StoreKey

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


def test_a_snapshot_without_events_reads_every_other_kind_of_key():
    """`read_snapshot(with_events=False)` reads prefix by prefix: a kind left out of them is missing
    from every such snapshot (the fence checks were, for the lab's readers)."""
    keys = {KeyKind.CONFIG: LAYOUT.config(), KeyKind.MANAGER: LAYOUT.manager(), KeyKind.HOST: LAYOUT.host("h1"),
            KeyKind.HOST_ADMIN: LAYOUT.host_admin("h1"), KeyKind.HOST_STATE: LAYOUT.host_state("h1"),
            KeyKind.FENCE_CHECK: LAYOUT.fence_check("h1"), KeyKind.ALIVE: LAYOUT.alive("h1"),
            KeyKind.VM_SPEC: LAYOUT.vm_spec("web"), KeyKind.PLACEMENT: LAYOUT.placement("web"),
            KeyKind.REQUEST: LAYOUT.request("web"), KeyKind.STATUS: LAYOUT.status("h1", "web"),
            KeyKind.SERVICE_SPEC: LAYOUT.service_spec("svc"), KeyKind.SERVICE_STATE: LAYOUT.service_state("svc"),
            KeyKind.SERVICE_REQUEST: LAYOUT.service_request("svc"),
            KeyKind.MEMBER_FACTS: LAYOUT.member_facts_prefix("h1") + "svca",
            KeyKind.POOL: LAYOUT.pool("p"), KeyKind.REPLICA: LAYOUT.replica("web")}
    assert set(keys) == set(KeyKind) - {KeyKind.EVENT}
    for kind, key in keys.items():
        parsed = LAYOUT.parse(key)
        assert parsed is not None and parsed.kind is kind, key
        assert key[len(LAYOUT.root):].startswith(STATE_PREFIXES), f"{kind}: {key} is under no state prefix"
