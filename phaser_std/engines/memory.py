"""Peak-memory estimates of the bundled engines (used by :mod:`phaser_core.memory`).

Each estimate is a list of ``(term_name, bytes, setting_hint, where)``; the planner adds
the shared host terms (raw patterns, the runner's initial state) and sums. Sizes (all
counts; ``r``/``c`` the real/complex itemsize [bytes] of the run's dtype):

- N patterns of P = Qy·Qx pixels; probe M modes of Ny·Nx = P; object S slices of H·W;
- a group of B = min(grouping.size, N) positions: one *wave array* is B·M·P·c, the object
  *views* B·S·P·c; a group computed ``grouping.chunk`` positions at a time (the gradient
  engine; the conventional steps of :func:`~phaser_std.engines.chunking.has_chunked_step`)
  counts the chunk's waves, plus what the step keeps of the whole group between passes;
- the probe-scaling pass before the first iteration runs the forward model on
  b = min(batch, N) positions at a time (:func:`~phaser_std.engines.common.scale_probe_to_data`,
  ``batch`` its default), except on one slice of unit amplitude (no forward pass).

Peak = persistent terms (patterns on the device, object, probe, optimizer state, host
snapshot) + the largest transient phase: the probe-scaling pass or one group step. A group
step holds the views, the waves entering each slice (kept for the backward sweep, or as
jax's autodiff residuals), the exit wave, the far field, χ, FFT workspace and scatter-add
maps: ``views + (a·S + k)·wave + d·B·P·c``, with ``a``, ``k``, ``d`` and the backend's own
overhead fitted per backend and engine family to measured runs (peak RSS growth;
``tests/memory_calibration.py --fit``; the table is in docs/memory.md). Object-sized terms
and the position/tilt extras are counted from the code, not fitted.
"""

from __future__ import annotations

from typing import Any

import attrs

from phaser_std.engines.chunking import (CACHE_BUDGET_BYTES, conventional_budget, conventional_lane_budget,
                                         gradient_lane_budget, has_chunked_step, lane_plan, named_backend_lanes,
                                         named_backend_on_cpu)
from phaser_std.engines.pattern_feed import block_groups, split_over_lanes

MiB = 1 << 20

