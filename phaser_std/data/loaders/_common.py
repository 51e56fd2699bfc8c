"""Pieces every loader shares: detector orientation, metadata overrides, unit conversion.

Detector orientation. A loader's patterns must have their detector axes parallel to the
object axes (CONVENTIONS: y down, x right looking along the beam). The options below are
applied to the detector axes ``(Qy, Qx)`` of every pattern, in this order:

1. ``transpose``: swap Qy and Qx (reflection about the main diagonal);
2. ``flip_y``: reflect Qy (ky -> −ky: the top of the detector becomes the bottom);
3. ``flip_x``: reflect Qx (kx -> −kx);
4. ``rotate90``: ``k`` quarter turns in the sense of ``numpy.rot90(pattern, k)`` (from +x
   toward −y, i.e. counter-clockwise on screen, for positive ``k``).

Reflections and rotations are about the zero-angle pixel ``(Qy//2, Qx//2)``, so it stays
there (for an even axis, edge row/column 0 has no partner and maps onto itself). A
transpose or an odd ``rotate90`` also swaps the two entries of the detector sampling.
"""

from __future__ import annotations

import math
from typing import Any

import attrs
import numpy as np

from phaser_core.config import direction_or_none, param, yx_int_pair_or_none as int_pair_or_none, \
    yx_pair_or_none as pair_or_none
from phaser_core.data import RawData
from phaser_core.errors import DataError
from phaser_core.physics_constants import wavelength_A
from phaser_std.physics.optics import mrad_to_invA






def float_or_none(v: Any) -> float | None:
    return None if v is None else float(v)


@attrs.frozen(kw_only=True)
class LoaderCommon:
    """Keys every bundled loader accepts: detector orientation and metadata overrides.

    Plan values that are not ``null`` replace the file's. Subclass it (keyword-only attrs
    class) to add a loader's own keys.
    """

    flip_y: bool = param(False, doc="reflect the detector's Qy axis about pixel Qy//2 (after transpose)")
    flip_x: bool = param(False, doc="reflect the detector's Qx axis about pixel Qx//2 (after transpose)")
    transpose: bool = param(False, doc="swap the detector axes Qy and Qx (applied first)")
    rotate90: int = param(0, doc="quarter turns like numpy.rot90(pattern, k), about (Qy//2, Qx//2) (applied last)")
    energy_eV: float | None = param(None, unit="eV", doc="beam energy; overrides the file",
                                    converter=float_or_none)
    convergence_angle_mrad: float | None = param(None, unit="mrad", doc="probe semi-angle; overrides the file",
                                                 converter=float_or_none)
    defocus_A: float | None = param(None, unit="Å", doc="defocus, positive = underfocus (= −C10); overrides the file",
                                    converter=float_or_none)
    angular_sampling_mrad: float | tuple[float, float] | None = param(
        None, unit="mrad/px", doc="(y, x) detector sampling (as stored, before orientation); overrides the file",
        converter=pair_or_none)
    reciprocal_sampling_invA: float | tuple[float, float] | None = param(
        None, unit="1/Å per px", doc="(y, x) detector sampling (before orientation); overrides the file "
        "and angular_sampling_mrad", converter=pair_or_none)
    tilt_mrad: tuple[float, float] | None = param(
        None, unit="mrad", doc="(y, x) beam tilt in the object's frame (the detector orientation keys leave it "
        "alone), the reconstruction's initial global tilt; overrides the file", converter=direction_or_none)
    scan_step_A: float | tuple[float, float] | None = param(
        None, unit="Å", doc="(y, x) raster step; overrides the file's step (the hdf5 loader: and the scan positions "
        "the file records; the scan is then the raster of this step)", converter=pair_or_none)
    scan_shape: tuple[int, int] | None = param(None, doc="(ny, nx) raster shape; overrides the file",
                                                converter=int_pair_or_none)


