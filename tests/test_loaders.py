"""Loaders: hdf5, npy, empad (sign flip), rsciio; orientation and metadata overrides."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from phaser_core.context import LoadContext
from phaser_core.errors import DataError
from phaser_core.physics_constants import wavelength_A
from phaser_std.data.loaders.empad import EmpadConfig, load_empad
from phaser_std.data.loaders.hdf5 import Hdf5Config, load_hdf5
from phaser_std.data.loaders.npy import NpyConfig, load_npy
from phaser_std.data.simulate import simulate, spec_from_dict, write_hdf5

TINY = {
    "energy_eV": 300e3, "convergence_angle_mrad": 21.0, "defocus_A": -25.0,
    "detector_shape": [24, 24], "reciprocal_sampling_invA": 0.25,
    "scan": {"shape": [3, 4], "step_A": 0.5}, "dose": 1e3,
    "object": {"cell_A": [2.5, 2.5], "atoms": [{"position": [0.5, 0.5], "strength_rad": 0.4}]},
}


@pytest.fixture(scope="module")
def h5file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "tiny.h5"
    write_hdf5(simulate(spec_from_dict(TINY)), path)
    return path


def test_registered():
    from phaser_core.registry import Registry

    reg = Registry.build()
    assert {"hdf5", "npy", "empad", "rsciio"} <= set(reg.names("loader"))
    assert reg.get("loader", "h5").name == "hdf5"


def test_npy_with_plan_metadata_equals_hdf5(h5file, tmp_path):
    ref = load_hdf5(Hdf5Config(path=str(h5file)), LoadContext())
    with h5py.File(h5file, "r") as f:
        np.save(tmp_path / "p.npy", f["patterns"][()])
        np.save(tmp_path / "pos.npy", f["scan_positions"][()])
    cfg = NpyConfig(path="p.npy", positions="pos.npy", energy_eV=300e3, convergence_angle_mrad=21.0,
                    defocus_A=-25.0, reciprocal_sampling_invA=0.25, scan_step_A=0.5)
    data = load_npy(cfg, LoadContext(plan_dir=tmp_path))
    assert isinstance(data.patterns, np.memmap)  # float32 file, float32 run: no copy
    np.testing.assert_array_equal(np.asarray(data.patterns), ref.patterns)
    np.testing.assert_array_equal(data.scan_positions_A, ref.scan_positions_A)
    for key in ("energy_eV", "convergence_angle_mrad", "defocus_A", "reciprocal_sampling_invA",
                "scan_step_A", "scan_shape"):
        assert getattr(data, key) == getattr(ref, key), key


def test_npy_float64_run_dtype(tmp_path):
    np.save(tmp_path / "p.npy", np.ones((2, 3, 8, 8), np.float32))
    data = load_npy(NpyConfig(path="p.npy"), LoadContext(plan_dir=tmp_path, dtype="float64"))
    assert data.patterns.dtype == np.float64 and data.patterns.shape == (6, 8, 8) and data.scan_shape == (2, 3)


def test_config_overrides_file_values(h5file):
    data = load_hdf5(Hdf5Config(path=str(h5file), energy_eV=200e3, defocus_A=10.0, angular_sampling_mrad=2.0),
                     LoadContext())
    assert data.energy_eV == 200e3 and data.defocus_A == 10.0
    dk = 2.0e-3 / wavelength_A(200e3)
    assert data.reciprocal_sampling_invA == pytest.approx((dk, dk), rel=1e-12)


def test_orientation_options(h5file):
    ref = load_hdf5(Hdf5Config(path=str(h5file)), LoadContext()).patterns
    def cflip(a, axis):  # reflection about pixel Q//2 (Q = 24 is even: row 0 stays put)
        return np.roll(np.flip(a, axis), 1, axis)

    cases = {
        "fy": (dict(flip_y=True), cflip(ref, 1)),
        "fx": (dict(flip_x=True), cflip(ref, 2)),
        "t": (dict(transpose=True), np.swapaxes(ref, 1, 2)),
        "r": (dict(rotate90=1), cflip(np.swapaxes(ref, 1, 2), 1)),
        "r3": (dict(rotate90=3), cflip(np.swapaxes(ref, 1, 2), 2)),
        "tf": (dict(transpose=True, flip_y=True), cflip(np.swapaxes(ref, 1, 2), 1)),
    }
    for opts, expected in cases.values():
        data = load_hdf5(Hdf5Config(path=str(h5file), **opts), LoadContext())
        np.testing.assert_array_equal(data.patterns, expected)
        assert data.patterns.flags.c_contiguous
    # every option keeps the zero-angle pixel in place; rot90 agrees with numpy away from the edge row
    r = load_hdf5(Hdf5Config(path=str(h5file), rotate90=1), LoadContext()).patterns
    np.testing.assert_array_equal(r[:, 1:, :], np.rot90(ref, 1, axes=(1, 2))[:, :-1, :])
    odd = np.arange(2 * 5 * 5).reshape(2, 5, 5)
    from phaser_std.data.loaders._common import orient_patterns

    class C:
        flip_y, flip_x, transpose, rotate90 = False, False, False, 1

    np.testing.assert_array_equal(orient_patterns(odd, C), np.rot90(odd, 1, axes=(1, 2)))


def test_transpose_swaps_anisotropic_sampling(tmp_path):
    path = tmp_path / "a.h5"
    with h5py.File(path, "w") as f:
        f["patterns"] = np.zeros((2, 8, 6), np.float32)
        f.attrs["reciprocal_sampling_invA"] = [0.1, 0.2]
        f.attrs["energy_eV"] = 200e3
    data = load_hdf5(Hdf5Config(path=str(path), transpose=True), LoadContext())
    assert data.pattern_shape == (6, 8) and data.reciprocal_sampling_invA == (0.2, 0.1)


def test_hdf5_beam_tilt_is_the_initial_tilt(tmp_path):
    """``tilt_mrad`` (y, x) [mrad] written by ``phaser simulate`` is read as the data's tilt
    and starts the reconstruction's global tilt; the loader's key overrides it; absent, the
    tilt is zero."""
    import h5py

    from phaser_core.plan import load_plan
    from phaser_core.registry import get_registry
    from phaser_core.runner import initial_state, load_data

    path = tmp_path / "tilted.h5"
    write_hdf5(simulate(spec_from_dict({**TINY, "tilt_mrad": [1.5, -2.5]})), path)
    assert load_hdf5(Hdf5Config(path=str(path)), LoadContext()).tilt_mrad == (1.5, -2.5)
    assert load_hdf5(Hdf5Config(path=str(path), tilt_mrad=[0, 4]), LoadContext()).tilt_mrad == (0.0, 4.0)

    def start(raw: dict) -> np.ndarray:
        plan = load_plan({"file_type": "phaser_plan", "version": 1, "raw_data": {"type": "hdf5", **raw},
                          "engines": [{"type": "conventional", "niter": 1}]})
        reg = get_registry()
        return initial_state(plan, load_data(plan, reg, tmp_path), reg, tmp_path).tilt_mrad

    np.testing.assert_array_equal(start({"path": str(path)}), [1.5, -2.5])
    np.testing.assert_array_equal(start({"path": str(path), "tilt_mrad": [0.0, 0.0]}), [0.0, 0.0])
    # a direction needs both components: one number (the diagonal) is refused, as is NaN
    for bad in (5.0, [1.0, 2.0, 3.0], [float("nan"), 0.0]):
        with pytest.raises(ValueError, match="pair of finite numbers"):
            Hdf5Config(path=str(path), tilt_mrad=bad)
    with h5py.File(path, "a") as f:
        f.attrs["tilt_mrad"] = np.array([1.0, 2.0, 3.0])
    with pytest.raises(DataError, match="tilt_mrad.*pair"):
        load_hdf5(Hdf5Config(path=str(path)), LoadContext())
    with h5py.File(path, "a") as f:
        del f.attrs["tilt_mrad"]
    np.testing.assert_array_equal(start({"path": str(path)}), [0.0, 0.0])


def test_a_state_to_start_from_keeps_its_own_tilt(tmp_path):
    """``init.state`` keeps the state's tilt, not the data's."""
    import attrs

    from phaser_core.plan import load_plan
    from phaser_core.registry import get_registry
    from phaser_core.runner import initial_state, load_data
    from phaser_core.statefile import save_state

    path = tmp_path / "tilted.h5"
    write_hdf5(simulate(spec_from_dict({**TINY, "tilt_mrad": [1.5, -2.5]})), path)
    reg = get_registry()

    def plan(**init):
        return load_plan({"file_type": "phaser_plan", "version": 1, "raw_data": {"type": "hdf5", "path": str(path)},
                          "init": init, "engines": [{"type": "conventional", "niter": 1}]})

    fresh = plan()
    state = initial_state(fresh, load_data(fresh, reg, tmp_path), reg, tmp_path)
    save_state(attrs.evolve(state, tilt_mrad=np.array([0.25, 0.5])), tmp_path / "start.h5")
    from_state = plan(state=str(tmp_path / "start.h5"))
    got = initial_state(from_state, load_data(from_state, reg, tmp_path), reg, tmp_path).tilt_mrad
    np.testing.assert_array_equal(got, [0.25, 0.5])


def test_hdf5_errors_name_the_problem(h5file, tmp_path):
    with pytest.raises(DataError, match="patterns_noisy.*datasets in the file"):
        load_hdf5(Hdf5Config(path=str(h5file), key="patterns_noisy"), LoadContext())
    with pytest.raises(DataError, match="does not exist"):
        load_hdf5(Hdf5Config(path="missing.h5"), LoadContext(plan_dir=tmp_path))


def _write_empad(tmp_path, frames, meta):
    raw = tmp_path / "scan_x3_y2.raw"
    frames.astype("<f4").tofile(raw)
    meta = {"raw_filename": raw.name, **meta}
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    return tmp_path / "meta.json"


def test_empad_raw_and_metadata_with_defocus_sign_flip(tmp_path):
    rng = np.random.default_rng(0)
    frames = rng.uniform(0, 100, size=(6, 130, 128)).astype(np.float32)
    meta = {"file_type": "empad_metadata", "version": "2.0", "name": "t", "voltage": 200e3,
            "conv_angle": 18.0, "defocus": 2e-8, "diff_step": 0.8, "adu": 4.0, "scan_rotation": 0.0,
            "scan_shape": [3, 2], "scan_fov": [3e-10, 2e-10], "scan_step": [1e-10, 1.5e-10]}
    path = _write_empad(tmp_path, frames, meta)
    data = load_empad(EmpadConfig(path=str(path)), LoadContext())
    assert data.patterns.shape == (6, 128, 128)
    # 2 extra rows dropped, rows reversed, divided by the ADU
    np.testing.assert_allclose(data.patterns, frames[:, 127::-1, :] / 4.0, rtol=1e-6)
    assert data.defocus_A == pytest.approx(-200.0)  # phaser +200 Å (overfocus) -> ours -200 Å
    assert data.energy_eV == 200e3 and data.convergence_angle_mrad == 18.0
    assert data.scan_shape == (2, 3)  # metadata [x, y]
    assert data.scan_step_A == pytest.approx((1.5, 1.0))  # (y, x) [Å]
    dk = 0.8e-3 / wavelength_A(200e3)
    assert data.reciprocal_sampling_invA == pytest.approx((dk, dk))
    assert data.mask.shape == (128, 128) and not data.mask[0].any() and data.mask[2:-2, 2:-2].all()


def test_empad_scan_rotation_is_kept_but_not_applied(tmp_path):
    """The metadata's ``scan_rotation`` (its sign against ours unpinned) is kept under its
    own key: under ``scan_rotation_deg`` the raster built from the metadata turned by it."""
    from phaser_std.data.preprocess import raster_positions
    from phaser_std.physics.scan import raster_scan

    meta = {"file_type": "empad_metadata", "version": "2.0", "name": "t", "voltage": 200e3, "conv_angle": 18.0,
            "defocus": 2e-8, "diff_step": 0.8, "adu": 1.0, "scan_rotation": 30.0, "scan_shape": [3, 2],
            "scan_fov": [3e-10, 2e-10], "scan_step": [1e-10, 1.5e-10]}
    data = load_empad(EmpadConfig(path=str(_write_empad(tmp_path, np.ones((6, 130, 128), np.float32), meta))),
                      LoadContext())
    assert data.extra["empad_scan_rotation_deg"] == 30.0 and "scan_rotation_deg" not in data.extra
    np.testing.assert_array_equal(raster_positions(data), raster_scan((2, 3), (1.5, 1.0)))


def test_empad_simulation_is_not_scaled_and_plan_overrides(tmp_path):
    frames = np.ones((6, 130, 128), np.float32)
    meta = {"file_type": "pyMultislicer_metadata", "name": "s", "voltage": 300e3, "adu": 10.0,
            "scan_rotation": 0, "scan_shape": [3, 2], "scan_fov": [1, 1], "scan_step": [1e-10, 1e-10],
            "defocus": -1e-9, "diff_step": 1.0}
    path = _write_empad(tmp_path, frames, meta)
    data = load_empad(EmpadConfig(path=str(path), defocus_A=5.0, flip_x=True), LoadContext())
    np.testing.assert_array_equal(data.patterns, 1.0)
    assert data.defocus_A == 5.0


def test_empad_raw_file_alone_uses_name_for_scan_shape(tmp_path):
    frames = np.zeros((6, 130, 128), np.float32)
    raw = tmp_path / "scan_x3_y2.raw"
    frames.tofile(raw)
    data = load_empad(EmpadConfig(path=str(raw), energy_eV=200e3, angular_sampling_mrad=1.0), LoadContext())
    assert data.scan_shape == (2, 3)
    with pytest.raises(DataError, match="whole number of EMPAD frames"):
        (tmp_path / "bad.raw").write_bytes(b"\0" * 100)
        load_empad(EmpadConfig(path=str(tmp_path / "bad.raw")), LoadContext())


@pytest.mark.parametrize("stored", [np.float32, np.uint16])
def test_rsciio_reads_a_hspy_file(tmp_path, stored):
    """Float and 16-bit count files; counts divided by a gain become float (never truncated
    in their integer dtype), and without a gain 16-bit counts stay as they are."""
    pytest.importorskip("rsciio", reason="rosettasciio not installed (pip install phaser-ptycho[formats])")
    from rsciio.hspy import file_writer

    from phaser_std.data.loaders.rsciio import RsciioConfig, load_rsciio

    arr = np.arange(2 * 3 * 8 * 8, dtype=stored).reshape(2, 3, 8, 8)
    axes = [
        {"name": "y", "size": 2, "scale": 0.05, "offset": 0.0, "units": "nm", "navigate": True},
        {"name": "x", "size": 3, "scale": 0.05, "offset": 0.0, "units": "nm", "navigate": True},
        {"name": "ky", "size": 8, "scale": 2.0, "offset": -8.0, "units": "1/nm", "navigate": False},
        {"name": "kx", "size": 8, "scale": 2.0, "offset": -8.0, "units": "1/nm", "navigate": False},
    ]
    md = {"General": {"title": "t"}, "Signal": {"signal_type": ""},
          "Acquisition_instrument": {"TEM": {"beam_energy": 200.0, "convergence_angle": 20.0}}}
    path = tmp_path / "d.hspy"
    file_writer(str(path), {"data": arr, "axes": axes, "metadata": md, "original_metadata": {},
                            "tmp_parameters": {}, "attributes": {"_lazy": False}, "package_info": {},
                            "learning_results": {}, "models": {}})
    data = load_rsciio(RsciioConfig(path=str(path), counts_per_electron=2.0), LoadContext())
    assert data.patterns.dtype == np.float32
    np.testing.assert_array_equal(data.patterns, arr.reshape(6, 8, 8) / 2)
    as_stored = load_rsciio(RsciioConfig(path=str(path)), LoadContext()).patterns
    assert as_stored.dtype == stored
    np.testing.assert_array_equal(as_stored, arr.reshape(6, 8, 8))
    assert data.scan_shape == (2, 3)
    assert data.scan_step_A == pytest.approx((0.5, 0.5))
    assert data.reciprocal_sampling_invA == pytest.approx((0.2, 0.2))
    assert data.energy_eV == 200e3 and data.convergence_angle_mrad == 20.0


def test_rsciio_missing_tells_what_to_install(monkeypatch, tmp_path):
    import importlib

    from phaser_std.data.loaders import rsciio as mod

    real = importlib.import_module

    def fake(name, *a, **k):
        if name == "rsciio" or name.startswith("rsciio."):
            raise ImportError("No module named 'rsciio'")
        return real(name, *a, **k)

    monkeypatch.setattr(mod.importlib, "import_module", fake)
    (tmp_path / "x.mib").write_bytes(b"")
    with pytest.raises(DataError, match=r"pip install phaser-ptycho\[formats\]"):
        mod.load_rsciio(mod.RsciioConfig(path=str(tmp_path / "x.mib")), LoadContext())


def test_hdf5_memory_maps_contiguous_float32(h5file):
    data = load_hdf5(Hdf5Config(path=str(h5file)), LoadContext())
    assert isinstance(data.patterns, np.memmap) and not data.patterns.flags.writeable
    read = load_hdf5(Hdf5Config(path=str(h5file), mmap=False), LoadContext())
    assert not isinstance(read.patterns, np.memmap)
    np.testing.assert_array_equal(np.asarray(data.patterns), read.patterns)
    as64 = load_hdf5(Hdf5Config(path=str(h5file)), LoadContext(dtype="float64"))
    assert as64.patterns.dtype == np.float64 and not isinstance(as64.patterns, np.memmap)
    np.testing.assert_array_equal(as64.patterns, read.patterns.astype(np.float64))


def test_hdf5_chunked_compressed_file(tmp_path):
    path = tmp_path / "c.h5"
    arr = np.random.default_rng(1).uniform(size=(2, 3, 8, 8)).astype(np.float32)
    with h5py.File(path, "w") as f:
        f.create_dataset("patterns", data=arr, chunks=(1, 1, 8, 8), compression="gzip")
        f.attrs["angular_sampling_mrad"] = 1.5
        f.attrs["energy_eV"] = 80e3
    data = load_hdf5(Hdf5Config(path=str(path)), LoadContext())
    np.testing.assert_array_equal(data.patterns, arr.reshape(6, 8, 8))
    assert data.scan_shape == (2, 3)
    assert data.reciprocal_sampling_invA[0] == pytest.approx(1.5e-3 / wavelength_A(80e3))


def _with_patterns(src, dst, patterns, **kw):
    """A copy of hdf5 raw-data file ``src`` whose /patterns are ``patterns``."""
    with h5py.File(src, "r") as f, h5py.File(dst, "w") as g:
        for key, value in f.attrs.items():
            g.attrs[key] = value
        for key in f:
            if key != "patterns":
                f.copy(key, g)
        g.create_dataset("patterns", data=patterns, **kw)
    return dst


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_counts_of_8_or_16_bits_are_read_as_they_are(h5file, tmp_path, dtype):
    """uint8/uint16 counts come through the loaders in their own dtype (a quarter or half
    of float32's memory; memory-mapped when contiguous), other integers as the run's float."""
    with h5py.File(h5file, "r") as f:
        counts = f["patterns"][...]
    assert np.array_equal(counts, np.rint(counts)) and counts.max() < 256
    path = _with_patterns(h5file, tmp_path / "counts.h5", counts.astype(dtype))
    data = load_hdf5(Hdf5Config(path=str(path)), LoadContext())
    assert data.patterns.dtype == dtype and isinstance(data.patterns, np.memmap)
    np.testing.assert_array_equal(data.patterns, counts.reshape(data.patterns.shape))
    squeezed = _with_patterns(h5file, tmp_path / "gzip.h5", counts.astype(dtype), chunks=True, compression="gzip")
    assert load_hdf5(Hdf5Config(path=str(squeezed)), LoadContext()).patterns.dtype == dtype
    wide = _with_patterns(h5file, tmp_path / "int32.h5", counts.astype(np.int32))
    assert load_hdf5(Hdf5Config(path=str(wide)), LoadContext()).patterns.dtype == np.float32
    np.save(tmp_path / "counts.npy", counts.astype(dtype))
    npy = load_npy(NpyConfig(path=str(tmp_path / "counts.npy"), energy_eV=300e3), LoadContext())
    assert npy.patterns.dtype == dtype


def test_a_run_on_16_bit_counts_equals_one_on_their_float32_copy(tmp_path):
    """The same counts stored as uint16 and as float32 reconstruct alike, to the last bit."""
    from recon import make_dataset, run

    floats = make_dataset(tmp_path / "f32.h5", scan={"shape": [6, 6]}, dose=1e5)
    with h5py.File(floats, "r") as f:
        counts = f["patterns"][...].astype(np.uint16)
    ints = _with_patterns(floats, tmp_path / "u16.h5", counts)
    engines = [{"type": "conventional", "niter": 2, "grouping": {"size": 12}, "solver": {"type": "lsqml"}}]
    a, b = run(ints, engines), run(floats, engines)
    np.testing.assert_array_equal(a.object.data, b.object.data)
    np.testing.assert_array_equal(a.probe.data, b.probe.data)
    assert a.progress.loss == b.progress.loss