#: Calibrated constants per backend (fitted to the runs in docs/memory.md). A transient
#: phase is ``views + (slice_waves·S + waves)·wave + pixels·B·P·c`` [bytes]; ``overhead_MiB``
#: ``compile_multislice_MiB`` (added for more than one slice) and
#: ``compile_unrolled_slice_MiB`` (per slice of LSQML's joint multislice step) are what the
#: backend itself adds (imports, FFT plans; jax: the XLA compilations, whose memory the
#: allocator keeps; the other multislice programs loop over the slices or, the gradient
#: engine's, measured no larger with more of them).
CONSTANTS: dict[str, dict[str, float]] = {
    "numpy": {
        "overhead_MiB": 34.25, "compile_multislice_MiB": 0.00, "compile_unrolled_slice_MiB": 0.00,
        "grad_overhead_MiB": 0.00,
        # eager forward: the slice waves (and FFT outputs) stay alive until the pass ends
        "dry_slice_waves": 1.42, "dry_waves": 4.09, "dry_pixels": -3.39,
        "conv_slice_waves": 2.50, "conv_waves": 8.00, "conv_pixels": 1.79,
        "conv_object": 4.0,   # object-sized maps and copies per group update (in S·H·W·c)
        "grad_slice_waves": 6.00, "grad_waves": 4.63, "grad_pixels": 8.00,
        "grad_object": 5.0,   # gradient, scaled gradient, optimizer temporaries (in S·H·W·c)
    },
    "jax": {
        # XLA compilations of the probe-scaling pass and the group step: a multislice
        # constant, and a term per slice only for LSQML's joint step, which unrolls them
        # (measured at 3, 8 and 20 slices, session 12, where 19 MiB a slice for all had
        # given 1.3-2.7x: ePIE 255 / 241 MiB at 8 / 20 slices, the gradient engine, whose
        # autodiff step unrolls them too, 260 / 248, LSQML 303 / 381). Since a vacuum start
        # scales the probe without a forward pass (NOTES.md 78) no dry-run program compiles,
        # and its term no longer stands in for the iteration program's compile: the
        # multislice constant refitted to session 21's runs (2 -> 32 MiB, memcal-jax-s21.json)
        "overhead_MiB": 119.0, "compile_multislice_MiB": 32.0, "compile_unrolled_slice_MiB": 8.0,
        "grad_overhead_MiB": 0.00,
        # the probe-scaling pass is compiled (one program per batch shape)
        "dry_slice_waves": 0.38, "dry_waves": 1.38, "dry_pixels": 3.45,
        "conv_slice_waves": 1.00, "conv_waves": 2.00, "conv_pixels": 1.00,
        # autodiff residuals: the slice waves kept for the backward pass, plus cotangents.
        # Set from XLA's buffer assignment of the paper-size step with the views gathered
        # per slice (whole groups of 16/32/64: 5.4 MiB a position, 2.15 views' worth), not
        # fitted: the CPU runs chunk multislice groups a position at a time, where the term
        # is small and the fit does not pin it (a refit to session 9's runs puts it at its
        # bound, 6); 3.21 -> 1.10 moved the CPU gradient cases by at most 3% (NOTES.md 40)
        "grad_slice_waves": 1.10, "grad_waves": 2.00, "grad_pixels": 0.00,
        # object-sized temporaries of a group update beside the object (and the optimizer
        # state), which the iteration program updates in place (donated buffers). From XLA's
        # buffer assignment of the paper-size iteration programs (80x80 x 128² x 20 slices,
        # group 64), the peak's growth with the object (pad_px 8 -> 208): ePIE 2.8, LSQML
        # 3.0, gradient 4.0 object sizes, less the object itself (and adam's 1.5)
        "conv_object": 2.0, "grad_object": 1.5,
    },
}
#: cupy behaves like numpy (eager, same temporaries) on the device
CONSTANTS["cupy"] = dict(CONSTANTS["numpy"])


def dry_run_batch() -> int:
    """Positions per batch of the probe-scaling pass: the default ``batch`` of
    :func:`~phaser_std.engines.common.scale_probe_to_data` (kept in sync by reading it)."""
    import inspect

    from phaser_std.engines.common import scale_probe_to_data

    return int(inspect.signature(scale_probe_to_data).parameters["batch"].default)


@attrs.frozen
class Sizes:
    """Sizes of one engine's run (counts; ``r`` the real itemsize [bytes]); the methods
    and properties return [bytes]. See the module docstring."""

    n: int
    p: int
    m: int
    s: int
    hw: int
    b: int
    r: int
    backend: str
    #: devices computing the group step at once (jax's CPU lanes; 1 elsewhere). Each holds
    #: the arrays every lane reads (patterns, object, probe, object-sized maps, optimizer
    #: state) and the working set of its own chunk.
    lanes: int = 1
    #: bytes a pattern value takes on the device: 1 or 2 for counted data (uint8, uint16), else ``r``
    q: int = 4

    @property
    def c(self) -> int:
        return 2 * self.r

    def wave(self, b: int | None = None) -> int:
        return (self.b if b is None else b) * self.m * self.p * self.c

    def views(self, b: int | None = None) -> int:
        return (self.b if b is None else b) * self.s * self.p * self.c

    @property
    def obj(self) -> int:
        return self.s * self.hw * self.c

    def phase(self, kind: str, b: int | None = None, views_by_slice: bool = False) -> int:
        """A transient phase (``kind`` dry, conv or grad) of ``b`` positions (default B)
        [bytes]; ``views_by_slice``: one slice's views live at a time, not all S."""
        b = self.b if b is None else b
        k = self.k
        waves = k[f"{kind}_slice_waves"] * self.s + k[f"{kind}_waves"]
        views = self.views(b) // self.s if views_by_slice else self.views(b)
        return max(0, views + int(waves * self.wave(b)) + int(k[f"{kind}_pixels"] * b * self.p * self.c))

    @property
    def k(self) -> dict[str, float]:
        return CONSTANTS.get(self.backend, CONSTANTS["numpy"])


