"""Regularizers: constraint behaviour, cost values, analytic Wirtinger gradients vs finite
differences and jax.grad, normalisation, NaN safety, numpy/jax agreement."""

from __future__ import annotations

import attrs
import numpy as np
import pytest
from conftest import build_backend

from phaser_core.config import ScheduleSpec
from phaser_core.registry import get_registry
from phaser_std.engines.costs import COSTS
from phaser_std.engines.regularizers import RegInfo
from phaser_std.engines.schedules import PiecewiseSchedule

COST_NAMES = [c[0] for c in COSTS]
INFO = RegInfo(sampling_A=(0.4, 0.5), wavelength_A=0.025, thicknesses_A=np.full(3, 10.0))


def _backend(name, dtype="float32"):
    return build_backend(name, dtype)  # skips only when the backend is unavailable (cupy)


def _reg(name, **cfg):
    comp = get_registry().get("regularizer", name)
    return comp.obj(comp.make_config(**cfg))


def _state(seed=0, s=3, n=12, m=2):
    rng = np.random.default_rng(seed)
    obj = np.exp(0.3 * rng.normal(size=(s, n, n)) * 1j) * (1 + 0.1 * rng.normal(size=(s, n, n)))
    probe = rng.normal(size=(m, n, n)) + 1j * rng.normal(size=(m, n, n))
    return probe, obj


# ---------------------------------------------------------------------------------------
# costs
# ---------------------------------------------------------------------------------------


def test_all_costs_registered_with_role_and_aliases():
    reg = get_registry()
    for name in COST_NAMES:
        assert reg.get("regularizer", name).meta["role"] == "cost"
    for alias, name in [("obj_tikh", "obj_tikhonov"), ("layers_tikh", "layers_tikhonov")]:
        assert reg.get("regularizer", alias).name == name


@pytest.mark.parametrize("name", COST_NAMES)
def test_cost_grad_matches_central_finite_differences(name):
    bk = _backend("numpy", "float64")
    probe, obj = _state(1)
    info = INFO.replace(fraction=0.25)
    reg = _reg(name, cost=1.7)
    dp, do = reg.grad(bk, probe, obj, info)
    rng = np.random.default_rng(7)
    vp = rng.normal(size=probe.shape) + 1j * rng.normal(size=probe.shape)
    vo = rng.normal(size=obj.shape) + 1j * rng.normal(size=obj.shape)
    h = 1e-6
    fd = (reg.cost(bk, probe + h * vp, obj + h * vo, info) - reg.cost(bk, probe - h * vp, obj - h * vo, info)) / (2 * h)
    # dL = 2 Re Σ conj(∂L/∂z̄) dz
    an = sum(2 * np.real(np.vdot(g, v)) for g, v in ((dp, vp), (do, vo)) if g is not None)
    np.testing.assert_allclose(an, fd, rtol=1e-5, atol=1e-7)
    assert (dp is None) != (do is None)


@pytest.mark.parametrize("name", COST_NAMES)
def test_cost_grad_matches_jax_grad(name):
    bk = _backend("jax")
    import jax

    probe, obj = _state(2)
    p, o = bk.asarray(probe), bk.asarray(obj)
    reg = _reg(name, cost=0.5)
    info = INFO.replace(fraction=0.5)
    gp, go = jax.grad(lambda a, b: reg.cost(bk, a, b, info, weight=0.5), argnums=(0, 1))(p, o)
    dp, do = reg.grad(bk, p, o, info, weight=0.5)
    for jg, ours in ((gp, dp), (go, do)):
        jg = np.conj(np.asarray(jg)) / 2
        if ours is None:
            np.testing.assert_allclose(jg, 0.0, atol=1e-6)
        else:
            ours = np.asarray(ours)
            np.testing.assert_allclose(ours, jg, rtol=1e-3, atol=2e-4 * np.abs(jg).max() + 1e-7)
    # the same numbers on numpy
    bkn = _backend("numpy")
    dpn, don = reg.grad(bkn, bkn.asarray(probe), bkn.asarray(obj), info, weight=0.5)
    for a, b in ((dp, dpn), (do, don)):
        if a is not None:
            np.testing.assert_allclose(np.asarray(a), b, rtol=1e-4, atol=1e-4 * np.abs(b).max())
    np.testing.assert_allclose(float(reg.cost(bk, p, o, info, 0.5)),
                               float(reg.cost(bkn, bkn.asarray(probe), bkn.asarray(obj), info, 0.5)), rtol=1e-4)


