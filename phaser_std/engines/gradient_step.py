"""The pure per-group step of the gradient engine: loss, gradients, optimizer update.

Two ways to the same gradients:

- **autodiff** (jax): ``jax.value_and_grad`` of :func:`group_loss` (the forward model, the
  noise-model loss and the cost regularizers).
- **analytic adjoint** (numpy, cupy; also usable on jax): the noise model's ``dL/dI``
  -> :func:`~phaser_std.engines.noise_models.wirtinger_far_grad` -> ``farfield_adjoint``
  -> back-propagation through the slices (:func:`_backward`, the adjoint of
  ``multislice_forward`` that also yields the tilt derivative) -> ``add_views`` /
  ``unshift_probes``, plus the cost regularizers' analytic ``grad``.

**Gradient convention.** For a real loss L of a complex variable z = x + iy the engines
hand the optimizers the steepest-*ascent* direction in (x, y)::

    g = ∂L/∂x + i·∂L/∂y = 2·∂L/∂z̄ = conj(jax.grad(L)(z))

(``jax.grad`` of a real function of a complex argument returns ``2·conj(∂L/∂z̄)``,
i.e. the conjugate of ``g``: ``tests/test_gradient_engine.py::test_wirtinger_factor`` pins
this numerically on |z|²). The analytic path computes the Wirtinger derivative ∂L/∂z̄ and
doubles it. Real variables (positions [px], tilt [mrad]) get the ordinary derivative.
Descent is ``z += update`` with ``update = −lr·g`` for sgd (optimizers add their updates).

**Per-group scaling** (as the published phaser): the probe gradient is divided by the number
of valid positions in the group, the object gradient by that number times the probe
intensity Σ|P|² [e⁻ per pattern], so SGD step sizes do not depend on dose or group size
(Adam is invariant to a constant scale anyway). Positions and tilt gradients are returned
unscaled and accumulated over the iteration; the engine scales them.

**Costs** enter as ``weight · fraction · penalty`` with ``fraction = B_valid / N``: summed
over an iteration's groups every penalty is added once, whatever the group size. With the
engine's ``cost_per: group`` the fraction is 1: every group adds the whole penalty.

**Jit.** :func:`make_group_step` returns one function doing forward, loss, gradient,
optimizer update and group constraints; on jax the engine wraps it in ``bk.jit`` with the
update flags static. The ragged last group comes padded (``mask``), so every group has the
same shapes and nothing recompiles.

Shapes: object ``(S, H, W)``, probe ``(M, Ny, Nx)``, ``starts``/``frac`` ``(B, 2)``
int/[px], ``tilt`` ``(2,)`` global or ``(B, 2)`` per position [mrad], patterns
``(N, Qy, Qx)`` corner-centred [e⁻], ``mask`` ``(B,)`` bool.
"""

from __future__ import annotations

from typing import Any, Sequence

import attrs
import numpy as np

from phaser_std.engines.common import group_patterns
from phaser_std.engines.noise_models import wirtinger_far_grad
from phaser_std.physics.forward import (
    SliceViews,
    _prop_for_slice,
    abs2,
    add_views,
    farfield,
    farfield_adjoint,
    get_views,
    intensity,
    multislice_forward,
    n_view_slices,
    shift_probes,
    split_rows,
    unshift_probes,
    view_slice,
)

__all__ = ["GroupModel", "tilt_ramps", "group_loss", "analytic_gradients", "autodiff_gradients",
           "cost_gradients", "group_gradients", "chunked_gradients", "make_group_step", "slice_dz"]

VARIABLES = ("object", "probe", "positions", "tilt")


