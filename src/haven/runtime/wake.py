"""Which store change wakes which loop: one policy for the daemon and the simulator.

A host runs one store watch over the cluster's prefix; every change it delivers goes through
`route`, and the caller does what the answer says. Pure: the key (relative to the cluster's root)
and whether this host's manager leads are all it looks at.
"""
from __future__ import annotations

from dataclasses import dataclass

AGENT_PREFIXES = ("vms/", "status/", "hosts/")  # what the agent caches (placements, specs, peers)
LEADER_KEY = "manager"
# Written by the leading manager itself, in the transaction it already knows the outcome of.
MANAGER_OWN = ("events/", "hoststate/")


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
