"""The numpy backend keeps freed temporaries for reuse (phaser_std.backends.host_memory).

Each case runs in a fresh interpreter: malloc's thresholds are per process, and once set
they cannot be unset.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
    reason="the thresholds are glibc's (other C libraries are left alone)",
)

#: minor page faults [pages] of ten numpy "group steps" after a 4 MiB block was freed (the
#: pattern checks' block, which moves glibc's dynamic thresholds): each step makes ten 2 MiB
#: complex64 temporaries (64 waves of 64²) and frees them
GROUPS = """
import resource, sys
import numpy as np
SETUP
np.ones(1 << 20, np.float32).sum()
def group():
    arrs = [np.ones((64, 64, 64), np.complex64) for _ in range(10)]
    return sum(float(a[0, 0, 0].real) for a in arrs)
group()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    group()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""

#: pages of the 100 temporaries (2 MiB each)
PAGES = 100 * (2 << 20) // 4096


def _faults(setup: str, **env: str) -> int:
    out = subprocess.run([sys.executable, "-c", GROUPS.replace("SETUP", setup)], capture_output=True, text=True,
                         env={**os.environ, **env}, check=True)
    return int(out.stdout.split()[-1])


def test_the_numpy_backend_reuses_its_freed_temporaries_instead_of_faulting_fresh_pages():
    default = _faults("")
    if default < PAGES // 4:
        pytest.skip(f"this glibc keeps the temporaries by itself ({default} faults of {PAGES} pages)")
    # the numpy backend sets the thresholds when it is built
    kept = _faults("from phaser_std.backends.numpy_backend import NumpyBackend; NumpyBackend()")
    assert kept < PAGES // 50, (kept, default)


def test_phaser_malloc_tune_0_leaves_mallocs_defaults():
    setup = ("from phaser_std.backends.host_memory import retain_freed_memory\n"
             "assert retain_freed_memory() is False")
    default = _faults("")
    assert _faults(setup, PHASER_MALLOC_TUNE="0") > min(default, PAGES) // 2


def test_retain_freed_memory_sets_the_thresholds_once():
    code = ("from phaser_std.backends.host_memory import retain_freed_memory\n"
            "print(retain_freed_memory(), retain_freed_memory())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={k: v for k, v in os.environ.items() if k != "PHASER_MALLOC_TUNE"})
    assert out.stdout.split() == ["True", "True"]
