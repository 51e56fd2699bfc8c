"""Fresnel propagator: unitarity, band limit, defocus sign, tilt displacement."""

import numpy as np
import pytest

from phaser_core.physics_constants import wavelength_A
from phaser_std.physics.probe import make_probe
from phaser_std.physics.propagation import bandlimit_mask, fresnel_propagator, fresnel_propagators_tilted

LAM = wavelength_A(200e3)


def prop(psi, h):
    return np.fft.ifft2(np.fft.fft2(psi, norm="ortho") * h, norm="ortho")


def test_unitary_fft_preserves_norm():
    rng = np.random.default_rng(0)
    psi = rng.normal(size=(32, 48)) + 1j * rng.normal(size=(32, 48))
    assert np.sum(np.abs(np.fft.fft2(psi, norm="ortho")) ** 2) == pytest.approx(np.sum(np.abs(psi) ** 2), rel=1e-12)


def test_propagator_unit_modulus_inside_bandlimit():
    h = fresnel_propagator((32, 32), 0.2, LAM, 50.0)
    m = bandlimit_mask((32, 32), 0.2)
    np.testing.assert_allclose(np.abs(h)[m > 0], 1.0, atol=1e-12)
    assert np.all(h[m == 0] == 0)
    ky = np.fft.fftfreq(32, 0.2)
    assert m[0, 0] == 1 and m[0, 16] == 0  # Nyquist excluded at f = 2/3
    assert np.all(np.abs(fresnel_propagator((32, 32), 0.2, LAM, 50.0, bandlimit=None)) == pytest.approx(1.0))
    assert h[1, 0] == pytest.approx(np.exp(-1j * np.pi * LAM * 50.0 * ky[1] ** 2), rel=1e-12)


def test_defocus_sign_propagating_defocused_probe_by_defocus_focuses_it():
    shape, s, d = (64, 64), 0.25, 120.0
    focused = make_probe(shape, s, LAM, 25.0)
    defocused = make_probe(shape, s, LAM, 25.0, defocus_A=d)
    out = prop(defocused, fresnel_propagator(shape, s, LAM, d, bandlimit=None))
    np.testing.assert_allclose(out, focused, atol=1e-10)
    wrong = prop(defocused, fresnel_propagator(shape, s, LAM, -d, bandlimit=None))
    assert np.max(np.abs(wrong - focused)) > 1e-2


@pytest.mark.parametrize("tilt", [(0.0, 20.0), (-15.0, 10.0)])
def test_tilt_displaces_centre_of_intensity_by_dz_tan_t(tilt):
    shape, s, dz = (128, 128), 0.2, 200.0
    # a soft aperture edge keeps the Airy tails from wrapping round the periodic grid
    p = make_probe(shape, s, LAM, 20.0, soft_edge_px=4.0)
    out = prop(p, fresnel_propagator(shape, s, LAM, dz, tilt_mrad=tilt, bandlimit=None))

    def centre(psi):
        i = np.abs(psi) ** 2
        yy, xx = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
        return np.array([(i * yy).sum(), (i * xx).sum()]) / i.sum() * s

    shift = centre(out) - centre(p)
    expected = dz * np.tan(np.asarray(tilt) * 1e-3)
    np.testing.assert_allclose(shift, expected, atol=0.01)  # [Å], pixel 0.2 Å; the shifts are 2-3 Å


def test_tilted_batch_matches_single():
    tilts = np.array([[0.0, 0.0], [5.0, -3.0]])
    hb = fresnel_propagators_tilted((16, 20), (0.3, 0.25), LAM, 30.0, tilts)
    for b in range(2):
        np.testing.assert_allclose(hb[b], fresnel_propagator((16, 20), (0.3, 0.25), LAM, 30.0, tuple(tilts[b])),
                                   atol=1e-12)


def test_band_limit_is_raised_to_cover_the_probe_aperture():
    """A 25 mrad probe on a 32² grid whose Nyquist is 1.33 /Å: the aperture (0.997 /Å) lies
    at 0.75 of Nyquist, beyond the 2/3 rule. The covering band limit keeps it whole; the
    plain 2/3 limit would remove its rim at every propagation."""
    from phaser_std.physics.propagation import covering_bandlimit, probe_bandwidth_invA

    lam = wavelength_A(200e3)
    s = 1.0 / (32 * 0.083)
    p = make_probe((32, 32), s, lam, 25.0, defocus_A=30.0)
    k_nyq = 1.0 / (2 * s)
    k_alpha = 25e-3 / lam  # α/λ [1/Å]
    aperture_frac = k_alpha / k_nyq
    assert abs(probe_bandwidth_invA(p, s) - k_alpha) < 1.5 / (32 * s)  # within a pixel and a half
    f = covering_bandlimit(2 / 3, (32, 32), s, k_alpha)
    assert f > aperture_frac and f == pytest.approx((k_alpha + 0.083) / k_nyq)  # one pixel beyond
    assert covering_bandlimit(None, (32, 32), s, k_alpha) is None
    # an aperture well inside 2/3 keeps the 2/3 rule, and a larger requested limit is kept
    assert covering_bandlimit(2 / 3, (32, 32), s, 10e-3 / lam) == 2 / 3
    assert covering_bandlimit(0.9, (32, 32), s, k_alpha) == 0.9
    # propagating 20 Å keeps the probe's power with the covering limit, not with 2/3
    for limit, kept in ((f, True), (2 / 3, False)):
        h = fresnel_propagator((32, 32), s, lam, 20.0, bandlimit=limit)
        out = np.fft.ifft2(np.fft.fft2(np.fft.ifftshift(p)) * h)
        power = float(np.sum(np.abs(out) ** 2))
        assert (power == pytest.approx(1.0, abs=1e-9)) is kept, (limit, power)


def test_aperture_radius_covers_a_probe_wider_than_the_data_says():
    """A plan's probe at 25 mrad over data that say 20 mrad (or a probe from a file): the
    band limit from the data's α/λ alone cut 19% of its power at every propagation; the
    radius from the probe's bandwidth, at least α/λ, keeps it all. A hard-edged probe at
    the data's angle keeps α/λ (its 99.9% disc lies just inside)."""
    from phaser_std.physics.propagation import aperture_radius_invA, covering_bandlimit, probe_bandwidth_invA

    lam = wavelength_A(200e3)
    s = 1.0 / (32 * 0.083)
    wide = make_probe((32, 32), s, lam, 25.0, defocus_A=30.0)
    radius = aperture_radius_invA(wide, s, alpha_mrad=20.0, wavelength_A=lam)
    assert radius == probe_bandwidth_invA(wide, s) > 20e-3 / lam
    assert aperture_radius_invA(make_probe((32, 32), s, lam, 20.0), s, 20.0, lam) >= 20e-3 / lam
    assert aperture_radius_invA(wide, s) == probe_bandwidth_invA(wide, s)  # no angle given
    for r, kept in ((radius, True), (20e-3 / lam, False)):
        h = fresnel_propagator((32, 32), s, lam, 20.0, bandlimit=covering_bandlimit(2 / 3, (32, 32), s, r))
        out = np.fft.ifft2(np.fft.fft2(np.fft.ifftshift(wide)) * h)
        power = float(np.sum(np.abs(out) ** 2))
        assert (power == pytest.approx(1.0, abs=1e-9)) is kept, (r, power)
