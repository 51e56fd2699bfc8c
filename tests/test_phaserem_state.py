"""A state file of the published phaser (phaserEM 0.3) read by ``load_state``: our forward
model of it gives phaserEM's own model intensities, so a reconstruction begun there
continues here (tests/data/phaserem/README.md)."""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from phaser_core.errors import StateFileError
from phaser_core.statefile import load_state
from phaser_std.backends.numpy_backend import NumpyBackend
from phaser_std.physics.forward import forward_intensity, make_propagators, scan_to_pixels

DATA = Path(__file__).parent / "data" / "phaserem"


def _model_intensity(state, indices):
    bk = NumpyBackend()
    starts, frac = scan_to_pixels(state.scan_A[indices], state.object.corner_A, state.object.sampling_A,
                                  state.probe.shape)
    tilt = state.tilt_mrad[indices] if np.ndim(state.tilt_mrad) == 2 else state.tilt_mrad
    props = make_propagators(bk, state.probe.shape, state.probe.sampling_A, state.wavelength_A,
                             state.object.thicknesses_A, tilt, bandlimit=2 / 3)  # phaserEM's default
    return bk.to_numpy(forward_intensity(bk, bk.asarray(state.probe.data), bk.asarray(state.object.data),
                                         starts, frac, props))


def _reference():
    with h5py.File(DATA / "model_intensity.h5", "r") as f:
        return f["indices"][()], f["intensity"][()]


def test_a_phaserem_state_models_the_same_intensities_here():
    state = load_state(DATA / "state_v0.2.h5")
    assert state.probe.data.shape == (2, 32, 32) and state.object.data.shape == (2, 70, 70)
    np.testing.assert_allclose(state.object.thicknesses_A, [5.0, 5.0])
    assert state.scan_A.shape == (64, 2) and state.tilt_mrad.shape == (64, 2)
    assert state.iteration.total_iter == 20 and len(state.progress.loss) == 20
    indices, expected = _reference()
    got = _model_intensity(state, indices)
    # float32 data through float32 FFTs on both sides
    np.testing.assert_allclose(got, expected, atol=2e-6 * expected.max())
    # the conversions matter: the object's corner kept, or the tilt's sign kept, miss by far
    corner = state.object.corner_A
    state.object.corner_A = tuple(np.add(corner, 0.5 * np.asarray(state.object.sampling_A)))
    assert np.abs(_model_intensity(state, indices) - expected).max() > 1e-2 * expected.max()
    state.object.corner_A = corner
    state.tilt_mrad[...] = -state.tilt_mrad
    assert np.abs(_model_intensity(state, indices) - expected).max() > 3e-3 * expected.max()


def test_a_phaserem_state_keeps_the_positions_of_its_data():
    """The half-pixel difference in where the probe sits moves the object, not the scan:
    the positions stay those of the file (the data's frame, where a ground truth is), and
    the corner moves back by half an object pixel (the probe has an even size), which puts
    the reconstructed sample where it was (a phaserEM ePIE object of py4DSTEM data scored
    0.68 with the positions moved, 0.94 so, as phaserEM's own shift-searching scorer's 0.935)."""
    state = load_state(DATA / "state_v0.2.h5")
    with h5py.File(DATA / "state_v0.2.h5", "r") as f:
        scan, corner = f["scan/data"][()], f["object/corner"][()]
    np.testing.assert_array_equal(state.scan_A, scan.reshape(-1, 2))
    np.testing.assert_allclose(state.object.corner_A, np.asarray(corner) - 0.5 * np.asarray(state.object.sampling_A))


def test_a_tilt_the_same_at_every_position_is_global(tmp_path):
    uniform = tmp_path / "uniform.h5"
    shutil.copy(DATA / "state_v0.2.h5", uniform)
    with h5py.File(uniform, "r+") as f:
        f["scan/tilt"][...] = np.broadcast_to([2.0, -1.0], f["scan/tilt"].shape)
    np.testing.assert_array_equal(load_state(uniform).tilt_mrad, [-2.0, 1.0])