@attrs.frozen(kw_only=True)
class GroupModel:
    """What a group's loss depends on besides the variables.

    :ivar noise: the noise model (``loss``, ``grad_intensity``).
    :ivar costs: cost regularizers (``cost``, ``grad``).
    :ivar base_props: untilted band-limited propagators ``(S-1, Ny, Nx)`` or None (one slice).
    :ivar sampling_A: (y, x) pixel size [Å] of probe and object.
    :ivar thicknesses_A: per-slice thickness [Å] (host tuple; the last is not propagated).
    :ivar dz: the propagation distances ``(S-1,)`` [Å] as a backend array, or None (taken
        from ``thicknesses_A``). A compiled step is given them, with ``base_props``, as an
        argument (:func:`make_group_step`'s ``physics``), so they are not constants of it.
    :ivar reg_info: a :class:`~phaser_std.engines.regularizers.RegInfo` for costs/constraints.
    :ivar n_positions: N, the number of scan positions (for the cost fraction).
    :ivar costs_per_group: every group adds the full penalty (fraction 1) instead of
        ``B_valid / N`` of it (the engine's ``cost_per: group``).
    """

    noise: Any
    costs: tuple = ()
    base_props: Any = None
    sampling_A: tuple[float, float]
    thicknesses_A: tuple[float, ...]
    reg_info: Any
    dz: Any = None
    n_positions: int
    costs_per_group: bool = False


# --------------------------------------------------------------------------- tilt
def _k_grids(bk: Any, shape: Sequence[int], sampling_A: Sequence[float]) -> tuple[Any, Any]:
    ky = bk.asarray(np.fft.fftfreq(int(shape[0]), d=float(sampling_A[0])).reshape(-1, 1), dtype=bk.real_dtype)
    kx = bk.asarray(np.fft.fftfreq(int(shape[1]), d=float(sampling_A[1])).reshape(1, -1), dtype=bk.real_dtype)
    return ky, kx


def tilt_ramps(bk: Any, shape: Sequence[int], sampling_A: Sequence[float], thicknesses_A: Sequence[float],
               tilt_mrad: Any, dz: Any = None) -> Any:
    """exp(−2πiΔz_i(k_y tan t_y + k_x tan t_x)) per propagation step, corner-centred.

    ``tilt_mrad`` ``(2,)`` -> ``(S-1, Ny, Nx)``; ``(B, 2)`` -> ``(B, S-1, Ny, Nx)``.
    Differentiable in the tilt (jax). The tilted propagator is ``base · ramp``
    (CONVENTIONS: a tilt t moves the wave laterally by Δz·tan t). ``dz`` ``(S-1,)`` [Å]: the
    propagation distances as a backend array (default: from ``thicknesses_A``).
    """
    xp = bk.xp
    ky, kx = _k_grids(bk, shape, sampling_A)
    t = xp.tan(tilt_mrad * 1e-3)
    lin = ky * t[..., 0, None, None] + kx * t[..., 1, None, None]  # (..., Ny, Nx)
    dzs = slice_dz(bk, thicknesses_A) if dz is None else dz
    phase = (-2 * np.pi) * dzs[:, None, None] * lin[..., None, :, :]  # (..., S-1, Ny, Nx)
    return xp.exp(1j * phase).astype(bk.complex_dtype)


def slice_dz(bk: Any, thicknesses_A: Sequence[float]) -> Any:
    """The propagation distances ``(S-1,)`` [Å] (all slices but the last) in the real dtype."""
    return bk.asarray(np.asarray(thicknesses_A, dtype=np.float64)[:-1], dtype=bk.real_dtype)


def _props(bk: Any, model: GroupModel, shape: Sequence[int], tilt: Any) -> Any:
    if model.base_props is None:
        return None
    return model.base_props * tilt_ramps(bk, shape, model.sampling_A, model.thicknesses_A, tilt, model.dz)


# --------------------------------------------------------------------------- loss
def _fraction(bk: Any, mask_f: Any, model: GroupModel) -> Any:
    """The share of each cost's penalty this group adds: ``B_valid / N``, or 1 per group."""
    if model.costs_per_group:
        return 1.0
    return bk.xp.sum(mask_f) / float(model.n_positions)