def sizes(config: Any, data_shape: Any, state_shapes: dict, dtype: str, backend: str) -> Sizes:
    """:class:`Sizes` for an engine ``config`` (``probe_modes``, ``slices``, ``grouping``)."""
    m0, ny, nx = state_shapes["probe"]
    s0, h, w = state_shapes["object"]
    m = int(getattr(config, "probe_modes", None) or m0)
    slices = getattr(config, "slices", None)
    s = int(slices.n) if slices is not None else int(s0)
    n = int(data_shape.n_patterns)
    qy, qx = data_shape.pattern_shape
    b = max(1, min(int(config.grouping.size), n))
    r = 8 if str(dtype) == "float64" else 4
    return Sizes(n=n, p=int(qy) * int(qx), m=m, s=s, hw=int(h) * int(w), b=b, r=r, backend=str(backend),
                 lanes=named_backend_lanes(str(backend)), q=int(getattr(data_shape, "count_itemsize", 0)) or r)


def lanes_and_chunk(z: Sizes, requested: int | None, budget: int, chunked_step: bool,
                    backend: str, lane_budget_bytes: int | None = None) -> tuple[Sizes, int]:
    """``(sizes, chunk)`` as the engine chooses them (:func:`~phaser_std.engines.chunking.lane_plan`,
    chunk ``budget`` [bytes], ``lane_budget_bytes`` on lanes): the sizes keep their lanes
    where the step spreads its chunks over them, else one."""
    used, chunk = lane_plan(z.lanes, requested, z.b, z.m, z.s, (z.p, 1), z.c, named_backend_on_cpu(backend),
                            budget, chunked_step, lane_budget_bytes)
    return attrs.evolve(z, lanes=used), chunk


def _group_hint(z: Sizes, size: int) -> str:
    return f"lower grouping.size (now {size})"


