"""The cupy backend: numpy-compatible arrays on a CUDA GPU.

Only this module (imported by the factory in :mod:`phaser_std.backends` after checking that
cupy imports and a GPU is present) imports cupy. There is no jit (the identity): cupy
launches one kernel per operation. ``add_at`` accumulates in place with ``cupy.add.at``
(``cupyx.scatter_add`` is deprecated since cupy 14); always use the returned array anyway,
as on every backend.
"""

from __future__ import annotations

from typing import Any

import cupy
import numpy as np

from phaser_core.backend import BaseBackend
from phaser_std.backends._indexing import interleaved_index


def gpu_count() -> int:
    """Number of CUDA devices cupy can see (raises a cupy error without a driver)."""
    return int(cupy.cuda.runtime.getDeviceCount())


class CupyBackend(BaseBackend):
    """cupy arrays on the current CUDA device."""

    name = "cupy"
    xp = cupy

    def asarray(self, x: Any, dtype: Any = None) -> Any:
        """Copy ``x`` (numpy, cupy or a Python scalar/list) to the GPU. Floats and complex
        values follow the dtype policy unless ``dtype`` is given; integers keep their type."""
        if not isinstance(x, cupy.ndarray):
            x = np.asarray(x)
        if dtype is None:
            kind = np.dtype(x.dtype).kind
            dtype = {"f": self.real_dtype, "c": self.complex_dtype}.get(kind)
        return cupy.asarray(x, dtype=dtype)

    def to_numpy(self, x: Any) -> np.ndarray:
        """A host copy of ``x`` (numpy arrays and scalars pass through ``np.asarray``)."""
        if isinstance(x, cupy.ndarray):
            return x.get()
        return np.asarray(x)

    def add_at(self, target: Any, index: tuple, values: Any) -> Any:
        """``target[index] += values`` with repeated indices accumulated (in place).

        ``cupy.add.at`` has no complex atomics, so a contiguous complex target is
        added to through its interleaved real view (no object-sized temporaries)."""
        values = cupy.asarray(values, dtype=target.dtype)
        if target.dtype.kind == "c":
            split = interleaved_index(index, target.ndim) if target.flags.c_contiguous else None
            if split is None:
                real, imag = target.real.copy(), target.imag.copy()
                cupy.add.at(real, index, values.real)
                cupy.add.at(imag, index, values.imag)
                target[...] = real + 1j * imag
                return target
            flat = target.view(self.real_dtype)
            re_index, im_index = split
            cupy.add.at(flat, re_index, cupy.ascontiguousarray(values.real))
            cupy.add.at(flat, im_index, cupy.ascontiguousarray(values.imag))
            return target
        cupy.add.at(target, index, values)
        return target

    def synchronize(self, x: Any = None) -> Any:
        """Wait for all work queued on the current device; returns ``x``."""
        cupy.cuda.get_current_stream().synchronize()
        return x
