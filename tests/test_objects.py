"""Object grids, initial objects and resampling (slices, pixel size, probe modes)."""

import numpy as np
import pytest

from phaser_std.physics.forward import check_views_inside, scan_to_pixels
from phaser_std.physics.objects import (object_grid, random_object, resample_pixel_size, resample_slices,
                                        vacuum_object)
from phaser_std.physics.probe import make_modes, make_probe
from phaser_std.physics.resample import resample_modes
from phaser_std.physics.scan import raster_scan


def test_object_grid_covers_every_view():
    scan = raster_scan((5, 7), (1.3, 0.9), rotation_deg=17.0) + np.array([3.0, -2.0])
    for probe_shape in [(32, 32), (33, 31)]:
        shape, corner = object_grid(scan, probe_shape, (0.4, 0.35), pad_px=0)
        starts, frac = scan_to_pixels(scan, corner, (0.4, 0.35), probe_shape)
        check_views_inside(starts, probe_shape, shape)
        assert np.all(np.abs(frac) <= 0.5 + 1e-12)
        # tight: pixel-exact with no padding
        assert starts.min(axis=0).tolist() == [0, 0]


def test_vacuum_and_random_objects():
    scan = raster_scan((3, 3), 1.0)
    o = vacuum_object(scan, (16, 16), 0.5, n_slices=2, thicknesses_A=[5.0, 5.0])
    assert o.data.shape[0] == 2 and np.all(o.data == 1)
    np.testing.assert_array_equal(o.thicknesses_A, [5.0, 5.0])
    a = random_object(scan, (16, 16), 0.5, np.random.default_rng(3), phase_sigma_rad=0.01)
    b = random_object(scan, (16, 16), 0.5, np.random.default_rng(3), phase_sigma_rad=0.01)
    np.testing.assert_array_equal(a.data, b.data)
    np.testing.assert_allclose(np.abs(a.data), 1.0, atol=1e-12)
    assert 0.005 < np.std(np.angle(a.data)) < 0.02


@pytest.mark.parametrize("n_old,n_new", [(1, 4), (4, 1), (3, 5), (6, 4)])
def test_resample_slices_keeps_total_phase(n_old, n_new):
    rng = np.random.default_rng(0)
    phase = rng.uniform(-0.3, 0.3, size=(n_old, 8, 8))
    amp = rng.uniform(0.9, 1.0, size=(n_old, 8, 8))
    t = rng.uniform(2, 5, size=n_old)
    data = amp * np.exp(1j * phase)
    new, t_new = resample_slices(data, t, n_new)
    assert new.shape == (n_new, 8, 8)
    assert t_new.sum() == pytest.approx(t.sum(), rel=1e-12)
    np.testing.assert_allclose(np.prod(new, axis=0), np.prod(data, axis=0), rtol=1e-10)


def test_resample_pixel_size_keeps_smooth_phase():
    from phaser_core.state import ObjectState

    h = 64
    y, x = np.meshgrid(np.arange(h), np.arange(h), indexing="ij")
    phase = 0.2 * np.sin(2 * np.pi * 3 * x / h) * np.cos(2 * np.pi * 2 * y / h)
    obj = ObjectState(data=np.exp(1j * phase)[None], sampling_A=(0.5, 0.5), corner_A=(-10.0, -10.0))
    new = resample_pixel_size(obj, 0.25)
    assert new.shape == (128, 128) and new.sampling_A == (0.25, 0.25)
    cy, cx = new.coords_A()
    yy, xx = np.meshgrid(cy, cx, indexing="ij")
    ref = 0.2 * np.sin(2 * np.pi * 3 * (xx + 10) / (h * 0.5)) * np.cos(2 * np.pi * 2 * (yy + 10) / (h * 0.5))
    np.testing.assert_allclose(np.angle(new.data[0]), ref, atol=1e-10)


@pytest.mark.parametrize("n_new", [1, 2, 5])
def test_resample_modes_conserves_power(n_new):
    p = 2.0 * make_probe((32, 32), 0.3, 0.025, 25.0, defocus_A=60.0)
    m = make_modes(p, 3)
    out = resample_modes(m, n_new)
    assert out.shape == (n_new, 32, 32)
    assert np.sum(np.abs(out) ** 2) == pytest.approx(4.0, rel=1e-12)
    flat = out.reshape(n_new, -1)
    g = flat.conj() @ flat.T
    np.testing.assert_allclose(g - np.diag(np.diag(g)), 0.0, atol=1e-10)


