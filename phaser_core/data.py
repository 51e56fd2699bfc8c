"""Raw data as loaders return it and preprocessing steps pass it on."""

from __future__ import annotations

import functools
import mmap
from typing import Any, Iterator

import attrs
import numpy as np


@attrs.frozen(kw_only=True)
class RawData:
    """Diffraction patterns and the acquisition metadata found with them.

    ``patterns`` is ``(N, Qy, Qx)`` float [electrons] in host memory (a numpy array or a
    memory map), or unsigned integers for counted data (a run stores float patterns that
    hold whole electrons as uint8/uint16 after ``post_load``: :func:`compact_counts`), zero
    scattering angle at pixel ``(Qy//2, Qx//2)``, detector axes already
    parallel to the object axes. A raster scan records ``scan_shape`` (Ny, Nx) with
    N = Ny·Nx in row-major order. Missing metadata is ``None``; plan values override it.
    """

    patterns: Any
    #: (ky, kx) sampling of the detector [1/Å per pixel]
    reciprocal_sampling_invA: tuple[float, float] | None = None
    energy_eV: float | None = None
    convergence_angle_mrad: float | None = None
    #: CONVENTIONS sign: positive = underfocus (crossover downstream of the entrance surface) [Å]
    defocus_A: float | None = None
    #: (y, x) beam tilt [mrad] (CONVENTIONS: it enters the propagator), the reconstruction's
    #: initial global tilt; None: not recorded (zero)
    tilt_mrad: tuple[float, float] | None = None
    #: (N, 2) (y, x) [Å], or None for a raster scan built from ``scan_step_A``
    scan_positions_A: np.ndarray | None = None
    scan_shape: tuple[int, int] | None = None
    #: (y, x) raster step [Å]
    scan_step_A: tuple[float, float] | None = None
    #: (Qy, Qx) bool, True where the detector pixel is valid
    mask: np.ndarray | None = None
    #: optional (modes, Ny, Nx) probe that came with the data
    probe: np.ndarray | None = None
    #: ground truth, when the data were simulated (see docs/file-formats.md)
    ground_truth: dict[str, Any] | None = None
    source: str | None = None
    extra: dict[str, Any] = attrs.field(factory=dict)

    @property
    def n_patterns(self) -> int:
        return int(self.patterns.shape[0])

    @property
    def pattern_shape(self) -> tuple[int, int]:
        return (int(self.patterns.shape[-2]), int(self.patterns.shape[-1]))

    def wavelength_A(self) -> float:
        from phaser_core.physics_constants import wavelength_A

        if self.energy_eV is None:
            raise self.missing("energy_eV", "the beam energy [eV]", "raw_data.energy_eV")
        return wavelength_A(self.energy_eV)

    def real_space_sampling_A(self) -> tuple[float, float]:
        """Pixel size [Å] of a real-space grid matching the detector: 1 / (Q · Δk)."""
        if self.reciprocal_sampling_invA is None:
            raise self.missing("reciprocal_sampling_invA", "the detector sampling [1/Å per px]",
                               "raw_data.reciprocal_sampling_invA (or raw_data.angular_sampling_mrad [mrad/px])")
        qy, qx = self.pattern_shape
        return (1.0 / (qy * self.reciprocal_sampling_invA[0]), 1.0 / (qx * self.reciprocal_sampling_invA[1]))

    def missing(self, key: str, what: str, plan_key: str) -> Any:
        """The :class:`~phaser_core.errors.DataError` for metadata ``key`` (``what``, with its
        unit) that neither the data file nor the plan gives; ``plan_key`` is where the plan
        can supply it."""
        from .errors import DataError

        return DataError(f"{self.source or 'the raw data'}: {key} ({what}) is not {self.metadata_source}; "
                         f"set {plan_key} in the plan")

    @property
    def metadata_source(self) -> str:
        """Where missing metadata would have come from, for messages: "in the data file", or
        for a bare .npy array, which holds none, "given (a .npy file holds no metadata)"."""
        if str(self.source or "").lower().endswith(".npy"):
            return "given (a .npy file holds no metadata)"
        return "in the data file"

    def replace(self, **changes: Any) -> "RawData":
        return attrs.evolve(self, **changes)

    @functools.cached_property
    def counted_dtype(self) -> np.dtype | None:
        """:func:`count_dtype` of the patterns, found once (the memory planner and every
        engine ask; a pass over all the patterns). Patterns are not changed in place."""
        return count_dtype(self.patterns)


