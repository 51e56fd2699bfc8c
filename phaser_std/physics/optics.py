"""Electron optics: wavelength, interaction parameter, reciprocal grids, aberrations.

Spatial frequencies are in cycles per Å (no factor 2π). The aberration function follows
Krivanek's polar notation (see docs/conventions.md); ``defocus_A`` is −C10.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Mapping

import numpy as np

from phaser_core.config import yx_pair as _pair

from phaser_core.physics_constants import interaction_parameter, wavelength_A

__all__ = [
    "wavelength_A",
    "interaction_parameter",
    "fftfreq_grid",
    "fftfreq_grid_centred",
    "aberration_phase",
    "ABERRATION_ORDERS",
    "normalize_aberrations",
    "mrad_to_invA",
    "reciprocal_pixel_invA",
]

def mrad_to_invA(angle_mrad: float, wavelength_A: float) -> float:
    """A scattering angle [mrad] as a spatial frequency [1/Å]: k = θ/λ (small angles), e.g.
    the aperture radius α/λ or a detector pixel Δθ/λ."""
    return float(angle_mrad) * 1e-3 / float(wavelength_A)


def reciprocal_pixel_invA(shape: tuple[int, int], sampling_A: tuple[float, float] | float,
                          coarser: bool = False) -> float:
    """The finer reciprocal pixel [1/Å] of an ``(Ny, Nx)`` grid of ``sampling_A`` [Å]:
    min(1/(Ny·sy), 1/(Nx·sx)), the unit of the aperture's edge width; ``coarser``: the
    max, for a margin that must span a pixel along either axis."""
    sy, sx = _pair(sampling_A)
    pick = max if coarser else min
    return pick(1.0 / (int(shape[0]) * sy), 1.0 / (int(shape[1]) * sx))


#: Krivanek coefficient name -> (n, m). Angles are named ``phi{n}{m}`` [rad].
ABERRATION_ORDERS: dict[str, tuple[int, int]] = {
    "C10": (1, 0), "C12": (1, 2),
    "C21": (2, 1), "C23": (2, 3),
    "C30": (3, 0), "C32": (3, 2), "C34": (3, 4),
    "C41": (4, 1), "C43": (4, 3), "C45": (4, 5),
    "C50": (5, 0), "C52": (5, 2), "C54": (5, 4), "C56": (5, 6),
}
_ANGLES = {f"phi{n}{m}" for (n, m) in ABERRATION_ORDERS.values() if m != 0}


def fftfreq_grid(shape: tuple[int, int], sampling_A: tuple[float, float] | float,
                 xp: Any = np) -> tuple[Any, Any]:
    """Spatial frequencies ``(ky, kx)`` [1/Å] of an ``(Ny, Nx)`` grid, zero at the corner
    (``fftfreq`` order), broadcastable as ``(Ny, 1)`` and ``(1, Nx)``."""
    sy, sx = _pair(sampling_A)
    ny, nx = int(shape[0]), int(shape[1])
    ky = xp.asarray(np.fft.fftfreq(ny, d=sy)).reshape(ny, 1)
    kx = xp.asarray(np.fft.fftfreq(nx, d=sx)).reshape(1, nx)
    return ky, kx


def fftfreq_grid_centred(shape: tuple[int, int], sampling_A: tuple[float, float] | float,
                         xp: Any = np) -> tuple[Any, Any]:
    """Like :func:`fftfreq_grid` with zero frequency at pixel ``(Ny//2, Nx//2)``."""
    sy, sx = _pair(sampling_A)
    ny, nx = int(shape[0]), int(shape[1])
    ky = xp.asarray(np.fft.fftshift(np.fft.fftfreq(ny, d=sy))).reshape(ny, 1)
    kx = xp.asarray(np.fft.fftshift(np.fft.fftfreq(nx, d=sx))).reshape(1, nx)
    return ky, kx




def check_aberrations(instance: Any, attribute: Any, value: Any) -> None:
    """attrs validator of an ``aberrations`` setting: a mapping of Krivanek names to numbers
    (``{C30: 1.0e4, C12: 20, phi12: 0.3}``), so that a misspelt name (``C30_A``) or a value
    that is not a number fails at ``phaser validate`` with its line, not in the run."""
    if value is None:
        return
    if not isinstance(value, Mapping):
        raise ValueError("must be a mapping of Krivanek names to numbers, e.g. {C30: 1.0e+4, C12: 20, phi12: 0.3} "
                         "[Å, rad]", attribute)
    for name, v in value.items():
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(float(v)):
            raise ValueError(f"{name}: expected a number [Å, or rad for an angle], got {v!r}", attribute)
    try:
        normalize_aberrations(value)
    except ValueError as exc:
        raise ValueError(str(exc), attribute) from None


def normalize_aberrations(aberrations: Mapping[str, float] | None, defocus_A: float = 0.0) -> dict[str, float]:
    """Validate aberration names and fold ``defocus_A`` (= −C10) into ``C10`` [Å].

    Raises ``ValueError`` naming unknown keys.
    """
    out = {k: float(v) for k, v in (aberrations or {}).items()}
    unknown = sorted(set(out) - set(ABERRATION_ORDERS) - _ANGLES)
    if unknown:
        raise ValueError(
            f"unknown aberration coefficient(s) {unknown}; use Krivanek names "
            f"{sorted(ABERRATION_ORDERS)} [Å] and angles {sorted(_ANGLES)} [rad]"
        )
    if defocus_A:
        out["C10"] = out.get("C10", 0.0) - float(defocus_A)
    return out


def aberration_phase(ky: Any, kx: Any, wavelength_A: float, aberrations: Mapping[str, float], xp: Any = None) -> Any:
    """Aberration function χ(k) [rad] for spatial frequencies ``ky``, ``kx`` [1/Å].

    χ(k) = (2π/λ) Σ C_nm α^(n+1) cos(m(φ − φ_nm)) / (n+1), α = λ|k|, φ = atan2(ky, kx).
    ``aberrations`` maps Krivanek names (``C10`` … ``C56``) [Å] and angles ``phi12`` …
    [rad]; missing entries are zero. C10 > 0 is overfocus (``defocus_A`` = −C10).
    """
    if xp is None:
        xp = np
    lam = float(wavelength_A)
    ab = normalize_aberrations(aberrations)
    alpha = lam * xp.sqrt(ky**2 + kx**2)
    phi = xp.arctan2(ky, kx)
    chi = xp.zeros_like(alpha)
    for name, (n, m) in ABERRATION_ORDERS.items():
        c = ab.get(name, 0.0)
        if c == 0.0:
            continue
        term = c * alpha ** (n + 1) / (n + 1)
        if m:
            term = term * xp.cos(m * (phi - ab.get(f"phi{n}{m}", 0.0)))
        chi = chi + term
    return (2.0 * np.pi / lam) * chi
