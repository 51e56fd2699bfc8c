"""How a group's positions are split into chunks, and the backends' scan."""

from __future__ import annotations

import numpy as np
import pytest

from phaser_std.engines.chunking import CACHE_BUDGET_BYTES, auto_chunk, has_chunked_step, resolve_chunk

from conftest import build_backend


@pytest.mark.parametrize("group, per_position, expected", [
    (64, 64 * 64 * 8, 64),            # 1 mode, 1 slice, 64² complex64: 2 MiB a group, fits
    (256, 64 * 64 * 8, 64),           # a group of 256 -> 64 positions (2 MiB)
    (64, 4 * 64 * 64 * 8, 16),        # 4 modes: 8 MiB a group -> 16 positions (2 MiB)
    (64, 8 * 64 * 64 * 8, 8),         # 8 slices
    (64, 4 * 8 * 64 * 64 * 8, 2),     # 4 modes x 8 slices
    (48, 4 * 64 * 64 * 8, 16),        # wants 16: a divisor of 48
    (40, 4 * 64 * 64 * 8, 10),        # wants 16: the largest divisor of 40 up to 16 is 10
    (37, 4 * 64 * 64 * 8, 37),        # a prime group: no divisor near 16, the whole group
    (64, 10 * CACHE_BUDGET_BYTES, 1), # one position already exceeds the budget
])
def test_auto_chunk(group, per_position, expected):
    assert auto_chunk(group, per_position) == expected


def test_resolve_chunk_explicit_gpu_and_errors():
    args = (64, 4, 8, (64, 64), 8)
    assert resolve_chunk(None, *args, on_cpu=True) == 2
    assert resolve_chunk(None, *args, on_cpu=False) == 64  # a GPU keeps whole groups
    assert resolve_chunk(16, *args, on_cpu=True) == 16
    for bad in (0, 5, 128):
        with pytest.raises(ValueError, match=f"grouping.chunk: {bad} must be a positive divisor"):
            resolve_chunk(bad, *args, on_cpu=True)


@pytest.mark.parametrize("solver, slices, multislice, expected", [
    ("epie", 1, "joint", True), ("epie", 8, "joint", True), ("lsqml", 1, "sequential", True),
    ("lsqml", 8, "joint", True), ("lsqml", 8, "sequential", False), ("my_plugin_rule", 1, "joint", False),
])
def test_which_conventional_steps_have_chunks(solver, slices, multislice, expected):
    """ePIE chunks with any number of slices; LSQML's ``sequential`` multislice sweep and
    rules the package does not know take whole groups."""
    assert has_chunked_step(solver, slices, multislice) is expected


@pytest.mark.parametrize("backend", ["numpy", "jax"])
def test_scan_carries_and_stacks(backend):
    """``bk.scan`` (a loop on numpy, ``lax.scan`` on jax): the carry threads through the
    steps in order, per-step outputs stack on a new axis, None entries of xs pass as None."""
    bk = build_backend(backend, "float32")
    rows = bk.asarray(np.arange(12, dtype=np.float32).reshape(4, 3))
    xs = (rows, None, (rows, 10 * rows))  # an array, None, a plain tuple of arrays

    def body(carry, x):
        row, nothing, (same, tenfold) = x
        assert nothing is None
        return carry * 2 + bk.xp.sum(row), {"twice": 2 * row, "ratio": tenfold - 10 * same}

    carry, ys = bk.scan(body, bk.asarray(np.float32(1.0)), xs)
    expected = 1.0
    for row in np.arange(12).reshape(4, 3):
        expected = expected * 2 + row.sum()
    assert float(bk.to_numpy(carry)) == expected
    np.testing.assert_array_equal(bk.to_numpy(ys["twice"]), 2 * np.arange(12).reshape(4, 3))
    np.testing.assert_array_equal(bk.to_numpy(ys["ratio"]), np.zeros((4, 3)))  # the tuple's rows, in order


def test_solver_subclasses_keep_the_whole_group_step():
    """The chunked steps re-implement the built-in ePIE and LSQML rules; a subclass that
    changes a rule (here: an ePIE that never moves the object) must still be called."""
    from phaser_std.engines.conventional_solvers import EpieConfig, EpieSolver, make_group_step
    from phaser_std.engines.noise_models import AmplitudeConfig, AmplitudeNoise

    class FrozenObject(EpieSolver):
        def object_update(self, bk, obj_slice, starts, psi, chi, mask, probe_dir=None):
            return obj_slice, None, None

    bk = build_backend("numpy", "float32")
    rng = np.random.default_rng(1)
    n, b, h = 16, 8, 48
    obj = np.exp(0.3j * rng.random((1, h, h))).astype(np.complex64)
    probe = (rng.random((1, n, n)) + 1j * rng.random((1, n, n))).astype(np.complex64)
    args = (obj, probe, (rng.random((b, n, n)) * 10).astype(np.float32), rng.integers(0, h - n, (b, 2)),
            (rng.random((b, 2)) - 0.5).astype(np.float32), np.ones(b, bool),
            {"beta_object": np.float32(1.0), "beta_probe": np.float32(1.0)})
    frozen = make_group_step(bk, FrozenObject(EpieConfig()), AmplitudeNoise(AmplitudeConfig()), None, (n, n), chunk=2)
    new_obj, new_probe, _, _ = frozen(*args)
    np.testing.assert_array_equal(new_obj, obj)
    assert not np.allclose(new_probe, probe)  # the probe still updates
    plain = make_group_step(bk, EpieSolver(EpieConfig()), AmplitudeNoise(AmplitudeConfig()), None, (n, n), chunk=2)
    assert not np.allclose(plain(*args)[0], obj)  # the built-in rule, chunked, moves it


