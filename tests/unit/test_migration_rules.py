"""The migration preconditions: one set of rules in the core, asked by the API before it writes a
request and by the manager when it handles one."""
from __future__ import annotations

import pytest

from haven.core.migration import Obstacle, migration_precondition
from haven.model.spec import MigrationKind, VmSpec
from haven.model.state import HostState, Placement, VmState

from .helpers import running

WEB = VmSpec(name="web")
PINNED = VmSpec(name="pinned", migratable=False)
ONLINE = {"h1": HostState.ONLINE, "h2": HostState.ONLINE, "h3": HostState.MAINTENANCE}
LIVE, QUICK = MigrationKind.LIVE, MigrationKind.QUICK
STOPPED = Placement(vm="web", state=VmState.STOPPED)


@pytest.mark.parametrize(("spec", "placement", "kind", "target", "hosts", "obstacle", "reason"), [
    (WEB, running("web", "h1"), LIVE, "h9", ONLINE, Obstacle.UNKNOWN_TARGET, "unknown host h9"),
    (PINNED, running("pinned", "h1"), LIVE, None, ONLINE, Obstacle.NOT_LIVE_MIGRATABLE,
     "VM is not live-migratable (use quick)"),
    (WEB, STOPPED, QUICK, None, ONLINE, Obstacle.NOT_RUNNING, "VM is stopped, not running"),
    (WEB, None, QUICK, None, ONLINE, Obstacle.NOT_RUNNING, "VM is not placed yet, not running"),
    (WEB, running("web", "h1"), LIVE, "h1", ONLINE, Obstacle.ALREADY_THERE, "already on h1"),
    (WEB, running("web", "h1"), LIVE, "h3", ONLINE, Obstacle.TARGET_UNAVAILABLE, "target h3 is maintenance"),
    (WEB, running("web", "h1"), LIVE, None, {**ONLINE, "h2": HostState.LOST}, Obstacle.NOWHERE_TO_GO,
     "no other host is online"),
])
def test_what_rules_a_migration_out(spec, placement, kind, target, hosts, obstacle, reason):
    refusal = migration_precondition(spec, placement, kind, target, hosts)
    assert refusal is not None and (refusal.obstacle, refusal.reason) == (obstacle, reason)


def test_a_running_vm_may_move_to_an_online_host_or_the_best_one():
    assert migration_precondition(WEB, running("web", "h1"), LIVE, "h2", ONLINE) is None
    assert migration_precondition(WEB, running("web", "h1"), LIVE, None, ONLINE) is None
    assert migration_precondition(PINNED, running("pinned", "h1"), QUICK, "h2", ONLINE) is None