@pytest.mark.parametrize("backend", ["numpy", "jax"])
@pytest.mark.parametrize("name", COST_NAMES)
def test_costs_finite_at_vacuum_object(backend, name):
    bk = _backend(backend)
    probe, _ = _state(3)
    obj = np.ones((2, 12, 12), dtype=np.complex64)
    reg = _reg(name)
    c = bk.to_numpy(reg.cost(bk, bk.asarray(probe), bk.asarray(obj), INFO))
    assert np.isfinite(c)
    for g in reg.grad(bk, bk.asarray(probe), bk.asarray(obj), INFO):
        if g is not None:
            assert np.all(np.isfinite(bk.to_numpy(g)))
    if backend == "jax":
        import jax

        gs = jax.grad(lambda a, b: reg.cost(bk, a, b, INFO, 1.0), argnums=(0, 1))(bk.asarray(probe), bk.asarray(obj))
        assert all(np.all(np.isfinite(np.asarray(g))) for g in gs)
    if name.startswith("obj") or name.startswith("layers"):
        assert abs(float(c)) < 1e-3  # vacuum is the minimum of the object costs


def test_cost_values_pinned_and_normalised_by_fraction():
    bk = _backend("numpy", "float64")
    obj = np.full((2, 4, 5), 1.1 + 0j)
    probe = np.ones((1, 4, 5), complex)
    assert _reg("obj_l2").cost(bk, probe, obj, INFO) == pytest.approx(40 * 0.01)
    # smoothed: √(0.01 + eps) − √eps with eps = 1e-8
    assert _reg("obj_l1").cost(bk, probe, obj, INFO) == pytest.approx(40 * (np.sqrt(0.01 + 1e-8) - 1e-4), rel=1e-9)
    assert _reg("obj_tikhonov").cost(bk, probe, obj, INFO) == pytest.approx(0.0, abs=1e-12)
    assert _reg("layers_tikhonov").cost(bk, probe, obj[:1], INFO) == 0.0
    ramp = obj.copy()
    ramp[1] += 0.5
    assert _reg("layers_tikhonov").cost(bk, probe, ramp, INFO) == pytest.approx(20 * 0.25)
    assert _reg("layers_tv").cost(bk, probe, ramp, INFO) == pytest.approx(20 * (np.sqrt(0.25 + 1e-8) - 1e-4), rel=1e-9)
    # one iteration of groups (fractions summing to 1) adds exactly one full penalty
    reg = _reg("obj_l2", cost=2.0)
    parts = sum(reg.cost(bk, probe, obj, INFO.replace(fraction=f)) for f in (0.25, 0.25, 0.5))
    assert parts == pytest.approx(reg.cost(bk, probe, obj, INFO.replace(fraction=1.0)))
    assert reg.cost(bk, probe, obj, INFO) == pytest.approx(2.0 * 0.4)


def test_scheduled_cost_weight():
    bk = _backend("numpy", "float64")
    sched = ScheduleSpec("piecewise", PiecewiseSchedule(init=0.0, boundaries=(3,), values=(2.0,)))
    reg = _reg("obj_l2", cost=sched)
    obj = np.full((1, 2, 2), 2.0 + 0j)
    assert reg.weight(0) == 0.0 and reg.weight(3) == 2.0
    assert reg.cost(bk, None, obj, INFO.replace(iteration=1)) == 0.0
    assert reg.cost(bk, None, obj, INFO.replace(iteration=5)) == pytest.approx(8.0)