def _multislice_step(rule, n_slices: int, n: int, b: int, h: int, seed: int, chunk: int | None = None):
    """``(step, props, args)``: the jax group step of the conventional ``rule`` with an
    amplitude noise model, for one mode, ``b`` positions of ``n``² on ``n_slices`` random
    slices of ``h``², and its arguments (the propagators apart: the engines pass them as
    an argument, since closed over they would be constants written into the program)."""
    from phaser_std.engines.conventional_solvers import make_group_step
    from phaser_std.engines.noise_models import AmplitudeConfig, AmplitudeNoise

    bk = build_backend("jax", "float32")
    rng = np.random.default_rng(seed)
    obj = np.exp(0.3j * rng.random((n_slices, h, h))).astype(np.complex64)
    props = bk.asarray(np.exp(0.1j * rng.random((n_slices - 1, n, n))).astype(np.complex64))
    probe = (rng.random((1, n, n)) + 1j * rng.random((1, n, n))).astype(np.complex64)
    args = (obj, probe, (rng.random((b, n, n)) * 10).astype(np.float32),
            rng.integers(0, h - n, (b, 2)).astype(np.int32), (rng.random((b, 2)) - 0.5).astype(np.float32),
            np.ones(b, bool), {"beta_object": np.float32(1.0), "beta_probe": np.float32(1.0)})
    return make_group_step(bk, rule, AmplitudeNoise(AmplitudeConfig()), props, (n, n), chunk=chunk), props, args


@pytest.mark.parametrize("solver, update_object, chunk", [("epie", True, 2), ("epie", False, 2), ("epie", True, 8),
                                                    ("lsqml", False, 2)])
def test_multislice_programs_do_not_grow_with_the_slices(solver, update_object, chunk):
    """On jax ePIE's steps (chunked, and the whole group's sweep: ``chunk`` 8) and LSQML's
    probe-only step loop over the slices in one compiled loop body, as the forward model
    does, so the program, and with it the compile time and the compiler's memory, is the
    same size for 3 slices as for 12 (before, every slice was unrolled into the program:
    20 slices of 64² compiled ePIE's iteration in 1.2 s and peaked above phaserEM's memory;
    benchmarks/NOTES.md 58). LSQML's joint step keeps its slices unrolled (faster)."""
    jax = pytest.importorskip("jax")
    from phaser_std.engines.conventional_solvers import EpieConfig, EpieSolver, LsqmlConfig, LsqmlSolver

    rule = EpieSolver(EpieConfig()) if solver == "epie" else LsqmlSolver(LsqmlConfig())

    def program_size(n_slices: int) -> int:
        step, props, args = _multislice_step(rule, n_slices, n=16, b=8, h=48, seed=2, chunk=chunk)
        lowered = jax.jit(lambda hs, *a: step(*a, update_object=update_object, props=hs)).lower(props, *args)
        return len(lowered.as_text())

    small, large = program_size(3), program_size(12)
    assert large < 1.1 * small, f"the program grew from {small} to {large} characters with 4x the slices"


@pytest.mark.parametrize("multislice_rule, waves_per_slice", [("epie", 1.3), ("sequential", 1.3), ("joint", 2.5)])
def test_whole_group_sweep_holds_one_slice_of_views(multislice_rule, waves_per_slice):
    """On jax, a whole group's ePIE (a GPU's default path) and LSQML sequential step gather
    each slice's views inside the loop over the slices, write the waves entering the slices
    into one buffer and the new slices into the (donated) object's: XLA's temporaries grow
    by 1.00 wave arrays a slice here (the entering waves the backward sweep needs), where
    they grew by 3.56 (also the views of all slices, the copy joining the stacked entering
    waves to the last, and a second object), and by 1.56 while the sweep read slice i from
    the object in the step that wrote it (XLA then copied the object twice a slice); the
    paper's size, whole iteration program: 599 -> 295 -> 217 MiB (benchmarks/NOTES.md 59,
    61). LSQML's joint step gathers each pass's views anew rather than keep them (3.30 ->
    2.19)."""
    jax = pytest.importorskip("jax")
    from phaser_std.engines.conventional_solvers import EpieConfig, EpieSolver, LsqmlConfig, LsqmlSolver

    n, b = 32, 16
    rule = EpieSolver(EpieConfig()) if multislice_rule == "epie" else LsqmlSolver(
        LsqmlConfig(multislice=multislice_rule))

    def temporaries(n_slices: int) -> int:
        step, props, args = _multislice_step(rule, n_slices, n=n, b=b, h=96, seed=3)
        # the object donated, as the engines' iteration programs do
        compiled = jax.jit(lambda hs, *a: step(*a, props=hs), donate_argnums=(1,)).lower(props, *args).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    wave = b * n * n * 8  # one (B, M=1, Ny, Nx) complex64 array
    per_slice = (temporaries(12) - temporaries(3)) / 9 / wave
    assert per_slice < waves_per_slice, f"the step's temporaries grow by {per_slice:.2f} wave arrays a slice"
