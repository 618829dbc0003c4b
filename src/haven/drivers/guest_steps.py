"""The commands haven runs inside a service member through the guest agent, as argv lists.

No cluster software lives in the guest: a POSIX shell with `mount`, `ip` and `arping` (busybox
has all three) is all a member needs. Each step is idempotent, so an agent that retries after a
timeout (the first try may have worked) does no harm, and exits non-zero with a message on stderr
when it cannot do its job.
"""
from __future__ import annotations

import ipaddress

SHELL = "/bin/sh"


def _sh(script: str, *args: str) -> list[str]:
    # Arguments travel as $1, $2...: never spliced into the script, so no quoting can go wrong.
    return [SHELL, "-c", script, "haven", *args]


def mount_data(serial: str, mountpoint: str) -> list[str]:
    """Mount the hot-plugged disk whose virtio serial is `serial` (found in sysfs: the guest needs
    no udev) on `mountpoint`."""
    return _sh('dev=; for b in /sys/block/*; do '
               '[ "$(cat "$b/serial" 2>/dev/null)" = "$1" ] && dev=/dev/${b##*/}; done; '
               '[ -n "$dev" ] || { echo "no disk with serial $1" >&2; exit 3; }; '
               'mkdir -p "$2" && { grep -q " $2 " /proc/mounts || mount "$dev" "$2"; }', serial, mountpoint)


def unmount_data(mountpoint: str) -> list[str]:
    """Flush and unmount; succeeds when nothing is mounted there."""
    return _sh('sync; if grep -q " $1 " /proc/mounts; then umount "$1"; fi', mountpoint)


def raise_ip(cidr: str, interface: str) -> list[str]:
    """Add the floating address and announce it (gratuitous ARP: switches and peers learn the
    new MAC at once instead of when their ARP entry expires)."""
    address = str(ipaddress.ip_interface(cidr).ip)
    return _sh('ip addr show dev "$2" | grep -q " $1 " || ip addr add "$1" dev "$2" || exit 1; '
               'arping -U -c 2 -w 1 -I "$2" "$3" >/dev/null 2>&1 & exit 0', cidr, interface, address)


def drop_ip(cidr: str, interface: str) -> list[str]:
    return _sh('if ip addr show dev "$2" | grep -q " $1 "; then ip addr del "$1" dev "$2"; fi', cidr, interface)

