"""Conventional update rules: ePIE/3PIE and LSQML, single slice or multislice, with modes.

Both share one group step (:func:`make_group_step`): the forward model, the noise model's
detector-plane wave update, and a backward sweep through the slices that turns the
exit-wave update χ into an object update per slice and, at the entrance plane, a probe
update and a position-correction direction. They differ in how an update direction is
normalised and scaled:

- ``epie`` (Maiden & Rodenburg 2009; multislice 3PIE, Maiden et al. 2012): the object
  direction Σ conj(ψ)χ is divided by the largest illumination of the group, the wave
  direction conj(O)χ by the largest |O|²; step ``beta``. For a group of one position this
  is exactly ePIE.
- ``lsqml`` (Odstrčil et al. 2018, eqs. 23-27; multislice per Tsai et al. 2016): the
  object direction is divided by the group illumination Σ|ψ|² + δ (per pixel), the probe
  direction by Σ|O|² + δ; per-position optimal step sizes α (eq. 23) are averaged,
  weighted by illumination, into the update; step ``beta``.

The wave update passed backward to slice i−1 is conj(O_i)χ_i (the illumination update
direction of the paper), back-propagated through the adjoint Fresnel propagator.
Everything runs under ``bk.jit`` (pure, static shapes, no in-place writes).
"""

from __future__ import annotations

from typing import Any

import attrs
import numpy as np

from phaser_core.config import param
from phaser_std.physics.forward import (
    add_views,
    farfield,
    farfield_adjoint,
    get_views,
    intensity,
    multislice_forward,
    propagate,
    shift_probes,
    unshift_probes,
)


@attrs.frozen
class EpieConfig:
    beta_object: float = param(1.0, doc="object step (0..1]")
    beta_probe: float = param(1.0, doc="probe step (0..1]")


@attrs.frozen
class LsqmlConfig:
    beta_object: float = param(0.9, doc="object step (0..1]")
    beta_probe: float = param(0.9, doc="probe step (0..1]")
    illum_reg_object: float = param(1e-2, doc="δ_O: added to the illumination, as a fraction of its maximum")
    illum_reg_probe: float = param(1e-2, doc="δ_P: added to Σ|O|², as a fraction of its maximum")
    gamma: float = param(1e-6, doc="regularises the optimal-step denominators (relative)")


def _abs2(xp: Any, z: Any) -> Any:
    return xp.real(z) ** 2 + xp.imag(z) ** 2


def _optimal_step(xp: Any, chi: Any, d: Any, gamma: float, axes: tuple) -> Any:
    """α = Re Σ χ·conj(d) / (Σ|d|² + γ·max): the least-squares step along ``d`` (Odstrčil eq. 23)."""
    num = xp.sum(xp.real(chi * xp.conj(d)), axis=axes)
    den = xp.sum(_abs2(xp, d), axis=axes)
    return num / (den + gamma * xp.max(den) + 1e-30)


class ConventionalSolver:
    """Base of ePIE and LSQML: the object, wave and probe updates of one slice."""

    name = "conventional"

    def __init__(self, config: Any):
        self.config = config

    # -- object ---------------------------------------------------------------------------
    def object_update(self, bk: Any, obj_slice: Any, starts: Any, psi: Any, chi: Any, mask: Any) -> Any:
        raise NotImplementedError

    def probe_update(self, bk: Any, probe: Any, frac: Any, o0: Any, chi0: Any, probes: Any, mask: Any) -> Any:
        raise NotImplementedError

    def wave_backprop(self, bk: Any, o: Any, chi: Any) -> Any:
        """Update of the wave entering a slice from the update χ after it: conj(O)χ."""
        return bk.xp.conj(o)[:, None] * chi


class EpieSolver(ConventionalSolver):
    """ePIE (3PIE for multislice), normalised by the group's largest illumination."""

    name = "epie"

    def object_update(self, bk, obj_slice, starts, psi, chi, mask):
        xp = bk.xp
        m = mask[:, None, None]
        num = xp.sum(xp.conj(psi) * chi, axis=1) * m
        illum = xp.sum(_abs2(xp, psi), axis=1) * m
        num_map = add_views(bk, xp.zeros_like(obj_slice), starts, num)
        illum_map = add_views(bk, xp.zeros(obj_slice.shape, dtype=bk.real_dtype), starts, illum)
        return obj_slice + self.config.beta_object * num_map / (xp.max(illum_map) + 1e-30)

    def wave_backprop(self, bk, o, chi):
        xp = bk.xp
        return xp.conj(o)[:, None] * chi / (xp.max(_abs2(xp, o)) + 1e-30)

    def probe_update(self, bk, probe, frac, o0, chi0, probes, mask):
        xp = bk.xp
        m = mask[:, None, None]
        num = unshift_probes(bk, xp.conj(o0)[:, None] * chi0 * m[:, None], frac)
        den = xp.max(xp.sum(_abs2(xp, o0) * m, axis=0))
        return probe + self.config.beta_probe * num / (den + 1e-30)


