"""Cost regularizers: penalties added to the gradient engine's loss.

Interface::

    reg = spec.build(registry)                       # cls(config)
    w = reg.weight(iteration)                        # the scheduled `cost`, host float
    c = reg.cost(bk, probe, obj, info, weight=w)      # scalar (jax-differentiable)
    dprobe, dobj = reg.grad(bk, probe, obj, info, weight=w)   # ∂c/∂z̄ (None: not touched)

``probe`` ``(M, Ny, Nx)``, ``obj`` ``(S, H, W)`` complex; ``info`` a
:class:`~phaser_std.engines.regularizers.RegInfo`. ``grad`` returns the Wirtinger
derivatives ``∂c/∂z̄`` (for the numpy/cupy adjoint path); they equal ``conj(jax.grad(c))/2``
and the steepest-ascent direction handed to the optimizers is ``2·∂c/∂z̄``.

**Normalisation.** ``cost = weight · info.fraction · penalty``, where the engine sets
``info.fraction = group_size / n_positions``: summed over one iteration's groups each
penalty is added exactly once, whatever the group size. (The published phaser 0.3.1 means
to scale its object costs so, but computes the fraction from the scan already cut to the
group, so it is 1: there every cost adds its whole penalty at every group. The gradient
engine's ``cost_per: group`` sets ``info.fraction = 1`` to reproduce that.)

Non-smooth penalties (L1, TV) are smoothed with ``eps`` (``√(|x|² + eps) − √eps``) so they
and their gradients stay finite at 0 (e.g. the vacuum initial object, where O − 1 = 0).
Finite differences are forward differences without wrap-around (replicated edge).
"""

from __future__ import annotations

from typing import Any, Callable

import attrs
import numpy as np

from phaser_core.config import ScheduleSpec, Schedulable, param
from phaser_std.physics.forward import abs2

__all__ = ["CostRegularizer", "COSTS"]


@attrs.frozen
class CostConfig:
    cost: Schedulable = param(1.0, doc="weight of the penalty (a number or a schedule)")


@attrs.frozen
class SmoothCostConfig:
    cost: Schedulable = param(1.0, doc="weight of the penalty (a number or a schedule)")
    eps: float = param(1e-8, doc="smoothing of |x| as √(|x|² + eps) − √eps")


# -- finite differences -------------------------------------------------------------------


def _sl(x: Any, axis: int, start: int | None, stop: int | None) -> Any:
    """``x[..., start:stop, ...]`` along ``axis`` (plain slicing: cheap on every backend)."""
    idx = [slice(None)] * x.ndim
    idx[axis] = slice(start, stop)
    return x[tuple(idx)]


def _diff(xp: Any, x: Any, axis: int) -> Any:
    """Forward difference along ``axis`` (length n − 1)."""
    return _sl(x, axis, 1, None) - _sl(x, axis, None, -1)


def _diff_adj(xp: Any, g: Any, axis: int) -> Any:
    """Adjoint of :func:`_diff`: ``x[i] += g[i−1] − g[i]`` (length n from n − 1)."""
    shape = list(g.shape)
    shape[axis] = 1
    z = xp.zeros(shape, dtype=g.dtype)
    return xp.concatenate([z, g], axis=axis) - xp.concatenate([g, z], axis=axis)


def _pad_end(xp: Any, d: Any, axis: int) -> Any:
    shape = list(d.shape)
    shape[axis] = 1
    return xp.concatenate([d, xp.zeros(shape, dtype=d.dtype)], axis=axis)


def _crop_end(xp: Any, d: Any, axis: int) -> Any:
    return _sl(d, axis, None, -1)


def _tikh(xp: Any, x: Any, axes: tuple[int, ...]) -> tuple[Any, Any]:
    """``Σ_axes Σ |Δx|²`` and its ``∂/∂x̄``."""
    pen = 0.0
    grad = xp.zeros_like(x)
    for ax in axes:
        d = _diff(xp, x, ax)
        pen = pen + xp.sum(abs2(xp, d))
        grad = grad + _diff_adj(xp, d, ax)
    return pen, grad


def _tv(xp: Any, x: Any, axes: tuple[int, ...], eps: float) -> tuple[Any, Any]:
    """Isotropic TV ``Σ (√(Σ_axes |Δx|² + eps) − √eps)`` (differences padded with 0 at the
    far edge) and its ``∂/∂x̄``."""
    ds = [_pad_end(xp, _diff(xp, x, ax), ax) for ax in axes]
    t = xp.sqrt(sum(abs2(xp, d) for d in ds) + eps)
    pen = xp.sum(t - eps ** 0.5)
    grad = xp.zeros_like(x)
    for ax, d in zip(axes, ds):
        grad = grad + _diff_adj(xp, _crop_end(xp, d / (2 * t), ax), ax)
    return pen, grad


def _smooth_abs(xp: Any, z: Any, eps: float) -> tuple[Any, Any]:
    """``Σ (√(|z|² + eps) − √eps)`` and its ``∂/∂z̄``."""
    s = xp.sqrt(abs2(xp, z) + eps)
    return xp.sum(s - eps ** 0.5), z / (2 * s)


