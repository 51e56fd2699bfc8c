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
    # a plan's numpy backend sets the thresholds when it is built
    kept = _faults("from phaser_core import get_registry\nfrom phaser_core.backend import build_backend\n"
                   "build_backend('numpy', 'float32', get_registry())")
    assert kept < PAGES // 50, (kept, default)


def test_phaser_malloc_tune_0_leaves_mallocs_defaults():
    setup = ("from phaser_std.backends.host_memory import retain_freed_memory\n"
             "assert retain_freed_memory() is False")
    default = _faults("")
    assert _faults(setup, PHASER_MALLOC_TUNE="0") > min(default, PAGES) // 2


def test_a_helper_numpy_backend_leaves_malloc_alone():
    """physics helpers build a float64 NumpyBackend inside jax runs (probe modes): a jax run
    keeps malloc's defaults whether or not they ran."""
    default = _faults("")
    helper = _faults("from phaser_std.backends.numpy_backend import NumpyBackend; NumpyBackend('float64')")
    assert helper > min(default, PAGES) // 2


def test_retain_freed_memory_reports_the_thresholds_set_on_every_call():
    code = ("from phaser_std.backends.host_memory import retain_freed_memory\n"
            "print(retain_freed_memory(), retain_freed_memory())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={k: v for k, v in os.environ.items() if k != "PHASER_MALLOC_TUNE"})
    assert out.stdout.split() == ["True", "True"]


#: a whole `phaser` run in a fresh process: load (its checks free 4 MiB blocks), set-up and
#: five ePIE iterations on numpy; prints the minor page faults of iterations 3-5
RUN = """
import resource, sys
from phaser_core.plan import load_plan
from phaser_core.runner import run_plan
faults = []
class Faults:
    def __getattr__(self, name):
        return lambda *a, **k: None
    def after_iteration(self, *a):
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt)
plan = {"file_type": "phaser_plan", "version": 1, "backend": "numpy", "seed": 0,
        "raw_data": {"type": "hdf5", "path": sys.argv[1]},
        "engines": [{"type": "conventional", "niter": 5, "grouping": {"size": 64}, "solver": {"type": "epie"}}]}
run_plan(load_plan(plan), quiet=True, observers=[Faults()])
print(faults[-1] - faults[1])
"""


def test_numpy_iterations_run_without_taking_fresh_pages(tmp_path):
    """Guards the regression of benchmarks/NOTES.md 103 end to end: once a run is going,
    its numpy iterations reuse their temporaries' pages. 16x16 positions of 64² in groups
    of 64: each group's 2 MiB waves, ~4000 pages a group and iteration with malloc's
    defaults after the load's checks."""
    from phaser_std.data.simulate import simulate, spec_from_dict, write_hdf5

    spec = {"energy_eV": 200e3, "convergence_angle_mrad": 25.0, "defocus_A": 50.0, "detector_shape": [64, 64],
            "reciprocal_sampling_invA": 0.1, "scan": {"shape": [16, 16], "step_A": 0.6}, "dose": 1e5,
            "object": {"cell_A": [3.19, 5.525], "atoms": [{"position": [0.0, 0.0], "strength_rad": 0.6,
                                                           "width_A": 0.3}]}, "seed": 0}
    path = write_hdf5(simulate(spec_from_dict(spec)), tmp_path / "data.h5")

    def faults(**env: str) -> int:
        out = subprocess.run([sys.executable, "-c", RUN, str(path)], capture_output=True, text=True, check=True,
                             env={**os.environ, **env})
        return int(out.stdout.split()[-1])

    default = faults(PHASER_MALLOC_TUNE="0")
    tuned = faults()
    if default < 3 * 4 * 1000:
        pytest.skip(f"this glibc keeps the temporaries by itself ({default} faults in 3 iterations)")
    assert tuned < default / 20, (tuned, default)
