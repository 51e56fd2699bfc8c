"""The ``empad`` loader: EMPAD raw frames + the published phaser's JSON metadata (v2).

Raw file: little-endian float32 frames of 130 rows x 128 columns (128 detector rows and
2 rows of frame metadata), ``ny·nx`` frames in raster order. The 2 extra rows are dropped
and the row axis is reversed (the EMPAD's ky axis points up; as in the published phaser),
which makes Qy parallel to the object's y (down) and Qx to x. The orientation keys
(``flip_*``, ``transpose``, ``rotate90``, see :mod:`._common`) act after that.

Metadata JSON (PHASER_REFERENCE.md §3.2; ``file_type`` ``empad_metadata`` or
``pyMultislicer_metadata``): ``voltage`` [V], ``conv_angle`` [mrad], ``defocus`` [m] with the
OPPOSITE sign to ours (positive = overfocus there, so ``defocus_A = −defocus·1e10``),
``diff_step`` [mrad/px], ``scan_shape`` [x, y], ``scan_step`` [x, y] [m], optional
``scan_correction`` (2x2 acting on [x, y]), ``adu`` [counts per electron] (experimental
files are divided by it, simulations are not), ``raw_filename`` relative to the JSON.
``scan_rotation`` is kept as ``extra["empad_scan_rotation_deg"]`` and not applied: its sign
against ours is not pinned (give ``init.scan.rotation_deg``; the parallax check says how much).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import attrs
import numpy as np

from phaser_core.config import param
from phaser_core.context import LoadContext
from phaser_core.data import RawData
from phaser_core.errors import DataError

from ._common import LoaderCommon, apply_overrides, as_host_patterns, float_or_none, orient_mask, orient_patterns

FRAME_ROWS = 130
DET_ROWS = 128
DET_COLS = 128


@attrs.frozen(kw_only=True)
class EmpadConfig(LoaderCommon):
    """Keys of the ``empad`` loader."""

    path: str = param(doc="the metadata .json, or the raw file itself (then give energy_eV, "
                      "convergence_angle_mrad, angular_sampling_mrad, scan_step_A and scan_shape in the plan; "
                      "scan_shape may come from a raw file name like scan_x256_y256.raw)")
    adu: float | None = param(None, unit="counts/e", doc="detector counts per electron; overrides the metadata",
                              converter=float_or_none)
    mask_border: int = param(2, unit="px", doc="mask this many pixels at each detector edge (0: no mask)")


def _scan_shape_from_name(name: str) -> tuple[int, int] | None:
    m = re.search(r"x(\d+)_y(\d+)", name)
    return (int(m.group(2)), int(m.group(1))) if m else None


def read_raw(path: Path, scan_shape: tuple[int, int] | None) -> np.ndarray:
    """Memory-map an EMPAD raw file as ``(N, 128, 128)`` (extra rows dropped, rows reversed), a view."""
    frame_bytes = FRAME_ROWS * DET_COLS * 4
    size = path.stat().st_size
    if size % frame_bytes:
        raise DataError(f"{path}: size {size} B is not a whole number of EMPAD frames "
                         f"({FRAME_ROWS}x{DET_COLS} float32 = {frame_bytes} B)")
    n = size // frame_bytes
    if scan_shape is not None and scan_shape[0] * scan_shape[1] != n:
        raise DataError(f"{path}: holds {n} frames but the scan shape {scan_shape} needs "
                         f"{scan_shape[0] * scan_shape[1]}; fix scan_shape")
    frames = np.memmap(path, dtype="<f4", mode="r", shape=(n, FRAME_ROWS, DET_COLS))
    return frames[:, DET_ROWS - 1::-1, :]


def load_empad(config: EmpadConfig, ctx: LoadContext) -> RawData:
    """Read EMPAD raw frames, with the v2 JSON metadata when ``path`` is a .json."""
    path = ctx.resolve(config.path)
    if not path.exists():
        raise DataError(f"empad loader: file {path} does not exist (check raw_data.path)")
    meta: dict[str, Any] = {}
    if path.suffix.lower() == ".json":
        meta = json.loads(path.read_text())
        if "raw_filename" not in meta:
            raise DataError(f"{path}: EMPAD metadata has no raw_filename")
        raw_path = path.parent / meta["raw_filename"]
    else:
        raw_path = path
    if not raw_path.exists():
        raise DataError(f"{path}: raw file {raw_path} does not exist")

    scan_shape = config.scan_shape
    if scan_shape is None and meta.get("scan_shape") is not None:
        sx, sy = meta["scan_shape"]
        scan_shape = (int(sy), int(sx))
    if scan_shape is None:
        scan_shape = _scan_shape_from_name(raw_path.name)
    frames = read_raw(raw_path, scan_shape)
    patterns = as_host_patterns(orient_patterns(frames, config), ctx.dtype)

    experimental = meta.get("file_type", "empad_metadata") == "empad_metadata"
    adu = config.adu if config.adu is not None else meta.get("adu")
    if adu is not None and (experimental or config.adu is not None):
        if patterns is frames:  # never scale the memory map in place
            patterns = np.array(patterns)
        np.divide(patterns, np.float32(adu), out=patterns, casting="unsafe")

    step = meta.get("scan_step")
    scan_step = (float(step[1]) * 1e10, float(step[0]) * 1e10) if step is not None else None
    positions = None
    corr = meta.get("scan_correction")
    if corr is not None and scan_shape is not None and scan_step is not None and config.scan_step_A is None:
        from phaser_std.physics.scan import raster_scan

        affine_yx = np.asarray(corr, dtype=np.float64)[::-1, ::-1]
        positions = raster_scan(scan_shape, scan_step, affine=affine_yx)

    mask = None
    if config.mask_border > 0:
        b = int(config.mask_border)
        m = np.zeros((DET_ROWS, DET_COLS), dtype=bool)
        m[b:-b, b:-b] = True
        mask = orient_mask(m, config)

    defocus = meta.get("defocus")
    diff_step = meta.get("diff_step")
    data = RawData(
        patterns=patterns,
        energy_eV=float(meta["voltage"]) if meta.get("voltage") is not None else None,
        convergence_angle_mrad=float(meta["conv_angle"]) if meta.get("conv_angle") is not None else None,
        # the published phaser's defocus is overfocus-positive: ours is minus it
        defocus_A=-float(defocus) * 1e10 if defocus is not None else None,
        scan_positions_A=positions,
        scan_shape=scan_shape,
        scan_step_A=scan_step,
        mask=mask,
        source=str(raw_path),
        extra={"empad_scan_rotation_deg": meta.get("scan_rotation"), "empad_metadata": meta},
    )
    file_ang = (float(diff_step), float(diff_step)) if diff_step is not None else None
    return apply_overrides(data, config, file_angular_mrad=file_ang)
