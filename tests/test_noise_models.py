"""Noise models: loss zero at a perfect fit, consistent gradients, no NaN at zero intensity."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import build_backend

from phaser_core.registry import get_registry
from phaser_std.engines.noise_models import (AmplitudeNoise, AnscombeConfig, AnscombeNoise, GaussianNoise,
                                             PoissonConfig, PoissonNoise, intensity, wirtinger_far_grad)

NAMES = ("gaussian", "poisson", "amplitude", "anscombe")


def _backend(name: str, dtype: str = "float32"):
    return build_backend(name, dtype)  # skips only when the backend is unavailable (cupy)


@pytest.fixture(params=["numpy", "jax"])
def bk(request):
    return _backend(request.param)


def _model(name):
    comp = get_registry().get("noise_model", name)
    return comp.obj(comp.make_config())


def _data(seed=0, b=3, m=2, q=8):
    rng = np.random.default_rng(seed)
    psi = (rng.normal(size=(b, m, q, q)) + 1j * rng.normal(size=(b, m, q, q))) * 3.0
    meas = rng.poisson(np.sum(np.abs(psi) ** 2, axis=1)).astype(np.float64)
    return psi, meas


def test_registered_with_configs():
    reg = get_registry()
    for name in NAMES:
        comp = reg.get("noise_model", name)
        assert comp.config is not None
        assert hasattr(comp.obj(comp.make_config()), "wave_update")


@pytest.mark.parametrize("name", NAMES)
def test_loss_zero_at_perfect_fit_and_positive_elsewhere(bk, name):
    psi, meas = _data()
    model = _model(name)
    meas[0, 0, 0] = 0.0  # a zero pixel
    meas_b = bk.asarray(meas)
    loss_fit = bk.to_numpy(model.loss(bk, meas_b, meas_b))
    assert loss_fit.shape == (3,)
    np.testing.assert_array_equal(loss_fit, 0.0)  # exactly zero at a perfect fit
    loss_off = bk.to_numpy(model.loss(bk, bk.asarray(meas * 1.3 + 0.5), meas_b))
    assert np.all(loss_off > 1e-3 * float(np.sum(meas)) / 3)


@pytest.mark.parametrize("name", NAMES)
def test_wave_update_zero_at_perfect_fit(bk, name):
    psi, _ = _data()
    model = _model(name)
    psi_b = bk.asarray(psi)
    inten = intensity(bk, psi_b)
    # Poisson's stationary point is I + eps = I_e (eps: the background of the mean)
    fit = inten + model.config.eps if name == "poisson" else inten
    upd = bk.to_numpy(model.wave_update(bk, psi_b, inten, fit))
    assert upd.shape == psi.shape
    np.testing.assert_allclose(upd, 0.0, atol=1e-5 * np.abs(psi).max())


@pytest.mark.parametrize("name", NAMES)
def test_wave_update_moves_towards_measurement(name):
    bk = _backend("numpy", "float64")
    psi, meas = _data(1)
    model = _model(name)
    inten = intensity(bk, psi)
    new = psi + model.wave_update(bk, psi, inten, meas)
    before = model.loss(bk, inten, meas)
    after = model.loss(bk, intensity(bk, new), meas)
    assert np.all(after < 0.5 * before), (before, after)


@pytest.mark.parametrize("name", NAMES)
def test_grad_intensity_matches_finite_differences(name):
    bk = _backend("numpy", "float64")
    psi, meas = _data(2)
    model = _model(name)
    inten = intensity(bk, psi) + 0.3
    rng = np.random.default_rng(5)
    direction = rng.normal(size=inten.shape)
    h = 1e-5
    fd = (np.sum(model.loss(bk, inten + h * direction, meas))
          - np.sum(model.loss(bk, inten - h * direction, meas))) / (2 * h)
    an = np.sum(model.grad_intensity(bk, inten, meas) * direction)
    np.testing.assert_allclose(an, fd, rtol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_no_nan_at_zero_model_intensity(bk, name):
    psi, meas = _data(3)
    psi[:, :, :3, :3] = 0.0  # exactly zero model intensity in a corner
    psi[1] = 0.0  # and a whole dark pattern
    model = _model(name)
    psi_b, meas_b = bk.asarray(psi), bk.asarray(meas)
    inten = intensity(bk, psi_b)
    for out in (model.loss(bk, inten, meas_b), model.grad_intensity(bk, inten, meas_b),
                model.wave_update(bk, psi_b, inten, meas_b)):
        assert np.all(np.isfinite(bk.to_numpy(out)))


@pytest.mark.parametrize("name", NAMES)
def test_jax_grad_through_intensity_finite_and_wirtinger(name):
    bk = _backend("jax")
    import jax
    import jax.numpy as jnp

    psi, meas = _data(4)
    psi[:, :, :3, :3] = 0.0
    model = _model(name)
    psi_b, meas_b = bk.asarray(psi), bk.asarray(meas)

    def f(p):
        return jnp.sum(model.loss(bk, intensity(bk, p), meas_b))

    g = np.asarray(jax.grad(f)(psi_b))
    assert np.all(np.isfinite(g))
    # conj(jax.grad) = 2 dL/dΨ̄ = 2 dL/dI Ψ
    inten = intensity(bk, psi_b)
    expected = 2 * bk.to_numpy(wirtinger_far_grad(bk, psi_b, model.grad_intensity(bk, inten, meas_b)))
    np.testing.assert_allclose(np.conj(g), expected, rtol=2e-4, atol=2e-4 * np.abs(expected).max())


def test_amplitude_loss_definition_and_anscombe_offset():
    bk = _backend("numpy", "float64")
    amp = AmplitudeNoise()
    i, ie = np.array([[[4.0]]]), np.array([[[9.0]]])
    e = amp.config.eps
    np.testing.assert_allclose(amp.loss(bk, i, ie), [2 * (np.sqrt(4 + e) - np.sqrt(9 + e)) ** 2])
    ans = AnscombeNoise()
    assert ans.offset == 0.375
    np.testing.assert_allclose(ans.loss(bk, i, ie), [2 * (np.sqrt(4.375 + e) - np.sqrt(9.375 + e)) ** 2])


def test_poisson_is_the_likelihood_of_a_mean_with_background():
    """L = Σ (I' − I_e') − I_e·log(I'/I_e'), I' = I + eps, I_e' = I_e + eps: the published
    phaser's Σ I + I_e·(log(I_e + eps) − log(I + eps) − 1), gradient 1 − I_e/I'."""
    bk = _backend("numpy", "float64")
    eps = 0.1
    model = PoissonNoise(PoissonConfig(eps=eps))
    i = np.array([[[4.0, 0.0, 2.0]]])
    ie = np.array([[[9.0, 3.0, 0.0]]])
    published = np.sum(i + ie * (np.log(ie + eps) - np.log(i + eps) - 1.0))
    np.testing.assert_allclose(model.loss(bk, i, ie), [published], rtol=1e-12)
    np.testing.assert_allclose(model.grad_intensity(bk, i, ie), 1.0 - ie / (i + eps), rtol=1e-12)
    # a dark pixel pulls the model to zero, not to a count of eps
    assert model.grad_intensity(bk, np.array([[[eps]]]), np.array([[[0.0]]]))[0, 0, 0] == 1.0
    # the minimum over I ≥ 0 is at I = max(I_e − eps, 0) (the gradient vanishes there where
    # I_e > eps, and is positive at I = 0 where I_e ≤ eps), and its value lies in [−eps, 0]
    ie = np.array([[[0.05, 0.1, 1.0, 50.0]]])
    best = np.maximum(ie - eps, 0.0)
    grad = model.grad_intensity(bk, best, ie)
    np.testing.assert_allclose(grad[ie > eps], 0.0, atol=1e-12)
    assert np.all(grad[ie <= eps] >= 0)

    def per_pixel(i):
        return np.array([model.loss(bk, i[..., k:k + 1], ie[..., k:k + 1])[0] for k in range(4)])

    at_best = per_pixel(best)
    assert np.all((-eps <= at_best) & (at_best <= 0)), at_best
    for delta in (1e-3, 0.05):
        assert np.all(per_pixel(best + delta) > at_best)
        below = np.maximum(best - delta, 0.0)
        moved = (below != best)[0, 0]
        assert np.all(per_pixel(below)[moved] > at_best[moved])


def test_poisson_close_to_amplitude_near_fit_and_gaussian_definition():
    bk = _backend("numpy", "float64")
    ie = np.full((1, 2, 2), 100.0)
    i = ie * 1.01
    p = PoissonNoise().loss(bk, i, ie)[0]
    a = AmplitudeNoise().loss(bk, i, ie)[0]
    np.testing.assert_allclose(p, a, rtol=2e-2)  # both ≈ (I − Ie)²/(2 Ie) per pixel
    g = GaussianNoise(GaussianNoise().config.__class__(sigma=2.0))
    np.testing.assert_allclose(g.loss(bk, i, ie), [4 * 1.0 ** 2 / 8.0])


def test_poisson_step_tends_to_half_near_fit_and_is_fixed_on_request():
    bk = _backend("numpy", "float64")
    ie = np.full((2, 4, 4), 50.0)
    alpha = PoissonNoise().step_size(bk, ie * 1.001, ie)
    np.testing.assert_allclose(alpha, 0.5, atol=1e-2)
    fixed = PoissonNoise(PoissonNoise().config.__class__(step=0.3)).step_size(bk, ie * 2, ie)
    np.testing.assert_allclose(fixed, 0.3)


@pytest.mark.parametrize("name", NAMES)
def test_jax_matches_numpy(name):
    bkj = _backend("jax")
    bkn = _backend("numpy")
    psi, meas = _data(6)
    model = _model(name)
    res = []
    for bk in (bkn, bkj):
        p, m = bk.asarray(psi), bk.asarray(meas)
        inten = intensity(bk, p)
        res.append([bk.to_numpy(x) for x in (model.loss(bk, inten, m), model.grad_intensity(bk, inten, m),
                                             model.wave_update(bk, p, inten, m))])
    for a, b in zip(*res):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-4 * np.abs(a).max())


def test_invalid_config_raises():
    # the configs' validators: a plan reports them at file:line (tests/test_bad_input_errors.py)
    with pytest.raises(ValueError, match="must be > 0, got 0.0"):
        GaussianNoise().config.__class__(sigma=0.0)
    with pytest.raises(ValueError, match="must be > 0, got 0.0"):
        PoissonNoise().config.__class__(eps=0.0)
    with pytest.raises(ValueError, match="need offset [+] eps > 0"):
        AnscombeNoise(AnscombeConfig(eps=0.0, offset=0.0))


@pytest.mark.parametrize("name", NAMES)
def test_runs_inside_jit(name):
    bk = _backend("jax")
    psi, meas = _data(7)
    model = _model(name)

    def step(p, m):
        inten = intensity(bk, p)
        return model.loss(bk, inten, m), model.wave_update(bk, p, inten, m)

    loss_j, upd_j = bk.jit(step)(bk.asarray(psi), bk.asarray(meas))
    loss_e, upd_e = step(bk.asarray(psi), bk.asarray(meas))
    np.testing.assert_allclose(np.asarray(loss_j), np.asarray(loss_e), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(upd_j), np.asarray(upd_e), rtol=1e-4, atol=1e-4)
