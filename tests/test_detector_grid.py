"""An engine's ``sim_shape``: the run moved to another detector grid (phaser_std.physics.grid):
patterns cropped or padded about the zero angle (padding masked), the probe's spectrum
likewise, the object resampled to the new pixel, the probe window and positions kept."""

from __future__ import annotations

import numpy as np
import pytest
from recon import ground_truth, make_dataset, run

from phaser_core.data import RawData
from phaser_core.errors import DataError
from phaser_core.memory import DataShape, on_detector_grid
from phaser_core.state import ObjectState, ProbeState, ReconsState
from phaser_std.analysis import score_state
from phaser_std.physics.grid import on_grid, resize_object, resize_patterns, resize_probe
from phaser_std.physics.probe import make_probe


def _probe(n: int = 32, sampling: float = 0.25) -> ProbeState:
    data = make_probe((n, n), sampling, 0.0251, 25.0, defocus_A=40.0)
    return ProbeState(data=np.asarray(data)[None] * 30.0, sampling_A=(sampling, sampling))


def test_a_probe_padded_keeps_its_far_field_and_cropping_back_restores_it():
    probe = _probe()
    big = resize_probe(probe, (48, 64))
    assert big.sampling_A == pytest.approx((0.25 * 32 / 48, 0.25 * 32 / 64))  # the window [Å] stays
    assert np.sum(np.abs(big.data) ** 2) == pytest.approx(np.sum(np.abs(probe.data) ** 2), rel=1e-12)

    def far(p):  # unitary, as the engines' far field: each detector pixel's intensity [e⁻]
        spec = np.fft.fft2(np.fft.ifftshift(p.data, axes=(-2, -1)), norm="ortho")
        return np.abs(np.fft.fftshift(spec, axes=(-2, -1))) ** 2

    old, new = far(probe)[0], far(big)[0]
    inner = new[24 - 16:24 + 16, 32 - 16:32 + 16]
    np.testing.assert_allclose(inner, old, rtol=0, atol=1e-12 * old.max())  # the same pixels, the same values
    assert new.sum() == pytest.approx(inner.sum(), rel=1e-12)  # and nothing outside them
    back = resize_probe(big, (32, 32))
    np.testing.assert_allclose(back.data, probe.data, atol=1e-10 * np.abs(probe.data).max())


def test_patterns_are_cropped_and_padded_about_the_zero_angle_and_padding_is_masked():
    p = np.random.default_rng(0).poisson(5.0, size=(3, 16, 16)).astype(np.float32)
    data = RawData(patterns=p, reciprocal_sampling_invA=(0.2, 0.2))
    out = resize_patterns(data, (12, 20))
    assert out.patterns.shape == (3, 12, 20)
    np.testing.assert_array_equal(out.patterns[:, :, 2:18], p[:, 2:14, :])  # zero angle: 8 -> 6 and 10
    assert out.mask.shape == (12, 20) and not out.mask[:, :2].any() and out.mask[:, 2:18].all()
    assert out.reciprocal_sampling_invA == (0.2, 0.2)


def test_the_object_is_resampled_to_the_new_pixel_exactly_in_the_same_place():
    s = 0.25

    def phase(y, x):
        return 0.3 * np.sin(2 * np.pi * y / 4.0) * np.cos(2 * np.pi * x / 5.0)

    def resampled(h, w):
        yy, xx = np.mgrid[0:h, 0:w] * s
        obj = ObjectState(data=np.exp(1j * phase(yy + 1.0, xx - 2.0))[None], sampling_A=(s, s), corner_A=(1.0, -2.0))
        new = resize_object(obj, (s * 32 / 48, s * 32 / 48), (32, 48, 32, 48))
        assert new.sampling_A == (s * 32 / 48, s * 32 / 48)
        gy, gx = new.coords_A()
        return np.angle(new.data[0]), phase(gy[:, None], gx[None, :])

    got, truth = resampled(48, 40)  # whole periods: Fourier interpolation is exact
    np.testing.assert_allclose(got, truth, atol=1e-9)
    got, truth = resampled(48, 41)  # padded with vacuum to 42 columns: exact far from the edges
    assert got.shape == (72, 63)
    np.testing.assert_allclose(got[:, 20:-20], truth[:, 20:-20], atol=1e-2)