def test_object_initializers_seeded_and_cover_scan():
    import attrs

    from phaser_core.context import InitContext
    from phaser_core.data import RawData
    from phaser_core.state import ProbeState
    from phaser_std.physics import initializers as ini

    scan = raster_scan((3, 3), 1.0)
    probe = ProbeState(data=np.ones((1, 16, 16), complex), sampling_A=(0.5, 0.5))
    ctx = InitContext(data=RawData(patterns=np.zeros((9, 16, 16))), seed=4, n_slices=3,
                      thicknesses_A=np.array([2.0, 2.0, 2.0]), probe=probe, scan_A=scan)
    a = ini.init_random_object(ini.RandomObjectConfig(phase_sigma_rad=0.01), ctx)
    b = ini.init_random_object(ini.RandomObjectConfig(phase_sigma_rad=0.01), ctx)
    np.testing.assert_array_equal(a.data, b.data)
    c = ini.init_random_object(ini.RandomObjectConfig(phase_sigma_rad=0.01), attrs.evolve(ctx, seed=5))
    assert not np.array_equal(a.data, c.data)
    v = ini.init_vacuum_object(ini.VacuumObjectConfig(), ctx)
    assert v.data.shape[0] == 3 and v.sampling_A == (0.5, 0.5)
    starts, _ = scan_to_pixels(scan, v.corner_A, v.sampling_A, (16, 16))
    check_views_inside(starts, (16, 16), v.shape)
    with pytest.raises(ValueError, match="probe and scan"):
        ini.init_vacuum_object(ini.VacuumObjectConfig(), attrs.evolve(ctx, probe=None))


def test_a_phase_beyond_pi_is_shared_between_slices_as_itself():
    """One slice with a 4 rad peak (stored wrapped, as 4 − 2π) into 4 slices: 1 rad each at
    the peak, not (4 − 2π)/4; the product of the slices is the old slice either way."""
    yy, xx = np.mgrid[0:40, 0:40]
    phase = 4.0 * np.exp(-((yy - 20.0) ** 2 + (xx - 20.0) ** 2) / (2 * 5.0 ** 2))
    new, _ = resample_slices(np.exp(1j * phase)[None], np.array([8.0]), 4)
    np.testing.assert_allclose(np.angle(new), np.broadcast_to(phase / 4, new.shape), atol=1e-12)
    np.testing.assert_allclose(np.prod(new, axis=0), np.exp(1j * phase), atol=1e-12)


def test_a_noisy_phase_is_not_unwrapped_into_false_turns():
    """Noise (0.2 rad) and a 2.9 rad column: neighbours jump by more than π, so no path
    unwrap is trustworthy (a row unwrap would add 2π to the rest of a row). Split into two
    slices, each gets half of the phase about the mean, everywhere; an offset near π (3 rad)
    is shared out as itself."""
    rng = np.random.default_rng(0)
    phase = 0.2 * rng.normal(size=(32, 32))
    phase[:, 10] += 2.9
    for offset in (0.0, 3.0):
        d = np.exp(1j * (phase + offset))[None]
        new, _ = resample_slices(d, np.array([8.0]), 2)
        mean = np.angle(np.sum(d))
        half = (np.angle(d[0] * np.exp(-1j * mean)) + mean) / 2
        np.testing.assert_allclose(new, np.broadcast_to(np.exp(1j * half), new.shape), atol=1e-12)
        np.testing.assert_allclose(np.prod(new, axis=0), d[0], atol=1e-12)


@pytest.mark.parametrize("size, new", [(64, 128), (80, 40), (64, 96), (63, 126), (50, 75)])
def test_resampling_a_pure_phase_object_keeps_it_a_phase_object(size, new):
    """The log's spectrum at an even size has one ±N/2 bin: copied to one side when padding
    (or left out when cropping) it turned phase into amplitude, |O| 0.82-1.23 for 64 -> 128."""
    from phaser_core.state import ObjectState

    phase = 0.3 * np.random.default_rng(0).standard_normal((2, size, size))  # detail up to Nyquist
    obj = ObjectState(data=np.exp(1j * phase), sampling_A=(0.2, 0.2), corner_A=(0.0, 0.0),
                      thicknesses_A=np.array([2.0, 2.0]))
    out = resample_pixel_size(obj, 0.2 * size / new)
    assert out.shape == (new, new)
    np.testing.assert_allclose(np.abs(out.data), 1.0, atol=1e-12)
    # and the phase's mean is kept (the zero frequency)
    np.testing.assert_allclose(np.angle(out.data).mean(axis=(-2, -1)), phase.mean(axis=(-2, -1)), atol=1e-12)


@pytest.mark.parametrize("thicknesses,shares", [
    ([5.0, 5.0, 0.0], [[1, 0, 0], [0, 1, 1]]),        # the last slice sits at the exit: in new slice 1
    ([5.0, 0.0, 5.0], [[1, 0, 0], [0, 1, 1]]),        # at depth 5, where new slice 1 starts
    ([0.0, 4.0, 6.0], [[1, 1, 1 / 6], [0, 0, 5 / 6]]),  # at the entrance: in new slice 0
])
def test_a_slice_of_no_thickness_goes_whole_into_the_new_slice_at_its_depth(thicknesses, shares):
    """Thicknesses >= 0 are valid (the last one is never used); a single zero made the
    whole resampled object NaN (0/0 in the depth weights). Each new slice's phase is the
    old slices' phases weighted by the share of each inside it; a slice of no thickness
    goes whole into the new slice at its depth."""
    rng = np.random.default_rng(1)
    data = np.exp(1j * 0.2 * rng.standard_normal((3, 8, 8)))
    new, t = resample_slices(data, np.array(thicknesses), 2)
    assert np.isfinite(new).all()
    np.testing.assert_allclose(t, [5.0, 5.0])
    want = np.tensordot(np.asarray(shares, dtype=float), np.angle(data), axes=1)
    np.testing.assert_allclose(np.angle(new), want, atol=1e-12)
