"""What every engine does around its update rule: settings, transfer, the iteration loop.

Engines (conventional, gradient) resample the state to their settings
(:func:`resample_for_engine`), set up their arrays with :func:`engine_arrays` (the check
that the patterns are on the probe's grid, the transfer to the backend, the probe scaling,
the position bounds and the snapshot back to a state) and supply three hooks to
:class:`EngineLoop`: the start of an iteration, the per-group step and the end of an
iteration. The loop owns the rest: the grouping from the plan seed,
view corners of all positions once per iteration, timing, the progress record, observers
and Ctrl-C. Positions stay on the host in float64 [Å].
"""

from __future__ import annotations

import time
from typing import Any, Callable

import attrs
import numpy as np

from phaser_core.backend import stream_seed
from phaser_core.config import Flag, RegularizerSpec, in_range, param, yx_int_pair_or_none
from phaser_core.data import detector_mask
from phaser_core.errors import DataError, PhaserError
from phaser_core.observer import announce, notify
from phaser_core.plan import SlicesPlan
from phaser_core.state import (DeferredState, IterationCounters, ObjectState, ProbeState, ReconsState,
                                constant_unit_slices, unit_amplitude)
from phaser_std.engines.grouping import iteration_groups
from phaser_std.engines.pattern_feed import PatternFeed, corner_centred
from phaser_std.engines.regularizers import RegInfo
from phaser_std.physics.forward import check_views_inside, forward_intensity, scan_to_pixels
from phaser_std.physics.objects import resample_object_slices
from phaser_std.physics.resample import resample_probe_state


def _check_chunk(instance: Any, attribute: Any, value: int | None) -> None:
    """``chunk``: null or a positive divisor of ``size``."""
    size = instance.size
    if value is None or isinstance(size, bool) or not isinstance(size, int) or size < 1:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1 or size % value:
        divisors = [d for d in range(1, size + 1) if size % d == 0]
        shown = ", ".join(map(str, divisors if len(divisors) <= 12 else divisors[:6] + ["..."] + divisors[-3:]))
        raise ValueError(f"must be a divisor of grouping.size = {size} ({shown}), or null to size it "
                         f"automatically; got {value}", attribute)


@attrs.frozen
class GroupingConfig:
    """How positions are grouped for the per-group updates."""

    size: int = param(64, doc="positions per group", validator=in_range(1))
    kind: str = param("sparse", doc="'sparse' (random over the scan) or 'compact' (spatial clusters)",
                      validator=attrs.validators.in_(("sparse", "compact")))
    regroup: bool | None = param(None, doc="new partition every iteration (default: sparse yes, compact no)")
    chunk: int | None = param(None, doc="positions computed at once inside a group, a divisor of size "
                              "(null: sized to the CPU caches, the whole group on a GPU); speed and memory "
                              "only, the update is the same", validator=_check_chunk)
    stream_patterns: bool | None = param(None, doc="send the patterns to the device a block of groups at a time "
                                                   "instead of keeping all of them there (null: on a GPU yes, on "
                                                   "a CPU no); memory only, the update is the same")


@attrs.frozen
class StopConfig:
    """An engine's early stop: when for ``patience`` iterations its loss has not fallen
    below its best before them by more than ``min_rel_change`` of that best's magnitude (a
    flat loss stops even at ``min_rel_change: 0``; a negative loss, which the Poisson model
    can give, is judged the same way)."""

    patience: int = param(5, doc="iterations without enough improvement before stopping", validator=in_range(1))
    min_rel_change: float = param(1e-4, doc="the relative fall of the loss that counts as improvement",
                                  validator=in_range(0, 1))

    def converged(self, losses: list[float]) -> bool:
        """Whether the engine's loss record ``losses`` (oldest first) says stop."""
        n = int(self.patience)
        if len(losses) <= n:
            return False
        best = min(losses[:-n])
        return min(losses[-n:]) >= best - float(self.min_rel_change) * abs(best)


