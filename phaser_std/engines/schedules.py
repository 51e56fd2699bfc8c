"""Hyperparameter schedules: data in the plan, never evaluated strings.

``make(config) -> f(iteration) -> float`` with ``iteration`` counted from 0 within the
engine. Where optax has the schedule it is used (and its value converted to a Python float);
without optax the same formula runs in pure Python (tests check both agree). A plan writes
e.g. ``learning_rate: {type: cosine, init: 0.1, final: 0.001, decay_steps: 100}``.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import attrs

from phaser_core.config import param

__all__ = ["ConstantSchedule", "PiecewiseSchedule", "CosineSchedule", "ExponentialSchedule",
           "WarmupCosineSchedule", "make_constant", "make_piecewise", "make_cosine", "make_exponential",
           "make_warmup_cosine", "register_all"]

Schedule = Callable[[int], float]


def _optax(use_optax: bool | None) -> Any:
    """optax if wanted and importable, else None (``use_optax=True`` insists on it)."""
    if use_optax is False:
        return None
    try:
        import optax  # noqa: PLC0415 - optional, heavy (imports jax)
    except ImportError:
        if use_optax:
            raise
        return None
    return optax


def _floatify(fn: Callable[[int], Any]) -> Schedule:
    def f(iteration: int) -> float:
        return float(fn(int(iteration)))

    return f


@attrs.frozen
class ConstantSchedule:
    value: float = param(1.0, doc="the value at every iteration")


@attrs.frozen
class PiecewiseSchedule:
    init: float = param(1.0, doc="value before the first boundary")
    boundaries: tuple[int, ...] = param((), converter=lambda v: tuple(int(x) for x in v),
                                        doc="engine iterations where the value changes (increasing)")
    values: tuple[float, ...] = param((), converter=lambda v: tuple(float(x) for x in v),
                                      doc="value from each boundary on (same length as boundaries)")

    def __attrs_post_init__(self) -> None:
        if len(self.boundaries) != len(self.values):
            raise ValueError(f"piecewise schedule: {len(self.boundaries)} boundaries but "
                             f"{len(self.values)} values; give one value per boundary")
        if any(b1 >= b2 for b1, b2 in zip(self.boundaries, self.boundaries[1:])) or \
                any(b < 0 for b in self.boundaries):
            raise ValueError(f"piecewise schedule: boundaries must be >= 0 and increasing, got {self.boundaries}")


@attrs.frozen
class CosineSchedule:
    init: float = param(1.0, doc="value at iteration 0")
    final: float = param(0.0, doc="value from decay_steps on")
    decay_steps: int = param(100, doc="iterations over which the value decays (> 0)")


@attrs.frozen
class ExponentialSchedule:
    init: float = param(1.0, doc="value at iteration 0")
    rate: float = param(0.5, doc="factor applied every `steps` iterations (> 0)")
    steps: int = param(10, doc="iterations per factor `rate` (> 0)")
    staircase: bool = param(False, doc="apply the factor in whole steps")
    final: float | None = param(None, doc="bound the value (a floor when decaying)")


@attrs.frozen
class WarmupCosineSchedule:
    init: float = param(0.0, doc="value at iteration 0")
    peak: float = param(1.0, doc="value at the end of the warm-up")
    warmup_steps: int = param(5, doc="iterations of linear warm-up")
    decay_steps: int = param(100, doc="total iterations of warm-up plus cosine decay (> warmup_steps)")
    final: float = param(0.0, doc="value from decay_steps on")


def make_constant(config: ConstantSchedule, use_optax: bool | None = None) -> Schedule:
    """The same value at every iteration."""
    value = float(config.value)
    return lambda iteration: value


def make_piecewise(config: PiecewiseSchedule, use_optax: bool | None = None) -> Schedule:
    """``init`` until the first boundary, then ``values[j]`` from ``boundaries[j]`` on."""
    optax = _optax(use_optax)
    if optax is not None and config.boundaries:
        parts = [optax.constant_schedule(config.init)] + [optax.constant_schedule(v) for v in config.values]
        return _floatify(optax.join_schedules(parts, list(config.boundaries)))

    def f(iteration: int) -> float:
        value = float(config.init)
        for b, v in zip(config.boundaries, config.values):
            if iteration >= b:
                value = float(v)
        return value

    return f


def _cosine(init: float, final: float, steps: int, t: int) -> float:
    frac = min(max(t, 0), steps) / steps
    return final + (init - final) * 0.5 * (1.0 + math.cos(math.pi * frac))


def make_cosine(config: CosineSchedule, use_optax: bool | None = None) -> Schedule:
    """Cosine decay from ``init`` to ``final`` over ``decay_steps`` iterations."""
    if config.decay_steps <= 0:
        raise ValueError(f"cosine schedule: decay_steps must be > 0, got {config.decay_steps}")
    optax = _optax(use_optax)
    if optax is not None and config.init != 0:
        return _floatify(optax.cosine_decay_schedule(config.init, config.decay_steps,
                                                     alpha=config.final / config.init))
    return lambda t: _cosine(float(config.init), float(config.final), int(config.decay_steps), int(t))


def make_exponential(config: ExponentialSchedule, use_optax: bool | None = None) -> Schedule:
    """``init · rate^(t / steps)`` (``floor(t/steps)`` with ``staircase``), bounded by ``final``."""
    if config.steps <= 0 or config.rate <= 0:
        raise ValueError(f"exponential schedule: need steps > 0 and rate > 0, got steps={config.steps}, "
                         f"rate={config.rate}")
    optax = _optax(use_optax)
    if optax is not None:
        return _floatify(optax.exponential_decay(config.init, config.steps, config.rate,
                                                 staircase=config.staircase, end_value=config.final))

    def f(t: int) -> float:
        p = t / config.steps
        if config.staircase:
            p = math.floor(p)
        v = config.init * config.rate ** p
        if config.final is not None:
            v = max(v, config.final) if config.rate < 1 else min(v, config.final)
        return float(v)

    return f


def make_warmup_cosine(config: WarmupCosineSchedule, use_optax: bool | None = None) -> Schedule:
    """Linear warm-up ``init -> peak`` over ``warmup_steps``, then cosine decay to ``final``
    at ``decay_steps`` (counted from iteration 0, warm-up included)."""
    if config.decay_steps <= config.warmup_steps or config.warmup_steps < 0:
        raise ValueError("warmup_cosine schedule: need 0 <= warmup_steps < decay_steps, got "
                         f"warmup_steps={config.warmup_steps}, decay_steps={config.decay_steps}")
    optax = _optax(use_optax)
    if optax is not None:
        return _floatify(optax.warmup_cosine_decay_schedule(config.init, config.peak, config.warmup_steps,
                                                            config.decay_steps, end_value=config.final))

    def f(t: int) -> float:
        if t < config.warmup_steps:
            return float(config.init + (config.peak - config.init) * t / config.warmup_steps)
        return _cosine(config.peak, config.final, config.decay_steps - config.warmup_steps,
                       t - config.warmup_steps)

    return f


def register_all(register) -> None:
    register("constant", make_constant, config=ConstantSchedule, doc="A constant value.")
    register("piecewise", make_piecewise, config=PiecewiseSchedule,
             doc="Piecewise constant: init, then values[j] from boundaries[j] on.")
    register("cosine", make_cosine, config=CosineSchedule, doc="Cosine decay from init to final.")
    register("exponential", make_exponential, config=ExponentialSchedule,
             doc="Exponential decay init·rate^(t/steps).")
    register("warmup_cosine", make_warmup_cosine, config=WarmupCosineSchedule,
             doc="Linear warm-up to peak, then cosine decay to final.")
