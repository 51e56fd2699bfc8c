"""The gradient engine: gradients (analytic == autodiff == finite differences), backends
agree, no recompiles, and end-to-end recoveries on simulated data (phaser_std.data.simulate,
an implementation of the forward model independent of the engine's)."""

from __future__ import annotations

import copy

import attrs
import numpy as np
import pytest

from phaser_core.config import Flag, NoiseModelSpec, RegularizerSpec, SolverSpec
from phaser_core.context import RunContext
from phaser_core.data import RawData
from phaser_core.registry import get_registry
from phaser_core.state import ObjectState, ProbeState, ReconsState
from phaser_std.data.simulate import simulate, spec_from_dict
from phaser_std.engines.common import GroupingConfig
from phaser_std.engines.gradient import GradientConfig, GradientEngine, GradientSolvers
from phaser_std.engines.gradient_step import (GroupModel, analytic_gradients, autodiff_gradients, chunked_gradients,
                                             group_gradients)
from phaser_std.engines.optimizers import AdamConfig, PolyakSGDConfig, SGDConfig
from phaser_std.engines.regularizers import RegInfo
from phaser_std.physics.forward import make_propagators
from phaser_std.physics.optics import wavelength_A
from phaser_std.physics.probe import make_probe

from conftest import build_backend

REG = get_registry()
NOISE_MODELS = ("gaussian", "poisson", "amplitude", "anscombe")


# --------------------------------------------------------------------------- helpers
@pytest.fixture
def jax64():
    import sys

    before = None
    if "jax" in sys.modules:
        before = bool(sys.modules["jax"].config.read("jax_enable_x64"))
    bk = build_backend("jax", "float64")
    yield bk
    if before is not None and not before:
        sys.modules["jax"].config.update("jax_enable_x64", False)


def _group_case(seed: int = 1, n_slices: int = 3, per_position_tilt: bool = False, noise: str = "poisson",
                costs=("obj_l2", "obj_tikhonov", "layers_tikhonov", "probe_recip_tikhonov")):
    """A tiny multislice group (host numpy, float64): 2 probe modes, 5 positions, one padded."""
    rng = np.random.default_rng(seed)
    q = 24
    samp = (0.25, 0.25)
    lam = wavelength_A(200e3)
    probe = np.stack([make_probe((q, q), samp, lam, 20.0, defocus_A=30.0),
                      0.3 * make_probe((q, q), samp, lam, 20.0, defocus_A=50.0)]) * 30
    h = w = 40
    obj = np.exp(1j * 0.3 * rng.standard_normal((n_slices, h, w))) * (0.9 + 0.1 * rng.random((n_slices, h, w)))
    b = 5
    starts = rng.integers(0, h - q, (b, 2)).astype(np.int32)
    frac = rng.uniform(-0.5, 0.5, (b, 2))
    mask = np.array([1, 1, 1, 1, 0], bool)
    measured = rng.poisson(50, (b, q, q)).astype(float)
    measured[:, 0, :3] = 0
    tilt = rng.normal(0, 2, (b, 2)) if per_position_tilt else np.array([1.0, -2.0])
    regs = tuple(RegularizerSpec(n).build(REG) for n in costs)
    cw = rng.uniform(0.05, 0.5, len(regs))
    thick = (4.0,) * n_slices
    args = dict(obj=obj, probe=probe, frac=frac, tilt=tilt, starts=starts, measured=measured, mask=mask, cost_w=cw)

    def model(bk):
        props = make_propagators(bk, (q, q), samp, lam, thick, (0.0, 0.0), 2 / 3)
        return GroupModel(noise=NoiseModelSpec(noise).build(REG), costs=regs, base_props=props, sampling_A=samp,
                          thicknesses_A=thick, reg_info=RegInfo(sampling_A=samp, wavelength_A=lam), n_positions=20)

    return model, args


def _grads(fn, bk, model, args, wrt=("object", "probe", "positions", "tilt")):
    a = {k: bk.asarray(v) for k, v in args.items()}
    m = model(bk)
    total, _, g = bk.jit(lambda a: fn(bk, m, a["obj"], a["probe"], a["frac"], a["tilt"], a["starts"],
                                      a["measured"], a["mask"], a["cost_w"], wrt=wrt))(a)
    return float(bk.to_numpy(total)), {k: bk.to_numpy(v) for k, v in g.items()}


def _rel(a, b):
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b))) / max(np.max(np.abs(b)), 1e-300))


def _deramp(a: np.ndarray) -> np.ndarray:
    y, x = np.mgrid[:a.shape[0], :a.shape[1]]
    m = np.stack([np.ones(a.size), y.ravel(), x.ravel()], 1)
    return a.ravel() - m @ np.linalg.lstsq(m, a.ravel(), rcond=None)[0]


