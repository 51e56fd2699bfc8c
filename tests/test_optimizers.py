"""Gradient solvers: numpy rules equal optax on the same complex gradients; state round trips."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import build_backend

from phaser_core.config import ScheduleSpec
from phaser_core.registry import get_registry
from phaser_std.engines import optimizers as O
from phaser_std.engines.optimizers import init_states
from phaser_std.engines.schedules import CosineSchedule

CASES = [
    ("sgd", {"learning_rate": 0.1}),
    ("sgd", {"learning_rate": 0.1, "momentum": 0.9}),
    ("sgd", {"learning_rate": 0.1, "momentum": 0.8, "nesterov": True}),
    ("adam", {"learning_rate": 0.05}),
    ("adam", {"learning_rate": 0.05, "nesterov": True, "eps_root": 1e-6}),
    ("adamw", {"learning_rate": 0.05, "weight_decay": 0.1}),
    ("nadam", {"learning_rate": 0.05}),
    ("polyak_sgd", {"max_learning_rate": 0.5, "scaling": 0.7, "f_min": 0.0}),
]


def _backend(name):
    return build_backend(name, "float32")  # skips only when the backend is unavailable (cupy)


def _solver(name, **cfg):
    comp = get_registry().get("solver", name)
    assert comp.meta.get("role") == "gradient"
    return comp.obj(comp.make_config(**cfg))


def _sequence(n=5, shape=(4, 6), seed=0):
    rng = np.random.default_rng(seed)
    p0 = (rng.normal(size=shape) + 1j * rng.normal(size=shape)).astype(np.complex64)
    gs = [(rng.normal(size=shape) + 1j * rng.normal(size=shape)).astype(np.complex64) for _ in range(n)]
    values = [float(v) for v in rng.uniform(1.0, 3.0, size=n)]
    return p0, gs, values


def _run(bk, solver, p0, gs, values):
    params = bk.asarray(p0)
    state = solver.init(params, bk)
    out = []
    for it, (g, v) in enumerate(zip(gs, values)):
        upd, state = solver.update(bk, bk.asarray(g), state, params, it, value=v)
        params = params + upd
        out.append(bk.to_numpy(params))
    return out, state


@pytest.mark.parametrize("name,cfg", CASES)
def test_numpy_rules_match_optax_on_complex_gradients(name, cfg):
    bkj = _backend("jax")
    bkn = _backend("numpy")
    p0, gs, values = _sequence()
    ref, _ = _run(bkj, _solver(name, **cfg), p0, gs, values)
    got, _ = _run(bkn, _solver(name, **cfg), p0, gs, values)
    for r, g in zip(ref, got):
        assert g.dtype == np.complex64
        np.testing.assert_allclose(g, r, rtol=2e-5, atol=2e-5)


def test_numpy_matches_raw_optax_chain():
    """Independent of our optax wrapper: 5 adam steps equal optax.adam itself."""
    optax = pytest.importorskip("optax")
    import jax.numpy as jnp

    p0, gs, values = _sequence(seed=3)
    tx = optax.adam(0.05)
    params = jnp.asarray(p0)
    st = tx.init(params)
    for g in gs:
        u, st = tx.update(jnp.asarray(g), st, params)
        params = params + u
    got, _ = _run(_backend("numpy"), _solver("adam", learning_rate=0.05), p0, gs, values)
    np.testing.assert_allclose(got[-1], np.asarray(params), rtol=2e-5, atol=2e-5)


def test_adam_second_moment_is_abs_squared_for_complex():
    bk = _backend("numpy")
    s = _solver("adam", learning_rate=1.0, b2=0.5)
    g = np.array([3 + 4j], dtype=np.complex64)
    st = s.init(np.zeros(1, np.complex64), bk)
    _, st = s.update(bk, g, st, np.zeros(1, np.complex64), 0)
    assert st["nu"].dtype == np.float32
    np.testing.assert_allclose(st["nu"], [0.5 * 25.0])
    # with |g|² the first Adam step has magnitude lr along g: u = −g/|g|
    u, _ = s.update(bk, g, s.init(np.zeros(1, np.complex64), bk), np.zeros(1, np.complex64), 0)
    np.testing.assert_allclose(u, -g / 5.0, rtol=1e-5)
    bkj = _backend("jax")
    sj = _solver("adam", learning_rate=1.0, b2=0.5)
    stj = sj.init(bkj.asarray(np.zeros(1, np.complex64)), bkj)
    uj, stj = sj.update(bkj, bkj.asarray(g), stj, bkj.asarray(np.zeros(1, np.complex64)), 0)
    np.testing.assert_allclose(np.asarray(uj), -g / 5.0, rtol=1e-5)


@pytest.mark.parametrize("name", ["adam", "nadam", "adamw"])
def test_jax_adam_keeps_a_real_second_moment_for_complex_parameters(name):
    # optax keeps ν in the dtype init sees; ours sees the real part: ν float32 (half the
    # memory of a complex ν, and a real square root), μ complex, as the numpy rules
    bk = _backend("jax")
    solver = _solver(name, learning_rate=0.1)
    params = bk.asarray(np.ones((4, 4), np.complex64))
    state = solver.init(params, bk)
    for _ in range(2):
        _, state = solver.update(bk, params * (1 + 2j), state, params, 0)
    saved = solver.state_to_numpy(state, bk)
    dtypes = {k.rsplit("/", 1)[-1]: v.dtype for k, v in saved.items() if k.endswith(("/mu", "/nu"))}
    assert dtypes == {"mu": np.complex64, "nu": np.float32}
    # |g|² = 5 twice; 1 − b2 in float32 is 0.00100005 (5e-5 off): rtol 1e-4
    np.testing.assert_allclose([v for k, v in saved.items() if k.endswith("/nu")][0], 0.001 * 5 * (1 + 0.999),
                               rtol=1e-4)


def test_sgd_descends_a_complex_quadratic():
    bk = _backend("numpy")
    target = np.array([1 + 2j, -3j], dtype=np.complex64)
    p = np.zeros(2, np.complex64)
    s = _solver("sgd", learning_rate=0.25, momentum=0.5)
    st = s.init(p, bk)
    for it in range(60):
        g = 2 * (p - target)  # 2 ∂L/∂z̄ of L = |z − t|²
        u, st = s.update(bk, g, st, p, it)
        p = p + u
    np.testing.assert_allclose(p, target, atol=1e-4)


@pytest.mark.parametrize("backend", ["numpy", "jax"])
def test_scheduled_learning_rate_and_state_round_trip(backend):
    bk = _backend(backend)
    sched = ScheduleSpec("cosine", CosineSchedule(init=0.1, final=0.0, decay_steps=4))
    s = _solver("adam", learning_rate=sched)
    assert s.hyperparams(0) == {"learning_rate": pytest.approx(0.1)}
    assert s.hyperparams(4)["learning_rate"] == pytest.approx(0.0, abs=1e-7)
    p0, gs, values = _sequence()
    full, state = _run(bk, s, p0, gs, values)
    # a zero learning rate at iteration 4 (end of the decay) leaves params unchanged
    np.testing.assert_allclose(full[4], full[3], atol=1e-7)
    # checkpoint: dict of numpy arrays, restored on the same backend
    saved = s.state_to_numpy(state, bk)
    assert all(isinstance(v, np.ndarray) for v in saved.values()) and saved
    restored = s.state_from_numpy(saved, bk.asarray(p0), bk)
    again = s.state_to_numpy(restored, bk)
    assert saved.keys() == again.keys()
    for k in saved:
        np.testing.assert_array_equal(saved[k], again[k])
    with pytest.raises(KeyError, match="checkpoint lacks"):
        s.state_from_numpy({}, bk.asarray(p0), bk)


def test_update_inside_jit_with_traced_hyperparameters():
    bk = _backend("jax")
    import jax

    s = _solver("adam", learning_rate=0.05)
    p0, gs, values = _sequence()
    params = bk.asarray(p0)
    state = s.init(params, bk)
    step = jax.jit(lambda g, st, p, hyper: s.update(bk, g, st, p, hyper=hyper))
    for it, g in enumerate(gs):
        upd, state = step(bk.asarray(g), state, params, s.hyperparams(it))
        params = params + upd
    ref, _ = _run(_backend("numpy"), _solver("adam", learning_rate=0.05), p0, gs, values)
    np.testing.assert_allclose(np.asarray(params), ref[-1], rtol=2e-5, atol=2e-5)


def test_polyak_needs_value_and_lbfgs_not_registered():
    bk = _backend("numpy")
    s = _solver("polyak_sgd")
    with pytest.raises(ValueError, match="value="):
        s.update(bk, np.ones(2, np.complex64), s.init(np.zeros(2, np.complex64), bk),
                 np.zeros(2, np.complex64), 0)
    assert "lbfgs" not in get_registry()._by_kind["solver"]
    assert "L-BFGS is not registered" in O.__doc__


def test_a_checkpoint_with_a_complex_second_moment_restores():
    # checkpoints written when jax's ν was complex (its values real) load into the real ν
    bk = _backend("jax")
    solver = _solver("adam", learning_rate=0.1)
    params = bk.asarray(np.ones((3, 3), np.complex64))
    saved = solver.state_to_numpy(solver.update(bk, params * 2j, solver.init(params, bk), params, 0)[1], bk)
    old = {k: (v.astype(np.complex64) if k.endswith("/nu") else v) for k, v in saved.items()}
    restored = solver.state_to_numpy(solver.state_from_numpy(old, params, bk), bk)
    assert restored.keys() == saved.keys()
    for k in saved:
        assert restored[k].dtype == saved[k].dtype
        np.testing.assert_array_equal(restored[k], saved[k])


@pytest.mark.parametrize("backend", ["numpy", "jax"])
def test_init_states_starts_several_solvers_as_each_would_alone(backend):
    # the gradient engine starts its object and probe solvers together (one program on jax)
    bk = _backend(backend)
    solvers = {"object": _solver("adam", learning_rate=0.1), "probe": _solver("sgd", learning_rate=0.2, momentum=0.5)}
    params = {"object": bk.asarray(np.ones((4, 5), np.complex64)), "probe": bk.asarray(np.ones((2, 3), np.complex64))}
    together = init_states({k: (solvers[k], params[k]) for k in solvers}, bk)
    assert list(together) == ["object", "probe"]
    for k, solver in solvers.items():
        alone = solver.state_to_numpy(solver.init(params[k], bk), bk)
        got = solver.state_to_numpy(together[k], bk)
        assert got.keys() == alone.keys() and got
        for path in alone:
            assert got[path].dtype == alone[path].dtype
            np.testing.assert_array_equal(got[path], alone[path])


def test_init_states_calls_a_solvers_own_init():
    # a plugin's solver whose init wraps the base one is started through it (no recursion)
    bk = _backend("numpy")
    calls = []

    class Counted(type(_solver("adam", learning_rate=0.1))):
        def init(self, params, bk=None):
            calls.append(params.shape)
            return super().init(params, bk)

    solver = Counted(_solver("adam", learning_rate=0.1).config)
    states = init_states({"object": (solver, np.zeros((2, 2), np.complex64))}, bk)
    assert calls == [(2, 2)] and "object" in states
