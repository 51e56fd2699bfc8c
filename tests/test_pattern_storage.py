"""Patterns on the backend: counted data is stored exactly as uint16 (half of float32's
memory), other data in the real dtype; either way the engines see the same numbers."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from recon import make_dataset, run

import phaser_std.engines.common as common
from phaser_std.engines.common import group_patterns, patterns_to_device, whole_counts


def test_whole_counts_accepts_only_whole_numbers_that_fit_uint16():
    counts = np.array([[0.0, 3.0], [65535.0, 12.0]], np.float32)
    assert whole_counts(counts)
    assert whole_counts(counts.astype(np.uint32))
    assert not whole_counts(counts + 0.5)
    assert not whole_counts(np.array([-1.0, 2.0]))
    assert not whole_counts(np.array([65536.0]))
    assert not whole_counts(np.array([np.nan, 1.0]))
    # checked block by block: a fraction in a later block is found
    big = np.zeros(100, np.float32)
    big[97] = 0.25
    assert not whole_counts(big, block=10)


@pytest.mark.parametrize("counted", [True, False])
def test_patterns_on_the_backend_are_exact_and_corner_centred(backend, counted):
    rng = np.random.default_rng(0)
    host = rng.poisson(40.0, size=(5, 6, 8)).astype(np.float32)
    if not counted:
        host = host + 0.5
    dev = patterns_to_device(backend, host)
    assert backend.to_numpy(dev).dtype == (np.uint16 if counted else np.float32)
    idx = backend.asarray(np.array([3, 0, 3]))
    got = backend.to_numpy(group_patterns(backend, dev, idx))
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, np.fft.ifftshift(host[[3, 0, 3]], axes=(-2, -1)))


@pytest.mark.parametrize("backend_name", ["jax", "numpy"])
def test_counted_and_float_storage_reconstruct_identically(tmp_path, monkeypatch, backend_name):
    """The same counted data through uint16 storage and through float32 storage: the same
    reconstruction to the last bit (whole numbers convert exactly, and the probe scaling's
    total is the same: numpy sums counted data in uint64 and float data in float64)."""
    if backend_name == "jax":
        pytest.importorskip("jax")
    data = make_dataset(tmp_path / "counted.h5", scan={"shape": [8, 8]}, dose=1e5)
    with h5py.File(data, "r") as f:
        assert whole_counts(f["patterns"][...])  # so the first run stores uint16
    engines = [{"type": "conventional", "niter": 2, "grouping": {"size": 16}, "solver": {"type": "lsqml"}},
               {"type": "gradient", "niter": 2, "grouping": {"size": 16}}]
    stored = run(data, engines, backend=backend_name)
    monkeypatch.setattr(common, "whole_counts", lambda patterns, block=0: False)
    as_float = run(data, engines, backend=backend_name)
    np.testing.assert_array_equal(stored.object.data, as_float.object.data)
    np.testing.assert_array_equal(stored.probe.data, as_float.probe.data)
    assert stored.progress.loss == as_float.progress.loss
