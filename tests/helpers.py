"""Shared test helpers: dtype-aware comparisons.

Every comparison names the precision it expects; there is no permissive default. The
tolerance is ``factor * eps_tol[dtype] * max(1, max|expected|)`` absolute plus the same
relative term, so it can actually fail on a real error (a float32 value off by 1e-3
relative fails; float32 rounding passes).
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: per-precision tolerance (relative to the scale of the expected values)
TOLERANCES = {
    np.dtype(np.float32): 2e-6,
    np.dtype(np.float64): 1e-13,
}


def precision(dtype: Any) -> np.dtype:
    """The real precision of ``dtype``: ``"float32"``, ``np.complex64``, a backend's dtype
    name ... all map to float32 or float64."""
    if isinstance(dtype, str) and dtype in ("float32", "float64"):
        return np.dtype(dtype)
    dt = np.dtype(dtype)
    if dt.kind == "c":
        return np.dtype(np.float32) if dt.itemsize == 8 else np.dtype(np.float64)
    if dt.kind == "f" and dt.itemsize in (4, 8):
        return dt
    raise ValueError(f"assert_close needs a float32/float64/complex64/complex128 precision, got {dtype!r}")


def tolerance(dtype: Any, factor: float = 1.0) -> float:
    """The relative tolerance for ``dtype`` times ``factor`` (for long accumulations)."""
    return float(TOLERANCES[precision(dtype)] * factor)


def assert_close(actual: Any, expected: Any, dtype: Any, *, factor: float = 1.0, err_msg: str = "") -> None:
    """Assert ``actual ≈ expected`` to the precision of ``dtype``.

    ``factor`` widens the tolerance for computations whose rounding error grows (sums over
    many terms, FFTs of large arrays); say why where you use it. Arrays are compared on the
    host (``np.asarray``); shapes must match exactly.
    """
    actual = np.asarray(actual)
    expected = np.asarray(expected)
    if actual.shape != expected.shape:
        raise AssertionError(f"shape mismatch: actual {actual.shape} vs expected {expected.shape}. {err_msg}")
    tol = tolerance(dtype, factor)
    scale = max(1.0, float(np.max(np.abs(expected)))) if expected.size else 1.0
    np.testing.assert_allclose(actual, expected, rtol=tol, atol=tol * scale, err_msg=err_msg)