#: values a block of the pattern checks reads at a time: 4 MiB of float32, so that the
#: several passes of a check over one block run in the cache; 64 MiB blocks took 13-16x as
#: long (0.22 against 0.014-0.017 s for 144 MiB of patterns, their temporaries' fresh pages
#: and the memory traffic; benchmarks/NOTES.md 82)
CHECK_BLOCK = 1 << 20


def _row_blocks(shape: tuple, block: int) -> list[slice]:
    """Slices along the first axis of an array of ``shape`` holding about ``block`` values
    each (at least one row): the pattern checks read a memory map or a non-contiguous view
    a block at a time, where a whole-array ``reshape(-1)`` of a view would copy it all."""
    shape = tuple(shape) or (1,)
    per_row = max(1, int(np.prod(shape[1:], dtype=np.int64)))
    rows = max(1, int(block) // per_row)
    return [slice(i, i + rows) for i in range(0, shape[0], rows)]


def read_only_map(patterns: Any) -> mmap.mmap | None:
    """The read-only file mapping ``patterns`` (or the array it views) lies in: an
    ``np.memmap`` of mode ``"r"`` (the hdf5, npy and empad loaders'); None otherwise."""
    base = patterns
    while base is not None:
        if isinstance(base, np.memmap):
            mm = getattr(base, "_mmap", None)
            return mm if getattr(base, "mode", None) == "r" and isinstance(mm, mmap.mmap) else None
        base = getattr(base, "base", None)
    return None


class PageRelease:
    """Gives back the pages of a read-only file mapping once a pass has read them.

    A pass over memory-mapped patterns (the checks and the compaction here, the engines'
    corner-centred copy) makes every page it touches resident in this process, so a 1 GiB
    float32 file counted 1 GiB more at its peak, beside the copy the pass wrote
    (benchmarks/NOTES.md 94). ``madvise(MADV_DONTNEED)`` drops a read block's pages from the
    process; they stay in the kernel's page cache, and a later read maps them again. Does
    nothing for arrays that are not a read-only mapping (then dropping pages could lose
    data), or where the platform has no ``madvise``."""

    def __init__(self, patterns: Any):
        self._map = read_only_map(patterns) if hasattr(mmap, "MADV_DONTNEED") else None
        self._start = 0
        if self._map is not None:
            try:  # the mapping's address (a read-only view; released at once)
                self._start = np.frombuffer(self._map, dtype=np.uint8, count=1).ctypes.data
            except (TypeError, ValueError):
                self._map = None

    def __call__(self, block: np.ndarray) -> None:
        """Drop the pages under ``block`` (a view into the mapping) [whole pages; those it
        shares with its neighbours too: they are read back when needed]."""
        if self._map is None or block.size == 0:
            return
        low = high = block.ctypes.data
        for n, stride in zip(block.shape, block.strides):
            if stride < 0:
                low += (n - 1) * stride
            else:
                high += (n - 1) * stride
        high += block.itemsize
        page = mmap.PAGESIZE
        begin = max(0, (low - self._start) // page * page)
        end = min(len(self._map), -(-(high - self._start) // page) * page)
        if end > begin:
            try:
                self._map.madvise(mmap.MADV_DONTNEED, begin, end - begin)
            except (OSError, ValueError):  # a file system or kernel that refuses: keep the pages
                self._map = None


def read_blocks(patterns: Any, block: int = CHECK_BLOCK) -> Iterator[tuple[slice, np.ndarray]]:
    """``(rows, view)`` of ``patterns`` a block of rows along the first axis at a time
    (about ``block`` values each, :func:`_row_blocks`), for the passes over all patterns:
    none copies more than a block, and a read-only memory map's pages are given back once
    the caller is done with a block (:class:`PageRelease`, when the next is asked for or the
    loop ends early)."""
    yield from _given_back(patterns, _row_blocks(np.shape(patterns), block))


def read_rows(patterns: Any, rows: Any) -> Iterator[np.ndarray]:
    """Each of ``rows`` (indices along the first axis) of ``patterns`` in turn, as a view,
    for the passes that sample scattered patterns: a read-only memory map's pages under it
    are given back once the caller is done with it (:class:`PageRelease`). Reading the
    whole sample at once kept every row's surroundings mapped at once (the kernel maps a
    large folio, up to 2 MiB, around each row it reads: 209 MiB for 256 rows of a 1 GiB
    file; benchmarks/NOTES.md 106)."""
    for _, view in _given_back(patterns, (int(i) for i in rows)):
        yield view


def _given_back(patterns: Any, keys: Any) -> Iterator[tuple[Any, np.ndarray]]:
    """``(key, patterns[key])`` for each key in turn; a read-only memory map's pages under
    the view are given back (:class:`PageRelease`) once the caller asks for the next one or
    stops early."""
    p = np.asarray(patterns)
    release = PageRelease(patterns)
    for key in keys:
        view = p[key]
        try:
            yield key, view
        finally:
            release(view)


def count_dtype(patterns: np.ndarray, block: int = CHECK_BLOCK) -> np.dtype | None:
    """The unsigned integer dtype that holds ``patterns`` exactly when every value is a
    whole number of electrons in [0, 65535] (counted data): uint8 up to 255 counts, else
    uint16; None for other data. Checked ``block`` values at a time, so that the check
    allocates little."""
    p = np.asarray(patterns)
    whole = p.dtype.kind in "biu"  # integers are whole: only the range to check
    peak = 0.0
    for _, b in read_blocks(patterns if p.ndim else np.atleast_1d(p), block):
        if not b.size:
            continue
        top = b.max()
        if not (b.min() >= 0 and top <= 65535 and (whole or np.array_equal(b, np.rint(b)))):
            return None
        peak = max(peak, float(top))
    return np.dtype(np.uint8) if peak <= 255 else np.dtype(np.uint16)


def compact_counts(data: RawData, block: int = CHECK_BLOCK) -> RawData:
    """``data`` with float patterns that hold counts (:attr:`RawData.counted_dtype`: whole
    electrons in [0, 65535]) stored as those integers, uint8 or uint16: a quarter or half of
    float32's host memory (an eighth or a quarter of float64's) for the rest of the run,
    with the same values; integer patterns likewise where a narrower dtype holds them
    (uint16 counts up to 255 as uint8). The engines keep counted patterns in that dtype
    anyway; the wider array is then released. Other patterns pass through unchanged, and so
    do patterns memory-mapped read-only from a file (:func:`read_only_map`): every pass
    over them gives its pages back (:class:`PageRelease`), so they hold no memory a copy
    would save, and the engines cast them straight into their own copy (a 1 GiB float32
    file of counts: one 256 MiB uint8 copy fewer; benchmarks/NOTES.md 98). Their
    :attr:`RawData.counted_dtype` is found here all the same (one pass), for the engines.
    Cast ``block`` values at a time."""
    p = np.asarray(data.patterns)
    if p.dtype.kind not in "fiu" or p.size == 0:
        return data
    if read_only_map(data.patterns) is not None:
        _ = data.counted_dtype  # the one pass, while the file is being read anyway
        return data
    dtype = data.counted_dtype
    if dtype is None or (p.dtype.kind in "iu" and dtype.itemsize >= p.dtype.itemsize):
        return data
    out = np.empty(p.shape, dtype=dtype)
    for rows, b in read_blocks(data.patterns, block):
        out[rows] = b
    compact = data.replace(patterns=out)
    object.__setattr__(compact, "counted_dtype", dtype)  # found already: no second pass
    return compact


def holds_counts(data: Any, block: int = CHECK_BLOCK) -> bool:
    """Whether every valid pixel of ``data``'s patterns holds a whole, non-negative number
    of electrons (counted data, of any size); pixels the detector ``mask`` marks invalid
    (hot, dead, NaN) are not looked at. No second pass when the patterns are stored as
    counts (``data.counted_dtype``); otherwise ``block`` values at a time, stopping at the
    first block that is not counts."""
    if getattr(data, "counted_dtype", None) is not None:
        return True
    valid = detector_mask(data)
    p = np.asarray(data.patterns)
    whole = p.dtype.kind in "biu"  # integers: only the sign to check
    for _, b in read_blocks(p.reshape(-1, *p.shape[-2:]), block):
        b = b if valid is None else b[:, valid]
        if b.size and not (b.min() >= 0 and (whole or np.array_equal(b, np.rint(b)))):
            return False
    return True


def detector_mask(data: Any) -> np.ndarray | None:
    """``data.mask`` as a ``(Qy, Qx)`` bool array (True: a valid pixel), or None; a
    :class:`~phaser_core.errors.DataError` naming the data's file when its shape is not the
    patterns' (a post_load step that cropped or binned one and not the other)."""
    from .errors import DataError

    mask = getattr(data, "mask", None)
    if mask is None:
        return None
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != tuple(data.pattern_shape):
        source = getattr(data, "source", None) or "the raw data"
        raise DataError(f"{source}: the detector mask is {mask.shape} but the patterns are "
                        f"{tuple(data.pattern_shape)}: give a mask of the detector's shape (crop or bin it with "
                        "the patterns)")
    return mask


#: [e⁻] a run warns when the patterns hold fewer counts than this on average
FEW_COUNTS_PER_PATTERN = 5.0


def mean_counts(data: Any, sample: int = 256) -> float:
    """Mean total count per pattern [e⁻] over the valid pixels, from up to ``sample``
    patterns spread evenly over the scan (non-finite values left out)."""
    p = np.asarray(data.patterns)
    p = p.reshape(-1, *p.shape[-2:])
    if p.shape[0] == 0:
        return 0.0
    rows = np.unique(np.linspace(0, p.shape[0] - 1, min(sample, p.shape[0])).astype(int))
    valid = detector_mask(data)
    # a pattern at a time (:func:`read_rows`), each summed in float64: the whole sample and
    # its float64 copies held 228 MiB more at once for a 1 GiB file
    total = 0.0
    for row in read_rows(p, rows):
        values = (row.reshape(-1) if valid is None else row[valid]).astype(np.float64)
        total += float(np.sum(values[np.isfinite(values)]))
    return total / rows.size


def few_counts_warning(data: Any) -> str | None:
    """A warning for patterns that hold fewer than :data:`FEW_COUNTS_PER_PATTERN` e⁻ on
    average, or None: most likely normalised patterns (a simulation's intensities summing
    to 1), whose scale the noise models' ``eps`` and offsets [e⁻] would misread."""
    counts = mean_counts(data)
    if counts >= FEW_COUNTS_PER_PATTERN:
        return None
    return (f"{data.source or 'the raw data'}: the patterns hold {counts:.3g} counts on average (after post_load); "
            "the engines read them as electrons. If they are normalised or in other units, scale them to "
            "electrons per pattern with `post_load: [{type: scale, factor: ELECTRONS_PER_UNIT}]`")


def nonfinite_patterns(data: RawData, block: int = CHECK_BLOCK) -> list[int]:
    """Indices of the patterns holding NaN or ±inf in a valid pixel (see
    :func:`check_finite`, which makes the same pass); ``[]`` for integer and counted data."""
    valid = detector_mask(data)  # its shape is checked whatever the dtype
    p = np.asarray(data.patterns)
    if p.dtype.kind in "biu" or p.size == 0:
        return []
    if getattr(data, "counted_dtype", None) is not None:
        return []  # whole numbers in [0, 65535]: finite (the pass the engines need anyway)
    valid = None if valid is None else valid.reshape(-1)
    bad: list[int] = []
    for rows, b in read_blocks(data.patterns, block):
        chunk = b.reshape(-1, int(np.prod(p.shape[1:], dtype=np.int64)))  # copies a block at most
        if not np.isfinite(chunk.sum(dtype=np.float64)):
            finite = np.isfinite(chunk if valid is None else chunk[:, valid]).all(axis=1)
            bad.extend((rows.start + np.nonzero(~finite)[0]).tolist())
    return bad


def check_finite(data: RawData, block: int = CHECK_BLOCK) -> None:
    """A :class:`~phaser_core.errors.DataError` naming the data's file when a pattern holds
    NaN or ±inf (it would surface much later as a step-size problem). One pass over the
    patterns, ``block`` values at a time (a float64 block sum is non-finite exactly when a
    value is); integer patterns are skipped, and so are counted ones (``counted_dtype``, one
    pass the engines make anyway) and pixels the detector ``mask`` marks invalid (a dead
    pixel may read NaN). Extra memory: one block."""
    from .errors import DataError

    bad = nonfinite_patterns(data, block)
    if not bad:
        return  # none, or only where the detector mask says the pixel is invalid
    first = ", ".join(map(str, bad[:5])) + (", ..." if len(bad) > 5 else "")
    raise DataError(f"{data.source or 'the raw data'}: {len(bad)} of the {data.n_patterns} patterns hold NaN or "
                    f"infinite values (patterns {first}, counted after post_load); drop them with "
                    "`post_load: [{type: drop_nan_patterns}]` in the plan (options: threshold, min_counts, fill), "
                    "or fix the data")
