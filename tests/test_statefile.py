"""The state file: exact round trips on every backend, the public h5py layout, clear errors,
atomic writes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from phaser_core.errors import StateFileError
from phaser_core.state import IterationCounters, ObjectState, ProbeState, Progress, ReconsState
from phaser_core.statefile import FORMAT_VERSION, load_state, save_state

DTYPES = {"float32": (np.float32, np.complex64), "float64": (np.float64, np.complex128)}


def make_state(dtype: str = "float32", *, n_pos: int = 7, per_position_tilt: bool = False) -> ReconsState:
    real, cplx = DTYPES[dtype]
    rng = np.random.default_rng(11)

    def c(shape):
        return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(cplx)

    progress = Progress()
    for i in range(4):
        progress.append(i + 1, 1.0 / (i + 1.3), 0.1 * i + 0.0123, 0 if i < 2 else 1)
    return ReconsState(
        probe=ProbeState(data=c((2, 16, 12)), sampling_A=(0.21, 0.23)),
        object=ObjectState(data=c((3, 20, 24)), sampling_A=(0.21, 0.23), corner_A=(-2.5, -3.125),
                           thicknesses_A=np.array([10.0, 12.5, 0.0])),
        scan_A=rng.standard_normal((n_pos, 2)).astype(real),
        tilt_mrad=(rng.standard_normal((n_pos, 2)) if per_position_tilt else np.array([0.5, -1.25])).astype(real),
        iteration=IterationCounters(engine_num=1, engine_iter=2, total_iter=4),
        progress=progress,
        wavelength_A=0.025079,
        extra={
            "adam": {"probe": {"m": c((2, 16, 12)), "v": rng.random((2, 16, 12)).astype(real)},
                     "step": 4},
            "lsqml_sum": rng.random((20, 24)).astype(real),
            "counts": np.arange(5, dtype=np.int64),
            "rate": 0.5,
            "rng_state": 2**70 + 3,  # wider than HDF5's integers (a numpy bit generator's state)
            "below_int64": -(2**63) - 1,
            "enabled": True,
            "label": "engine-1",
            "names": np.array(["probe", "object"]),
            "flags": np.array([True, False]),
            "beta": np.float32(0.25),
            "zero_d": np.array(1.5, np.float32),
            "nothing": None,
            "empty": {},
        },
    )


def _on_backend(state: ReconsState, bk) -> ReconsState:
    """The same state with every array on the backend (dtypes kept)."""
    def mv(x):
        return bk.asarray(x, dtype=x.dtype) if isinstance(x, np.ndarray) and x.dtype.kind in "fc" else x

    def tree(d):
        return {k: tree(v) if isinstance(v, dict) else mv(v) for k, v in d.items()}

    return ReconsState(
        probe=ProbeState(data=mv(state.probe.data), sampling_A=state.probe.sampling_A),
        object=ObjectState(data=mv(state.object.data), sampling_A=state.object.sampling_A,
                           corner_A=state.object.corner_A, thicknesses_A=state.object.thicknesses_A),
        scan_A=mv(state.scan_A), tilt_mrad=mv(state.tilt_mrad), iteration=state.iteration,
        progress=state.progress, wavelength_A=state.wavelength_A, extra=tree(state.extra),
    )


def _assert_exact(a, b, where="extra"):
    if isinstance(b, dict):
        assert isinstance(a, dict) and set(a) == set(b), where
        for k in b:
            _assert_exact(a[k], b[k], f"{where}.{k}")
    elif isinstance(b, np.ndarray):
        assert isinstance(a, np.ndarray), where
        assert a.dtype == b.dtype and a.shape == b.shape, where
        np.testing.assert_array_equal(a, b, err_msg=where)
    else:
        assert type(a) is type(b) and a == b, where


def assert_states_equal(got: ReconsState, want: ReconsState) -> None:
    for name, g, w in [("probe", got.probe.data, want.probe.data), ("object", got.object.data, want.object.data),
                       ("scan", got.scan_A, want.scan_A), ("tilt", got.tilt_mrad, want.tilt_mrad),
                       ("thicknesses", got.object.thicknesses_A, want.object.thicknesses_A)]:
        assert isinstance(g, np.ndarray), name
        assert g.dtype == w.dtype and g.shape == w.shape, name
        np.testing.assert_array_equal(g, w, err_msg=name)
    assert got.probe.sampling_A == want.probe.sampling_A
    assert got.object.sampling_A == want.object.sampling_A
    assert got.object.corner_A == want.object.corner_A
    assert got.iteration == want.iteration
    assert got.progress == want.progress
    assert got.wavelength_A == want.wavelength_A
    _assert_exact(got.extra, want.extra)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_round_trip_exact_numpy(tmp_path, dtype):
    state = make_state(dtype)
    save_state(state, tmp_path / "s.h5")
    assert_states_equal(load_state(tmp_path / "s.h5"), state)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_round_trip_exact_every_backend(tmp_path, make_backend, dtype):
    bk = make_backend(dtype)
    state = make_state(dtype, per_position_tilt=True)
    on_device = _on_backend(state, bk)
    path = save_state(on_device, tmp_path / "s.h5", backend=bk)
    loaded = load_state(path)
    assert_states_equal(loaded, state)
    # and back onto the backend: the same numbers again
    again = _on_backend(loaded, bk)
    np.testing.assert_array_equal(bk.to_numpy(again.object.data), state.object.data)


def test_jax_arrays_without_backend_argument(tmp_path):
    jax = pytest.importorskip("jax")
    state = make_state("float32")
    state.probe.data = jax.numpy.asarray(state.probe.data)
    save_state(state, tmp_path / "s.h5")
    assert load_state(tmp_path / "s.h5").probe.data.dtype == np.complex64


def test_layout_readable_with_h5py_alone(tmp_path):
    state = make_state("float32", n_pos=5)
    save_state(state, tmp_path / "s.h5")
    with h5py.File(tmp_path / "s.h5", "r") as f:
        assert f.attrs["file_type"] == "phaser_state"
        assert int(f.attrs["format_version"]) == 1 == FORMAT_VERSION
        assert isinstance(f.attrs["phaser_version"], str) and f.attrs["phaser_version"]
        assert f.attrs["wavelength_A"] == pytest.approx(0.025079, rel=1e-15)
        assert set(f) >= {"probe", "object", "scan", "tilt", "iteration", "progress", "extra"}
        assert f["probe"].shape == (2, 16, 12) and f["probe"].dtype == np.complex64
        np.testing.assert_array_equal(f["probe"].attrs["sampling_A"], [0.21, 0.23])
        obj = f["object"]
        assert obj.shape == (3, 20, 24) and obj.dtype == np.complex64
        np.testing.assert_array_equal(obj.attrs["sampling_A"], [0.21, 0.23])
        np.testing.assert_array_equal(obj.attrs["corner_A"], [-2.5, -3.125])
        np.testing.assert_array_equal(obj.attrs["thicknesses_A"], [10.0, 12.5, 0.0])
        assert f["scan"].shape == (5, 2) and f["scan"].attrs["units"] == "A"
        assert f["tilt"].shape == (2,) and f["tilt"].attrs["units"] == "mrad"
        it = f["iteration"].attrs
        assert (it["engine_num"], it["engine_iter"], it["total_iter"]) == (1, 2, 4)
        prog = f["progress"]
        np.testing.assert_array_equal(prog["iters"][()], [1, 2, 3, 4])
        np.testing.assert_array_equal(prog["engine"][()], [0, 0, 1, 1])
        assert prog["loss"].shape == (4,) and prog["time_s"].shape == (4,)
        assert prog["loss"].dtype == np.float64
        assert f["extra/adam/probe/m"].shape == (2, 16, 12)
        assert f["extra/adam/step"][()] == 4
        np.testing.assert_array_equal(f["object"][1], state.object.data[1])


def test_overwrite_is_atomic_and_leaves_no_temp_files(tmp_path):
    path = tmp_path / "checkpoint.h5"
    first = make_state()
    save_state(first, path)
    second = make_state()
    second.iteration = IterationCounters(engine_num=2, engine_iter=0, total_iter=9)
    save_state(second, path)
    assert load_state(path).iteration.total_iter == 9
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.h5"]
    # a save that fails half way leaves the previous file intact and no temporary file
    bad = make_state()
    bad.extra = {"ok": np.ones(3), "bad/key": np.ones(2)}
    with pytest.raises(StateFileError, match="bad/key"):
        save_state(bad, path)
    assert load_state(path).iteration.total_iter == 9
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.h5"]


_WRITER = """
import sys, numpy as np
from phaser_core.state import ReconsState, ProbeState, ObjectState, IterationCounters
from phaser_core.statefile import save_state
obj = np.ones((1, 256, 256), np.complex128)
i = 0
while True:
    i += 1
    s = ReconsState(probe=ProbeState(data=np.ones((1, 8, 8), np.complex64), sampling_A=(1.0, 1.0)),
                    object=ObjectState(data=obj * i, sampling_A=(1.0, 1.0), corner_A=(0.0, 0.0)),
                    scan_A=np.zeros((3, 2)), iteration=IterationCounters(total_iter=i))
    save_state(s, sys.argv[1])
    if i == 1:
        print("ready", flush=True)
