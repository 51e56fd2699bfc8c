"""Conventional update rules: ePIE/3PIE and LSQML, single slice or multislice, with modes.

Both share one group step (:func:`make_group_step`): the forward model, the noise model's
detector-plane wave update, and a backward sweep through the slices that turns the
exit-wave update χ into an object update per slice and, at the entrance plane, a probe
update and a position-correction direction. They differ in how an update direction is
normalised and scaled:

- ``epie`` (Maiden & Rodenburg 2009; multislice 3PIE, Maiden et al. 2012): the object
  direction Σ conj(ψ)χ is divided by the largest illumination of the group (or, with
  ``object_norm: position``, per pixel by the larger of the group's illumination there and
  one position's largest: :func:`~phaser_std.engines.chunked_steps.epie_step_norm`), the
  wave direction conj(O)χ by the largest |O|²; step ``beta``. For a group of one position
  either is exactly ePIE.
- ``lsqml`` (Odstrčil et al. 2018, eqs. 23-27; multislice per Tsai et al. 2016): the
  object direction is divided by the group illumination Σ|ψ|² + δ (per pixel), the probe
  direction by Σ|O|² + δ; per-position optimal step sizes α (eq. 23) are averaged,
  weighted by illumination, into the update; step ``beta``.

The wave update passed backward to slice i−1 is conj(O_i)χ_i (the illumination update
direction of the paper), back-propagated through the adjoint Fresnel propagator.
Everything runs under ``bk.jit`` (pure, static shapes, no in-place writes).
"""

from __future__ import annotations

import copy
from typing import Any

import attrs

from phaser_core.config import Schedulable, in_range, param, schedule_value
from phaser_std.engines.chunking import has_chunked_step
from phaser_std.engines.chunked_steps import (epie_multislice_chunked, epie_single_slice_chunked, epie_step_norm,
                                              group_mean, inner_products, lsqml_multislice_chunked,
                                              lsqml_multislice_probe_chunked, lsqml_single_slice_chunked,
                                              regularised_step, solve_2x2)
from phaser_std.physics.forward import (
    SliceViews,
    _prop_for_slice,
    abs2,
    add_views,
    back_through_slice,
    farfield,
    farfield_adjoint,
    get_views,
    intensity,
    multislice_forward,
    propagate,
    shift_probes,
    slice_indices,
    unshift_probes,
    view_slice,
)


#: a step size in [0, 1] (0 holds the array fixed); a schedule passes unchecked
_BETA = in_range(0, 1)

#: The object step a plan leaves null, on one slice with counted data under
#: :data:`FALLING_STEP_DOSE_E_PER_A2`: the solver's initial β until engine iteration 5,
#: then this fraction of it from each iteration on. Noisy data are fitted a little more by
#: every full step after the first few (the object gets worse while the loss falls); a
#: falling step averages that noise instead, and takes the same first iterations. The
#: probe's step stays constant (a falling one recovered a wrong defocus more slowly), and
#: so does the object's with several slices (thick objects still converge after 30
#: iterations; benchmarks/NOTES.md 112).
ANNEALED_BETA = ((5, 0.7), (10, 0.5), (20, 0.3))

#: [e⁻/Å²] the dose (mean counts per pattern / area per position) from which a null
#: object step stays constant: there the data's noise no longer shows, and in focus,
#: where ePIE is still converging after iteration 5, the falling step slowed it (abTEM
#: 48² px at 2.8·10⁴ e⁻/Å²: 0.949 against 0.960 after 20 iterations; at 8.7·10³ the two
#: within 0.003, at 874 falling +0.024; benchmarks/NOTES.md 119)
FALLING_STEP_DOSE_E_PER_A2 = 1e4

_BETA_DOC = ("object step [0..1], or a schedule over iterations; null: on one slice with counted data under "
             f"{FALLING_STEP_DOSE_E_PER_A2:g} e⁻/Å², {{init:g}} until iteration {ANNEALED_BETA[0][0]}, then "
             + ", ".join(f"from {start} {fraction:g}x" for start, fraction in ANNEALED_BETA)
             + " (noise averaged); {init:g} throughout otherwise")


