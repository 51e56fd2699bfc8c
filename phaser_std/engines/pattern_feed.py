"""How the groups of an iteration get their patterns: kept on the device, or streamed.

By default the patterns stay on the device on a CPU (where device memory is host memory;
on several CPU lanes large ones split over them, :func:`split_over_lanes`) and are
streamed on a GPU: the host keeps them (corner-centred, in their stored dtype) and
each iteration sends them a block of groups at a time, in group order, so the device holds
one or two blocks (:data:`STREAM_BLOCK_BYTES` each) instead of all N patterns. The engines'
iteration programs then run once per block instead of once per iteration (blocks of equal
size where the group count allows, :func:`block_groups`; else a last, smaller block
compiles a second program); the group steps and their order are the same, so the
reconstruction is too (``grouping.stream_patterns`` sets it either way).
"""

from __future__ import annotations

import collections
from typing import Any, Callable, Iterator

import numpy as np

from phaser_core.data import count_dtype, read_blocks
from phaser_std.engines.chunking import backend_on_cpu

__all__ = ["PatternFeed", "STREAM_BLOCK_BYTES", "LANE_SPLIT_MIN_SAVING", "split_over_lanes", "kept_dtype",
           "corner_centred", "ifftshift_cast", "pixel_sums", "total_counts", "block_groups"]

#: bytes of patterns sent to the device at once when streaming (whole groups; at least one)
STREAM_BLOCK_BYTES = 16 << 20
#: [bytes] patterns kept on CPU lanes are split over them (one copy in all, each group read
#: with one more meeting of the lanes) when that saves at least this much against a copy
#: on every lane (:func:`split_over_lanes`)
LANE_SPLIT_MIN_SAVING = 128 << 20


def split_over_lanes(lanes: int, nbytes: int) -> bool:
    """Whether patterns of ``nbytes`` [bytes] kept on ``lanes`` CPU lanes are split over
    them (:meth:`~phaser_core.backend.BaseBackend.split_rows`) rather than copied to each:
    when the copies would cost :data:`LANE_SPLIT_MIN_SAVING` or more. Small data keep a copy
    per lane, which reads a group without the lanes meeting."""
    return int(lanes) > 1 and (int(lanes) - 1) * int(nbytes) >= LANE_SPLIT_MIN_SAVING


def kept_dtype(bk: Any, patterns: Any, counted: Any = "find") -> np.dtype:
    """The dtype patterns are kept in on ``bk``: counted data's uint8/uint16 (``counted``:
    the integer dtype already found, ``RawData.counted_dtype``, None for not counted; else
    found here, :func:`~phaser_core.data.count_dtype`), other data the backend's real dtype."""
    found = count_dtype(np.asarray(patterns)) if isinstance(counted, str) else counted
    return np.dtype(found or bk.dtype)


def corner_centred(bk: Any, patterns: Any, counted: Any = "find") -> np.ndarray:
    """``(N, Qy, Qx)`` centred patterns [e⁻] -> corner-centred host array in the dtype they
    are kept in: counted data (:func:`~phaser_core.data.count_dtype`) exactly as uint8 (up to
    255 counts) or uint16, other data in the backend's real dtype. ``counted``: the integer
    dtype already found (``RawData.counted_dtype``; None: not counted), else found here."""
    return ifftshift_cast(np.asarray(patterns), kept_dtype(bk, patterns, counted))