#: the default of the engines' ``update_positions`` and ``update_tilt`` switches
REFINE_SWITCH = Flag(after=1)


def switches_without_solver(config: Any, pairs: tuple[tuple[str, str, Any], ...]) -> list[tuple[tuple, str]]:
    """``plan_issues`` of a refinement switch a plan turns on (``true``, ``{after: N}``: not
    its default, not ``false``) while the solver it needs is missing, so that nothing would
    be refined and nothing said. ``pairs``: ``(switch key, solver key, solver spec)``."""
    issues = []
    for switch, solver_key, solver in pairs:
        flag = getattr(config, switch)
        if solver is None and flag.enabled and flag != REFINE_SWITCH:
            issues.append(((switch,), f"is set, but {solver_key} is null, so nothing would be refined: give "
                                      f"{solver_key} (e.g. {{type: {'momentum' if '.' not in solver_key else 'adam'}}})"
                                      " or leave the switch out"))
    return issues


def stop_when_param() -> Any:
    """The engines' ``stop_when`` setting (:class:`StopConfig`)."""
    return param(None, doc="stop before niter once the loss stops falling, e.g. {patience: 5, min_rel_change: "
                           "1e-4} (null: run all niter iterations)")


def _check_sim_shape(instance: Any, attribute: Any, value: Any) -> None:
    if value is not None and min(value) < 8:
        raise ValueError(f"must be at least 8 x 8 detector pixels, got {list(value)}", attribute)


def sim_shape_param() -> Any:
    """The engines' ``sim_shape`` setting (:mod:`phaser_std.physics.grid`)."""
    return param(None, unit="px", converter=yx_int_pair_or_none, validator=_check_sim_shape,
                 doc="(Qy, Qx) detector grid for this engine and the ones after it: the patterns cropped or "
                     "zero-padded (padded pixels left out of the fit) about the zero angle, so the real-space "
                     "pixel becomes 1/(Q·Δk), the probe and object resampled to it (null: keep the grid)")


def resample_for_engine(state: ReconsState, probe_modes: int | None, slices: SlicesPlan | None,
                        seed: int, engine_num: int) -> ReconsState:
    """The state with the engine's number of probe modes and object slices (host arrays).

    The returned state has its own iteration counters and progress record, which the
    engine loop updates in place, so the caller's state is never changed.
    """
    state = attrs.evolve(state, iteration=attrs.evolve(state.iteration),
                         progress=attrs.evolve(state.progress, iters=list(state.progress.iters),
                                               loss=list(state.progress.loss), time_s=list(state.progress.time_s),
                                               engine=list(state.progress.engine)))
    if probe_modes is not None and probe_modes != state.probe.n_modes:
        rng = np.random.default_rng(stream_seed(seed, f"probe-modes-{int(engine_num)}"))
        state = attrs.evolve(state, probe=resample_probe_state(state.probe, probe_modes, rng=rng))
    if slices is not None:
        current_total = float(np.sum(state.object.thicknesses_A))
        try:
            thick = slices.resolve(current_total)
        except ValueError:
            raise PhaserError(f"engines[{engine_num}].slices: n = {slices.n} slices need total_thickness_A or "
                              "thicknesses_A [Å]: the object this engine starts from has no thickness") from None
        if slices.n != state.object.n_slices or not np.allclose(thick, state.object.thicknesses_A):
            state = attrs.evolve(state, object=resample_object_slices(state.object, slices.n, thick))
    return state


def patterns_to_device(bk: Any, patterns: Any, counted: Any = "find") -> Any:
    """``(N, Qy, Qx)`` centred patterns [e⁻] -> corner-centred on the backend (one copy), in
    the dtype they are kept in (:func:`~phaser_std.engines.pattern_feed.corner_centred`:
    counted data as uint8 or uint16, a quarter or half the memory of float32; other data in
    the backend's real dtype). Engines read a group through :func:`group_patterns`; a
    :class:`~phaser_std.engines.pattern_feed.PatternFeed` keeps them so or streams them."""
    return bk.step_inputs(corner_centred(bk, patterns, counted))[0]