def counted_dose(data: Any, positions_A: Any = None) -> float | None:
    """The dose [e⁻/Å²] of counted patterns: their mean count over the valid pixels
    (:func:`phaser_core.data.mean_counts`) over the area per scan position (the data's
    step or positions, else ``positions_A`` (N, 2) [Å]); None for patterns that are not
    counts (noiseless, normalised or gain-scaled: their dose is unknown) or without an
    area."""
    from phaser_core.data import holds_counts, mean_counts
    from phaser_core.errors import DataError
    from phaser_std.data.preprocess import scan_area_per_position_A2
    from phaser_std.physics.scan import area_per_position_A2

    if not holds_counts(data):
        return None
    try:
        area = scan_area_per_position_A2(data)
    except DataError:
        area = None if positions_A is None else area_per_position_A2(positions_A)
    if not area:
        return None
    return mean_counts(data) / area


def falling_step_reason(dose_e_per_A2: float | None) -> tuple[bool, str]:
    """Whether a null object step falls on one slice for data of this dose [e⁻/Å²]
    (:func:`counted_dose`; None: not counts), and why, as the run's log and ``phaser
    inspect`` say it."""
    if dose_e_per_A2 is None:
        return False, "the patterns are not counts"
    falls = dose_e_per_A2 < FALLING_STEP_DOSE_E_PER_A2
    # a decimal where rounding would hide which side of the threshold the dose is on
    shown = f"{dose_e_per_A2:.1f}" if abs(dose_e_per_A2 - FALLING_STEP_DOSE_E_PER_A2) < 1 else f"{dose_e_per_A2:.0f}"
    return falls, f"{shown} e⁻/Å², {'under' if falls else 'not under'} {FALLING_STEP_DOSE_E_PER_A2:g}"


@attrs.frozen
class EpieConfig:
    beta_object: Schedulable | None = param(None, doc=_BETA_DOC.format(init=1.0), validator=_BETA)
    beta_probe: Schedulable = param(1.0, doc="probe step [0..1], or a schedule over iterations", validator=_BETA)
    object_norm: str = param("group", doc="the object step's denominator: 'group', the largest value of the "
                             "group's summed illumination (a step that shrinks as the group's positions overlap "
                             "more: larger or compact groups start slower); 'position', per pixel the larger of "
                             "that sum and the group's largest illumination of one position (on one slice each "
                             "position's own ePIE step, averaged where positions overlap: the same start for every "
                             "group size)",
                             validator=attrs.validators.in_(("group", "position")))


#: LSQML's δ_O when a plan leaves it null: (one slice, several). A larger δ weights the
#: object direction towards the plain gradient: better on one slice at every dose measured
#: and at low dose, but slower in multislice's first iterations (benchmarks/NOTES.md 68)
ILLUM_REG_OBJECT_DEFAULT = (0.3, 0.1)


@attrs.frozen
class LsqmlConfig:
    beta_object: Schedulable | None = param(None, doc=_BETA_DOC.format(init=0.5), validator=_BETA)
    beta_probe: Schedulable = param(0.5, doc="probe step [0..1], or a schedule over iterations; "
                                    "1.0 recovers a poorly known single-slice probe faster", validator=_BETA)
    illum_reg_object: float | None = param(None, doc="δ_O: added to the illumination, as a fraction of its "
                                           "maximum; null: 0.3 on one slice, 0.1 with several",
                                           validator=in_range(0))
    illum_reg_probe: float = param(0.1, doc="δ_P: added to Σ|O|², as a fraction of its maximum",
                                   validator=in_range(0))
    gamma: float = param(1e-6, doc="regularises the optimal-step denominators, relative to their mean "
                         "over the group's positions", validator=in_range(0))
    multislice: str = param("joint", doc="'joint': one step for all slices and the probe along their "
                            "combined direction; 'sequential': slice by slice from the exit, each taking "
                            "what the later ones left", validator=attrs.validators.in_(("joint", "sequential")))


def _object_maps(bk: Any, obj_slice: Any, starts: Any, psi: Any, chi: Any, m: Any) -> tuple[Any, Any, Any]:
    """The object-update numerator Σ conj(ψ)·χ scatter-added on the slice ``(H, W)``, the
    per-position illumination Σ_modes |ψ|² ``(B, Ny, Nx)`` and its scatter-added map."""
    xp = bk.xp
    num = xp.sum(xp.conj(psi) * chi, axis=1) * m
    illum = xp.sum(abs2(xp, psi), axis=1) * m
    num_map = add_views(bk, xp.zeros_like(obj_slice), starts, num)
    illum_map = add_views(bk, xp.zeros(obj_slice.shape, dtype=bk.real_dtype), starts, illum)
    return num_map, illum, illum_map


