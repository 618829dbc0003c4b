"""Service declarations and records: what is accepted, and what is refused with a clear message."""
from __future__ import annotations

import pytest
from pydantic import ValidationError

from haven.model.service import (
    GuestHealth,
    MemberFacts,
    ServicePhase,
    ServiceSpec,
    ServiceState,
    check_services,
    pinned_host,
)
from haven.model.spec import Disk, VmSpec

from .helpers import host

BASE = {"name": "db", "members": ("db1", "db2"), "start": ["/etc/init.d/db", "start"],
        "stop": ["/etc/init.d/db", "stop"], "check": ["/etc/init.d/db", "status"],
        "floating_ip": "10.0.9.10/24"}


def spec(**changes: object) -> ServiceSpec:
    return ServiceSpec.model_validate({**BASE, **changes})


def refusal(**changes: object) -> str:
    with pytest.raises(ValidationError) as info:
        spec(**changes)
    return str(info.value)


def test_a_plain_service_is_accepted_with_sensible_defaults():
    s = spec(data_disk={"pool": "shared", "size_mib": 256})
    assert s.start == ("/etc/init.d/db", "start")  # YAML lists become tuples: the spec is immutable
    assert s.order == ("db1", "db2") and s.failure_threshold >= 1
    assert s.data_file == "db-data.qcow2"
    assert spec().data_file is None
    assert spec(preferred_member="db2").order == ("db2", "db1")
    with pytest.raises(ValidationError):
        s.model_copy(update={}).__setattr__("name", "other")  # frozen


@pytest.mark.parametrize(("changes", "words"), [
    ({"members": ("db1",)}, "at least 2"),
    ({"members": ("db1", "db1")}, "member 'db1' is listed twice"),
    ({"members": ("db1", "DB_2")}, "member 'DB_2' is not a valid VM name"),
    ({"preferred_member": "db3"}, "preferred_member 'db3' is not one of the members (db1, db2)"),
    ({"floating_ip": "10.0.9.10"}, "needs a prefix length, e.g. 10.0.9.10/24"),
    ({"floating_ip": "10.0.9.300/24"}, "is not an IPv4 address/prefix"),
    ({"floating_ip": "10.0.9.0/24"}, "10.0.9.0 is the network or broadcast address of 10.0.9.0/24"),
    ({"floating_ip": "10.0.9.255/24"}, "network or broadcast address"),
    ({"floating_ip": "127.0.0.5/8"}, "cannot be a service address"),
    ({"start": []}, "at least 1"),
    ({"check": ["", "x"]}, "the program (first word) must not be empty"),
    ({"failure_threshold": 0}, "greater than or equal to 1"),
    ({"check_interval_s": 0}, "greater than 0"),
    ({"mount_point": "data"}, "must be an absolute path other than /"),
    ({"colour": "blue"}, "Extra inputs are not permitted"),
])
def test_a_bad_declaration_says_what_is_wrong(changes, words):
    assert words in refusal(**changes)


def test_a_slash_32_address_is_fine():
    assert spec(floating_ip="10.0.9.10/32").floating_ip == "10.0.9.10/32"


def test_a_state_with_an_active_member_must_be_in_an_active_phase():
    ServiceState(service="db", phase=ServicePhase.RUNNING, active="db1", generation=1)
    with pytest.raises(ValidationError, match="a running service needs active member"):
        ServiceState(service="db", phase=ServicePhase.RUNNING)
    with pytest.raises(ValidationError, match="a down service has no active member"):
        ServiceState(service="db", phase=ServicePhase.DOWN, active="db1")


def test_member_facts_cannot_claim_a_disk_on_a_dead_qemu():
    facts = {"service": "db", "member": "db1", "host": "h1", "lease": 7, "generation": 1}
    up = MemberFacts(**facts, qemu=True, boot=1, guest=GuestHealth.ANSWERING, disk=True, mounted=True)
    assert up.holds == ("the disk", "the mount")
    assert MemberFacts(**facts).holds == ()
    with pytest.raises(ValidationError, match="whose QEMU is not running holds nothing"):
        MemberFacts(**facts, disk=True)
    with pytest.raises(ValidationError, match="cannot be mounted when it is not attached"):
        MemberFacts(**facts, qemu=True, boot=1, mounted=True)


# --- the whole config ---

def member(name: str, on: str | None, **extra: object) -> VmSpec:
    return VmSpec(name=name, preferred_hosts=(on,) if on else (), priority=0, **extra)


HOSTS = [host("h1"), host("h2"), host("h3", pools=("local",))]


def test_a_good_config_has_no_problems():
    assert check_services([spec(data_disk=Disk(pool="shared"))], [member("db1", "h1"), member("db2", "h2")],
                          HOSTS) == []
    assert pinned_host(member("db1", "h1")) == "h1"
    assert pinned_host(VmSpec(name="web", preferred_hosts=("h1", "h2"))) is None


def test_each_config_problem_is_one_clear_line():
    services = [
        spec(members=("db1", "db2", "ghost"), data_disk=Disk(pool="shared")),
        spec(name="db", members=("db1", "free"), floating_ip="10.0.9.10/24"),
        spec(name="mq", members=("mq1", "mq2", "mq3"), floating_ip="10.0.9.11/24",
             data_disk=Disk(pool="shared", file="web-0.qcow2")),
    ]
    vms = [member("db1", "h1"), member("db2", "h1"), member("free", None),
           member("mq1", "h2"), member("mq2", "h3"), member("mq3", "h9"),
           VmSpec(name="web", disks=(Disk(pool="shared"),))]
    assert check_services(services, vms, HOSTS) == [
        "service db: members db1 and db2 are both on host h1; one host failure would take both",
        "service db: member ghost is not a declared VM",
        "service db: the name is used twice",
        "service db: floating IP 10.0.9.10 is already service db's",
        "service db: vm db1 is already a member of service db",
        "service db: member free must be pinned to one host (give it exactly one preferred host)",
        "service mq: data disk web-0.qcow2 on pool shared is already used by vm web",
        "service mq: host h3 (member mq2) cannot reach pool shared of the data disk",
        "service mq: member mq3 is pinned to h9, which is not a declared host",
    ]