def group_patterns(bk: Any, patterns: Any, idx: Any) -> Any:
    """The patterns ``idx`` of a group, in the backend's real dtype [e⁻] (patterns split over
    CPU lanes, :meth:`~phaser_core.backend.BaseBackend.split_rows`, through their ``take``)."""
    group = patterns.take(idx) if getattr(patterns, "split_over_lanes", False) else patterns[idx]
    return group if group.dtype == bk.real_dtype else group.astype(bk.real_dtype)


def scale_probe_to_data(bk: Any, probe: Any, obj: Any, patterns: PatternFeed, scan_A: np.ndarray,
                        geometry: ObjectState, props: Any, batch: int = 64, valid: np.ndarray | None = None) -> Any:
    """The probe scaled so the model's total intensity equals the data's (the dry run).

    One compiled function over equal batches (the last one padded and masked), so jax
    compiles it once instead of dispatching every kernel eagerly. Batches of 64: on numpy
    the waves entering every slice are held for a batch (S·B·M·Ny·Nx complex values), which
    at 256 set the peak memory of multislice runs. One slice of unit amplitude (a vacuum or
    random-phase start) needs no forward pass: each position's model total is then
    Σ_modes Σ|P|² (Parseval); nor do several slices that are each one value of modulus 1
    (a vacuum start), whose total is what the propagators' band limit keeps of the probe
    (``props`` ``(S-1, Ny, Nx)``, the engine-wide ones). ``patterns``: the run's
    :class:`~phaser_std.engines.pattern_feed.PatternFeed` (only their total [e⁻] is read).
    ``valid`` (corner-centred ``(Qy, Qx)`` bool, the detector mask): both totals over those
    pixels only (no Parseval shortcut then); the feed's total must be over the same."""
    shape = probe.shape[-2:]
    xp = bk.xp
    n = scan_A.shape[0]
    batch = max(1, min(batch, n))
    probe_host = bk.to_numpy(probe)
    data_sum = patterns.total_counts()
    obj_host = bk.to_numpy(obj) if valid is None else None
    if valid is None and obj.shape[0] == 1 and unit_amplitude(obj_host):
        # one slice of |O| = 1: the sub-pixel shift (a phase ramp) and the unitary far
        # field keep Σ|ψ|², so each position's model total is Σ_modes Σ|P|² (Parseval)
        # and no forward pass (nor, on jax, its compilation) is needed
        model_sum = n * float(np.sum(np.abs(probe_host.astype(np.complex128)) ** 2))
        return _scaled_probe(bk, probe_host, data_sum, model_sum)
    if valid is None and props is not None and len(np.shape(props)) == 3 and constant_unit_slices(obj_host):
        # several slices, each one value of modulus 1 (a vacuum start): the wave leaves them
        # as the probe times the propagators' product, whatever the shift, so each
        # position's model total is Σ_modes Σ_k |Π H_i(k)|²·|F[P](k)|² / (Ny·Nx) (Parseval):
        # what the band limit keeps of the probe. No forward pass, and on jax no program
        # to compile (0.25-0.34 s of a cold multislice start, NOTES.md 78)
        transfer = np.prod(np.abs(bk.to_numpy(props).astype(np.complex128)) ** 2, axis=0)
        probe_k = np.fft.fft2(probe_host.astype(np.complex128), axes=(-2, -1))
        model_sum = n * float(np.sum(transfer * np.abs(probe_k) ** 2)) / (shape[0] * shape[1])
        return _scaled_probe(bk, probe_host, data_sum, model_sum)

    def batch_sum(probe_, obj_, props_, starts, frac, mask):
        # the propagators an argument, not constants of the program: another slice
        # thickness of the same shapes reuses it (jax's compilation cache)
        inten = forward_intensity(bk, probe_, obj_, starts, frac, props_)
        if valid is not None:
            inten = inten * xp.asarray(valid)
        return xp.sum(xp.sum(inten, axis=(-2, -1)) * mask)

    fn = bk.jit(batch_sum)
    all_starts, all_frac = scan_to_pixels(scan_A, geometry.corner_A, geometry.sampling_A, shape)
    check_views_inside(all_starts, shape, obj.shape)
    model_sum = 0.0
    for i in range(0, n, batch):
        sel = np.arange(i, i + batch)
        mask = (sel < n).astype(np.float64)
        sel = np.minimum(sel, n - 1)
        model_sum += float(bk.to_numpy(fn(probe, obj, props, bk.asarray(all_starts[sel]), bk.asarray(all_frac[sel]),
                                          bk.asarray(mask))))
    return _scaled_probe(bk, probe_host, data_sum, model_sum)


