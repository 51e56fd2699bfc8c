"""Every installed backend reconstructs what numpy does, to float32 rounding.

Whole runs through the plan flow (loader, initialisers, engine) for the conventional
engine (ePIE with probe modes, LSQML with position refinement, multislice LSQML) and the
gradient engine (single slice and multislice). jax runs on its default device (the GPU
where there is one); cupy needs a GPU and is skipped without one, saying so. The numpy
run of each case is the reference (computed once per module). Also: the engines' shared
set-up refuses a probe off the detector grid.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import build_backend
from recon import make_dataset, run, true_positions

MULTI = {"n": 2, "total_thickness_A": 20.0}

CASES: dict[str, dict] = {
    "epie-modes": {"type": "conventional", "niter": 3, "grouping": {"size": 16}, "probe_modes": 2,
                   "solver": {"type": "epie"}},
    "lsqml-positions": {"type": "conventional", "niter": 4, "grouping": {"size": 16},
                        "solver": {"type": "lsqml"}, "position_solver": {"type": "momentum"},
                        "update_positions": {"after": 1}},
    "lsqml-multislice": {"type": "conventional", "niter": 3, "grouping": {"size": 16}, "slices": MULTI,
                         "solver": {"type": "lsqml"}},
    # whole groups (the GPU's path): on jax the sweeps gather each slice's views where read
    "epie-multislice": {"type": "conventional", "niter": 4, "grouping": {"size": 16, "chunk": 16},
                        "slices": {"n": 3, "total_thickness_A": 30.0}, "solver": {"type": "epie"},
                        "position_solver": {"type": "momentum"}, "update_positions": {"after": 1}},
    "lsqml-multislice-whole": {"type": "conventional", "niter": 3, "grouping": {"size": 16, "chunk": 16},
                               "slices": {"n": 3, "total_thickness_A": 30.0}, "solver": {"type": "lsqml"}},
    "gradient-modes": {"type": "gradient", "niter": 3, "grouping": {"size": 16}, "probe_modes": 2},
    "gradient-multislice": {"type": "gradient", "niter": 3, "grouping": {"size": 16}, "slices": MULTI},
}

#: object/probe error relative to the largest |value|. Measured on jax (CPU): conventional
#: at most 7.7e-7 (object) and 3.0e-7 (probe); gradient 2.2e-5 (object, multislice): Adam
#: divides each pixel's step by its gradient's running RMS, which turns float32 rounding
#: in near-zero gradients into steps of relative size ~1e-5
ARRAY_RTOL = {"conventional": 1e-5, "gradient": 1e-4}
#: measured at most 1.4e-6 (gradient) and 1.1e-7 (conventional)
LOSS_RTOL = 2e-5
#: measured 2.2e-7 Å for positions that move ~0.05 Å
POSITION_ATOL_A = 1e-5


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """12x12 positions, 64² patterns, 1e5 e/Å² (Poisson)."""
    return make_dataset(tmp_path_factory.mktemp("backends") / "data.h5", scan={"shape": [12, 12]}, dose=1e5)


_REFERENCE: dict[str, object] = {}


def _reference(case: str, data: Path):
    if case not in _REFERENCE:
        _REFERENCE[case] = run(data, [CASES[case]], backend="numpy")
    return _REFERENCE[case]


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b))) / np.max(np.abs(b)))


@pytest.mark.parametrize("backend_name", ["jax", "cupy"])  # numpy is the reference
@pytest.mark.parametrize("case", list(CASES))
def test_backend_reconstructs_like_numpy(backend_name, case, data):
    build_backend(backend_name)  # skip with the reason where the backend is missing
    ref = _reference(case, data)
    got = run(data, [CASES[case]], backend=backend_name)
    assert got.object.data.shape == ref.object.data.shape
    errors = {"object": _rel(got.object.data, ref.object.data), "probe": _rel(got.probe.data, ref.probe.data),
              "loss": _rel(got.progress.loss, ref.progress.loss),
              "positions_A": float(np.max(np.abs(got.scan_A - ref.scan_A)))}
    msg = f"{backend_name} vs numpy, {case}: {errors}"
    tol = ARRAY_RTOL[CASES[case]["type"]]
    assert errors["object"] < tol and errors["probe"] < tol, msg
    assert errors["loss"] < LOSS_RTOL, msg
    assert errors["positions_A"] < POSITION_ATOL_A, msg
    # the reference run did something: its loss fell
    assert np.asarray(ref.progress.loss)[-1] < np.asarray(ref.progress.loss)[0]
    if CASES[case].get("position_solver"):  # and the positions compared did move (measured 0.041 Å)
        assert np.max(np.abs(ref.scan_A - true_positions(data)[0])) > 0.01


def test_a_probe_off_the_detector_grid_is_refused_saying_what_to_do(data, tmp_path):
    """Engines reconstruct on the detector's grid. A probe file on another grid is refused
    by its initialiser; a state on another grid (a resumed run, data cropped since) by the
    engines' shared set-up: both name the two shapes and the fix."""
    from phaser_core.errors import DataError
    from phaser_core.plan import load_plan
    from phaser_core.registry import get_registry
    from phaser_core.runner import load_data
    from phaser_std.engines.common import engine_arrays

    probe = tmp_path / "probe32.npy"
    np.save(probe, np.ones((1, 32, 32), np.complex64))
    with pytest.raises(ValueError, match=r"is \(32, 32\) but the patterns are \(64, 64\); resample the probe or crop"):
        run(data, [{**CASES["epie-modes"], "niter": 1}], init={"probe": {"type": "from_file", "path": str(probe)}})

    state = run(data, [{**CASES["epie-modes"], "niter": 1}])  # a 64² probe
    plan = load_plan({"file_type": "phaser_plan", "version": 1, "raw_data": {"type": "hdf5", "path": str(data)},
                      "post_load": [{"type": "crop_data", "size": 32}], "engines": [CASES["epie-modes"]]})
    cropped = load_data(plan, get_registry(), tmp_path)
    bk = get_registry().get("backend", "numpy").obj("float32")
    with pytest.raises(DataError, match=r"patterns are \(32, 32\) but the probe is \(64, 64\).*crop or bin"):
        engine_arrays(bk, state, cropped)


@pytest.mark.parametrize("case", ["epie-multislice", "lsqml-multislice-whole"])
def test_whole_group_cases_take_the_whole_group_path(case, data, monkeypatch):
    """The two whole-group cases above compare jax's per-slice views (``SliceViews``, the
    GPU's path) with numpy only if jax runs them as whole groups: count the views built."""
    build_backend("jax")
    import phaser_std.physics.forward as forward

    built = []
    original = forward.SliceViews.__init__

    def init(self, *args, **kwargs):
        built.append(1)
        original(self, *args, **kwargs)

    monkeypatch.setattr(forward.SliceViews, "__init__", init)
    run(data, [{**CASES[case], "niter": 1}], backend="jax")
    assert built, f"{case} did not run whole groups with views gathered per slice on jax"
