"""Probe construction, mixed-state modes, orthogonalisation and probe files."""

import h5py
import numpy as np
import pytest

from phaser_core.errors import DataError
from phaser_core.physics_constants import wavelength_A
from phaser_std.backends.numpy_backend import NumpyBackend
from phaser_std.physics.probe import (estimate_soft_edge_px, focal_spread_modes, load_probe, make_modes, make_probe,
                                     orthogonalize_modes)

LAM = wavelength_A(300e3)


def test_probe_normalised_and_centred():
    for shape in [(32, 32), (33, 40)]:
        p = make_probe(shape, 0.3, LAM, 25.0)
        assert p.shape == shape and p.dtype == np.complex128
        assert np.sum(np.abs(p) ** 2) == pytest.approx(1.0, rel=1e-12)
        assert np.unravel_index(np.argmax(np.abs(p)), shape) == (shape[0] // 2, shape[1] // 2)


def test_probe_spectrum_is_aperture_times_exp_minus_i_chi():
    shape, s = (32, 32), 0.3
    p = make_probe(shape, s, LAM, 25.0, defocus_A=80.0)
    spec = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(p), norm="ortho"))
    k = np.fft.fftshift(np.fft.fftfreq(32, s))
    k2 = k[:, None] ** 2 + k[None, :] ** 2
    inside = np.sqrt(k2) <= 25e-3 / LAM
    assert np.all(np.abs(spec[~inside]) < 1e-12)
    # defocus Δ = −C10: χ = −πλΔk², spectrum ∝ exp(+iπλΔk²)
    ratio = spec[inside] / np.exp(1j * np.pi * LAM * 80.0 * k2[inside])
    np.testing.assert_allclose(ratio, ratio[0], rtol=1e-9)


def test_soft_edge_and_errors():
    p = make_probe((32, 32), 0.3, LAM, 25.0, soft_edge_px=2.0)
    assert np.sum(np.abs(p) ** 2) == pytest.approx(1.0, rel=1e-12)
    with pytest.raises(ValueError, match="conv_angle"):
        make_probe((32, 32), 0.3, LAM, 0.0)
    with pytest.raises(ValueError, match="C99"):
        make_probe((32, 32), 0.3, LAM, 25.0, aberrations={"C99": 1.0})


@pytest.mark.parametrize("n_modes", [2, 4, 6])
def test_modes_powers_sum_to_one_and_orthogonal(n_modes):
    p = make_probe((48, 48), 0.3, LAM, 25.0, defocus_A=100.0)
    m = make_modes(p, n_modes, first_mode_power=0.7)
    assert m.shape == (n_modes, 48, 48)
    powers = np.sum(np.abs(m) ** 2, axis=(1, 2))
    assert powers.sum() == pytest.approx(1.0, abs=1e-12)
    assert powers[0] == pytest.approx(0.7, abs=1e-12)
    flat = m.reshape(n_modes, -1)
    gram = flat.conj() @ flat.T
    np.testing.assert_allclose(gram, np.diag(powers), atol=1e-12)
    unit = flat / np.sqrt(powers)[:, None]
    np.testing.assert_allclose(unit.conj() @ unit.T, np.eye(n_modes), atol=1e-12)


def test_modes_keep_input_power_with_rng():
    p = 3.0 * make_probe((32, 32), 0.3, LAM, 25.0, defocus_A=50.0)
    m = make_modes(p, 3, rng=np.random.default_rng(0))
    assert np.sum(np.abs(m) ** 2) == pytest.approx(9.0, rel=1e-12)


def test_orthogonalize_modes_keeps_power_and_sorts():
    rng = np.random.default_rng(0)
    m = rng.normal(size=(3, 16, 16)) + 1j * rng.normal(size=(3, 16, 16))
    m[2] *= 3
    out = orthogonalize_modes(NumpyBackend("float64"), m)
    powers = np.sum(np.abs(out) ** 2, axis=(1, 2))
    assert powers.sum() == pytest.approx(np.sum(np.abs(m) ** 2), rel=1e-12)
    assert np.all(np.diff(powers) <= 0)
    flat = out.reshape(3, -1)
    gram = flat.conj() @ flat.T
    np.testing.assert_allclose(gram - np.diag(np.diag(gram)), 0.0, atol=1e-9)
    # same incoherent sum of intensities (the mixed state is unchanged)
    np.testing.assert_allclose(np.sum(np.abs(out) ** 2, 0), np.sum(np.abs(m) ** 2, 0), rtol=1e-10)


