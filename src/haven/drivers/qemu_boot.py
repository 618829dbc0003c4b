"""Booting a VM from a kernel and initrd instead of its disks, and making its empty disks.

Appliances and the lab's guest boot this way: QEMU loads the kernel and initramfs directly, the
guest says on its serial console when it is up, and a new disk may need a filesystem the guest's
init expects (it has no installer to make one).
"""
from __future__ import annotations

import os
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class DirectBoot:
    kernel: str
    initrd: str
    ready_marker: str | None = None  # a serial console line saying the guest is up; None: QEMU's run state
    disk_filesystem: str | None = None  # format a new disk with this filesystem (`mkfs.<fs>`)


def create_disk(path: str | os.PathLike[str], size_mib: int, disk_format: str = "qcow2",
                filesystem: str | None = None) -> None:
    """An empty disk image at `path`, optionally holding a fresh filesystem. Written under a
    temporary name and renamed, so a half-made image never appears at `path`."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
    try:
        if filesystem is None:
            _run(["qemu-img", "create", "-q", "-f", disk_format, str(partial), f"{size_mib}M"])
        else:
            with tempfile.TemporaryDirectory(prefix="haven-disk-") as tmp:
                raw = Path(tmp) / "disk.raw"
                with open(raw, "wb") as f:
                    f.truncate(size_mib * 1024 * 1024)
                _run([f"mkfs.{filesystem}", "-q", "-F", "-L", "haven", "-E",
                      "lazy_itable_init=0,lazy_journal_init=0", str(raw)])
                _run(["qemu-img", "convert", "-q", "-f", "raw", "-O", disk_format, str(raw), str(partial)])
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)


def _run(argv: list[str]) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode != 0:
        raise OSError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()[-300:]}")
