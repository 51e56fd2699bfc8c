"""Conventional group steps computed a chunk of positions at a time: single-slice LSQML,
LSQML's multislice ``joint`` step and ePIE (single slice and multislice).

Each gives the same update as the whole-group step of
:mod:`~phaser_std.engines.conventional_solvers`, but the group's per-position arrays are
never all live at once: with 4 probe modes a group of 64 holds several 8 MiB wave arrays,
which fall out of the CPU's L3 and make each pass 2-3x slower per element than for a
chunk of a few MiB (``benchmarks/NOTES.md``). Single-slice LSQML (Odstrčil et al. 2018, eq. 23, the
joint object/probe step) has three parts:

1. per chunk (``bk.scan``): forward model, loss, χ; the object numerator Σ conj(ψ)χ and
   illumination Σ|ψ|² scatter-added, the probe numerator accumulated in Fourier space;
   χ, ψ and the per-position illumination kept for part 2;
2. on the group: the object and probe directions (illumination-normalised, as the
   unchunked step) and the references of the steps' regularisation, the group's means of
   the 2x2 systems' diagonals, exactly from the summed maps (:func:`step_references`);
3. per chunk: each position's 2x2 least-squares system and its steps α, added as the
   illumination-weighted object step and the sum of the probe steps (then, on the group,
   their mean).

The multislice step follows the same plan through the slices. Single-slice ePIE needs only
part 1 (its update is sums over positions normalised by group-wide maxima); multislice ePIE
one pass per slice, since each slice's update must be applied before χ goes back through
it (:func:`epie_multislice_chunked`). Results equal the
whole-group steps to float rounding (``tests/test_conventional_engine.py``).

Arguments as the group step of :func:`~phaser_std.engines.conventional_solvers.make_group_step`:
object ``(S, H, W)``, probe modes ``(M, Ny, Nx)``, ``measured`` ``(B, Qy, Qx)``
corner-centred [e⁻], ``starts`` ``(B, 2)`` view corners [px], ``frac`` ``(B, 2)`` sub-pixel
shifts [px] or their :class:`~phaser_std.physics.forward.ShiftRamp`, ``mask`` ``(B,)``.
"""

from __future__ import annotations

from typing import Any

from phaser_std.physics.forward import (
    abs2,
    _fft2_pair,
    _ifft2_pair,
    _shift_ramp,
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
    split_rows,
)

__all__ = ["lsqml_single_slice_chunked", "lsqml_multislice_chunked", "epie_single_slice_chunked",
           "epie_multislice_chunked",
           "inner_products", "solve_2x2", "step_references", "group_mean", "regularised_step"]


def _unsplit(a: Any) -> Any:
    """``(n, C, ...)`` -> ``(n·C, ...)``: the chunks' outputs back to the group's rows."""
    return a.reshape((-1,) + tuple(a.shape[2:]))


def _sums_init(bk: Any, obj: Any, probe: Any) -> tuple:
    """Zero sums of a chunked pass: the object numerator (complex) and illumination (real)
    maps ``(S, H, W)``, the probe numerator in reciprocal space ``(M, Ny, Nx)``, the probe
    denominator Σ|O|² ``(Ny, Nx)``, the loss and the number of valid positions. The count
    is summed with the rest because on CPU lanes each lane holds only its share of the
    group's mask: counted apart, it cost the lanes one more meeting a group."""
    xp = bk.xp
    return (xp.zeros(obj.shape, dtype=obj.dtype), xp.zeros(obj.shape, dtype=bk.real_dtype),
            xp.zeros(probe.shape, dtype=probe.dtype), xp.zeros(probe.shape[-2:], dtype=bk.real_dtype),
            xp.zeros((), dtype=bk.real_dtype), xp.zeros((), dtype=bk.real_dtype))


def _kept_waves(psis: Any) -> dict:
    """The waves entering the slices as a scan's outputs: one stacked array as
    :func:`~phaser_std.physics.forward.multislice_forward` returns it on compiled loops,
    else one entry per slice (stacking them would copy every wave on numpy)."""
    if isinstance(psis, list):
        return {f"psi{i}": p for i, p in enumerate(psis)}
    return {"psis": psis}