def test_probe_phase_tikhonov_ignores_constant_phase_and_penalises_ramps():
    bk = _backend("numpy", "float64")
    reg = _reg("probe_phase_tikhonov", eps=0.0)
    n = 16
    ky, kx = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    f = np.exp(1j * 0.7) * np.ones((1, n, n))
    probe = bk.ifft2c(f)
    assert reg.cost(bk, probe, None, INFO) == pytest.approx(0.0, abs=1e-9)
    f2 = np.exp(1j * 0.1 * kx)[None]
    expected = 2 * n * (n - 1) * (1 - np.cos(0.1))
    assert reg.cost(bk, bk.ifft2c(f2), None, INFO) == pytest.approx(expected, rel=1e-6)


# ---------------------------------------------------------------------------------------
# constraints
# ---------------------------------------------------------------------------------------


def test_clamp_object_amplitude_keeps_phase_and_handles_zero():
    bk = _backend("numpy")
    obj = np.array([[[2.0 * np.exp(0.5j), 0.5 * np.exp(-1j), 0.0, 0.9]]], dtype=np.complex64)
    _, out = _reg("clamp_object_amplitude", max_amplitude=1.0, min_amplitude=0.8).apply(bk, None, obj, INFO)
    np.testing.assert_allclose(np.abs(out), [[[1.0, 0.8, 0.8, 0.9]]], rtol=1e-6)
    np.testing.assert_allclose(np.angle(out[0, 0, :2]), [0.5, -1.0], rtol=1e-6)
    with pytest.raises(ValueError, match="min_amplitude"):
        _reg("clamp_object_amplitude", max_amplitude=0.5, min_amplitude=0.8)


def test_limit_probe_support_reciprocal_and_real():
    bk = _backend("numpy", "float64")
    probe, _ = _state(4, n=32)
    reg = _reg("limit_probe_support", max_angle_mrad=20.0)
    out, _ = reg.apply(bk, probe, None, INFO)
    ky = np.fft.fftshift(np.fft.fftfreq(32, 0.4))[:, None]
    kx = np.fft.fftshift(np.fft.fftfreq(32, 0.5))[None, :]
    theta = 1e3 * 0.025 * np.sqrt(ky ** 2 + kx ** 2)
    spec = bk.fft2c(out)
    assert np.abs(spec[:, theta > 20.0]).max() < 1e-10
    np.testing.assert_allclose(spec[:, theta <= 20.0], bk.fft2c(probe)[:, theta <= 20.0], atol=1e-10)
    again, _ = reg.apply(bk, out, None, INFO)
    np.testing.assert_allclose(again, out, atol=1e-12)
    out, _ = _reg("limit_probe_support", radius_A=3.0).apply(bk, probe, None, INFO)
    y = (np.arange(32) - 16)[:, None] * 0.4
    x = (np.arange(32) - 16)[None, :] * 0.5
    r = np.sqrt(y ** 2 + x ** 2)
    assert np.all(out[:, r > 3.0] == 0) and np.allclose(out[:, r <= 3.0], probe[:, r <= 3.0])
    with pytest.raises(ValueError, match="max_angle_mrad"):
        _reg("limit_probe_support")


def test_obj_low_pass_and_blur_filters():
    bk = _backend("numpy", "float64")
    n = 32
    const = np.full((1, n, n), 0.8 * np.exp(0.3j))
    for name, cfg in (("obj_low_pass", {"cutoff": 0.5}), ("obj_blur", {"sigma_A": 1.0})):
        _, out = _reg(name, **cfg).apply(bk, None, const, INFO)
        np.testing.assert_allclose(out, const, atol=1e-12)  # DC untouched
    # a cosine at f = cutoff·Nyquist is halved by the low-pass
    x = np.arange(n)
    wave = np.cos(2 * np.pi * 0.25 * x)[None, None, :] * np.ones((1, n, 1)) + 0j
    _, out = _reg("obj_low_pass", cutoff=0.5).apply(bk, None, wave, INFO)
    np.testing.assert_allclose(out.real, 0.5 * wave.real, atol=1e-12)
    # a delta blurred with sigma_A has that standard deviation [Å] along x
    delta = np.zeros((1, n, n), complex)
    delta[0, 16, 16] = 1
    _, out = _reg("obj_blur", sigma_A=1.5).apply(bk, None, delta, INFO)
    prof = out[0, 16].real / out[0, 16].real.sum()
    xs = (x - 16) * 0.5
    np.testing.assert_allclose(np.sqrt(np.sum(prof * xs ** 2)), 1.5, rtol=2e-2)


