"""Which store change wakes which loop: one policy for the daemon and the simulator.

A host runs one store watch over the cluster's prefix; every change it delivers goes through
`route`, and the caller does what the answer says. Pure: the key (relative to the cluster's root)
and whether this host's manager leads are all it looks at. `lost_host_rechecks` says when the
manager must look again at hosts it just found lost, by the same rule in both.
"""
from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from haven.core.decision import Decision
from haven.model.state import HostState

AGENT_PREFIXES = ("vms/", "status/", "hosts/",  # what the agent caches (placements, specs, peers)
                  "services/", "members/", "hoststate/",  # what wakes its service runner
                  "replicas/")  # and its replication runner
LEADER_KEY = "manager"
# Written by the leading manager itself, in the transaction it already knows the outcome of.
MANAGER_OWN = ("events/", "hoststate/", "fencedev/")


@dataclass(frozen=True, slots=True)
class Route:
    feed_agent: bool  # apply the change to the agent's cache; wake it if the change concerns it
    manager_stale: bool  # the leading manager must re-read before it decides again: wake it
    leader_key: bool  # the leader key changed: tell the manager (a follower campaigns once it is gone)


_NOTHING = Route(False, False, False)


def route(key: str, leading: bool) -> Route:
    """`key` is relative to the cluster's root (e.g. "vms/web/placement")."""
    if key == LEADER_KEY:
        return Route(False, leading, True)
    feed = key.startswith(AGENT_PREFIXES)
    stale = leading and not key.startswith(MANAGER_OWN) and not key.endswith("/placement")
    return Route(feed, stale, False) if feed or stale else _NOTHING


GRACE_EPSILON_S = 1e-6  # wake just after the grace ends, not just before


def lost_host_rechecks(decision: Decision | None, fence_confirmed: Collection[str],
                       fence_grace_s: float) -> dict[str, float]:
    """Hosts the decision found lost -> how long until the manager must decide again for each:
    at once for a host whose power fence confirmed it off (nothing is left to wait for), else when
    its `fence_grace_s` has run out. Waking later is safe, only slower: `core.manager` recovers a
    host only on a confirmation or once the grace has passed, whenever it is asked."""
    if decision is None:
        return {}
    return {name: 0.0 if name in fence_confirmed else fence_grace_s + GRACE_EPSILON_S
            for name, record in sorted(decision.host_records.items()) if record.state is HostState.LOST}
