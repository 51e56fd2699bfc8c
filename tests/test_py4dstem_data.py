"""Data from a second independent simulator: py4DSTEM 0.14.18's wave optics, SrTiO₃ [001].

``tests/data/py4dstem_srtio3_rotated.h5`` (353 kB), made with
``benchmarks/py4dstem_crosscheck.py --reps 3 3 --det 32 --layers 2 --defocus 50
--scan-shape 16 22 --scan-step 0.71 0.52 --rotation 12 --compact``: 3x3 cells (11.7 Å), two
cells thick (four atomic planes, 7.81 Å), 200 kV, 25 mrad, py4DSTEM defocus 50 Å (= −C10,
our ``defocus_A``), a 22x16 raster of unequal steps (0.52 Å along y, 0.71 Å along x) turned
by py4DSTEM's affine angle 12° (−12° in ours), the positions recorded in the file; 32²
detector pixels of 0.0854 /Å, Poisson counts at 1e5 e⁻ a pattern; the ground truth σ·V_proj
[rad] from Lobato scattering factors. Where abTEM's files (test_abtem_data.py) pin our
conventions against one simulator, this pins them against another that shares no code with
it or with us: the defocus sign, the (y, x) order of the positions and of the detector, and
the frame of the recorded positions, on a turned scan of unequal steps.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import pytest

from phaser_std.analysis import score_state
from recon import ground_truth, run

DATA = Path(__file__).resolve().parent / "data" / "py4dstem_srtio3_rotated.h5"
THICKNESS_A = 7.81  # [Å] two cells, as simulated (no vacuum)


def _score(engine: str = "epie", slices: int = 1, niter: int = 8, data: Path = DATA, **raw) -> float:
    block = {"type": "conventional", "niter": niter, "grouping": {"size": 64}, "solver": {"type": engine},
             "update_probe": False}
    if slices > 1:
        block["slices"] = {"n": slices, "total_thickness_A": THICKNESS_A}
    plan = {"raw_data": {"type": "hdf5", "path": str(data), **raw}} if raw else {}
    return score_state(run(data, [block], **plan), ground_truth(data))["pearson"]


@pytest.mark.parametrize("engine", ["epie", "lsqml"])
def test_py4dstem_data_reconstruct_with_the_probe_of_the_metadata(engine):
    """The probe held at the file's metadata: one slice scores ≥ 0.975 against py4DSTEM's
    potential (measured 0.985 / 0.984, ePIE / LSQML) and two slices higher (0.990 / 0.988)."""
    one = _score(engine)
    two = _score(engine, slices=2)
    assert one > 0.975, one
    assert two > 0.985 and two > one + 0.003, (one, two)


def test_the_conventions_matter_on_py4dstem_data(tmp_path):
    """Each convention the file pins, broken on purpose, costs the reconstruction: the
    defocus of the opposite sign (measured −0.25), the detector transposed (0.60), the
    positions read as (x, y) (0.61), against 0.985."""
    assert _score(niter=4, defocus_A=-50.0) < 0.3
    assert _score(niter=4, transpose=True) < 0.8
    swapped = tmp_path / "swapped.h5"
    shutil.copy(DATA, swapped)
    with h5py.File(swapped, "a") as f:
        f["scan_positions"][...] = f["scan_positions"][()][:, ::-1]
    assert _score(data=swapped) < 0.8