def _waves_kept(kept: dict, n_slices: int) -> Any:
    """All the chunks' kept waves (:func:`_kept_waves`) as a scan's inputs, each chunk's
    indexable by slice: the ``(n, S, C, M, Ny, Nx)`` array or a tuple of S ``(n, C, M, Ny,
    Nx)`` arrays."""
    if "psis" in kept:
        return kept["psis"]
    return tuple(kept[f"psi{i}"] for i in range(n_slices))


def _first_waves(kept: dict) -> Any:
    """The chunks' kept waves entering the first slice (the shifted probes): ``(n, C, M,
    Ny, Nx)``."""
    return kept["psis"][:, 0] if "psis" in kept else kept["psi0"]


def _exit_update(bk: Any, noise: Any, exit_wave: Any, measured: Any, m: Any) -> tuple[Any, Any]:
    """``(loss, chi)`` of a chunk: its noise-model loss summed over its valid positions and
    the exit-wave update χ ``(C, M, Ny, Nx)`` (zero at padded positions, ``m`` = 0)."""
    xp = bk.xp
    wave_k = farfield(bk, exit_wave)
    model = intensity(bk, wave_k)
    loss = xp.sum(noise.loss(bk, model, measured) * m)
    return loss, farfield_adjoint(bk, noise.wave_update(bk, wave_k, model, measured)) * m[:, None, None, None]


def _add_probe_sums(bk: Any, pnum_k: Any, pden: Any, o0: Any, g: Any, fr: Any, mm: Any) -> tuple[Any, Any]:
    """Add a chunk's probe numerator Σ_b F[conj(O_b)·g_b]·conj(ramp_b) (before its inverse
    FFT) and denominator Σ_b |O_b|², for the update g ``(C, M, Ny, Nx)`` at the entrance
    plane and the first slice's views ``o0`` ``(C, Ny, Nx)``. The denominator is a
    contraction with the mask: XLA:CPU makes it a dot, where a masked sum was a reduction
    reading the views' real and imaginary parts copied apart (NOTES.md 62)."""
    xp = bk.xp
    shape = o0.shape[-2:]
    gk = _fft2_pair(bk, xp.conj(o0)[:, None] * g)
    pnum_k = pnum_k + xp.sum(gk * xp.conj(_shift_ramp(bk, fr, shape))[:, None], axis=0)
    return pnum_k, pden + xp.tensordot(mm[:, 0, 0], abs2(xp, o0), axes=1)


def epie_step_norm(xp: Any, illum_map: Any, peak: Any = None) -> Any:
    """ePIE's object-step denominator for a group, from its summed illumination map
    ``illum_map`` [e⁻]. ``peak`` None (``object_norm: group``): the map's largest value,
    so every pixel's step shrinks by the group's largest overlap. ``peak`` the largest
    illumination Σ_modes|ψ|² of one position in the group (``object_norm: position``): per
    pixel the larger of the map there and ``peak``. Where one position covers a pixel that
    is the ePIE step conj(ψ)χ / peak: on one slice each position's own (the shifted probes
    share their peak), in the later slices of several, whose waves differ, the step of the
    group's most illuminated position; where the summed illumination
    passes one position's peak (compact groups, dense scans) the illumination-weighted mean
    of the positions' updates instead of their sum: for χ = ψ·δO a pixel moves by w·δO with
    w = Σ|ψ|² / max(Σ|ψ|², peak) ≤ 1, never further than one position's step would take
    it (benchmarks/NOTES.md 71)."""
    if peak is None:
        return xp.max(illum_map) + 1e-30
    return xp.maximum(illum_map, peak) + 1e-30


def _weighted_illumination(bk: Any, shape: tuple, starts: Any, alpha: Any, illums: Any) -> Any:
    """Σ_b α_b·illum_b scattered into an object-shaped real map ``shape``, chunk by chunk
    (the inputs split into chunks: ``starts`` ``(n, C, 2)``, ``alpha`` ``(n, C)``, ``illums``
    ``(n, C, S, Ny, Nx)``): LSQML's illumination-weighted object step. In chunks, so the
    illuminations kept per chunk stay where :meth:`sum_scan` computed them."""
    xp = bk.xp

    def add(carry, x):
        st, a, il = x
        return (add_views(bk, carry[0], st, a[:, None, None, None] * il),), {}

    (weight,), _ = bk.sum_scan(add, (xp.zeros(shape, dtype=bk.real_dtype),), (starts, alpha, illums))
    return weight