def _forward(bk: Any, model: GroupModel, obj: Any, probe: Any, frac: Any, tilt: Any, starts: Any,
             views: Any = None) -> tuple:
    """The forward model of a group; ``views`` ``(B, S, Ny, Nx)`` or a tuple of S ``(B, Ny,
    Nx)`` (:func:`~phaser_std.physics.forward.get_views`) when already gathered."""
    shape = probe.shape[-2:]
    probes = shift_probes(bk, probe, frac)
    if views is None:
        views = get_views(bk, obj, starts, shape)
    props = _props(bk, model, shape, tilt)
    psis, exit_waves = multislice_forward(bk, probes, views, props)
    wave_k = farfield(bk, exit_waves)
    return probes, views, props, psis, wave_k, intensity(bk, wave_k)


def _cost_total(bk: Any, model: GroupModel, probe: Any, obj: Any, fraction: Any, cost_w: Any) -> Any:
    total = 0.0
    info = model.reg_info.replace(fraction=fraction)
    for k, reg in enumerate(model.costs):
        total = total + reg.cost(bk, probe, obj, info, weight=cost_w[k])
    return total


def group_loss(bk: Any, model: GroupModel, obj: Any, probe: Any, frac: Any, tilt: Any, starts: Any,
               measured: Any, mask: Any, cost_w: Any, views: Any = None) -> tuple[Any, Any]:
    """``(total, data)``: the noise-model loss summed over the group's valid patterns plus
    the cost regularizers (``total``), and the data term alone."""
    mask_f = mask.astype(bk.real_dtype)
    *_, model_I = _forward(bk, model, obj, probe, frac, tilt, starts, views)
    data = bk.xp.sum(model.noise.loss(bk, model_I, measured) * mask_f)
    return data + _cost_total(bk, model, probe, obj, _fraction(bk, mask_f, model), cost_w), data


# --------------------------------------------------------------------------- analytic adjoint
def _backward(bk: Any, views: Any, props: Any, psis: list, grad_exit: Any, want_tilt: bool) -> tuple:
    """Adjoint of ``multislice_forward`` (as :func:`~phaser_std.physics.forward.multislice_backward`),
    also returning per-position, per-step ``Re Σ_modes,k F(ψ_i)·conj(F(g_i))`` weighted by
    the ramp derivative factors (see :func:`analytic_gradients`): a list over steps of
    ``(B, M, Ny, Nx)`` products ``F(ψ_i)·conj(F(∂L/∂ψ̄_i))`` when ``want_tilt``."""
    xp = bk.xp
    n_slices = n_view_slices(views)
    g = grad_exit
    grads = [None] * n_slices
    tilt_terms = [None] * max(n_slices - 1, 0)
    for i in range(n_slices - 1, -1, -1):
        o = view_slice(views, i)[:, None]
        grads[i] = xp.sum(xp.conj(psis[i]) * g, axis=1)
        g = xp.conj(o) * g  # ∂L/∂ψ̄_i
        if i > 0:
            fg = bk.fft2(g)
            if want_tilt:
                tilt_terms[i - 1] = bk.fft2(psis[i]) * xp.conj(fg)
            g = bk.ifft2(fg * xp.conj(_prop_for_slice(props, i - 1)))
    return (tuple(grads) if isinstance(views, tuple) else xp.stack(grads, axis=1)), g, tilt_terms