def _optimal_step(xp: Any, chi: Any, d: Any, gamma: float, mask: Any) -> Any:
    """α = Re Σ χ·conj(d) / (Σ|d|² + γ·mean): each position's least-squares step along ``d``
    ``(B, M, Ny, Nx)`` (Odstrčil eq. 23), the denominator regularised by γ times its mean
    over the group's valid positions (``mask`` ``(B,)``)."""
    axes = (1, 2, 3)
    num = xp.sum(xp.real(chi * xp.conj(d)), axis=axes)
    den = xp.sum(abs2(xp, d), axis=axes)
    return regularised_step(xp, num, den, gamma, group_mean(xp, den, mask))


class ConventionalSolver:
    """Base of ePIE and LSQML: the backward sweep through the slices.

    At slice i (from the last), χ is the wanted change of the wave leaving the slice.
    The object slice takes the part of χ it can explain; the rest, χ − ΔO_i·ψ_i, is what
    the wave entering the slice must change by, and goes back one slice as
    conj(O_i)·(χ − ΔO_i·ψ_i) through the adjoint propagator. Passing only the
    unexplained rest (a Gauss-Seidel sweep) keeps S slices from each taking the full
    correction, which would overshoot S-fold. At the entrance plane the probe takes the
    remaining change.
    """

    name = "conventional"
    #: the object's β where a plan leaves it null (:data:`ANNEALED_BETA`)
    initial_beta = 1.0

    def __init__(self, config: Any):
        self.config = config
        #: set by :meth:`for_slices` (None: not told, and a null β stays constant)
        self.n_slices: int | None = None
        #: [e⁻/Å²] set by :meth:`for_dose` (None: not told or not counted data, and a null
        #: β stays constant)
        self.dose_e_per_A2: float | None = None
        self.beta_object = self._constant_beta(config.beta_object)
        self.beta_probe = self._constant_beta(config.beta_probe)

    def _constant_beta(self, value: Any) -> float:
        """A step known before the first iteration (a schedule's comes from :meth:`hyperparams`)."""
        if value is None:
            return self.initial_beta
        return value if isinstance(value, (int, float)) else 1.0

    @property
    def step_falls(self) -> bool:
        """Whether a null object step falls (:data:`ANNEALED_BETA`): one slice, counted
        data under :data:`FALLING_STEP_DOSE_E_PER_A2`."""
        return self.n_slices == 1 and falling_step_reason(self.dose_e_per_A2)[0]

    def default_beta(self, iteration: int) -> float:
        """The object's β at an engine iteration where the plan leaves it null."""
        if not self.step_falls:
            return self.initial_beta
        fraction = 1.0
        for start, value in ANNEALED_BETA:
            if iteration >= start:
                fraction = value
        return self.initial_beta * fraction

    def hyperparams(self, iteration: int, registry: Any) -> dict[str, float]:
        """The step sizes at an engine iteration (schedules evaluated on the host)."""
        beta_object = self.config.beta_object
        return {"beta_object": (self.default_beta(iteration) if beta_object is None
                                else schedule_value(beta_object, iteration, registry)),
                "beta_probe": schedule_value(self.config.beta_probe, iteration, registry)}

    def for_slices(self, n_slices: int) -> "ConventionalSolver":
        """The solver for an object of ``n_slices`` slices (defaults that depend on it
        resolved); the engine calls it once before building its steps."""
        solver = copy.copy(self)
        solver.n_slices = int(n_slices)
        return solver

    def for_dose(self, dose_e_per_A2: float | None) -> "ConventionalSolver":
        """The solver for data of this dose [e⁻/Å²] (:func:`counted_dose`; None: unknown);
        the engine calls it once before building its steps."""
        solver = copy.copy(self)
        solver.dose_e_per_A2 = None if dose_e_per_A2 is None else float(dose_e_per_A2)
        return solver

    def with_steps(self, beta_object: Any, beta_probe: Any) -> "ConventionalSolver":
        """A copy using these step sizes (traced scalars under jit: no recompilation)."""
        solver = copy.copy(self)
        solver.beta_object, solver.beta_probe = beta_object, beta_probe
        return solver

    def object_update(self, bk: Any, obj_slice: Any, starts: Any, psi: Any, chi: Any, mask: Any,
                      probe_dir: Any = None) -> tuple[Any, Any, Any]:
        """(new slice, the applied update ``(H, W)``, the probe step (B,) or None)."""
        raise NotImplementedError

    def probe_update(self, bk: Any, probe: Any, frac: Any, o0: Any, chi0: Any, mask: Any) -> Any:
        raise NotImplementedError

    def probe_direction(self, bk: Any, frac: Any, o0: Any, chi0: Any, mask: Any) -> Any:
        return None

    def wave_backprop(self, bk: Any, o: Any, chi: Any) -> Any:
        """Update of the wave entering a slice from the unexplained update χ after it."""
        return bk.xp.conj(o)[:, None] * chi

    def sweeps_slice_by_slice(self, update_object: bool) -> bool:
        """Whether :meth:`sweep` is the base one, a loop reading ``views[:, i]`` and
        ``psis[i]`` one slice at a time: then a whole-group step on a backend that compiles
        loops gathers each slice's views where they are read
        (:class:`~phaser_std.physics.forward.SliceViews`) and the entering waves come as
        one array. A subclass with a sweep of its own gets the views as one array (LSQML's
        own joint sweep: :class:`SliceViews` too, and the waves as a list)."""
        return type(self).sweep is ConventionalSolver.sweep

    def sweep(self, bk: Any, obj: Any, probe: Any, starts: Any, frac: Any, views: Any, psis: Any, props: Any,
              chi: Any, mask: Any, update_object: bool, update_probe: bool) -> tuple[Any, Any, Any]:
        """The backward sweep: (new object, new probe, χ at the entrance plane). The slices
        after the first are one loop (:meth:`~phaser_core.backend.BaseBackend.scan`: one
        compiled body on jax, whatever their number); ``psis`` as
        :func:`~phaser_std.physics.forward.multislice_forward` returns them."""
        xp = bk.xp
        n_slices = views.shape[1]
        shape = views.shape[-2:]
        # Views gathered where read (SliceViews, a compiled loop): the object is updated in
        # its own buffer, slice by slice from the last. Slice i's old values are carried
        # from the step before (read there from the object as written) and its views
        # gathered from them, so XLA writes in place and no second object is held.
        # Otherwise the new slices go into a buffer of their own (in place on numpy, where
        # a stack of them would be one more object-sized allocation).
        in_place = update_object and isinstance(views, SliceViews)

        def old_slice(current: Any, i: Any) -> tuple[Any, Any]:
            """Slice i before its update and its views (in place: ``current`` is slice i
            itself, carried from the step before)."""
            if in_place:
                return current, bk.get_windows(current, starts, shape)
            return obj[i], views[:, i]

        def back(carry, x):
            """Slice i (> 0) takes what it can explain of χ; the rest goes back to the exit
            of slice i-1."""
            chi, new_obj, current = carry
            (i,) = x
            obj_i, view_i = old_slice(current, i)
            if update_object:
                new_slice, applied, _ = self.object_update(bk, obj_i, starts, psis[i], chi, mask)
                new_obj = bk.set_at(new_obj, (i,), new_slice)
                if applied is not None:
                    chi = chi - get_views(bk, applied[None], starts, shape)[:, 0][:, None] * psis[i]
            chi = propagate(bk, self.wave_backprop(bk, view_i, chi), xp.conj(_prop_for_slice(props, i - 1)))
            # in place, slice i-1 (not yet updated) is read from the updated object, after
            # slice i is written: the object's only reads and writes in a step are then
            # ordered by their data, and XLA updates it without copying it (reading slice i
            # and its views from the object in the step that writes it cost two copies of
            # the object a slice; NOTES.md 61)
            return (chi, new_obj, new_obj[i - 1] if in_place else current), {}

        new_obj = obj if in_place or not update_object else xp.zeros_like(obj)
        current = obj[n_slices - 1] if in_place else None
        if n_slices > 1:
            (chi, new_obj, current), _ = bk.scan(back, (chi, new_obj, current),
                                                 (slice_indices(bk, n_slices - 1, 0, -1),))
        obj_0, view_0 = old_slice(current, 0)
        probe_step = None
        if update_object:
            pdir = self.probe_direction(bk, frac, view_0, chi, mask) if update_probe else None
            first, _, probe_step = self.object_update(bk, obj_0, starts, psis[0], chi, mask, pdir)
            new_obj = bk.set_at(new_obj, (0,), first)
        new_probe = probe
        if update_probe:
            new_probe = self.probe_update(bk, probe, frac, view_0, chi, mask, probe_step)
        return new_obj, new_probe, chi