def _single_slice_sums(bk: Any, noise: Any, obj: Any, probe: Any, measured: Any, starts: Any, frac: Any,
                       mask_f: Any, n: int, object_sums: bool, probe_sums: bool,
                       keep: tuple[str, ...] = ("chi", "probes", "illum"), peak: bool = False) -> tuple[tuple, dict]:
    """One pass over the ``n`` chunks of a single-slice group: ``((num_map, illum_map,
    pnum_k, pden, loss, n_valid), kept)``, the sums of :func:`_sums_init` (the object's with
    ``object_sums``, the probe's with ``probe_sums``) and, per chunk, those of ``chi``, the
    shifted ``probes`` and their illumination Σ_modes|P|² ``illum`` ``(C, Ny, Nx)`` [e⁻]
    named in ``keep``. With ``peak`` the sums end with the largest illumination of one
    valid position (a maximum over the chunks). The common first half of the single-slice
    ePIE and LSQML steps."""
    xp = bk.xp
    shape = probe.shape[-2:]

    def one(carry, x):
        num_map, illum_map, pnum_k, pden, loss, n_valid = carry[:6]
        me, st, fr, m = x
        probes = shift_probes(bk, probe, fr)
        o0 = get_views(bk, obj, st, shape)[:, 0]  # (C, Ny, Nx): the one slice
        chunk_loss, chi = _exit_update(bk, noise, probes * o0[:, None], me, m)
        mm = m[:, None, None]
        illum = xp.sum(abs2(xp, probes), axis=1) * mm if object_sums or "illum" in keep else None
        if object_sums:
            num_map = add_views(bk, num_map, st, xp.sum(xp.conj(probes) * chi, axis=1)[:, None] * mm[:, None])
            illum_map = add_views(bk, illum_map, st, illum[:, None])
        if probe_sums:
            pnum_k, pden = _add_probe_sums(bk, pnum_k, pden, o0, chi, fr, mm)
        kept = {k: v for k, v in (("chi", chi), ("probes", probes), ("illum", illum)) if k in keep}
        sums = (num_map, illum_map, pnum_k, pden, loss + chunk_loss, n_valid + xp.sum(m))
        return sums + ((xp.maximum(carry[6], xp.max(illum)),) if peak else ()), kept

    init = _sums_init(bk, obj, probe) + ((xp.zeros((), dtype=bk.real_dtype),) if peak else ())
    return bk.sum_scan(one, init, tuple(split_rows(a, n) for a in (measured, starts, frac, mask_f)),
                       reduce=("sum",) * 6 + ("max",) if peak else None)


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
    (num_map, illum_map, pnum_k, pden, loss, n_valid), kept = _single_slice_sums(
        bk, noise, obj, probe, measured, starts, frac, mask_f, n, update_object, update_probe)
    n_valid = xp.maximum(n_valid, 1.0)
    chi, probes = _unsplit(kept["chi"]), _unsplit(kept["probes"])
    if not update_object:
        new_probe = _lsqml_probe_only(bk, solver, obj, probe, pnum_k, pden, kept["chi"], starts, frac, mask_f, n) \
            if update_probe else probe
        return obj, new_probe, loss, chi, probes

    direction = bk.divide_real(num_map, illum_map + cfg.illum_reg_object * xp.max(illum_map) + 1e-30)
    pdir = _ifft2_pair(bk, pnum_k) / (pden + cfg.illum_reg_probe * xp.max(pden) + 1e-30)
    ref_a, ref_b = step_references(xp, direction, illum_map, pdir if update_probe else None, pden, n_valid)

    def steps(carry, x):
        weight, probe_steps = carry
        ch, ps, st, il, m = x
        a = get_views(bk, direction, st, shape)[:, 0][:, None] * ps
        if update_probe:
            # the joint step's probe direction without its sub-pixel shift (as unchunked)
            b = pdir[None] * get_views(bk, obj, st, shape)[:, 0][:, None]
            alpha, beta = solve_2x2(xp, inner_products(xp, ch, a, b), cfg.gamma, ref_a, ref_b)
            probe_steps = probe_steps + xp.sum(xp.clip(beta, 0.0, None) * m)
        else:
            alpha = regularised_step(xp, xp.sum(xp.real(xp.conj(a) * ch), axis=(1, 2, 3)),
                                      xp.sum(abs2(xp, a), axis=(1, 2, 3)), cfg.gamma, ref_a)
        alpha = xp.clip(alpha, 0.0, None) * m
        return (add_views(bk, weight, st, alpha[:, None, None, None] * il[:, None]), probe_steps), {}

    zero = xp.zeros((), dtype=bk.real_dtype)
    (weight, probe_steps), _ = bk.sum_scan(
        steps, (xp.zeros(obj.shape, dtype=bk.real_dtype), zero),
        (kept["chi"], kept["probes"], split_rows(starts, n), kept["illum"], split_rows(mask_f, n)))
    new_obj = obj + solver.beta_object * (weight / (illum_map + 1e-30)) * direction
    new_probe = probe
    if update_probe:
        new_probe = probe + solver.beta_probe * probe_steps / n_valid * pdir
    return new_obj, new_probe, loss, chi, probes


