"""The gradient engine: stochastic gradient descent on the noise-model loss plus cost
regularizers (paper III.B, III.D), on every backend.

Variables and when they step:

- ``object`` and ``probe`` are per-group variables: after every group their gradient goes
  through their solver and the update is added (then the group constraints run).
- ``positions`` and ``tilt`` are per-iteration variables: their gradients are summed over
  all groups of the iteration and one solver step is taken at its end. The position step
  has its mean removed (a global shift is an object shift, not a position error).

On jax the group step is one ``bk.jit``-compiled function whose gradient comes from
``jax.value_and_grad``; on numpy and cupy the same step uses the analytic adjoint of the
forward model (:mod:`phaser_std.engines.gradient_step`). Both hand the solvers
``g = 2·∂L/∂z̄`` (= ``conj(jax.grad)``).

Per-iteration scaling of the accumulated gradients: positions (converted to dL/d[Å]) and a
per-position tilt are divided by the probe intensity Σ|P|² [e⁻ per pattern], a global tilt
by N·Σ|P|², so learning rates do not depend on dose.

Carried between iterations in ``state.extra["gradient"]`` (saved in checkpoints): every
solver's state (numpy arrays), so a resumed run continues exactly.
"""

from __future__ import annotations

from typing import Any

import attrs
import numpy as np

from phaser_core.config import ConstraintSpec, CostSpec, Flag, GradientSolverSpec, NoiseModelSpec, in_range, param
from phaser_core.errors import DataError, PhaserError
from phaser_core.observer import announce
from phaser_core.plan import SlicesPlan
from phaser_core.state import ReconsState
from phaser_std.engines.chunking import engine_chunk, gradient_lane_budget
from phaser_std.engines.common import (REFINE_SWITCH, EngineLoop, GroupingConfig, engine_arrays, joined,
                                       resample_for_engine, scan_groups, sim_shape_param, StopConfig, stop_when_param,
                                       switches_without_solver)
from phaser_std.engines.constraints import IlluminationMap, needs_illumination
from phaser_std.engines.gradient_step import GroupModel, StepCounter, make_group_step, slice_dz
from phaser_std.engines.noise_models import build_noise_model, on_valid_pixels
from phaser_std.physics.grid import on_grid
from phaser_std.engines.optimizers import AdamConfig, init_states
from phaser_std.engines.regularizers import RegInfo
from phaser_std.physics.forward import abs2, make_propagators, shift_ramp_factors

__all__ = ["GradientSolvers", "GradientConfig", "GradientEngine"]


def _adam(lr: float) -> Any:
    return lambda: GradientSolverSpec("adam", AdamConfig(learning_rate=lr))


@attrs.frozen
class GradientSolvers:
    """One gradient solver (``role="gradient"``: sgd, adam, adamw, nadam, polyak_sgd) per
    variable; ``null``: that variable is never updated. Learning rates: object and probe in
    units of |O| and |P|/√e⁻ per step (Adam), positions [Å] and tilt [mrad] per iteration."""

    object: GradientSolverSpec | None = param(factory=_adam(1e-2), doc="solver of the object (per group)")
    probe: GradientSolverSpec | None = param(factory=_adam(1e-2), doc="solver of the probe (per group)")
    positions: GradientSolverSpec | None = param(None, doc="solver of the scan positions (per iteration), e.g. "
                                                   "{type: sgd, learning_rate: 3, momentum: 0.5}")
    tilt: GradientSolverSpec | None = param(None, doc="solver of the tilt (per iteration), e.g. {type: adam, "
                                              "learning_rate: 0.2}")

    def plan_issues(self, registry: Any) -> list[tuple[tuple, str]]:
        """A solver that needs each step's loss (``needs_value``: polyak_sgd) cannot step the
        per-iteration variables, whose gradients are summed over all groups."""
        issues = []
        for key in ("positions", "tilt"):
            spec = getattr(self, key)
            try:
                solver = spec.component(registry).obj if spec is not None else None
            except PhaserError:
                continue  # an unknown name is reported where it is resolved
            if getattr(solver, "needs_value", False):
                issues.append(((key, "type"), f"{spec.type} steps by the loss of each group, and the {key} "
                                              f"{'are' if key == 'positions' else 'is'} stepped once an iteration "
                                              "from the gradient of all groups: use sgd, adam, adamw or nadam here"))
        return issues