def test_load_probe_npy_and_h5(tmp_path):
    p = make_modes(make_probe((16, 16), 0.3, LAM, 25.0), 2)
    np.save(tmp_path / "p.npy", p[0])
    assert load_probe(tmp_path / "p.npy").shape == (1, 16, 16)
    with h5py.File(tmp_path / "s.h5", "w") as f:
        f["probe"] = p
    np.testing.assert_array_equal(load_probe(tmp_path / "s.h5"), p)
    with h5py.File(tmp_path / "bad.h5", "w") as f:
        f["other"] = p
    with pytest.raises(KeyError, match="probe"):
        load_probe(tmp_path / "bad.h5")


def _ctx(**meta):
    from phaser_core.context import InitContext
    from phaser_core.data import RawData

    kw = dict(reciprocal_sampling_invA=(0.05, 0.05), energy_eV=200e3, convergence_angle_mrad=20.0,
              scan_shape=(2, 3), scan_step_A=(1.0, 1.0))
    kw.update(meta)
    return InitContext(data=RawData(patterns=np.full((6, 32, 32), 5.0), **kw), seed=1)


def test_focused_initializer_uses_metadata_and_scales_to_dose():
    from phaser_std.physics.initializers import FocusedProbeConfig, init_focused_probe

    ctx = _ctx(defocus_A=40.0)
    st = init_focused_probe(FocusedProbeConfig(n_modes=2), ctx)
    assert st.data.shape == (2, 32, 32)
    assert st.sampling_A == pytest.approx((1 / (32 * 0.05),) * 2)
    assert np.sum(np.abs(st.data) ** 2) == pytest.approx(5.0 * 32 * 32, rel=1e-10)
    ref = make_probe((32, 32), st.sampling_A, wavelength_A(200e3), 20.0, defocus_A=40.0)
    np.testing.assert_allclose(st.data[0] / np.sqrt(0.8 * 5.0 * 32 * 32), ref, atol=1e-12)


def test_focal_spread_modes_are_the_defocus_ensembles_strongest():
    """The modes of a Gaussian defocus spread: orthogonal, by decreasing power, one probe's
    power in all. With as many modes as quadrature points they are the ensemble itself (the
    same density matrix Σ w_j |P_j><P_j|, the same intensity); a tiny spread leaves one
    mode, the probe at the mean defocus; the spread's power moves out of mode 0 as it grows."""
    def at(df):
        return make_probe((32, 32), 0.25, LAM, 25.0, defocus_A=df)

    modes = focal_spread_modes(at, 50.0, 60.0, 7, n_points=7)  # as many modes as points: all of it
    flat = modes.reshape(7, -1)
    gram = flat.conj() @ flat.T
    powers = np.real(np.diag(gram))
    np.testing.assert_allclose(gram - np.diag(powers), 0.0, atol=1e-12)
    assert np.all(np.diff(powers) <= 1e-12) and powers.sum() == pytest.approx(1.0, rel=1e-12)
    nodes, weights = np.polynomial.hermite_e.hermegauss(7)
    weights /= weights.sum()
    ensemble = np.stack([np.sqrt(w) * at(50.0 + 60.0 * x) for x, w in zip(nodes, weights)]).reshape(7, -1)
    np.testing.assert_allclose(flat.T @ flat.conj(), ensemble.T @ ensemble.conj(), atol=1e-12)
    # the first mode of a vanishing spread is the probe at the mean defocus (up to a phase)
    m = focal_spread_modes(at, 50.0, 1e-3, 2)
    assert np.sum(np.abs(m[1]) ** 2) < 1e-8  # ∝ spread²
    overlap = np.vdot(at(50.0), m[0])
    assert abs(overlap) == pytest.approx(1.0, abs=1e-9)
    # mode 0's share: 0.925 / 0.772 / 0.631 / 0.431 at 10 / 20 / 30 / 60 Å (300 kV, 25 mrad)
    first = [float(np.sum(np.abs(focal_spread_modes(at, 50.0, s, 4)[0]) ** 2)) for s in (10.0, 20.0, 30.0, 60.0)]
    assert first[0] > 0.9 and first[0] > first[1] > first[2] > first[3] and first[3] < 0.5


def test_focused_initializer_with_a_focal_spread():
    from phaser_std.physics.initializers import FocusedProbeConfig, init_focused_probe

    ctx = _ctx(defocus_A=40.0)
    st = init_focused_probe(FocusedProbeConfig(n_modes=3, focal_spread_A=80.0), ctx)
    assert st.data.shape == (3, 32, 32)
    assert np.sum(np.abs(st.data) ** 2) == pytest.approx(5.0 * 32 * 32, rel=1e-10)
    powers = np.sum(np.abs(st.data) ** 2, axis=(1, 2))
    assert powers[0] > powers[1] > powers[2] > 0.01 * powers[0]
    with pytest.raises(ValueError, match="focal_spread_A"):
        FocusedProbeConfig(focal_spread_A=-1.0)


