"""Wavelength, interaction parameter, reciprocal grids and the aberration function."""

import math

import numpy as np
import pytest

from phaser_std.physics.optics import (aberration_phase, fftfreq_grid, fftfreq_grid_centred,
                                       interaction_parameter, normalize_aberrations, wavelength_A)

# CODATA 2018, independent of phaser_core.physics_constants
H = 6.62607015e-34
E = 1.602176634e-19
M0 = 9.1093837015e-31
C = 299792458.0


def ref_wavelength_A(kv):
    ev = kv * 1e3 * E  # kinetic energy [J]
    p = math.sqrt(ev * (ev + 2 * M0 * C**2)) / C
    return H / p * 1e10


def ref_sigma(kv):
    lam = ref_wavelength_A(kv) * 1e-10
    m = M0 + kv * 1e3 * E / C**2
    return 2 * math.pi * m * E * lam / H**2 * 1e-10


@pytest.mark.parametrize("kv", [80, 200, 300])
def test_wavelength_matches_codata(kv):
    assert wavelength_A(kv * 1e3) == pytest.approx(ref_wavelength_A(kv), rel=1e-6)


@pytest.mark.parametrize("kv", [80, 200, 300])
def test_interaction_parameter_matches_codata(kv):
    assert interaction_parameter(kv * 1e3) == pytest.approx(ref_sigma(kv), rel=1e-6)


def test_reference_values_200kv():
    assert wavelength_A(200e3) == pytest.approx(0.0250793, rel=2e-6)
    assert interaction_parameter(200e3) == pytest.approx(7.2884e-4, rel=1e-4)


def test_fftfreq_grids_cycles_per_angstrom():
    ky, kx = fftfreq_grid((8, 10), (0.5, 0.25))
    assert ky.shape == (8, 1) and kx.shape == (1, 10)
    assert ky[1, 0] == pytest.approx(1 / (8 * 0.5))  # no factor 2π
    assert kx[0, 0] == 0.0
    cy, cx = fftfreq_grid_centred((8, 10), (0.5, 0.25))
    assert cy[4, 0] == 0.0 and cx[0, 5] == 0.0
    np.testing.assert_allclose(np.fft.ifftshift(cy[:, 0]), ky[:, 0], atol=0)


def test_defocus_is_minus_c10():
    assert normalize_aberrations({}, defocus_A=50.0) == {"C10": -50.0}
    ky, kx = fftfreq_grid((16, 16), 0.3)
    lam = 0.025
    chi = aberration_phase(ky, kx, lam, {"C10": -50.0})
    np.testing.assert_allclose(chi, -np.pi * lam * 50.0 * (ky**2 + kx**2), rtol=1e-12, atol=1e-12)


def test_aberration_phase_formula_and_angles():
    ky, kx = fftfreq_grid((16, 16), 0.3)
    lam = 0.02
    k = np.sqrt(ky**2 + kx**2)
    phi = np.arctan2(ky, kx)
    ab = {"C30": 1e4, "C23": 200.0, "phi23": 0.3, "C12": 20.0, "phi12": -0.5, "C56": 1e6, "phi56": 0.1}
    a = lam * k
    ref = 2 * np.pi / lam * (1e4 * a**4 / 4 + 200 * a**3 * np.cos(3 * (phi - 0.3)) / 3
                             + 20 * a**2 * np.cos(2 * (phi + 0.5)) / 2 + 1e6 * a**6 * np.cos(6 * (phi - 0.1)) / 6)
    np.testing.assert_allclose(aberration_phase(ky, kx, lam, ab), ref, rtol=1e-12, atol=1e-12)


def test_unknown_aberration_name_is_an_error():
    with pytest.raises(ValueError, match="C31"):
        normalize_aberrations({"C31": 1.0})


ALL_ORDERS = [(n, m) for n in range(1, 6) for m in range((n + 1) % 2, n + 2, 2)]  # C10, C12, C21, ... C56


@pytest.mark.parametrize("n,m", ALL_ORDERS, ids=lambda v: str(v))
def test_every_krivanek_coefficient_up_to_fifth_order(n, m):
    """χ = (2π/λ) C_nm α^(n+1) cos(m(φ − φ_nm)) / (n+1) for each C_nm alone, n ≤ 5."""
    ky, kx = fftfreq_grid((16, 16), 0.3)
    lam = 0.025
    a = lam * np.sqrt(ky**2 + kx**2)
    phi = np.arctan2(ky, kx)
    c, angle = 10.0 ** (n + 1), 0.37
    ab = {f"C{n}{m}": c, **({f"phi{n}{m}": angle} if m else {})}
    ref = 2 * np.pi / lam * c * a ** (n + 1) * np.cos(m * (phi - (angle if m else 0.0))) / (n + 1)
    np.testing.assert_allclose(aberration_phase(ky, kx, lam, ab), ref, rtol=1e-12, atol=1e-12)