def _centred_flip(n: int) -> np.ndarray:
    """Index map of a reflection about pixel n//2: i -> (2·(n//2) − i) mod n."""
    return (2 * (n // 2) - np.arange(n)) % n


def orientation_indices(shape: tuple[int, int], cfg: Any) -> tuple[bool, np.ndarray, np.ndarray] | None:
    """``(swap, ry, rx)`` with out[i, j] = src[ry[i], rx[j]] (or src[rx[j], ry[i]] when
    ``swap``) for the configured transpose, flips and rotation; ``None`` for the identity."""
    t = bool(getattr(cfg, "transpose", False))
    fy = bool(getattr(cfg, "flip_y", False))
    fx = bool(getattr(cfg, "flip_x", False))
    k = int(getattr(cfg, "rotate90", 0) or 0) % 4
    if not (t or fy or fx or k):
        return None
    swap, ry, rx = False, np.arange(shape[0]), np.arange(shape[1])

    def transpose() -> None:
        nonlocal swap, ry, rx
        swap, ry, rx = not swap, rx, ry

    if t:
        transpose()
    if fy:
        ry = ry[_centred_flip(len(ry))]
    if fx:
        rx = rx[_centred_flip(len(rx))]
    for _ in range(k):  # numpy.rot90(a, 1) == flip_rows(transpose(a))
        transpose()
        ry = ry[_centred_flip(len(ry))]
    return swap, ry, rx


#: the ``RawData.extra`` entry where a loader records the detector keys it applied
#: (:func:`loader_orientation`; :func:`apply_overrides` writes it)
DETECTOR_KEYS_EXTRA = "phaser_detector_keys"


def loader_orientation(cfg: Any) -> dict:
    """The detector keys a loader's config sets, those left at their defaults out:
    ``{"transpose": True}``, ``{}``."""
    out = {k: bool(getattr(cfg, k, False)) for k in ("transpose", "flip_y", "flip_x") if getattr(cfg, k, False)}
    k = int(getattr(cfg, "rotate90", 0) or 0) % 4
    return {**out, "rotate90": k} if k else out


def orient_patterns(patterns: Any, cfg: Any) -> Any:
    """Apply ``transpose``, ``flip_y``, ``flip_x``, ``rotate90`` to the last two axes.

    Flips and rotations are about the zero-angle pixel (Qy//2, Qx//2), which therefore stays
    where CONVENTIONS put it (for an even axis the edge row/column 0 maps onto itself).
    The identity returns ``patterns`` itself; anything else is one gather (one copy).
    """
    idx = orientation_indices(tuple(patterns.shape[-2:]), cfg)
    if idx is None:
        return patterns
    swap, ry, rx = idx
    if swap:
        return patterns[..., rx[None, :], ry[:, None]]
    return patterns[..., ry[:, None], rx[None, :]]


def orient_sampling(sampling: tuple[float, float] | None, cfg: Any) -> tuple[float, float] | None:
    """The (y, x) detector sampling after :func:`orient_patterns`."""
    if sampling is None:
        return None
    swap = bool(getattr(cfg, "transpose", False)) ^ (int(getattr(cfg, "rotate90", 0) or 0) % 2 == 1)
    return (sampling[1], sampling[0]) if swap else (sampling[0], sampling[1])


def orient_mask(mask: np.ndarray | None, cfg: Any) -> np.ndarray | None:
    return None if mask is None else np.ascontiguousarray(orient_patterns(np.asarray(mask, dtype=bool), cfg))


#: pattern dtypes loaders hand on as they are: 8- and 16-bit counts [e⁻]
KEPT_COUNT_DTYPES = (np.dtype(np.uint8), np.dtype(np.uint16))


def stored_dtype(have: Any, dtype: str | np.dtype, keep_counts: bool = True) -> np.dtype:
    """The dtype a loader hands patterns stored as ``have`` on in: uint8/uint16 counts as
    they are (``keep_counts``; whole electrons in a quarter or half of float32's memory,
    as the engines store them), anything else as the run's float ``dtype``."""
    have = np.dtype(have)
    return have if keep_counts and have in KEPT_COUNT_DTYPES else np.dtype(dtype)


def as_host_patterns(p: Any, dtype: str | np.dtype, keep_counts: bool = True) -> Any:
    """One contiguous array of :func:`stored_dtype` (uint8/uint16 counts kept, else
    ``dtype``); a memory map or array of that dtype and layout is returned as is (no copy)."""
    dt = stored_dtype(p.dtype, dtype, keep_counts)
    if isinstance(p, np.ndarray) and p.dtype == dt and p.flags.c_contiguous:
        return p
    return np.ascontiguousarray(p, dtype=dt)


def angular_to_reciprocal(angular_mrad: tuple[float, float], energy_eV: float) -> tuple[float, float]:
    """Detector sampling [mrad/px] -> [1/Å per px]: Δk = Δθ / λ."""
    lam = wavelength_A(energy_eV)
    return (mrad_to_invA(angular_mrad[0], lam), mrad_to_invA(angular_mrad[1], lam))


def check_real_dtype(dtype: Any, name: str) -> None:
    """A :class:`DataError` unless ``dtype`` holds real numbers (intensities [electrons]):
    complex, string or object data cannot be patterns."""
    if np.dtype(dtype).kind not in "biuf":
        raise DataError(f"{name}: the patterns have dtype {np.dtype(dtype)}; they must be real numbers "
                        "(intensities [electrons], integer or float), not complex, text or objects")


def to_stack(patterns: Any, name: str) -> tuple[Any, tuple[int, int] | None]:
    """(Ny, Nx, Qy, Qx) -> (N, Qy, Qx) view and the scan shape; (N, Qy, Qx) unchanged."""
    if patterns.ndim == 4:
        ny, nx = patterns.shape[:2]
        return patterns.reshape(ny * nx, *patterns.shape[2:]), (int(ny), int(nx))
    if patterns.ndim == 3:
        return patterns, None
    raise DataError(f"{name}: patterns must be (Ny, Nx, Qy, Qx) or (N, Qy, Qx), got shape {patterns.shape}")


def apply_overrides(data: RawData, cfg: Any, *, file_angular_mrad: tuple[float, float] | None = None) -> RawData:
    """Replace file metadata by the config values that are not ``None`` and resolve the
    detector sampling: explicit reciprocal sampling wins, then an angular sampling (config,
    then file) converted with the (final) energy."""
    changes: dict[str, Any] = {}
    if data.defocus_A is not None and not math.isfinite(data.defocus_A):
        changes["defocus_A"] = None  # a file's NaN: unknown (the probe then takes the parallax's)
    if data.scan_positions_A is not None and data.scan_step_A is not None and not _positive(data.scan_step_A):
        changes["scan_step_A"] = None  # unused beside recorded positions: a placeholder 0 is unknown
    for key in ("energy_eV", "convergence_angle_mrad", "defocus_A", "tilt_mrad", "scan_step_A", "scan_shape"):
        v = getattr(cfg, key, None)
        if v is not None:
            changes[key] = v
    # for the parallax check, which names a correction as the whole setting; always set,
    # so that a file's own attribute of that name is not taken for it
    changes["extra"] = {**data.extra, DETECTOR_KEYS_EXTRA: loader_orientation(cfg)}
    data = data.replace(**changes)
    check_metadata(data)
    check_positive(getattr(cfg, "scan_step_A", None), "scan_step_A", "Å", data.source)
    if getattr(cfg, "defocus_A", None) is not None and not math.isfinite(cfg.defocus_A):
        raise DataError(f"{data.source or 'the raw data'}: raw_data.defocus_A is {cfg.defocus_A}; give a number "
                        "[Å] (positive = underfocus), or leave it out to use the file's (or the parallax's)")
    recip = getattr(cfg, "reciprocal_sampling_invA", None)
    ang = getattr(cfg, "angular_sampling_mrad", None)
    if recip is not None:
        data = data.replace(reciprocal_sampling_invA=orient_sampling(recip, cfg))
    elif ang is not None or (data.reciprocal_sampling_invA is None and file_angular_mrad is not None):
        ang_y_x = orient_sampling(ang if ang is not None else file_angular_mrad, cfg)
        if data.energy_eV is None:
            raise DataError(f"{data.source}: an angular detector sampling needs energy_eV (plan or file) "
                             "to convert to 1/Å")
        check_positive(ang_y_x, "angular_sampling_mrad", "mrad/px", data.source)
        data = data.replace(reciprocal_sampling_invA=angular_to_reciprocal(ang_y_x, data.energy_eV))
    check_positive(data.reciprocal_sampling_invA, "reciprocal_sampling_invA", "1/Å per px", data.source)
    check_scan_shape(data)
    return data


def check_scan_shape(data: RawData) -> None:
    """A :class:`DataError` when ``scan_shape`` (ny, nx) does not hold one point per pattern
    (also when explicit scan positions make it informational only)."""
    if data.scan_shape is None:
        return
    n = data.scan_shape[0] * data.scan_shape[1]
    if n != data.n_patterns:
        raise DataError(f"{data.source}: scan_shape {data.scan_shape} has {n} points but there are "
                        f"{data.n_patterns} patterns; fix scan_shape in the data file, or set "
                        "raw_data.scan_shape in the plan (it overrides the file's)")


def _positive(value: Any) -> bool:
    values = value if isinstance(value, (tuple, list)) else (value,)
    return all(isinstance(v, (int, float, np.integer, np.floating)) and math.isfinite(v) and v > 0 for v in values)


def check_positive(value: Any, name: str, unit: str, source: str | None) -> None:
    """A :class:`DataError` unless ``value`` (a number or a (y, x) pair) is ``None`` or
    finite and positive; it names the file, the attribute and the plan key that overrides it."""
    if value is None:
        return
    if not _positive(value):
        raise DataError(f"{source or 'the raw data'}: {name} is {value!r}, it must be a positive number [{unit}]; "
                        f"fix the data file or set raw_data.{name} in the plan")


def check_metadata(data: RawData) -> None:
    """Beam energy and convergence angle, when known, must be positive (see
    :func:`check_positive`), and the scan step too where it makes the scan (no recorded
    positions)."""
    check_positive(data.energy_eV, "energy_eV", "eV", data.source)
    check_positive(data.convergence_angle_mrad, "convergence_angle_mrad", "mrad", data.source)
    if data.scan_positions_A is None:
        check_positive(data.scan_step_A, "scan_step_A", "Å", data.source)


def number_attr(value: Any, name: str, unit: str, source: Any, *, pair: bool = False) -> Any:
    """A file attribute as a float (``pair``: a (y, x) pair of floats), ``None`` when absent;
    a :class:`DataError` naming the file, the attribute and the plan key that overrides it
    when it is not a number (``"200 kV"``)."""
    if value is None:
        return None
    try:
        if pair:
            return pair_or_none(value)
        if isinstance(value, (str, bytes)):
            raise ValueError(value)
        return float(np.asarray(value, dtype=float).item())
    except (TypeError, ValueError):
        what = "a number or a (y, x) pair of numbers" if pair else "a number"
        raise DataError(f"{source}: attribute {name} is {value!r}, not {what} [{unit}]; write it as "
                        f"{what} in {unit}, or set raw_data.{name} in the plan to override it") from None