@attrs.frozen
class GradientConfig:
    """Settings of the ``gradient`` engine."""

    niter: int = param(50, doc="iterations", validator=in_range(0))
    grouping: GroupingConfig = param(factory=GroupingConfig, doc="how positions are grouped")
    probe_modes: int | None = param(None, doc="number of incoherent probe modes (null: keep)",
                                    validator=in_range(1))
    slices: SlicesPlan | None = param(None, doc="object slices for this engine (null: keep)")
    sim_shape: tuple[int, int] | None = sim_shape_param()
    stop_when: StopConfig | None = stop_when_param()
    noise_model: NoiseModelSpec = param(NoiseModelSpec("auto"), doc="detector noise model (auto: anscombe for "
                                        "counted data, whole numbers of electrons; amplitude for sparse counts, "
                                        "under 0.5 e⁻ per pixel, and for other data)")
    solvers: GradientSolvers = param(factory=GradientSolvers, doc="{object, probe, positions, tilt}: solver each")
    regularizers: tuple[CostSpec, ...] = param((), doc="cost regularizers, summed into the loss")
    cost_per: str = param("iteration", doc="'iteration': every group adds weight·(group/positions) of each "
                          "penalty, so an iteration adds it once whatever the group size; 'group': every group "
                          "adds weight·penalty (the published phaser 0.3.1 in effect: its costs act positions/group "
                          "times as strong; set it to run that package's plans with their weights)",
                          validator=attrs.validators.in_(("iteration", "group")))
    group_constraints: tuple[ConstraintSpec, ...] = param((), doc="constraints applied after every group")
    iter_constraints: tuple[ConstraintSpec, ...] = param((), doc="constraints applied after every iteration")
    update_object: Flag = param(Flag(), doc="when the object is updated")
    update_probe: Flag = param(Flag(), doc="when the probe is updated")
    update_positions: Flag = param(REFINE_SWITCH, doc="when positions are refined (needs solvers.positions)")
    update_tilt: Flag = param(REFINE_SWITCH, doc="when the tilt is refined (needs solvers.tilt)")
    tilt: str = param("global", doc="'global' (one (y, x) tilt) or 'per_position'",
                      validator=attrs.validators.in_(("global", "per_position")))
    bandlimit: float | None = param(2.0 / 3.0, doc="propagator band limit as a fraction of Nyquist (raised to "
                                    "the probe's aperture plus one pixel where that reaches beyond it; null: none)")
    scale_probe: bool = param(True, doc="scale the probe intensity to the data before the first iteration")

    def plan_issues(self, registry: Any) -> list[tuple[tuple, str]]:
        return switches_without_solver(self, (("update_positions", "solvers.positions", self.solvers.positions),
                                              ("update_tilt", "solvers.tilt", self.solvers.tilt)))


def _pack(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k.replace("/", "."): v for k, v in arrays.items()}


def _unpack(arrays: dict[str, Any]) -> dict[str, np.ndarray]:
    return {k.replace(".", "/"): np.asarray(v) for k, v in arrays.items()}


class _HostBackend:
    """numpy float64 for the per-iteration solvers (positions, tilt) on every backend."""

    name = "numpy"
    xp = np


