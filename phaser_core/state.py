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