"""


def test_sigkill_during_writes_never_leaves_a_torn_file(tmp_path):
    path = tmp_path / "checkpoint.h5"
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(0.3)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    state = load_state(path)
    n = state.iteration.total_iter
    assert n >= 1
    np.testing.assert_array_equal(state.object.data, np.full((1, 256, 256), n, np.complex128))


# -- errors -------------------------------------------------------------------------------


def test_missing_file(tmp_path):
    with pytest.raises(StateFileError, match="does not exist"):
        load_state(tmp_path / "nope.h5")


def test_not_hdf5(tmp_path):
    p = tmp_path / "plan.yaml"
    p.write_text("file_type: phaser_plan\n")
    with pytest.raises(StateFileError, match=r"plan\.yaml.*not a phaser state file"):
        load_state(p)


def test_hdf5_but_not_a_state_file(tmp_path):
    p = tmp_path / "raw.h5"
    with h5py.File(p, "w") as f:
        f["data"] = np.zeros(3)
    with pytest.raises(StateFileError, match=r"raw\.h5 is not a phaser state file \(no file_type"):
        load_state(p)
    with h5py.File(p, "a") as f:
        f.attrs["file_type"] = "something_else"
    with pytest.raises(StateFileError, match="file_type='something_else'"):
        load_state(p)


def test_newer_format_version(tmp_path):
    p = save_state(make_state(), tmp_path / "s.h5")
    with h5py.File(p, "a") as f:
        f.attrs["format_version"] = FORMAT_VERSION + 1
    with pytest.raises(StateFileError, match=r"s\.h5 has state format version 2, newer .*Upgrade phaser"):
        load_state(p)


@pytest.mark.parametrize("victim,message", [
    ("scan", "missing /scan"),
    ("progress/loss", "missing /progress/loss"),
    ("object@thicknesses_A", "missing attribute 'thicknesses_A' of /object"),
    ("iteration@total_iter", "missing attribute 'total_iter' of /iteration"),
])
def test_missing_parts_are_named(tmp_path, victim, message):
    p = save_state(make_state(), tmp_path / "s.h5")
    with h5py.File(p, "a") as f:
        if "@" in victim:
            node, attr = victim.split("@")
            del f[node].attrs[attr]
        else:
            del f[victim]
    with pytest.raises(StateFileError, match=rf"s\.h5 is an incomplete phaser state file: {message}"):
        load_state(p)


def test_inconsistent_thicknesses(tmp_path):
    p = save_state(make_state(), tmp_path / "s.h5")
    with h5py.File(p, "a") as f:
        f["object"].attrs["thicknesses_A"] = np.ones(2)
    with pytest.raises(StateFileError, match="3 slices but attribute thicknesses_A has shape"):
        load_state(p)


def test_unsupported_extra_value_is_named(tmp_path):
    state = make_state()
    state.extra = {"opt": {"fn": object()}}
    with pytest.raises(StateFileError, match=r"state\.extra\.opt\.fn"):
        save_state(state, tmp_path / "s.h5")
    assert list(tmp_path.iterdir()) == []


def test_missing_folder(tmp_path):
    with pytest.raises(StateFileError, match="does not exist"):
        save_state(make_state(), tmp_path / "no" / "s.h5")


def test_wavelength_optional(tmp_path):
    state = make_state()
    state.wavelength_A = None
    save_state(state, tmp_path / "s.h5")
    assert load_state(Path(tmp_path / "s.h5")).wavelength_A is None