def _common_terms(config: Any, z: Sizes, family: str = "conv", state_shapes: dict | None = None,
                  unrolled_slices: bool = False) -> tuple[list[tuple], tuple]:
    """Persistent terms every engine has, and the probe-scaling pass (name, bytes, hint).
    ``unrolled_slices``: the group step's program holds every slice (LSQML's joint step)."""
    k = z.k
    overhead = (k["overhead_MiB"] + (k["compile_multislice_MiB"] if z.s > 1 else 0.0)
                + (k["compile_unrolled_slice_MiB"] * z.s if unrolled_slices and z.s > 1 else 0.0)
                + (k["grad_overhead_MiB"] if family == "grad" else 0))
    on = _on_lanes(z)
    # counted data is stored as uint8 or uint16 (engines.pattern_feed.corner_centred)
    if _streamed(config, z):
        # the host keeps them corner-centred; the device a block and the next one in flight
        # (engines.pattern_feed waits for the older calls), on every lane
        group = z.b * z.p * z.q
        block = block_groups(-(-z.n // z.b), group) * group
        patterns = [("patterns kept on the host for streaming (N·Qy·Qx)", z.n * z.p * z.q,
                     "crop or bin the patterns (post_load)", "host"),
                    (f"streamed pattern blocks on the device (2 blocks){on}", 2 * z.lanes * block,
                     "crop or bin the patterns (post_load)", "device")]
        placing = []  # the host copy is the one kept
    else:
        if split_over_lanes(z.lanes, z.n * z.p * z.q):  # one copy, its rows split over the lanes
            rows = -(-z.n // z.lanes) * z.lanes
            patterns = [(f"patterns on the device (N·Qy·Qx), split over {z.lanes} CPU lanes", rows * z.p * z.q,
                         "crop or bin the patterns (post_load), or grouping.stream_patterns: true", "device")]
            # each lane's rows are shifted and cast on the host, then sent, one lane at a time
            placing = [(rows // z.lanes * z.p * z.q,
                        "placing the patterns: one lane's rows on the host, less the later compilations' memory",
                        "crop or bin the patterns (post_load)", "host")]
        else:
            fewer_lanes = ", or fewer CPU lanes (PHASER_JAX_CPU_DEVICES)" if z.lanes > 1 else ""
            patterns = [(f"patterns on the device (N·Qy·Qx){on}", z.lanes * z.n * z.p * z.q,
                         f"crop or bin the patterns (post_load), or grouping.stream_patterns: true{fewer_lanes}",
                         "device")]
            # the corner-centred host copy, while it is sent to the device (numpy: it is the copy)
            placing = [] if z.backend == "numpy" else [
                (z.n * z.p * z.q,
                 "placing the patterns: their corner-centred host copy, less the later compilations' memory",
                 "crop or bin the patterns (post_load)", "host")]
    terms = patterns + [
        (f"object (S·H·W complex){on}", z.lanes * z.obj,
         f"fewer slices (slices.n = {z.s}) or a smaller object field (init.object.pad_px)", "device"),
        (f"probe modes{on}", z.lanes * z.m * z.p * z.c, f"fewer probe modes (probe_modes = {z.m})", "device"),
        ("host snapshot of the state (observers, checkpoints)", z.obj + z.m * z.p * z.c,
         "a smaller object (fewer slices)", "host"),
        ("backend runtime, compilation and caches",
         int(overhead * MiB), "", "host"),
    ]
    # transient phases the group step's peak is compared with. The patterns are placed
    # before anything compiles, so the compilations' memory (in the overhead term) is not
    # yet held then: a placing phase counts only what it holds beyond that. On a GPU the
    # host copy is in another pool than the device's transients: not compared there
    on_cpu = named_backend_on_cpu(z.backend)
    alternatives = [(max(0, size - int(overhead * MiB)), *rest) for size, *rest in placing if on_cpu]
    given = state_shapes or {}
    # one slice of unit amplitude, or a vacuum on any number of slices, scales the probe
    # without a forward pass (scale_probe_to_data)
    shortcut = (z.s == 1 and given.get("unit_object", False)) or given.get("vacuum_object", False)
    if getattr(config, "scale_probe", False) and not given.get("probe_scaled", False) and not shortcut:
        b = min(dry_run_batch(), z.n)
        # on jax the pass gathers each slice's views inside its compiled loop (forward_intensity;
        # XLA's temporaries of the paper's batch 184 -> 24 MiB). Counted so on a GPU only:
        # the CPU's constants were fitted with all S counted, and its measured peaks barely
        # moved (20 slices of 64²: -10 MiB; one slice counted there gave 0.73x; NOTES.md 60)
        by_slice = z.backend == "jax" and z.s > 1 and not named_backend_on_cpu(z.backend)
        alternatives.append((z.lanes * z.phase("dry", b, views_by_slice=by_slice),
                             f"probe-scaling pass ({b} positions at a time, {z.s} slices x {z.m} modes){on}",
                             "set scale_probe: false when the probe intensity is already right, or use "
                             "fewer probe_modes/slices in the first engine", "device"))
    return terms, alternatives


def _streamed(config: Any, z: Sizes) -> bool:
    """Whether the engine streams its patterns (:mod:`~phaser_std.engines.pattern_feed`):
    ``grouping.stream_patterns``, by default on a GPU."""
    stream = getattr(getattr(config, "grouping", None), "stream_patterns", None)
    return (not named_backend_on_cpu(z.backend)) if stream is None else bool(stream)


def _on_lanes(z: Sizes) -> str:
    """The note a term held once per lane carries."""
    return f", on each of {z.lanes} CPU lanes" if z.lanes > 1 else ""


def _transient(group: tuple[int, str], alternatives: list[tuple[int, str, str, str]], group_hint: str) -> tuple:
    """The largest of the group step and the engine's other transient phases (``(bytes,
    name, hint, where)``: the probe-scaling pass, placing the patterns), as one term."""
    largest = max(alternatives, key=lambda a: a[0], default=None)
    if largest is not None and largest[0] > group[0]:
        return (largest[1], largest[0], largest[2], largest[3])
    return (group[1], group[0], group_hint, "device")


def conventional_terms(config: Any, data_shape: Any, state_shapes: dict, dtype: str,
                       backend: str = "numpy") -> list[tuple]:
    """Terms of the ``conventional`` engine (ePIE, LSQML)."""
    z = sizes(config, data_shape, state_shapes, dtype, backend)
    # a tilt per position with several slices: whole groups, each with its own propagators
    per_position = len(state_shapes.get("tilt", (2,))) == 2 and z.s > 1
    z, chunk = (attrs.evolve(z, lanes=1), z.b) if per_position else _conventional_chunk(config, z, backend)
    solver = getattr(config, "solver", None)
    joint = (str(getattr(solver, "type", "")) == "lsqml"
             and getattr(getattr(solver, "config", None), "multislice", "joint") == "joint")
    terms, alternatives = _common_terms(config, z, "conv", state_shapes, unrolled_slices=joint)
    k = z.k
    # ePIE's and LSQML's sequential sweep over whole groups loop over the slices: compiled
    # (jax), each slice's views are gathered where they are read (forward.SliceViews) and
    # the new slices written into the (donated) object's buffer
    by_slice = (chunk >= z.b and z.backend == "jax" and z.s > 1 and config.solver.type in ("epie", "lsqml")
                and not joint)
    if chunk < z.b:
        # a chunk's working set, plus what is kept of the whole group between passes.
        # LSQML: χ and the shifted probes (one slice), or χ, χ at the entrance and the waves
        # entering every slice, the first of them the shifted probes (multislice), with the
        # per-slice illumination (its probe-only step, in iterations without the object
        # update, keeps χ at the entrance alone: less). ePIE: the waves entering every slice
        # and χ into and out of a slice's pass (multislice), or χ and the probes only to
        # refine positions.
        if config.solver.type == "epie" and z.s > 1:
            kept = (z.s + 2) * z.wave()
        elif config.solver.type == "epie":
            kept = 2 * z.wave() if getattr(config, "position_solver", None) is not None else 0
        else:
            kept = (2 + (z.s if z.s > 1 else 0)) * z.wave() + z.b * z.s * z.p * z.r
        group = z.lanes * (z.phase("conv", chunk) + z.b * z.p * z.r) + kept
        name = (f"group step: {chunk} of B={z.b} positions at a time{' per lane' if z.lanes > 1 else ''}, "
                f"the group's chi and slice waves kept (M={z.m} x {z.p} px)")
    else:
        group = z.phase("conv", views_by_slice=by_slice)
        name = (f"group step: {'one slice at a time of the views' if by_slice else 'views'}, {z.s} slice waves, "
                f"far field, chi and FFT workspace (B={z.b} x M={z.m} x {z.p} px)")
    if per_position:
        group += z.b * (z.s - 1) * z.p * z.c
        name += ", the group's tilted propagators"
    terms.append(_transient((group, name), alternatives, _group_hint(z, config.grouping.size)))
    object_sized = k["conv_object"] - (1.0 if by_slice else 0.0)
    terms.append((f"object-sized maps of a group update (illumination, update{'' if by_slice else ', new object'})"
                   f"{_on_lanes(z)}", int(z.lanes * object_sized * z.obj), f"fewer slices (slices.n = {z.s})",
                   "device"))
    if getattr(config, "position_solver", None) is not None:
        # position_direction: P·∂O per axis (counted, not calibrated)
        terms.append(("position-correction direction (2 waves)", 2 * z.wave(), _group_hint(z, config.grouping.size),
                      "device"))
    return terms


def _conventional_chunk(config: Any, z: Sizes, backend: str) -> tuple[Sizes, int]:
    """The lanes and chunk of the conventional engine's group step
    (:mod:`~phaser_std.engines.chunking`)."""
    solver = getattr(config, "solver", None)
    multislice = getattr(getattr(solver, "config", None), "multislice", "joint")
    name = str(getattr(solver, "type", ""))
    if not has_chunked_step(name, z.s, multislice):
        return attrs.evolve(z, lanes=1), z.b
    return lanes_and_chunk(z, getattr(config.grouping, "chunk", None), conventional_budget(z.s), True, backend,
                           conventional_lane_budget(name, z.s))


def gradient_terms(config: Any, data_shape: Any, state_shapes: dict, dtype: str,
                   backend: str = "numpy") -> list[tuple]:
    """Terms of the ``gradient`` engine: the group step with its autodiff residuals (jax) or
    analytic adjoint (numpy/cupy), object-sized gradients and the optimizer state."""
    z = sizes(config, data_shape, state_shapes, dtype, backend)
    z, chunk = lanes_and_chunk(z, getattr(config.grouping, "chunk", None), CACHE_BUDGET_BYTES, True, backend,
                               gradient_lane_budget(z.s))
    terms, alternatives = _common_terms(config, z, "grad", state_shapes)
    k = z.k
    # the per-position work runs `chunk` positions at a time (on each lane); the group's
    # patterns whole, gathered by every lane
    # a whole multislice group's autodiff step gathers each slice's views where it is read,
    # on the way back too (gradient_step.chunked_gradients): one slice of them is live
    by_slice = backend == "jax" and z.s > 1 and chunk >= z.b
    group = z.lanes * (z.phase("grad", chunk, views_by_slice=by_slice) + z.b * z.p * z.r)
    what = "autodiff residuals" if backend == "jax" else "adjoint"
    name = (f"group step: views, {z.s} slice waves, far field, {what} and FFT workspace "
            f"({chunk} of B={z.b} positions at a time{' per lane' if z.lanes > 1 else ''} x M={z.m} x {z.p} px)")
    terms.append(_transient((group, name), alternatives, _group_hint(z, config.grouping.size)))
    terms.append((f"object gradient and update temporaries{_on_lanes(z)}", int(z.lanes * k["grad_object"] * z.obj),
                  f"fewer slices (slices.n = {z.s})", "device"))
    solvers = getattr(config, "solvers", None)
    if getattr(solvers, "positions", None) is not None:
        # d(shifted probe)/d(position): F(P) and one derivative per axis (counted, not calibrated)
        terms.append(("position gradient (3 waves)", 3 * z.wave(), _group_hint(z, config.grouping.size), "device"))
    if getattr(config, "tilt", "global") == "per_position" and z.s > 1:
        # per-position propagators and their tilt ramps (counted, not calibrated)
        terms.append(("per-position propagators (B·(S-1)·P, x2)", 2 * z.b * (z.s - 1) * z.p * z.c,
                      _group_hint(z, config.grouping.size), "device"))
    opt = 0
    for var, size in (("object", z.obj), ("probe", z.m * z.p * z.c)):
        spec = getattr(solvers, var, None) if solvers is not None else None
        if spec is None:
            continue
        kind = str(spec.type)
        # adam-like: two moments (mu complex, nu real); momentum/sgd trace: one
        per = 1.5 if "adam" in kind else (1.0 if kind in ("sgd", "momentum") else 1.5)
        opt += int(per * size)
    if opt:
        terms.append((f"optimizer state (adam: 2 moments per variable){_on_lanes(z)}", z.lanes * opt,
                      "sgd instead of adam for the object, or fewer slices", "device"))
    return terms
