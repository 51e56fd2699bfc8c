"""Changing a state's discretisation between engines: probe modes, slices, pixel size.

All functions work on host (numpy) arrays and conserve the physically meaningful total:
the total probe power Σ|P|², and the total object phase Σ_slices log O.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from phaser_core.state import ProbeState
from phaser_std.backends.numpy_backend import NumpyBackend
from phaser_std.physics.objects import resample_object_slices, resample_pixel_size, resample_slices
from phaser_std.physics.probe import _poly_orders, orthogonalize_modes

__all__ = ["resample_modes", "resample_probe_state", "resample_slices", "resample_object_slices",
           "resample_pixel_size"]


def resample_modes(modes: Any, n_new: int, new_mode_power: float = 0.02,
                   rng: np.random.Generator | None = None) -> np.ndarray:
    """Change the number of probe modes ``(M, Ny, Nx)`` -> ``(n_new, Ny, Nx)``.

    Modes are first orthogonalised and sorted by power. Dropping keeps the strongest;
    adding appends weak modes orthogonal to the others (the strongest mode times low-order
    polynomials, plus a small random part when ``rng`` is given), each with
    ``new_mode_power`` of the total. Either way the result is rescaled so Σ|P|² is
    unchanged.
    """
    m = np.asarray(modes).astype(np.complex128)
    if m.ndim == 2:
        m = m[None]
    n_new = int(n_new)
    if n_new < 1:
        raise ValueError(f"the number of probe modes must be >= 1, got {n_new}")
    total = float(np.sum(np.abs(m) ** 2))
    m = orthogonalize_modes(NumpyBackend("float64"), m)
    n_old = m.shape[0]
    if n_new <= n_old:
        out = m[:n_new]
    else:
        if not 0.0 < new_mode_power < 1.0 / (n_new - n_old + 1):
            raise ValueError(f"new_mode_power must be in (0, {1.0 / (n_new - n_old + 1):.3g}), got {new_mode_power}")
        p0 = m[0]
        ny, nx = p0.shape
        w = np.abs(p0) ** 2 / max(np.sum(np.abs(p0) ** 2), 1e-300)
        yy, xx = np.meshgrid(np.arange(ny) - ny // 2, np.arange(nx) - nx // 2, indexing="ij")
        cy, cx = float((w * yy).sum()), float((w * xx).sum())
        sy = max(np.sqrt(float((w * (yy - cy) ** 2).sum())), 1.0)
        sx = max(np.sqrt(float((w * (xx - cx) ** 2).sum())), 1.0)
        y, x = (yy - cy) / sy, (xx - cx) / sx
        basis = [mm / np.sqrt(np.sum(np.abs(mm) ** 2)) for mm in m if np.sum(np.abs(mm) ** 2) > 1e-30 * total]
        added = []
        for py, px in _poly_orders(n_new + 8)[1:]:
            if len(added) == n_new - n_old:
                break
            c = p0 * (y**py) * (x**px)
            if rng is not None:
                c = c + 0.05 * np.abs(p0) * (rng.normal(size=p0.shape) + 1j * rng.normal(size=p0.shape))
            for b in basis:
                c = c - np.vdot(b, c) * b
            norm = np.sqrt(np.sum(np.abs(c) ** 2))
            if norm < 1e-6:
                continue
            basis.append(c / norm)
            added.append(c / norm)
        if len(added) < n_new - n_old:
            raise ValueError("could not build enough independent probe modes on this grid")
        extra = np.stack(added) * np.sqrt(new_mode_power * total)
        kept = m * np.sqrt(1.0 - new_mode_power * len(added))
        out = np.concatenate([kept, extra])
    now = float(np.sum(np.abs(out) ** 2))
    return out * np.sqrt(total / now) if now > 0 else out


def resample_probe_state(probe: ProbeState, n_modes: int, new_mode_power: float = 0.02,
                         rng: np.random.Generator | None = None) -> ProbeState:
    """:func:`resample_modes` on a :class:`ProbeState` (host arrays)."""
    return ProbeState(data=resample_modes(probe.data, n_modes, new_mode_power, rng),
                      sampling_A=tuple(probe.sampling_A))


