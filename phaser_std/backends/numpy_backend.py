"""The numpy backend: the reference every other backend is tested against."""

from __future__ import annotations

from typing import Any

import numpy as np

from phaser_core.backend import BaseBackend


class NumpyBackend(BaseBackend):
    """CPU arrays with numpy; ``add_at`` accumulates in place with ``np.add.at``.

    FFTs use :mod:`scipy.fft` (the same pocketfft as ``numpy.fft``, but complex64 batches
    stay complex64 and run ~4x faster: 9 vs 41 ms for a (64, 4, 64, 64) batch)."""

    name = "numpy"
    xp = np

    @property
    def fft(self) -> Any:
        # imported on first use (a dict lookup afterwards): the memory planner's numpy
        # overhead constant counts scipy.fft's pages in the run, not in the imports
        import scipy.fft

        return scipy.fft

    def add_at(self, target: Any, index: tuple, values: Any) -> Any:
        np.add.at(target, index, values)
        return target

    def get_windows(self, arr: Any, starts: Any, shape: tuple[int, int]) -> Any:
        """One slice copy per window into a new ``(B, ..., Ny, Nx)`` array: 5-8x faster
        than the index-array gather, which numpy moves element by element (64 windows of
        64² from an (8, 300, 300) complex64 object: 0.92 against 4.2 ms)."""
        ny, nx = int(shape[0]), int(shape[1])
        corners = np.asarray(starts).tolist()
        out = np.empty((len(corners),) + arr.shape[:-2] + (ny, nx), dtype=arr.dtype)
        for k, (y, x) in enumerate(corners):
            out[k] = arr[..., y:y + ny, x:x + nx]
        return out

    def divide_real(self, z: Any, r: Any) -> Any:
        """``z / r`` for real ``r``, with the same bits as numpy's ``z / r`` for finite values:
        numpy makes ``r`` complex, and its complex division by ``r + 0j`` multiplies each
        part by ``1 / r`` (numpy 2.4). Here the reciprocal is taken once on the real array,
        2-3.5x faster (1.8 against 0.56 ms for an (8, 300, 300) complex64 object). A
        complex ``r``: an ordinary division."""
        if not np.iscomplexobj(z) or np.iscomplexobj(r):
            return z / r
        dtype = np.result_type(z, r)
        recip = 1 / np.asarray(r, dtype=np.empty((), dtype).real.dtype)
        out = np.empty(np.broadcast_shapes(np.shape(z), np.shape(r)), dtype=dtype)
        np.multiply(z.real, recip, out=out.real)
        np.multiply(z.imag, recip, out=out.imag)
        return out

    def add_windows(self, target: Any, starts: Any, values: Any) -> Any:
        """In place, one slice-add per window (~10x faster than ``np.add.at``'s
        per-element loop)."""
        ny, nx = values.shape[-2:]
        for (y, x), v in zip(np.asarray(starts).tolist(), values):
            target[..., y:y + ny, x:x + nx] += v
        return target
