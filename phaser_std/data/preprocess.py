"""Post-load preprocessing steps (the plan's ``post_load`` list).

Each step is ``step(config, data, ctx) -> RawData``: it returns a new
:class:`~phaser_core.data.RawData` and never modifies its input (arrays are copied or
rebuilt before being written). Patterns stay ``(N, Qy, Qx)`` [electrons] with zero angle
at pixel ``(Qy//2, Qx//2)``; every step that changes the detector grid updates
``reciprocal_sampling_invA`` [1/Å per px] and the mask.

Registered names: ``crop_data``, ``bin``, ``pad``, ``scale``, ``poisson``,
``drop_nan_patterns``, ``center_diffraction``, ``detector_mask``.
"""

from __future__ import annotations

from typing import Any

import attrs
import numpy as np

from phaser_core.backend import stream_seed
from phaser_core.config import param
from phaser_core.context import LoadContext
from phaser_core.data import CHECK_BLOCK, RawData, read_blocks, read_rows
from phaser_core.data import detector_mask as valid_pixels_of
from phaser_core.errors import DataError

from phaser_core.config import yx_int_pair as _int_pair

from .loaders._common import int_pair_or_none




def _optional_tuple(v: Any) -> tuple | None:
    return None if v is None else tuple(int(x) for x in v)


def recorded_rotation_deg(data: RawData) -> float:
    """The raster rotation [deg] the data file records (its ``scan_rotation_deg``
    attribute, as ``phaser simulate`` writes), 0 when absent or not a number."""
    value = (getattr(data, "extra", None) or {}).get("scan_rotation_deg")
    try:
        value = float(np.asarray(value, dtype=np.float64).reshape(()))
    except (TypeError, ValueError):
        return 0.0
    return value if np.isfinite(value) else 0.0


def raster_positions(data: RawData) -> np.ndarray | None:
    """The data's scan positions (N, 2) (y, x) [Å]: explicit ones, or the raster
    (``scan_shape``, ``scan_step_A``, turned by :func:`recorded_rotation_deg`) as
    :func:`phaser_std.physics.scan.raster_scan` builds it: the run's scan before the
    plan's ``init.scan.rotation_deg``."""
    if data.scan_positions_A is not None:
        return np.asarray(data.scan_positions_A, dtype=np.float64)
    if data.scan_shape is not None and data.scan_step_A is not None:
        from phaser_std.physics.scan import raster_scan

        return raster_scan(data.scan_shape, data.scan_step_A, recorded_rotation_deg(data))
    return None


# ---------------------------------------------------------------------------------------
# Detector geometry: crop, bin, pad
# ---------------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class CropConfig:
    """Crop the detector to ``size`` about the zero-angle pixel and/or the raster scan to
    ``scan`` = [y_start, y_stop, x_start, x_stop] (python slices of scan rows/columns)."""

    size: int | tuple[int, int] | None = param(None, unit="px", doc="(Qy, Qx) detector size to keep, centred on Q//2",
                                          converter=int_pair_or_none)
    scan: tuple[int, ...] | None = param(None, doc="[y_start, y_stop, x_start, x_stop] of the raster to keep",
                                         converter=_optional_tuple)


