"""The ``hdf5`` loader: phaser's own raw-data file (written by ``phaser simulate``).

Layout (docs/file-formats.md, "Raw data: the hdf5 format"):

- ``/patterns`` float, or uint8/uint16 counts (read as they are), ``(Ny, Nx, Qy, Qx)`` or
  ``(N, Qy, Qx)`` [electrons], zero angle at pixel ``(Qy//2, Qx//2)``;
  ``/patterns_noiseless`` optionally (pick it with ``key``);
- ``/scan_positions`` optional ``(N, 2)`` (y, x) [Å];
- ``/mask`` optional ``(Qy, Qx)`` bool (True = valid pixel);
- root attributes ``energy_eV`` [eV], ``convergence_angle_mrad`` [mrad], ``defocus_A`` [Å]
  (positive = underfocus), ``tilt_mrad`` (y, x) [mrad], ``reciprocal_sampling_invA`` [1/Å per px] or
  ``angular_sampling_mrad`` [mrad/px] (scalar or (y, x)), ``scan_step_A`` (y, x) [Å],
  ``scan_shape`` (ny, nx);
- ``/ground_truth`` optional group: ``phase`` (H, W) [rad] (attr ``sampling_A``), group
  attr ``periodic``, ``potential`` (slices, H, W) [rad], ``probe`` (modes, Ny, Nx),
  ``scan_positions`` (N, 2) [Å], ``thicknesses_A``.

Orientation: the file's detector axes are parallel to the object axes already (Qy along
y, Qx along x); the ``flip_*``/``transpose``/``rotate90`` keys exist for files written by
other tools (see :mod:`phaser_std.data.loaders._common`).

Large files: a contiguous, uncompressed dataset of the run's dtype (or of uint8/uint16
counts) is memory-mapped (no read at all until used); otherwise the patterns are read with
one ``read_direct`` into a single array of that dtype (h5py converts chunk by chunk; no
second copy). An orientation option costs one more copy.
"""

from __future__ import annotations

from typing import Any

import attrs
import numpy as np

from phaser_core.config import direction_or_none, param
from phaser_core.context import LoadContext
from phaser_core.data import RawData
from phaser_core.errors import DataError

from ._common import (LoaderCommon, apply_overrides, as_host_patterns, check_real_dtype, number_attr, orient_mask,
                      orient_patterns, orient_sampling, stored_dtype, to_stack)


@attrs.frozen(kw_only=True)
class Hdf5Config(LoaderCommon):
    """Keys of the ``hdf5`` loader."""

    path: str = param(doc="the .h5 file (relative to the plan's folder)")
    key: str = param("patterns", doc="dataset holding the patterns, e.g. patterns_noiseless")
    ground_truth: bool = param(True, doc="read the /ground_truth group when present")
    mmap: bool = param(True, doc="memory-map the patterns when the dataset allows it (contiguous, "
                       "uncompressed, of the run's dtype, no orientation option) instead of reading them")


def _attr(attrs_: Any, name: str) -> Any:
    v = attrs_.get(name)
    if isinstance(v, bytes):
        v = v.decode()
    return v


def read_ground_truth(group: Any) -> dict[str, Any]:
    """The ``/ground_truth`` group as a dict of numpy arrays plus its attributes."""
    gt: dict[str, Any] = {k: _attr(group.attrs, k) for k in group.attrs}
    for name, ds in group.items():
        if hasattr(ds, "shape"):
            gt[name] = ds[()]
            for k, v in ds.attrs.items():
                gt[f"{name}_{k}"] = v.decode() if isinstance(v, bytes) else v
    if "periodic" in gt:  # written as "yes"/"no" (what the benchmark scorer reads); bools accepted
        v = gt["periodic"]
        gt["periodic"] = str(v).strip().lower() in ("yes", "true", "1") if isinstance(v, str) else bool(v)
    return gt


def load_hdf5(config: Hdf5Config, ctx: LoadContext) -> RawData:
    """Read phaser's hdf5 raw-data file (see the module docstring for the layout)."""
    import h5py

    path = ctx.resolve(config.path)
    if not path.exists():
        raise DataError(f"hdf5 loader: file {path} does not exist (check raw_data.path)")
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise DataError(f"{path}: cannot open it as HDF5 ({exc}); the hdf5 loader reads phaser's .h5 raw-data "
                        "files (docs/file-formats.md): use type: npy for a .npy array, type: rsciio for vendor "
                        "formats") from None
    try:
        with f:
            return _read_file(f, path, config, ctx)
    except OSError as exc:
        raise DataError(f"{path}: cannot read it as phaser's hdf5 raw data ({exc}); "
                        "see docs/file-formats.md for the layout") from None