def step_references(xp: Any, direction: Any, illum_map: Any, pdir: Any, pden: Any, n_valid: Any) -> tuple[Any, Any]:
    """The references of LSQML's single-slice step regularisation: the means over the
    group's valid positions of Σ|a_b|² and Σ|b_b|² (``aa`` and ``bb`` of
    :func:`inner_products`, a_b = d·ψ_b and b_b = p·O_b), from the group's sums alone:
    Σ_b m_b·Σ|d·ψ_b|² = Σ |d|²·(illumination map) and Σ_b m_b·Σ|p·O_b|² = Σ Σ_modes|p|²·(the
    probe denominator Σ_b m_b|O_b|²). So every position's steps follow from its own inner
    products, without another pass or a meeting of the CPU lanes (``benchmarks/NOTES.md``
    49). ``n_valid``: the number of valid positions (at least 1). ``pdir`` None: ``ref_b``
    is 0."""
    ref_a = xp.sum(abs2(xp, direction) * illum_map) / n_valid
    ref_b = 0.0 if pdir is None else xp.sum(xp.sum(abs2(xp, pdir), axis=0) * pden) / n_valid
    return ref_a, ref_b


def regularised_step(xp: Any, num: Any, den: Any, gamma: float, ref: Any) -> Any:
    """num / (den + γ·ref): one direction's least-squares step, ``ref`` the group's mean of
    ``den`` over its valid positions."""
    return num / (den + gamma * ref + 1e-30)


def group_mean(xp: Any, values: Any, mask_f: Any) -> Any:
    """The mean of per-position ``values`` ``(B,)`` over the valid positions."""
    return xp.sum(values * mask_f) / xp.maximum(xp.sum(mask_f), 1.0)


def _mean_step(xp: Any, steps: Any, mask_f: Any) -> Any:
    """The probe's step: the positions' least-squares steps, clipped at 0, averaged over the
    valid positions."""
    return group_mean(xp, xp.clip(steps, 0.0, None), mask_f)


def _lsqml_probe_only(bk: Any, solver: Any, obj: Any, probe: Any, pnum_k: Any, pden: Any, chi0: Any, starts: Any,
                      frac: Any, mask_f: Any, n: int) -> Any:
    """LSQML's probe update of an iteration without the object update, from the group's
    probe sums (:func:`_add_probe_sums`) and the update ``chi0`` at the entrance plane kept
    per chunk: the direction, then one pass over the chunks for each position's
    least-squares step along its shifted direction (as ``LsqmlSolver.probe_update``)."""
    xp, cfg, shape = bk.xp, solver.config, probe.shape[-2:]
    pdir = _ifft2_pair(bk, pnum_k) / (pden + cfg.illum_reg_probe * xp.max(pden) + 1e-30)

    def products(carry, x):
        ch, st, fr = x
        b = shift_probes(bk, pdir, fr) * get_views(bk, obj[:1], st, shape)[:, 0][:, None]
        axes = (1, 2, 3)
        return carry, {"cb": xp.sum(xp.real(xp.conj(b) * ch), axis=axes), "bb": xp.sum(abs2(xp, b), axis=axes)}

    _, dots = bk.sum_scan(products, (), (chi0, split_rows(starts, n), split_rows(frac, n)))
    cb, bb = dots["cb"].reshape(-1), dots["bb"].reshape(-1)
    steps = regularised_step(xp, cb, bb, cfg.gamma, group_mean(xp, bb, mask_f))
    return probe + solver.beta_probe * _mean_step(xp, steps, mask_f) * pdir


