"""The lab guest: a Debian cloud kernel plus a busybox initramfs, built from Debian packages only.

`build_guest()` downloads the kernel package that `linux-image-cloud-amd64` depends on
(`apt-get download`, `dpkg-deb -x`), takes its `vmlinuz` and virtio modules, and packs them with
`busybox-static` and an `/init` script into a gzipped newc initramfs. The result is cached under
`cache_dir/<kernel package version>-<content hash>/` so a second call returns at once (and works
without apt metadata as long as a build is cached).

What the guest does (all of it in `/init`, PID 1):

- loads the virtio modules in the order LAB-NOTES gives, plus `button` and `evdev` so that an ACPI
  power-button press (QMP `system_powerdown`) makes busybox `acpid` sync and power off cleanly;
- reads `haven.name=NAME`, `haven.ip=ADDR/PREFIX` and optionally `haven.gw=GW` from
  `/proc/cmdline` (the kernel has no `ip=` autoconfiguration), configures `eth0` and sends two
  gratuitous ARPs (so the VM bridge learns the MAC's new port after a cold boot elsewhere);
- mounts `/dev/vda` (ext4, see `make_disk`; a disk that is all zeros in its first 64 KiB is
  formatted as ext2 with busybox `mke2fs`, anything else unrecognised is left alone), increments
  `boot_count` on it, and every second writes `heartbeat` (`COUNTER UPTIME`, the counter continues
  across boots) and appends the same line plus `boot=B` to `heartbeat.log`, each followed by `sync`;
- serves HTTP on port 80 (busybox `httpd`): `GET /` (and `/cgi-bin/state`) returns
  `{"vm": NAME, "ram_counter": N, "boot_count": B, "heartbeat": H}`, where `ram_counter`
  increments on every request and lives in RAM (survives live and quick migration, resets on a
  cold boot), `boot_count` comes from the disk and `heartbeat` is the last counter written;
- answers ICMP echo (the guest kernel does, no user space involved) — the non-retrying blackout
  probe. Debian's busybox `nc` has no UDP mode and busybox offers no other UDP server, so there is
  no UDP echo; ICMP echo every 10 ms measures the same blackout (see `haven.lab.netns.IcmpProbe`);
- runs the QEMU guest agent (`qemu-ga` from Debian's `qemu-guest-agent`, with the libraries it
  links, copied as `ldd` resolves them) on the `org.qemu.guest_agent.0` port QEMU gives every VM:
  haven pings it to tell a hung guest OS and runs commands through it (guest-cluster services);
- prints `HAVEN-GUEST-READY name=NAME boot=B` on the serial console once HTTP is up, and
  `HAVEN-GUEST-POWEROFF` before an ACPI shutdown.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import lzma
import os
import shutil
import stat
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from haven.drivers.qemu_boot import DirectBoot, create_disk
from haven.drivers.qemu_cmdline import GUEST_AGENT_PORT

DEFAULT_CACHE_DIR = Path("/var/cache/haven/guest")
META_PACKAGE = "linux-image-cloud-amd64"
BUSYBOX = Path("/bin/busybox")  # Debian busybox-static
READY_MARKER = "HAVEN-GUEST-READY"
DISK_FILESYSTEM = "ext4"
HTTP_PORT = 80

# Load order from LAB-NOTES; button + evdev make the ACPI power button reach acpid.
MODULES = ("virtio_ring", "virtio", "virtio_pci_modern_dev", "virtio_pci_legacy_dev", "virtio_pci",
           "failover", "net_failover", "virtio_net", "virtio_blk", "virtio_console", "button", "evdev")
REQUIRED_MODULES = frozenset({"virtio_ring", "virtio", "virtio_pci", "virtio_net", "virtio_blk",
                              "virtio_console"})
# The QEMU guest agent and the one library it links that a host with QEMU installed lacks; the
# others (glib, libudev, libnuma, pcre2, libc) are copied from the host, as `ldd` resolves them.
AGENT_PACKAGES = ("qemu-guest-agent", "liburing2")
AGENT_BINARY = "usr/sbin/qemu-ga"

INIT = r"""#!/bin/busybox sh
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null
mkdir -p /run /tmp /mnt/disk
mount -t tmpfs run /run
exec </dev/console >/dev/console 2>&1
for m in @MODULES@; do
  [ -f /lib/modules/$m.ko ] && insmod /lib/modules/$m.ko
