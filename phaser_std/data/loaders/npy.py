"""The ``npy`` loader: patterns in a ``.npy`` file, metadata in the plan.

The array is ``(Ny, Nx, Qy, Qx)`` or ``(N, Qy, Qx)`` [electrons] with zero angle at pixel
``(Qy//2, Qx//2)``; it is memory-mapped and handed on without a copy when its dtype is the
run's and no orientation option is set. Scan positions may come from a second ``.npy``
file of ``(N, 2)`` (y, x) [Å]; otherwise ``scan_shape`` + ``scan_step_A`` describe a raster.

Orientation: Qy is taken along the object's y axis and Qx along x unless
``flip_*``/``transpose``/``rotate90`` say otherwise (see :mod:`._common`).
"""

from __future__ import annotations

from pathlib import Path

import attrs
import numpy as np

from phaser_core.config import param
from phaser_core.context import LoadContext
from phaser_core.data import RawData
from phaser_core.errors import DataError

from ._common import LoaderCommon, apply_overrides, as_host_patterns, check_real_dtype, orient_patterns, to_stack


@attrs.frozen(kw_only=True)
class NpyConfig(LoaderCommon):
    """Keys of the ``npy`` loader (metadata keys are required where the run needs them)."""

    path: str = param(doc="the .npy file of patterns (relative to the plan's folder)")
    positions: str | None = param(None, doc="optional .npy file of (N, 2) (y, x) scan positions [Å]")
    mmap: bool = param(True, doc="memory-map the file instead of reading it")


def read_npy(path: Path, what: str, *, mmap: bool = False) -> np.ndarray:
    """The array in the ``.npy`` file ``path`` (memory-mapped when ``mmap``); a
    :class:`DataError` naming the file when it is not a readable ``.npy`` of numbers."""
    hint = ("the npy loader reads files written by numpy.save (use type: hdf5 for phaser's .h5 files, "
            "type: rsciio for vendor formats)")
    with open(path, "rb") as fh:
        if fh.read(6) != b"\x93NUMPY":
            raise DataError(f"{path}: the {what} file is not a NumPy .npy file (no .npy header); {hint}")
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise DataError(f"{path}: cannot read the {what} as a .npy array of numbers ({exc}); {hint}") from None


def load_npy(config: NpyConfig, ctx: LoadContext) -> RawData:
    """Memory-map a ``.npy`` array of patterns and take the metadata from the plan."""
    path = ctx.resolve(config.path)
    if not path.exists():
        raise DataError(f"npy loader: file {path} does not exist (check raw_data.path)")
    arr = read_npy(path, "patterns", mmap=config.mmap)
    check_real_dtype(arr.dtype, str(path))
    patterns, shape_from_array = to_stack(arr, str(path))
    patterns = as_host_patterns(orient_patterns(patterns, config), ctx.dtype)
    positions = None
    if config.positions is not None:
        ppath = ctx.resolve(config.positions)
        if not ppath.exists():
            raise DataError(f"npy loader: positions file {ppath} does not exist (check raw_data.positions)")
        positions = read_npy(ppath, "scan positions")
        check_real_dtype(positions.dtype, str(ppath))
        positions = np.asarray(positions, dtype=np.float64)
        if positions.shape != (patterns.shape[0], 2):
            raise DataError(f"{ppath}: scan positions have shape {positions.shape}, expected "
                             f"({patterns.shape[0]}, 2) (one (y, x) row per pattern)")
    data = RawData(patterns=patterns, scan_positions_A=positions, scan_shape=shape_from_array, source=str(path))
    return apply_overrides(data, config)
