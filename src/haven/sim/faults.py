"""The fault language: one line per fault or operator command.

    power off H | power on H              a power cut / the host boots again
    shutdown H | reboot H [S]             a clean shutdown / reboot (back S seconds after it went,
                                          default 10) under the cluster's shutdown_policy
    cut H from store | cut H from H2      lose the store, or one peer (migration traffic)
    cut-link H H2 | heal-link H H2        the two hosts' direct link (a replicated pair's) goes / comes
                                          back; each keeps its path to the store (the witness)
    partition H1 H2 | H3 store            split the network into groups ("store" is a member)
    heal H | heal all                     undo cuts and partitions (H rejoins the store's side)
    store down | store up                 the whole store is out (etcd renews leases on return)
    hang H | unhang H                     the daemon stops (SIGSTOP) and continues
    restart H                             the daemon restarts; its VMs keep running
    slow renew H by S | normal renew H    lease renewals come S seconds late
    fence fails H | fence works H         H's power-fencing device stops confirming / works again
    skew H RATE                           H's clock runs at RATE (1.0 = true)
    crash VM | crash vm VM                the guest dies where it runs (its QEMU exits)
    fail start VM [N]                     its next N starts fail (default 1)
    hang guest VM | unhang guest VM       the VM's guest OS hangs: its guest agent stops answering
    fail check S on VM | pass check S on VM   service S's check command fails / succeeds in VM
    start VM | stop VM | acknowledge VM   operator: desired state, clear an error
    migrate VM live|quick|cold [to H]     operator: move it (default: the best host)
    promote VM to H                       operator: start VM from its copy on H, accepting lost writes
    drain H | resume H                    operator: maintenance on / off
    start service S | stop service S      operator: a service's desired state
    move service S [to VM]                operator: move a service (default: the best other member)
"""
from __future__ import annotations

from collections.abc import Callable

from haven.core.events import Event, EventKind
from haven.model.spec import DesiredState, MigrationKind
from haven.model.state import RequestAction
from haven.ports.store import StoreError
from haven.runtime import intents
from haven.sim.cluster import REBOOT_S, SimCluster, SimHost
from haven.sim.world import STORE

# The defaults (TTL 2, margin 0.5, grace 0.3) are safe while (2 - 0.5) / rate < 2 + 0.3, i.e. for a
# host clock running at 65 % of true speed or faster; the language stops a little above that.
MIN_CLOCK_RATE = 0.7


class FaultError(ValueError):
    """A fault line could not be understood; the message says what is allowed."""


def apply_fault(cluster: SimCluster, line: str) -> None:
    words = line.split()
    if not words:
        raise FaultError("empty fault line")
    handler = _HANDLERS.get(words[0])
    if handler is None:
        raise FaultError(f"unknown fault {words[0]!r}; known: {', '.join(sorted(_HANDLERS))}")
    operator = words[0] in _OPERATOR
    kind = EventKind.OPERATOR if operator else EventKind.FAULT
    cluster.log(Event(cluster.now, kind.value, kind, text=line))
    try:
        handler(cluster, words[1:])
    except (StoreError, intents.IntentConflict) as error:
        if not operator:
            raise
        cluster.log(Event(cluster.now, "operator", EventKind.COMMAND_FAILED, reason=str(error)))


def _host(cluster: SimCluster, name: str) -> SimHost:
    if name not in cluster.hosts:
        raise FaultError(f"unknown host {name!r}; hosts: {', '.join(cluster.hosts)}")
    return cluster.hosts[name]


def _vm(cluster: SimCluster, name: str) -> str:
    if name not in {vm.name for vm in cluster.config.vms}:
        raise FaultError(f"unknown vm {name!r}")
    return name


def _expect(args: list[str], count: int, usage: str) -> None:
    if len(args) != count:
        raise FaultError(f"usage: {usage}")


def _power(cluster: SimCluster, args: list[str]) -> None:
    _expect(args, 2, "power on|off HOST")
    host = _host(cluster, args[1])
    if args[0] == "off":
        host.power_off()
    elif args[0] == "on":
        host.power_on()
    else:
        raise FaultError("usage: power on|off HOST")


def _shutdown(cluster: SimCluster, args: list[str]) -> None:
    _expect(args, 1, "shutdown HOST")
    _host(cluster, args[0]).leave(reboot=False)


def _reboot(cluster: SimCluster, args: list[str]) -> None:
    if len(args) not in (1, 2):
        raise FaultError("usage: reboot HOST [SECONDS]")
    host = _host(cluster, args[0])
    down = _number(args[1]) if len(args) == 2 else REBOOT_S
    if down < 0:
        raise FaultError("reboot SECONDS must not be negative")
    host.leave(reboot=True, down_s=down)


