"""The reconstruction state: what engines read, update and hand to the next engine.

Arrays live on the engine's backend while it runs and on the host otherwise. The HDF5
layout of a saved state is in :mod:`phaser_core.statefile` and ``docs/file-formats.md``.
"""

from __future__ import annotations

from typing import Any

import attrs
import numpy as np


@attrs.define(kw_only=True)
class ProbeState:
    """Probe modes ``(modes, Ny, Nx)`` complex, real space, centred on ``(Ny//2, Nx//2)``.

    Normalised so that Σ|P|² over all modes is the mean number of electrons per pattern
    once the engine has scaled it to the data.
    """

    data: Any
    #: (y, x) pixel size [Å]
    sampling_A: tuple[float, float]

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.data.shape[-2]), int(self.data.shape[-1]))

    @property
    def n_modes(self) -> int:
        return int(self.data.shape[0])


@attrs.define(kw_only=True)
class ObjectState:
    """Object slices ``(slices, H, W)``: complex transmission functions.

    ``corner_A`` is the (y, x) position [Å] of pixel (0, 0)'s centre in the frame of the
    scan positions; ``thicknesses_A`` the thickness of each slice [Å] (the propagation
    distance after slice i is ``thicknesses_A[i]``; the last is not propagated).
    """

    data: Any
    sampling_A: tuple[float, float]
    corner_A: tuple[float, float]
    thicknesses_A: np.ndarray = attrs.field(factory=lambda: np.zeros(1))

    @property
    def n_slices(self) -> int:
        return int(self.data.shape[0])

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.data.shape[-2]), int(self.data.shape[-1]))

    def coords_A(self) -> tuple[np.ndarray, np.ndarray]:
        """(y, x) coordinates [Å] of pixel centres along each axis."""
        h, w = self.shape
        return (self.corner_A[0] + self.sampling_A[0] * np.arange(h),
                self.corner_A[1] + self.sampling_A[1] * np.arange(w))


def unit_amplitude(data: Any, tol: float = 1e-6) -> bool:
    """Whether every pixel of the host array ``data`` has |O|² within ``tol`` of 1: a vacuum
    or random-phase start (complex64 rounding leaves ~1e-7). Row by row, stopping at the
    first row that is not (no object-sized temporaries)."""
    data = np.asarray(data)
    rows = data.reshape(-1, data.shape[-1]) if data.ndim else data.reshape(1, 1)
    for row in rows:
        amp2 = row.real.astype(np.float64) ** 2 + row.imag.astype(np.float64) ** 2
        if not np.all(np.abs(amp2 - 1.0) <= tol):
            return False
    return True


def constant_unit_slices(obj_host: np.ndarray, tol: float = 1e-6) -> bool:
    """Whether each slice of the host object ``(S, H, W)`` is one value of modulus 1 (within
    ``tol``): a vacuum start. Row by row, as :func:`unit_amplitude`."""
    for obj_slice in np.asarray(obj_host):
        value = complex(obj_slice.flat[0])
        if abs(abs(value) ** 2 - 1.0) > tol:
            return False
        if (obj_slice == obj_slice.flat[0]).all():  # a vacuum's exact ones: one vector pass
            continue
        for row in obj_slice:
            if not np.all(np.abs(row.astype(np.complex128) - value) <= tol):
                return False
    return True


@attrs.define(kw_only=True)
class IterationCounters:
    """Where a run stands: engine index, iteration within it, iterations overall."""

    engine_num: int = 0
    engine_iter: int = 0
    total_iter: int = 0


@attrs.define(kw_only=True)
class Progress:
    """Per-iteration record: the iteration number overall, the loss and wall time [s]."""

    iters: list[int] = attrs.field(factory=list)
    loss: list[float] = attrs.field(factory=list)
    time_s: list[float] = attrs.field(factory=list)
    engine: list[int] = attrs.field(factory=list)

    def append(self, total_iter: int, loss: float, time_s: float, engine: int) -> None:
        self.iters.append(int(total_iter))
        self.loss.append(float(loss))
        self.time_s.append(float(time_s))
        self.engine.append(int(engine))

    def copy(self) -> "Progress":
        """A copy whose lists later appends to this one do not reach."""
        return Progress(iters=list(self.iters), loss=list(self.loss), time_s=list(self.time_s),
                        engine=list(self.engine))


