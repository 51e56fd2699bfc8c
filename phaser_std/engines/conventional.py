"""The conventional engine: ePIE or LSQML over groups of positions, any slices and modes."""

from __future__ import annotations

from typing import Any

import attrs
import numpy as np

from phaser_core.config import ConstraintSpec, ConventionalSolverSpec, Flag, NoiseModelSpec, PositionSolverSpec, \
    in_range, param
from phaser_core.observer import announce
from phaser_core.plan import SlicesPlan
from phaser_core.state import ReconsState
from phaser_std.engines.chunking import conventional_budget, conventional_lane_budget, engine_chunk
from phaser_std.engines.common import (
    EngineLoop,
    GroupingConfig,
    REFINE_SWITCH,
    apply_constraints,
    build_constraints,
    engine_arrays,
    group_patterns,
    joined,
    resample_for_engine,
    scan_groups,
    sim_shape_param,
    StopConfig,
    stop_when_param,
    switches_without_solver,
)
from phaser_std.engines.constraints import IlluminationMap, needs_illumination
from phaser_std.engines.conventional_solvers import (counted_dose, falling_step_reason, has_chunked_rule,
                                                     make_group_step)
from phaser_std.engines.gradient_step import slice_dz, tilt_ramps
from phaser_std.engines.noise_models import build_noise_model, on_valid_pixels
from phaser_std.engines.regularizers import RegInfo
from phaser_std.physics.grid import on_grid
from phaser_std.physics.forward import make_propagators, shift_ramp_factors

__all__ = ["ConventionalConfig", "ConventionalEngine"]


@attrs.frozen
class ConventionalConfig:
    """Settings of the ``conventional`` engine (ePIE, LSQML)."""

    niter: int = param(10, doc="iterations", validator=in_range(0))
    grouping: GroupingConfig = param(factory=GroupingConfig, doc="how positions are grouped")
    probe_modes: int | None = param(None, doc="number of incoherent probe modes (null: keep)",
                                    validator=in_range(1))
    slices: SlicesPlan | None = param(None, doc="object slices for this engine (null: keep)")
    sim_shape: tuple[int, int] | None = sim_shape_param()
    stop_when: StopConfig | None = stop_when_param()
    noise_model: NoiseModelSpec = param(NoiseModelSpec("auto"), doc="detector noise model (auto: anscombe for "
                                        "counted data, whole numbers of electrons; amplitude for sparse counts, "
                                        "under 0.5 e⁻ per pixel, and for other data)")
    solver: ConventionalSolverSpec = param(ConventionalSolverSpec("lsqml"), doc="update rule: epie or lsqml")
    position_solver: PositionSolverSpec | None = param(None, doc="position correction (e.g. {type: momentum})")
    group_constraints: tuple[ConstraintSpec, ...] = param((), doc="constraints applied after every group")
    iter_constraints: tuple[ConstraintSpec, ...] = param((), doc="constraints applied after every iteration")
    update_object: Flag = param(Flag(), doc="when the object is updated")
    update_probe: Flag = param(Flag(), doc="when the probe is updated")
    update_positions: Flag = param(REFINE_SWITCH, doc="when positions are corrected (needs position_solver)")
    bandlimit: float | None = param(2.0 / 3.0, doc="propagator band limit as a fraction of Nyquist (raised to "
                                    "the probe's aperture plus one pixel where that reaches beyond it; null: none)")
    scale_probe: bool = param(True, doc="scale the probe intensity to the data before the first iteration")

    def plan_issues(self, registry: Any) -> list[tuple[tuple, str]]:
        return switches_without_solver(self, (("update_positions", "position_solver", self.position_solver),))


def _run_dose(extra: dict, data: Any, scan_A: Any) -> float | None:
    """The dose [e⁻/Å²] of counted data (:func:`counted_dose`; None: not counts), taken
    once per run and kept in ``extra["dose_e_per_A2"]`` (NaN for none): later engines and
    a resumed run, whose positions may have moved, decide the object step the same way."""
    kept = extra.get("dose_e_per_A2")
    if kept is None:
        dose = counted_dose(data, scan_A)
        kept = extra["dose_e_per_A2"] = float("nan") if dose is None else float(dose)
    return float(kept) if np.isfinite(kept) else None


def _object_step_note(solver: Any) -> str:
    """What the null object step does for this run and why, for its log."""
    why = falling_step_reason(solver.dose_e_per_A2)[1]
    return f"object step null: {'falling' if solver.step_falls else 'constant'} ({why}; give beta_object to choose)"