# -- base class ---------------------------------------------------------------------------


class CostRegularizer:
    """Base class: ``target`` is ``"object"`` or ``"probe"``; subclasses define
    ``_penalty_grad(bk, x, info) -> (penalty, ∂penalty/∂x̄)`` on that array."""

    name = "cost"
    target = "object"

    def __init__(self, config: Any):
        self.config = config
        self._fn: Callable[[int], float] | None = None

    def weight(self, iteration: int) -> float:
        """The ``cost`` weight at engine ``iteration`` (a schedule is evaluated)."""
        if self._fn is None:
            value = self.config.cost
            if isinstance(value, ScheduleSpec):
                from phaser_core.registry import get_registry

                self._fn = value.build(get_registry())
            else:
                self._fn = (lambda v: (lambda it: v))(float(value))
        return float(self._fn(int(iteration)))

    def _scale(self, info: Any, weight: Any) -> Any:
        if weight is None:
            weight = self.weight(getattr(info, "iteration", 0))
        return weight * getattr(info, "fraction", 1.0)

    def penalty(self, bk: Any, probe: Any, obj: Any, info: Any) -> Any:
        """The unweighted penalty (scalar)."""
        x = obj if self.target == "object" else probe
        return self._penalty_grad(bk, x, info)[0]

    def cost(self, bk: Any, probe: Any, obj: Any, info: Any, weight: Any = None) -> Any:
        """``weight · info.fraction · penalty`` (``weight`` None: the schedule at ``info.iteration``)."""
        return self._scale(info, weight) * self.penalty(bk, probe, obj, info)

    def grad(self, bk: Any, probe: Any, obj: Any, info: Any, weight: Any = None) -> tuple[Any, Any]:
        """``(∂cost/∂P̄, ∂cost/∂Ō)``; the variable not penalised gets ``None``."""
        x = obj if self.target == "object" else probe
        g = self._scale(info, weight) * self._penalty_grad(bk, x, info)[1]
        g = g.astype(x.dtype)
        return (None, g) if self.target == "object" else (g, None)

    def _penalty_grad(self, bk: Any, x: Any, info: Any) -> tuple[Any, Any]:  # pragma: no cover
        raise NotImplementedError


# -- object costs -------------------------------------------------------------------------


class ObjL1(CostRegularizer):
    """``Σ |O − 1|`` (smoothed): sparsity of the departure from vacuum."""

    name = "obj_l1"

    def _penalty_grad(self, bk, x, info):
        return _smooth_abs(bk.xp, x - 1, self.config.eps)


class ObjL2(CostRegularizer):
    """``Σ |O − 1|²`` (ridge about vacuum)."""

    name = "obj_l2"

    def _penalty_grad(self, bk, x, info):
        d = x - 1
        return bk.xp.sum(abs2(bk.xp, d)), d


class ObjPhaseL1(CostRegularizer):
    """``Σ |arg O|`` (smoothed); ``∂arg z/∂z̄ = i z / (2|z|²)``."""

    name = "obj_phase_l1"

    def _penalty_grad(self, bk, x, info):
        xp = bk.xp
        eps = self.config.eps
        # angle() has a NaN gradient at exactly 0 under autodiff: evaluate it away from 0
        phi = xp.angle(xp.where(abs2(xp, x) > 0, x, 1.0))
        s = xp.sqrt(phi * phi + eps)
        dphi = 1j * x / (2 * (abs2(xp, x) + 1e-30))
        return xp.sum(s - eps ** 0.5), (phi / s) * dphi


class ObjRecipL1(CostRegularizer):
    """``Σ_{k≠0} |FFT(Π_z O_z)|`` (smoothed), L1 of the projected object's spectrum (biases
    towards periodic objects). The zero frequency is excluded: its magnitude is the mean
    transmission, which an L1 would merely push down."""

    name = "obj_recip_l1"

    def _penalty_grad(self, bk, x, info):
        xp = bk.xp
        n = x.shape[0]
        # prefix/suffix products: Π_{j≠z} O_j without division
        pre = [xp.ones_like(x[0])]
        for z in range(n - 1):
            pre.append(pre[-1] * x[z])
        suf = [xp.ones_like(x[0])]
        for z in range(n - 1, 0, -1):
            suf.append(suf[-1] * x[z])
        suf = suf[::-1]
        proj = pre[-1] * x[n - 1]
        f = bk.fft2(proj)
        nodc_np = np.ones(tuple(f.shape))
        nodc_np[0, 0] = 0.0
        nodc = bk.asarray(nodc_np)
        eps = self.config.eps
        sf = xp.sqrt(abs2(xp, f) + eps)
        pen = xp.sum(nodc * (sf - eps ** 0.5))
        gf = f / (2 * sf)
        gproj = bk.ifft2(gf * nodc)
        grad = xp.stack([gproj * xp.conj(pre[z] * suf[z]) for z in range(n)])
        return pen, grad