def test_a_probe_window_that_is_not_the_datas_is_refused():
    probe = _probe(32, 0.25)  # window 8 Å: a detector of 1/8 Å⁻¹ per pixel
    state = ReconsState(probe=probe, object=ObjectState(data=np.ones((1, 60, 60), complex), sampling_A=(0.25, 0.25),
                                                         corner_A=(0.0, 0.0)), scan_A=np.zeros((3, 2)))
    same = RawData(patterns=np.zeros((3, 32, 32), np.float32), reciprocal_sampling_invA=(0.125, 0.125))
    assert on_grid(state, same, None) == (state, same)
    wider = RawData(patterns=np.zeros((3, 48, 48), np.float32), reciprocal_sampling_invA=(0.125, 0.125))
    moved, data = on_grid(state, wider, None)  # the state's grid: the data cropped to it
    assert data.pattern_shape == (32, 32) and moved is state
    other = RawData(patterns=np.zeros((3, 48, 48), np.float32), reciprocal_sampling_invA=(0.1, 0.1))
    with pytest.raises(DataError, match="window of"):
        on_grid(state, other, None)


def test_a_staged_run_moves_between_grids_and_the_planner_follows(tmp_path):
    data = make_dataset(tmp_path / "d.h5", scan={"shape": [10, 10]}, dose=1e6)
    stage = {"type": "conventional", "grouping": {"size": 25}}
    state = run(data, [{**stage, "niter": 8, "sim_shape": [48, 48]}, {**stage, "niter": 4},
                       {**stage, "niter": 4, "sim_shape": [64, 64]}])
    assert state.probe.data.shape[-2:] == (64, 64) and state.object.sampling_A == pytest.approx((1 / 6.4,) * 2)
    assert score_state(state, ground_truth(data))["pearson"] > 0.95
    ds, shapes = on_detector_grid(DataShape(n_patterns=100, pattern_shape=(64, 64), host_itemsize=4),
                                  {"probe": (1, 64, 64), "object": (1, 120, 90), "scan": (100, 2)}, (48, 48))
    obj = ObjectState(data=np.ones((1, 120, 90), np.complex64), sampling_A=(0.1, 0.1), corner_A=(0.0, 0.0),
                      thicknesses_A=np.zeros(1))
    resized = resize_object(obj, (0.1 * 64 / 48,) * 2, (64, 48, 64, 48))
    assert ds.pattern_shape == (48, 48) and shapes["probe"] == (1, 48, 48)
    assert shapes["object"] == (1, *resized.shape) == (1, 90, 69)  # 90 padded to 92, then x 48/64


def test_a_crop_into_the_probes_spectrum_keeps_each_kept_pixels_intensity_as_the_datas():
    """Cropped below the bright-field disc, the probe's far field is the cropped one, pixel
    by pixel, as the cropped patterns are: not rescaled to the old total (too bright for the
    data, and a later engine does not scale the probe to the data again)."""
    probe = _probe(32, 0.25)  # aperture radius ~ 0.025/0.0251 Å⁻¹ = 8 px of 1/8 Å⁻¹

    def far(p):
        return np.abs(np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(p, axes=(-2, -1)), norm="ortho"),
                                      axes=(-2, -1))) ** 2

    vacuum = far(probe.data)  # the patterns of a vacuum scan, centred
    data = RawData(patterns=np.repeat(vacuum, 3, axis=0), reciprocal_sampling_invA=(0.125, 0.125))
    state = ReconsState(probe=probe, object=ObjectState(data=np.ones((1, 64, 64), complex), sampling_A=(0.25, 0.25),
                                                         corner_A=(-4.0, -4.0)), scan_A=np.zeros((3, 2)))
    moved, cropped = on_grid(state, data, (12, 12))
    assert cropped.patterns[0].sum() < 0.95 * vacuum.sum()  # the crop cuts into the disc
    np.testing.assert_allclose(far(moved.probe.data)[0], cropped.patterns[0], rtol=0, atol=1e-9 * vacuum.max())


@pytest.mark.parametrize("amplitude, offset", [(4.0, 0.0), (0.3, 3.0)])
def test_an_object_whose_phase_wraps_is_resampled_without_ringing(amplitude, offset):
    """A phase beyond ±π (a strong object, or a weak one whose offset drifted near π) is
    unwrapped before the Fourier interpolation: resampled, it is the same object."""
    s = 0.25

    def phase(y, x):
        return offset + amplitude * (np.sin(2 * np.pi * y / 4.0) * np.cos(2 * np.pi * x / 5.0)) ** 2

    yy, xx = np.mgrid[0:48, 0:40] * s
    obj = ObjectState(data=np.exp(1j * phase(yy, xx))[None], sampling_A=(s, s), corner_A=(0.0, 0.0))
    new = resize_object(obj, (s * 32 / 48, s * 32 / 48), (32, 48, 32, 48))
    gy, gx = new.coords_A()
    truth = np.exp(1j * phase(gy[:, None], gx[None, :]))
    np.testing.assert_allclose(new.data[0], truth, atol=1e-9)