def analytic_gradients(bk: Any, model: GroupModel, obj: Any, probe: Any, frac: Any, tilt: Any, starts: Any,
                       measured: Any, mask: Any, cost_w: Any, wrt: Sequence[str] = VARIABLES,
                       views: Any = None) -> tuple:
    """``(total, data, grads)`` by the analytic adjoint (any backend, no autodiff).

    ``grads`` has the keys of ``wrt``: ``object`` ``(S, H, W)`` and ``probe`` ``(M, Ny, Nx)``
    as ``2·∂L/∂z̄``; ``positions`` ``(B, 2)`` dL/d(frac) [1/px]; ``tilt`` ``(2,)`` or
    ``(B, 2)`` dL/dt [1/mrad]. Unscaled (see the module docstring). Given the gathered
    ``views``, the data term's object gradient comes back per view as ``views``
    ``(B, S, Ny, Nx)``, for the caller to add into the object where it wants; the cost
    regularizers' object gradient, if any, then comes back whole as ``object``.
    """
    xp = bk.xp
    mask_f = mask.astype(bk.real_dtype)
    shape = probe.shape[-2:]
    per_view = views is not None
    probes, views, props, psis, wave_k, model_I = _forward(bk, model, obj, probe, frac, tilt, starts, views)
    data = xp.sum(model.noise.loss(bk, model_I, measured) * mask_f)
    fraction = _fraction(bk, mask_f, model)
    if model.costs and ("object" in wrt or "probe" in wrt):
        cost, cost_grads = cost_gradients(bk, model, obj, probe, fraction, cost_w, "analytic", wrt)
    else:
        cost, cost_grads = _cost_total(bk, model, probe, obj, fraction, cost_w), {}
    total = data + cost

    d_i = model.noise.grad_intensity(bk, model_I, measured) * mask_f[:, None, None]
    grad_exit = farfield_adjoint(bk, wirtinger_far_grad(bk, wave_k, d_i))
    want_tilt = "tilt" in wrt and props is not None
    grad_views, grad_probes, tilt_terms = _backward(bk, views, props, psis, grad_exit, want_tilt)

    out: dict[str, Any] = {}
    if "object" in wrt and per_view:
        out["views"] = _map_views(lambda v: 2 * v, grad_views)
    elif "object" in wrt:
        out["object"] = 2 * add_views(bk, xp.zeros_like(obj), starts, grad_views)
    if "probe" in wrt:
        out["probe"] = 2 * unshift_probes(bk, grad_probes, frac)
    if "positions" in wrt:
        # d(shifted probe)/d frac = F⁻¹[F(P)·ramp·(−2πi k)], k [1/px]; dL/dd = 2 Re Σ conj(g)·that
        fp = bk.fft2(probes)
        cols = []
        for k in _k_grids(bk, shape, (1.0, 1.0)):
            dp = bk.ifft2(fp * ((-2j * np.pi) * k))
            cols.append(2 * xp.sum(xp.real(xp.conj(grad_probes) * dp), axis=(1, 2, 3)))
        out["positions"] = xp.stack(cols, axis=1)
    if "tilt" in wrt:
        out["tilt"] = _tilt_grad(bk, model, shape, tilt, tilt_terms) if want_tilt else xp.zeros_like(tilt)

    for k, v in cost_grads.items():
        out[k] = out[k] + v if k in out else v
    return total, data, out


def cost_gradients(bk: Any, model: GroupModel, obj: Any, probe: Any, fraction: Any, cost_w: Any, method: str,
                   wrt: Sequence[str] = VARIABLES) -> tuple[Any, dict]:
    """``(cost, grads)``: the cost regularizers' total and its gradients ``2·∂C/∂z̄`` for
    ``object`` and ``probe`` (those in ``wrt``), by autodiff or their analytic ``grad``."""
    cost = _cost_total(bk, model, probe, obj, fraction, cost_w)
    keys = [k for k in ("object", "probe") if k in wrt]
    if not model.costs or not keys:
        return cost, {}
    if method == "autodiff":
        variables = {"object": obj, "probe": probe}

        def fn(d):
            v = dict(variables, **d)
            return _cost_total(bk, model, v["probe"], v["object"], fraction, cost_w)

        g = _value_and_grad(bk, fn)({k: variables[k] for k in keys})[1]
        return cost, {k: bk.xp.conj(v) for k, v in g.items()}
    out = {k: bk.xp.zeros_like(obj if k == "object" else probe) for k in keys}
    info = model.reg_info.replace(fraction=fraction)
    for k, reg in enumerate(model.costs):
        gp, go = reg.grad(bk, probe, obj, info, weight=cost_w[k])
        if go is not None and "object" in out:
            out["object"] = out["object"] + 2 * go
        if gp is not None and "probe" in out:
            out["probe"] = out["probe"] + 2 * gp
    return cost, out


