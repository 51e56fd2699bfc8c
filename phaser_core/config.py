"""Building blocks for component config classes.

A component's config is a frozen attrs class whose fields are its plan keys. Declare each
field with :func:`param` so ``phaser describe`` can show its unit and documentation::

    @attrs.frozen
    class AmplitudeConfig:
        eps: float = param(1e-2, doc="added under the square roots")

A field that is itself a pluggable part is typed with the matching ``*Spec`` class below
(``noise_model: NoiseModelSpec``); the plan structures it through the live registry, so a
third-party name works there too. ``Flag`` and ``Schedulable`` cover the per-iteration
switches (``update_probe: {after: 5}``) and scheduled hyperparameters.
"""

from __future__ import annotations

import math
import os
from typing import Any, ClassVar, Union

import attrs


def param(default: Any = attrs.NOTHING, *, unit: str | None = None, doc: str = "",
          factory: Any = None, validator: Any = None, converter: Any = None) -> Any:
    """An attrs field carrying ``unit`` (e.g. ``"Å"``, ``"mrad"``) and ``doc`` metadata."""
    kwargs: dict[str, Any] = {"metadata": {"unit": unit, "doc": doc}}
    if factory is not None:
        kwargs["factory"] = factory
    elif default is not attrs.NOTHING:
        kwargs["default"] = default
    if validator is not None:
        kwargs["validator"] = validator
    if converter is not None:
        kwargs["converter"] = converter
    return attrs.field(**kwargs)


def in_range(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False, hi_open: bool = False,
             hint: str = "") -> Any:
    """An attrs validator: a number must lie between ``lo`` and ``hi`` (``lo_open``/``hi_open``:
    that end excluded; ``None``: no bound); NaN fails. ``None`` and non-numbers (a
    schedule entry) pass. The error names the value and ``hint``; ``phaser validate`` reports it
    at the key's file:line:col."""
    words = []
    if lo is not None:
        words.append(f"{'>' if lo_open else '>='} {lo:g}")
    if hi is not None:
        words.append(f"{'<' if hi_open else '<='} {hi:g}")

    def check(instance: Any, attribute: Any, value: Any) -> None:
        if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
            return
        bad = math.isnan(value)
        if lo is not None:
            bad |= value <= lo if lo_open else value < lo
        if hi is not None:
            bad |= value >= hi if hi_open else value > hi
        if bad:
            raise ValueError(f"must be {' and '.join(words)}, got {value}" + (f" ({hint})" if hint else ""),
                             attribute)

    return check


@attrs.frozen
class ComponentSpec:
    """A ``{type: NAME, ...config}`` entry of a plan: the name and its structured config.

    ``config`` is an instance of the component's config class, or ``None`` to mean "all
    defaults" (filled in when the plan is resolved).
    """

    kind: ClassVar[str] = ""
    #: when set, only components registered with this ``role`` meta are accepted
    role: ClassVar[str | None] = None
    type: str
    config: Any = None

    def component(self, registry: Any) -> Any:
        return registry.resolve(self.kind, self.type)

    def resolved_config(self, registry: Any) -> Any:
        if self.config is not None:
            return self.config
        return self.component(registry).make_config()

    def build(self, registry: Any, *args: Any, **kwargs: Any) -> Any:
        """Instantiate the component: ``obj(config, *args, **kwargs)``."""
        comp = self.component(registry)
        return comp.obj(self.resolved_config(registry), *args, **kwargs)


def _spec(kind_name: str, doc: str, role: str | None = None, base: type = ComponentSpec) -> type:
    name = f"{(role or '').title()}{''.join(p.title() for p in kind_name.split('_'))}Spec"
    cls = attrs.frozen(type(name, (base,), {"kind": kind_name, "role": role, "__doc__": doc,
                                            "__annotations__": {}}))
    cls.__module__ = __name__
    return cls


LoaderSpec = _spec("loader", "A raw-data loader entry (``raw_data:``).")
PreprocessorSpec = _spec("preprocessor", "A post-load step (``post_load:`` items).")
ProbeInitSpec = _spec("probe_initializer", "The probe initialiser (``init.probe``).")
ObjectInitSpec = _spec("object_initializer", "The object initialiser (``init.object``).")
ScanInitSpec = _spec("scan_initializer", "The scan initialiser (``init.scan``).")
NoiseModelSpec = _spec("noise_model", "A noise model (``noise_model:``).")
RegularizerSpec = _spec("regularizer", "A regularizer (constraint or cost).")
SolverSpec = _spec("solver", "A solver (conventional, gradient or position).")
ScheduleSpec = _spec("schedule", "A hyperparameter schedule.")
EngineSpec = _spec("engine", "An engine (``engines:`` items).")
ObserverSpec = _spec("observer", "An observer (``observers:`` items).")

