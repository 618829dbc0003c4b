"""The lab: a real haven cluster on one machine.

One network namespace per host (management leg + VM bridge), a client namespace on the VM network,
a 3-member etcd on the management bridge, a shared storage directory, and per host a real
`haven node run` daemon plus its watchdog process, running real QEMU guests built from Debian
packages. Everything it starts or creates is recorded and removed by `down()`, also after a
failure (`with Lab(...) as lab:`).
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from haven.daemon.config import ApiConfig, GuestConfig, NodeConfig, ShutdownPolicy
from haven.daemon.watchdog import BOOT_ID_ENV, qemu_pids
from haven.drivers.etcd_store import EtcdStore
from haven.drivers.qmp import QmpClient
from haven.lab import pair
from haven.lab.bmc import Bmc
from haven.lab.etcd import EtcdCluster
from haven.lab.guest import SERVICE_PORT, GuestImage, build_guest
from haven.lab.netns import LabNetwork, run_in
from haven.lab.panel import PowerPanel
from haven.model.fencing import FencingConfig
from haven.model.service import ServicePhase
from haven.model.spec import Disk, HostSpec, MigrationKind, Nic, RestartPolicy, ServiceSpec, Settings, VmSpec
from haven.model.state import HostState, Placement, RequestAction, VmState
from haven.runtime import intents
from haven.runtime.layout import Layout, Snapshot, read_snapshot

DEFAULT_ROOT = Path("/var/lib/haven-lab")
CLUSTER = "lab"
API_PORT = 8470
MEMBER_SLOTS = 40  # VM network address slots: HA VMs from 0, service members from here, floating IPs
FLOATING_SLOTS = 80
BMC_PORT = 6230  # + the host's index: each host's BMC on the management gateway
# The fast timing profile (docs/DESIGN.md section 4): a 1 s lease on an etcd tuned to allow it
# (its shortest lease is about 1.5 election timeouts), store calls that give up sooner, and fast
# fencing. Soaked under CPU load by `bench/lab_bench.py --only load --profile fast`.
FAST_SETTINGS = {"lease_ttl_s": 1.0, "self_fence_margin_s": 0.3, "renew_interval_s": 0.2, "fence_grace_s": 0.2,
                 "heartbeat_timeout_s": 0.3}
FAST_ETCD_MS = (50, 500)  # heartbeat interval, election timeout
FAST_STORE_TIMEOUT_S = 0.2
ADMIN_TOKEN = "lab-admin-token"
READ_TOKEN = "lab-read-token"


class LabError(RuntimeError):
    """The lab could not do what was asked; the message says why."""


@dataclass
class LabHost:
    name: str
    address: str
    namespace: str
    run_dir: Path
    config_path: Path
    daemon: subprocess.Popen[bytes] | None = None
    watchdog: subprocess.Popen[bytes] | None = None
    boot_id: str = ""  # names this power-on: the lab's hosts share one kernel (and its boot id)
    powered: bool = False  # what its BMC reports: off after a power cut until powered on again


@dataclass
class Lab:
    hosts: int = 3
    vms: int = 3
    root: Path = DEFAULT_ROOT
    settings: dict[str, Any] = field(default_factory=dict)
    memory_mib: int = 128
    shutdown: ShutdownPolicy = ShutdownPolicy.STOP
    services: int = 0  # two-member guest-cluster services of the demo application (`add_service`)
    # Every VM's; a benchmark that kills them every few seconds raises it.
    restart: RestartPolicy = field(default_factory=RestartPolicy)
    pair: bool = False  # two hosts, a replicated pool and a witness instead of shared storage (lab.pair)
    # A BMC per host (ipmi_sim in the root namespace, on the management network) whose chassis
    # power is the lab's power cut and power-on, and every node's config naming them as fence
    # devices (fence_ipmilan): power fencing as on real servers.
    fencing: bool = False
    fast: bool = False  # the fast timing profile (FAST_SETTINGS over `settings`, a tuned etcd); needs fencing

    def __post_init__(self) -> None:
        self.net: LabNetwork | None = None
        self.etcd: EtcdCluster | None = None
        self.store: EtcdStore | None = None
        self.layout = Layout(CLUSTER)
        self.members: dict[str, LabHost] = {}
        self.vm_specs: dict[str, VmSpec] = {}
        self.service_specs: dict[str, ServiceSpec] = {}
        self.bmcs: dict[str, Bmc] = {}
        self.panel: PowerPanel | None = None
        self.power_lock = threading.RLock()  # a BMC switches power from the panel's thread

    # --- lifecycle ---

    def __enter__(self) -> Lab:
        try:
            self.up()
        except BaseException:
            self.down()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()

    def up(self) -> None:
        if os.geteuid() != 0:
            raise LabError("the lab needs root (network namespaces, taps, QEMU)")
        for binary in ("qemu-system-x86_64", "etcd", "ip"):
            if shutil.which(binary) is None:
                raise LabError(f"{binary} is not installed: run scripts/install.sh")
        shutil.rmtree(self.root / "run", ignore_errors=True)
        (self.root / "shared").mkdir(parents=True, exist_ok=True)
        guest = build_guest()
        self.net = LabNetwork()
        self.client = self.net.add_client()
        if self.pair:
            self.hosts = len(pair.PAIR_HOSTS)
            self.etcd = EtcdCluster(self.root / "run" / "etcd", sites=pair.etcd_sites(self.net))
        else:
            heartbeat_ms, election_ms = FAST_ETCD_MS if self.fast else (100, 1000)
            self.etcd = EtcdCluster(self.root / "run" / "etcd", members=3, host=self.net.mgmt_gateway,
                                    heartbeat_ms=heartbeat_ms, election_ms=election_ms)
        self.etcd.start()
        self.store = EtcdStore(self.etcd.endpoints, timeout=1.0)
        settings = Settings(**(FAST_SETTINGS | self.settings if self.fast else self.settings))
        self.store.put(self.layout.config(), settings.model_dump_json())
        if self.pair:
            self.store.put(self.layout.pool(pair.POOL.name), pair.POOL.model_dump_json())
        if self.fencing:
            self._start_bmcs([f"h{i + 1}" for i in range(self.hosts)])
        for i in range(self.hosts):
            self._add_host(f"h{i + 1}", guest)
        for name in self.members:
            self.start_daemon(name)
        self.wait(lambda snap: snap.alive >= set(self.members) and snap.manager is not None, 30,
                  "every host up and a manager elected")
        for k in range(self.vms):
            self.add_vm(f"vm{k + 1}", k, priority=3 - k % 3)
        for i in range(self.services):
            self.add_service(i)
        self.wait_all_running(90)
        if self.services:
            self.wait(lambda snap: all((st := snap.service_states.get(name)) and st.phase is ServicePhase.RUNNING
                                       for name in self.service_specs), 90, "every service running")

    def _add_host(self, name: str, guest: GuestImage) -> None:
        assert self.net is not None and self.etcd is not None
        host_net = self.net.add_host(name)
        run_dir = self.root / "run" / name
        run_dir.mkdir(parents=True, exist_ok=True)
        pool = pair.POOL.name if self.pair else "shared"
        spec = HostSpec(name=name, address=host_net.mgmt_address, vcpus=2, memory_mib=2048, pools=(pool,))
        index = len(self.members)
        config = NodeConfig(
            cluster=CLUSTER, etcd=self.etcd.endpoints, host=spec,
            pools={pool: run_dir / "pool" if self.pair else self.root / "shared"},
            run_dir=run_dir, watchdog_file=run_dir / "watchdog.deadline", vm_bridge=host_net.bridge,
            guest=GuestConfig(kernel=Path(guest.kernel), initrd=Path(guest.initrd), ready_marker=guest.ready_marker,
                              disk_filesystem=guest.disk_filesystem), accel="auto", shutdown=self.shutdown,
            image_locking=False, store_timeout_s=FAST_STORE_TIMEOUT_S if self.fast else 0.5,
            fencing=FencingConfig(devices={h: bmc.fence_device() for h, bmc in self.bmcs.items()},
                                  monitor_interval_s=5.0) if self.bmcs else None,
            api=ApiConfig(listen=host_net.mgmt_address, port=API_PORT, admin_token=ADMIN_TOKEN,
                          read_token=READ_TOKEN) if index == 0 else None)
        config_path = run_dir / "node.yaml"
        config_path.write_text(yaml.safe_dump(json.loads(config.model_dump_json())))
        self.members[name] = LabHost(name, host_net.mgmt_address, host_net.namespace, run_dir, config_path)

    def _start_bmcs(self, names: list[str]) -> None:
        """The power panel, then a BMC per host whose chassis commands go through it."""
        assert self.net is not None
        if self.pair:
            raise LabError("the pair lab has no BMCs yet: fencing=True needs the shared-pool lab")
        self.panel = PowerPanel(self.root / "run" / "panel.sock", off=self.crash, on=self.power_on,
                                is_on=lambda h: h in self.members and self.members[h].powered,
                                hosts=lambda: names)  # off until the lab boots it
        self.panel.start()
        for index, name in enumerate(names):
            bmc = Bmc(name, self.root / "run", self.net.mgmt_gateway, BMC_PORT + index,
                      power_off=self.panel.command("off", name), power_on=self.panel.command("on", name),
                      power_status=self.panel.command("status", name))
            self.bmcs[name] = bmc
            bmc.start()

    def add_vm(self, name: str, k: int, priority: int = 2, memory_mib: int | None = None,
               preferred: str | None = None) -> VmSpec:
        """HA VM `name` with address slot `k`; `preferred`: pinned to that host (a service member)."""
        assert self.net is not None and self.store is not None
        pinned: dict[str, Any] = {"preferred_hosts": (preferred,), "restricted": True} if preferred else {}
        spec = VmSpec(name=name, vcpus=1, memory_mib=memory_mib or self.memory_mib, priority=priority, **pinned,
                      restart=self.restart,
                      disks=(Disk(pool=pair.POOL.name, size_mib=64, file=f"{name}-0.raw") if self.pair
                             else Disk(pool="shared", size_mib=64),),
                      nics=(Nic(mac=f"52:54:00:4c:{self.net.slot:02x}:{k + 1:02x}"),),
                      kernel_args=f"haven.ip={self.net.vm_cidr(k)} haven.name={name}")
        self.store.put(self.layout.vm_spec(name), spec.model_dump_json())
        self.vm_specs[name] = spec
        return spec

    def add_service(self, i: int) -> ServiceSpec:
        """Service `svc<i+1>`: the guest's demo application (`lab.guest.SERVICE`) on two members
        pinned to consecutive hosts, a floating address on the VM network and a data disk on the
        shared pool (haven creates it at the first start)."""
        assert self.net is not None and self.store is not None
        hosts = sorted(self.members)
        name = f"svc{i + 1}"
        members = []
        for j, suffix in enumerate("ab"):
            member = f"{name}{suffix}"
            k = MEMBER_SLOTS + 2 * i + j
            self.add_vm(member, k, memory_mib=self.memory_mib, preferred=hosts[(i + j) % len(hosts)])
            members.append(member)
        spec = ServiceSpec(name=name, members=tuple(members), start=("haven-demo-service", "start", "/srv/data"),
                           stop=("haven-demo-service", "stop"), check=("haven-demo-service", "check"),
                           floating_ip=self.net.vm_cidr(FLOATING_SLOTS + i), data_disk=Disk(pool="shared", size_mib=16),
                           check_interval_s=1.0, failure_threshold=2)
        self.store.put(self.layout.service_spec(name), spec.model_dump_json())
        self.service_specs[name] = spec
        return spec

    def start_daemon(self, host: str) -> None:
        member = self.members[host]
        booting = member.watchdog is None or member.watchdog.poll() is not None
        if booting:
            member.boot_id = uuid.uuid4().hex
            member.powered = True
        env = {**os.environ, BOOT_ID_ENV: member.boot_id}
        with open(member.run_dir / "daemon.log", "ab") as log:  # the child writes to its own copy
            member.daemon = subprocess.Popen(
                ["ip", "netns", "exec", member.namespace, sys.executable, "-m", "haven.cli.main", "node", "run",
                 "--config", str(member.config_path)], stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                env=env)
        if booting:
            with open(member.run_dir / "watchdog.log", "ab") as wlog:
                member.watchdog = subprocess.Popen(
                    [sys.executable, "-m", "haven.cli.main", "node", "watchdog", "--deadline-file",
                     str(member.run_dir / "watchdog.deadline"), "--run-dir", str(member.run_dir / "vms")],
                    stdout=wlog, stderr=subprocess.STDOUT, start_new_session=True, env=env)

    def down(self) -> None:
        """Remove every process, namespace, bridge and run file the lab made. Idempotent."""
        for bmc in self.bmcs.values():  # first: nothing switches a host on while the lab goes
            bmc.stop()
        self.bmcs.clear()
        if self.panel is not None:
            self.panel.stop()
            self.panel = None
        for member in self.members.values():
            for proc in (member.daemon, member.watchdog):
                if proc and proc.poll() is None:
                    proc.kill()
                    proc.wait(timeout=10)
            _kill(qemu_pids(member.run_dir / "vms"))
        if self.store:
            self.store.close()
        if self.etcd:
            self.etcd.stop()
        if self.net:
            self.net.teardown()
        shutil.rmtree(self.root / "run", ignore_errors=True)
        shutil.rmtree(self.root / "shared", ignore_errors=True)
        self.members.clear()
        self.net = self.etcd = self.store = None

    # --- faults ---

    def crash(self, host: str) -> None:
        """A power cut: the daemon, its watchdog and its QEMUs die at the same instant. (A host
        already off stays off: its BMC may cut the power of a host the lab crashed.)"""
        with self.power_lock:
            if self.members[host].powered:
                self._cut_power(host)

    def _cut_power(self, host: str) -> None:
        member = self.members[host]
        member.powered = False
        pids = [p.pid for p in (member.daemon, member.watchdog) if p and p.poll() is None]
        _kill(pids + qemu_pids(member.run_dir / "vms"))
        for proc in (member.daemon, member.watchdog):
            if proc:
                proc.wait(timeout=10)
        member.watchdog = None
        for ram in ("lease.json", "watchdog.deadline"):  # /run on a real host: gone after a power cut
            (member.run_dir / ram).unlink(missing_ok=True)
        if self.pair:  # its etcd member and the copies it served go too
            pair.kill_replica_servers(member.run_dir)
            assert self.etcd is not None
            self.etcd.kill_member(pair.member_index(host))

    def power_on(self, host: str) -> None:
        """Boot a crashed host again: a fresh daemon and watchdog (it takes a new lease). A host
        that is on with its daemon running stays as it is."""
        with self.power_lock:
            member = self.members[host]
            if member.powered and member.daemon is not None and member.daemon.poll() is None:
                return
            if self.pair:
                assert self.etcd is not None
                self.etcd.restart_member(pair.member_index(host), wait=False)
            self.start_daemon(host)

    def cut_link(self, a: str, b: str) -> None:
        """The pair's direct link goes; both hosts keep their path to the witness."""
        assert self.net is not None
        pair.set_link(self.net, a, b, up=False)

    def heal_link(self, a: str, b: str) -> None:
        assert self.net is not None
        pair.set_link(self.net, a, b, up=True)

    def copy_image(self, vm: str, host: str) -> Path:
        """The pair lab: `host`'s copy of the VM's disk."""
        return self.members[host].run_dir / "pool" / f"{vm}-0.raw"

    def witness(self, up: bool) -> None:
        """Stop or restart the witness's etcd member (the pair lab's third vote)."""
        assert self.etcd is not None and self.pair
        index = pair.member_index(pair.WITNESS)
        if up:
            self.etcd.restart_member(index)
        else:
            self.etcd.kill_member(index)

    def isolate(self, host: str) -> None:
        assert self.net is not None
        self.net.isolate(host, mgmt=True, vm=False)

    def heal(self, host: str) -> None:
        assert self.net is not None
        self.net.heal(host, mgmt=True, vm=True)

    def stop_agent(self, host: str) -> None:
        """SIGSTOP the daemon (a hung agent); its watchdog keeps running."""
        daemon = self.members[host].daemon
        assert daemon is not None
        os.killpg(daemon.pid, signal.SIGSTOP)

    def continue_agent(self, host: str) -> None:
        daemon = self.members[host].daemon
        assert daemon is not None
        os.killpg(daemon.pid, signal.SIGCONT)

    def restart_agent(self, host: str) -> None:
        """Restart the daemon, keeping its VMs: it resumes its lease and re-attaches to its QEMUs."""
        old = self.members[host].daemon
        assert old is not None
        self.start_daemon(host)  # the new daemon takes over from the old one (see NodeDaemon._take_over)
        old.wait(timeout=30)

    def hang_guest(self, vm: str) -> str:
        """Hang `vm`'s guest OS: its vCPUs stop (QMP `stop`), its QEMU lives on, and so nothing in the
        guest answers, the guest agent included. Returns the host it runs on."""
        return self._qmp_on(vm, "stop")

    def resume_guest(self, vm: str) -> str:
        return self._qmp_on(vm, "cont")

    def _qmp_on(self, vm: str, command: str) -> str:
        hosts = self.qemu_hosts(vm)
        if not hosts:
            raise LabError(f"{vm} runs on no lab host")
        with QmpClient(str(self.members[hosts[0]].run_dir / "vms" / vm / "qmp.sock")) as qmp:
            qmp.execute(command)
        return hosts[0]

    # --- looking at it ---

    def snapshot(self) -> Snapshot:
        assert self.store is not None
        return read_snapshot(self.store, self.layout, with_events=False)

    def wait(self, predicate: Callable[[Snapshot], object], timeout: float, what: str) -> Snapshot:
        deadline = time.monotonic() + timeout
        while True:
            try:
                snap = self.snapshot()
                if predicate(snap):
                    return snap
            except Exception:  # noqa: BLE001 - the store may be settling: try again until the deadline
                pass
            if time.monotonic() > deadline:
                raise LabError(f"timed out after {timeout:g} s waiting for {what}")
            time.sleep(0.1)

    def placement(self, vm: str) -> Placement | None:
        return self.snapshot().placements.get(vm)

    def placed_host(self, vm: str) -> str | None:
        """The host `vm` is placed on (None: placed nowhere right now); the VM must have a placement."""
        placement = self.placement(vm)
        if placement is None:
            raise LabError(f"{vm} has no placement")
        return placement.host

    def wait_all_online(self, timeout: float) -> None:
        """Every host holding its lease and online in the manager's records."""
        self.wait(lambda snap: snap.alive >= set(self.members)
                  and all(r.state is HostState.ONLINE for r in snap.records.values()), timeout, "every host online")

    def restore_hosts(self, timeout: float) -> None:
        """Undo every host fault a test may have left (isolation, power cut) and wait until every
        host is online again."""
        if self.pair:
            assert self.etcd is not None
            self.heal_link(*pair.PAIR_HOSTS)
            if not self.etcd.alive(pair.member_index(pair.WITNESS)):
                self.witness(up=True)
        for name, member in self.members.items():
            self.heal(name)
            if member.daemon is None or member.daemon.poll() is not None:
                self.power_on(name)
        self.wait_all_online(timeout)

    def spread_vms(self, timeout: float) -> None:
        """At least one VM on every host (live migrations from the most crowded): a crash of any
        host then has a VM to bring back. Needs as many HA VMs as hosts."""
        assert self.store is not None
        for host in sorted(self.members):
            placements = self.snapshot().placements
            if any(p.host == host for p in placements.values()):
                continue
            crowded = max(sorted(self.members), key=lambda h: sum(p.host == h for p in placements.values()))
            vm = next(v for v, p in sorted(placements.items()) if p.host == crowded and v in self.ha_vms)
            intents.request(self.store, self.layout, vm, RequestAction.MIGRATE, MigrationKind.LIVE, host)

            def moved(snap: Snapshot, vm: str = vm, host: str = host) -> bool:
                return (p := snap.placements[vm]).host == host and p.state is VmState.RUNNING

            self.wait(moved, timeout, f"{vm} moved to {host}")

    def wait_all_running(self, timeout: float) -> None:
        self.wait(lambda snap: all((p := snap.placements.get(vm)) and p.state is VmState.RUNNING
                                   for vm in self.vm_specs), timeout, "every VM running")

    def vm_address(self, vm: str) -> str:
        return self.vm_specs[vm].kernel_args.split("haven.ip=")[1].split("/")[0]

    @property
    def ha_vms(self) -> list[str]:
        """The HA VMs, sorted: every VM but the services' members (pinned to their hosts)."""
        members = {m for spec in self.service_specs.values() for m in spec.members}
        return sorted(vm for vm in self.vm_specs if vm not in members)

    def service_url(self, service: str) -> str:
        """The demo application's address: the service's floating IP."""
        return f"http://{self.service_specs[service].floating_ip.split('/')[0]}:{SERVICE_PORT}/"

    def data_image(self, service: str) -> Path:
        spec = self.service_specs[service]
        assert spec.data_file is not None
        return self.root / "shared" / spec.data_file

    def arp_answers(self, address: str, count: int = 3) -> set[str]:
        """The MAC addresses answering broadcast ARP probes for `address` from the client
        namespace: a floating IP raised in two guests at once answers from two."""
        assert self.net is not None
        proc = run_in(self.client.namespace, ["arping", "-b", "-c", str(count), "-w", str(count + 1), "-I", "eth0",
                                              address], timeout=count + 10)
        return {line.split("[")[1].split("]")[0].lower() for line in proc.stdout.splitlines() if "reply from" in line}

    def http(self, vm: str, timeout: float = 2.0) -> dict[str, Any] | None:
        """The guest's JSON answer, fetched from the client namespace, or None."""
        return self.http_get(f"http://{self.vm_address(vm)}/", timeout)

    def http_get(self, url: str, timeout: float = 2.0) -> dict[str, Any] | None:
        """A JSON answer from `url`, fetched from the client namespace, or None."""
        assert self.net is not None
        script = ("import sys,urllib.request;print(urllib.request.urlopen(sys.argv[1],timeout=float(sys.argv[2]))"
                  ".read().decode())")
        proc = run_in(self.client.namespace, [sys.executable, "-c", script, url, str(timeout)], timeout=timeout + 5)
        try:
            return json.loads(proc.stdout) if proc.returncode == 0 else None
        except ValueError:
            return None

    def wait_answer(self, vm: str, timeout: float, request_timeout: float = 0.5) -> dict[str, Any]:
        """The guest's first answer within `timeout` (one request at a time), or LabError."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            answer = self.http(vm, timeout=request_timeout)
            if answer:
                return answer
            time.sleep(0.05)
        raise LabError(f"{vm} did not answer within {timeout:g} s")

    def qemu_hosts(self, vm: str) -> list[str]:
        """Hosts whose process table holds a QEMU for `vm` (however paused it may be)."""
        hosts = []
        for name, member in self.members.items():
            pidfile = member.run_dir / "vms" / vm / "qemu.pid"
            if pidfile.exists() and qemu_pids(member.run_dir / "vms").count(_read_pid(pidfile)):
                hosts.append(name)
        return hosts


def _read_pid(path: Path) -> int:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return -1


def _kill(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