def test_the_older_layout_reads_the_same(tmp_path):
    """Format 0.1 kept ``/scan`` and ``/tilt`` as arrays at the root, and its loss record as
    ``/progress/iters`` and ``/progress/detector_errors`` (it was read as no record)."""
    old = tmp_path / "v01.h5"
    shutil.copy(DATA / "state_v0.2.h5", old)
    with h5py.File(old, "r+") as f:
        scan, tilt = f["scan/data"][()], f["scan/tilt"][()]
        del f["scan"], f["version"]
        f["scan"], f["tilt"], f["version"] = scan, tilt, "0.1"
        record = f["progress/detector_loss"] if "progress/detector_loss" in f else f["progress/total_loss"]
        iters, values = record["iters"][()], record["values"][()]
        del f["progress"]
        f["progress/iters"], f["progress/detector_errors"] = iters, values
    a, b = load_state(DATA / "state_v0.2.h5"), load_state(old)
    np.testing.assert_array_equal(a.scan_A, b.scan_A)
    np.testing.assert_array_equal(a.tilt_mrad, b.tilt_mrad)
    assert len(b.progress.loss) == len(iters) > 0
    assert b.progress.loss == [float(v) for v in values] and b.progress.iters == [int(i) for i in iters]
    with h5py.File(old, "r+") as f:
        del f["version"]
        f["version"] = "0.3"
    with pytest.raises(StateFileError, match="phaserEM state of version 0.3, newer than this phaser reads"):
        load_state(old)


def test_a_run_starts_from_a_phaserem_state(tmp_path):
    from recon import make_dataset, run

    state = load_state(DATA / "state_v0.2.h5")
    data = make_dataset(tmp_path / "d.h5", scan={"shape": [8, 8]}, detector_shape=[32, 32],
                        reciprocal_sampling_invA=1 / (32 * state.probe.sampling_A[0]))
    out = run(data, [{"type": "gradient", "niter": 1, "grouping": {"size": 16}}],  # per-position tilt
              init={"state": str(DATA / "state_v0.2.h5")})
    assert out.object.data.shape == (2, 70, 70) and np.isfinite(out.object.data).all()


def test_a_per_position_tilt_goes_through_the_conventional_engines(tmp_path):
    from recon import make_dataset, run

    state = load_state(DATA / "state_v0.2.h5")
    data = make_dataset(tmp_path / "d.h5", scan={"shape": [8, 8]}, detector_shape=[32, 32],
                        reciprocal_sampling_invA=1 / (32 * state.probe.sampling_A[0]))
    engine = {"type": "conventional", "niter": 1, "grouping": {"size": 16}}
    untilted = tmp_path / "untilted.h5"
    shutil.copy(DATA / "state_v0.2.h5", untilted)
    with h5py.File(untilted, "r+") as f:
        f["scan/tilt"][...] = 0.0
    for slices in ({"n": 1}, None):  # one slice: nothing for it to act on; two: in each group's propagators
        out = run(data, [{**engine, "slices": slices}], init={"state": str(DATA / "state_v0.2.h5")})
        np.testing.assert_array_equal(out.tilt_mrad, state.tilt_mrad)  # kept as it was
        assert np.isfinite(out.object.data).all()
        flat = run(data, [{**engine, "slices": slices}], init={"state": str(untilted)})
        change = abs(out.progress.loss[-1] - flat.progress.loss[-1]) / flat.progress.loss[-1]
        assert (change > 1e-3) if slices is None else (change < 1e-6), (slices, change)


def test_a_phaserem_state_without_its_object_corner_is_named(tmp_path):
    broken = tmp_path / "broken.h5"
    shutil.copy(DATA / "state_v0.2.h5", broken)
    with h5py.File(broken, "r+") as f:
        del f["object/corner"]
    with pytest.raises(StateFileError, match="incomplete phaserEM state file"):
        load_state(broken)