def _scaled_probe(bk: Any, probe_host: np.ndarray, data_sum: float, model_sum: float) -> Any:
    if model_sum <= 0 or data_sum <= 0:
        raise DataError("cannot scale the probe to the data: the data or the model has no intensity")
    # scaled on the host (a small array; on jax an eager multiply compiles a program of its
    # own), by a Python float: a numpy float64 scalar would promote a complex64 probe to
    # complex128, and every wave computed from it
    return bk.asarray(probe_host * float(np.sqrt(data_sum / model_sum)), dtype=bk.complex_dtype)


@attrs.define
class EngineArrays:
    """What an engine run starts from (:func:`engine_arrays`), and its way back to a state.

    ``patterns``: the :class:`~phaser_std.engines.pattern_feed.PatternFeed` of the
    ``(N, Qy, Qx)`` patterns [e⁻], corner-centred. On the backend: ``probe``
    ``(M, Ny, Nx)`` [√e⁻] and ``obj`` ``(S, H, W)`` [transmission, 1] in the backend's
    complex dtype. On the host: ``scan_A`` ``(N, 2)`` [Å] float64 (a copy of the state's);
    ``scan_lo_A`` and ``scan_hi_A`` ``(2,)`` [Å], the positions whose ``(Ny, Nx)`` view stays
    inside the object (:meth:`clip_scan`); ``extra``, a copy of ``state.extra`` that the
    engine writes to and :meth:`snapshot` hands back. An engine takes ``probe`` and ``obj``
    into its own live state before iterating and sets them to None here: on jax the
    iteration programs donate those buffers.
    """

    state: ReconsState  #: the engine's state (resample_for_engine): iteration counters, progress
    probe_shape: tuple[int, int]  #: ``(Ny, Nx)`` [px], equal to the detector's ``(Qy, Qx)``
    wavelength_A: float  #: [Å]: the state's, else the data's
    geometry: ObjectState  #: the object's grid (sampling, corner, slice thicknesses) [Å]
    #: the detector's valid pixels ``(Qy, Qx)`` bool, corner-centred, on the host; None: all
    valid: np.ndarray | None
    patterns: PatternFeed
    probe: Any
    obj: Any
    scan_A: np.ndarray
    extra: dict
    scan_lo_A: np.ndarray
    scan_hi_A: np.ndarray

    def scale_probe(self, bk: Any, props: Callable[[], Any]) -> None:
        """Scale ``probe`` to the data (:func:`scale_probe_to_data`) unless an earlier engine
        did (``extra["probe_scaled"]``, then set); ``props()`` gives the propagators of the dry
        run and is called only when the probe is scaled."""
        if self.extra.get("probe_scaled", False):
            return
        self.probe = scale_probe_to_data(bk, self.probe, self.obj, self.patterns, self.scan_A, self.geometry,
                                         props(), valid=self.valid)
        self.extra["probe_scaled"] = True

    def bandlimit(self, requested: float | None, data: Any) -> float | None:
        """The propagators' band limit [fraction of k_Nyquist]: ``requested`` raised to cover
        the probe's aperture (:func:`~phaser_std.physics.propagation.covering_bandlimit`).

        The aperture radius [1/Å] is taken once per run and kept in
        ``extra["probe_aperture_invA"]``, so later engines and a resumed run build the same
        propagators whatever the probe has become: the bandwidth of the probe this first
        engine starts from, at least α/λ of the data's convergence angle
        (:func:`~phaser_std.physics.propagation.aperture_radius_invA`)."""
        from phaser_std.physics.propagation import aperture_radius_invA, covering_bandlimit

        radius_invA = self.extra.get("probe_aperture_invA")
        if radius_invA is None:
            radius_invA = aperture_radius_invA(self.state.probe.data, self.geometry.sampling_A,
                                               getattr(data, "convergence_angle_mrad", None), self.wavelength_A)
            self.extra["probe_aperture_invA"] = float(radius_invA)
        return covering_bandlimit(requested, self.probe_shape, self.geometry.sampling_A, float(radius_invA))

    def clip_scan(self, scan_A: np.ndarray) -> np.ndarray:
        """Positions ``(N, 2)`` [Å] clipped to ``[scan_lo_A, scan_hi_A]``, so views stay inside the object."""
        return np.clip(scan_A, self.scan_lo_A, self.scan_hi_A)

    def snapshot(self, bk: Any, probe: Any, obj: Any, scan_A: np.ndarray, tilt_mrad: np.ndarray) -> ReconsState:
        """A host state of the live ``probe`` and ``obj`` (backend arrays), positions ``scan_A``
        [Å] and tilt ``tilt_mrad`` [mrad] (copied), on the engine's grid, with the state's
        iteration counters and progress (the engine loop gives each iteration its own) and a
        copy of this run's ``extra`` (later iterations replace its entries, not this one's)."""
        state, geometry = self.state, self.geometry
        return ReconsState(
            probe=ProbeState(data=bk.to_numpy(probe), sampling_A=tuple(state.probe.sampling_A)),
            object=ObjectState(data=bk.to_numpy(obj), sampling_A=tuple(geometry.sampling_A),
                               corner_A=tuple(geometry.corner_A), thicknesses_A=np.asarray(geometry.thicknesses_A)),
            scan_A=np.array(scan_A), tilt_mrad=np.array(tilt_mrad), iteration=state.iteration,
            progress=state.progress, wavelength_A=self.wavelength_A, extra=dict(self.extra))