class LsqmlSolver(ConventionalSolver):
    """LSQML with per-position optimal steps, illumination-normalised directions."""

    name = "lsqml"

    def object_update(self, bk, obj_slice, starts, psi, chi, mask):
        xp = bk.xp
        cfg = self.config
        m = mask[:, None, None]
        num = xp.sum(xp.conj(psi) * chi, axis=1) * m
        illum = xp.sum(_abs2(xp, psi), axis=1) * m
        num_map = add_views(bk, xp.zeros_like(obj_slice), starts, num)
        illum_map = add_views(bk, xp.zeros(obj_slice.shape, dtype=bk.real_dtype), starts, illum)
        direction = num_map / (illum_map + cfg.illum_reg_object * xp.max(illum_map) + 1e-30)
        d_views = get_views(bk, direction[None], starts, psi.shape[-2:])[:, 0]
        alpha = _optimal_step(xp, chi, d_views[:, None] * psi, cfg.gamma, (1, 2, 3)) * mask
        alpha = xp.clip(alpha, 0.0, None)
        weight = add_views(bk, xp.zeros(obj_slice.shape, dtype=bk.real_dtype), starts, alpha[:, None, None] * illum)
        weight = weight / (illum_map + 1e-30 * xp.max(illum_map) + 1e-30)
        return obj_slice + cfg.beta_object * weight * direction

    def probe_update(self, bk, probe, frac, o0, chi0, probes, mask):
        xp = bk.xp
        cfg = self.config
        m = mask[:, None, None]
        num = unshift_probes(bk, xp.conj(o0)[:, None] * chi0 * m[:, None], frac)  # (M, Ny, Nx)
        den = xp.sum(_abs2(xp, o0) * m, axis=0)
        direction = num / (den + cfg.illum_reg_probe * xp.max(den) + 1e-30)
        d = shift_probes(bk, direction, frac) * o0[:, None]  # (B, M, Ny, Nx)
        alpha = xp.clip(_optimal_step(xp, chi0, d, cfg.gamma, (1, 2, 3)), 0.0, None)
        alpha_mean = xp.sum(alpha * mask) / xp.maximum(xp.sum(mask), 1.0)
        return probe + cfg.beta_probe * alpha_mean * direction


def position_direction(bk: Any, probes: Any, o0: Any, chi0: Any, mask: Any) -> Any:
    """Per-position least-squares shift ``(B, 2)`` (y, x) [px] that best explains χ₀.

    The wave after the first slice moves by d as ∂(ψ·O)/∂d = O·F⁻¹[−2πik·F[ψ]]; the
    shift is Re Σ conj(∂)·χ / Σ|∂|² per axis (Odstrčil et al. 2018, §4.2).
    """
    xp = bk.xp
    ny, nx = probes.shape[-2:]
    ky = bk.asarray(np.fft.fftfreq(ny))[:, None]
    kx = bk.asarray(np.fft.fftfreq(nx))[None, :]
    fp = bk.fft2(probes)
    out = []
    for k in (ky, kx):
        dpsi = bk.ifft2(fp * (-2j * np.pi * k)) * o0[:, None]
        num = xp.sum(xp.real(xp.conj(dpsi) * chi0), axis=(1, 2, 3))
        den = xp.sum(_abs2(xp, dpsi), axis=(1, 2, 3))
        out.append(num / (den + 1e-3 * xp.max(den) + 1e-30))
    return xp.stack(out, axis=1) * mask[:, None]


def make_group_step(bk: Any, solver: ConventionalSolver, noise: Any, props: Any, probe_shape: tuple[int, int]):
    """The pure per-group step of a conventional engine.

    ``step(obj, probe, measured, starts, frac, mask, update_object, update_probe,
    update_positions) -> (obj, probe, loss_sum, shift_px)``: ``measured`` ``(B, Qy, Qx)``
    corner-centred [e⁻]; ``loss_sum`` the noise-model loss summed over the group's
    patterns before the update; ``shift_px`` ``(B, 2)`` the position-correction direction.
    """
    xp = bk.xp

    def step(obj, probe, measured, starts, frac, mask, update_object=True, update_probe=True,
             update_positions=False):
        mask_f = mask.astype(bk.real_dtype)
        probes = shift_probes(bk, probe, frac)
        views = get_views(bk, obj, starts, probe_shape)
        psis, exit_waves = multislice_forward(bk, probes, views, props)
        wave_k = farfield(bk, exit_waves)
        model = intensity(bk, wave_k)
        loss = xp.sum(noise.loss(bk, model, measured) * mask_f)
        chi = farfield_adjoint(bk, noise.wave_update(bk, wave_k, model, measured)) * mask_f[:, None, None, None]
        n_slices = views.shape[1]
        new_slices = []
        for i in range(n_slices - 1, -1, -1):
            o = views[:, i]
            if update_object:
                new_slices.append(solver.object_update(bk, obj[i], starts, psis[i], chi, mask_f))
            else:
                new_slices.append(obj[i])
            if i > 0:
                chi = propagate(bk, solver.wave_backprop(bk, o, chi), xp.conj(props[i - 1]))
        new_obj = xp.stack(new_slices[::-1], axis=0)
        o0 = views[:, 0]
        new_probe = solver.probe_update(bk, probe, frac, o0, chi, probes, mask_f) if update_probe else probe
        if update_positions:
            shift = position_direction(bk, probes, o0, chi, mask_f)
        else:
            shift = xp.zeros((views.shape[0], 2), dtype=bk.real_dtype)
        return new_obj, new_probe, loss, shift

    return step


def register_conventional(register) -> None:
    register("epie", EpieSolver, config=EpieConfig, role="conventional", aliases=("3pie",),
             doc="ePIE (3PIE for multislice), normalised by the group's largest illumination.")
    register("lsqml", LsqmlSolver, config=LsqmlConfig, role="conventional",
             doc="Least-squares maximum likelihood (Odstrčil 2018) with optimal per-position steps.")