class EpieSolver(ConventionalSolver):
    """ePIE (3PIE for multislice), normalised by the group's largest illumination (or per
    position: ``object_norm``)."""

    name = "epie"

    def object_update(self, bk, obj_slice, starts, psi, chi, mask, probe_dir=None):
        xp = bk.xp
        m = mask[:, None, None]
        num_map, illum, illum_map = _object_maps(bk, obj_slice, starts, psi, chi, m)
        peak = xp.max(illum) if self.config.object_norm == "position" else None
        delta = bk.divide_real(self.beta_object * num_map, epie_step_norm(xp, illum_map, peak))
        return obj_slice + delta, delta, None

    def wave_backprop(self, bk, o, chi):
        xp = bk.xp
        # the (B, Ny, Nx) views scaled, not the (B, M, Ny, Nx) product divided: numpy
        # divides complex by real as complex by complex, 4x slower than this multiply
        return (xp.conj(o) * (1.0 / (xp.max(abs2(xp, o)) + 1e-30)))[:, None] * chi

    def probe_update(self, bk, probe, frac, o0, chi0, mask, probe_step=None):
        xp = bk.xp
        m = mask[:, None, None]
        num = unshift_probes(bk, xp.conj(o0)[:, None] * chi0 * m[:, None], frac)
        den = xp.max(xp.sum(abs2(xp, o0) * m, axis=0))
        return probe + self.beta_probe * num / (den + 1e-30)


