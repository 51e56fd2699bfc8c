"""glibc's malloc told to keep the numpy backend's freed temporaries for reuse.

A numpy group step makes and frees dozens of MiB-sized temporaries (waves, their FFTs, the
update maps). glibc hands such blocks back to the kernel depending on its *dynamic*
thresholds, which move with the sizes the process happened to free before: after the
pattern checks freed their 4 MiB blocks, every group's 2 MiB waves were again taken from
the kernel as fresh, zeroed pages, and single-slice numpy iterations ran 2x slower
(benchmarks/NOTES.md 103). Fixing the thresholds keeps blocks up to 32 MiB on the heap and
freed memory in the process, so each group reuses the pages of the last.

A page is kept only once it has been used, so the peak resident memory stays as it was
(every numpy benchmark case within 2 MiB), but the process does not give freed memory back
before it ends. Set
``PHASER_MALLOC_TUNE=0`` to leave malloc's defaults alone. Other C libraries (musl, macOS)
are left alone.
"""

from __future__ import annotations

import ctypes
import os
import sys

__all__ = ["retain_freed_memory", "MMAP_THRESHOLD", "TRIM_THRESHOLD"]

#: [bytes] blocks from this size on are mapped apart and unmapped when freed: glibc's
#: largest (``DEFAULT_MMAP_THRESHOLD_MAX`` on 64-bit); a group's waves stay below it
MMAP_THRESHOLD = 32 << 20
#: [bytes] free memory at the top of the heap beyond this goes back to the kernel
TRIM_THRESHOLD = 512 << 20

# mallopt parameter numbers (glibc's malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

_applied: bool | None = None


def retain_freed_memory() -> bool:
    """Fix glibc's mmap and trim thresholds (:data:`MMAP_THRESHOLD`,
    :data:`TRIM_THRESHOLD`) once per process. Returns whether they are set: False on
    another C library, on another platform, or with ``PHASER_MALLOC_TUNE=0``."""
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if os.environ.get("PHASER_MALLOC_TUNE", "1").strip() == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)  # the C library the interpreter runs on
        libc.gnu_get_libc_version  # glibc only: musl's mallopt does nothing
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    _applied = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return _applied
