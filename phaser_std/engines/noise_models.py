"""Detector noise models: the loss every engine reports and the conventional wave update.

Each model is a small class built from its config (``cls(config)``) with three pure,
backend-agnostic methods (numpy, cupy, and inside ``jax.jit``; no in-place writes, no Python
branching on array values):

- ``loss(bk, model_I, measured_I) -> (B,)``: negative log-likelihood per pattern [electrons
  for poisson; dimensionless otherwise], constants dropped so that it is **0 at a perfect
  fit and >= 0**. Every engine reports this same quantity, so loss curves compare.
- ``grad_intensity(bk, model_I, measured_I) -> dL/dI`` (same shape as ``model_I``), for the
  analytic adjoint of the gradient engine on numpy/cupy. Since ``I = Σ_modes |Ψ|²``,
  the Wirtinger gradient is ``dL/dΨ̄ = dL/dI · Ψ`` (see :func:`wirtinger_far_grad`).
- ``wave_update(bk, far_wave, model_I, measured_I) -> ΔΨ``: the analytic detector-plane update
  of the conventional engines (paper III.A), ``far_wave`` ``(B, M, Qy, Qx)``; zero at a
  perfect fit.

Shapes: ``model_I`` and ``measured_I`` are ``(B, Qy, Qx)`` (any corner/centre convention, as
long as both agree). Negative measured counts are clipped to zero.

Safeguards (the published phaser's amplitude model gives NaN where the model intensity is
zero, see PHASER_REFERENCE §8.1.2): ``eps`` [electrons] is added under *both* square roots of
the amplitude/anscombe models, so the loss is still zero at a perfect fit, dL/dI is finite at
I = 0, and ``jax.grad`` through ``I = re(Ψ)² + im(Ψ)²`` (:func:`intensity`) stays finite.
"""

from __future__ import annotations

from typing import Any

import attrs
import numpy as np

from phaser_core.config import NoiseModelSpec, in_range, param
from phaser_core.data import holds_counts
from phaser_core.observer import announce
from phaser_std.physics.forward import intensity  # re² + im²: finite jax.grad at Ψ = 0

__all__ = ["intensity", "wirtinger_far_grad", "GaussianNoise", "PoissonNoise", "AmplitudeNoise",
           "AnscombeNoise", "DetectorMasked", "on_valid_pixels", "DEFAULT_NOISE_MODEL", "default_noise_model",
           "auto_noise_model", "counts_per_pixel", "SPARSE_COUNTS_PER_PIXEL",
           "AutoNoise", "build_noise_model", "register_all"]


def wirtinger_far_grad(bk: Any, far_wave: Any, dL_dI: Any) -> Any:
    """``dL/dΨ̄ = dL/dI · Ψ`` for ``I = Σ_modes |Ψ|²`` (``far_wave`` ``(B, M, Qy, Qx)``).

    The steepest-descent direction in (re, im) is ``−2·dL/dΨ̄`` (= ``−conj(jax.grad)``).
    """
    return dL_dI[:, None] * far_wave


def _clip(bk: Any, measured_I: Any) -> Any:
    return bk.xp.maximum(measured_I, 0)


def _sum_pattern(bk: Any, x: Any) -> Any:
    return bk.xp.sum(x, axis=(-2, -1))


# ---------------------------------------------------------------------------------------
# Gaussian
# ---------------------------------------------------------------------------------------


@attrs.frozen
class GaussianConfig:
    sigma: float = param(1.0, unit="e⁻", doc="standard deviation of the additive noise per pixel",
                         validator=in_range(0, lo_open=True))
    eps: float = param(1e-3, unit="e⁻", doc="added to the denominator of the wave update",
                       validator=in_range(0, lo_open=True))