def _tilt_grad(bk: Any, model: GroupModel, shape: Sequence[int], tilt: Any, terms: list) -> Any:
    """dL/dt [1/mrad] from the per-step products F(ψ_i)·conj(F(g_i)) (B, M, Ny, Nx):
    ∂H/∂t_y = H·(−2πiΔz k_y)·sec²(t_y)·1e-3, dL/dt = 2 Re Σ conj(∂L/∂H̄)·∂H/∂t and
    conj(∂L/∂H̄)·H = F(ψ_{i+1})·conj(F(g_{i+1}))."""
    xp = bk.xp
    ky, kx = _k_grids(bk, shape, model.sampling_A)
    dz = slice_dz(bk, model.thicknesses_A) if model.dz is None else model.dz
    gy = 0.0
    gx = 0.0
    for i, term in enumerate(terms):
        s = xp.sum(term, axis=1)  # (B, Ny, Nx), over modes
        c = -2j * np.pi * dz[i]
        gy = gy + 2 * xp.sum(xp.real(s * (c * ky)), axis=(-2, -1))
        gx = gx + 2 * xp.sum(xp.real(s * (c * kx)), axis=(-2, -1))
    g = xp.stack([gy, gx], axis=-1)  # (B, 2)
    sec2 = (1 + xp.tan(tilt * 1e-3) ** 2) * 1e-3
    if tilt.ndim == 1:
        return xp.sum(g, axis=0) * sec2
    return g * sec2


# --------------------------------------------------------------------------- autodiff
def _value_and_grad(bk: Any, fn: Any, **kwargs: Any) -> Any:
    vg = getattr(bk, "value_and_grad", None)
    if vg is None:
        raise TypeError(f"the {bk.name} backend has no automatic differentiation; use the analytic path")
    return vg(fn, **kwargs)


def autodiff_gradients(bk: Any, model: GroupModel, obj: Any, probe: Any, frac: Any, tilt: Any, starts: Any,
                       measured: Any, mask: Any, cost_w: Any, wrt: Sequence[str] = VARIABLES,
                       views: Any = None) -> tuple:
    """As :func:`analytic_gradients`, by ``jax.value_and_grad`` (jax backend only); given
    ``views`` the data term's object gradient comes back per view as ``views`` and, when the
    model has cost regularizers, their object gradient whole as ``object`` (as the analytic
    path returns them)."""
    xp = bk.xp
    lazy = isinstance(views, SliceViews)
    if lazy:
        # the views' gradients are those of zero offsets added to them (SliceViews.transmit)
        views = tuple(xp.zeros(views.shape[:1] + views.shape[2:], dtype=views.dtype)
                      for _ in range(views.shape[1]))
    variables = {"object": obj, "probe": probe, "positions": frac, "tilt": tilt, "views": views}
    keys = [("views" if k == "object" and views is not None else k) for k in wrt]
    if views is not None and "object" in wrt and model.costs:
        keys.append("object")  # the object enters the loss through the costs alone
    diff = {k: variables[k] for k in keys}
    fixed_obj = bk.stop_gradient(obj) if lazy else None

    def fn(d):
        v = dict(variables, **d)
        if lazy:
            v["views"] = SliceViews(bk, fixed_obj, starts, probe.shape[-2:], offsets=v["views"])
        return group_loss(bk, model, v["object"], v["probe"], v["positions"], v["tilt"], starts, measured,
                          mask, cost_w, v["views"])

    (total, data), g = _value_and_grad(bk, fn, has_aux=True)(diff)
    out = {k: (_map_views(xp.conj, v) if k in ("object", "probe", "views") else v) for k, v in g.items()}
    return total, data, out