def test_remove_phase_ramp_removes_affine_phase_only():
    bk = _backend("numpy", "float64")
    n = 24
    rng = np.random.default_rng(5)
    y, x = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    structure = 0.2 * np.sin(2 * np.pi * x / 6) * np.sin(2 * np.pi * y / 8)
    ramp = 0.3 * y - 0.45 * x + 1.0  # wraps several times
    obj = (0.9 * np.exp(1j * (structure + ramp)))[None]
    _, out = _reg("remove_phase_ramp").apply(bk, None, obj, INFO)
    np.testing.assert_allclose(np.abs(out), np.abs(obj), rtol=1e-12)
    phase = np.angle(out[0])
    resid = phase - structure
    assert np.std(resid) < 0.02 and np.abs(np.mean(resid)) < 0.05
    # illumination weighting: only the illuminated half counts
    illum = np.zeros((n, n))
    illum[:, : n // 2] = 1.0
    obj2 = obj.copy()
    obj2[0, :, n // 2:] *= np.exp(1j * rng.uniform(-3, 3, size=(n, n // 2)))  # garbage, unlit
    _, out2 = _reg("remove_phase_ramp").apply(bk, None, obj2, INFO.replace(illumination=illum))
    resid2 = np.angle(out2[0, :, : n // 2]) - structure[:, : n // 2]
    assert np.std(resid2) < 0.05


def test_layers_blur_in_real_space_does_not_mix_top_and_bottom():
    bk = _backend("numpy", "float64")
    obj = np.ones((6, 4, 4), complex)
    obj[0] = np.exp(0.5j)
    _, out = _reg("layers", sigma_slices=0.8, weight=1.0).apply(bk, None, obj, INFO)
    np.testing.assert_allclose(out[-1], 1.0, atol=1e-12)  # the bottom slice is untouched
    assert np.abs(out[0] - obj[0]).max() > 0.01 and np.abs(out[1] - 1).max() > 0.01
    const = np.full((5, 4, 4), 0.7 + 0.2j)
    _, out = _reg("layers").apply(bk, None, const, INFO)
    np.testing.assert_allclose(out, const, atol=1e-12)
    single = obj[:1]
    assert _reg("layers").apply(bk, None, single, INFO)[1] is single


def test_orthogonalize_probe_modes():
    bk = _backend("numpy", "float64")
    probe, _ = _state(6, m=3)
    out, _ = _reg("orthogonalize_probe_modes").apply(bk, probe, None, INFO)
    flat = out.reshape(3, -1)
    gram = flat.conj() @ flat.T
    np.testing.assert_allclose(gram - np.diag(np.diag(gram)), 0, atol=1e-9 * np.abs(gram).max())
    powers = np.real(np.diag(gram))
    assert np.all(np.diff(powers) <= 0)
    np.testing.assert_allclose(powers.sum(), np.sum(np.abs(probe) ** 2), rtol=1e-12)


def test_center_probe_moves_centre_of_mass_to_centre():
    bk = _backend("numpy", "float64")
    n = 32
    y, x = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    probe = np.exp(-((y - 13.3) ** 2 + (x - 19.6) ** 2) / 8.0)[None] * np.exp(0.2j * x)[None]
    out, _ = _reg("center_probe").apply(bk, np.concatenate([probe, 0.3 * probe]), None, INFO)
    inten = np.sum(np.abs(out) ** 2, axis=0)
    cy, cx = (np.sum(inten * y) / inten.sum(), np.sum(inten * x) / inten.sum())
    np.testing.assert_allclose([cy, cx], [16, 16], atol=1e-3)
    np.testing.assert_allclose(np.sum(np.abs(out) ** 2), 1.09 * np.sum(np.abs(probe) ** 2), rtol=1e-10)


CONSTRAINT_CASES = [
    ("clamp_object_amplitude", {"max_amplitude": 1.0}),
    ("limit_probe_support", {"max_angle_mrad": 25.0, "radius_A": 4.0}),
    ("obj_low_pass", {"cutoff": 0.6}),
    ("obj_blur", {"sigma_A": 0.7}),
    ("remove_phase_ramp", {}),
    ("layers", {"sigma_slices": 1.0}),
    ("orthogonalize_probe_modes", {}),
    ("center_probe", {}),
]


@pytest.mark.parametrize("name,cfg", CONSTRAINT_CASES)
def test_constraints_jit_and_match_numpy(name, cfg):
    bkj = _backend("jax")
    bkn = _backend("numpy")
    probe, obj = _state(8, n=16)
    reg = _reg(name, **cfg)
    assert get_registry().get("regularizer", name).meta["role"] == "constraint"
    pn, on = reg.apply(bkn, bkn.asarray(probe), bkn.asarray(obj), INFO)
    fn = bkj.jit(lambda p, o: reg.apply(bkj, p, o, INFO))
    pj, oj = fn(bkj.asarray(probe), bkj.asarray(obj))
    for a, b in ((pn, pj), (on, oj)):
        b = np.asarray(b)
        assert b.dtype == np.complex64 and np.all(np.isfinite(b))
        if name == "orthogonalize_probe_modes":  # eigenvectors are defined up to a phase
            a, b = np.abs(a), np.abs(b)
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-4 * np.abs(a).max())


@pytest.mark.parametrize("engine", ["conventional", "gradient"])
@pytest.mark.parametrize("backend", ["numpy", "jax"])
def test_the_engines_weight_the_phase_ramp_fit_by_the_iterations_illumination(tmp_path, engine, backend):
    """No engine gave ``remove_phase_ramp`` the illumination its fit is weighted by: the
    unscanned margin (|O| = 1, no phase) pulled the slope toward 0 and a third of a ramp
    over the scanned area stayed. Here only the constraint changes the object (no updates), so
    the ramp over the scanned area must go."""
    if backend == "jax":
        pytest.importorskip("jax")
    from recon import make_dataset, run

    from phaser_core.statefile import save_state
    from phaser_std.engines.constraints import illumination_map

    data = make_dataset(tmp_path / "d.h5", scan={"shape": [6, 6], "step_A": 0.6})
    first = run(data, [{"type": "conventional", "niter": 1}])
    obj = first.object
    h, w = obj.shape
    illum = illumination_map(first.probe.data, first.scan_A, obj)
    scanned, lit = illum > 0.5 * illum.max(), illum > 1e-4 * illum.max()
    assert 0.01 < scanned.mean() < lit.mean() < 0.7  # a margin the scan does not light
    yy, xx = np.mgrid[:h, :w]
    ramp = np.where(lit, 0.2 * yy - 0.15 * xx, 0.0)  # the lit area tilted, the dark margin flat
    tilted = attrs.evolve(obj, data=np.exp(1j * ramp)[None].astype(obj.data.dtype))
    save_state(attrs.evolve(first, object=tilted), tmp_path / "tilted.h5")
    out = run(data, [{"type": engine, "niter": 1, "update_object": False, "update_probe": False,
                      "iter_constraints": [{"type": "remove_phase_ramp"}]}],
              backend=backend, init={"state": str(tmp_path / "tilted.h5")})
    phase = np.angle(out.object.data[0])
    inner = scanned[1:, :] & scanned[:-1, :]
    gy = np.angle(np.sum(np.exp(1j * (phase[1:, :] - phase[:-1, :]))[inner]))
    inner = scanned[:, 1:] & scanned[:, :-1]
    gx = np.angle(np.sum(np.exp(1j * (phase[:, 1:] - phase[:, :-1]))[inner]))
    assert abs(gy) < 0.02 and abs(gx) < 0.02, (gy, gx)  # 0.067 / -0.051 of 0.2 / -0.15 rad/px unweighted