class GaussianNoise:
    """Additive Gaussian noise: ``L = Σ (I − I_e)² / (2σ²)``.

    Wave update: the per-pixel Gauss–Newton step that moves ``|Ψ|²`` onto ``I_e`` to first
    order, ``ΔΨ = (I_e − I) / (2I + eps) · Ψ`` (to first order the same as the modulus
    constraint of the amplitude model).
    """

    def __init__(self, config: GaussianConfig | None = None):
        self.config = config or GaussianConfig()

    def loss(self, bk: Any, model_I: Any, measured_I: Any) -> Any:
        d = model_I - _clip(bk, measured_I)
        return _sum_pattern(bk, d * d) / (2.0 * self.config.sigma ** 2)

    def grad_intensity(self, bk: Any, model_I: Any, measured_I: Any) -> Any:
        return (model_I - _clip(bk, measured_I)) / (self.config.sigma ** 2)

    def wave_update(self, bk: Any, far_wave: Any, model_I: Any, measured_I: Any) -> Any:
        factor = (_clip(bk, measured_I) - model_I) / (2.0 * model_I + self.config.eps)
        return factor[:, None] * far_wave


# ---------------------------------------------------------------------------------------
# Poisson
# ---------------------------------------------------------------------------------------


@attrs.frozen
class PoissonConfig:
    eps: float = param(1e-3, unit="e⁻", doc="background added to the model intensity (keeps the log finite)",
                       validator=in_range(0, lo_open=True))
    step: float | None = param(None, doc="fixed wave-update step α; null: the per-pattern Newton step",
                               validator=in_range(0, lo_open=True))


class PoissonNoise:
    """Poisson counting noise (paper III.A): the negative log-likelihood of the counts
    ``I_e`` for a mean ``I' = I + eps`` (the model plus a background ``eps``), as the
    published phaser defines it:

    ``L = Σ (I' − I_e') − I_e·log(I'/I_e')`` with ``I_e' = I_e + eps``;
    ``dL/dI = 1 − I_e/I'``. ``L`` is 0 at ``I = I_e`` and ≈ ``(I − I_e)²/(2I_e)`` near it for
    bright pixels; its minimum, at ``I = max(I_e − eps, 0)``, lies within ``[−eps, 0]`` per
    pixel, and a dark pixel pulls the model to zero.

    Wave update (implemented for the conventional engines, unlike the published phaser):
    ``ΔΨ = −α (1 − I_e/I') Ψ``. ``α`` is one Newton step of the pattern's Poisson loss along
    that direction (the per-pattern optimal step of Odstrčil et al. 2018, Opt. Express 26,
    3108, §3), clipped to [0, 1]; it tends to ½ near the fit (the per-pixel Gauss–Newton step,
    the same first-order update as the amplitude model) and falls back to ½ where the
    curvature is not positive. ``step`` fixes ``α`` instead.
    """

    def __init__(self, config: PoissonConfig | None = None):
        self.config = config or PoissonConfig()

    def loss(self, bk: Any, model_I: Any, measured_I: Any) -> Any:
        xp = bk.xp
        eps = self.config.eps
        ip = model_I + eps
        ie = _clip(bk, measured_I)
        return _sum_pattern(bk, (ip - (ie + eps)) - ie * (xp.log(ip) - xp.log(ie + eps)))

    def grad_intensity(self, bk: Any, model_I: Any, measured_I: Any) -> Any:
        return 1.0 - _clip(bk, measured_I) / (model_I + self.config.eps)

    def step_size(self, bk: Any, model_I: Any, measured_I: Any) -> Any:
        """Per-pattern step ``α`` ``(B,)`` of the wave update (see the class docstring)."""
        xp = bk.xp
        eps = self.config.eps
        if self.config.step is not None:
            return xp.full(model_I.shape[:1], float(self.config.step), dtype=bk.real_dtype)
        ip = model_I + eps
        ie = _clip(bk, measured_I)
        g = 1.0 - ie / ip
        # L(α) along Ψ(1 − αg): I(α) = I(1 − αg)²; first and second derivatives at α = 0
        # (d²L/dI² = I_e/I'²)
        d1 = _sum_pattern(bk, 2.0 * g * g * model_I)  # = −dL/dα
        d2 = _sum_pattern(bk, 4.0 * g * g * model_I ** 2 * ie / ip ** 2 + 2.0 * g ** 3 * model_I)
        safe_d2 = xp.where(d2 > 0, d2, 1.0)
        alpha = xp.where((d2 > 0) & (d1 > 0), d1 / safe_d2, 0.5)
        return xp.clip(alpha, 0.0, 1.0)

    def wave_update(self, bk: Any, far_wave: Any, model_I: Any, measured_I: Any) -> Any:
        alpha = self.step_size(bk, model_I, measured_I)
        g = self.grad_intensity(bk, model_I, measured_I)
        return (-alpha[:, None, None] * g)[:, None] * far_wave


