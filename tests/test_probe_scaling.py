"""Scaling the probe to the data (the dry run): the single-slice shortcut for a unit-amplitude
object and the multislice one for a vacuum start (Parseval: no forward pass) give the
forward pass's scale, and any other object takes the forward pass."""

from __future__ import annotations

import numpy as np
import pytest

from helpers import assert_close
from phaser_core.state import ObjectState
from phaser_std.engines import common


class _Counts:
    """The one thing the scaling reads from a pattern feed: the data's total [e⁻]."""

    def __init__(self, total: float):
        self.total = total

    def total_counts(self) -> float:
        return self.total


def _case(rng, amplitude):
    modes, n_px, h = 2, 16, 48
    probe = (rng.standard_normal((modes, n_px, n_px)) + 1j * rng.standard_normal((modes, n_px, n_px)))
    phase = rng.uniform(-1.0, 1.0, (1, h, h))
    obj = amplitude * np.exp(1j * phase)
    geometry = ObjectState(data=None, sampling_A=(0.5, 0.5), corner_A=(0.0, 0.0))
    # off-grid positions (sub-pixel shifts), every view inside the object; 70: a padded batch
    scan_A = rng.uniform(0.5 * n_px * 0.5 + 0.5, (h - n_px // 2 - 1) * 0.5, (70, 2))
    return probe, obj, geometry, scan_A


def _scaled(bk, probe, obj, geometry, scan_A, total, batch=32):
    out = common.scale_probe_to_data(bk, bk.asarray(probe, dtype=bk.complex_dtype),
                                     bk.asarray(obj, dtype=bk.complex_dtype), _Counts(total), scan_A,
                                     geometry, None, batch=batch)
    return bk.to_numpy(out)


def test_unit_amplitude_shortcut_equals_the_forward_pass(backend, monkeypatch):
    rng = np.random.default_rng(3)
    probe, obj, geometry, scan_A = _case(rng, 1.0)
    assert common.unit_amplitude(obj.astype(backend.complex_dtype))
    with monkeypatch.context() as m:  # the shortcut runs no forward model
        m.setattr(common, "forward_intensity", lambda *a, **k: pytest.fail("forward pass on the shortcut"))
        short = _scaled(backend, probe, obj, geometry, scan_A, 1e6)
    monkeypatch.setattr(common, "unit_amplitude", lambda o, tol=1e-6: False)
    full = _scaled(backend, probe, obj, geometry, scan_A, 1e6)
    assert_close(short, full, backend.dtype, factor=10, err_msg="shortcut against the forward pass")
    # and the scale is the data's total over n·Σ|P|²
    want = probe * np.sqrt(1e6 / (scan_A.shape[0] * np.sum(np.abs(probe) ** 2)))
    assert_close(short, want, backend.dtype, factor=10)


@pytest.mark.parametrize("amplitude", [0.5, "patch"])
def test_other_objects_take_the_forward_pass(backend, amplitude):
    rng = np.random.default_rng(4)
    probe, obj, geometry, scan_A = _case(rng, 1.0)
    if amplitude == "patch":
        obj[0, 20:30, 20:30] *= 0.8  # one absorbing patch: the shortcut would be wrong
    else:
        obj = obj * amplitude
    assert not common.unit_amplitude(obj)
    got = _scaled(backend, probe, obj, geometry, scan_A, 1e6)
    unit = probe * np.sqrt(1e6 / (scan_A.shape[0] * np.sum(np.abs(probe) ** 2)))
    if amplitude == 0.5:  # |O|² = 1/4 everywhere: the probe takes twice the unit-object scale
        assert_close(got, 2 * unit, backend.dtype, factor=10)
    else:
        assert np.sum(np.abs(got) ** 2) > np.sum(np.abs(unit) ** 2) * (1 + 1e-3)


@pytest.mark.parametrize("tilt_mrad", [(0.0, 0.0), (3.0, -2.0)])
def test_multislice_vacuum_shortcut_equals_the_forward_pass(backend, monkeypatch, tilt_mrad):
    """Several slices, each all ones (a vacuum start): the model total is what the
    propagators' band limit keeps of the probe, without a forward pass. The probe here is
    white noise, so the band limit (2/3 of Nyquist) removes a large share of it and a scale
    that ignored it would be off by ~30%."""
    from phaser_std.physics.forward import make_propagators

    rng = np.random.default_rng(5)
    probe, obj, geometry, scan_A = _case(rng, 1.0)
    obj = np.ones((4,) + obj.shape[1:], dtype=np.complex128)
    props = make_propagators(backend, probe.shape[-2:], (0.5, 0.5), 0.0251, [8.0, 12.0, 8.0, 5.0], tilt_mrad)

    def scaled():
        return backend.to_numpy(common.scale_probe_to_data(
            backend, backend.asarray(probe, dtype=backend.complex_dtype),
            backend.asarray(obj, dtype=backend.complex_dtype), _Counts(1e6), scan_A, geometry, props, batch=32))

    assert common.constant_unit_slices(obj)
    with monkeypatch.context() as m:
        m.setattr(common, "forward_intensity", lambda *a, **k: pytest.fail("forward pass on the shortcut"))
        short = scaled()
    monkeypatch.setattr(common, "constant_unit_slices", lambda o, tol=1e-6: False)
    full = scaled()
    assert_close(short, full, backend.dtype, factor=10, err_msg="shortcut against the forward pass")
    unit = probe * np.sqrt(1e6 / (scan_A.shape[0] * np.sum(np.abs(probe) ** 2)))
    assert np.sum(np.abs(short) ** 2) > 1.2 * np.sum(np.abs(unit) ** 2)  # the band limit's share


def test_constant_unit_slices():
    ones = np.ones((3, 5, 6), dtype=np.complex64)
    assert common.constant_unit_slices(ones)
    assert common.constant_unit_slices(ones * np.exp(0.7j))  # one phase per slice: still a vacuum
    varied = ones.copy()
    varied[1, 2, 3] = np.exp(0.1j)  # unit modulus but not constant: the propagation mixes it
    assert not common.constant_unit_slices(varied)
    assert not common.constant_unit_slices(0.9 * ones)