def _sim(q=32, dk=0.2, scan=(8, 8), defocus=40.0, dose=None, jitter=0.0, tilt=(0.0, 0.0), slices=None,
         thickness=8.0, seed=0):
    spec = {"energy_eV": 200e3, "convergence_angle_mrad": 25, "defocus_A": defocus, "detector_shape": [q, q],
            "reciprocal_sampling_invA": dk, "scan": {"shape": list(scan), "step_A": 0.6, "jitter_A": jitter},
            "dose": dose, "tilt_mrad": list(tilt), "seed": seed,
            "object": {"cell_A": [3.19, 5.525], "thickness_A": thickness,
                       "atoms": [{"position": [0.0, 0.0], "strength_rad": 0.6, "width_A": 0.3},
                                 {"position": [0.5, 0.5], "strength_rad": 0.6, "width_A": 0.3},
                                 {"position": [0.0, 0.3333], "strength_rad": 0.35, "width_A": 0.3},
                                 {"position": [0.5, 0.8333], "strength_rad": 0.35, "width_A": 0.3}]}}
    if slices is not None:
        spec["object"]["slices"] = slices
    sim = simulate(spec_from_dict(spec))
    samp = sim.sampling_A
    lam = wavelength_A(200e3)
    n = sim.positions_A.shape[0]
    pats = sim.patterns.reshape(n, q, q).astype(np.float32)
    data = RawData(patterns=pats, reciprocal_sampling_invA=(dk, dk), energy_eV=200e3, convergence_angle_mrad=25,
                   defocus_A=defocus)
    pad = 6  # object = the simulated field plus a margin, aligned with it
    h, w = sim.phases.shape[-2:]
    corner = (-pad * samp[0], -pad * samp[1])
    n_slices = sim.phases.shape[0]
    obj = np.ones((n_slices, h + 2 * pad, w + 2 * pad), np.complex64)
    state = ReconsState(
        probe=ProbeState(data=make_probe((q, q), samp, lam, 25.0, defocus_A=defocus)[None], sampling_A=samp),
        object=ObjectState(data=obj, sampling_A=samp, corner_A=corner, thicknesses_A=np.asarray(sim.thicknesses_A)),
        scan_A=sim.positions_A.copy(), wavelength_A=lam)
    return sim, data, state, pad


def _run(state, data, backend="numpy", dtype="float32", **cfg):
    bk = build_backend(backend, dtype)
    eng = GradientEngine(GradientConfig(**cfg))
    out = eng.run(state, data, RunContext(backend=bk, registry=REG, seed=0))
    return out, eng


def _phase_corr(out, sim, pad, q, slice_i=0, margin=None):
    ph = np.angle(out.object.data[slice_i])[pad:-pad, pad:-pad]
    truth = sim.phases[slice_i]
    m = margin if margin is not None else q // 2 + 2
    a, b = ph[m:-m, m:-m], truth[m:-m, m:-m]
    return float(np.corrcoef(_deramp(a), _deramp(b))[0, 1])


def _adam(lr):
    return SolverSpec("adam", AdamConfig(learning_rate=lr))


# --------------------------------------------------------------------------- conventions
def test_wirtinger_factor(jax64):
    """jax.grad of a real L(z) is 2·conj(∂L/∂z̄): for L = Σ|z|², ∂L/∂z̄ = z and jax.grad = 2·conj(z).
    The engine hands the solvers conj(jax.grad) = 2·∂L/∂z̄ (the steepest-ascent direction)."""
    from phaser_std.engines.gradient_step import _value_and_grad

    bk = jax64
    z = np.array([3.0 + 4.0j, -1.0 + 0.5j])
    val, g = _value_and_grad(bk, lambda v: bk.xp.sum(bk.xp.real(v * bk.xp.conj(v))))(bk.asarray(z))
    np.testing.assert_allclose(bk.to_numpy(g), 2 * np.conj(z), rtol=1e-14)
    assert float(val) == pytest.approx(np.sum(np.abs(z) ** 2), rel=1e-14)


# --------------------------------------------------------------------------- (1) analytic == autodiff
@pytest.mark.parametrize("per_position_tilt", [False, True])
def test_analytic_gradient_matches_autodiff(jax64, per_position_tilt):
    model, args = _group_case(per_position_tilt=per_position_tilt)
    np_bk = build_backend("numpy", "float64")
    t_np, g_np = _grads(analytic_gradients, np_bk, model, args)
    t_jx, g_jx = _grads(autodiff_gradients, jax64, model, args)
    assert t_np == pytest.approx(t_jx, rel=1e-12)
    for k in ("object", "probe", "positions", "tilt"):
        assert g_np[k].shape == g_jx[k].shape, k
        assert np.max(np.abs(g_jx[k])) > 0, k
        assert _rel(g_np[k], g_jx[k]) < 1e-10, (k, _rel(g_np[k], g_jx[k]))
    # padded position (mask False) contributes nothing
    assert np.all(g_np["positions"][-1] == 0)