class LsqmlSolver(ConventionalSolver):
    """LSQML with per-position optimal steps, illumination-normalised directions.

    At the entrance slice the object and probe steps of each position are solved jointly
    (Odstrčil et al. 2018, eq. 23: a 2x2 least-squares system), so the two updates do not
    both take the same correction.
    """

    name = "lsqml"
    initial_beta = 0.5

    def __init__(self, config: Any):
        self.delta_from_slices = config.illum_reg_object is None
        if self.delta_from_slices:
            config = attrs.evolve(config, illum_reg_object=ILLUM_REG_OBJECT_DEFAULT[0])
        super().__init__(config)

    def for_slices(self, n_slices: int) -> "LsqmlSolver":
        """δ_O left null in the plan: 0.3 on one slice, 0.1 with several
        (:data:`ILLUM_REG_OBJECT_DEFAULT`)."""
        solver = super().for_slices(n_slices)
        if not self.delta_from_slices:
            return solver
        solver.config = attrs.evolve(self.config, illum_reg_object=ILLUM_REG_OBJECT_DEFAULT[int(n_slices > 1)])
        return solver

    def sweeps_slice_by_slice(self, update_object):
        return type(self).sweep is LsqmlSolver.sweep and (not update_object or self.config.multislice == "sequential")

    def probe_direction(self, bk, frac, o0, chi0, mask):
        xp = bk.xp
        cfg = self.config
        m = mask[:, None, None]
        num = unshift_probes(bk, xp.conj(o0)[:, None] * chi0 * m[:, None], frac)  # (M, Ny, Nx)
        den = xp.sum(abs2(xp, o0) * m, axis=0)
        return num / (den + cfg.illum_reg_probe * xp.max(den) + 1e-30), frac, o0

    def object_update(self, bk, obj_slice, starts, psi, chi, mask, probe_dir=None):
        xp = bk.xp
        cfg = self.config
        m = mask[:, None, None]
        num_map, illum, illum_map = _object_maps(bk, obj_slice, starts, psi, chi, m)
        direction = bk.divide_real(num_map, illum_map + cfg.illum_reg_object * xp.max(illum_map) + 1e-30)
        d_views = get_views(bk, direction[None], starts, psi.shape[-2:])[:, 0]
        a = d_views[:, None] * psi
        probe_step = None
        if probe_dir is None:
            alpha = _optimal_step(xp, chi, a, cfg.gamma, mask)
        else:
            pdir, frac, o0 = probe_dir
            # the step size only: the probe direction without its sub-pixel shift (≤ ½ px)
            # changes α negligibly and saves an inverse FFT of every wave of the group
            b = pdir[None] * o0[:, None]
            alpha, probe_step = _joint_steps(xp, chi, a, b, cfg.gamma, mask)
            probe_step = (xp.clip(probe_step, 0.0, None) * mask, pdir)
        alpha = xp.clip(alpha, 0.0, None) * mask
        weight = add_views(bk, xp.zeros(obj_slice.shape, dtype=bk.real_dtype), starts, alpha[:, None, None] * illum)
        weight = weight / (illum_map + 1e-30)
        delta = self.beta_object * weight * direction
        return obj_slice + delta, delta, probe_step

    def sweep(self, bk, obj, probe, starts, frac, views, psis, props, chi, mask, update_object, update_probe):
        """Single slice: the joint object/probe step of the base sweep. Multislice: a
        steepest-descent step on all slices and the probe together.

        χ goes back through every slice whole (the gradient: conj(O_i)χ through the
        adjoint propagator); each slice's direction is its gradient divided by its
        illumination. One linearised forward pass carries all directions (objects and
        probe) to the exit plane, and each position's step α is the least-squares fit of
        χ there (Odstrčil et al. 2018, eq. 23 with one combined direction). Slices share
        the correction instead of the last slice taking all of it.
        """
        n_slices = views.shape[1]
        if n_slices == 1 or not update_object or self.config.multislice == "sequential":
            return super().sweep(bk, obj, probe, starts, frac, views, psis, props, chi, mask, update_object,
                                 update_probe)
        xp = bk.xp
        cfg = self.config
        m = mask[:, None, None]
        shape = psis[0].shape[-2:]
        directions, illums, illum_maps = [None] * n_slices, [None] * n_slices, [None] * n_slices
        if isinstance(views, SliceViews):  # gathered anew in each pass, not kept from the forward pass
            views, chi = views.after(chi)
        g = chi
        for i in range(n_slices - 1, -1, -1):
            psi = psis[i]
            num_map, illums[i], illum_maps[i] = _object_maps(bk, obj[i], starts, psi, g, m)
            directions[i] = bk.divide_real(num_map, illum_maps[i] + cfg.illum_reg_object * xp.max(illum_maps[i])
                                           + 1e-30)
            if i > 0:
                g = back_through_slice(bk, g, views[:, i], props, i)
        chi0 = g
        if isinstance(views, SliceViews):
            views, chi0 = views.after(chi0)
        pdir = self.probe_direction(bk, frac, views[:, 0], chi0, mask)[0] if update_probe else None
        # the combined direction, carried to the exit plane (linearised multislice)
        d_wave = shift_probes(bk, pdir, frac) if update_probe else xp.zeros_like(psis[0])
        for i in range(n_slices):
            d_view = get_views(bk, directions[i][None], starts, shape)[:, 0]
            d_wave = d_wave * views[:, i][:, None] + d_view[:, None] * psis[i]
            if i < n_slices - 1:
                d_wave = propagate(bk, d_wave, _prop_for_slice(props, i))
        alpha = xp.clip(_optimal_step(xp, chi, d_wave, cfg.gamma, mask), 0.0, None) * mask
        new_slices = []
        for i in range(n_slices):
            weight = add_views(bk, xp.zeros(obj[i].shape, dtype=bk.real_dtype), starts,
                               alpha[:, None, None] * illums[i])
            weight = weight / (illum_maps[i] + 1e-30)
            new_slices.append(obj[i] + self.beta_object * weight * directions[i])
        new_probe = probe
        if update_probe:
            alpha_mean = xp.sum(alpha) / xp.maximum(xp.sum(mask), 1.0)
            new_probe = probe + self.beta_probe * alpha_mean * pdir
        return xp.stack(new_slices, axis=0), new_probe, chi0

    def probe_update(self, bk, probe, frac, o0, chi0, mask, probe_step=None):
        xp = bk.xp
        cfg = self.config
        if probe_step is None:
            pdir, _, _ = self.probe_direction(bk, frac, o0, chi0, mask)
            b = shift_probes(bk, pdir, frac) * o0[:, None]
            alpha = xp.clip(_optimal_step(xp, chi0, b, cfg.gamma, mask), 0.0, None) * mask
        else:
            alpha, pdir = probe_step
        alpha_mean = xp.sum(alpha) / xp.maximum(xp.sum(mask), 1.0)
        return probe + self.beta_probe * alpha_mean * pdir