@attrs.define(kw_only=True)
class ReconsState:
    """Probe, object, scan positions (N, 2) (y, x) [Å], tilt [mrad], counters, progress.

    ``tilt_mrad`` is ``(2,)`` for a global tilt or ``(N, 2)`` per position, (y, x).
    """

    probe: ProbeState
    object: ObjectState
    scan_A: Any
    tilt_mrad: Any = attrs.field(factory=lambda: np.zeros(2))
    iteration: IterationCounters = attrs.field(factory=IterationCounters)
    progress: Progress = attrs.field(factory=Progress)
    #: (y, x) detector sampling [1/Å per pixel] the probe grid corresponds to
    wavelength_A: float | None = None
    extra: dict[str, Any] = attrs.field(factory=dict)


class StateExpired(RuntimeError):
    """A :class:`DeferredState`'s arrays were read after its engine moved on."""


#: the fields a :class:`DeferredState` copies from the engine only when first read
DEFERRED_FIELDS = ("probe", "object", "scan_A", "tilt_mrad", "extra")


class DeferredState(ReconsState):
    """The state an engine hands to ``after_iteration``: the counters, progress and
    wavelength at once; the probe, object, positions, tilt and ``extra`` copied to the host
    only when first read (the engine's ``take`` callable makes that copy).

    Copying a GPU engine's arrays to the host after every iteration was most of its time at
    the paper's sizes (0.33 of 0.70 s/iter, gradient engine on an H100), while most
    observers read only the counters and the loss. The copy can be taken until the engine
    starts its next iteration (:meth:`close`; the engine's arrays are then reused or
    updated in place); reading the arrays later raises :class:`StateExpired`. An observer
    that keeps a state past its ``after_iteration`` call reads it there, or keeps
    :meth:`take`'s result.
    """

    __slots__ = ("_take",)

    @classmethod
    def defer(cls, take: Any, *, iteration: IterationCounters, progress: Progress,
              wavelength_A: float | None) -> "DeferredState":
        """A state whose array fields come from ``take()`` (a :class:`ReconsState`) when first read."""
        self = object.__new__(cls)
        self.iteration, self.progress, self.wavelength_A = iteration, progress, wavelength_A
        self._take = take
        return self

    @property
    def taken(self) -> bool:
        """Whether the arrays have been copied (reading them costs nothing more)."""
        try:
            _SLOTS["probe"].__get__(self, ReconsState)
        except AttributeError:
            return False
        return True

    def take(self) -> ReconsState:
        """A plain :class:`ReconsState` with the arrays copied now (or already)."""
        if not self.taken:
            take = getattr(self, "_take", None)
            if take is None:
                raise StateExpired(
                    f"the state after iteration {self.iteration.total_iter} was read after its engine moved on; "
                    "an observer that keeps a state past after_iteration reads it there (state.take())")
            full = take()
            for name in DEFERRED_FIELDS:
                _SLOTS[name].__set__(self, getattr(full, name))
            self._take = None  # the engine's arrays are no longer needed: let them go
        return ReconsState(**{f.name: getattr(self, f.name) for f in attrs.fields(ReconsState)})

    def close(self) -> None:
        """The engine moves on: no copy can be taken after this (one taken stays readable)."""
        self._take = None

    def __repr__(self) -> str:  # attrs' would read (copy) every array
        return (f"DeferredState(iteration={self.iteration!r}, "
                f"arrays={'copied' if self.taken else 'not copied'})")


_SLOTS = {name: ReconsState.__dict__[name] for name in DEFERRED_FIELDS}


def _deferred_field(name: str) -> property:
    slot = _SLOTS[name]

    def get(self: DeferredState) -> Any:
        try:
            return slot.__get__(self, ReconsState)
        except AttributeError:
            self.take()
            return slot.__get__(self, ReconsState)

    def put(self: DeferredState, value: Any) -> None:
        slot.__set__(self, value)

    return property(get, put, doc=f"``{name}``, copied from the engine when first read")


for _name in DEFERRED_FIELDS:
    setattr(DeferredState, _name, _deferred_field(_name))