def crop_data(config: CropConfig, data: RawData, ctx: LoadContext) -> RawData:
    """Crop the detector (keeping the zero angle at the new Q//2; the detector sampling is
    unchanged, so the real-space pixel 1/(Q·Δk) grows) and/or the raster scan."""
    patterns = data.patterns
    changes: dict[str, Any] = {}
    if config.size is not None:
        qy, qx = data.pattern_shape
        ny, nx = config.size
        if not (0 < ny <= qy and 0 < nx <= qx):
            raise DataError(f"crop_data: size {config.size} must be positive and fit the detector {(qy, qx)}")
        y0, x0 = qy // 2 - ny // 2, qx // 2 - nx // 2
        patterns = patterns[:, y0:y0 + ny, x0:x0 + nx]
        if data.mask is not None:
            changes["mask"] = np.array(data.mask[y0:y0 + ny, x0:x0 + nx])
    if config.scan is not None:
        if len(config.scan) != 4:
            raise DataError(f"crop_data: scan must be [y_start, y_stop, x_start, x_stop], got {list(config.scan)}")
        if data.scan_shape is None:
            raise DataError("crop_data: cropping the scan needs a raster scan_shape (give it in the plan)")
        sy, sx = data.scan_shape
        ys = range(sy)[slice(config.scan[0], config.scan[1])]
        xs = range(sx)[slice(config.scan[2], config.scan[3])]
        if not len(ys) or not len(xs):
            raise DataError(f"crop_data: scan crop {list(config.scan)} of the {sy}x{sx} raster is empty")
        idx = (np.asarray(ys)[:, None] * sx + np.asarray(xs)[None, :]).ravel()
        pos = raster_positions(data)
        patterns = patterns[idx]
        changes["scan_shape"] = (len(ys), len(xs))
        if pos is not None:
            changes["scan_positions_A"] = pos[idx]
    changes["patterns"] = np.ascontiguousarray(patterns) if patterns is not data.patterns else np.array(patterns)
    return data.replace(**changes)


@attrs.frozen(kw_only=True)
class BinConfig:
    """Sum ``factor`` x ``factor`` blocks of detector pixels."""

    factor: int | tuple[int, int] = param((2, 2), unit="px", doc="bin factor (y, x) or one integer",
                                    converter=_int_pair)