def _cut(cluster: SimCluster, args: list[str]) -> None:
    if len(args) != 3 or args[1] != "from":
        raise FaultError("usage: cut HOST from store|HOST")
    host = _host(cluster, args[0]).name
    net = cluster.world.network
    if args[2] == STORE:
        net.cut_from_store.add(host)
    else:
        net.cut_pairs.add(frozenset((host, _host(cluster, args[2]).name)))


def _link(cut: bool) -> Callable[[SimCluster, list[str]], None]:
    """`cut-link A B` is `cut A from B`; `heal-link A B` undoes that cut alone (`heal A` undoes
    all of A's)."""
    def handler(cluster: SimCluster, args: list[str]) -> None:
        _expect(args, 2, f"{'cut' if cut else 'heal'}-link HOST HOST")
        pair = frozenset((_host(cluster, args[0]).name, _host(cluster, args[1]).name))
        if len(pair) != 2:
            raise FaultError(f"usage: {'cut' if cut else 'heal'}-link HOST HOST (two different hosts)")
        pairs = cluster.world.network.cut_pairs
        (pairs.add if cut else pairs.discard)(pair)
    return handler


def _partition(cluster: SimCluster, args: list[str]) -> None:
    groups = [group.split() for group in " ".join(args).split("|")]
    if len(groups) < 2 or any(not g for g in groups):
        raise FaultError("usage: partition H1 H2 | H3 store")
    for group in groups:
        for name in group:
            if name != STORE:
                _host(cluster, name)
    cluster.world.network.groups = [frozenset(g) for g in groups]


def _heal(cluster: SimCluster, args: list[str]) -> None:
    _expect(args, 1, "heal HOST|all")
    cluster.world.network.heal(None if args[0] == "all" else _host(cluster, args[0]).name)


def _store(cluster: SimCluster, args: list[str]) -> None:
    _expect(args, 1, "store down|up")
    if args[0] == "down":
        cluster.world.network.store_down = True
    elif args[0] == "up":
        cluster.world.network.store_down = False
        cluster.store.restart_leases(cluster.now)  # as etcd does after an outage
    else:
        raise FaultError("usage: store down|up")


def _hang(hung: bool) -> Callable[[SimCluster, list[str]], None]:
    def handler(cluster: SimCluster, args: list[str]) -> None:
        if args[:1] == ["guest"]:
            _expect(args, 2, "hang|unhang guest VM")
            guests = cluster.world.hung_guests
            (guests.add if hung else guests.discard)(_vm(cluster, args[1]))
            return
        _expect(args, 1, "hang|unhang HOST")
        host = _host(cluster, args[0])
        host.hung = hung
        if not hung:
            host.wake_agent()
            host.wake_manager()
    return handler


def _restart(cluster: SimCluster, args: list[str]) -> None:
    _expect(args, 1, "restart HOST")
    _host(cluster, args[0]).restart_daemon()


def _renew(cluster: SimCluster, args: list[str]) -> None:
    if len(args) != 4 or args[0] != "renew" or args[2] != "by":
        raise FaultError("usage: slow renew HOST by SECONDS")
    _host(cluster, args[1]).renew_delay = _number(args[3])


def _normal(cluster: SimCluster, args: list[str]) -> None:
    if len(args) != 2 or args[0] != "renew":
        raise FaultError("usage: normal renew HOST")
    _host(cluster, args[1]).renew_delay = 0.0


def _skew(cluster: SimCluster, args: list[str]) -> None:
    _expect(args, 2, "skew HOST RATE")
    rate = _number(args[1])
    if not MIN_CLOCK_RATE <= rate <= 2.0:
        raise FaultError(f"skew RATE must be between {MIN_CLOCK_RATE} and 2.0: haven's timing tolerates a host "
                         f"clock that runs slow only while (TTL - margin) / rate < TTL + fence_grace")
    _host(cluster, args[0]).clock.set_rate(rate)


def _fence(cluster: SimCluster, args: list[str]) -> None:
    if len(args) != 2 or args[0] not in ("fails", "works"):
        raise FaultError("usage: fence fails|works HOST")
    host = _host(cluster, args[1]).name
    fencer = cluster.fencer
    if host not in fencer.devices:
        raise FaultError(f"host {host} has no fencing device (the scenario's fence_devices)")
    if args[0] == "fails":
        fencer.failing.add(host)
    else:
        fencer.failing.discard(host)


def _crash(cluster: SimCluster, args: list[str]) -> None:
    if len(args) == 2 and args[0] == "vm":
        args = args[1:]
    _expect(args, 1, "crash [vm] VM")
    name = _vm(cluster, args[0])
    for hv in cluster.world.hypervisors.values():
        hv.crash(name)


def _service(cluster: SimCluster, name: str) -> str:
    if name not in {svc.name for svc in cluster.config.services}:
        raise FaultError(f"unknown service {name!r}")
    return name


