"""The Example Lab raw format: ``scan.npz`` (uint16 counts, mirrored detector) + ``scan.json``.

Format (fictional, but typical of a lab's own detector):

- ``<stem>.npz`` with ``frames``: ``uint16`` counts, shape ``(N, Q, Q)``, patterns in
  row-major scan order. The camera is mounted so that its column axis runs *opposite* to the
  scan's x axis (a mirror about the central column); the undiffracted beam sits at pixel
  ``(Q//2, Q//2)``.
- ``<stem>.json`` sidecar: ``energy_eV`` [eV], ``scan_shape`` ``[ny, nx]``, ``scan_step_A``
  ``[sy, sx]`` [Å] (or one number), ``gain_counts_per_electron`` [counts/e⁻] and
  ``angular_sampling_mrad`` [mrad per pixel].

The loader returns patterns in electrons, un-mirrored about the central pixel so detector
axes are parallel to the object axes with zero angle still at ``(Q//2, Q//2)``, as
:class:`phaser_core.data.RawData` requires.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import attrs
import numpy as np

from phaser_core import param
from phaser_core.data import RawData
from phaser_core.errors import DataError
from phaser_core.physics_constants import wavelength_A


@attrs.frozen
class ExampleLabRawConfig:
    """Settings of ``example_lab_raw``."""

    path: str = param(doc="the .npz file (or a folder holding exactly one); the .json sidecar sits next to it")
    gain_counts_per_electron: float | None = param(
        None, unit="counts/e⁻", doc="detector gain; null: use the sidecar's value")
    mirrored: bool = param(True, doc="undo the detector's column mirror (false for the old camera)")


def unmirror_columns(frames: np.ndarray) -> np.ndarray:
    """Mirror the column axis about pixel ``Q//2`` (which stays in place): ``out[..., j] = in[..., (2·(Q//2) − j) mod Q]``."""
    q = frames.shape[-1]
    idx = (2 * (q // 2) - np.arange(q)) % q
    return frames[..., idx]


def _find_files(path: Path) -> tuple[Path, Path]:
    if path.is_dir():
        found = sorted(path.glob("*.npz"))
        if len(found) != 1:
            raise DataError(f"{path}: expected exactly one .npz file in the folder, found {len(found)}")
        path = found[0]
    if not path.exists():
        raise DataError(f"{path}: no such file (example_lab_raw needs the .npz written by the Example Lab camera)")
    sidecar = path.with_suffix(".json")
    if not sidecar.exists():
        raise DataError(f"{path}: the metadata sidecar {sidecar.name} is missing next to it")
    return path, sidecar


def load_example_lab_raw(config: ExampleLabRawConfig, ctx: Any) -> RawData:
    """Load an Example Lab scan; patterns in electrons [e⁻], detector axes parallel to the object axes."""
    npz_path, sidecar = _find_files(ctx.resolve(config.path) if hasattr(ctx, "resolve") else Path(config.path))
    try:
        meta = json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"{sidecar}: cannot read the metadata sidecar: {exc}") from exc
    with np.load(npz_path) as npz:
        if "frames" not in npz:
            raise DataError(f"{npz_path}: no 'frames' array (found {', '.join(npz.files) or 'nothing'})")
        frames = npz["frames"]
    if frames.ndim != 3 or frames.shape[1] != frames.shape[2]:
        raise DataError(f"{npz_path}: 'frames' must be (N, Q, Q), got shape {frames.shape}")
    if frames.dtype != np.uint16:
        raise DataError(f"{npz_path}: 'frames' must be uint16 counts, got {frames.dtype}")
    gain = config.gain_counts_per_electron if config.gain_counts_per_electron is not None \
        else meta.get("gain_counts_per_electron")
    if gain is None or not gain > 0:
        raise DataError(f"{sidecar}: gain_counts_per_electron must be a positive number, got {gain!r} "
                        "(or set gain_counts_per_electron in the plan)")
    dtype = np.dtype(getattr(ctx, "dtype", "float32"))
    patterns = frames.astype(dtype) / dtype.type(gain)
    if config.mirrored:
        patterns = unmirror_columns(patterns)

    energy = meta.get("energy_eV")
    scan_shape = tuple(int(n) for n in meta["scan_shape"]) if "scan_shape" in meta else None
    if scan_shape is not None and scan_shape[0] * scan_shape[1] != patterns.shape[0]:
        raise DataError(f"{sidecar}: scan_shape {scan_shape} does not match the {patterns.shape[0]} frames")
    step = meta.get("scan_step_A")
    if step is not None:
        step = (float(step), float(step)) if np.isscalar(step) else (float(step[0]), float(step[1]))
    recip = None
    if meta.get("angular_sampling_mrad") is not None and energy is not None:
        dk = float(meta["angular_sampling_mrad"]) * 1e-3 / wavelength_A(float(energy))
        recip = (dk, dk)
    return RawData(patterns=patterns, energy_eV=None if energy is None else float(energy),
                   scan_shape=scan_shape, scan_step_A=step, reciprocal_sampling_invA=recip,
                   source=str(npz_path), extra={"gain_counts_per_electron": float(gain)})


def write_example_lab_raw(path: str | Path, electrons: np.ndarray, *, energy_eV: float, scan_shape: tuple[int, int],
                          scan_step_A: float | tuple[float, float], gain_counts_per_electron: float,
                          angular_sampling_mrad: float) -> Path:
    """Write patterns [e⁻] (object-aligned, centred) as the camera would: counts, mirrored, uint16."""
    path = Path(path)
    counts = unmirror_columns(np.asarray(electrons, dtype=np.float64)) * gain_counts_per_electron
    frames = np.clip(np.rint(counts), 0, np.iinfo(np.uint16).max).astype(np.uint16)
    np.savez(path, frames=frames)
    meta = {"energy_eV": energy_eV, "scan_shape": list(scan_shape),
            "scan_step_A": list(scan_step_A) if not np.isscalar(scan_step_A) else scan_step_A,
            "gain_counts_per_electron": gain_counts_per_electron, "angular_sampling_mrad": angular_sampling_mrad}
    path.with_suffix(".json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
    return path