def _bin_layout(q: int, f: int) -> tuple[int, int]:
    """(first pixel, number of blocks) so that pixel q//2 is a middle pixel of block n//2
    (the centre for odd ``f``; either of the two middle ones for even ``f``), keeping as
    many blocks as fit."""
    n = q // f
    while n > 0:
        for k in dict.fromkeys((f // 2, (f - 1) // 2)):
            start = q // 2 - (n // 2) * f - k
            if start >= 0 and start + n * f <= q:
                return start, n
        n -= 1
    raise DataError(f"bin: factor {f} is larger than the detector ({q} px)")


def bin_detector(config: BinConfig, data: RawData, ctx: LoadContext) -> RawData:
    """Sum blocks of detector pixels (counts are conserved; Δk is multiplied by the factor).

    The blocks are laid so that the zero angle (pixel Q//2) stays at the new pixel n//2,
    n the binned size: exactly at its centre for odd ``f``, ½ old pixel (1/(2f) new pixel)
    off it for even ``f``, which no block layout avoids. Pixels outside whole blocks are
    dropped. A binned pixel is valid when every pixel in its block is. Integer patterns keep
    their dtype while the sums fit it, else the smallest integer type that holds them.
    """
    fy, fx = config.factor
    if fy < 1 or fx < 1:
        raise DataError(f"bin: factor must be positive, got {config.factor}")
    qy, qx = data.pattern_shape
    ny, nx = qy // fy, qx // fx
    if ny == 0 or nx == 0:
        raise DataError(f"bin: factor {config.factor} is larger than the detector {(qy, qx)}")
    (cy, ny), (cx, nx) = _bin_layout(qy, fy), _bin_layout(qx, fx)
    p = np.asarray(data.patterns)[:, cy:cy + ny * fy, cx:cx + nx * fx]
    sums = p.reshape(p.shape[0], ny, fy, nx, fx).sum(axis=(2, 4), dtype=np.float64)
    binned = sums.astype(_whole_sums_dtype(p.dtype, sums))
    mask = None
    if data.mask is not None:
        m = np.asarray(data.mask, dtype=bool)[cy:cy + ny * fy, cx:cx + nx * fx]
        mask = m.reshape(ny, fy, nx, fx).all(axis=(1, 3))
    recip = None
    if data.reciprocal_sampling_invA is not None:
        recip = (data.reciprocal_sampling_invA[0] * fy, data.reciprocal_sampling_invA[1] * fx)
    return data.replace(patterns=binned, mask=mask, reciprocal_sampling_invA=recip)


@attrs.frozen(kw_only=True)
class PadConfig:
    """Pad the detector to ``size`` about the zero-angle pixel."""

    size: int | tuple[int, int] = param(unit="px", doc="(Qy, Qx) detector size after padding", converter=_int_pair)
    value: float = param(0.0, unit="e", doc="value of the added pixels")
    mask_padding: bool = param(True, doc="mark the added pixels invalid in the mask (engines leave them free)")


def pad(config: PadConfig, data: RawData, ctx: LoadContext) -> RawData:
    """Pad the detector (zero angle stays at Q//2; Δk unchanged, so the real-space pixel
    1/(Q·Δk) shrinks)."""
    qy, qx = data.pattern_shape
    ny, nx = config.size
    if ny < qy or nx < qx:
        raise DataError(f"pad: size {config.size} is smaller than the detector {(qy, qx)}; use crop_data")
    y0, x0 = ny // 2 - qy // 2, nx // 2 - qx // 2
    src = np.asarray(data.patterns)
    out = np.full((src.shape[0], ny, nx), config.value, dtype=src.dtype)
    out[:, y0:y0 + qy, x0:x0 + qx] = src
    mask = data.mask
    if config.mask_padding or mask is not None:
        new_mask = np.zeros((ny, nx), dtype=bool) if config.mask_padding else np.ones((ny, nx), dtype=bool)
        new_mask[y0:y0 + qy, x0:x0 + qx] = True if mask is None else np.asarray(mask, dtype=bool)
        mask = new_mask
    return data.replace(patterns=out, mask=mask)


# ---------------------------------------------------------------------------------------
# Intensity: scale, Poisson resampling
# ---------------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class ScaleConfig:
    """Multiply the patterns by ``factor`` (e.g. 1/counts-per-electron)."""

    factor: float = param(unit="e/count", doc="multiplier that converts the data to electrons", converter=float)


def scale(config: ScaleConfig, data: RawData, ctx: LoadContext) -> RawData:
    """Multiply every pattern by ``factor`` (a new array). Integer patterns (raw ADU or
    counts) become float32: in their own dtype a factor below 1 truncated to 0, every
    pattern with it (float32 holds whole numbers exactly up to 2²⁴, so scaled counts that are
    still whole are still counted data)."""
    p = np.asarray(data.patterns)
    dtype = p.dtype if p.dtype.kind in "fc" else np.dtype(np.float32)
    return data.replace(patterns=p.astype(dtype, copy=False) * dtype.type(config.factor))


def _whole_sums_dtype(dtype: np.dtype, sums: np.ndarray) -> np.dtype:
    """The dtype binned patterns keep: float patterns their own; integer ones (sums of
    integers are whole) their own while the largest sum fits it, else the smallest unsigned
    (or signed) integer that holds it: in their own dtype uint8 sums past 255 wrapped."""
    if dtype.kind in "fc":
        return dtype
    top, low = (float(sums.max()), float(sums.min())) if sums.size else (0.0, 0.0)
    if np.iinfo(dtype).min <= low and top <= np.iinfo(dtype).max:
        return dtype
    return np.promote_types(np.min_scalar_type(int(low)), np.min_scalar_type(int(top)))


def scan_area_per_position_A2(data: RawData) -> float:
    """Specimen area per scan position [Å²]: the raster step area |s_y·s_x|, or, for
    explicit positions only, the area they cover / N
    (:func:`phaser_std.physics.scan.area_per_position_A2`)."""
    if data.scan_step_A is not None:
        return abs(float(data.scan_step_A[0]) * float(data.scan_step_A[1]))
    pos = raster_positions(data)
    if pos is None or len(pos) < 2:
        raise DataError("the area per scan position is unknown: give scan_step_A in the plan")
    from phaser_std.physics.scan import area_per_position_A2

    area = area_per_position_A2(pos)
    if area is None:
        raise DataError("the scan positions all coincide: give scan_step_A in the plan")
    return area


@attrs.frozen(kw_only=True)
class PoissonConfig:
    """Rescale to a dose and draw Poisson counts (seeded, stream ``"poisson-resample"``)."""

    dose: float | None = param(None, unit="e/Å²", doc="target dose; the mean pattern sum becomes dose·(area per "
                               "position). null: keep the current counts")
    scale: float | None = param(None, doc="multiply by this before the draw (instead of dose)")
    seed: int | None = param(None, doc="random seed; null: the plan's seed")


def poisson(config: PoissonConfig, data: RawData, ctx: LoadContext) -> RawData:
    """Poisson resampling at a target dose [e/Å²]: expected counts are the patterns scaled so
    that the mean pattern sum is ``dose``·(scan area per position); the draw uses
    ``stream_seed(seed, "poisson-resample")``, so the same seed gives the same counts."""
    if config.dose is not None and config.scale is not None:
        raise DataError("poisson: give either dose or scale, not both")
    p = np.asarray(data.patterns)
    factor = 1.0
    if config.dose is not None:
        if config.dose <= 0:
            raise DataError(f"poisson: dose must be positive, got {config.dose} e/Å²")
        sums = p.sum(axis=(-2, -1), dtype=np.float64)
        mean_sum = float(np.nanmean(sums))
        if not mean_sum > 0:
            raise DataError("poisson: the patterns hold no signal (mean sum <= 0); cannot scale to a dose")
        factor = config.dose * scan_area_per_position_A2(data) / mean_sum
    elif config.scale is not None:
        factor = float(config.scale)
    rng = np.random.default_rng(stream_seed(ctx.seed if config.seed is None else config.seed, "poisson-resample"))
    counts = np.empty(p.shape, dtype=p.dtype if p.dtype.kind == "f" else np.float32)
    # a block of patterns at a time (whole-array float64 expectations and int64 draws took
    # ~8x the patterns' memory); the generator draws in the same order, so the counts are
    # those of one whole-array draw
    for rows, b in read_blocks(p, CHECK_BLOCK):
        counts[rows] = rng.poisson(np.clip(np.nan_to_num(b.astype(np.float64) * factor, nan=0.0), 0.0, None))
    return data.replace(patterns=counts, extra={**data.extra, "poisson_scale": factor})


# ---------------------------------------------------------------------------------------
# Bad patterns, centring, detector mask
# ---------------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class DropNanConfig:
    """Drop patterns containing NaN (fraction above ``threshold``) or with no signal."""

    threshold: float = param(0.0, doc="drop a pattern whose fraction of NaN pixels exceeds this (0: any NaN)")
    min_counts: float = param(0.0, unit="e", doc="drop a pattern whose finite sum is <= this")
    fill: bool = param(True, doc="set the remaining NaN pixels of kept patterns to 0 and mark those pixels "
                       "invalid in the detector mask (in every pattern)?")


def drop_nan_patterns(config: DropNanConfig, data: RawData, ctx: LoadContext) -> RawData:
    """Remove bad patterns and their scan positions.

    The kept positions become explicit (a raster is expanded first, so ``scan_shape`` is
    cleared when anything is dropped); ``extra["kept_indices"]`` lists the kept patterns.
    """
    p = np.asarray(data.patterns)
    nan = np.isnan(p)
    frac = nan.mean(axis=(-2, -1))
    sums = np.nansum(p, axis=(-2, -1), dtype=np.float64)
    bad = (frac > config.threshold) | (sums <= config.min_counts) | ~np.isfinite(sums)
    if config.threshold == 0.0:
        bad |= frac > 0
    keep = np.nonzero(~bad)[0]
    if keep.size == 0:
        dead = np.isnan(p).all(axis=0)
        hint = (f"; {int(dead.sum())} pixel(s) are NaN in every pattern (dead): keep the patterns with "
                "threshold > 0 (fill marks NaN pixels invalid) or mark the pixels with detector_mask"
                if dead.any() and not dead.all() else "")
        raise DataError(f"drop_nan_patterns: every one of the {len(p)} patterns is NaN or empty{hint}")
    patterns = p[keep]  # fancy indexing: a new array
    mask = data.mask
    if config.fill and np.isnan(patterns).any():
        mask = nan_pixels_invalid(patterns, mask)
        patterns = np.nan_to_num(patterns, nan=0.0)
    if keep.size == len(p):
        return data.replace(patterns=np.array(patterns) if patterns is p else patterns, mask=mask,
                            extra={**data.extra, "kept_indices": keep})
    pos = raster_positions(data)
    if pos is None:
        raise DataError("drop_nan_patterns: dropping patterns needs the scan positions or scan_shape + scan_step_A")
    return data.replace(patterns=patterns, scan_positions_A=pos[keep], scan_shape=None, mask=mask,
                        extra={**data.extra, "kept_indices": keep, "dropped_indices": np.nonzero(bad)[0]})


def nan_pixels_invalid(patterns: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """The detector mask ``(Qy, Qx)`` (True: valid) with every pixel that is NaN in any of
    ``patterns`` ``(N, Qy, Qx)`` marked invalid, so the engines leave the zero it is filled
    with out of the fit (a dead pixel would otherwise pull the model's intensity to 0)."""
    valid = ~np.isnan(patterns).any(axis=0)
    return valid if mask is None else np.asarray(mask, dtype=bool) & valid


def pacbed(data: RawData, n_sample: int | None = None) -> np.ndarray:
    """Position-averaged pattern (Qy, Qx) [e⁻] float64 over ``n_sample`` evenly spaced
    patterns when given (fewer reads of large data). NaN values are left out of the mean; a
    pixel NaN in every pattern (a dead pixel) stays NaN, so callers can tell it from a dark
    one; masked pixels are 0."""
    pats = data.patterns
    if n_sample is not None and int(pats.shape[0]) > n_sample:
        rows = np.linspace(0, int(pats.shape[0]) - 1, n_sample).astype(int)
        sample = np.empty((rows.size,) + tuple(pats.shape[1:]), dtype=pats.dtype)
        for k, row in enumerate(read_rows(pats, rows)):  # each row's pages given back once copied
            sample[k] = row
        pats = sample
    pacbed_ = nanmean_patterns(np.asarray(pats))
    if data.mask is not None:
        pacbed_ = np.where(np.asarray(data.mask, dtype=bool), pacbed_, 0.0)  # also where a masked pixel is ±inf
    return pacbed_


def nanmean_patterns(pats: np.ndarray, block: int = CHECK_BLOCK) -> np.ndarray:
    """``np.nanmean(pats, axis=0)`` in float64 over patterns ``(N, Qy, Qx)``, ``block``
    values at a time: a whole-array float64 copy and NaN mask took ~5x the patterns' size
    (1 GiB of float32 patterns: 5 s, and more than this machine's memory for 4 GiB;
    benchmarks/NOTES.md 85). NaN where a pixel is NaN in every pattern."""
    total = np.zeros(pats.shape[1:], dtype=np.float64)
    count = np.zeros(pats.shape[1:], dtype=np.int64)
    whole = pats.dtype.kind in "biu"  # integers hold no NaN
    for _, view in read_blocks(pats, block):
        b = view.astype(np.float64)
        if whole:
            total += b.sum(axis=0)
            count += b.shape[0]
            continue
        finite = ~np.isnan(b)
        total += np.where(finite, b, 0.0).sum(axis=0)
        count += finite.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def centre_of_mass(img: np.ndarray) -> tuple[float, float]:
    """Intensity centre of mass (y, x) [px] of a 2D image."""
    w = np.clip(np.nan_to_num(img), 0.0, None)
    tot = w.sum()
    if tot <= 0:
        raise DataError("center_diffraction: the PACBED has no signal")
    yy, xx = np.indices(w.shape)
    return float((w * yy).sum() / tot), float((w * xx).sum() / tot)


def _disc_centre(data: RawData) -> tuple[float, float]:
    """The PACBED's bright-field disc centroid (y, x) [px]
    (:func:`phaser_std.data.parallax.disc_centre`)."""
    from phaser_std.data.parallax import disc_centre

    found = disc_centre(pacbed(data), valid_pixels_of(data))
    if found is None:
        raise DataError("center_diffraction: no bright-field disc in the PACBED (method: disc); use method: com")
    return found[0], found[1]


def _shift_int(a: np.ndarray, dy: int, dx: int, fill: Any) -> np.ndarray:
    """Shift the last two axes by integer (dy, dx) pixels, filling with ``fill`` (no wrap)."""
    out = np.full_like(a, fill)
    qy, qx = a.shape[-2:]
    ys, yd = (slice(0, qy - dy), slice(dy, qy)) if dy >= 0 else (slice(-dy, qy), slice(0, qy + dy))
    xs, xd = (slice(0, qx - dx), slice(dx, qx)) if dx >= 0 else (slice(-dx, qx), slice(0, qx + dx))
    out[..., yd, xd] = a[..., ys, xs]
    return out


@attrs.frozen(kw_only=True)
class CenterConfig:
    """Shift every pattern so the PACBED's centre sits on pixel (Qy//2, Qx//2)."""

    subpixel: bool = param(True, doc="bilinear sub-pixel shift; false: whole pixels only")
    method: str = param("com", doc="'com': the PACBED's centre of mass (phaserEM's diffraction_align); 'disc': "
                        "the bright-field disc's centroid (its pixels above half the largest), which "
                        "dark-field scattering to one side (a tilted crystal) does not pull",
                        validator=attrs.validators.in_(("com", "disc")))


def center_diffraction(config: CenterConfig, data: RawData, ctx: LoadContext) -> RawData:
    """Align the PACBED's centre of mass (``method: com``) or its bright-field disc's
    centroid (``disc``) to (Qy//2, Qx//2).

    The shift is d = Q//2 − centre [px]; whole pixels move with zero fill, the fractional part
    (``subpixel``) by bilinear interpolation, which conserves counts away from the edges
    (integer patterns then become float32; a whole-pixel shift keeps their dtype).
    The mask moves with the patterns (a pixel is valid when every contributing one is);
    pixels shifted in from outside are marked invalid. ``extra["center_shift_px"]`` records d.
    """
    qy, qx = data.pattern_shape
    cy, cx = centre_of_mass(pacbed(data)) if config.method == "com" else _disc_centre(data)
    dy, dx = qy // 2 - cy, qx // 2 - cx
    if not config.subpixel:
        dy, dx = float(round(dy)), float(round(dx))
    iy, ix = int(np.floor(dy)), int(np.floor(dx))
    fy, fx = dy - iy, dx - ix
    p = np.asarray(data.patterns)
    m = np.ones((qy, qx), dtype=bool) if data.mask is None else np.asarray(data.mask, dtype=bool)
    terms = [(sy, sx, wy * wx) for sy, wy in ((iy, 1.0 - fy), (iy + 1, fy))
             for sx, wx in ((ix, 1.0 - fx), (ix + 1, fx)) if wy * wx > 1e-12]
    whole = len(terms) == 1 and abs(terms[0][2] - 1.0) <= 1e-12
    # counts stay whole numbers on a whole-pixel shift; interpolated they are float32 (an
    # integer dtype would truncate every weight below 1 to 0: all-zero patterns)
    dtype = p.dtype if whole or p.dtype.kind in "fc" else np.dtype(np.float32)
    out = np.zeros(p.shape, dtype=dtype)
    flat_out = out.reshape(-1, qy, qx)
    # a block at a time: no whole-array temporaries
    for rows, block in read_blocks(p.reshape(-1, qy, qx), CHECK_BLOCK):
        acc = flat_out[rows]
        for sy, sx, w in terms:
            shifted = _shift_int(block, sy, sx, 0)
            if whole:
                acc[...] = shifted
            else:
                acc += dtype.type(w) * shifted.astype(dtype, copy=False)
    mask = np.ones((qy, qx), dtype=bool)
    for sy, sx, _ in terms:
        mask &= _shift_int(m, sy, sx, False)
    new_mask = mask if (data.mask is not None or not mask.all()) else None
    return data.replace(patterns=out, mask=new_mask, extra={**data.extra, "center_shift_px": (dy, dx)})


def _rects(v: Any) -> tuple[tuple[int, int, int, int], ...]:
    if v is None:
        return ()
    rects = tuple(tuple(int(x) for x in r) for r in v)
    for r in rects:
        if len(r) != 4:
            raise ValueError(f"a mask rectangle is [y_start, y_stop, x_start, x_stop], got {list(r)}")
    return rects


@attrs.frozen(kw_only=True)
class DetectorMaskConfig:
    """Mark detector pixels invalid: from a file (True/nonzero = valid) and/or rectangles."""

    path: str | None = param(None, doc=".npy, .tif or .h5 file of a (Qy, Qx) mask, nonzero = valid pixel")
    key: str = param("mask", doc="dataset name when path is an .h5 file")
    rectangles: tuple[tuple[int, int, int, int], ...] = param(
        (), unit="px", doc="list of [y_start, y_stop, x_start, x_stop] regions to mark invalid", converter=_rects)
    invert: bool = param(False, doc="the file marks the INVALID pixels instead")
    zero_masked: bool = param(False, doc="also set the masked pixels of the patterns to 0")


def _read_mask_file(path: Any, key: str) -> np.ndarray:
    suffix = path.suffix.lower()
    if suffix == ".npy":
        return np.load(path, allow_pickle=False)
    if suffix in (".tif", ".tiff"):
        import tifffile

        return tifffile.imread(path)
    if suffix in (".h5", ".hdf5"):
        import h5py

        with h5py.File(path, "r") as f:
            if key not in f:
                raise DataError(f"{path}: no dataset {key!r} for the detector mask (set key)")
            return f[key][()]
    raise DataError(f"detector_mask: unsupported mask file {path} (use .npy, .tif or .h5)")


def detector_mask(config: DetectorMaskConfig, data: RawData, ctx: LoadContext) -> RawData:
    """Combine (AND) the data's mask with a mask file and invalid rectangles."""
    shape = data.pattern_shape
    mask = np.ones(shape, dtype=bool) if data.mask is None else np.array(data.mask, dtype=bool)
    if config.path is not None:
        path = ctx.resolve(config.path)
        if not path.exists():
            raise DataError(f"detector_mask: file {path} does not exist")
        fm = np.asarray(_read_mask_file(path, config.key)) != 0
        if fm.shape != shape:
            raise DataError(f"detector_mask: {path} has shape {fm.shape}, the detector is {shape}")
        mask &= ~fm if config.invert else fm
    for y0, y1, x0, x1 in config.rectangles:
        mask[y0:y1, x0:x1] = False
    patterns = data.patterns
    if config.zero_masked:
        patterns = np.where(mask, np.asarray(patterns), 0).astype(np.asarray(patterns).dtype)
    return data.replace(patterns=patterns, mask=mask)


def register_all(register) -> None:
    register("crop_data", crop_data, config=CropConfig, aliases=("crop",))
    register("bin", bin_detector, config=BinConfig)
    register("pad", pad, config=PadConfig)
    register("scale", scale, config=ScaleConfig)
    register("poisson", poisson, config=PoissonConfig)
    register("drop_nan_patterns", drop_nan_patterns, config=DropNanConfig, aliases=("drop_nans",))
    register("center_diffraction", center_diffraction, config=CenterConfig, aliases=("diffraction_align",))
    register("detector_mask", detector_mask, config=DetectorMaskConfig)
