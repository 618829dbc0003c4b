"""The CLI of replicated pools over a live API: `vm show`'s replicas block, `vm promote`, `pool
list | show | create`, their JSON and their completion."""
from __future__ import annotations

import json
from pathlib import Path

from haven.api.schemas import PoolOut, PromoteOut
from haven.model.replica import CopyState, PoolKind, PoolSpec
from haven.model.state import RequestAction, VmRequest, VmState

from .conftest import READ, Cluster
from .test_cli import run
from .test_cli_complete import complete, names
from .test_replicas_api import list_pool, pair_vm, put_copy


def test_vm_show_prints_the_replicas_block(live: str, cluster: Cluster) -> None:
    pair_vm(cluster, VmState.RUNNING, CopyState.SYNCING, done=40, total=100, reason="resync after h2 returned")
    result = run(live, "vm", "show", "vault", token=READ)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    block = lines[lines.index("  replicas:"):]
    assert block[:4] == [
        "  replicas:",
        "    primary:    h3 (not protected: a copy is not in sync)",
        "    disk 0:     copy on h2: syncing 40% since t=40.0 (60 s ago)  resync after h2 returned",
        "    write without replica: yes"]
    data = json.loads(run(live, "vm", "show", "vault", "-o", "json").output)
    assert data["replicas"]["copies"][0]["progress"] == 0.4 and data["replicas"]["write_without_replica"] is True
    put_copy(cluster, CopyState.IN_SYNC, since=0.0)
    assert "    disk 0:     copy on h2: in-sync since t=0.0 (100 s ago)" in run(live, "vm", "show", "vault").output
    assert "primary:    h3 (protected)" in run(live, "vm", "show", "vault").output
    assert "replicas" not in run(live, "vm", "show", "web").output


def test_promote_without_the_flag_says_what_would_be_lost(live: str, cluster: Cluster) -> None:
    pair_vm(cluster, reason="h2 lost")
    cluster.clock.t = 4000.0
    result = run(live, "vm", "promote", "vault", "--to", "h2")
    assert result.exit_code == 2, result.output
    assert result.output == ("error: starting VM vault from its copy on h2 would lose every write that copy lacks: "
                             "it is stale since t=40.0 (66 min ago): h2 lost; pass --accept-data-loss to do it "
                             "anyway\n")
    assert cluster.layout.request("vault") not in cluster.dump()


def test_promote_with_the_flag_says_how_stale_then_acts(live: str, cluster: Cluster) -> None:
    pair_vm(cluster, reason="h2 lost")
    result = run(live, "vm", "promote", "vault", "--to", "h2", "--accept-data-loss")
    assert result.exit_code == 0, result.output
    assert result.stderr == ("the copy of VM vault on h2 is stale since t=40.0 (60 s ago): h2 lost; the writes it "
                             "lacks will be lost\n")
    assert result.stdout == ("promotion of VM vault to h2 requested: its copy there is stale for 60 s (h2 lost); "
                             "the writes it lacks are lost\n")
    request = VmRequest.model_validate_json(cluster.dump()[cluster.layout.request("vault")])
    assert (request.action, request.target) == (RequestAction.PROMOTE, "h2")


def test_promote_json_and_refusals(live: str, cluster: Cluster) -> None:
    pair_vm(cluster, VmState.RUNNING)
    running = run(live, "vm", "promote", "vault", "--to", "h2", "--accept-data-loss")
    assert running.exit_code == 1
    assert running.output == "error: vm vault is running: promote only a VM that runs nowhere\n"  # nothing said first
    assert run(live, "vm", "promote", "vault", "--to", "h1", "--accept-data-loss").exit_code == 2
    read_only = run(live, "vm", "promote", "vault", "--to", "h2", "--accept-data-loss", token=READ)
    assert read_only.exit_code == 4
    cluster.put_vm("vault", "h3", VmState.STOPPED, memory=256, priority=3)
    data = json.loads(run(live, "vm", "promote", "vault", "--to", "h2", "--accept-data-loss", "-o", "json").stdout)
    assert data["state"] == "stale" and data["stale_s"] == 60.0 and data["vm"]["request"]["action"] == "promote"


def test_pool_list_show_and_create(live: str, cluster: Cluster, tmp_path: Path) -> None:
    pair_vm(cluster)
    listed = run(live, "pool", "list", token=READ)
    assert listed.exit_code == 0, listed.output
    rows = [line.split() for line in listed.output.splitlines()]
    assert rows == [["POOL", "KIND", "HOSTS", "VMS"], ["pair", "replicated", "h2,", "h3", "vault"],
                    ["shared", "shared", "h1,", "h2,", "h3", "-", "not", "declared"]]
    assert json.loads(run(live, "pool", "show", "pair", "-o", "json").output)["hosts"] == ["h2", "h3"]
    list_pool(cluster, "h1", "mirror")
    refused = run(live, "pool", "create", "mirror", "--replicated", "--hosts", "h1,h2")
    assert refused.exit_code == 2
    assert refused.output == ("error: the pool does not fit this cluster (1 problem)\n"
                              "  - host h2 holds a copy of replicated pool mirror: add it to its pools\n")
    assert cluster.layout.pool("mirror") not in cluster.dump()
    list_pool(cluster, "h2", "pair", "mirror")
    assert run(live, "pool", "create", "mirror", "--replicated", "--hosts", "h1,h2", token=READ).exit_code == 4
    created = run(live, "pool", "create", "mirror", "--replicated", "--hosts", "h1,h2")
    assert created.exit_code == 0 and created.output == "replicated pool mirror on h1 and h2 declared\n"
    spec = tmp_path / "nas.yaml"
    spec.write_text("kind: shared\n")
    data = json.loads(run(live, "pool", "create", "nas", "-f", str(spec), "-o", "json").output)
    assert data["message"] == "shared pool nas declared" and data["pool"]["declared"] is True
    assert PoolSpec.model_validate_json(cluster.dump()[cluster.layout.pool("mirror")]).kind is PoolKind.REPLICATED
    usage = run(live, "pool", "create", "x", "--hosts", "h1,h2")
    assert usage.exit_code == 2 and "add --replicated" in usage.output


def test_completion_of_copies_pools_and_host_lists(live: str, cluster: Cluster) -> None:
    pair_vm(cluster)
    assert names(complete("haven vm promote vault --to ", live)) == ["h2"]
    assert names(complete("haven vm promote v", live)) == ["vault"]
    assert names(complete("haven pool show p", live)) == ["pair"]
    assert names(complete("haven pool create mirror --replicated --hosts h1,", live)) == ["h1,h2", "h1,h3"]


def test_json_has_the_shapes_the_readme_names(live: str, cluster: Cluster) -> None:
    pair_vm(cluster)
    for pool in json.loads(run(live, "pool", "list", "-o", "json").stdout):
        PoolOut.model_validate(pool)
    PoolOut.model_validate(json.loads(run(live, "pool", "show", "pair", "-o", "json").stdout))
    promoted = run(live, "vm", "promote", "vault", "--to", "h2", "--accept-data-loss", "-o", "json")
    PromoteOut.model_validate(json.loads(promoted.stdout))