# ---------------------------------------------------------------------------------------
# Amplitude and Anscombe (variance-stabilised Gaussian)
# ---------------------------------------------------------------------------------------


@attrs.frozen
class AmplitudeConfig:
    eps: float = param(1e-3, unit="e⁻", doc="added under both square roots (keeps gradients finite at I = 0)",
                       validator=in_range(0, lo_open=True))


@attrs.frozen
class AnscombeConfig:
    eps: float = param(1e-3, unit="e⁻", doc="added under both square roots", validator=in_range(0))
    offset: float = param(0.375, unit="e⁻", doc="Anscombe offset c (3/8)", validator=in_range(0))


class AmplitudeNoise:
    """Variance-stabilised Gaussian noise on ``2√(I + c)`` (c = 0: amplitude model).

    ``L = 2 Σ (s(I) − s(I_e))²`` with ``s(x) = √(x + c + eps)``; the factor 2 (unit variance
    of ``2√x``) makes it agree with the Poisson loss near the fit, ``(I − I_e)²/(2I_e)``.
    ``dL/dI = 2 (1 − s(I_e)/s(I))``. Wave update, the modulus constraint (paper III.A):
    ``ΔΨ = (s(I_e)/s(I) − 1) Ψ`` (eps under both roots, so zero at a perfect fit).
    """

    offset = 0.0

    def __init__(self, config: Any = None):
        self.config = config or AmplitudeConfig()
        self.offset = float(getattr(self.config, "offset", 0.0))
        if self.offset + self.config.eps <= 0:  # each >= 0 by its config's validators
            raise ValueError(f"{type(self).__name__}: need offset + eps > 0 "
                             f"(got eps={self.config.eps}, offset={self.offset})")

    def _s(self, bk: Any, x: Any) -> Any:
        return bk.xp.sqrt(x + (self.offset + self.config.eps))

    def loss(self, bk: Any, model_I: Any, measured_I: Any) -> Any:
        d = self._s(bk, model_I) - self._s(bk, _clip(bk, measured_I))
        return 2.0 * _sum_pattern(bk, d * d)

    def grad_intensity(self, bk: Any, model_I: Any, measured_I: Any) -> Any:
        return 2.0 * (1.0 - self._s(bk, _clip(bk, measured_I)) / self._s(bk, model_I))

    def wave_update(self, bk: Any, far_wave: Any, model_I: Any, measured_I: Any) -> Any:
        factor = self._s(bk, _clip(bk, measured_I)) / self._s(bk, model_I) - 1.0
        return factor[:, None] * far_wave


class AnscombeNoise(AmplitudeNoise):
    """The Anscombe model: the amplitude model with offset ``c = 3/8``."""

    def __init__(self, config: AnscombeConfig | None = None):
        super().__init__(config or AnscombeConfig())


# ---------------------------------------------------------------------------------------
# The detector's valid pixels
# ---------------------------------------------------------------------------------------