@pytest.mark.parametrize("noise", NOISE_MODELS)
def test_analytic_matches_autodiff_float32_no_nan(noise):
    """Per noise model, float32 (the default backends): analytic == autodiff, and both finite
    where the object (hence the model intensity) and some measured counts are exactly zero
    (test 7 at the gradient level), obj_phase_l1 included (its angle() is guarded at 0)."""
    model, args = _group_case(n_slices=2, noise=noise,
                              costs=("obj_tv", "obj_l1", "obj_phase_l1", "probe_phase_tikhonov"))
    args["obj"][:, :10, :] = 0.0
    t_np, g_np = _grads(analytic_gradients, build_backend("numpy", "float32"), model, args)
    t_jx, g_jx = _grads(autodiff_gradients, build_backend("jax", "float32"), model, args)
    assert np.isfinite(t_np) and np.isfinite(t_jx)
    assert t_np == pytest.approx(t_jx, rel=1e-6)
    for k in g_np:
        assert np.all(np.isfinite(g_np[k])) and np.all(np.isfinite(g_jx[k])), (noise, k)
        assert _rel(g_np[k], g_jx[k]) < 2e-5, (noise, k, _rel(g_np[k], g_jx[k]))  # measured <= 2.6e-6


# --------------------------------------------------------------------------- (2) finite differences
def test_autodiff_gradient_matches_finite_differences(jax64):
    """dL/dε of L(x + ε·d) = Re Σ conj(g)·d (complex, g = 2∂L/∂z̄) or Σ g·d (real), central
    differences in float64 along a random direction d per variable."""
    model, args = _group_case(seed=3)
    bk = jax64
    m = model(bk)
    _, g = _grads(autodiff_gradients, bk, model, args)
    rng = np.random.default_rng(7)
    names = {"object": "obj", "probe": "probe", "positions": "frac", "tilt": "tilt"}

    from phaser_std.engines.gradient_step import group_loss

    jloss = bk.jit(lambda d: group_loss(bk, m, d["obj"], d["probe"], d["frac"], d["tilt"], d["starts"],
                                        d["measured"], d["mask"], d["cost_w"])[0])

    def loss(a):
        return float(jloss({k: bk.asarray(v) for k, v in a.items()}))

    for var, key in names.items():
        x = args[key]
        d = rng.standard_normal(x.shape)
        if np.iscomplexobj(x):
            d = d + 1j * rng.standard_normal(x.shape)
            expected = float(np.sum(np.real(np.conj(g[var]) * d)))
        else:
            expected = float(np.sum(g[var] * d))
        h = 1e-6 * max(1.0, float(np.max(np.abs(x))))
        fd = (loss(dict(args, **{key: x + h * d})) - loss(dict(args, **{key: x - h * d}))) / (2 * h)
        assert fd == pytest.approx(expected, rel=1e-6, abs=1e-9 * abs(expected) + 1e-8), var


def test_cost_per_group_adds_the_whole_penalty(jax64, monkeypatch):
    """``cost_per: iteration`` adds (valid positions / N) of each penalty per group; ``group``
    adds all of it (the published phaser in effect): in the loss, the analytic gradients
    (numpy) and the autodiff gradients (jax)."""
    from phaser_std.engines.gradient_step import group_loss

    model, args = _group_case(seed=4)
    bk = build_backend("numpy", "float64")
    a = {k: bk.asarray(v) for k, v in args.items()}
    per_iter = model(bk)
    per_group = attrs.evolve(per_iter, costs_per_group=True)
    call = ("obj", "probe", "frac", "tilt", "starts", "measured", "mask", "cost_w")
    t_iter, data = group_loss(bk, per_iter, *(a[k] for k in call))
    t_group, data2 = group_loss(bk, per_group, *(a[k] for k in call))
    assert float(data) == float(data2) and float(t_group - data) > 0
    fraction = 4 / 20  # 4 valid positions of the 5, n_positions 20
    assert float(t_iter - data) == pytest.approx(fraction * float(t_group - data), rel=1e-12)
    # and the gradients follow (analytic adjoint, numpy): the cost part scales by 1/fraction
    for fn, b in ((analytic_gradients, bk), (autodiff_gradients, jax64)):
        g = {k: _grads(fn, b, lambda b: attrs.evolve(model(b), costs_per_group=per, costs=c), args)[1]
             for k, per, c in (("none", False, ()), ("iter", False, model(b).costs), ("group", True, model(b).costs))}
        for var in ("object", "probe"):
            np.testing.assert_allclose(g["group"][var] - g["none"][var], (g["iter"][var] - g["none"][var]) / fraction,
                                       rtol=1e-9, atol=1e-12 * np.abs(g["group"][var]).max())
    with pytest.raises(ValueError, match="cost_per"):
        GradientConfig(cost_per="batch")
    # the engine hands its setting to the group model
    import phaser_std.engines.gradient as gradient_engine

    seen = []
    plain = gradient_engine.GroupModel

    def recording(**kwargs):
        seen.append(kwargs["costs_per_group"])
        return plain(**kwargs)

    monkeypatch.setattr(gradient_engine, "GroupModel", recording)
    _, data, state, _ = _sim(q=24, scan=(4, 4), seed=4)
    for setting in ("group", "iteration"):
        _run(copy.deepcopy(state), data, "numpy", niter=1, cost_per=setting,
             regularizers=(RegularizerSpec("obj_tikhonov"),))
    assert seen == [True, False]