class GradientEngine:
    """Gradient-descent engine (autodiff on jax, analytic adjoint on numpy/cupy)."""

    def __init__(self, config: GradientConfig | None = None):
        self.config = config or GradientConfig()
        #: counts traces (jax) / calls (numpy) of the group step (tests)
        self.step_counter = StepCounter()

    def run(self, state: ReconsState, data: Any, ctx: Any) -> ReconsState:  # noqa: C901 - one flow
        cfg = self.config
        bk = ctx.backend
        reg = ctx.registry
        state = resample_for_engine(state, cfg.probe_modes, cfg.slices, ctx.seed, ctx.engine_num)
        state, data = on_grid(state, data, cfg.sim_shape, ctx)
        noise = build_noise_model(cfg.noise_model, data, reg, ctx)
        costs = tuple(spec.build(reg) for spec in cfg.regularizers)
        for spec, c in zip(cfg.regularizers, costs):
            if not hasattr(c, "cost"):
                raise ValueError(f"gradient engine: regularizers: {spec.type!r} is not a cost regularizer; "
                                 "put constraints under group_constraints / iter_constraints")
        group_constraints = [spec.build(reg) for spec in cfg.group_constraints]
        iter_constraints = [spec.build(reg) for spec in cfg.iter_constraints]
        for where, specs, built in (("group_constraints", cfg.group_constraints, group_constraints),
                                    ("iter_constraints", cfg.iter_constraints, iter_constraints)):
            for spec, c in zip(specs, built):
                if not hasattr(c, "apply"):
                    raise ValueError(f"gradient engine: {where}: {spec.type!r} is not a constraint regularizer; "
                                     "put cost regularizers under regularizers")
        solvers: dict[str, Any] = {}
        for k in ("object", "probe", "positions", "tilt"):
            spec = getattr(cfg.solvers, k)
            if spec is not None and spec.component(reg).meta.get("role") != "gradient":
                raise ValueError(f"gradient engine: solvers.{k}: {spec.type!r} is not a gradient solver; use one "
                                 f"of {sorted(reg.names('solver', role='gradient'))}")
            solvers[k] = spec.build(reg) if spec is not None else None

        n_slices = int(np.shape(state.object.data)[0])
        bk, chunk = engine_chunk(bk, cfg.grouping.chunk, min(cfg.grouping.size, np.shape(state.scan_A)[0]),
                                 state.probe.n_modes, n_slices, state.probe.shape,
                                 lane_budget_bytes=gradient_lane_budget(n_slices))
        arrays = engine_arrays(bk, state, data, cfg.grouping.stream_patterns)
        noise = on_valid_pixels(noise, arrays.valid)
        probe_shape, wavelength, geometry = arrays.probe_shape, arrays.wavelength_A, arrays.geometry
        sampling = tuple(float(s) for s in geometry.sampling_A)
        if not np.allclose(sampling, state.probe.sampling_A):
            raise DataError(f"object pixel {sampling} Å differs from the probe pixel {state.probe.sampling_A} Å")
        thick = tuple(float(t) for t in np.asarray(geometry.thicknesses_A).reshape(-1))
        scan = arrays.scan_A
        n_pos = scan.shape[0]
        tilt = np.asarray(state.tilt_mrad, dtype=np.float64)
        if cfg.tilt == "per_position" and tilt.ndim == 1:
            tilt = np.broadcast_to(tilt, (n_pos, 2)).copy()
        elif cfg.tilt == "global" and tilt.ndim == 2:
            tilt = tilt.mean(axis=0)

        bandlimit = arrays.bandlimit(cfg.bandlimit, data)
        base_props = make_propagators(bk, probe_shape, sampling, wavelength, thick, (0.0, 0.0), bandlimit)
        feed, extra = arrays.patterns, arrays.extra
        saved = dict(extra.get("gradient", {}) or {})
        if int(np.asarray(saved.pop("engine_num", -1))) != ctx.engine_num:
            saved = {}  # another engine's solver states: this engine starts fresh

        if cfg.scale_probe:
            mean_tilt = tilt if tilt.ndim == 1 else tilt.mean(axis=0)
            arrays.scale_probe(bk, lambda: make_propagators(bk, probe_shape, sampling, wavelength, thick, mean_tilt,
                                                            bandlimit))

        info = RegInfo(sampling_A=sampling, wavelength_A=wavelength, thicknesses_A=np.asarray(thick))
        model = GroupModel(noise=noise, costs=costs, base_props=base_props, sampling_A=sampling,
                           thicknesses_A=thick, reg_info=info, n_positions=n_pos,
                           costs_per_group=cfg.cost_per == "group")
        step = make_group_step(bk, model, solvers, group_constraints, counter=self.step_counter, chunk=chunk)
        # the propagators and slice distances: arguments of the compiled step, not constants
        # in it, so another thickness of the same shapes reuses it (jax's compilation cache)
        physics = None if base_props is None else {
            "base_props": bk.share(base_props),
            "dz": bk.share(slice_dz(bk, thick))}

        def iteration_step(params, opt_states, acc, patterns_, physics_, rows, indices, starts, frac, tilt_, masks,
                           hyper, cost_w, **flags):
            if not flags.get("grad_positions"):
                frac = shift_ramp_factors(bk, frac, probe_shape)  # once, outside the loop (ShiftRamp)
            def one(params, opt_states, acc, row, idx, st, fr, m):
                tilt_g = tilt_[idx] if tilt_.ndim == 2 else tilt_
                params, opt_states, acc, loss = step(params, opt_states, acc, patterns_, idx, st, fr, tilt_g, m,
                                                     hyper, cost_w, rows=row, physics=physics_, **flags)
                return params, opt_states, acc, {"loss": loss}

            (params, opt_states, acc), out = scan_groups(bk, one, (params, opt_states, acc),
                                                         (rows, indices, starts, frac, masks))
            return params, opt_states, acc, out["loss"]

        # the parameters, solver states and sums are donated: the new ones take their buffers
        # (without it the object and its solver states were held twice, as inputs and outputs)
        iteration = bk.jit(iteration_step,
                           static_argnames=("update_object", "update_probe", "grad_positions", "grad_tilt"),
                           donate_argnames=("params", "opt_states", "acc"))

        # solver states: restored from a checkpoint when present, else fresh
        host = _HostBackend()
        live: dict[str, Any] = {"object": arrays.obj, "probe": arrays.probe, "scan": scan, "tilt": tilt}
        arrays.probe = arrays.obj = None  # `live` owns them now: the iteration program donates their buffers
        opt_states: dict[str, Any] = {}
        # fresh states of the object and probe solvers in one program on jax
        fresh = init_states({k: (solvers[k], live[k]) for k in ("object", "probe") if solvers[k] is not None}, bk)
        fresh.update(init_states({k: (solvers[k], live["scan"] if k == "positions" else live["tilt"])
                                  for k in ("positions", "tilt") if solvers[k] is not None}, host))

        def restore(k: str, like: Any, backend: Any) -> Any:
            if k not in saved:
                return fresh[k]
            arrays = _unpack(saved[k])
            shapes = {p: tuple(a.shape) for p, a in solvers[k].state_to_numpy(fresh[k], backend).items()}
            if shapes != {p: tuple(a.shape) for p, a in arrays.items()}:
                announce(ctx, f"gradient engine: the saved state of the {k} solver does not fit this run (another "
                              "solver, backend or shape); it starts afresh, so the run does not continue exactly")
                return fresh[k]
            return solvers[k].state_from_numpy(arrays, like, backend, template=fresh[k])

        for k in ("object", "probe"):
            if solvers[k] is not None:
                opt_states[k] = restore(k, live[k], bk)
        host_states: dict[str, Any] = {}
        for k in ("positions", "tilt"):
            if solvers[k] is not None:
                host_states[k] = restore(k, live["scan"] if k == "positions" else live["tilt"], None)
        del fresh  # restored states replace them: not held on the device for the whole run

        cur: dict[str, Any] = {}

        def flags(it: int) -> dict[str, bool]:
            return {"update_object": solvers["object"] is not None and cfg.update_object(it),
                    "update_probe": solvers["probe"] is not None and cfg.update_probe(it),
                    "grad_positions": solvers["positions"] is not None and cfg.update_positions(it),
                    "grad_tilt": solvers["tilt"] is not None and cfg.update_tilt(it) and len(thick) > 1}

        def begin_iteration(it: int) -> None:
            cur["flags"] = flags(it)
            cur["hyper"] = {k: (solvers[k].hyperparams(it) if solvers[k] is not None else {})
                            for k in ("object", "probe")}
            cur["cost_w"], acc_positions, acc_tilt, cur["tilt_dev"] = bk.step_inputs(
                np.array([c.weight(it) for c in costs], dtype=np.float64), np.zeros((n_pos, 2), dtype=bk.real_dtype),
                np.zeros(live["tilt"].shape, dtype=bk.real_dtype), live["tilt"])
            cur["acc"] = {"positions": acc_positions, "tilt": acc_tilt}

        def run_groups(it, indices, masks, starts, frac):
            def call(sel, patterns, rows):
                params = {"object": live["object"], "probe": live["probe"]}
                rows_, idx, st, fr, m = bk.step_inputs(rows, indices[sel], starts[sel], frac[sel], masks[sel])
                params, states, cur["acc"], losses = iteration(
                    params, opt_states, cur["acc"], patterns, physics, rows_, idx, st, fr, cur["tilt_dev"], m,
                    cur["hyper"], cur["cost_w"], **cur["flags"])
                live["object"], live["probe"] = params["object"], params["probe"]
                opt_states.update(states)
                return losses

            # one call per block of groups (one block unless the patterns are streamed); the
            # positions' indices (sums, per-position tilt) stay those of the whole scan
            return joined(bk, feed.run_blocks(indices, call))

        illumination_of = IlluminationMap(bk, geometry, probe_shape) if needs_illumination(iter_constraints) else None

        def iteration_constraints(probe_, obj_, it, illumination=None):
            # compiled once on jax (the iteration is a traced value): eager, each operation
            # would compile its own small program in the first iteration
            for c in iter_constraints:
                probe_, obj_ = c.apply(bk, probe_, obj_, info.replace(iteration=it, illumination=illumination))
            return probe_, obj_, bk.xp.sum(abs2(bk.xp, probe_))

        iteration_constraints = bk.jit(iteration_constraints, donate_argnums=(0, 1))

        def end_iteration(it):
            fl = cur["flags"]
            refine = fl["grad_positions"] or fl["grad_tilt"]
            if not (iter_constraints or refine):
                return  # nothing to constrain, no probe intensity to read: no call, no wait
            illumination = None if illumination_of is None else illumination_of(live["probe"], live["scan"])
            live["probe"], live["object"], probe_int = iteration_constraints(
                live["probe"], live["object"], bk.asarray(np.int32(it)), illumination)
            if not refine:
                return
            probe_int = max(float(bk.to_numpy(probe_int)), 1e-30)
            if fl["grad_positions"]:
                g = bk.to_numpy(cur["acc"]["positions"]).astype(np.float64) / np.asarray(sampling) / probe_int
                g -= g.mean(axis=0)
                u, host_states["positions"] = solvers["positions"].update(
                    host, g, host_states["positions"], live["scan"], it)
                u = np.asarray(u, dtype=np.float64)
                u -= u.mean(axis=0)
                live["scan"] = arrays.clip_scan(live["scan"] + u)
            if fl["grad_tilt"]:
                g = bk.to_numpy(cur["acc"]["tilt"]).astype(np.float64) / probe_int
                if g.ndim == 1:
                    g /= n_pos
                u, host_states["tilt"] = solvers["tilt"].update(host, g, host_states["tilt"], live["tilt"], it)
                live["tilt"] = live["tilt"] + np.asarray(u, dtype=np.float64)

        def snapshot() -> ReconsState:
            saved_now = {k: _pack(solvers[k].state_to_numpy(s, bk)) for k, s in opt_states.items()}
            saved_now.update({k: _pack(solvers[k].state_to_numpy(s)) for k, s in host_states.items()})
            saved_now["engine_num"] = np.asarray(ctx.engine_num)
            extra["gradient"] = saved_now
            return arrays.snapshot(bk, live["probe"], live["object"], live["scan"], live["tilt"])

        loop = EngineLoop(name="gradient", niter=cfg.niter, grouping=cfg.grouping, ctx=ctx, n_positions=n_pos,
                          stop_when=cfg.stop_when)
        return loop.run(state, scan_A=lambda: live["scan"], obj_geometry=lambda: geometry,
                        probe_shape=probe_shape, run_groups=run_groups, end_iteration=end_iteration,
                        snapshot=snapshot, begin_iteration=begin_iteration,
                        wavelength_A=arrays.wavelength_A)

    def estimate_memory(self, data_shape: Any, state_shapes: dict, dtype: str, backend: str = "numpy") -> list:
        """Peak-memory terms ``[(name, bytes, setting_hint, where)]`` (phaser_core.memory)."""
        from phaser_std.engines.memory import gradient_terms

        return gradient_terms(self.config, data_shape, state_shapes, dtype, backend)