class DetectorMasked:
    """Any noise model restricted to the detector's valid pixels (the data's mask).

    Invalid pixels (dead, hot, padded, behind a beam stop) take no part in the fit: they add
    nothing to the loss, nothing to dL/dI, and the wave update leaves the model's far field
    there as it is (ΔΨ = 0), so the probe and object are free to predict them. The loss
    is evaluated with the measured intensity replaced by the model's at those pixels, where
    every noise model's loss is zero (the contract of the module docstring); the gradient
    and the wave update are then multiplied by the mask. With ``jax.grad`` the replaced
    term is identically zero in the model, so autodiff gives zero there too.

    ``valid``: ``(Qy, Qx)`` bool on the host, in the patterns' corner-centred layout.
    """

    def __init__(self, noise: Any, valid: Any):
        self.noise = noise
        self.valid = np.asarray(valid, dtype=bool)
        self._cached: dict = {}

    def __getattr__(self, name: str) -> Any:
        # config, step_size and anything a plugin's solver reads from its model (not the
        # wrapper's own fields, which copy.copy looks up before they exist)
        if name in ("noise", "valid", "_cached") or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.noise, name)

    def _mask(self, bk: Any) -> Any:
        # inside jax's traced programs a host constant (a device array closed over would be
        # committed to one device, not the CPU lanes'); other backends upload it once
        if bk.name == "jax":
            return bk.xp.asarray(self.valid)
        if bk.name not in self._cached:
            self._cached[bk.name] = bk.asarray(self.valid, dtype=bool)
        return self._cached[bk.name]

    def _measured(self, bk: Any, model_I: Any, measured_I: Any) -> Any:
        return bk.xp.where(self._mask(bk), measured_I, model_I)

    def loss(self, bk: Any, model_I: Any, measured_I: Any) -> Any:
        return self.noise.loss(bk, model_I, self._measured(bk, model_I, measured_I))

    def grad_intensity(self, bk: Any, model_I: Any, measured_I: Any) -> Any:
        d_i = self.noise.grad_intensity(bk, model_I, self._measured(bk, model_I, measured_I))
        return d_i * self._mask(bk)

    def wave_update(self, bk: Any, far_wave: Any, model_I: Any, measured_I: Any) -> Any:
        update = self.noise.wave_update(bk, far_wave, model_I, self._measured(bk, model_I, measured_I))
        return update * self._mask(bk)


def on_valid_pixels(noise: Any, valid: Any) -> Any:
    """``noise`` restricted to the ``valid`` pixels (:class:`DetectorMasked`); ``noise``
    itself when there is no mask (``valid`` None)."""
    return noise if valid is None else DetectorMasked(noise, valid)


#: What the ``auto`` noise model (the engines' default) becomes, by whether the patterns are
#: counted (whole numbers of electrons) or not (benchmarks/NOTES.md 69).
DEFAULT_NOISE_MODEL = {True: "anscombe", False: "amplitude"}

#: [e⁻] counted patterns with fewer electrons than this per detector pixel, on average,
#: get the amplitude model from ``auto`` (benchmarks/NOTES.md 105): there most pixels hold
#: no electron, and the Anscombe offset of 3/8 e⁻ under their roots hardly pulls the model
#: towards them, so each iteration fits more of the noise. abTEM SrTiO₃ at 0.24 and 0.29 e⁻
#: a pixel: Pearson +0.04 to +0.07 with amplitude, a lower RMS error too; at 0.73 and 0.98
#: the two are within 0.015 in Pearson and anscombe's RMS error is as low or lower; above,
#: anscombe is the better.
SPARSE_COUNTS_PER_PIXEL = 0.5


def counts_per_pixel(data: Any) -> float:
    """Mean electrons per valid detector pixel [e⁻]: a pattern's mean count over the valid
    pixels (:func:`phaser_core.data.mean_counts`, from a sample of patterns) divided by
    their number."""
    from phaser_core.data import detector_mask, mean_counts

    valid = detector_mask(data)
    pixels = int(np.prod(data.pattern_shape)) if valid is None else int(np.count_nonzero(valid))
    return mean_counts(data) / max(pixels, 1)