def inner_products(xp: Any, chi: Any, a: Any, b: Any) -> dict:
    """Per position (sums over modes and pixels), the inner products of the 2x2 system
    min Σ|χ − α_a·a − α_b·b|²: ``aa``, ``bb``, ``ab``, ``ca``, ``cb`` (each ``(B,)``)."""
    axes = (1, 2, 3)
    return {"aa": xp.sum(abs2(xp, a), axis=axes), "bb": xp.sum(abs2(xp, b), axis=axes),
            "ab": xp.sum(xp.real(xp.conj(a) * b), axis=axes), "ca": xp.sum(xp.real(xp.conj(a) * chi), axis=axes),
            "cb": xp.sum(xp.real(xp.conj(b) * chi), axis=axes)}


def solve_2x2(xp: Any, d: dict, gamma: float, ref_a: Any, ref_b: Any) -> tuple[Any, Any]:
    """Per-position (α_a, α_b) from :func:`inner_products` (Odstrčil et al. 2018, eq. 23),
    each diagonal regularised by γ times its group mean over the valid positions (``ref_a``,
    ``ref_b``: :func:`step_references`, or :func:`group_mean`)."""
    aa = d["aa"] + gamma * ref_a + 1e-30
    bb = d["bb"] + gamma * ref_b + 1e-30
    ab, ca, cb = d["ab"], d["ca"], d["cb"]
    det = aa * bb - ab * ab
    det = xp.where(det > 1e-12 * aa * bb, det, aa * bb)
    return (bb * ca - ab * cb) / det, (aa * cb - ab * ca) / det


def lsqml_multislice_chunked(bk: Any, solver: Any, noise: Any, obj: Any, probe: Any, props: Any, measured: Any,
                             starts: Any, frac: Any, mask: Any, chunk: int,
                             update_probe: bool) -> tuple[Any, Any, Any, Any, Any]:
    """The multislice ``joint`` LSQML step (object updated), ``chunk`` positions at a time;
    returns as :func:`lsqml_single_slice_chunked` (``chi`` at the entrance plane).

    Part 1 per chunk: forward through the slices, χ, and χ back through them, adding each
    slice's numerator and illumination maps and the probe numerator; the waves entering
    the slices are kept. On the group: the slices' and the probe's directions. Part 2 per
    chunk: the combined direction carried to the exit plane (linearised multislice) and the
    two sums of each position's least-squares step. On the group: the steps, the object
    and probe updates. As ``LsqmlSolver.sweep`` with ``multislice: joint``."""
    xp = bk.xp
    cfg = solver.config
    shape = probe.shape[-2:]
    n_slices = obj.shape[0]
    n = mask.shape[0] // chunk
    mask_f = mask.astype(bk.real_dtype)

    def split(a: Any) -> Any:
        return split_rows(a, n)

    def backward(carry, x):
        num_maps, illum_maps, pnum_k, pden, loss, n_valid = carry
        me, st, fr, m = x
        probes = shift_probes(bk, probe, fr)
        views = get_views(bk, obj, st, shape)  # (C, S, Ny, Nx)
        psis, exit_wave = multislice_forward(bk, probes, views, props, loop=False)
        chunk_loss, chi = _exit_update(bk, noise, exit_wave, me, m)
        loss = loss + chunk_loss
        mm = m[:, None, None]
        g = chi
        nums, illums = [None] * n_slices, [None] * n_slices
        for i in range(n_slices - 1, -1, -1):
            nums[i] = xp.sum(xp.conj(psis[i]) * g, axis=1) * mm
            illums[i] = xp.sum(abs2(xp, psis[i]), axis=1) * mm
            if i > 0:
                g = back_through_slice(bk, g, views[:, i], props, i)
        num_maps = add_views(bk, num_maps, st, xp.stack(nums, axis=1))
        illums = xp.stack(illums, axis=1)  # (C, S, Ny, Nx)
        illum_maps = add_views(bk, illum_maps, st, illums)
        if update_probe:
            pnum_k, pden = _add_probe_sums(bk, pnum_k, pden, views[:, 0], g, fr, mm)
        # one kept array per slice: stacking them would copy the group's waves once more
        kept = {"chi": chi, "chi0": g, "illums": illums, **{f"psi{i}": psis[i] for i in range(n_slices)}}
        return (num_maps, illum_maps, pnum_k, pden, loss, n_valid + xp.sum(m)), kept

    (num_maps, illum_maps, pnum_k, pden, loss, n_valid), kept = bk.sum_scan(
        backward, _sums_init(bk, obj, probe), (split(measured), split(starts), split(frac), split(mask_f)))
    peak = xp.max(illum_maps, axis=(1, 2), keepdims=True)
    directions = bk.divide_real(num_maps, illum_maps + cfg.illum_reg_object * peak + 1e-30)
    pdir = None
    if update_probe:
        pdir = _ifft2_pair(bk, pnum_k) / (pden + cfg.illum_reg_probe * xp.max(pden) + 1e-30)

    def carried(carry, x):
        ch, ps, st, fr = x
        views = get_views(bk, obj, st, shape)
        d_views = get_views(bk, directions, st, shape)
        d_wave = shift_probes(bk, pdir, fr) if update_probe else xp.zeros_like(ps[0])
        for i in range(n_slices):
            d_wave = d_wave * views[:, i][:, None] + d_views[:, i][:, None] * ps[i]
            if i < n_slices - 1:
                d_wave = propagate(bk, d_wave, props[i])
        axes = (1, 2, 3)
        return carry, {"num": xp.sum(xp.real(ch * xp.conj(d_wave)), axis=axes),
                       "den": xp.sum(abs2(xp, d_wave), axis=axes)}

    psis = tuple(kept[f"psi{i}"] for i in range(n_slices))  # psi0: the shifted probes
    _, sums = bk.sum_scan(carried, (), (kept["chi"], psis, split(starts), split(frac)))
    num, den = sums["num"].reshape(-1), sums["den"].reshape(-1)
    n_valid = xp.maximum(n_valid, 1.0)
    alpha = xp.clip(regularised_step(xp, num, den, cfg.gamma, xp.sum(den * mask_f) / n_valid), 0.0, None) * mask_f
    weight = _weighted_illumination(bk, obj.shape, split(starts), split(alpha), kept["illums"])
    new_obj = obj + solver.beta_object * (weight / (illum_maps + 1e-30)) * directions
    new_probe = probe
    if update_probe:
        step = xp.sum(alpha) / n_valid
        new_probe = probe + solver.beta_probe * step * pdir
    return new_obj, new_probe, loss, _unsplit(kept["chi0"]), _unsplit(kept["psi0"])