ConventionalSolverSpec = _spec("solver", "A conventional update rule (epie, lsqml).", "conventional", SolverSpec)
GradientSolverSpec = _spec("solver", "A gradient optimizer (sgd, adam, ...).", "gradient", SolverSpec)
PositionSolverSpec = _spec("solver", "A position-correction solver.", "position", SolverSpec)
ConstraintSpec = _spec("regularizer", "A constraint regularizer (applied to the state).", "constraint",
                       RegularizerSpec)
CostSpec = _spec("regularizer", "A cost regularizer (a penalty in the gradient engine's loss).", "cost",
                 RegularizerSpec)

SPEC_CLASSES: tuple[type, ...] = (LoaderSpec, PreprocessorSpec, ProbeInitSpec, ObjectInitSpec, ScanInitSpec,
                                  NoiseModelSpec, RegularizerSpec, SolverSpec, ScheduleSpec, EngineSpec,
                                  ObserverSpec, ConventionalSolverSpec, GradientSolverSpec, PositionSolverSpec,
                                  ConstraintSpec, CostSpec)


@attrs.frozen
class Flag:
    """When a per-iteration switch is on, from iteration counters within an engine.

    In a plan: ``true``/``false``, or ``{after: 5}``, ``{every: 2}``, ``{before: 50}`` and
    combinations (all must hold). ``after: 5`` means on from engine iteration 5 (0-based).
    """

    enabled: bool = True
    after: int | None = None
    every: int | None = attrs.field(default=None, validator=attrs.validators.optional(attrs.validators.ge(1)))
    before: int | None = None

    def __call__(self, iteration: int) -> bool:
        if not self.enabled:
            return False
        if self.after is not None and iteration < self.after:
            return False
        if self.before is not None and iteration >= self.before:
            return False
        if self.every is not None and (iteration - (self.after or 0)) % self.every != 0:
            return False
        return True


#: A hyperparameter: a constant or a schedule entry (``{type: cosine, ...}``).
Schedulable = Union[float, ScheduleSpec]


def schedule_value(value: Any, iteration: int, registry: Any) -> float:
    """Evaluate a :data:`Schedulable` at ``iteration``."""
    if isinstance(value, ScheduleSpec):
        fn = value.build(registry)
        return float(fn(iteration))
    return float(value)


def yx_pair(value: Any, kind: type = float) -> tuple:
    """A (y, x) pair from a scalar ``s`` (-> ``(s, s)``) or a 2-sequence; ``kind`` float or int."""
    import numpy as np

    arr = np.asarray(value).ravel()
    if arr.size == 1:
        return (kind(arr[0]), kind(arr[0]))
    if arr.size != 2:
        what = "an integer" if kind is int else "a number"
        raise ValueError(f"expected {what} or a (y, x) pair, got {value!r}")
    return (kind(arr[0]), kind(arr[1]))


def yx_pair_or_none(value: Any) -> tuple[float, float] | None:
    """:func:`yx_pair` of floats, or ``None``."""
    return None if value is None else yx_pair(value, float)


def direction_or_none(value: Any) -> tuple[float, float] | None:
    """A (y, x) direction of two finite numbers (a beam tilt [mrad]), or ``None``. Unlike
    :func:`yx_pair` a single number is refused: the same value on both axes is a direction
    along the diagonal, almost surely not what was meant."""
    import numpy as np

    if value is None:
        return None
    arr = np.asarray(value, dtype=float).ravel()
    if arr.size != 2 or not np.all(np.isfinite(arr)):
        raise ValueError(f"expected a (y, x) pair of finite numbers, got {value!r}")
    return (float(arr[0]), float(arr[1]))


def yx_int_pair(value: Any) -> tuple[int, int]:
    """:func:`yx_pair` of ints."""
    return yx_pair(value, int)


def yx_int_pair_or_none(value: Any) -> tuple[int, int] | None:
    return None if value is None else yx_pair(value, int)


def is_finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def env_enabled(name: str, default: bool = True) -> bool:
    """Whether the environment switch ``name`` is on: ``0``, ``false``, ``no`` or ``off``
    (any case) turn it off, any other value on; unset gives ``default``."""
    value = os.environ.get(name)
    if value is None:
        return default
    return value.strip().lower() not in ("0", "false", "no", "off")