@pytest.mark.parametrize("method", ["analytic", "autodiff"])
@pytest.mark.parametrize("per_slice", [False, True])
def test_per_view_gradients_with_costs_add_up_to_the_object_gradient(request, method, per_slice):
    """Given gathered ``views`` (4-d or a tuple per slice), the data term's object gradient
    comes back per view and the costs' whole, by either method: scattered and added, they
    equal the object gradient of the plain call."""
    from phaser_std.physics.forward import add_views, get_views

    model, args = _group_case(seed=5)
    bk = build_backend("numpy", "float64") if method == "analytic" else request.getfixturevalue("jax64")
    grads = analytic_gradients if method == "analytic" else autodiff_gradients
    m = model(bk)
    a = {k: bk.asarray(v) for k, v in args.items()}
    call = (a["obj"], a["probe"], a["frac"], a["tilt"], a["starts"], a["measured"], a["mask"], a["cost_w"])
    _, _, whole = grads(bk, m, *call)
    views = get_views(bk, a["obj"], a["starts"], a["probe"].shape[-2:], per_slice=per_slice)
    _, _, split = grads(bk, m, *call, views=views)
    assert set(split) >= {"views", "object", "probe"}
    assert isinstance(split["views"], tuple) == per_slice
    summed = bk.to_numpy(add_views(bk, bk.asarray(np.zeros_like(args["obj"])), a["starts"], split["views"])
                         + split["object"])
    whole_obj = bk.to_numpy(whole["object"])
    np.testing.assert_allclose(summed, whole_obj, rtol=1e-12, atol=1e-12 * np.abs(whole_obj).max())
    np.testing.assert_allclose(bk.to_numpy(split["probe"]), bk.to_numpy(whole["probe"]), rtol=1e-12)
    # and the split is the one claimed: ``object`` is the costs' part alone
    _, _, no_costs = grads(bk, attrs.evolve(m, costs=()), *call)
    costs_only = whole_obj - bk.to_numpy(no_costs["object"])
    assert np.abs(costs_only).max() > 0
    np.testing.assert_allclose(bk.to_numpy(split["object"]), costs_only, rtol=1e-9,
                               atol=1e-12 * np.abs(costs_only).max())


# --------------------------------------------------------------------------- (3) backends agree, no recompile
def test_numpy_and_jax_same_reconstruction_and_no_recompile():
    sim, data, state, pad = _sim(scan=(8, 8))  # 64 positions, groups of 24: the last is ragged (16)
    cfg = dict(niter=5, grouping=GroupingConfig(size=24), solvers=GradientSolvers(object=_adam(2e-2),
                                                                                   probe=_adam(1e-2)))
    out_np, _ = _run(copy.deepcopy(state), data, "numpy", **cfg)
    out_jx, eng = _run(copy.deepcopy(state), data, "jax", **cfg)
    assert eng.step_counter.n == 1, f"the jax group step was traced {eng.step_counter.n} times"
    a, b = out_np.object.data, out_jx.object.data
    init = state.object.data
    change = np.linalg.norm(a - init)
    assert change > 1.0  # it moved
    print("backend difference", np.linalg.norm(a - b) / change, _rel(out_jx.probe.data, out_np.probe.data))
    assert np.linalg.norm(a - b) / change < 5e-4
    assert _rel(out_jx.probe.data, out_np.probe.data) < 2e-5  # measured 2.1e-6
    np.testing.assert_allclose(out_np.progress.loss, out_jx.progress.loss, rtol=1e-4)
    assert out_np.progress.loss[-1] < 0.5 * out_np.progress.loss[0]


@pytest.mark.parametrize("backend", ["numpy", "jax"])
@pytest.mark.parametrize("per_position_tilt", [False, True])
@pytest.mark.parametrize("chunk", [1, 5])
def test_chunked_gradients_equal_the_whole_group(backend, per_position_tilt, chunk):
    """A group computed one position at a time (a scan over 5 chunks of 1, the padded one
    included), or as one chunk of 5 (what the engine runs for whole groups: the costs
    apart, and on jax the views gathered per slice), has the whole group's loss and
    gradients: the costs enter once, the per-position gradients come back in order."""
    model, args = _group_case(per_position_tilt=per_position_tilt)
    bk = build_backend(backend, "float32")
    total, whole = _grads(group_gradients, bk, model, args)
    total_c, chunked = _grads(lambda bk, m, *a, **k: chunked_gradients(bk, m, chunk, *a, **k), bk, model, args)
    assert total_c == pytest.approx(total, rel=1e-5)
    assert set(chunked) == set(whole)
    for k in whole:
        assert chunked[k].shape == whole[k].shape, k
        assert _rel(chunked[k], whole[k]) < 1e-5, (k, _rel(chunked[k], whole[k]))


