"""Index arithmetic shared by backends."""

from __future__ import annotations


def interleaved_index(index: tuple, ndim: int) -> tuple[tuple, tuple] | None:
    """Indices into the interleaved (re, im) float view of a complex array for ``index``.

    The view doubles the last axis; an integer-array index ``i`` on it becomes ``2i`` (real
    parts) and ``2i + 1`` (imaginary parts). ``None`` when the last axis is not indexed by
    an integer array (the caller falls back to copies).
    """
    index = tuple(index) if isinstance(index, tuple) else (index,)
    if len(index) != ndim:
        return None
    last = index[-1]
    if not hasattr(last, "dtype") or last.dtype.kind not in "iu":
        return None
    return index[:-1] + (2 * last,), index[:-1] + (2 * last + 1,)