def _check(failing: bool) -> Callable[[SimCluster, list[str]], None]:
    def handler(cluster: SimCluster, args: list[str]) -> None:
        if len(args) != 4 or args[0] != "check" or args[2] != "on":
            raise FaultError("usage: fail|pass check SERVICE on VM")
        key = (_service(cluster, args[1]), _vm(cluster, args[3]))
        checks = cluster.world.failing_checks
        (checks.add if failing else checks.discard)(key)
    return handler


def _fail(cluster: SimCluster, args: list[str]) -> None:
    if args[:1] == ["check"]:
        _check(True)(cluster, args)
        return
    if len(args) not in (2, 3) or args[0] != "start":
        raise FaultError("usage: fail start VM [COUNT] | fail check SERVICE on VM")
    cluster.world.start_failures[_vm(cluster, args[1])] += int(_number(args[2])) if len(args) == 3 else 1


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise FaultError(f"{text!r} is not a number") from None


def _desired(desired: DesiredState) -> Callable[[SimCluster, list[str]], None]:
    def handler(cluster: SimCluster, args: list[str]) -> None:
        if args[:1] == ["service"]:
            _expect(args, 2, f"{'start' if desired is DesiredState.RUNNING else 'stop'} service SERVICE")
            intents.set_service_desired(cluster.operator, cluster.layout, _service(cluster, args[1]), desired)
            return
        _expect(args, 1, f"{'start' if desired is DesiredState.RUNNING else 'stop'} VM")
        intents.set_desired(cluster.operator, cluster.layout, _vm(cluster, args[0]), desired)
    return handler


def _acknowledge(cluster: SimCluster, args: list[str]) -> None:
    _expect(args, 1, "acknowledge VM")
    intents.request(cluster.operator, cluster.layout, _vm(cluster, args[0]), RequestAction.ACKNOWLEDGE,
                    request_id=cluster.next_request_id())


def _migrate(cluster: SimCluster, args: list[str]) -> None:
    usage = "migrate VM live|quick|cold [to HOST]"
    if len(args) not in (2, 4) or (len(args) == 4 and args[2] != "to"):
        raise FaultError(f"usage: {usage}")
    try:
        kind = MigrationKind(args[1])
    except ValueError:
        raise FaultError(f"usage: {usage}") from None
    target = _host(cluster, args[3]).name if len(args) == 4 else None
    intents.request(cluster.operator, cluster.layout, _vm(cluster, args[0]), RequestAction.MIGRATE, kind,
                    target, request_id=cluster.next_request_id())


def _promote(cluster: SimCluster, args: list[str]) -> None:
    if len(args) != 3 or args[1] != "to":
        raise FaultError("usage: promote VM to HOST")
    intents.request(cluster.operator, cluster.layout, _vm(cluster, args[0]), RequestAction.PROMOTE,
                    target=_host(cluster, args[2]).name, request_id=cluster.next_request_id())


def _move(cluster: SimCluster, args: list[str]) -> None:
    usage = "move service SERVICE [to VM]"
    if len(args) not in (2, 4) or args[0] != "service" or (len(args) == 4 and args[2] != "to"):
        raise FaultError(f"usage: {usage}")
    target = _vm(cluster, args[3]) if len(args) == 4 else None
    intents.move_service(cluster.operator, cluster.layout, _service(cluster, args[1]), target,
                         request_id=cluster.next_request_id())


def _maintenance(on: bool) -> Callable[[SimCluster, list[str]], None]:
    def handler(cluster: SimCluster, args: list[str]) -> None:
        _expect(args, 1, f"{'drain' if on else 'resume'} HOST")
        intents.set_maintenance(cluster.operator, cluster.layout, _host(cluster, args[0]).name, on,
                                request_id=cluster.next_request_id())
    return handler


_HANDLERS: dict[str, Callable[[SimCluster, list[str]], None]] = {
    "power": _power, "shutdown": _shutdown, "reboot": _reboot,
    "cut": _cut, "partition": _partition, "heal": _heal, "store": _store,
    "cut-link": _link(True), "heal-link": _link(False),
    "hang": _hang(True), "unhang": _hang(False), "restart": _restart, "slow": _renew, "normal": _normal, "skew": _skew,
    "crash": _crash, "fail": _fail, "pass": _check(False), "fence": _fence, "move": _move, "promote": _promote,
    "start": _desired(DesiredState.RUNNING), "stop": _desired(DesiredState.STOPPED),
    "acknowledge": _acknowledge, "migrate": _migrate, "drain": _maintenance(True),
    "resume": _maintenance(False),
}
_OPERATOR = {"start", "stop", "acknowledge", "migrate", "drain", "resume", "move"}
