"""What a plan from the published phaser (phaserEM 0.3) means here: its tilt and raster
rotation signs are the opposite of ours (docs/conventions.md, "From the published
phaser"). phaserEM's formulas are written out from its documented behaviour
(../shared/design/PHASER_REFERENCE.md 6.5, 6.6) and compared with our functions."""

from __future__ import annotations

import numpy as np
import pytest

from phaser_std.physics.propagation import fresnel_propagator
from phaser_std.physics.scan import raster_scan


def _phaserem_propagator(shape, sampling_A, wavelength_A, dz_A, tilt_mrad):
    """H(k; Δz) = exp(−iπΔz(λ|k|² − 2(k_x tan t_x + k_y tan t_y))), corner-centred."""
    ky = np.fft.fftfreq(shape[0], sampling_A)[:, None]
    kx = np.fft.fftfreq(shape[1], sampling_A)[None, :]
    ty, tx = np.tan(np.asarray(tilt_mrad) * 1e-3)
    return np.exp(-1j * np.pi * dz_A * (wavelength_A * (ky**2 + kx**2) - 2 * (kx * tx + ky * ty)))


def _phaserem_raster(shape, step_A, rotation_deg):
    """Indices (i − n/2), rotated as row vectors times Rᵀ (+x toward −y), then scaled."""
    ny, nx = shape
    yy, xx = np.meshgrid(np.arange(ny) - ny / 2, np.arange(nx) - nx / 2, indexing="ij")
    v = np.stack([yy.ravel(), xx.ravel()], axis=-1)
    th = np.deg2rad(rotation_deg)
    r = np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])
    return (v @ r.T) * np.asarray(step_A)


@pytest.mark.parametrize("tilt", [(0.0, 3.0), (-4.0, 1.5)])
def test_a_phaserem_tilt_is_our_tilt_negated(tilt):
    shape, sampling, wavelength, dz = (32, 48), 0.2, 0.0251, 20.0
    theirs = _phaserem_propagator(shape, sampling, wavelength, dz, tilt)
    ours = fresnel_propagator(shape, sampling, wavelength, dz, tuple(-t for t in tilt), bandlimit=None)
    np.testing.assert_allclose(ours, theirs, atol=1e-12)
    same_sign = fresnel_propagator(shape, sampling, wavelength, dz, tilt, bandlimit=None)
    assert np.max(np.abs(same_sign - theirs)) > 0.1


def test_a_phaserem_raster_rotation_is_ours_negated_and_its_grid_is_off_centre():
    shape, step = (5, 6), 0.4
    theirs = _phaserem_raster(shape, step, 30.0)
    ours = raster_scan(shape, step, rotation_deg=-30.0)
    # phaserEM's grid runs from −n/2 to n/2 − 1: half a step off ours, which is centred
    np.testing.assert_allclose(ours, theirs - theirs.mean(axis=0), atol=1e-12)
    assert np.max(np.abs(raster_scan(shape, step, rotation_deg=30.0) - (theirs - theirs.mean(axis=0)))) > 0.1