@pytest.mark.parametrize("wrt", [("probe",), ("object",), ("probe", "positions", "tilt")])
def test_whole_group_gradients_of_some_variables(wrt):
    """A whole multislice group on jax (the views recomputed on the way back) gives the
    group's gradients also when only some variables are differentiated: probe-only
    iterations, the object alone (its gradient from the views' offsets and the costs)."""
    model, args = _group_case()
    bk = build_backend("jax", "float32")
    total, whole = _grads(group_gradients, bk, model, args, wrt=wrt)
    total_c, chunked = _grads(lambda bk, m, *a, **k: chunked_gradients(bk, m, 5, *a, **k), bk, model, args, wrt=wrt)
    assert total_c == pytest.approx(total, rel=1e-5)
    assert set(chunked) == set(whole) == set(wrt)
    for k in wrt:
        assert _rel(chunked[k], whole[k]) < 1e-5, (k, _rel(chunked[k], whole[k]))


def test_whole_group_autodiff_holds_one_slice_of_views():
    """On jax, a whole multislice group's autodiff step (a GPU's default path) gathers each
    slice's views where the forward reads them and again on the way back (a checkpoint:
    only the entering waves are kept) and adds the views' gradients into the object slice
    by slice: XLA's temporaries grow by 1.00 wave arrays a slice here (the entering waves),
    where with the views gathered once and their gradients stacked into one scatter they
    grew by 1.78; the paper's size, whole iteration program: 436 -> 276 MiB
    (benchmarks/NOTES.md 60)."""
    jax = pytest.importorskip("jax")
    bk = build_backend("jax", "float32")
    n, b, h = 32, 16, 96
    rng = np.random.default_rng(2)
    noise = NoiseModelSpec("poisson").build(REG)

    def temporaries(n_slices: int) -> int:
        props = bk.asarray(np.exp(0.1j * rng.random((n_slices - 1, n, n))).astype(np.complex64))
        model = GroupModel(noise=noise, base_props=props, sampling_A=(0.2, 0.2), thicknesses_A=(5.0,) * n_slices,
                           reg_info=RegInfo(sampling_A=(0.2, 0.2)), n_positions=1000)
        args = (np.exp(0.3j * rng.random((n_slices, h, h))).astype(np.complex64),
                (rng.random((1, n, n)) + 1j * rng.random((1, n, n))).astype(np.complex64),
                (rng.random((b, 2)) - 0.5).astype(np.float32), np.zeros(2, np.float32),
                rng.integers(0, h - n, (b, 2)).astype(np.int32), (rng.random((b, n, n)) * 10).astype(np.float32),
                np.ones(b, bool))

        def gradients(obj, probe, frac, tilt, starts, measured, mask):
            _, _, g = chunked_gradients(bk, model, b, obj, probe, frac, tilt, starts, measured, mask,
                                        np.zeros(0, np.float32), wrt=("object", "probe"))
            return g["object"], g["probe"]

        return jax.jit(gradients).lower(*args).compile().memory_analysis().temp_size_in_bytes

    wave = b * n * n * 8  # one (B, M=1, Ny, Nx) complex64 array
    per_slice = (temporaries(12) - temporaries(3)) / 9 / wave
    assert per_slice < 1.2, f"the step's temporaries grow by {per_slice:.2f} wave arrays a slice"


def test_chunked_engine_run_equals_whole_groups():
    """The engine with groups of 16 computed 4 positions at a time reconstructs what it does
    with whole groups (float32 rounding apart), and still compiles its step once."""
    sim, data, state, pad = _sim(scan=(8, 8), thickness=10.0, slices=[{}] * 2)
    cfg = dict(niter=3, solvers=GradientSolvers(object=_adam(2e-2), probe=_adam(1e-2)))
    whole, _ = _run(copy.deepcopy(state), data, "jax", grouping=GroupingConfig(size=16, chunk=16), **cfg)
    chunked, eng = _run(copy.deepcopy(state), data, "jax", grouping=GroupingConfig(size=16, chunk=4), **cfg)
    assert eng.step_counter.n == 1
    change = np.linalg.norm(whole.object.data - state.object.data)
    assert change > 0.5
    assert np.linalg.norm(chunked.object.data - whole.object.data) / change < 1e-4
    probe_change = np.linalg.norm(whole.probe.data - state.probe.data)
    assert probe_change > 1e-3 * np.linalg.norm(state.probe.data)  # the probe was updated
    assert np.linalg.norm(chunked.probe.data - whole.probe.data) / probe_change < 1e-4
    np.testing.assert_allclose(chunked.progress.loss, whole.progress.loss, rtol=1e-5)