def lsqml_multislice_probe_chunked(bk: Any, solver: Any, noise: Any, obj: Any, probe: Any, props: Any,
                                   measured: Any, starts: Any, frac: Any, mask: Any, chunk: int, update_probe: bool,
                                   keep_waves: bool) -> tuple[Any, Any, Any, Any, Any]:
    """The multislice LSQML step of an iteration without the object update, ``chunk``
    positions at a time; returns as :func:`lsqml_single_slice_chunked` (``chi`` at the
    entrance plane; it and the shifted ``probes`` only with ``keep_waves``, else None).

    Per chunk: forward through the slices, χ, and χ back through them unchanged (no slice
    takes any of it) to the entrance plane, adding the probe's numerator and illumination.
    On the group: the probe's direction. Per chunk: each position's least-squares step along
    it at the entrance plane. As ``ConventionalSolver.sweep`` with ``LsqmlSolver`` and
    ``update_object`` False."""
    xp, shape = bk.xp, probe.shape[-2:]
    n, mask_f = mask.shape[0] // chunk, mask.astype(bk.real_dtype)

    def backward(carry, x):
        pnum_k, pden, loss = carry
        me, st, fr, m = x
        probes = shift_probes(bk, probe, fr)
        views = get_views(bk, obj, st, shape)  # (C, S, Ny, Nx)
        _, exit_wave = multislice_forward(bk, probes, views, props)
        chunk_loss, g = _exit_update(bk, noise, exit_wave, me, m)
        g, _ = bk.scan(lambda g, y: (back_through_slice(bk, g, views[:, y[0]], props, y[0]), {}), g,
                       (slice_indices(bk, obj.shape[0] - 1, 0, -1),))
        if update_probe:
            pnum_k, pden = _add_probe_sums(bk, pnum_k, pden, views[:, 0], g, fr, m[:, None, None])
        kept = {"chi0": g} if update_probe or keep_waves else {}
        if keep_waves:
            kept["probes"] = probes
        return (pnum_k, pden, loss + chunk_loss), kept

    init = (xp.zeros(probe.shape, dtype=probe.dtype), xp.zeros(shape, dtype=bk.real_dtype),
            xp.zeros((), dtype=bk.real_dtype))
    (pnum_k, pden, loss), kept = bk.sum_scan(
        backward, init, tuple(split_rows(a, n) for a in (measured, starts, frac, mask_f)))
    new_probe = probe
    if update_probe:
        new_probe = _lsqml_probe_only(bk, solver, obj, probe, pnum_k, pden, kept["chi0"], starts, frac, mask_f, n)
    if not keep_waves:
        return obj, new_probe, loss, None, None
    return obj, new_probe, loss, _unsplit(kept["chi0"]), _unsplit(kept["probes"])


