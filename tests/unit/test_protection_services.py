"""The pet's mood counts services: ill when one is down, worried when a running one has no healthy
standby; its member VMs are judged through it, not as HA VMs (`core.protection`)."""
from __future__ import annotations

from haven.core.protection import ServiceHealth, assess, service_health
from haven.core.service import Condition, HostLiveness, ServiceView
from haven.model.service import GuestHealth, MemberFacts, ServicePhase, ServiceSpec, ServiceState
from haven.model.spec import DesiredState
from haven.model.state import HostState, VmState

from .test_protection import host, view, vm

HOST_OF = {"db1": "h1", "db2": "h2"}
LEASES = {"h1": 11, "h2": 12}
SPEC = ServiceSpec(name="db", members=("db1", "db2"), start=("db", "start"), stop=("db", "stop"),
                   check=("db", "check"), floating_ip="10.0.9.10/24")


def health(name: str = "db", phase: ServicePhase | None = ServicePhase.RUNNING, active: str | None = "db1",
           wanted: bool = True, reason: str = "", **conditions: Condition) -> ServiceHealth:
    return ServiceHealth(name=name, wanted=wanted, phase=phase, active=active, reason=reason,
                         conditions={"db1": Condition.HEALTHY, "db2": Condition.HEALTHY, **conditions})


def cluster(*vms: object) -> object:
    return view([host("h1"), host("h2"), host("h3")], [vm("db1", "h1"), vm("db2", "h2"), *vms])  # type: ignore[list-item]


def test_content_counts_the_services_with_a_healthy_standby() -> None:
    p = assess(cluster(vm("web", "h3")), [health()])
    assert (p.level, p.mood) == ("protected", "content")
    # db1 and db2 are members, not HA VMs: only web is counted as one.
    assert p.reason == "all 1 HA VMs run; the cluster survives 1 host failure; 1 service runs with a healthy standby"


def test_ill_when_a_service_is_down_with_the_managers_reason() -> None:
    p = assess(cluster(), [health(phase=ServicePhase.DOWN, active=None, reason="no healthy member (db1 QEMU gone)")])
    assert (p.level, p.mood) == ("down", "ill")
    assert p.reason == "service db is down: no healthy member (db1 QEMU gone)"


def test_ill_when_a_wanted_service_was_never_started() -> None:
    p = assess(cluster(), [health(phase=None, active=None)])
    assert p.mood == "ill" and p.reason == "service db has not been started yet"


def test_a_service_meant_to_be_stopped_is_neither_ill_nor_counted() -> None:
    p = assess(cluster(), [health(phase=ServicePhase.STOPPED, active=None, wanted=False)])
    assert p.mood == "content" and p.reason == "no HA VMs to protect"


def test_a_failover_in_progress_is_not_down() -> None:
    p = assess(cluster(), [health(phase=ServicePhase.MOVING, active="db2", db1=Condition.QEMU_GONE)])
    assert p.mood == "worried"  # moving to db2, and db1 is no standby now
    assert p.reason == "service db has no healthy standby (db1 QEMU gone)"


def test_worried_when_the_standby_is_not_healthy() -> None:
    p = assess(cluster(), [health(db2=Condition.HOST_LOST)])
    assert (p.level, p.mood) == ("degraded", "worried")
    assert p.reason == "service db has no healthy standby (db2 host lost)"


def test_a_booting_standby_is_no_standby_yet() -> None:
    p = assess(cluster(), [health(db2=Condition.BOOTING)])
    assert p.mood == "worried" and "db2 booting" in p.reason


def test_a_member_down_on_its_lost_host_is_not_an_ill_ha_vm() -> None:
    """The member cannot restart elsewhere (it is pinned); the service moved on: worried, not ill."""
    v = view([host("h1"), host("h2", alive=False, state=HostState.LOST)],
             [vm("db1", "h1"), vm("db2", "h2", state=VmState.RECOVERING)])
    p = assess(v, [health(db2=Condition.HOST_LOST)])
    assert p.mood == "worried"
    # Without the service, the same VM is an HA VM that is down.
    assert assess(v).mood == "ill"


def test_vm_and_service_reasons_are_both_given() -> None:
    p = assess(cluster(vm("web", None, state=VmState.ERROR)),
               [health(phase=ServicePhase.DOWN, active=None, reason="no healthy member")])
    assert p.mood == "ill"
    assert p.reason.startswith("HA VM web (error) is not running")
    assert p.reason.endswith("; service db is down: no healthy member")


def test_ill_outranks_worried_across_services() -> None:
    p = assess(cluster(), [health("a", db2=Condition.HOST_LOST),
                           health("b", phase=ServicePhase.DOWN, active=None)])
    assert p.mood == "ill" and p.reason == "service b is down"


def test_many_lonely_services_are_summed_up() -> None:
    p = assess(cluster(), [health(name, db2=Condition.BOOTING) for name in ("a", "b", "c", "d")])
    assert p.reason.count("has no healthy standby") == 3 and p.reason.endswith("; and 1 more")


def _facts(member: str, **flags: object) -> MemberFacts:
    host = HOST_OF[member]
    return MemberFacts.model_validate({"service": "db", "member": member, "host": host, "lease": LEASES[host],
                                       "generation": 1, "qemu": True, "boot": 1, **flags})


def test_service_health_judges_members_as_the_manager_does() -> None:
    hosts = {h: HostLiveness(HostState.ONLINE, lease) for h, lease in LEASES.items()}
    state = ServiceState(service="db", phase=ServicePhase.RUNNING, active="db1", generation=1)
    facts = {"db1": _facts("db1", guest=GuestHealth.ANSWERING), "db2": _facts("db2", guest=GuestHealth.SILENT)}
    h = service_health(ServiceView(SPEC, state, facts), hosts, HOST_OF)
    assert h.conditions == {"db1": Condition.HEALTHY, "db2": Condition.GUEST_SILENT}
    assert (h.active, h.standbys, h.down) == ("db1", (), False)
    # A report under an older lease of its host proves nothing: no report.
    hosts["h2"] = HostLiveness(HostState.ONLINE, 99)
    facts["db2"] = _facts("db2", guest=GuestHealth.ANSWERING)
    assert service_health(ServiceView(SPEC, state, facts), hosts, HOST_OF).conditions["db2"] is Condition.NO_REPORT


def test_service_health_before_the_managers_first_decision() -> None:
    hosts = {h: HostLiveness(HostState.ONLINE, lease) for h, lease in LEASES.items()}
    h = service_health(ServiceView(SPEC), hosts, HOST_OF)
    assert (h.phase, h.active, h.down) == (None, None, True)
    stopped = SPEC.model_copy(update={"desired": DesiredState.STOPPED})
    assert service_health(ServiceView(stopped), hosts, HOST_OF).down is False