def test_chunk_must_divide_the_group():
    sim, data, state, pad = _sim(scan=(4, 4))
    with pytest.raises(ValueError, match="must be a divisor of grouping.size = 16"):  # the config says so
        GroupingConfig(size=16, chunk=5)
    # a chunk that divides the configured size but not the (smaller) group the scan allows
    with pytest.raises(ValueError, match="grouping.chunk: 32 must be a positive divisor of the group size 16"):
        _run(state, data, "numpy", niter=1, grouping=GroupingConfig(size=64, chunk=32))


def test_ragged_group_no_recompile_three_iterations():
    """3 iterations, 3 groups each with a ragged last one, positions refined (flag turns on at
    iteration 1, which is the one legitimate second trace)."""
    sim, data, state, pad = _sim(scan=(6, 6))  # 36 positions, groups of 16: 16, 16, 4
    _, eng = _run(state, data, "jax", niter=3, grouping=GroupingConfig(size=16),
                  solvers=GradientSolvers(object=_adam(1e-2), probe=_adam(1e-2),
                                          positions=SolverSpec("sgd", SGDConfig(learning_rate=0.1))),
                  update_positions=Flag(after=0))
    assert eng.step_counter.n == 1


# --------------------------------------------------------------------------- (4) single slice end to end
def test_single_slice_reconstruction_phase_correlation():
    q = 32
    sim, data, state, pad = _sim(scan=(8, 8), dose=1e5, seed=4)
    out, _ = _run(state, data, "numpy", niter=15, grouping=GroupingConfig(size=16),
                  solvers=GradientSolvers(object=_adam(2e-2), probe=_adam(1e-2)))
    corr = _phase_corr(out, sim, pad, q)
    assert corr >= 0.95, corr
    assert np.all(np.isfinite(out.object.data))
    assert out.progress.loss[-1] < 0.5 * out.progress.loss[0]  # noisy data: the loss floor is the noise


# --------------------------------------------------------------------------- (5) position refinement
def _rms_error(p, true):
    d = p - true
    d = d - d.mean(axis=0)  # a common shift is an object shift, not a position error
    return float(np.sqrt(np.mean(np.sum(d ** 2, axis=1))))


def test_position_refinement_reduces_error():
    sim, data, state, pad = _sim(scan=(10, 10), jitter=0.3 / np.sqrt(2), seed=2)
    before = _rms_error(sim.positions_A, sim.true_positions_A)
    assert 0.25 < before < 0.35
    out, _ = _run(state, data, "numpy", niter=40, grouping=GroupingConfig(size=25),
                  solvers=GradientSolvers(object=_adam(2e-2), probe=_adam(1e-2),
                                          positions=SolverSpec("sgd", SGDConfig(learning_rate=3.0, momentum=0.5))),
                  update_positions=Flag(after=5))
    after = _rms_error(out.scan_A, sim.true_positions_A)
    assert after < 0.1, (before, after)
    assert np.allclose(out.scan_A.mean(axis=0), sim.positions_A.mean(axis=0), atol=1e-6)  # no drift


# --------------------------------------------------------------------------- (6) tilt refinement
def test_global_tilt_refinement():
    """The tilt is degenerate with a sheared multislice object; depth (layers) Tikhonov on a
    crystal (identical slices) removes that and the tilt becomes identifiable."""
    from phaser_std.engines.costs import CostConfig

    true_tilt = np.array([1.2, -1.6])  # |t| = 2 mrad
    sim, data, state, pad = _sim(scan=(8, 8), tilt=tuple(true_tilt), thickness=15.0, slices=[{}] * 4, seed=3)
    out, _ = _run(state, data, "numpy", niter=70, grouping=GroupingConfig(size=32),
                  regularizers=(RegularizerSpec("layers_tikhonov", CostConfig(cost=1e4)),),
                  solvers=GradientSolvers(object=_adam(1e-2), probe=_adam(1e-2),
                                          tilt=SolverSpec("adam", AdamConfig(learning_rate=0.2))),
                  update_tilt=Flag(after=3))
    err = float(np.linalg.norm(out.tilt_mrad - true_tilt))
    assert out.tilt_mrad.shape == (2,)
    assert err < 0.5, (out.tilt_mrad, err)