def test_focused_initializer_names_missing_key():
    from phaser_std.physics.initializers import FocusedProbeConfig, init_focused_probe

    with pytest.raises(DataError, match="convergence_angle_mrad"):
        init_focused_probe(FocusedProbeConfig(), _ctx(convergence_angle_mrad=None))
    with pytest.raises(DataError, match="energy_eV"):
        init_focused_probe(FocusedProbeConfig(), _ctx(energy_eV=None))
    st = init_focused_probe(FocusedProbeConfig(conv_angle_mrad=15.0), _ctx(convergence_angle_mrad=None))
    assert st.n_modes == 1


def test_probe_from_file_initializer(tmp_path):
    from phaser_std.physics.initializers import ProbeFileConfig, init_probe_from_file

    ctx = _ctx()
    p = make_modes(make_probe((32, 32), 0.625, wavelength_A(200e3), 20.0), 2)
    with h5py.File(tmp_path / "state.h5", "w") as f:
        f["probe"] = p
        f["probe"].attrs["sampling_A"] = [0.625, 0.625]
    import attrs

    ctx = attrs.evolve(ctx, plan_dir=tmp_path)
    st = init_probe_from_file(ProbeFileConfig(path="state.h5"), ctx)
    assert st.data.shape == (2, 32, 32)
    assert np.sum(np.abs(st.data) ** 2) == pytest.approx(5.0 * 32 * 32, rel=1e-10)
    with h5py.File(tmp_path / "state.h5", "a") as f:
        f["probe"].attrs["sampling_A"] = [0.5, 0.5]
    with pytest.raises(ValueError, match="pixel size"):
        init_probe_from_file(ProbeFileConfig(path="state.h5"), ctx)


@pytest.mark.parametrize("edge_px", [0.0, 1.0])
def test_soft_edge_estimate_picks_the_edge_the_data_were_made_with(edge_px):
    """Poisson patterns of `phaser simulate` (200 kV, 25 mrad, 48² px) with a hard and with a
    1-px soft aperture edge: the estimate from their mean pattern is that edge."""
    from phaser_std.data.simulate import simulate, spec_from_dict

    sim = simulate(spec_from_dict({"energy_eV": 200e3, "convergence_angle_mrad": 25.0, "defocus_A": 40.0,
                                   "detector_shape": [48, 48], "reciprocal_sampling_invA": 0.1,
                                   "scan": {"shape": [8, 8], "step_A": 0.6}, "dose": 1e5,
                                   "soft_edge_px": edge_px, "seed": 3}))
    mean = sim.patterns.reshape(-1, 48, 48).mean(axis=0)
    assert estimate_soft_edge_px(mean, sim.sampling_A, wavelength_A(200e3), 25.0) == edge_px


def test_soft_edge_estimate_is_zero_without_a_rim():
    lam = wavelength_A(200e3)
    # a flat pattern: nothing to fit
    assert estimate_soft_edge_px(np.ones((32, 32)), 0.3, lam, 25.0) == 0.0
    # a bright-field disc larger than the detector: no rim pixels on it
    big = np.abs(np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(make_probe((32, 32), 0.3, lam, 80.0))))) ** 2
    assert estimate_soft_edge_px(big, 0.3, lam, 80.0) == 0.0
    # masked rim pixels do not count
    spec = np.abs(np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(make_probe((32, 32), 0.3, lam, 25.0,
                                                                          soft_edge_px=1.0))))) ** 2
    assert estimate_soft_edge_px(spec, 0.3, lam, 25.0) == 1.0
    assert estimate_soft_edge_px(spec, 0.3, lam, 25.0, mask=np.zeros((32, 32), bool)) == 0.0


@pytest.mark.parametrize("shift_px", [1, 2])
def test_a_hard_disc_off_centre_is_not_taken_for_a_soft_edge(shift_px):
    """A hard-edged bright-field disc 1-2 px off the centre the estimate assumes: without
    the rule that a soft edge must halve the hard edge's residual it reads as 0.75-2 px
    (measured); with it, 0. A true soft edge at the centre is still found."""
    from phaser_std.physics.probe import probe_aperture

    shape, s, alpha = (64, 64), 0.1, 25.0
    hard = probe_aperture(shape, s, LAM, alpha) * 100.0
    assert estimate_soft_edge_px(np.roll(hard, shift_px, axis=1), s, LAM, alpha) == 0.0
    soft = probe_aperture(shape, s, LAM, alpha, 2.0) ** 2 * 100.0
    assert estimate_soft_edge_px(soft, s, LAM, alpha) == 2.0