def _map_views(fn: Any, views: Any) -> Any:
    """``fn`` applied to ``views``, one array or a tuple per slice (:func:`get_views`)."""
    return tuple(fn(v) for v in views) if isinstance(views, tuple) else fn(views)


def _method(bk: Any, method: str) -> str:
    if method == "auto":
        return "autodiff" if getattr(bk, "name", "") == "jax" else "analytic"
    if method not in ("autodiff", "analytic"):
        raise ValueError(f"gradient method must be 'auto', 'autodiff' or 'analytic', got {method!r}")
    return method


def group_gradients(bk: Any, model: GroupModel, *args: Any, method: str = "auto", **kwargs: Any) -> tuple:
    """Dispatch: ``method`` "autodiff", "analytic" or "auto" (autodiff on jax)."""
    if _method(bk, method) == "autodiff":
        return autodiff_gradients(bk, model, *args, **kwargs)
    return analytic_gradients(bk, model, *args, **kwargs)


def chunked_gradients(bk: Any, model: GroupModel, chunk: int, obj: Any, probe: Any, frac: Any, tilt: Any,
                      starts: Any, measured: Any, mask: Any, cost_w: Any, method: str = "auto",
                      wrt: Sequence[str] = VARIABLES, count: bool = False) -> tuple:
    """As :func:`group_gradients`, with the group's positions taken ``chunk`` at a time
    (``bk.scan``; ``chunk`` divides the group size) and the object, probe and global-tilt
    gradients summed over the chunks. The cost regularizers enter once, on the whole group.
    Same result, less memory traffic (:mod:`phaser_std.engines.chunking`). With ``count``
    the gradients come with ``"n_valid"``, the number of valid positions, summed with them:
    on CPU lanes each lane holds only its share of the mask, and counted apart it cost the
    lanes one more meeting a group."""
    method = _method(bk, method)
    per_position_tilt = tilt.ndim == 2
    xs = _chunk_inputs(mask.shape[0] // chunk, frac, starts, measured, mask, tilt)
    data_model = attrs.evolve(model, costs=())
    summed = [k for k in wrt if k in ("object", "probe") or (k == "tilt" and not per_position_tilt)]
    stacked = [k for k in wrt if k not in summed]
    like = {"object": obj, "probe": probe, "tilt": tilt}
    shape = probe.shape[-2:]
    remat = method == "autodiff" and obj.shape[0] > 1 and chunk == mask.shape[0]

    def body(carry, x):
        fr, st, me, ma, ti = x
        # the object's gradient per view, added into the carry window by window: no
        # object-sized temporary per chunk; for autodiff the views are gathered per slice
        # (get_views), so its residuals and cotangents are S arrays, not one 4-d pair, and
        # a whole multislice group gathers each slice where it is read, again on the way
        # back (SliceViews.transmit), and adds the slices' gradients one at a time: only
        # the entering waves are kept (NOTES.md 60)
        views = (SliceViews(bk, obj, st, shape) if remat else
                 get_views(bk, obj, st, shape, per_slice=method == "autodiff"))
        _, data, g = group_gradients(bk, data_model, obj, probe, fr, tilt if ti is None else ti, st, me, ma,
                                     cost_w, method=method, wrt=wrt, views=views)
        new = {k: carry[k] + g[k].astype(carry[k].dtype) for k in summed if k != "object"}
        if "object" in summed:
            dtype = carry["object"].dtype
            new["object"] = add_views(bk, carry["object"], st, _map_views(lambda v: v.astype(dtype), g["views"]),
                                      by_slice=remat)
        new["data"] = carry["data"] + data
        if count:
            new["n_valid"] = carry["n_valid"] + bk.xp.sum(ma.astype(bk.real_dtype))
        return new, {k: g[k] for k in stacked}

    # the cost regularizers first: their gradients start the sums the chunks add to, so their
    # object-sized intermediates are gone before the chunks run and never meet the solver's
    # (XLA's buffer assignment, paper size, chunks of 16: 803 -> 285 MiB of temporaries)
    fraction = _fraction(bk, mask.astype(bk.real_dtype), model)
    cost, cost_grads = cost_gradients(bk, model, obj, probe, fraction, cost_w, method, wrt)
    init = {k: (cost_grads[k].astype(like[k].dtype) if k in cost_grads else bk.xp.zeros_like(like[k]))
            for k in summed}
    init["data"] = bk.xp.zeros((), dtype=bk.real_dtype)
    if count:
        init["n_valid"] = bk.xp.zeros((), dtype=bk.real_dtype)
    carry, ys = bk.sum_scan(body, init, xs)
    data = carry.pop("data")
    out = dict(carry)
    out.update({k: v.reshape((-1,) + tuple(v.shape[2:])) for k, v in ys.items()})
    return data + cost, data, out


def chunked_data_loss(bk: Any, model: GroupModel, chunk: int | None, obj: Any, probe: Any, frac: Any, tilt: Any,
                      starts: Any, measured: Any, mask: Any) -> Any:
    """The data term of :func:`group_loss` (noise-model loss summed over the valid
    patterns), ``chunk`` positions at a time as :func:`chunked_gradients` computes the
    gradients (None or the whole group: at once): an iteration that updates nothing still
    runs in chunks, on every CPU lane its own."""
    data_model = attrs.evolve(model, costs=())
    if chunk is None or chunk >= mask.shape[0]:
        return group_loss(bk, data_model, obj, probe, frac, tilt, starts, measured, mask, None)[1]

    def body(carry, x):
        fr, st, me, ma, ti = x
        _, data = group_loss(bk, data_model, obj, probe, fr, tilt if ti is None else ti, st, me, ma, None)
        return (carry[0] + data,), {}

    xs = _chunk_inputs(mask.shape[0] // chunk, frac, starts, measured, mask, tilt)
    (data,), _ = bk.sum_scan(body, (bk.xp.zeros((), dtype=bk.real_dtype),), xs)
    return data


def _chunk_inputs(n: int, frac: Any, starts: Any, measured: Any, mask: Any, tilt: Any) -> tuple:
    """A group's per-position inputs split into ``n`` chunks for :meth:`sum_scan`: ``(frac,
    starts, measured, mask, tilt)``, the tilt None when it is global (``(2,)``: every chunk
    uses it whole)."""
    return tuple(split_rows(a, n) for a in (frac, starts, measured, mask)) + (
        split_rows(tilt, n) if tilt.ndim == 2 else None,)


# --------------------------------------------------------------------------- the step
class StepCounter:
    """Counts how often the step's Python body runs: once per jax trace (compile), once per
    call on numpy/cupy. Tests use it to prove a ragged group does not recompile."""

    def __init__(self) -> None:
        self.n = 0


def make_group_step(bk: Any, model: GroupModel, solvers: dict, constraints: Sequence[Any] = (),
                    method: str = "auto", counter: StepCounter | None = None, chunk: int | None = None):
    """The pure group step.

    ``step(params, opt_states, acc, patterns, idx, starts, frac, tilt, mask, hyper, cost_w,
    *, rows, physics, update_object, update_probe, grad_positions, grad_tilt) -> (params,
    opt_states, acc, data_loss)``

    - ``params`` ``{"object", "probe"}``; ``opt_states`` their solver states.
    - ``acc`` ``{"positions": (N, 2), "tilt": (2,) | (N, 2)}``: per-iteration gradient sums
      (positions in 1/px, tilt in 1/mrad, unscaled); the group's contributions are added at
      ``idx`` (padding rows contribute zero).
    - ``hyper`` ``{"object": {...}, "probe": {...}}`` scheduled solver hyperparameters,
      ``cost_w`` ``(n_costs,)`` scheduled cost weights: traced values, never recompiled.
    - ``tilt`` the group's tilt: ``(2,)`` global or ``(B, 2)``.
    - ``rows`` the group's rows in ``patterns`` (a streamed block,
      :mod:`~phaser_std.engines.pattern_feed`); None: ``idx``, the patterns are all there.
    - ``physics`` ``{"base_props", "dz"}`` (:class:`GroupModel`'s fields) or None (the
      model's own): given as arguments of a compiled step, another slice thickness of the
      same shapes reuses the compiled program.

    ``chunk`` (a divisor of the group size, or None: the whole group) sets how many
    positions the gradients are computed for at once (:func:`chunked_gradients`).
    """
    xp = bk.xp

    base_model = model

    def step(params, opt_states, acc, patterns, idx, starts, frac, tilt, mask, hyper, cost_w, *, rows=None,
             physics=None, update_object=True, update_probe=True, grad_positions=False, grad_tilt=False):
        model = base_model if physics is None else attrs.evolve(base_model, **physics)
        if counter is not None:
            counter.n += 1
        obj, probe = params["object"], params["probe"]
        measured = group_patterns(bk, patterns, idx if rows is None else rows)
        wrt = tuple(k for k, on in (("object", update_object), ("probe", update_probe),
                                    ("positions", grad_positions), ("tilt", grad_tilt)) if on)
        if not wrt:
            return params, opt_states, acc, chunked_data_loss(bk, model, chunk, obj, probe, frac, tilt, starts,
                                                               measured, mask)
        # a whole group is one chunk: the costs apart and the views per slice, as in chunks
        whole = chunk is None or chunk >= mask.shape[0]
        total, data, g = chunked_gradients(bk, model, mask.shape[0] if whole else chunk, obj, probe, frac, tilt,
                                           starts, measured, mask, cost_w, method=method, wrt=wrt, count=True)
        n_valid = xp.maximum(g.pop("n_valid"), 1.0)
        probe_int = xp.sum(abs2(xp, probe))
        new_params = dict(params)
        new_states = dict(opt_states)
        # each gradient is normalised (per position, and per unit probe intensity for the
        # object); the loss handed to a solver that uses it (polyak_sgd's step (L − f_min)/‖g‖²)
        # is normalised alike, so that it belongs to the same function as the gradient
        if update_object:
            norm = n_valid * probe_int
            go = bk.divide_real(g["object"], norm).astype(obj.dtype)
            u, new_states["object"] = solvers["object"].update(bk, go, opt_states["object"], obj,
                                                               hyper=hyper["object"], value=total / norm)
            new_params["object"] = obj + u
        if update_probe:
            gp = (g["probe"] / n_valid).astype(probe.dtype)
            u, new_states["probe"] = solvers["probe"].update(bk, gp, opt_states["probe"], probe,
                                                             hyper=hyper["probe"], value=total / n_valid)
            new_params["probe"] = probe + u
        if constraints:
            p, o = new_params["probe"], new_params["object"]
            for c in constraints:
                p, o = c.apply(bk, p, o, model.reg_info)
            new_params["probe"], new_params["object"] = p, o
        new_acc = dict(acc)
        mask_f = mask.astype(bk.real_dtype)
        if grad_positions:
            gpos = g["positions"] * mask_f[:, None]
            new_acc["positions"] = bk.add_at(acc["positions"], (idx,), gpos.astype(acc["positions"].dtype))
        if grad_tilt:
            gt = g["tilt"]
            if acc["tilt"].ndim == 1:
                new_acc["tilt"] = acc["tilt"] + gt.astype(acc["tilt"].dtype)
            else:
                new_acc["tilt"] = bk.add_at(acc["tilt"], (idx,), (gt * mask_f[:, None]).astype(acc["tilt"].dtype))
        return new_params, new_states, new_acc, data

    return step
