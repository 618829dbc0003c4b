"""`haven lab up` keeps its lab in a detached supervisor process.

The `Lab` object owns processes that must outlive the `haven lab up` command (etcd members die with
the thread that started them), so `up` starts `haven lab supervise` in a new session. The
supervisor brings the lab up in its main thread, keeps it, serves fault commands over a unix
socket (one JSON line in, one out) and tears everything down on SIGTERM. It writes what it runs
to a state file, also while coming up, so that `down` can clean up after a supervisor that died:

    /run/haven-lab/lab.json   status, supervisor pid, slot, hosts (addresses, pids), etcd
                              (endpoints, pids), API URL and tokens, VM addresses
    /run/haven-lab/lab.sock   fault commands
    /var/lib/haven-lab/up/    the lab's root (run files, shared storage, supervisor.log)

Everything here runs as root; nothing here reaches beyond what the lab itself created (processes
are killed only if their command line names the lab's root).
"""
from __future__ import annotations

import contextlib
import json
import os
import queue
import shutil
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any

from haven.drivers.qmp import QmpError
from haven.lab.cluster import ADMIN_TOKEN, API_PORT, CLUSTER, DEFAULT_ROOT, READ_TOKEN, Lab, LabError

STATE_DIR = Path("/run/haven-lab")
STATE_FILE = STATE_DIR / "lab.json"
SOCKET_PATH = STATE_DIR / "lab.sock"
ROOT = DEFAULT_ROOT / "up"
LOG_NAME = "supervisor.log"
COMMANDS = ("crash", "isolate", "heal", "stop-agent", "cont-agent", "power-on", "ping")
GUEST_COMMANDS = ("hang-guest", "resume-guest")  # these name a VM, not a host
PAIR_COMMANDS = ("cut-link", "heal-link", "witness-down", "witness-up")  # a pair lab's (`up --pair`)
REPLY_TIMEOUT_S = 90.0


# --- state file ---------------------------------------------------------------------------------

def read_state() -> dict[str, Any] | None:
    try:
        return json.loads(STATE_FILE.read_text())
    except (OSError, ValueError):
        return None