done
NAME=guest IP= GW=
for arg in $(cat /proc/cmdline); do
  case "$arg" in
    haven.name=*) NAME=${arg#haven.name=} ;;
    haven.ip=*) IP=${arg#haven.ip=} ;;
    haven.gw=*) GW=${arg#haven.gw=} ;;
  esac
done
echo "$NAME" > /run/name
hostname "$NAME"
ip link set lo up
i=0
while [ ! -e /sys/class/net/eth0 ] && [ $i -lt 100 ]; do usleep 50000; i=$((i+1)); done
if [ -e /sys/class/net/eth0 ]; then
  ip link set eth0 up
  if [ -n "$IP" ]; then
    ip addr add "$IP" dev eth0
    [ -n "$GW" ] && ip route add default via "$GW"
    (arping -U -c 2 -I eth0 "${IP%/*}" >/dev/null 2>&1 &)
  fi
fi
i=0
while [ ! -b /dev/vda ] && [ $i -lt 40 ]; do usleep 50000; i=$((i+1)); done
DISK=
if [ -b /dev/vda ]; then
  magic=$(dd if=/dev/vda bs=1 skip=1080 count=2 2>/dev/null | od -An -tx1 | tr -d ' \n')
  if [ "$magic" != "53ef" ]; then
    nz=$(dd if=/dev/vda bs=4096 count=16 2>/dev/null | tr -d '\000' | wc -c)
    if [ "$nz" = "0" ]; then echo "haven-guest: formatting empty /dev/vda"; mke2fs -q /dev/vda; fi
  fi
  mount /dev/vda /mnt/disk && DISK=/mnt/disk
fi
B=0
if [ -n "$DISK" ]; then
  B=$(cat $DISK/boot_count 2>/dev/null)
  B=$((${B:-0}+1))
  echo $B > $DISK/boot_count
  sync
fi
echo $B > /run/boot_count
echo 0 > /run/ram_counter
H=0
[ -n "$DISK" ] && H=$(cut -d' ' -f1 $DISK/heartbeat 2>/dev/null)
echo ${H:-0} > /run/heartbeat
(
  H=${H:-0}
  while :; do
    H=$((H+1))
    read up idle < /proc/uptime
    if [ -n "$DISK" ]; then
      echo "$H $up" > $DISK/heartbeat
      echo "$H $up boot=$B" >> $DISK/heartbeat.log
      sync
    fi
    echo $H > /run/heartbeat
    sleep 1
  done
) &
acpid -c /etc/acpi -l /run/acpid.log -p /run/acpid.pid 2>/dev/null
# The guest agent, when QEMU gives the VM its channel (no udev here: find the port by its name).
for port in /sys/class/virtio-ports/*; do
  if [ "$(cat $port/name 2>/dev/null)" = "@AGENT_PORT@" ]; then
    mkdir -p /run/qga
    qemu-ga -m virtio-serial -p /dev/${port##*/} -t /run/qga -f /run/qga.pid >/run/qga.log 2>&1 &
  fi
done
httpd -p @HTTP_PORT@ -h /www
echo "@READY@ name=$NAME boot=$B"
while :; do wait; sleep 5; done
"""

CGI = r"""#!/bin/busybox sh
i=0
while ! mkdir /run/cgi.lock 2>/dev/null; do
  i=$((i+1)); [ $i -gt 500 ] && break
  usleep 2000