class ObjTikhonov(CostRegularizer):
    """``Σ |∂_y O|² + |∂_x O|²`` per slice (forward differences)."""

    name = "obj_tikhonov"

    def _penalty_grad(self, bk, x, info):
        return _tikh(bk.xp, x, (-2, -1))


class ObjTV(CostRegularizer):
    """Isotropic total variation ``Σ √(|∂_y O|² + |∂_x O|² + eps) − √eps`` per slice."""

    name = "obj_tv"

    def _penalty_grad(self, bk, x, info):
        return _tv(bk.xp, x, (-2, -1), self.config.eps)


class LayersTikhonov(CostRegularizer):
    """``Σ |O_{z+1} − O_z|²`` (0 for one slice)."""

    name = "layers_tikhonov"

    def _penalty_grad(self, bk, x, info):
        if x.shape[0] == 1:
            return bk.xp.sum(0 * abs2(bk.xp, x)), bk.xp.zeros_like(x)
        return _tikh(bk.xp, x, (0,))


class LayersTV(CostRegularizer):
    """``Σ √(|O_{z+1} − O_z|² + eps) − √eps`` (0 for one slice)."""

    name = "layers_tv"

    def _penalty_grad(self, bk, x, info):
        if x.shape[0] == 1:
            return bk.xp.sum(0 * abs2(bk.xp, x)), bk.xp.zeros_like(x)
        pen, g = _smooth_abs(bk.xp, _diff(bk.xp, x, 0), self.config.eps)
        return pen, _diff_adj(bk.xp, g, 0)


# -- probe costs --------------------------------------------------------------------------


class ProbePhaseTikhonov(CostRegularizer):
    """Phase smoothness of the reciprocal-space probe ``F = fft2c(P)`` without unwrapping:
    ``Σ_neighbours 2(|a||b| − Re(a·b̄)) = Σ 2|a||b|(1 − cos Δφ) ≈ Σ |a||b| Δφ²``, with
    ``|a| = √(|a|² + eps)``. The amplitude weighting ignores the phase outside the aperture,
    where it is meaningless (the published phaser differences raw ``arg FFT(P)``)."""

    name = "probe_phase_tikhonov"
    target = "probe"

    def _penalty_grad(self, bk, x, info):
        xp = bk.xp
        eps = self.config.eps
        f = bk.fft2c(x)
        s = xp.sqrt(abs2(xp, f) + eps)
        pen = 0.0
        gf = xp.zeros_like(f)
        for ax in (-2, -1):
            a, b = _sl(f, ax, 1, None), _sl(f, ax, None, -1)
            sa, sb = _sl(s, ax, 1, None), _sl(s, ax, None, -1)
            pen = pen + 2 * xp.sum(sa * sb - xp.real(a * xp.conj(b)))
            ga = sb * a / sa - b  # ∂/∂ā
            gb = sa * b / sb - a  # ∂/∂b̄
            z = xp.zeros_like(_sl(f, ax, None, 1))
            gf = gf + xp.concatenate([z, ga], axis=ax) + xp.concatenate([gb, z], axis=ax)
        return pen, bk.ifft2c(gf)


class ProbeRecipTikhonov(CostRegularizer):
    """``Σ |∂_y F|² + |∂_x F|²`` of the centred reciprocal probe ``F = fft2c(P)``."""

    name = "probe_recip_tikhonov"
    target = "probe"

    def _penalty_grad(self, bk, x, info):
        pen, gf = _tikh(bk.xp, bk.fft2c(x), (-2, -1))
        return pen, bk.ifft2c(gf)


class ProbeRecipTV(CostRegularizer):
    """Isotropic TV of the centred reciprocal probe ``F = fft2c(P)``."""

    name = "probe_recip_tv"
    target = "probe"

    def _penalty_grad(self, bk, x, info):
        pen, gf = _tv(bk.xp, bk.fft2c(x), (-2, -1), self.config.eps)
        return pen, bk.ifft2c(gf)


#: (name, class, config class, aliases)
COSTS = (
    ("obj_l1", ObjL1, SmoothCostConfig, ()),
    ("obj_l2", ObjL2, CostConfig, ()),
    ("obj_phase_l1", ObjPhaseL1, SmoothCostConfig, ()),
    ("obj_recip_l1", ObjRecipL1, SmoothCostConfig, ()),
    ("obj_tikhonov", ObjTikhonov, CostConfig, ("obj_tikh",)),
    ("obj_tv", ObjTV, SmoothCostConfig, ()),
    ("layers_tikhonov", LayersTikhonov, CostConfig, ("layers_tikh",)),
    ("layers_tv", LayersTV, SmoothCostConfig, ()),
    ("probe_phase_tikhonov", ProbePhaseTikhonov, SmoothCostConfig, ("probe_phase_tikh",)),
    ("probe_recip_tikhonov", ProbeRecipTikhonov, CostConfig, ("probe_recip_tikh",)),
    ("probe_recip_tv", ProbeRecipTV, SmoothCostConfig, ()),
)
