"""`haven witness`: the third vote of a two-host pair, on any third machine (a NAS, a VPS, a
Raspberry Pi). It is an etcd member and nothing else: no VMs, no agent, no manager. With it,
the store keeps its quorum when either pair host dies or their direct link breaks, so the
survivor can tell "my peer died" from "the link between us broke"; without a reachable quorum no
host fails anything over.

This builds etcd's command line from a few settings and checks them; the member's timings must
be those of the hosts' members (one cluster, one raft).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

CLIENT_PORT, PEER_PORT = 2379, 2380
HEARTBEAT_MS, ELECTION_MS = 100, 1000  # etcd's defaults, as the lab's and the hosts' members


class WitnessConfigError(ValueError):
    """A witness setting is wrong; the message says what to give instead."""


@dataclass(frozen=True)
class Witness:
    name: str
    address: str  # where the pair hosts reach it
    data_dir: Path
    cluster: str  # every member: "h1=http://10.0.0.1:2380,h2=http://10.0.0.2:2380,w=http://10.0.0.3:2380"
    join: bool = False  # the cluster exists already: this member is added to it (etcdctl member add first)

    def peer_url(self) -> str:
        return f"http://{self.address}:{PEER_PORT}"

    def check(self) -> None:
        members = dict(item.split("=", 1) for item in self.cluster.split(",") if "=" in item)
        if len(members) != 3:
            raise WitnessConfigError(f"--cluster names {len(members)} member(s): a pair and its witness are three "
                                     "(h1=URL,h2=URL,NAME=URL)")
        if members.get(self.name) != self.peer_url():
            raise WitnessConfigError(f"--cluster must name this witness as {self.name}={self.peer_url()} "
                                     f"(it has {self.name}={members.get(self.name, 'nothing')})")

    def argv(self, etcd: str = "etcd") -> list[str]:
        self.check()
        client = f"http://{self.address}:{CLIENT_PORT}"
        return [etcd, "--name", self.name, "--data-dir", str(self.data_dir),
                "--listen-client-urls", client, "--advertise-client-urls", client,
                "--listen-peer-urls", self.peer_url(), "--initial-advertise-peer-urls", self.peer_url(),
                "--initial-cluster", self.cluster, "--initial-cluster-state", "existing" if self.join else "new",
                "--heartbeat-interval", str(HEARTBEAT_MS), "--election-timeout", str(ELECTION_MS)]