class ConventionalEngine:
    """ePIE/LSQML engine; the update rule is the ``solver`` component."""

    def __init__(self, config: ConventionalConfig | None = None):
        self.config = config or ConventionalConfig()

    def run(self, state: ReconsState, data: Any, ctx: Any) -> ReconsState:
        cfg = self.config
        bk = ctx.backend
        reg = ctx.registry
        state = resample_for_engine(state, cfg.probe_modes, cfg.slices, ctx.seed, ctx.engine_num)
        state, data = on_grid(state, data, cfg.sim_shape, ctx)
        noise = build_noise_model(cfg.noise_model, data, reg, ctx)
        solver = cfg.solver.build(reg)
        pos_solver = cfg.position_solver.build(reg) if cfg.position_solver is not None else None
        group_constraints = build_constraints(cfg.group_constraints, reg)
        iter_constraints = build_constraints(cfg.iter_constraints, reg)

        n_slices = int(np.shape(state.object.data)[0])
        solver = solver.for_slices(n_slices) if hasattr(solver, "for_slices") else solver
        tilt = np.asarray(state.tilt_mrad, dtype=np.float64)
        # a tilt per position with several slices: each group's propagators (B, S-1, Ny, Nx)
        # are built inside its step, for whole groups (the chunked steps share one set)
        per_position = tilt.ndim == 2 and n_slices > 1
        bk, chunk = engine_chunk(bk, cfg.grouping.chunk, min(cfg.grouping.size, np.shape(state.scan_A)[0]),
                                 state.probe.n_modes, n_slices, state.probe.shape, conventional_budget(n_slices),
                                 chunked_step=has_chunked_rule(solver, n_slices) and not per_position,
                                 lane_budget_bytes=conventional_lane_budget(solver.name, n_slices))
        arrays = engine_arrays(bk, state, data, cfg.grouping.stream_patterns)
        noise = on_valid_pixels(noise, arrays.valid)
        probe_shape, wavelength, geometry = arrays.probe_shape, arrays.wavelength_A, arrays.geometry
        if hasattr(solver, "for_dose") and getattr(solver.config, "beta_object", 0) is None and n_slices == 1:
            solver = solver.for_dose(_run_dose(arrays.extra, data, state.scan_A))
            announce(ctx, _object_step_note(solver))
        # the engine-wide propagators: the global tilt's; with a tilt per position (the state
        # keeps it; one slice has no propagation for it to act on) the mean tilt's, for the
        # probe scaling (a uniform tilt per position then runs exactly as the global one)
        prop_tilt = tilt if tilt.ndim == 1 else tilt.mean(axis=0)
        bandlimit = arrays.bandlimit(cfg.bandlimit, data)
        props = make_propagators(bk, probe_shape, geometry.sampling_A, wavelength, geometry.thicknesses_A,
                                 prop_tilt, bandlimit)

        if cfg.scale_probe:
            arrays.scale_probe(bk, lambda: props)
        feed, scan, extra = arrays.patterns, arrays.scan_A, arrays.extra

        info = RegInfo(sampling_A=tuple(geometry.sampling_A), wavelength_A=wavelength,
                       thicknesses_A=np.asarray(geometry.thicknesses_A))
        group_step_fn = make_group_step(bk, solver, noise, props, probe_shape, chunk=None if per_position else chunk)
        # an argument of the compiled step, not a constant in it (make_group_step), placed
        # once where every lane reads it
        if per_position:
            # the untilted propagators and the slice distances [Å], arguments like the global
            # ones (another thickness reuses the program); each group's tilts ramp them
            props_arg = (bk.share(make_propagators(bk, probe_shape, geometry.sampling_A, wavelength,
                                                   geometry.thicknesses_A, (0.0, 0.0), bandlimit)),
                         bk.share(slice_dz(bk, geometry.thicknesses_A)))
        else:
            props_arg = None if props is None else bk.share(props)

        def fused_step(obj_, probe_, patterns_, props_, rows, starts, frac, mask, hyper, update_object=True,
                       update_probe=True, update_positions=False, tilts=None):
            # the pattern gather and the group constraints run inside the compiled step
            # (constraints are pure and do not depend on the iteration), so one group is one
            # dispatch on jax instead of one per array operation
            if tilts is not None:  # (B, S-1, Ny, Nx): the base times each position's tilt ramp
                base, dz = props_
                props_ = base * tilt_ramps(bk, probe_shape, geometry.sampling_A, geometry.thicknesses_A, tilts, dz)
            obj_, probe_, loss, shift = group_step_fn(obj_, probe_, group_patterns(bk, patterns_, rows), starts,
                                                      frac, mask, hyper,
                                                      update_object, update_probe, update_positions, props_)
            if group_constraints:
                probe_, obj_ = apply_constraints(bk, group_constraints, probe_, obj_, info)
            return obj_, probe_, loss, shift

        def iteration_step(obj_, probe_, patterns_, props_, rows, starts, frac, masks, hyper, tilts=None,
                           update_object=True, update_probe=True, update_positions=False):
            ramps = shift_ramp_factors(bk, frac, probe_shape)  # once, outside the loop (ShiftRamp)
            def one(o, p, row, st, fr, m, *tl):
                o, p, loss, shift = fused_step(o, p, patterns_, props_, row, st, fr, m, hyper, update_object,
                                               update_probe, update_positions, tl[0] if tl else None)
                return o, p, {"loss": loss, "shift": shift}

            # rows: each group's rows in patterns_ (all of them, or a streamed block's);
            # tilts (G, B, 2) [mrad]: each group's, for a tilt per position
            per_group = (rows, starts, ramps, masks) + (() if tilts is None else (tilts,))
            (obj_, probe_), out = scan_groups(bk, one, (obj_, probe_), per_group)
            return obj_, probe_, out["loss"], out["shift"]

        # object and probe donated: the updated ones take their buffers (no second object)
        step = bk.jit(iteration_step, static_argnames=("update_object", "update_probe", "update_positions"),
                      donate_argnames=("obj_", "probe_"))
        live = {"probe": arrays.probe, "obj": arrays.obj, "scan": scan, "shift": np.zeros_like(scan)}
        arrays.probe = arrays.obj = None  # `live` owns them now: the iteration program donates their buffers
        sampling = np.asarray(geometry.sampling_A, dtype=np.float64)

        def positions_on(it: int) -> bool:
            return pos_solver is not None and cfg.update_positions(it)

        cur: dict[str, Any] = {}

        def begin_iteration(it):
            hyper = solver.hyperparams(it, reg)
            if cur.get("hyper_host") != hyper:  # sent again only when a schedule changes them
                cur["hyper_host"] = hyper
                cur["hyper"] = dict(zip(hyper, bk.step_inputs(*(np.asarray(v, dtype=bk.real_dtype)
                                                                 for v in hyper.values()))))
            cur["flags"] = {"update_object": cfg.update_object(it), "update_probe": cfg.update_probe(it),
                            "update_positions": positions_on(it)}

        def run_groups(it, indices, masks, starts, frac):
            def call(sel, patterns, rows):
                # one transfer of the group inputs (the tilts too, for a tilt per position)
                ins = bk.step_inputs(rows, starts[sel], frac[sel], masks[sel],
                                     *((tilt[indices[sel]],) if per_position else ()))
                live["obj"], live["probe"], losses, shifts = step(
                    live["obj"], live["probe"], patterns, props_arg, *ins[:4], cur["hyper"],
                    ins[4] if per_position else None, **cur["flags"])
                return losses, shifts

            # one call per block of groups (one block unless the patterns are streamed)
            blocks = feed.run_blocks(indices, call)
            if cur["flags"]["update_positions"]:
                shifts = np.concatenate([bk.to_numpy(s) for _, s in blocks])
                live["shift"][indices[masks]] += shifts[masks] * sampling
            return joined(bk, [losses for losses, _ in blocks])

        illumination_of = IlluminationMap(bk, geometry, probe_shape) if needs_illumination(iter_constraints) else None

        def iteration_constraints(probe_, obj_, it, illumination=None):
            return apply_constraints(bk, iter_constraints, probe_, obj_,
                                     attrs.evolve(info, iteration=it, illumination=illumination))

        # compiled once on jax (the iteration is a traced value); probe and object donated
        iteration_constraints = bk.jit(iteration_constraints, donate_argnums=(0, 1))

        def end_iteration(it):
            if iter_constraints:
                illumination = None if illumination_of is None else illumination_of(live["probe"], live["scan"])
                live["probe"], live["obj"] = iteration_constraints(live["probe"], live["obj"],
                                                                   bk.asarray(np.int32(it)), illumination)
            if positions_on(it):
                new = pos_solver.update(live["scan"], live["shift"], extra)
                live["scan"] = arrays.clip_scan(new)
                live["shift"] = np.zeros_like(live["scan"])

        def snapshot() -> ReconsState:
            return arrays.snapshot(bk, live["probe"], live["obj"], live["scan"], tilt)

        loop = EngineLoop(name="conventional", niter=cfg.niter, grouping=cfg.grouping, ctx=ctx,
                          n_positions=scan.shape[0], stop_when=cfg.stop_when)
        return loop.run(state, scan_A=lambda: live["scan"], obj_geometry=lambda: geometry,
                        probe_shape=probe_shape, run_groups=run_groups, end_iteration=end_iteration,
                        snapshot=snapshot, begin_iteration=begin_iteration,
                        wavelength_A=arrays.wavelength_A)

    def estimate_memory(self, data_shape: Any, state_shapes: dict, dtype: str, backend: str = "numpy") -> list:
        """Peak-memory terms ``[(name, bytes, setting_hint, where)]`` (phaser_core.memory)."""
        from phaser_std.engines.memory import conventional_terms

        return conventional_terms(self.config, data_shape, state_shapes, dtype, backend)