def engine_arrays(bk: Any, state: ReconsState, data: Any, stream: bool | None = None) -> EngineArrays:
    """The set-up shared by the engines: the state's arrays on the backend ``bk``.

    ``state`` is the engine's (after :func:`resample_for_engine`) and ``data`` the raw data
    (``patterns`` ``(N, Qy, Qx)`` [e⁻] centred, ``pattern_shape``, ``wavelength_A()`` [Å]).
    Raises :class:`DataError` when the patterns ``(Qy, Qx)`` are not on the probe's
    ``(Ny, Nx)`` grid: the engines do not resample, the data is cropped or binned first
    (post_load) or the probe initialised on the detector grid. The probe is not scaled here:
    engines call :meth:`EngineArrays.scale_probe` after their own checks. ``stream``: the
    patterns streamed to the device a block of groups at a time (None: on a GPU;
    :mod:`~phaser_std.engines.pattern_feed`).
    """
    probe_shape = state.probe.shape
    if tuple(data.pattern_shape) != tuple(probe_shape):
        raise DataError(f"patterns are {data.pattern_shape} but the probe is {probe_shape}: "
                        "crop or bin the data (post_load) or initialise the probe on the detector grid")
    geometry = state.object
    sampling = np.asarray(geometry.sampling_A, dtype=np.float64)
    half = np.array(probe_shape) // 2
    corner = np.asarray(geometry.corner_A)
    valid = valid_pixels(data)
    return EngineArrays(
        state=state, probe_shape=probe_shape, wavelength_A=state.wavelength_A or data.wavelength_A(),
        geometry=geometry, valid=valid,
        patterns=PatternFeed(bk, data.patterns, getattr(data, "counted_dtype", "find"), stream, valid),
        probe=bk.asarray(np.asarray(state.probe.data), dtype=bk.complex_dtype),
        obj=bk.asarray(np.asarray(geometry.data), dtype=bk.complex_dtype),
        scan_A=np.array(state.scan_A, dtype=np.float64), extra=dict(state.extra),
        scan_lo_A=corner + sampling * half,
        scan_hi_A=corner + sampling * (np.array(geometry.shape) - np.array(probe_shape) + half - 1))