def ifftshift_cast(host: np.ndarray, dtype: Any, block_bytes: int = 4 << 20,
                   out: np.ndarray | None = None) -> np.ndarray:
    """``np.fft.ifftshift(host, axes=(-2, -1)).astype(dtype)``, a block of patterns
    (``block_bytes`` of the input) at a time: each block is rolled while it is in the cache
    and cast into its place in the one output array (``out``, of ``host``'s shape, when
    given). Whole-array, the cast and the roll each wrote a new array (0.83-0.92 s for 1 GiB
    of float32 patterns to uint8, blocks 0.37 s; benchmarks/NOTES.md 83)."""
    out = np.empty(host.shape, dtype=dtype) if out is None else out
    flat_in = host.reshape((-1,) + host.shape[-2:])
    flat_out = out.reshape(flat_in.shape)
    for rows, b in read_blocks(flat_in, block_bytes // max(1, host.dtype.itemsize)):
        flat_out[rows] = np.fft.ifftshift(b, axes=(-2, -1))
    return out


def pixel_sums(patterns: np.ndarray, block_bytes: int = 4 << 20) -> np.ndarray:
    """Each pixel's sum over host ``patterns`` ``(N, Qy, Qx)`` [e⁻], ``(Qy, Qx)``: counted
    (uint8/uint16) data exactly in uint64, float data in float64, a block
    (``block_bytes`` of the input) at a time (a memory map's pages given back as read)."""
    acc = np.uint64 if np.dtype(patterns.dtype).kind in "ui" else np.float64
    flat = patterns.reshape((-1,) + patterns.shape[-2:])
    sums = np.zeros(flat.shape[1:], dtype=acc)
    for _, b in read_blocks(flat, block_bytes // max(1, patterns.dtype.itemsize)):
        sums += np.sum(b, axis=0, dtype=acc)
    return sums


def total_counts(patterns: np.ndarray, valid: np.ndarray | None = None) -> float:
    """Σ of host ``patterns`` [e⁻] (:func:`pixel_sums`), so whole-number data give the same
    total however they are stored. ``valid`` ``(Qy, Qx)`` bool: only those pixels."""
    sums = pixel_sums(patterns)
    return float(np.sum(sums if valid is None else sums[valid]))


def block_groups(n_groups: int, group_bytes: int, budget: int | None = None) -> int:
    """Groups per streamed block: whole groups (``group_bytes`` each) within ``budget``
    [bytes] (default :data:`STREAM_BLOCK_BYTES`), at least 1, at most ``n_groups``. Where a
    divisor of ``n_groups`` of at least half the most that fit exists, the largest such
    divisor, so that every block has the same shape and the iteration program compiles once
    (100 groups, 16 fit: blocks of 10, not six of 16 and one of 4); otherwise the most that
    fit, and a last, smaller block takes the rest (its own compiled program)."""
    budget = STREAM_BLOCK_BYTES if budget is None else budget
    n_groups = int(n_groups)
    most = max(1, min(n_groups, int(budget) // max(1, int(group_bytes))))
    even = max(d for d in range(1, most + 1) if n_groups % d == 0) if n_groups > 0 else most
    return even if 2 * even >= most else most


class PatternFeed:
    """The patterns ``(N, Qy, Qx)`` [e⁻] of an engine run, corner-centred, and the blocks of
    them each call of an iteration program reads (:meth:`blocks`).

    ``stream`` None: stream on a GPU, keep on the device on a CPU (see the module
    docstring). Their total (the probe scaling's) is summed once on the host, exactly
    (:func:`total_counts`), whichever way they are kept, so a streamed run and a kept one
    scale the probe alike; ``valid`` (corner-centred ``(Qy, Qx)`` bool): over those pixels."""

    def __init__(self, bk: Any, patterns: Any, counted: Any = "find", stream: bool | None = None,
                 valid: np.ndarray | None = None):
        self.bk = bk
        self.stream = (not backend_on_cpu(bk)) if stream is None else bool(stream)
        source = np.asarray(patterns)
        self.dtype = kept_dtype(bk, source, counted)
        self.shape = tuple(source.shape)
        nbytes = int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize
        self.split = not self.stream and split_over_lanes(getattr(bk, "lanes", 1), nbytes)
        self.host = self.device = None
        # the total is summed from the kept copy (in memory), not from the source again: a
        # memory-mapped file is read once an engine
        if self.split:
            # each lane's rows shifted and cast straight from the source: no whole host copy
            # beside the lanes' (benchmarks/NOTES.md 95)
            sums = []

            def fill(start: int, stop: int, out: np.ndarray) -> None:
                ifftshift_cast(source[start:stop], self.dtype, out=out)
                sums.append(pixel_sums(out))

            self.device = bk.split_rows_from(self.shape[0], self.shape[1:], self.dtype, fill)
            per_pixel = np.sum(sums, axis=0)
            self._total = float(np.sum(per_pixel if valid is None else per_pixel[valid]))
        else:
            host = ifftshift_cast(source, self.dtype)
            self._total = total_counts(host, valid)
            if self.stream:
                self.host = host
            else:
                self.device = bk.step_inputs(host)[0]
        self._in_flight: collections.deque = collections.deque()

    def total_counts(self) -> float:
        """Σ of all patterns [e⁻], summed on the host (:func:`total_counts`)."""
        return self._total

    def run_blocks(self, indices: np.ndarray, call: Callable[[slice, Any, Any], Any]) -> list:
        """``[call(groups, patterns, rows), ...]`` over the :meth:`blocks` of ``indices``, in
        order; each call's output is what the feed waits on before sending a later block."""
        outputs = []
        for groups, patterns, rows in self.blocks(indices):
            outputs.append(call(groups, patterns, rows))
            self.dispatched(outputs[-1])
        return outputs

    def blocks(self, indices: np.ndarray) -> Iterator[tuple[slice, Any, Any]]:
        """``(groups, patterns, rows)`` for the ``(G, B)`` pattern ``indices`` of an
        iteration: the slice of groups a call covers, the patterns it reads on the device and
        the ``(g, B)`` rows of each group in them, on the host (the caller sends them with
        its other per-call arrays, :meth:`~phaser_core.backend.BaseBackend.step_inputs`).
        Kept on the device: one block, all patterns and ``indices`` themselves. Streamed:
        blocks of :func:`block_groups` groups, each with its groups' patterns in group order
        (rows ``0 .. g·B-1``).

        The caller hands each call's output to :meth:`dispatched` (:meth:`run_blocks` does
        both): backends that run asynchronously (jax) would otherwise take every block of the
        iteration onto the device before the first finished, so before sending a block the
        feed waits for all but the newest call, and a block or two are on the device at a
        time."""
        bk = self.bk
        n_groups, size = indices.shape
        if not self.stream:
            yield slice(0, n_groups), self.device, np.asarray(indices, dtype=np.int32)
            return
        per = block_groups(n_groups, size * int(np.prod(self.shape[1:])) * self.dtype.itemsize)
        self._in_flight.clear()
        for start in range(0, n_groups, per):
            sel = indices[start:start + per]
            while len(self._in_flight) > 1:
                bk.synchronize(self._in_flight.popleft())
            # one transfer onto every lane (asarray, then share, would copy the block twice)
            yield (slice(start, start + len(sel)), bk.step_inputs(self.host[sel.reshape(-1)])[0],
                   np.arange(sel.size, dtype=np.int32).reshape(sel.shape))
        self._in_flight.clear()

    def dispatched(self, output: Any) -> None:
        """Note the output of a call that read the latest block (see :meth:`blocks`)."""
        if self.stream:
            self._in_flight.append(output)