# --------------------------------------------------------------------------- (7) no NaN
@pytest.mark.parametrize("backend", ["numpy", pytest.param("jax", marks=pytest.mark.slow)])
@pytest.mark.parametrize("noise", NOISE_MODELS)
def test_no_nan_engine_any_noise_model(backend, noise):
    """Zero measured counts and zero model intensity (the aperture-limited probe through a
    vacuum object has exactly zero intensity outside the bright-field disc). On jax this
    compiles a step per noise model, hence slow;
    test_analytic_matches_autodiff_float32_no_nan covers jax at the gradient level."""
    sim, data, state, pad = _sim(q=24, scan=(4, 4), dose=1e3, seed=5)
    pats = np.array(data.patterns)
    pats[:, :3, :] = 0.0
    data = attrs.evolve(data, patterns=pats)
    out, _ = _run(state, data, backend, niter=2, grouping=GroupingConfig(size=6),
                  noise_model=NoiseModelSpec(noise),
                  regularizers=(RegularizerSpec("obj_tv"), RegularizerSpec("obj_l1"),
                                RegularizerSpec("probe_phase_tikhonov")),
                  solvers=GradientSolvers(object=_adam(1e-2), probe=_adam(1e-2),
                                          positions=SolverSpec("sgd", SGDConfig(learning_rate=0.5))),
                  update_positions=Flag(after=0))
    for arr in (out.object.data, out.probe.data, out.scan_A, np.asarray(out.progress.loss)):
        assert np.all(np.isfinite(arr))


# --------------------------------------------------------------------------- (8) layer regularization
@pytest.mark.slow
def test_layer_regularization_improves_per_slice_structure():
    """A 6-slice crystal (identical slices) from noisy data: depth Tikhonov recovers every
    slice better than no regularization (the depth ambiguity otherwise moves structure between
    slices)."""
    from phaser_std.engines.costs import CostConfig

    q = 32
    sim, data, state, pad = _sim(scan=(10, 10), thickness=4.0, slices=[{"scale": 0.5}] * 6, dose=1e4, seed=1,
                                 defocus=30.0)
    corr = {}
    for name, regs in (("none", ()), ("layers", (RegularizerSpec("layers_tikhonov", CostConfig(cost=100.0)),))):
        out, _ = _run(copy.deepcopy(state), data, "numpy", niter=40, grouping=GroupingConfig(size=25),
                      regularizers=regs, solvers=GradientSolvers(object=_adam(1e-2), probe=_adam(1e-2)))
        corr[name] = np.array([_phase_corr(out, sim, pad, q, i) for i in range(6)])
    assert corr["layers"].mean() > corr["none"].mean() + 0.03, corr
    assert corr["layers"].min() > 0.9, corr


# --------------------------------------------------------------------------- resume
def test_resume_continues_exactly(tmp_path):
    """3 iterations then 2 more from the returned state (solver moments restored from
    state.extra) equal 5 uninterrupted iterations."""
    sim, data, state, pad = _sim(q=24, scan=(5, 5), seed=6)
    cfg = dict(grouping=GroupingConfig(size=8), solvers=GradientSolvers(
        object=_adam(2e-2), probe=_adam(1e-2), positions=SolverSpec("sgd", SGDConfig(learning_rate=1.0,
                                                                                     momentum=0.5))),
        update_positions=Flag(after=1))
    full, _ = _run(copy.deepcopy(state), data, "numpy", dtype="float64", niter=5, **cfg)
    part, _ = _run(copy.deepcopy(state), data, "numpy", dtype="float64", niter=3, **cfg)
    assert set(part.extra["gradient"]) == {"object", "probe", "positions", "engine_num"}
    from phaser_core.statefile import load_state, save_state

    save_state(part, tmp_path / "checkpoint.h5")
    part = load_state(tmp_path / "checkpoint.h5")  # solver states go through the state file
    resumed, _ = _run(part, data, "numpy", dtype="float64", niter=5, **cfg)
    assert resumed.iteration.engine_iter == 5
    np.testing.assert_allclose(resumed.object.data, full.object.data, rtol=0, atol=1e-10)
    np.testing.assert_allclose(resumed.probe.data, full.probe.data, rtol=0, atol=1e-10)
    np.testing.assert_allclose(resumed.scan_A, full.scan_A, rtol=0, atol=1e-10)


def test_per_position_tilt_backends_agree():
    sim, data, state, pad = _sim(q=24, scan=(4, 4), tilt=(1.0, 0.5), thickness=10.0, slices=[{}] * 2, seed=7)
    cfg = dict(niter=3, grouping=GroupingConfig(size=6), tilt="per_position", update_tilt=Flag(after=0),
               solvers=GradientSolvers(object=_adam(1e-2), probe=_adam(1e-2),
                                       tilt=SolverSpec("sgd", SGDConfig(learning_rate=50.0))))
    out_np, _ = _run(copy.deepcopy(state), data, "numpy", **cfg)
    out_jx, _ = _run(copy.deepcopy(state), data, "jax", **cfg)
    assert out_np.tilt_mrad.shape == (16, 2)
    moved = np.abs(out_np.tilt_mrad).max()
    assert moved > 1e-3
    # measured 2.5e-6 mrad for a 0.015 mrad move
    assert np.max(np.abs(out_np.tilt_mrad - out_jx.tilt_mrad)) < 1e-3 * moved


