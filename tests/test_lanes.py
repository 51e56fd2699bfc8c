"""CPU lanes: jax with one CPU device per core computes a group's chunks on the devices at
once (``JaxBackend.sum_scan``) and adds their sums, and gives the same numbers as one
device to float32 rounding. The test session asks jax for two CPU devices
(``PHASER_JAX_CPU_DEVICES`` in conftest.py), so these run on a one-core machine too; on a
machine whose jax computes on a GPU they skip, saying so.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import build_backend
from recon import make_dataset, run

from phaser_std.engines.chunking import SWEEP_BUDGET_BYTES, engine_chunk, resolve_chunk


def test_step_inputs_are_placed_once_on_every_lane(bk):
    starts, frac = bk.step_inputs(np.zeros((2, 4, 2), np.int64), np.zeros((2, 4, 2)))
    for x in (starts, frac):
        assert x.sharding == bk.share(bk.asarray(np.zeros(3))).sharding
        assert len(x.sharding.device_set) == bk.lanes
    assert starts.dtype == np.int32 and frac.dtype == np.float32


@pytest.fixture(scope="module")
def bk():
    backend = build_backend("jax")
    if backend.lanes < 2:
        pytest.skip("jax has no CPU lanes here (it computes on a GPU, or was started before phaser)")
    return backend


def _steps(bk, n=8, seed=0):
    rng = np.random.default_rng(seed)
    return bk.asarray(rng.normal(size=(n, 5)).astype(np.float32))


def _step(carry, x):
    """A step of the ``sum_scan`` contract: a sum, a max, an entry it leaves alone, a dict."""
    import jax.numpy as jnp

    total, peak, untouched, d = carry
    (xi,) = x
    return ((total + 2.0 * xi, jnp.maximum(peak, xi), untouched, {"sq": d["sq"] + xi * xi}),
            {"twice": 2.0 * xi})


def test_sum_scan_on_lanes_equals_one_scan(bk):
    import jax

    xs = _steps(bk)
    start = (bk.asarray(np.ones(5, np.float32)), bk.asarray(np.full(5, -1.0, np.float32)),
             bk.asarray(np.arange(3.0, dtype=np.float32)), {"sq": bk.asarray(np.zeros(5, np.float32))})
    want = jax.jit(lambda s, x: jax.lax.scan(_step, s, (x,)))(start, xs)
    got = jax.jit(lambda s, x: bk.sum_scan(_step, s, (x,), reduce=("sum", "max", "sum", "sum")))(start, xs)
    for w, g in zip(jax.tree_util.tree_leaves(want), jax.tree_util.tree_leaves(got)):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-6, atol=1e-6)
    # the carry entry no step touches keeps its value (counted once, not once per lane)
    np.testing.assert_array_equal(np.asarray(got[0][2]), [0.0, 1.0, 2.0])
    # the per-step outputs stay split over the lanes, in step order
    assert len(got[1]["twice"].sharding.device_set) == bk.lanes


def test_large_sums_meet_alone_and_small_ones_packed(bk):
    """``sum_scan`` on lanes all-reduces each sum of at least ``PSUM_ALONE_BYTES`` alone
    (packing would copy it once more on each lane: LSQML multislice's maps, NOTES.md 63)
    and the small ones as one packed array, real beside complex; the sums are those of one
    scan."""
    import jax

    from phaser_std.backends.jax_backend import PSUM_ALONE_BYTES

    rng = np.random.default_rng(1)
    side = int(np.ceil(np.sqrt(PSUM_ALONE_BYTES / 8))) + 1  # complex64: over the limit
    big = (rng.normal(size=(4, side, side)) + 1j * rng.normal(size=(4, side, side))).astype(np.complex64)
    xs = (bk.asarray(big), bk.asarray(rng.normal(size=(4, 5)).astype(np.float32)),
          bk.asarray(big[:, :2, :3]))

    def step(carry, x):
        return tuple(c + v for c, v in zip(carry, x)), ()

    start = tuple(bk.asarray(np.zeros(a.shape[1:], a.dtype)) for a in xs)
    fn = jax.jit(lambda s, x: bk.sum_scan(step, s, x))
    reduced = [re.findall(r"(\w+)\[([\d,]*)\]", line.split(" all-reduce(")[0].split("=", 1)[1])
               for line in fn.lower(start, xs).compile().as_text().splitlines() if " all-reduce(" in line]
    shapes = sorted(tuple(int(d) for d in dims.split(",")) for found in reduced for _, dims in found)
    # the large sum as itself; the two small ones as one packed array of 5 + 6 elements
    # (XLA may combine the two all-reduces into one of a tuple: one rendezvous, no copy)
    assert shapes == [(11,), (side, side)], shapes
    got, _ = fn(start, xs)
    for g, a in zip(got, xs):
        np.testing.assert_allclose(np.asarray(g), np.asarray(a).sum(axis=0), rtol=1e-5, atol=1e-5)
        assert g.dtype == a.dtype


def test_sum_scan_whose_steps_do_not_divide_among_the_lanes_is_one_scan(bk):
    import jax

    xs = _steps(bk, n=3)
    start = (bk.asarray(np.zeros(5, np.float32)), bk.asarray(np.zeros(5, np.float32)),
             bk.asarray(np.zeros(3, np.float32)), {"sq": bk.asarray(np.zeros(5, np.float32))})
    want = jax.lax.scan(_step, start, (xs,))
    got = jax.jit(lambda s, x: bk.sum_scan(_step, s, (x,), reduce=("sum", "max", "sum", "sum")))(start, xs)
    for w, g in zip(jax.tree_util.tree_leaves(want), jax.tree_util.tree_leaves(got)):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-6)


def test_sum_scan_refuses_a_reduction_it_does_not_know(bk):
    with pytest.raises(ValueError, match="'sum' or 'max'"):
        bk.sum_scan(_step, (0.0, 0.0, 0.0, {"sq": 0.0}), (_steps(bk),), reduce=("sum", "min", "sum", "sum"))


def test_chunks_divide_among_the_lanes():
    # 64² px, 1 mode, 1 slice: 32 KiB per position, a group of 64 fits the 2 MiB budget whole;
    # with two lanes each computes half of it
    args = (64, 1, 1, (64, 64), 8, True)
    assert resolve_chunk(None, *args) == 64
    assert resolve_chunk(None, *args, lanes=2) == 32
    # 4 modes: 8 MiB for the group, chunks of 2 MiB, i.e. 64 positions in 4 chunks of 16
    assert resolve_chunk(None, 64, 4, 1, (64, 64), 8, True, lanes=2) == 16
    # a group size the lanes do not divide keeps the one-lane choice
    assert resolve_chunk(None, 63, 1, 1, (64, 64), 8, True, lanes=2) == resolve_chunk(None, 63, 1, 1, (64, 64), 8, True)


def test_a_step_that_cannot_split_runs_on_one_lane(bk):
    shape = (64, 64)
    # 32 KiB per position: chunks of the lanes' 256 KiB budget, 8 positions
    lanes_bk, chunk = engine_chunk(bk, None, 64, 1, 1, shape)
    assert lanes_bk is bk and chunk == 8
    # the multislice conventional steps: 2 MiB on lanes (8 slices: 256 KiB per position)
    assert engine_chunk(bk, None, 64, 1, 8, shape, budget=SWEEP_BUDGET_BYTES) == (bk, 8)
    for kwargs in ({"requested": 64}, {"requested": None, "chunked_step": False}):
        requested = kwargs.pop("requested")
        one, chunk = engine_chunk(bk, requested, 64, 1, 1, shape, **kwargs)
        assert one.lanes == 1 and chunk == 64, kwargs
        assert one is bk.one_lane()  # one twin, built once
    one, chunk = engine_chunk(bk, None, 63, 1, 1, shape)  # 63 does not divide among 2 lanes
    assert one.lanes == 1
    # a group of 8 (0.25 MiB of waves) is below LANE_MIN_BYTES; one of 16 or with 4 modes is not
    assert engine_chunk(bk, None, 8, 1, 1, shape)[0].lanes == 1
    assert engine_chunk(bk, None, 16, 1, 1, shape) == (bk, 8)
    assert engine_chunk(bk, None, 8, 4, 1, shape) == (bk, 2)


def test_patterns_are_placed_once_on_every_lane(bk):
    from phaser_std.engines.common import patterns_to_device

    patterns = patterns_to_device(bk, np.ones((4, 8, 8), np.float32))
    assert len(patterns.sharding.device_set) == bk.lanes
    assert patterns_to_device(bk.one_lane(), np.ones((4, 8, 8))).sharding.device_set == {bk.one_lane().device}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("lanes") / "data.h5", scan={"shape": [8, 8]}, dose=1e5)


MULTI = {"n": 3, "total_thickness_A": 30.0}
ENGINES = {
    "epie-multislice": {"type": "conventional", "niter": 3, "grouping": {"size": 16}, "slices": MULTI,
                        "solver": {"type": "epie"}},
    "lsqml-multislice": {"type": "conventional", "niter": 3, "grouping": {"size": 16}, "slices": MULTI,
                         "solver": {"type": "lsqml"}},
    "lsqml-modes": {"type": "conventional", "niter": 3, "grouping": {"size": 16}, "probe_modes": 2,
                    "solver": {"type": "lsqml"}},
    "gradient-multislice": {"type": "gradient", "niter": 3, "grouping": {"size": 16}, "slices": MULTI},
    # iteration 1 updates nothing: its loss alone, in chunks on the lanes
    "gradient-loss-only-first": {"type": "gradient", "niter": 3, "grouping": {"size": 16}, "slices": MULTI,
                                 "update_object": {"after": 1}, "update_probe": {"after": 1}},
}


@pytest.mark.parametrize("case", list(ENGINES))
def test_lanes_reconstruct_as_one_device(bk, data, case, monkeypatch):
    import phaser_std.backends.jax_backend as jb
    import phaser_std.engines.gradient_step as gs

    losses = []  # the loss-only step's chunk, each time it is traced
    original = gs.chunked_data_loss
    monkeypatch.setattr(gs, "chunked_data_loss", lambda bk_, model, chunk, *a: losses.append(chunk)
                        or original(bk_, model, chunk, *a))
    got = run(data, [ENGINES[case]], backend="jax")
    if case == "gradient-loss-only-first":
        assert losses and all(c is not None and c < 16 for c in losses)  # in chunks, on the lanes
    monkeypatch.setattr(jb, "cpu_lane_mesh", lambda lanes=None: None)  # a jax backend without lanes
    want = run(data, [ENGINES[case]], backend="jax")
    scale = np.max(np.abs(want.object.data))
    # measured (object; the probe's are smaller): at most 5.9e-7 (conventional) and 8.4e-6
    # (gradient: Adam divides each step by a running RMS, which magnifies rounding); the
    # losses 2.5e-7. Tolerances about 3x those.
    tol = 3e-5 if ENGINES[case]["type"] == "gradient" else 2e-6
    assert np.max(np.abs(got.object.data - want.object.data)) / scale < tol
    assert np.max(np.abs(got.probe.data - want.probe.data)) / np.max(np.abs(want.probe.data)) < tol
    np.testing.assert_allclose(got.progress.loss, want.progress.loss, rtol=1e-6)


class _CrashAt:
    """An observer that raises after iteration ``at`` (after the checkpoint is written)."""

    def __init__(self, at: int):
        self.at = at

    def __getattr__(self, name):
        return lambda *args: None

    def after_iteration(self, state, metrics, ctx):
        if metrics["total_iter"] == self.at:
            raise RuntimeError("simulated crash")


def test_a_crashed_run_on_lanes_resumes_bit_for_bit(bk, data, tmp_path):
    from phaser_core.plan import load_plan
    from phaser_core.runner import run_plan

    plan = load_plan({
        "file_type": "phaser_plan", "version": 1, "backend": "jax", "seed": 2,
        "raw_data": {"type": "hdf5", "path": str(data)},
        "output": {"checkpoint_every": 1, "images": []},
        "engines": [ENGINES["epie-multislice"], ENGINES["gradient-multislice"]],
    })
    full = run_plan(plan, out_dir=tmp_path / "full", quiet=True)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_plan(plan, out_dir=tmp_path / "crash", quiet=True, observers=[_CrashAt(4)])
    resumed = run_plan(plan, out_dir=tmp_path / "crash", quiet=True, resume=True)
    assert resumed.iteration.total_iter == full.iteration.total_iter == 6
    # the lanes add their shares in a fixed order: the resumed run is the same bit for bit
    np.testing.assert_array_equal(resumed.object.data, full.object.data)
    np.testing.assert_array_equal(resumed.probe.data, full.probe.data)
    np.testing.assert_array_equal(resumed.progress.loss, full.progress.loss)


def test_multislice_lsqml_with_probe_only_iterations_runs_on_the_lanes(bk, data, monkeypatch):
    # iterations without the object update take LSQML's chunked probe-only step, whose
    # chunks the lanes split as the joint step's: both engines run on every lane, and the
    # probe-only one gives the same result as on one device
    import phaser_std.backends.jax_backend as jb
    import phaser_std.engines.conventional as conventional

    seen = []
    original = conventional.engine_chunk

    def recording(*args, **kwargs):
        backend, chunk = original(*args, **kwargs)
        seen.append(backend.lanes)
        return backend, chunk

    monkeypatch.setattr(conventional, "engine_chunk", recording)
    import phaser_std.engines.conventional_solvers as cs

    probe_steps = []  # the probe-only step's chunk, each time it is traced
    step = cs.lsqml_multislice_probe_chunked
    monkeypatch.setattr(cs, "lsqml_multislice_probe_chunked",
                        lambda *a, **k: probe_steps.append(a[10]) or step(*a, **k))
    run(data, [dict(ENGINES["lsqml-multislice"], update_object={"after": 1})], backend="jax")
    assert probe_steps and all(c * bk.lanes <= 16 for c in probe_steps)  # chunks the lanes split
    run(data, [ENGINES["lsqml-multislice"]], backend="jax")
    assert seen == [bk.lanes, bk.lanes]
    # one probe-only iteration: on this small data set the probe-only trajectory magnifies
    # rounding, so after a second one any two orders of summation part (measured, probe:
    # chunks of 4 against whole groups 1e-3, numpy against jax 6e-3, whole groups alike)
    probe_only = [dict(ENGINES["lsqml-multislice"], niter=1, update_object={"after": 1})]
    got = run(data, probe_only, backend="jax")
    monkeypatch.setattr(jb, "cpu_lane_mesh", lambda lanes=None: None)  # a jax backend without lanes
    want = run(data, probe_only, backend="jax")
    np.testing.assert_array_equal(got.object.data, want.object.data)  # not updated
    assert np.max(np.abs(got.probe.data - want.probe.data)) / np.max(np.abs(want.probe.data)) < 1e-5


@pytest.mark.parametrize("n_slices", [1, 3])
def test_lsqml_group_step_meets_the_other_lane_once_a_pass(bk, n_slices):
    """LSQML's chunked step on CPU lanes: each pass over the chunks ends in one packed
    all-reduce of its sums, and nothing else makes the lanes meet. Each lane holds only its
    share of the group's mask, so the number of valid positions rides in the first pass's
    sums; counted apart, it was a third all-reduce a group on one slice, ~3-15% of LSQML
    single64 m1 g64's iteration (benchmarks/NOTES.md 62). Multislice meets once more, for
    the group mean of its steps' denominators, which its second pass gives."""
    import jax

    from phaser_std.engines.conventional_solvers import LsqmlConfig, LsqmlSolver, make_group_step
    from phaser_std.engines.noise_models import AmplitudeConfig, AmplitudeNoise
    from phaser_std.physics.forward import make_propagators

    n, b, h = 16, 16, 40
    rng = np.random.default_rng(0)
    obj = np.exp(0.3j * rng.random((n_slices, h, h))).astype(np.complex64)
    probe = (rng.random((1, n, n)) + 1j * rng.random((1, n, n))).astype(np.complex64)
    props = make_propagators(bk, (n, n), (0.2, 0.2), 0.025, [10.0] * n_slices)
    step = make_group_step(bk, LsqmlSolver(LsqmlConfig()), AmplitudeNoise(AmplitudeConfig()), props, (n, n),
                           chunk=4)
    args = (obj, probe, (rng.random((b, n, n)) * 10).astype(np.float32), rng.integers(0, h - n, (b, 2)).astype(np.int32),
            (rng.random((b, 2)) - 0.5).astype(np.float32), np.ones(b, bool),
            {"beta_object": np.float32(1.0), "beta_probe": np.float32(1.0)})
    hlo = jax.jit(step).lower(*args).compile().as_text()
    meetings = hlo.count(" all-reduce(")
    assert meetings == (2 if n_slices == 1 else 3), f"{meetings} all-reduces in the group step"


def test_gradient_chunks_meet_the_other_lane_once(bk):
    """The gradient engine's chunked step on CPU lanes: one packed all-reduce of the
    chunks' sums, the number of valid positions (which normalises the gradients) among
    them. Counted apart from the lanes' shares of the mask it was a second all-reduce a
    group (benchmarks/NOTES.md 62)."""
    import jax
    from test_gradient_engine import _group_case

    from phaser_std.engines.gradient_step import chunked_gradients

    model, args = _group_case(costs=())
    args = {k: v[:4] if k in ("frac", "starts", "measured") else v for k, v in args.items()}
    args["mask"] = np.array([1, 1, 1, 0], bool)
    a = {k: bk.asarray(v) for k, v in args.items()}
    m = model(bk)
    fn = jax.jit(lambda a: chunked_gradients(bk, m, 1, a["obj"], a["probe"], a["frac"], a["tilt"], a["starts"],
                                             a["measured"], a["mask"], a["cost_w"], wrt=("object", "probe"),
                                             count=True))
    assert fn.lower(a).compile().as_text().count(" all-reduce(") == 1
    assert float(fn(a)[2]["n_valid"]) == 3.0


def test_lsqml_multislice_takes_smaller_chunks_on_the_lanes(bk, monkeypatch):
    """LSQML's joint multislice step keeps more per position than ePIE's sweep, and on CPU
    lanes computes chunks of 1 MiB of waves where ePIE's are 2 MiB (7-12% faster,
    benchmarks/NOTES.md 65); on one device both keep the whole group. The memory planner
    makes the same choice."""
    import phaser_std.engines.memory as planner
    from phaser_core.config import ConventionalSolverSpec
    from phaser_core.memory import DataShape
    from phaser_core.plan import SlicesPlan
    from phaser_std.engines.chunking import conventional_budget, conventional_lane_budget
    from phaser_std.engines.common import GroupingConfig
    from phaser_std.engines.conventional import ConventionalConfig

    shape, budget = (64, 64), conventional_budget(8)  # 8 slices of 64²: 256 KiB a position
    for solver, want in (("lsqml", 4), ("epie", 8)):
        lane_budget = conventional_lane_budget(solver, 8)
        assert engine_chunk(bk, None, 64, 1, 8, shape, budget, lane_budget_bytes=lane_budget) == (bk, want)
        one = bk.one_lane()
        assert engine_chunk(one, None, 64, 1, 8, shape, budget, lane_budget_bytes=lane_budget) == (one, 64)
        monkeypatch.setattr(planner, "named_backend_lanes", lambda name: 2)
        config = ConventionalConfig(grouping=GroupingConfig(size=64), slices=SlicesPlan(n=8, total_thickness_A=80.0),
                                    solver=ConventionalSolverSpec(solver))
        z = planner.sizes(config, DataShape(n_patterns=256, pattern_shape=shape, host_itemsize=4),
                          {"probe": (1, *shape), "object": (8, 139, 139), "scan": (256, 2)}, "float32", "jax")
        assert planner._conventional_chunk(config, z, "jax")[1] == want, solver
    assert conventional_lane_budget("lsqml", 1) is None  # single slice: the lanes' default


def test_gradient_multislice_chunks_on_the_lanes(bk, monkeypatch):
    """The gradient engine's chunks on CPU lanes: 512 KiB of waves with several slices (two
    positions of 8 x 64², 4-6% faster than one, benchmarks/NOTES.md 66), the single-slice
    256 KiB otherwise; the memory planner makes the same choice."""
    import phaser_std.engines.memory as planner
    from phaser_core.memory import DataShape
    from phaser_core.plan import SlicesPlan
    from phaser_std.engines.chunking import gradient_lane_budget
    from phaser_std.engines.common import GroupingConfig
    from phaser_std.engines.gradient import GradientConfig

    shape = (64, 64)
    for slices, want in ((8, 2), (1, 8)):
        assert engine_chunk(bk, None, 64, 1, slices, shape, lane_budget_bytes=gradient_lane_budget(slices)) == (bk, want)
    monkeypatch.setattr(planner, "named_backend_lanes", lambda name: 2)
    config = GradientConfig(grouping=GroupingConfig(size=64), slices=SlicesPlan(n=8, total_thickness_A=80.0),
                            scale_probe=False)
    terms = planner.gradient_terms(config, DataShape(n_patterns=256, pattern_shape=shape, host_itemsize=4),
                                   {"probe": (1, *shape), "object": (8, 139, 139), "scan": (256, 2)}, "float32", "jax")
    assert any("(2 of B=64 positions at a time per lane" in t[0] for t in terms), [t[0] for t in terms]


def test_lane_plan_uses_the_most_lanes_the_chunks_divide_among():
    """A core count that does not divide the group's chunks (6 cores and 64 positions, 8
    cores and 100) spreads them over the most lanes they divide among, not over one."""
    from phaser_std.engines.chunking import lane_plan

    shape = (64, 64)  # 32 KiB a position; chunks of the lanes' 256 KiB: 8 positions
    assert lane_plan(2, None, 64, 1, 1, shape, 8, True) == (2, 8)
    assert lane_plan(3, None, 64, 1, 1, shape, 8, True) == (2, 8)
    assert lane_plan(6, None, 64, 1, 1, shape, 8, True) == (4, 8)
    assert lane_plan(8, None, 64, 1, 1, shape, 8, True) == (8, 8)
    assert lane_plan(8, None, 100, 1, 1, shape, 8, True) == (5, 5)  # 20 chunks of 5
    assert lane_plan(6, 16, 64, 1, 1, shape, 8, True) == (4, 16)  # a chunk the plan names
    assert lane_plan(6, None, 61, 1, 1, shape, 8, True) == (1, 61)  # a prime group: one lane
    # each lane gets at least 256 KiB of waves (what paid on two lanes): 16 positions of 32 KiB
    # use 2 of 8 lanes, 32 positions 4
    assert lane_plan(8, None, 16, 1, 1, shape, 8, True) == (2, 8)
    assert lane_plan(8, None, 32, 1, 1, shape, 8, True) == (4, 8)
    assert lane_plan(2, None, 16, 1, 1, shape, 8, True) == (2, 8)  # two lanes: as before


LANES_OF_THREE = """
import json, sys
sys.path.insert(0, {tests!r})
import numpy as np
import phaser_std.backends.jax_backend as jb
import phaser_std.engines.conventional as conventional
from recon import run

used = []
original = conventional.engine_chunk
def recording(*a, **k):
    bk, chunk = original(*a, **k)
    used.append((bk.lanes, chunk))
    return bk, chunk
conventional.engine_chunk = recording
engine = {engine!r}
got = run({data!r}, [engine], backend="jax")
jb.cpu_lane_mesh = lambda lanes=None: None  # a jax backend without lanes
want = run({data!r}, [engine], backend="jax")
print(json.dumps({{"devices": len(jb.jax.devices()), "used": used[0],
    "object": float(np.max(np.abs(got.object.data - want.object.data)) / np.max(np.abs(want.object.data))),
    "probe": float(np.max(np.abs(got.probe.data - want.probe.data)) / np.max(np.abs(want.probe.data))),
    "loss": float(np.max(np.abs(np.subtract(got.progress.loss, want.progress.loss)) / np.asarray(want.progress.loss)))}}))
"""


def test_three_cores_run_a_group_of_16_on_two_lanes(bk, data):
    """jax with three CPU devices (a 3-core machine): LSQML's multislice step on groups of 16
    takes chunks of 8 on two lanes (16 positions do not divide among 3), with the one
    device's numbers to float32 rounding (a subprocess: the device count is fixed when jax
    starts)."""
    import json
    import subprocess
    import sys

    code = LANES_OF_THREE.format(tests=str(Path(__file__).parent), data=str(data),
                                 engine=ENGINES["lsqml-multislice"])
    env = dict(os.environ, PHASER_JAX_CPU_DEVICES="3")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["devices"] == 3
    assert got["used"] == [2, 8]
    assert got["object"] < 2e-6 and got["probe"] < 2e-6 and got["loss"] < 1e-6, got


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_rows_split_over_the_lanes_read_as_one_copy(bk, dtype):
    """Patterns split over the lanes (one copy in all; N not a multiple of the lanes, so
    padded) give any rows exactly, for a group's indices and for a block of groups'."""
    import jax

    rng = np.random.default_rng(1)
    host = rng.integers(0, 200, size=(11, 6, 5)).astype(dtype)
    split = bk.split_rows(host)
    assert split.split_over_lanes and split.data.shape[0] == 12
    assert sorted(s.data.shape[0] for s in split.data.addressable_shards) == [6, 6]  # 6 rows a lane
    for idx in (np.array([10, 0, 5, 6, 6]), np.array([[3, 9], [10, 1]])):
        got = jax.jit(lambda s, i: s.take(i))(split, bk.asarray(idx))
        np.testing.assert_array_equal(np.asarray(got), host[idx])
        assert got.dtype == dtype


def test_split_patterns_are_built_a_lane_at_a_time_from_the_source(bk, monkeypatch):
    """Split over the lanes, the patterns are shifted and cast from the loader's array one
    lane's rows at a time (no whole host copy beside the lanes'), with the same rows and
    the same total, over the valid pixels too, as a feed that keeps a copy a lane."""
    import jax

    import phaser_std.engines.pattern_feed as feed

    rng = np.random.default_rng(2)
    pats = rng.integers(0, 300, size=(11, 6, 8)).astype(np.float32)  # counts: kept as uint16
    valid = rng.random((6, 8)) > 0.2  # corner-centred, as the engines hold the detector mask
    shifted = np.fft.ifftshift(pats, axes=(-2, -1))
    calls = []
    original = feed.ifftshift_cast

    def recording(host, dtype, **kw):
        calls.append(host.shape[0])
        return original(host, dtype, **kw)

    monkeypatch.setattr(feed, "ifftshift_cast", recording)
    monkeypatch.setattr(feed, "LANE_SPLIT_MIN_SAVING", 1)
    split = feed.PatternFeed(bk, pats, valid=valid)
    assert split.split and calls == [6, 5] and split.dtype == np.uint16  # one lane's rows at a time
    got = jax.jit(lambda s, i: s.take(i))(split.device, bk.asarray(np.arange(11)))
    np.testing.assert_array_equal(np.asarray(got), shifted)
    monkeypatch.setattr(feed, "LANE_SPLIT_MIN_SAVING", 1 << 60)
    kept = feed.PatternFeed(bk, pats, valid=valid)
    assert not kept.split
    assert kept.total_counts() == split.total_counts() == float(shifted[:, valid].sum())
    assert feed.PatternFeed(bk, pats).total_counts() == float(pats.sum())


def test_large_patterns_are_split_over_the_lanes_with_the_same_reconstruction(bk, data, monkeypatch):
    """Patterns whose copy per lane would cost LANE_SPLIT_MIN_SAVING or more are split over
    the lanes (here the threshold is lowered to take the small test data): the same
    reconstruction to the last bit, for a conventional and the gradient engine."""
    import phaser_std.engines.pattern_feed as feed
    from phaser_std.engines.pattern_feed import split_over_lanes

    assert split_over_lanes(2, feed.LANE_SPLIT_MIN_SAVING) and not split_over_lanes(2, feed.LANE_SPLIT_MIN_SAVING - 1)
    assert not split_over_lanes(1, 1 << 40)
    engines = [ENGINES["lsqml-multislice"], ENGINES["gradient-multislice"]]
    splits = []
    original = feed.PatternFeed.__init__

    def recording(self, *a, **k):
        original(self, *a, **k)
        splits.append(self.split)

    monkeypatch.setattr(feed.PatternFeed, "__init__", recording)
    kept = run(data, engines, backend="jax")
    assert splits == [False, False]
    monkeypatch.setattr(feed, "LANE_SPLIT_MIN_SAVING", 1)
    split = run(data, engines, backend="jax")
    assert splits[2:] == [True, True]
    np.testing.assert_array_equal(split.object.data, kept.object.data)
    np.testing.assert_array_equal(split.probe.data, kept.probe.data)
    assert split.progress.loss == kept.progress.loss


def test_a_run_short_of_memory_on_every_lane_runs_on_fewer(bk, tmp_path, monkeypatch):
    """Every lane holds its own copy of the object and its update maps: a run whose estimate
    does not fit on all the lanes but fits on fewer runs there, with a note that says so,
    instead of stopping; one that fits on none still stops naming the largest term."""
    from phaser_core.backend import lanes_at_most
    from phaser_core.errors import PhaserError
    from phaser_core.memory import estimate_plan
    from phaser_core.plan import load_plan
    from phaser_core.runner import run_plan

    data = make_dataset(tmp_path / "d.h5", scan={"shape": [8, 8]}, dose=1e5)
    plan = load_plan({"file_type": "phaser_plan", "version": 1, "backend": "jax",
                      "raw_data": {"type": "hdf5", "path": str(data)},
                      "engines": [{"type": "conventional", "niter": 1, "solver": {"type": "lsqml"},
                                   "grouping": {"size": 64}, "slices": {"n": 4, "total_thickness_A": 40.0}}]})
    on_all = estimate_plan(plan, plan_dir=tmp_path).peak
    with lanes_at_most(1):
        on_one = estimate_plan(plan, plan_dir=tmp_path).peak
    assert on_one < on_all
    seen = {}

    class Spy:
        def __getattr__(self, name):
            return lambda *args: None

        def before_engine(self, engine, state, ctx):
            seen["lanes"] = ctx.backend.lanes

        def on_note(self, text, ctx):
            seen.setdefault("notes", []).append(text)

    monkeypatch.setenv("PHASER_MEMORY_BUDGET_GIB", str((on_one + on_all) / 2 / 2**30))
    run_plan(plan, plan_dir=tmp_path, quiet=True, observers=[Spy()])
    assert seen["lanes"] == 1
    assert any(f"on {bk.lanes} CPU lanes" in n and "it runs on 1 of them" in n for n in seen["notes"])
    monkeypatch.setenv("PHASER_MEMORY_BUDGET_GIB", str(on_one / 2 / 2**30))
    with pytest.raises(PhaserError, match="largest term"):
        run_plan(plan, plan_dir=tmp_path, quiet=True)