def _joint_steps(xp: Any, chi: Any, a: Any, b: Any, gamma: float, mask: Any) -> tuple[Any, Any]:
    """Per-position (α_a, α_b) minimising Σ|χ − α_a·a − α_b·b|² + γ·(r_a·α_a² + r_b·α_b²)
    (Odstrčil eq. 23), r the group means of Σ|a|² and Σ|b|² over the valid positions."""
    d = inner_products(xp, chi, a, b)
    return solve_2x2(xp, d, gamma, group_mean(xp, d["aa"], mask), group_mean(xp, d["bb"], mask))


def position_direction(bk: Any, probes: Any, o0: Any, chi0: Any, mask: Any) -> Any:
    """Per-position least-squares shift ``(B, 2)`` (y, x) [px] that best explains χ₀.

    Moving the probe by d over the object changes the wave after the first slice like
    P(r)·O(r + d) up to a rigid translation, which the detector cannot see (a far-field
    phase ramp); so the visible derivative is P·∂O/∂r (the object gradient, Odstrčil et al.
    2018 §4.2), not O·∂P (whose largest part is that invisible ramp). The shift is
    Re Σ conj(P·∂O)·χ / Σ|P·∂O|² per axis, with central differences for ∂O.
    """
    xp = bk.xp
    out = []
    for axis in (-2, -1):
        d_obj = 0.5 * (xp.roll(o0, -1, axis=axis) - xp.roll(o0, 1, axis=axis))
        dpsi = probes * d_obj[:, None]
        num = xp.sum(xp.real(xp.conj(dpsi) * chi0), axis=(1, 2, 3))
        den = xp.sum(abs2(xp, dpsi), axis=(1, 2, 3))
        out.append(num / (den + 1e-3 * xp.max(den) + 1e-30))
    return xp.stack(out, axis=1) * mask[:, None]


