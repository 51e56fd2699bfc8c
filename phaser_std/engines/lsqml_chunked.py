"""The single-slice LSQML group step computed a chunk of positions at a time.

Same update as :class:`~phaser_std.engines.conventional_solvers.LsqmlSolver` on one slice
(the joint object/probe step of Odstrčil et al. 2018, eq. 23), but the group's per-position
arrays are never all live at once: with 4 probe modes a group of 64 holds several 8 MiB
wave arrays, which fall out of the CPU's L3 and make each pass 2-3x slower per element than
for 32 positions (``benchmarks/NOTES.md``). The step has three parts:

1. per chunk (``bk.scan``): forward model, loss, χ; the object numerator Σ conj(ψ)χ and
   illumination Σ|ψ|² scatter-added, the probe numerator accumulated in Fourier space;
   χ, ψ and the per-position illumination kept for part 2;
2. on the group: the object and probe directions (illumination-normalised, as the
   unchunked step), then per chunk the five inner products of each position's 2x2
   least-squares system;
3. on the group: the steps α (the regularisation γ·max over the *group*, as unchunked),
   the illumination-weighted object step and the mean probe step.

Results equal the unchunked step to float rounding (``tests/test_conventional_engine.py``).
"""

from __future__ import annotations

from typing import Any

from phaser_std.physics.forward import (
    _fft2_pair,
    _ifft2_pair,
    _shift_ramp,
    add_views,
    farfield,
    farfield_adjoint,
    get_views,
    intensity,
    shift_probes,
    split_rows,
)

__all__ = ["lsqml_single_slice_chunked"]


def _abs2(xp: Any, z: Any) -> Any:
    return xp.real(z) ** 2 + xp.imag(z) ** 2