done
read n < /run/ram_counter
n=$((${n:-0}+1))
echo $n > /run/ram_counter
rmdir /run/cgi.lock 2>/dev/null
read name < /run/name
read b < /run/boot_count
read h < /run/heartbeat
printf 'Content-Type: application/json\r\nCache-Control: no-store\r\n\r\n'
printf '{"vm": "%s", "ram_counter": %d, "boot_count": %d, "heartbeat": %d}\n' "$name" "$n" "${b:-0}" "${h:-0}"
"""

# The guest-cluster demo service: HTTP on SERVICE_PORT answering a counter kept on the service's
# data disk (synced before the answer: it continues across failovers) and one kept in RAM (resets:
# another member answers). haven mounts the data disk and raises the floating IP itself; this only
# starts, stops and checks the application. Started by `qemu-ga` (`guest-exec`), so its daemon
# must leave stdout and stderr: the agent reports an exit only when the output pipes close.
SERVICE_PORT = 8080
SERVICE = r"""#!/bin/busybox sh
# haven-demo-service start DATA_DIR | stop | check
case "$1" in
  start)
    [ -d "$2" ] || { echo "no data directory $2" >&2; exit 1; }
    mkdir -p /run/svc
    echo "$2" > /run/svc/dir
    echo 0 > /run/svc/ram
    [ -f "$2/counter" ] || { echo 0 > "$2/counter"; sync; }
    httpd -f -p @SERVICE_PORT@ -h /www-svc </dev/null >/dev/null 2>&1 &
    echo $! > /run/svc/pid
    ;;
  stop)
    [ -f /run/svc/pid ] && kill "$(cat /run/svc/pid)" 2>/dev/null
    rm -f /run/svc/pid
    sync
    ;;
  check)
    # httpd alive, listening, and its data directory still mounted. (Not a request: busybox-static's
    # wget crashes in its resolver here, and a request would count on the data disk.)
    read pid < /run/svc/pid && kill -0 "$pid" || { echo "the service is not running" >&2; exit 1; }
    grep -q " $(cat /run/svc/dir) " /proc/mounts || { echo "the data disk is not mounted" >&2; exit 1; }
    cat /proc/net/tcp /proc/net/tcp6 2>/dev/null | grep -qiE ":@SERVICE_PORT_HEX@ 0+:0000 0A" \
      || { echo "nothing listens on @SERVICE_PORT@" >&2; exit 1; }
    ;;
  *) echo "usage: $0 start DATA_DIR | stop | check" >&2; exit 2 ;;
esac
"""

SERVICE_CGI = r"""#!/bin/busybox sh
i=0
while ! mkdir /run/svc/lock 2>/dev/null; do
  i=$((i+1)); [ $i -gt 500 ] && break
  usleep 2000