def epie_single_slice_chunked(bk: Any, solver: Any, noise: Any, obj: Any, probe: Any, measured: Any, starts: Any,
                              frac: Any, mask: Any, chunk: int, update_object: bool, update_probe: bool,
                              keep_waves: bool) -> tuple[Any, Any, Any, Any, Any]:
    """The single-slice ePIE group step, ``chunk`` positions at a time: every term of its
    update is a sum over positions (object numerator and illumination maps, probe numerator
    and Σ|O|²) or a maximum over them (one position's largest illumination, for
    ``object_norm: position``), normalised after the sums, so one pass over the chunks
    (:func:`_single_slice_sums`) gives the whole group's update. Returns as
    :func:`lsqml_single_slice_chunked`; ``chi`` and ``probes`` only with ``keep_waves``
    (else None)."""
    xp = bk.xp
    n = mask.shape[0] // chunk
    per_position = update_object and solver.config.object_norm == "position"
    sums, kept = _single_slice_sums(
        bk, noise, obj, probe, measured, starts, frac, mask.astype(bk.real_dtype), n, update_object, update_probe,
        keep=("chi", "probes") if keep_waves else (), peak=per_position)
    num_map, illum_map, pnum_k, pden, loss = sums[:5]
    new_obj, new_probe = obj, probe
    if update_object:
        peak = sums[6] if per_position else None
        new_obj = obj + bk.divide_real(solver.beta_object * num_map, epie_step_norm(xp, illum_map, peak))
    if update_probe:
        new_probe = probe + solver.beta_probe * _ifft2_pair(bk, pnum_k) / (xp.max(pden) + 1e-30)
    if not keep_waves:
        return new_obj, new_probe, loss, None, None
    return new_obj, new_probe, loss, _unsplit(kept["chi"]), _unsplit(kept["probes"])