def has_chunked_rule(solver: ConventionalSolver, n_slices: int) -> bool:
    """Whether :func:`make_group_step` can compute ``solver``'s groups in chunks: the
    built-in ePIE and LSQML rules (not a plugin's subclass) where
    :func:`~phaser_std.engines.chunking.has_chunked_step` says so."""
    return type(solver) in (EpieSolver, LsqmlSolver) and has_chunked_step(
        solver.name, n_slices, getattr(solver.config, "multislice", "joint"))


def make_group_step(bk: Any, solver: ConventionalSolver, noise: Any, props: Any, probe_shape: tuple[int, int],
                    chunk: int | None = None):
    """The pure per-group step of a conventional engine.

    ``step(obj, probe, measured, starts, frac, mask, hyper, update_object, update_probe,
    update_positions, props) -> (obj, probe, loss_sum, shift_px)``: ``hyper`` holds the step
    sizes ``beta_object`` and ``beta_probe`` (scalars); ``measured`` ``(B, Qy, Qx)``
    corner-centred [e⁻]; ``loss_sum`` the noise-model loss summed over the group's
    patterns before the update; ``shift_px`` ``(B, 2)`` the position-correction direction;
    ``props`` the propagators (default: the ``props`` given here, whose shape fixes the
    slice count). A compiled step takes them as an argument, so that they are not constants
    of the program: a run with another slice thickness then reuses it (jax's cache; the
    wavelength and pixel size stay constants where a constraint or cost uses them).

    ``chunk`` (a divisor of B; None: the whole group): ePIE and LSQML (single slice, and
    LSQML's multislice ``joint`` step) compute the group that many positions at a time
    (:mod:`~phaser_std.engines.chunked_steps`, same result). LSQML's ``sequential`` sweep
    always takes the whole group.
    """
    xp = bk.xp
    n_slices = 1 if props is None else int(props.shape[-3]) + 1

    default_props = props

    def step(obj, probe, measured, starts, frac, mask, hyper, update_object=True, update_probe=True,
             update_positions=False, props=None):
        props = default_props if props is None else props
        mask_f = mask.astype(bk.real_dtype)
        stepper = solver.with_steps(hyper["beta_object"], hyper["beta_probe"])
        # the chunked steps re-implement the two built-in rules exactly: a subclass (a
        # plugin's variant of a sweep or an update) keeps the whole-group path calling it
        kind = type(solver)
        chunked = chunk is not None and chunk < mask.shape[0] and has_chunked_rule(solver, n_slices)
        if chunked:
            if kind is EpieSolver and props is not None:
                new_obj, new_probe, loss, chi0, probes = epie_multislice_chunked(
                    bk, stepper, noise, obj, probe, props, measured, starts, frac, mask, chunk, update_object,
                    update_probe, keep_waves=update_positions)
            elif kind is EpieSolver:
                new_obj, new_probe, loss, chi0, probes = epie_single_slice_chunked(
                    bk, stepper, noise, obj, probe, measured, starts, frac, mask, chunk, update_object, update_probe,
                    keep_waves=update_positions)
            elif props is None:
                new_obj, new_probe, loss, chi0, probes = lsqml_single_slice_chunked(
                    bk, stepper, noise, obj, probe, measured, starts, frac, mask, chunk, update_object, update_probe)
            elif update_object:
                new_obj, new_probe, loss, chi0, probes = lsqml_multislice_chunked(
                    bk, stepper, noise, obj, probe, props, measured, starts, frac, mask, chunk, update_probe)
            else:
                new_obj, new_probe, loss, chi0, probes = lsqml_multislice_probe_chunked(
                    bk, stepper, noise, obj, probe, props, measured, starts, frac, mask, chunk, update_probe,
                    keep_waves=update_positions)
            o0 = get_views(bk, obj[:1], starts, probe_shape)[:, 0] if update_positions else None
        else:
            new_obj, new_probe, loss, chi0, probes, o0 = whole_group(stepper, obj, probe, props, measured, starts,
                                                                     frac, mask_f, update_object, update_probe,
                                                                     update_positions)
        if update_positions:
            shift = position_direction(bk, probes, o0, chi0, mask_f)
        else:
            shift = xp.zeros((mask.shape[0], 2), dtype=bk.real_dtype)
        return new_obj, new_probe, loss, shift

    def whole_group(stepper, obj, probe, props, measured, starts, frac, mask_f, update_object, update_probe,
                    update_positions):
        probes = shift_probes(bk, probe, frac)
        by_slice = stepper.sweeps_slice_by_slice(update_object)
        joint = type(solver) is LsqmlSolver and not by_slice
        if (by_slice or joint) and bk.compiled_loops and n_slices > 1:
            views = SliceViews(bk, obj, starts, probe_shape)
        else:
            views = get_views(bk, obj, starts, probe_shape)
        # LSQML's joint sweep reads the slices unrolled, each pass gathering its views anew:
        # with the entering waves as a list, not a stacked buffer, XLA's temporaries for the
        # paper's 64 x 20 x 128² group are 464 MiB (668 stacked, 656 with all views kept)
        loop = False if joint else None
        psis, exit_waves = multislice_forward(bk, probes, views, props, loop=loop)
        wave_k = farfield(bk, exit_waves)
        model = intensity(bk, wave_k)
        loss = xp.sum(noise.loss(bk, model, measured) * mask_f)
        chi = farfield_adjoint(bk, noise.wave_update(bk, wave_k, model, measured)) * mask_f[:, None, None, None]
        # the first slice's views for the position direction, read before the sweep, which
        # may update the object in place
        o0 = view_slice(views, 0) if update_positions else None
        new_obj, new_probe, chi = stepper.sweep(bk, obj, probe, starts, frac, views, psis, props, chi, mask_f,
                                                update_object, update_probe)
        return new_obj, new_probe, loss, chi, probes, o0

    return step


def register_conventional(register) -> None:
    register("epie", EpieSolver, config=EpieConfig, role="conventional", aliases=("3pie",),
             doc="ePIE (3PIE for multislice), normalised by the group's largest illumination (or per position: "
                 "object_norm).")
    register("lsqml", LsqmlSolver, config=LsqmlConfig, role="conventional",
             doc="Least-squares maximum likelihood (Odstrčil 2018) with optimal per-position steps.")