def valid_pixels(data: Any) -> np.ndarray | None:
    """The detector's valid pixels, ``data.mask`` ``(Qy, Qx)`` corner-centred like the
    engines' patterns, or None when every pixel is valid (no mask, or nothing masked)."""
    mask = detector_mask(data)
    if mask is None or mask.all():
        return None
    if not mask.any():
        raise DataError(f"{getattr(data, 'source', None) or 'the raw data'}: the detector mask marks every pixel "
                        "invalid: nothing is left to fit")
    return np.fft.ifftshift(mask)


def build_constraints(specs: tuple[RegularizerSpec, ...], registry: Any) -> list:
    return [spec.build(registry) for spec in specs]


def apply_constraints(bk: Any, constraints: list, probe: Any, obj: Any, info: RegInfo) -> tuple[Any, Any]:
    for c in constraints:
        probe, obj = c.apply(bk, probe, obj, info)
    return probe, obj


def scan_groups(bk: Any, group_step: Callable, carry: tuple, per_group: tuple) -> tuple[tuple, dict]:
    """Run ``group_step(*carry, *x) -> (*new_carry, outputs)`` over the groups of an
    iteration: ``per_group`` holds ``(G, ...)`` arrays (one row per group), ``outputs`` a
    dict of per-group arrays, returned stacked ``(G, ...)``. On jax this is one
    ``lax.scan`` inside the caller's jit: one dispatch per iteration instead of one per
    group (the per-group Python call cost ~0.5 ms, 10-20% of a 64-position group on CPU)."""

    def body(c, x):
        *new, outputs = group_step(*c, *x)
        return tuple(new), outputs

    return bk.scan(body, tuple(carry), tuple(per_group))


def joined(bk: Any, parts: list) -> Any:
    """The per-group outputs of an iteration's calls (one per block of groups,
    :meth:`~phaser_std.engines.pattern_feed.PatternFeed.run_blocks`) as one ``(G, ...)``
    array, in group order."""
    return parts[0] if len(parts) == 1 else bk.xp.concatenate(parts)


class EngineDiverged(PhaserError):
    """The loss became NaN or infinite; the newest checkpoint holds the last finite state
    observers copied."""