def auto_noise_model(data: Any, per_pixel: float | None = None) -> tuple[str, str]:
    """``(name, reason)``: the noise model ``auto`` picks for ``data`` and why.
    ``anscombe`` for counted patterns (every valid pixel a whole number of electrons,
    :func:`phaser_core.data.holds_counts`), whose dark-field pixels hold a few counts each
    and bias the amplitude model's √Iₑ low; ``amplitude`` for counted patterns sparser
    than :data:`SPARSE_COUNTS_PER_PIXEL` (mean electrons per detector pixel), where most
    pixels hold no electron and the Anscombe offset fits the noise; ``amplitude`` for any
    other patterns (noiseless simulations, normalised or gain-scaled data), where that
    offset would assume a scale the data do not have. ``per_pixel``: the data's
    :func:`counts_per_pixel` [e⁻] when the caller has it already."""
    if not holds_counts(data):
        return DEFAULT_NOISE_MODEL[False], "for non-counted patterns"
    per_pixel = counts_per_pixel(data) if per_pixel is None else float(per_pixel)
    if per_pixel < SPARSE_COUNTS_PER_PIXEL:
        return "amplitude", f"for sparse counts: {per_pixel:.2g} e⁻ per pixel, under {SPARSE_COUNTS_PER_PIXEL:g}"
    return DEFAULT_NOISE_MODEL[True], "for counted patterns"


def default_noise_model(data: Any) -> str:
    """The name of the noise model ``auto`` picks for ``data`` (:func:`auto_noise_model`)."""
    return auto_noise_model(data)[0]


@attrs.frozen
class AutoConfig:
    eps: float = param(1e-3, unit="e⁻", doc="added under both square roots of the model picked",
                       validator=in_range(0, lo_open=True))


class AutoNoise:
    """The engines' default: ``anscombe`` for counted patterns, ``amplitude`` for others
    (:func:`default_noise_model`), with this ``eps``. An engine calls :meth:`resolve` with
    its data (:func:`build_noise_model`); the unresolved model computes nothing."""

    def __init__(self, config: AutoConfig | None = None):
        self.config = config or AutoConfig()

    def resolve(self, data: Any) -> tuple[Any, str, str]:
        """``(model, name, reason)`` for ``data`` (:func:`auto_noise_model`)."""
        name, reason = auto_noise_model(data)
        cls, config = (AnscombeNoise, AnscombeConfig) if name == "anscombe" else (AmplitudeNoise, AmplitudeConfig)
        return cls(config(eps=self.config.eps)), name, reason

    def _unresolved(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError("the auto noise model picks anscombe or amplitude from the data: build it with "
                        "phaser_std.engines.noise_models.build_noise_model(spec, data, registry)")

    loss = grad_intensity = wave_update = _unresolved


def build_noise_model(spec: Any, data: Any, registry: Any, ctx: Any = None) -> Any:
    """The engine's noise model from its ``spec``; ``auto`` (or None) resolved for ``data``
    and announced to the run's observers (``ctx``)."""
    noise = (spec if spec is not None else NoiseModelSpec("auto")).build(registry)
    if hasattr(noise, "resolve"):
        noise, name, reason = noise.resolve(data)
        if ctx is not None:
            announce(ctx, f"noise model auto: {name} ({reason}; name one in the plan to choose)")
    return noise


def register_all(register) -> None:
    register("gaussian", GaussianNoise, config=GaussianConfig,
             doc="Additive Gaussian noise of standard deviation sigma [e⁻].")
    register("poisson", PoissonNoise, config=PoissonConfig,
             doc="Poisson counting noise (likelihood of a mean I + eps); conventional update with Newton step.")
    register("amplitude", AmplitudeNoise, config=AmplitudeConfig,
             doc="Gaussian noise on 2√I (modulus constraint), NaN-safe at zero intensity.")
    register("anscombe", AnscombeNoise, config=AnscombeConfig,
             doc="Gaussian noise on 2√(I + 3/8) (Anscombe transform).")
    register("auto", AutoNoise, config=AutoConfig,
             doc="The engines' default: anscombe for counted patterns (whole numbers of electrons), amplitude "
                 "for sparse counts (under 0.5 e⁻ per pixel) and for other patterns.")