def epie_multislice_chunked(bk: Any, solver: Any, noise: Any, obj: Any, probe: Any, props: Any, measured: Any,
                            starts: Any, frac: Any, mask: Any, chunk: int, update_object: bool, update_probe: bool,
                            keep_waves: bool) -> tuple[Any, Any, Any, Any, Any]:
    """The multislice ePIE (3PIE) group step, ``chunk`` positions at a time; returns as
    :func:`epie_single_slice_chunked` (``chi`` at the entrance plane).

    The backward sweep passes to the slice before only what the updated slice cannot
    explain, so slice i's update (a sum over the whole group) must be known before χ goes
    back through it. One pass over the chunks runs the forward model and adds the last
    slice's sums; then one pass per slice (from the last; one loop over the slices, compiled
    once on jax) takes χ back through the updated slice and adds the sums of the slice
    before, and a last pass adds the probe's at the entrance plane. The backward passes work
    on one chunk's waves of two slices, the forward pass on one chunk's waves of all slices,
    which stay in the cache where the whole group's do not; the waves entering the slices
    are kept between the passes, as the whole-group sweep keeps them. As
    ``ConventionalSolver.sweep`` with ``EpieSolver``."""
    xp = bk.xp
    shape = probe.shape[-2:]
    n_slices = obj.shape[0]
    if n_slices < 2:
        raise ValueError("epie_multislice_chunked needs at least two slices (one: epie_single_slice_chunked)")
    n = mask.shape[0] // chunk
    mask_f = mask.astype(bk.real_dtype)
    sts, frs, ms = split_rows(starts, n), split_rows(frac, n), split_rows(mask_f, n)

    # the slice sums: (numerator map, illumination map) and, for ``object_norm: position``,
    # one position's largest illumination (a maximum over the chunks)
    per_position = update_object and solver.config.object_norm == "position"
    reduce = ("sum", "sum", "max") if per_position else ("sum", "sum")

    def slice_sums(sums, st, psi, g, mm):
        """Add one slice's numerator Σ_modes conj(ψ)·g and illumination Σ_modes|ψ|²."""
        illum = xp.sum(abs2(xp, psi), axis=1) * mm
        out = (add_views(bk, sums[0], st, xp.sum(xp.conj(psi) * g, axis=1) * mm), add_views(bk, sums[1], st, illum))
        return out + ((xp.maximum(sums[2], xp.max(illum)),) if per_position else ())

    def forward(carry, x):
        sums, loss, view_peak = carry[:-2], carry[-2], carry[-1]
        me, st, fr, m = x
        probes = shift_probes(bk, probe, fr)
        views = get_views(bk, obj, st, shape)  # (C, S, Ny, Nx)
        psis, exit_wave = multislice_forward(bk, probes, views, props)
        chunk_loss, chi = _exit_update(bk, noise, exit_wave, me, m)
        if update_object:
            sums = slice_sums(sums, st, psis[-1], chi, m[:, None, None])
        view_peak = xp.maximum(view_peak, xp.max(abs2(xp, views), axis=(0, 2, 3)))
        return (*sums, loss + chunk_loss, view_peak), {"chi": chi, **_kept_waves(psis)}

    def zero_sums():  # fresh ones for every pass: numpy adds views in place
        maps = (xp.zeros(obj.shape[1:], dtype=obj.dtype), xp.zeros(obj.shape[1:], dtype=bk.real_dtype))
        return maps + ((xp.zeros((), dtype=bk.real_dtype),) if per_position else ())

    def slice_update(sums):
        peak = sums[2] if per_position else None
        return bk.divide_real(solver.beta_object * sums[0], epie_step_norm(xp, sums[1], peak))

    def back_through(carry, x):
        """One pass over the chunks taking χ from the exit of slice ``i`` (updated by the
        sums in the carry) to the exit of slice i-1, adding the sums of slice i-1. A scan
        over the slices, so the program holds one pass whatever their number."""
        sums, chi = carry[:-1], carry[-1]
        (i,) = x
        delta = slice_update(sums) if update_object else None
        o_slice, h_back, scale = obj[i], xp.conj(props[i - 1]), 1.0 / (view_peak[i] + 1e-30)

        def back(sums, y):
            g, waves, st, m = y
            psi, psi_before = waves[i], waves[i - 1]  # indexed here: no copies of the slices' waves
            o = bk.get_windows(o_slice, st, shape)
            rest = g if delta is None else g - bk.get_windows(delta, st, shape)[:, None] * psi
            g = propagate(bk, (xp.conj(o) * scale)[:, None] * rest, h_back)
            if update_object:
                sums = slice_sums(sums, st, psi_before, g, m[:, None, None])
            return sums, {"chi": g}

        sums, out = bk.sum_scan(back, zero_sums(), (chi, _waves_kept(kept, n_slices), sts, ms), reduce=reduce)
        return (*sums, out["chi"]), ({"slice": o_slice + delta} if update_object else {})

    carry, kept = bk.sum_scan(
        forward, (*zero_sums(), xp.zeros((), dtype=bk.real_dtype), xp.zeros((n_slices,), dtype=bk.real_dtype)),
        (split_rows(measured, n), sts, frs, ms), reduce=reduce + ("sum", "max"))
    *sums, loss, view_peak = carry
    carry, updated = bk.scan(back_through, (*sums, kept["chi"]), (slice_indices(bk, n_slices - 1, 0, -1),))
    *sums, chi = carry
    new_obj, new_probe = obj, probe
    if update_object:  # the slices were updated from the last: slice 0's update ends the sweep
        new_obj = xp.concatenate([(obj[0] + slice_update(sums))[None], updated["slice"][::-1]])
    if update_probe:
        def probe_sums(sums, y):
            g, st, fr, m = y
            mm = m[:, None, None]
            # padded positions carry a nonzero rest (the applied update): masked here
            return _add_probe_sums(bk, *sums, bk.get_windows(obj[0], st, shape), g * mm[:, None], fr, mm), {}

        (pnum_k, pden), _ = bk.sum_scan(
            probe_sums, (xp.zeros(probe.shape, dtype=probe.dtype), xp.zeros(shape, dtype=bk.real_dtype)),
            (chi, sts, frs, ms))
        new_probe = probe + solver.beta_probe * _ifft2_pair(bk, pnum_k) / (xp.max(pden) + 1e-30)
    if not keep_waves:
        return new_obj, new_probe, loss, None, None
    return new_obj, new_probe, loss, _unsplit(chi), _unsplit(_first_waves(kept))
