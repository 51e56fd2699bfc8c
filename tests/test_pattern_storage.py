"""Patterns on the backend: counted data is stored exactly as uint8 (up to 255 counts) or
uint16 (a quarter or half of float32's memory), other data in the real dtype; either way the
engines see the same numbers."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from recon import make_dataset, run

from phaser_core.data import RawData, count_dtype
from phaser_std.engines.common import group_patterns, patterns_to_device


def test_count_dtype_takes_only_whole_numbers_and_the_smallest_dtype_that_holds_them():
    counts = np.array([[0.0, 3.0], [255.0, 12.0]], np.float32)
    assert count_dtype(counts) == np.uint8
    assert count_dtype(counts.astype(np.uint32)) == np.uint8
    assert count_dtype(counts + 256.0) == np.uint16
    assert count_dtype(np.array([65535.0])) == np.uint16
    assert count_dtype(counts + 0.5) is None
    assert count_dtype(np.array([-1.0, 2.0])) is None
    assert count_dtype(np.array([65536.0])) is None
    assert count_dtype(np.array([np.nan, 1.0])) is None
    # checked block by block: a fraction, or a count above 255, in a later block is found
    big = np.zeros(100, np.float32)
    big[97] = 0.25
    assert count_dtype(big, block=10) is None
    big[97] = 300.0
    assert count_dtype(big, block=10) == np.uint16


@pytest.mark.parametrize("offset,stored", [(0.0, np.uint8), (1000.0, np.uint16), (0.5, np.float32)])
def test_patterns_on_the_backend_are_exact_and_corner_centred(backend, offset, stored):
    rng = np.random.default_rng(0)
    host = rng.poisson(40.0, size=(5, 6, 8)).astype(np.float32) + offset
    dev = patterns_to_device(backend, host)
    assert backend.to_numpy(dev).dtype == stored
    idx = backend.asarray(np.array([3, 0, 3]))
    got = backend.to_numpy(group_patterns(backend, dev, idx))
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, np.fft.ifftshift(host[[3, 0, 3]], axes=(-2, -1)))


@pytest.mark.parametrize("backend_name", ["jax", "numpy"])
def test_counted_and_float_storage_reconstruct_identically(tmp_path, monkeypatch, backend_name):
    """The same counted data through integer storage and through float32 storage: the same
    reconstruction to the last bit (whole numbers convert exactly, and the probe scaling's
    total is the same: numpy sums counted data in uint64 and float data in float64)."""
    if backend_name == "jax":
        pytest.importorskip("jax")
    data = make_dataset(tmp_path / "counted.h5", scan={"shape": [8, 8]}, dose=1e5)
    with h5py.File(data, "r") as f:
        assert count_dtype(f["patterns"][...]) is not None  # so the first run stores integers
    engines = [{"type": "conventional", "niter": 2, "grouping": {"size": 16}, "solver": {"type": "lsqml"}},
               {"type": "gradient", "niter": 2, "grouping": {"size": 16}}]
    stored = run(data, engines, backend=backend_name)
    monkeypatch.setattr(RawData, "counted_dtype", property(lambda self: None))
    as_float = run(data, engines, backend=backend_name)
    np.testing.assert_array_equal(stored.object.data, as_float.object.data)
    np.testing.assert_array_equal(stored.probe.data, as_float.probe.data)
    assert stored.progress.loss == as_float.progress.loss


def test_a_run_reads_the_patterns_once_to_tell_counted_data(tmp_path, monkeypatch):
    # the memory check and each engine need the storage dtype: one pass over the patterns
    import phaser_core.data as data_module

    data = make_dataset(tmp_path / "counted.h5", scan={"shape": [6, 6]}, dose=1e5)
    calls = []
    original = data_module.count_dtype
    monkeypatch.setattr(data_module, "count_dtype", lambda patterns, block=1 << 24: calls.append(1)
                        or original(patterns, block))
    engines = [{"type": "conventional", "niter": 1, "grouping": {"size": 12}, "solver": {"type": "epie"}},
               {"type": "gradient", "niter": 1, "grouping": {"size": 12}}]
    run(data, engines, backend="numpy", out_dir=tmp_path / "run")
    assert len(calls) == 1