def _read_file(f: Any, path: Any, config: Hdf5Config, ctx: LoadContext) -> RawData:
    """The :class:`RawData` in the open file ``f`` (see the module docstring for the layout)."""
    if config.key not in f:
        keys = ", ".join(k for k in f if hasattr(f[k], "shape"))
        raise DataError(f"{path}: no dataset {config.key!r}; datasets in the file: {keys}")
    ds = f[config.key]
    if not hasattr(ds, "ndim"):
        raise DataError(f"{path}:/{config.key} is a group, not a dataset of patterns; set raw_data.key")
    if ds.ndim not in (3, 4):
        raise DataError(f"{path}:/{config.key} must be (Ny, Nx, Qy, Qx) or (N, Qy, Qx), got {ds.shape}")
    check_real_dtype(ds.dtype, f"{path}:/{config.key}")
    kept = stored_dtype(ds.dtype, ctx.dtype)  # uint8/uint16 counts as they are, else the run's float
    raw = _memmap(ds, path, kept) if config.mmap and not _reorients(config) else None
    if raw is None:
        raw = np.empty(ds.shape, dtype=kept)
        if ds.size:
            ds.read_direct(raw)
    patterns, shape_from_array = to_stack(raw, f"{path}:/{config.key}")
    patterns = as_host_patterns(orient_patterns(patterns, config), ctx.dtype)

    a = f.attrs
    scan_shape = _file_scan_shape(a, path) if config.scan_shape is None else None
    scan_shape = scan_shape if scan_shape is not None else shape_from_array
    # a plan's scan_step_A describes the scan: its raster replaces the recorded positions
    recorded = "scan_positions" in f and config.scan_step_A is None
    positions = np.asarray(f["scan_positions"][()], dtype=np.float64) if recorded else None
    if positions is not None and positions.shape != (patterns.shape[0], 2):
        raise DataError(f"{path}:/scan_positions has shape {positions.shape}, expected "
                         f"({patterns.shape[0]}, 2) (one (y, x) row per pattern)")
    mask = _read_mask(f, path, tuple(raw.shape[-2:]), config)
    gt = read_ground_truth(f["ground_truth"]) if (config.ground_truth and "ground_truth" in f) else None
    probe = None

    def num(name: str, unit: str, pair: bool = False) -> Any:
        # a plan override makes the file's value irrelevant, even when it is unreadable
        return None if getattr(config, name) is not None else number_attr(_attr(a, name), name, unit, path,
                                                                           pair=pair)

    recip = num("reciprocal_sampling_invA", "1/Å per px", pair=True)
    data = RawData(
        patterns=patterns,
        reciprocal_sampling_invA=orient_sampling(recip, config),
        energy_eV=num("energy_eV", "eV"),
        convergence_angle_mrad=num("convergence_angle_mrad", "mrad"),
        defocus_A=num("defocus_A", "Å"),
        tilt_mrad=_tilt(a, path) if config.tilt_mrad is None else None,
        scan_positions_A=positions,
        scan_shape=scan_shape,
        scan_step_A=num("scan_step_A", "Å", pair=True),
        mask=mask,
        probe=probe,
        ground_truth=gt,
        source=f"{path}:/{config.key}",
        extra={k: _attr(a, k) for k in a if k not in _KNOWN_ATTRS},
    )
    file_ang = num("angular_sampling_mrad", "mrad/px", pair=True)
    return apply_overrides(data, config, file_angular_mrad=file_ang)


def _tilt(attrs_: Any, path: Any) -> tuple[float, float] | None:
    """The root attribute ``tilt_mrad`` (y, x) [mrad], or None when absent."""
    try:
        return direction_or_none(_attr(attrs_, "tilt_mrad"))
    except (ValueError, TypeError):
        raise DataError(f"{path}: attribute tilt_mrad is {_attr(attrs_, 'tilt_mrad')!r}; write the beam tilt "
                        "as a (y, x) pair of numbers [mrad], or override it with the loader's tilt_mrad") from None


def _file_scan_shape(attrs_: Any, path: Any) -> tuple[int, int] | None:
    """The root attribute ``scan_shape`` (ny, nx), or None when absent."""
    value = _attr(attrs_, "scan_shape")
    if value is None:
        return None
    try:
        arr = np.asarray(value).ravel()
        if arr.size != 2 or not np.all(arr == np.round(arr)):
            raise ValueError(value)
        return (int(arr[0]), int(arr[1]))
    except (TypeError, ValueError):
        raise DataError(f"{path}: attribute scan_shape is {value!r}; write it as (ny, nx) integers, or set "
                        "raw_data.scan_shape in the plan to override it") from None


def _read_mask(f: Any, path: Any, shape: tuple[int, int], config: Hdf5Config) -> np.ndarray | None:
    """``/mask`` (Qy, Qx) bool, oriented like the patterns, or None when absent; its shape
    must be the detector's ``shape`` (the patterns' last two axes, as stored)."""
    if "mask" not in f:
        return None
    ds = f["mask"]
    if tuple(getattr(ds, "shape", ()) or ()) != shape:
        raise DataError(f"{path}:/mask has shape {getattr(ds, 'shape', None)} but the detector is {shape} "
                        f"(the last two axes of /{config.key}); write a (Qy, Qx) mask of the detector's "
                        "shape, or delete /mask")
    return orient_mask(ds[()], config)


def _reorients(config: Hdf5Config) -> bool:
    return bool(config.flip_y or config.flip_x or config.transpose or (config.rotate90 or 0) % 4)


def _memmap(ds: Any, path: Any, dtype: str | np.dtype) -> np.ndarray | None:
    """A read-only memory map of a contiguous, uncompressed dataset of ``dtype``, else None."""
    dt = np.dtype(dtype)
    if ds.chunks is not None or ds.compression is not None or ds.dtype != dt or not ds.dtype.isnative:
        return None
    offset = ds.id.get_offset()
    if offset is None or ds.size == 0:
        return None
    return np.memmap(path, dtype=dt, mode="r", offset=offset, shape=ds.shape)


_KNOWN_ATTRS = {"energy_eV", "convergence_angle_mrad", "defocus_A", "tilt_mrad", "reciprocal_sampling_invA",
                "angular_sampling_mrad", "scan_step_A", "scan_shape"}