def write_state(state: dict[str, Any]) -> None:
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    tmp = STATE_FILE.with_name(".lab.json.tmp")
    tmp.write_text(json.dumps(state, indent=1))
    os.replace(tmp, STATE_FILE)


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def pid_state(pid: int | None) -> str:
    """'running', 'stopped' (SIGSTOP), or 'down'."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            code = f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError, TypeError):
        return "down"
    return {"Z": "down", "X": "down", "T": "stopped", "t": "stopped"}.get(code, "running")


def supervisor_alive(state: dict[str, Any]) -> bool:
    pid = state.get("supervisor_pid")
    if not pid_alive(pid):
        return False
    try:
        return b"supervise" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def lab_state(lab: Lab, status: str, started: float, isolated: set[str], error: str = "") -> dict[str, Any]:
    """What `status`, the fault commands and `down` need to know about the running lab."""
    net, etcd = lab.net, lab.etcd
    hosts = {}
    for name, member in lab.members.items():
        hosts[name] = {
            "address": member.address, "namespace": member.namespace, "run_dir": str(member.run_dir),
            "daemon_pid": member.daemon.pid if member.daemon and member.daemon.poll() is None else None,
            "watchdog_pid": member.watchdog.pid if member.watchdog and member.watchdog.poll() is None else None,
            "isolated": name in isolated}
    etcd_pids = [m.proc.pid for m in getattr(etcd, "_members", []) if m.proc is not None] if etcd else []
    first = next(iter(lab.members.values()), None)
    return {
        "status": status, "error": error, "supervisor_pid": os.getpid(), "started": started,
        "updated": time.time(), "root": str(lab.root), "log": str(lab.root / LOG_NAME),
        "socket": str(SOCKET_PATH), "cluster": CLUSTER, "slot": net.slot if net else None,
        "client_namespace": lab.client.namespace if net and getattr(lab, "client", None) else None,
        "hosts": hosts,
        "etcd": {"endpoints": etcd.endpoints if etcd else [], "pids": etcd_pids},
        "api": {"url": f"http://{first.address}:{API_PORT}" if first else None,
                "host": first.name if first else None, "admin_token": ADMIN_TOKEN, "read_token": READ_TOKEN},
        "vms": {vm: {"address": lab.vm_address(vm), "mac": spec.nics[0].mac if spec.nics else None}
                for vm, spec in lab.vm_specs.items()},
        "services": {name: {"url": lab.service_url(name), "members": list(spec.members)}
                     for name, spec in lab.service_specs.items()},
        "pair": lab.pair,
    }


# --- the supervisor -----------------------------------------------------------------------------

class _Abort(BaseException):
    """SIGTERM while the lab is coming up."""


class Supervisor:
    def __init__(self, hosts: int, vms: int, root: Path = ROOT, memory_mib: int = 128, services: int = 0,
                 pair: bool = False, fencing: bool = False, fast: bool = False) -> None:
        self.lab = Lab(hosts=hosts, vms=vms, root=root, memory_mib=memory_mib, services=services, pair=pair,
                       fencing=fencing, fast=fast)
        self.started = time.time()
        self.stop = threading.Event()
        self.commands: queue.Queue[tuple[dict[str, Any], queue.Queue[dict[str, Any]]]] = queue.Queue()
        self.isolated: set[str] = set()
        self.status = "starting"
        self.coming_up = True

    def save(self, error: str = "") -> None:
        try:
            write_state(lab_state(self.lab, self.status, self.started, self.isolated, error))
        except Exception as exc:  # noqa: BLE001 - a half-built lab still deserves a state file
            print(f"supervisor: state file not written: {exc}", flush=True)

    def _on_signal(self, signum: int, frame: object) -> None:
        print(f"supervisor: signal {signum}: tearing the lab down", flush=True)
        self.stop.set()
        if self.coming_up:
            self.coming_up = False
            raise _Abort()

    def _record_while_coming_up(self) -> None:
        while self.coming_up:
            self.save()
            time.sleep(0.5)

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._on_signal)
        self.save()
        print(f"supervisor: pid {os.getpid()}: bringing up {self.lab.hosts} hosts and {self.lab.vms} VMs",
              flush=True)
        recorder = threading.Thread(target=self._record_while_coming_up, daemon=True)
        recorder.start()
        try:
            try:
                self.lab.up()
            finally:
                self.coming_up = False
                recorder.join(timeout=5)
        except BaseException as exc:  # noqa: BLE001 - report, clean up, exit
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            why = "interrupted" if isinstance(exc, _Abort) else f"{type(exc).__name__}: {exc}"
            print(f"supervisor: lab up failed: {why}", flush=True)
            self.status = "failed"
            self.save(error=why)
            self.lab.down()
            self.save(error=why)  # keep the failure for `up` to report; `down` removes the file
            return 1
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, lambda *_: self.stop.set())
        self.status = "up"
        self.save()
        print(f"supervisor: lab up in {time.time() - self.started:.1f} s", flush=True)
        server = self._listen()
        try:
            while not self.stop.is_set():
                try:
                    request, reply = self.commands.get(timeout=0.5)
                except queue.Empty:
                    continue
                reply.put(self._execute(request))
        finally:
            server.close()
            SOCKET_PATH.unlink(missing_ok=True)
            self.status = "stopping"
            self.save()
            print("supervisor: tearing down", flush=True)
            try:
                self.lab.down()
            finally:
                STATE_FILE.unlink(missing_ok=True)
                print("supervisor: lab down", flush=True)
        return 0

    # fault commands run in the main thread, one at a time

    def _execute(self, request: dict[str, Any]) -> dict[str, Any]:
        cmd, host = request.get("cmd"), request.get("host")
        if cmd == "ping":
            return {"ok": True}
        if cmd in GUEST_COMMANDS:
            return self._guest_command(str(cmd), str(host))
        if cmd in PAIR_COMMANDS:
            return self._pair_command(str(cmd))
        if cmd not in COMMANDS:
            return {"ok": False, "error": f"unknown command {cmd!r}"}
        if host not in self.lab.members:
            return {"ok": False, "error": f"unknown host {host!r} (hosts: {', '.join(self.lab.members)})"}
        member = self.lab.members[host]
        daemon_state = pid_state(member.daemon.pid) if member.daemon and member.daemon.poll() is None else "down"
        try:
            if cmd == "crash":
                if daemon_state == "down":
                    return {"ok": False, "error": f"{host} is already down (haven lab power-on {host})"}
                self.lab.crash(host)
                message = f"{host} crashed: daemon, watchdog and QEMUs killed"
            elif cmd == "power-on":
                if daemon_state != "down":
                    return {"ok": False, "error": f"{host} is already running"}
                self.lab.power_on(host)
                message = f"{host} powered on: a fresh daemon and watchdog"
            elif cmd == "isolate":
                self.lab.isolate(host)
                self.isolated.add(host)
                message = f"{host} isolated: management leg down (VM network kept)"
            elif cmd == "heal":
                self.lab.heal(host)
                self.isolated.discard(host)
                message = f"{host} healed: network legs up"
            elif cmd == "stop-agent":
                if daemon_state != "running":
                    return {"ok": False, "error": f"{host}'s daemon is {daemon_state}"}
                self.lab.stop_agent(host)
                message = f"{host}'s daemon stopped (SIGSTOP); its watchdog keeps running"
            else:  # cont-agent
                if daemon_state != "stopped":
                    return {"ok": False, "error": f"{host}'s daemon is {daemon_state}, not stopped"}
                self.lab.continue_agent(host)
                message = f"{host}'s daemon continued (SIGCONT)"
        except (LabError, OSError, AssertionError) as exc:
            return {"ok": False, "error": f"{cmd} {host} failed: {exc}"}
        finally:
            self.save()
        print(f"supervisor: {message}", flush=True)
        return {"ok": True, "message": message}

    def _guest_command(self, cmd: str, vm: str) -> dict[str, Any]:
        if vm not in self.lab.vm_specs:
            return {"ok": False, "error": f"unknown VM {vm!r} (VMs: {', '.join(sorted(self.lab.vm_specs))})"}
        try:
            if cmd == "hang-guest":
                message = f"{vm}'s guest hung on {self.lab.hang_guest(vm)}: vCPUs stopped, QEMU alive"
            else:
                message = f"{vm}'s guest resumed on {self.lab.resume_guest(vm)}"
        except (LabError, OSError, QmpError) as exc:
            return {"ok": False, "error": f"{cmd} {vm} failed: {exc}"}
        print(f"supervisor: {message}", flush=True)
        return {"ok": True, "message": message}

    def _pair_command(self, cmd: str) -> dict[str, Any]:
        lab = self.lab
        if not lab.pair:
            return {"ok": False, "error": f"{cmd} needs a pair lab (`haven lab up --pair`)"}
        a, b = sorted(lab.members)
        try:
            if cmd in ("cut-link", "heal-link"):
                (lab.cut_link if cmd == "cut-link" else lab.heal_link)(a, b)
                message = (f"the link between {a} and {b} is cut (both still reach the witness)" if cmd == "cut-link"
                           else f"the link between {a} and {b} is back")
            else:
                lab.witness(up=cmd == "witness-up")
                message = "the witness's etcd member " + ("is back" if cmd == "witness-up" else "stopped")
        except (LabError, OSError, RuntimeError) as exc:
            return {"ok": False, "error": f"{cmd} failed: {exc}"}
        finally:
            self.save()
        print(f"supervisor: {message}", flush=True)
        return {"ok": True, "message": message}

    def _listen(self) -> socket.socket:
        SOCKET_PATH.unlink(missing_ok=True)
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(str(SOCKET_PATH))
        os.chmod(SOCKET_PATH, 0o600)
        server.listen(8)
        threading.Thread(target=self._serve, args=(server,), daemon=True).start()
        return server

    def _serve(self, server: socket.socket) -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(REPLY_TIMEOUT_S)
            try:
                data = b""
                while not data.endswith(b"\n"):
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                request = json.loads(data or b"{}")
                reply: queue.Queue[dict[str, Any]] = queue.Queue()
                self.commands.put((request, reply))
                answer = reply.get(timeout=REPLY_TIMEOUT_S)
            except (OSError, ValueError, queue.Empty) as exc:
                answer = {"ok": False, "error": f"bad request: {exc}"}
            with contextlib.suppress(OSError):
                conn.sendall(json.dumps(answer).encode() + b"\n")


def send_command(cmd: str, host: str | None = None, timeout: float = REPLY_TIMEOUT_S) -> dict[str, Any]:
    """Ask the running supervisor; raises OSError if it does not answer."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(timeout)
        conn.connect(str(SOCKET_PATH))
        conn.sendall(json.dumps({"cmd": cmd, "host": host}).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = conn.recv(4096)
            if not chunk:
                break
            data += chunk
    try:
        return json.loads(data)
    except ValueError as exc:
        raise OSError(f"no answer from the supervisor ({exc})") from None


# --- cleaning up, also after a dead supervisor ---------------------------------------------------

def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def lab_pids(root: Path) -> list[int]:
    """Every process whose command line names the lab's root (daemons, watchdogs, QEMUs, etcd)."""
    marker = str(root).encode() + b"/"
    me = os.getpid()
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != me and marker in _cmdline(int(entry.name)):
            pids.append(int(entry.name))
    return pids


def _kill_and_wait(pids: list[int], timeout: float = 5.0) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGCONT)  # a SIGSTOPped process dies on SIGKILL anyway; be sure
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(pid_alive(p) for p in pids):
        time.sleep(0.05)