class EngineLoop:
    """Runs ``niter`` iterations of an engine over groups of positions.

    ``begin_iteration(iteration)`` evaluates what is fixed for an iteration (flags,
    scheduled hyperparameters); ``run_groups(iteration, indices, masks, starts, frac) ->
    loss_sums`` runs all groups of the iteration in order, updating the engine's device
    state (``(G, B)`` indices and masks, ``(G, B, 2)`` view corners [px] and fractions; one
    compiled loop on jax, see :func:`scan_groups`); ``end_iteration(iteration)`` runs
    per-iteration updates (positions, constraints). The loop records progress, notifies
    observers and honours ``ctx.stop_requested``.

    ``snapshot()`` copies the engine's arrays into a host :class:`ReconsState`. Observers get
    a :class:`~phaser_core.state.DeferredState` that calls it only when they read the arrays
    (a checkpoint, an image, a score), before the next iteration changes them; the state the
    engine returns is copied.
    """

    def __init__(self, *, name: str, niter: int, grouping: GroupingConfig, ctx: Any, n_positions: int,
                 stop_when: StopConfig | None = None):
        self.name = name
        self.niter = int(niter)
        self.grouping = grouping
        self.ctx = ctx
        self.n_positions = n_positions
        self.stop_when = stop_when

    def groups(self, scan_A: np.ndarray, iteration: int) -> Any:
        return iteration_groups(self.ctx.backend, self.ctx.seed, self.ctx.engine_num, iteration, scan_A,
                                self.grouping.size, self.grouping.kind, self.grouping.regroup)

    def run(self, state: ReconsState, *, scan_A: Callable[[], np.ndarray], obj_geometry: Callable[[], ObjectState],
            probe_shape: tuple[int, int], run_groups: Callable, end_iteration: Callable,
            snapshot: Callable[[], ReconsState], begin_iteration: Callable | None = None,
            wavelength_A: float | None = None) -> ReconsState:
        ctx = self.ctx
        start_iter = state.iteration.engine_iter if state.iteration.engine_num == ctx.engine_num else 0
        total = state.iteration.total_iter
        # counters and progress of its own: the incoming state (which the runner still holds
        # and writes on an error) keeps describing its own arrays
        progress = state.progress.copy()
        wavelength_A = wavelength_A if wavelength_A is not None else state.wavelength_A
        seen: DeferredState | None = None
        if 0 < start_iter < self.niter and self._stops(progress, start_iter):
            return snapshot()  # it stopped early before the interruption: as the uninterrupted run
        for it in range(start_iter, self.niter):
            if seen is not None:
                seen.close()  # the arrays change from here on
            t0 = time.perf_counter()
            if begin_iteration is not None:
                begin_iteration(it)
            positions = scan_A()
            geometry = obj_geometry()
            groups = self.groups(positions, it)
            # view corners of every position once per iteration (host, vectorised), then
            # gathered per group; the per-group losses stay on the device until the end
            all_starts, all_frac = scan_to_pixels(positions, geometry.corner_A, geometry.sampling_A, probe_shape)
            check_views_inside(all_starts, probe_shape, geometry.shape)
            ind = groups.indices
            losses = run_groups(it, ind, groups.mask, all_starts[ind], all_frac[ind])
            end_iteration(it)
            loss = float(np.sum(ctx.backend.to_numpy(losses), dtype=np.float64)) / self.n_positions
            ctx.backend.synchronize()
            dt = time.perf_counter() - t0
            total += 1
            counters = IterationCounters(engine_num=ctx.engine_num, engine_iter=it + 1, total_iter=total)
            progress.append(total, loss, dt, ctx.engine_num)
            # each state its own progress: a kept one stays at its iteration
            seen = DeferredState.defer(snapshot, iteration=counters, progress=progress.copy(),
                                       wavelength_A=wavelength_A)
            metrics = {"loss": loss, "time_s": dt, "engine_iter": it + 1, "niter": self.niter,
                       "total_iter": total, "engine": self.name, "engine_num": ctx.engine_num}
            if not np.isfinite(loss):
                raise EngineDiverged(f"{self.name} engine: the loss became {loss} at iteration {it + 1}; "
                                         "lower the step sizes (beta_*, learning_rate) or raise the noise "
                                         "model's eps")
            notify(ctx.observers, "after_iteration", seen, metrics, ctx)
            if getattr(ctx, "stop_requested", False):
                break
            if it + 1 < self.niter and self._stops(progress, it + 1):
                break
        return snapshot() if seen is None else seen.take()

    def _stops(self, progress: Any, done: int) -> bool:
        """Whether ``stop_when`` ends the engine after its iteration ``done`` (1-based),
        judged on its loss record in ``progress``, the state's: a resumed run stops where
        the uninterrupted one did. Announces the stop."""
        if self.stop_when is None or not self.stop_when.converged(
                [v for v, e in zip(progress.loss, progress.engine) if e == self.ctx.engine_num]):
            return False
        announce(self.ctx, f"stopped at iteration {done} of {self.niter}: the loss fell by less than "
                           f"{self.stop_when.min_rel_change:g} of its best in {self.stop_when.patience} iterations")
        return True