done
read dir < /run/svc/dir
read d < "$dir/counter"
d=$((${d:-0}+1))
echo $d > "$dir/counter.new" && mv "$dir/counter.new" "$dir/counter" && sync
read r < /run/svc/ram
r=$((${r:-0}+1))
echo $r > /run/svc/ram
rmdir /run/svc/lock 2>/dev/null
read name < /run/name
printf 'Content-Type: application/json\r\nCache-Control: no-store\r\n\r\n'
printf '{"vm": "%s", "disk_counter": %d, "ram_counter": %d}\n' "$name" "$d" "$r"
"""

POWEROFF = r"""#!/bin/busybox sh
echo HAVEN-GUEST-POWEROFF > /dev/console
sync
umount /mnt/disk 2>/dev/null
poweroff -f
"""


class GuestBuildError(RuntimeError):
    pass


@dataclass(frozen=True, slots=True)
class GuestImage(DirectBoot):
    """The lab guest: printed READY_MARKER once it serves HTTP; mounts an ext4 /dev/vda."""

    ready_marker: str | None = READY_MARKER
    disk_filesystem: str | None = DISK_FILESYSTEM
    version: str = ""  # kernel package version


def _run(argv: list[str], cwd: str | Path | None = None) -> str:
    proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise GuestBuildError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")
    return proc.stdout


def _init_script() -> str:
    return (INIT.replace("@MODULES@", " ".join(MODULES)).replace("@HTTP_PORT@", str(HTTP_PORT))
            .replace("@READY@", READY_MARKER).replace("@AGENT_PORT@", GUEST_AGENT_PORT))


def _service_script() -> str:
    return SERVICE.replace("@SERVICE_PORT@", str(SERVICE_PORT)).replace("@SERVICE_PORT_HEX@", f"{SERVICE_PORT:04X}")


def _content_hash() -> str:
    h = hashlib.sha256()
    for part in (_init_script(), CGI, _service_script(), SERVICE_CGI, POWEROFF, " ".join(MODULES),
                 " ".join(AGENT_PACKAGES)):
        h.update(part.encode())
    h.update(str(BUSYBOX.stat().st_size if BUSYBOX.exists() else 0).encode())
    return h.hexdigest()[:12]


def _lists_stamp() -> str:
    lists = Path("/var/lib/apt/lists")
    try:
        return str(max((p.stat().st_mtime_ns for p in lists.iterdir()), default=0))
    except OSError:
        return "0"


def kernel_package(cache_dir: str | os.PathLike[str] | None = None) -> tuple[str, str]:
    """(package, version) of the kernel that linux-image-cloud-amd64 depends on.

    apt-cache takes ~1 s here (no binary package cache), so the answer is remembered in
    `cache_dir/resolved.json` until the apt lists change."""
    memo = Path(cache_dir) / "resolved.json" if cache_dir is not None else None
    stamp = _lists_stamp()
    if memo is not None:
        try:
            data = json.loads(memo.read_text())
            if data["stamp"] == stamp:
                return data["package"], data["version"]
        except (OSError, ValueError, KeyError):
            pass
    out = _run(["apt-cache", "show", "--no-all-versions", META_PACKAGE])
    name = version = ""
    for line in out.splitlines():
        if line.startswith("Depends:"):
            for dep in line.split(":", 1)[1].split(","):
                words = dep.strip().split()
                if words and words[0].startswith("linux-image-"):
                    name = words[0]
                    # "linux-image-X (= 6.1.192-2)": the meta package pins the exact version
                    if len(words) >= 3 and words[1] == "(=":
                        version = words[2].rstrip(")")
                    break
    if not name:
        raise GuestBuildError(f"{META_PACKAGE} has no linux-image dependency (run apt-get update?)")
    if not version:
        show = _run(["apt-cache", "show", "--no-all-versions", name])
        version = next((ln.split(":", 1)[1].strip() for ln in show.splitlines()
                        if ln.startswith("Version:")), "")
    if not version:
        raise GuestBuildError(f"no candidate version for {name}")
    if memo is not None:
        try:
            memo.parent.mkdir(parents=True, exist_ok=True)
            tmp = memo.with_name(f".resolved.{os.getpid()}")
            tmp.write_text(json.dumps({"stamp": stamp, "package": name, "version": version}))
            os.replace(tmp, memo)
        except OSError:
            pass
    return name, version


# --- newc cpio writer (no dependency on the cpio tool; device nodes without mknod) ------------

class _Cpio:
    def __init__(self) -> None:
        self.buf = io.BytesIO()
        self.ino = 1

    def _entry(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0),
               nlink: int = 1) -> None:
        namebytes = name.encode() + b"\0"
        # ino mode uid gid nlink mtime filesize devmajor devminor rdevmajor rdevminor namesize check
        fields = (self.ino, mode, 0, 0, nlink, 0, len(data), 0, 0, rdev[0], rdev[1], len(namebytes), 0)
        header = b"070701" + b"".join(b"%08X" % f for f in fields)
        self.ino += 1
        self.buf.write(header)
        self.buf.write(namebytes)
        self._pad()
        self.buf.write(data)
        self._pad()

    def _pad(self) -> None:
        self.buf.write(b"\0" * (-self.buf.tell() % 4))

    def dir(self, name: str) -> None:
        self._entry(name, stat.S_IFDIR | 0o755, nlink=2)

    def file(self, name: str, data: bytes, perm: int = 0o644) -> None:
        self._entry(name, stat.S_IFREG | perm, data)

    def symlink(self, name: str, target: str) -> None:
        self._entry(name, stat.S_IFLNK | 0o777, target.encode())

    def chardev(self, name: str, major: int, minor: int) -> None:
        self._entry(name, stat.S_IFCHR | 0o600, rdev=(major, minor))

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0, nlink=1)
        self.buf.write(b"\0" * (-self.buf.tell() % 512))
        return self.buf.getvalue()


def _busybox_applets() -> list[str]:
    out = _run([str(BUSYBOX), "--list"])
    return sorted({a.strip() for a in out.split() if a.strip() and "/" not in a})


def _module_bytes(path: Path) -> bytes:
    data = path.read_bytes()
    if path.name.endswith(".xz"):
        return lzma.decompress(data)
    if path.name.endswith(".zst"):
        return subprocess.run(["zstd", "-dc", str(path)], check=True, capture_output=True).stdout
    if path.name.endswith(".gz"):
        return gzip.decompress(data)
    return data


def _find_modules(root: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    mod_root = root / "lib" / "modules"
    if not mod_root.is_dir():
        mod_root = root / "usr" / "lib" / "modules"
    for path in mod_root.rglob("*.ko*"):
        base = path.name.split(".ko")[0].replace("-", "_")
        if base in MODULES and base not in found:
            found[base] = path
    return found


def _download(package: str, debs: Path) -> Path:
    """The newest cached .deb of `package` in `debs`, else the candidate fetched with apt-get."""
    cached = sorted(debs.glob(f"{package}_*.deb"))
    if cached:
        return cached[-1]
    with tempfile.TemporaryDirectory(dir=debs) as dl:
        _run(["apt-get", "download", "-q", "-o", "APT::Sandbox::User=root", package], cwd=dl)
        got = list(Path(dl).glob("*.deb"))
        if len(got) != 1:
            raise GuestBuildError(f"apt-get download {package} gave {got}")
        return Path(shutil.move(str(got[0]), debs / got[0].name))


def _agent_files(debs: Path, work: Path) -> dict[str, bytes]:
    """qemu-ga and every shared object it loads, keyed by their path inside the initramfs."""
    root = work / "agent"
    for package in AGENT_PACKAGES:
        _run(["dpkg-deb", "-x", str(_download(package, debs)), str(root)])
    binary = root / AGENT_BINARY
    libdir = root / "usr" / "lib" / "x86_64-linux-gnu"
    ldd = subprocess.run(["ldd", str(binary)], capture_output=True, text=True,
                         env={**os.environ, "LD_LIBRARY_PATH": str(libdir)})
    files = {"bin/qemu-ga": binary.read_bytes()}
    for line in ldd.stdout.splitlines():
        words = line.split()
        if "not found" in line:
            raise GuestBuildError(f"qemu-ga needs {words[0]}, found neither on this host nor in {AGENT_PACKAGES}")
        path = next((w for w in words if w.startswith("/")), None)
        if path is None:
            continue  # linux-vdso: the kernel provides it
        # The loader keeps its absolute path (the ELF names it); libraries go where it searches.
        inside = path.lstrip("/") if "ld-linux" in path else f"lib/x86_64-linux-gnu/{Path(path).name}"
        files[inside] = Path(path).read_bytes()
    return files


def _pack_initrd(modules: dict[str, Path], extra: dict[str, bytes]) -> bytes:
    cpio = _Cpio()
    for d in ("bin", "dev", "proc", "sys", "run", "tmp", "mnt", "mnt/disk", "etc", "etc/acpi",
              "etc/acpi/PWRF", "lib", "lib/modules", "lib/x86_64-linux-gnu", "lib64", "www", "www/cgi-bin",
              "www-svc", "www-svc/cgi-bin"):
        cpio.dir(d)
    cpio.chardev("dev/console", 5, 1)
    cpio.chardev("dev/null", 1, 3)
    cpio.file("bin/busybox", BUSYBOX.read_bytes(), 0o755)
    for applet in _busybox_applets():
        if applet != "busybox":
            cpio.symlink(f"bin/{applet}", "busybox")
    cpio.file("init", _init_script().encode(), 0o755)
    cpio.file("www/cgi-bin/index.cgi", CGI.encode(), 0o755)
    cpio.file("www/cgi-bin/state", CGI.encode(), 0o755)
    cpio.file("bin/haven-demo-service", _service_script().encode(), 0o755)
    cpio.file("www-svc/cgi-bin/index.cgi", SERVICE_CGI.encode(), 0o755)
    cpio.file("www-svc/cgi-bin/state", SERVICE_CGI.encode(), 0o755)
    cpio.file("etc/acpi/PWRF/00000080", POWEROFF.encode(), 0o755)
    cpio.file("etc/acpid.conf", b"PWRF PWRF/00000080\n")
    for name in MODULES:
        if name in modules:
            cpio.file(f"lib/modules/{name}.ko", _module_bytes(modules[name]))
    for name, data in sorted(extra.items()):
        cpio.file(name, data, 0o755)
    return gzip.compress(cpio.finish(), compresslevel=6, mtime=0)


def build_guest(cache_dir: str | os.PathLike[str] = DEFAULT_CACHE_DIR) -> GuestImage:
    """Build (or return the cached) lab guest kernel + initramfs."""
    cache = Path(cache_dir)
    if not BUSYBOX.is_file():
        raise GuestBuildError(f"{BUSYBOX} missing: apt-get install busybox-static")
    chash = _content_hash()
    try:
        package, version = kernel_package(cache)
    except (GuestBuildError, FileNotFoundError) as exc:
        # Offline / no apt metadata: use the newest cached build of the current content.
        candidates = sorted(cache.glob(f"*-{chash}/initrd.img"), key=lambda p: p.stat().st_mtime)
        if not candidates:
            raise GuestBuildError(f"cannot resolve the kernel package and nothing cached: {exc}") from exc
        out = candidates[-1].parent
        return GuestImage(str(out / "vmlinuz"), str(out / "initrd.img"), version=out.name.rsplit("-", 1)[0])
    out = cache / f"{version}-{chash}"
    kernel, initrd = out / "vmlinuz", out / "initrd.img"
    if kernel.is_file() and initrd.is_file():
        return GuestImage(str(kernel), str(initrd), version=version)
    cache.mkdir(parents=True, exist_ok=True)
    debs = cache / "debs"
    debs.mkdir(exist_ok=True)
    deb = next(iter(sorted(debs.glob(f"{package}_{version.replace(':', '%3a')}_*.deb"))), None)
    if deb is None:
        with tempfile.TemporaryDirectory(dir=cache) as dl:
            _run(["apt-get", "download", "-q", "-o", "APT::Sandbox::User=root", f"{package}={version}"], cwd=dl)
            got = list(Path(dl).glob("*.deb"))
            if len(got) != 1:
                raise GuestBuildError(f"apt-get download {package} gave {got}")
            deb = debs / got[0].name
            os.replace(got[0], deb)
    with tempfile.TemporaryDirectory(dir=cache) as work:
        root = Path(work) / "x"
        _run(["dpkg-deb", "-x", str(deb), str(root)])
        vmlinuz = sorted((root / "boot").glob("vmlinuz-*"))
        if not vmlinuz:
            raise GuestBuildError(f"{deb.name} has no boot/vmlinuz-*")
        modules = _find_modules(root)
        missing = REQUIRED_MODULES - modules.keys()
        if missing:
            raise GuestBuildError(f"{deb.name} lacks modules {sorted(missing)}")
        stage = Path(tempfile.mkdtemp(dir=cache, prefix=".stage-"))
        stage.chmod(0o755)
        try:
            shutil.copyfile(vmlinuz[0], stage / "vmlinuz")
            (stage / "initrd.img").write_bytes(_pack_initrd(modules, _agent_files(debs, Path(work))))
            try:
                os.rename(stage, out)
            except OSError:
                if not (kernel.is_file() and initrd.is_file()):  # lost a race to a twin builder?
                    raise
        finally:
            shutil.rmtree(stage, ignore_errors=True)
    return GuestImage(str(kernel), str(initrd), version=version)


def make_disk(path: str | os.PathLike[str], size_mib: int = 64) -> None:
    """An ext4-formatted qcow2 image at `path`, as the guest's init expects."""
    create_disk(path, size_mib, "qcow2", DISK_FILESYSTEM)


def main() -> None:  # python -m haven.lab.guest [CACHE_DIR]
    import sys

    t0 = time.monotonic()
    image = build_guest(sys.argv[1] if len(sys.argv) > 1 else DEFAULT_CACHE_DIR)
    print(f"{image.kernel}\n{image.initrd}\nversion {image.version}, {time.monotonic() - t0:.2f} s")


if __name__ == "__main__":
    main()