def cleanup(state: dict[str, Any] | None, root: Path = ROOT, sweep: bool = True) -> list[str]:
    """Remove what a supervisor left behind: its processes (recorded pids whose command line still
    names the lab's root, and any other process naming it), its network slot (with `sweep`), run
    files. Returns what was done, for the user."""
    done: list[str] = []
    root = Path(state.get("root") or root) if state else root
    marker = str(root).encode()
    recorded: list[int] = []
    if state:
        for host in state.get("hosts", {}).values():
            recorded += [p for p in (host.get("daemon_pid"), host.get("watchdog_pid")) if p]
        recorded += state.get("etcd", {}).get("pids", [])
    victims = sorted({p for p in recorded if marker in _cmdline(p)} | set(lab_pids(root)))
    if victims:
        _kill_and_wait(victims)
        done.append(f"killed {len(victims)} leftover process(es)")
    slot = state.get("slot") if state and sweep else None
    if slot is not None:
        from haven.lab.netns import LabNetwork, LabNetworkError
        try:
            LabNetwork(slot=int(slot)).teardown()  # claiming the slot sweeps what is left in it
            done.append(f"swept network slot {slot}")
        except LabNetworkError as exc:
            if "no free lab slot" not in str(exc):  # else: another lab holds it now, so it is not ours
                done.append(f"network slot {slot} not swept: {exc}")
    for sub in ("run", "shared"):
        if (root / sub).exists():
            shutil.rmtree(root / sub, ignore_errors=True)
            done.append(f"removed {root / sub}")
    STATE_FILE.unlink(missing_ok=True)
    SOCKET_PATH.unlink(missing_ok=True)
    return done


def stop_supervisor(state: dict[str, Any], timeout: float = 90.0) -> bool:
    """SIGTERM the supervisor and wait for its teardown; SIGKILL if it hangs. True if it went by
    itself."""
    pid = state["supervisor_pid"]
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return True
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return True
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    return False