def lsqml_single_slice_chunked(bk: Any, solver: Any, noise: Any, obj: Any, probe: Any, measured: Any,
                               starts: Any, frac: Any, mask: Any, chunk: int, update_object: bool,
                               update_probe: bool) -> tuple[Any, Any, Any, Any, Any]:
    """``(new_obj, new_probe, loss_sum, chi, probes)`` for one slice, ``chunk`` (a divisor of
    the group size B) positions at a time. ``chi`` and ``probes`` ``(B, M, Ny, Nx)`` are the
    exit-wave update and shifted probes (for the position direction). ``frac`` may be a
    :class:`~phaser_std.physics.forward.ShiftRamp`. ``solver`` is an
    :class:`~phaser_std.engines.conventional_solvers.LsqmlSolver` with its step sizes set."""
    xp = bk.xp
    cfg = solver.config
    shape = probe.shape[-2:]
    n = mask.shape[0] // chunk
    mask_f = mask.astype(bk.real_dtype)

    def split(a: Any) -> Any:
        return split_rows(a, n)

    def forward(carry, x):
        num_map, illum_map, pnum_k, pden, loss = carry
        me, st, fr, m = x
        probes = shift_probes(bk, probe, fr)
        o0 = get_views(bk, obj, st, shape)[:, 0]  # (C, Ny, Nx): the one slice
        wave_k = farfield(bk, probes * o0[:, None])
        model = intensity(bk, wave_k)
        loss = loss + xp.sum(noise.loss(bk, model, me) * m)
        chi = farfield_adjoint(bk, noise.wave_update(bk, wave_k, model, me)) * m[:, None, None, None]
        mm = m[:, None, None]
        illum = xp.sum(_abs2(xp, probes), axis=1) * mm
        num_map = add_views(bk, num_map, st, xp.sum(xp.conj(probes) * chi, axis=1)[:, None] * mm[:, None])
        illum_map = add_views(bk, illum_map, st, illum[:, None])
        # Σ_b F[conj(O_b)χ_b]·conj(ramp_b): the probe numerator before its inverse FFT
        g = _fft2_pair(bk, xp.conj(o0)[:, None] * chi)
        pnum_k = pnum_k + xp.sum(g * xp.conj(_shift_ramp(bk, fr, shape))[:, None], axis=0)
        pden = pden + xp.sum(_abs2(xp, o0) * mm, axis=0)
        return (num_map, illum_map, pnum_k, pden, loss), {"chi": chi, "probes": probes, "illum": illum}

    zeros_c = xp.zeros(obj.shape, dtype=obj.dtype)
    init = (zeros_c, xp.zeros(obj.shape, dtype=bk.real_dtype), xp.zeros(probe.shape, dtype=probe.dtype),
            xp.zeros(shape, dtype=bk.real_dtype), xp.zeros((), dtype=bk.real_dtype))
    (num_map, illum_map, pnum_k, pden, loss), kept = bk.scan(
        forward, init, (split(measured), split(starts), split(frac), split(mask_f)))
    chi = kept["chi"].reshape((-1,) + tuple(kept["chi"].shape[2:]))
    probes = kept["probes"].reshape(chi.shape)
    if not update_object and not update_probe:
        return obj, probe, loss, chi, probes

    direction = num_map / (illum_map + cfg.illum_reg_object * xp.max(illum_map) + 1e-30)
    pdir = _ifft2_pair(bk, pnum_k) / (pden + cfg.illum_reg_probe * xp.max(pden) + 1e-30)

    def products(carry, x):
        ch, ps, st, fr = x
        o0 = get_views(bk, obj, st, shape)[:, 0]
        a = (get_views(bk, direction, st, shape)[:, 0][:, None] * ps) if update_object else xp.zeros_like(ps)
        if not update_probe:
            b = xp.zeros_like(ps)
        elif update_object:
            # the joint step's probe direction without its sub-pixel shift (as unchunked)
            b = pdir[None] * o0[:, None]
        else:
            b = shift_probes(bk, pdir, fr) * o0[:, None]
        axes = (1, 2, 3)
        dot = {"aa": xp.sum(_abs2(xp, a), axis=axes), "bb": xp.sum(_abs2(xp, b), axis=axes),
               "ab": xp.sum(xp.real(xp.conj(a) * b), axis=axes), "ca": xp.sum(xp.real(xp.conj(a) * ch), axis=axes),
               "cb": xp.sum(xp.real(xp.conj(b) * ch), axis=axes)}
        return carry, dot

    _, dots = bk.scan(products, 0.0, (kept["chi"], kept["probes"], split(starts), split(frac)))
    d = {k: v.reshape(-1) for k, v in dots.items()}
    new_obj, new_probe = obj, probe
    if update_object and update_probe:
        alpha, beta = _solve_2x2(xp, d, cfg.gamma)
    elif update_object:
        alpha, beta = d["ca"] / (d["aa"] + cfg.gamma * xp.max(d["aa"]) + 1e-30), None
    else:
        alpha, beta = None, d["cb"] / (d["bb"] + cfg.gamma * xp.max(d["bb"]) + 1e-30)
    if update_object:
        alpha = xp.clip(alpha, 0.0, None) * mask_f
        illum = kept["illum"].reshape((-1,) + tuple(shape))
        weight = add_views(bk, xp.zeros(obj.shape, dtype=bk.real_dtype), starts,
                           (alpha[:, None, None] * illum)[:, None])
        new_obj = obj + solver.beta_object * (weight / (illum_map + 1e-30)) * direction
    if update_probe:
        beta = xp.clip(beta, 0.0, None) * mask_f
        step = xp.sum(beta) / xp.maximum(xp.sum(mask_f), 1.0)
        new_probe = probe + solver.beta_probe * step * pdir
    return new_obj, new_probe, loss, chi, probes


def _solve_2x2(xp: Any, d: dict, gamma: float) -> tuple[Any, Any]:
    """Per-position (α_a, α_b) from the inner products (as ``_joint_steps``, γ·max over the group)."""
    aa = d["aa"] + gamma * xp.max(d["aa"]) + 1e-30
    bb = d["bb"] + gamma * xp.max(d["bb"]) + 1e-30
    ab, ca, cb = d["ab"], d["ca"], d["cb"]
    det = aa * bb - ab * ab
    det = xp.where(det > 1e-12 * aa * bb, det, aa * bb)
    return (bb * ca - ab * cb) / det, (aa * cb - ab * ca) / det
