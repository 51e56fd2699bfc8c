"""Scan positions: raster grids, rotation, affine distortion, jitter.

Positions are ``(N, 2)`` float64 ``(y, x)`` [Å] in the object frame. A raster scan is
centred on the origin and row-major (fast axis x). With rotation θ [deg] the fast-scan
direction is (y, x) = (sin θ, cos θ).
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["raster_scan", "rotate_positions", "jitter", "hull_and_spacing", "area_per_position_A2"]


def rotate_positions(pos_A: np.ndarray, rotation_deg: float, centre_A: Any) -> np.ndarray:
    """Positions ``(N, 2)`` (y, x) [Å] rotated by ``rotation_deg`` [deg] about ``centre_A``
    (y, x) [Å], in the raster's convention: the fast axis unit (0, 1) goes to
    (sin θ, cos θ), the slow axis (1, 0) to (cos θ, −sin θ)."""
    th = np.deg2rad(float(rotation_deg))
    rot = np.array([[np.cos(th), np.sin(th)], [-np.sin(th), np.cos(th)]])
    centre = np.asarray(centre_A, dtype=np.float64)
    return (np.asarray(pos_A, dtype=np.float64) - centre) @ rot.T + centre


def raster_scan(
    shape: tuple[int, int],
    step_A: Any,
    rotation_deg: float = 0.0,
    affine: Any = None,
) -> np.ndarray:
    """Raster scan of ``shape`` (ny, nx) points with ``step_A`` (y, x) [Å] (scalar allowed).

    Returns ``(ny·nx, 2)`` float64 (y, x) [Å], centred on the origin, row-major with x the
    fast axis. ``rotation_deg`` turns the fast axis from +x toward +y; ``affine`` is an
    optional 2x2 matrix applied to (y, x) column vectors after the rotation.
    """
    ny, nx = (int(s) for s in shape)
    if ny < 1 or nx < 1:
        raise ValueError(f"scan shape must be positive, got {shape}")
    step = np.broadcast_to(np.asarray(step_A, dtype=np.float64), (2,))
    y = (np.arange(ny) - (ny - 1) / 2.0) * step[0]
    x = (np.arange(nx) - (nx - 1) / 2.0) * step[1]
    yy, xx = np.meshgrid(y, x, indexing="ij")
    pos = np.stack([yy.ravel(), xx.ravel()], axis=-1)
    pos = rotate_positions(pos, rotation_deg, (0.0, 0.0))
    if affine is not None:
        a = np.asarray(affine, dtype=np.float64)
        if a.shape != (2, 2):
            raise ValueError(f"affine must be a 2x2 matrix acting on (y, x), got shape {a.shape}")
        pos = pos @ a.T
    return np.ascontiguousarray(pos)


def jitter(scan_A: Any, sigma_A: float, rng: np.random.Generator) -> np.ndarray:
    """Add Gaussian jitter of standard deviation ``sigma_A`` [Å] to each coordinate."""
    scan = np.asarray(scan_A, dtype=np.float64)
    return scan + rng.normal(0.0, float(sigma_A), size=scan.shape)


def hull_and_spacing(positions_A: Any) -> tuple[Any, float]:
    """The distinct positions' convex hull (a ``scipy.spatial.ConvexHull``; None when they
    are collinear or fewer than 3) and their typical spacing [Å], the median distance to the
    nearest neighbour (0 when fewer than 2), of positions ``(N, 2)`` (y, x) [Å]."""
    from scipy.spatial import ConvexHull, QhullError, cKDTree

    pos = np.unique(np.asarray(positions_A, dtype=np.float64).reshape(-1, 2), axis=0)
    if len(pos) < 2:
        return None, 0.0
    spacing = float(np.median(cKDTree(pos).query(pos, k=2)[0][:, 1]))
    try:
        return ConvexHull(pos), spacing
    except (QhullError, ValueError):
        return None, spacing


def area_per_position_A2(positions_A: Any) -> float | None:
    """Specimen area per scan position [Å²] of positions ``(N, 2)`` (y, x) [Å]: the area
    they cover / N, their convex hull grown by half the typical spacing s (the median
    nearest-neighbour distance) all round, hull + perimeter·s/2 + s², which is exactly N·s²
    for a raster of any shape and rotation; a line of positions covers (length + s)·s.
    None when fewer than two distinct positions."""
    pos = np.asarray(positions_A, dtype=np.float64).reshape(-1, 2)
    hull, spacing = hull_and_spacing(pos)
    if spacing <= 0:
        return None
    if hull is not None:
        area = hull.volume + hull.area * spacing / 2 + spacing ** 2  # 2-D: volume is the area, area the perimeter
    else:  # collinear: a line scan
        length = float(np.max(np.linalg.norm(pos - pos[0], axis=1)))
        area = (length + spacing) * spacing
    return float(area / len(pos))