def test_rejects_wrong_component_kinds():
    sim, data, state, pad = _sim(q=24, scan=(3, 3), seed=8)
    with pytest.raises(ValueError, match="not a gradient solver"):
        _run(copy.deepcopy(state), data, "numpy", niter=1,
             solvers=GradientSolvers(object=SolverSpec("lsqml")))
    with pytest.raises(ValueError, match="not a cost regularizer"):
        _run(copy.deepcopy(state), data, "numpy", niter=1, regularizers=(RegularizerSpec("layers"),))


@pytest.mark.parametrize("backend", ["numpy", "jax"])
def test_polyak_steps_follow_the_normalised_loss(backend):
    """polyak_sgd's step (L − f_min)/‖g‖² needs L and g of one function: the engine hands it
    the loss normalised like the gradient. With the raw group loss beside the normalised
    gradient the step was n_valid·Σ|P|² times too long (measured on this case: loss 6.0e3
    -> 3.6e10 in 3 iterations)."""
    sim, data, state, pad = _sim(q=32, scan=(8, 8), seed=3)
    polyak = SolverSpec("polyak_sgd", PolyakSGDConfig())
    out, _ = _run(copy.deepcopy(state), data, backend, niter=6, grouping=GroupingConfig(size=16),
                  solvers=GradientSolvers(object=polyak, probe=polyak))
    loss = np.asarray(out.progress.loss)
    assert np.all(np.isfinite(loss)) and np.all(np.isfinite(out.object.data))
    assert loss.max() <= loss[0] * 1.05 and loss[-1] < 0.9 * loss[0], loss  # measured 0.73-0.74x


def test_a_solver_that_needs_the_group_loss_is_refused_for_the_per_iteration_variables():
    """polyak_sgd steps by each group's loss; positions and tilt are stepped once an
    iteration, where it has none: the plan fails validation at the solver's type (the run
    used to stop with a traceback at the end of the first iteration)."""
    from phaser_core.errors import PlanError
    from phaser_core.plan import load_plan
    from phaser_core.plan_errors import format_path

    plan = {"file_type": "phaser_plan", "version": 1, "raw_data": {"type": "hdf5", "path": "d.h5"},
            "engines": [{"type": "gradient", "solvers": {"positions": {"type": "polyak_sgd"},
                                                         "tilt": "polyak_sgd"}}]}
    with pytest.raises(PlanError) as info:
        load_plan(copy.deepcopy(plan))
    messages = {format_path(e.path): e.message for e in info.value.errors}
    assert set(messages) == {"engines[0].solvers.positions.type", "engines[0].solvers.tilt.type"}
    assert "use sgd, adam, adamw or nadam here" in messages["engines[0].solvers.tilt.type"]
    plan["engines"][0]["solvers"] = {"object": "polyak_sgd", "positions": "adam", "tilt": "sgd"}
    load_plan(plan)  # on the per-group object it is fine


def test_a_resume_whose_solver_states_do_not_fit_says_it_starts_them_afresh(tmp_path):
    """Resumed on another backend (numpy's solver states are not optax's), the solvers
    restart: the run says so instead of silently not continuing exactly."""
    pytest.importorskip("jax")
    from recon import make_dataset

    from phaser_core.observer import Observer
    from phaser_core.plan import load_plan
    from phaser_core.runner import RunInterrupted, run_plan

    class StopAfter2(Observer):
        def after_iteration(self, state, metrics, ctx):
            if state.iteration.total_iter == 2:
                ctx.stop_requested = True

    class Notes(Observer):
        def __init__(self):
            self.texts = []

        def on_note(self, text, ctx):
            self.texts.append(text)

    data = make_dataset(tmp_path / "d.h5", scan={"shape": [6, 6]})
    plan = {"file_type": "phaser_plan", "version": 1, "backend": "numpy", "raw_data": {"type": "hdf5", "path": str(data)},
            "output": {"checkpoint_every": 1}, "engines": [{"type": "gradient", "niter": 4}]}
    with pytest.raises(RunInterrupted):
        run_plan(load_plan(plan), out_dir=tmp_path / "a", quiet=True, observers=[StopAfter2()])
    same = Notes()
    run_plan(load_plan(plan), out_dir=tmp_path / "a", resume=True, quiet=True, observers=[same])
    assert not any("starts afresh" in t for t in same.texts)
    with pytest.raises(RunInterrupted):
        run_plan(load_plan(plan), out_dir=tmp_path / "b", quiet=True, observers=[StopAfter2()])
    other = Notes()
    run_plan(load_plan({**plan, "backend": "jax"}), out_dir=tmp_path / "b", resume=True, quiet=True, observers=[other])
    assert [t.split(" does not fit")[0] for t in other.texts if "starts afresh" in t] == [
        "gradient engine: the saved state of the object solver", "gradient engine: the saved state of the probe solver"]
