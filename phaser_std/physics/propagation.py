"""Fresnel propagators for multislice (corner-centred, ``fftfreq`` order).

H(k) = exp(−iπλΔz|k|²) · exp(−2πiΔz(k_y tan t_y + k_x tan t_x)), band-limited to
|k| ≤ f·k_Nyquist. A tilt (t_y, t_x) [mrad] moves the wave laterally by Δz·tan(t).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from phaser_std.physics.optics import _pair, fftfreq_grid, mrad_to_invA, reciprocal_pixel_invA

__all__ = ["fresnel_propagator", "fresnel_propagators_tilted", "bandlimit_mask", "probe_bandwidth_invA",
           "covering_bandlimit"]


def bandlimit_mask(shape: tuple[int, int], sampling_A: Any, bandlimit: float | None = 2.0 / 3.0, xp: Any = np) -> Any:
    """Boolean-valued (float) mask, 1 where |k| ≤ f·k_Nyquist, corner-centred.

    k_Nyquist is the smaller of the two axes' Nyquist frequencies 1/(2·sampling) [1/Å].
    ``bandlimit=None`` gives all ones.
    """
    ky, kx = fftfreq_grid(shape, sampling_A, xp=np)
    if bandlimit is None:
        m = np.ones((int(shape[0]), int(shape[1])))
    else:
        m = ((ky**2 + kx**2) <= (float(bandlimit) * _k_nyquist(sampling_A)) ** 2).astype(np.float64)
    return xp.asarray(m)


def probe_bandwidth_invA(probe: Any, sampling_A: Any, power: float = 0.999) -> float:
    """The radius [1/Å] of the disc holding ``power`` of the probe's spectral power
    (its aperture α/λ for an ideal probe). ``probe`` ``(Ny, Nx)`` or ``(M, Ny, Nx)``
    complex, centred (modes summed), on a grid of ``sampling_A`` [Å]."""
    p = np.asarray(probe)
    p = p.reshape((-1,) + p.shape[-2:])
    spec = np.sum(np.abs(np.fft.fft2(np.fft.ifftshift(p, axes=(-2, -1)))) ** 2, axis=0)
    ky, kx = fftfreq_grid(spec.shape, sampling_A, xp=np)
    k = np.sqrt(ky**2 + kx**2).reshape(-1)
    order = np.argsort(k)
    cum = np.cumsum(spec.reshape(-1)[order])
    if not cum[-1] > 0:
        return 0.0
    return float(k[order][np.searchsorted(cum, power * cum[-1])])


def aperture_radius_invA(probe: Any, sampling_A: Any, alpha_mrad: float | None = None,
                         wavelength_A: float | None = None) -> float:
    """The radius [1/Å] a band limit must keep for ``probe`` (centred, ``(Ny, Nx)`` or
    ``(M, Ny, Nx)``, on a grid of ``sampling_A`` [Å]): its bandwidth
    (:func:`probe_bandwidth_invA`), and at least α/λ when the convergence semi-angle
    ``alpha_mrad`` [mrad] and ``wavelength_A`` [Å] are given. The bandwidth covers a probe
    whose aperture is not the data's (a plan's ``conv_angle_mrad``, a probe from a file) and
    a soft edge; α/λ a hard edge, whose 99.9% disc lies a fraction of a pixel inside it."""
    radius = probe_bandwidth_invA(probe, sampling_A)
    if alpha_mrad is not None and wavelength_A is not None:
        radius = max(radius, mrad_to_invA(alpha_mrad, wavelength_A))
    return float(radius)


def covering_bandlimit(bandlimit: float | None, shape: tuple[int, int], sampling_A: Any, aperture_invA: float,
                       margin_px: float = 1.0) -> float | None:
    """``bandlimit`` [fraction of k_Nyquist], raised to the aperture radius ``aperture_invA``
    = α/λ [1/Å] plus ``margin_px`` reciprocal pixels (of the ``shape`` grid's coarser axis)
    where the aperture reaches beyond it, so that propagating never cuts the incident probe.

    The 2/3 rule keeps products of band-limited waves from aliasing, but a detector that
    collects little beyond the bright-field disc puts the aperture above 2/3 of Nyquist
    (abTEM data cropped at 1.37α: the aperture at 0.73). A propagator cut inside the
    aperture removes part of the probe at every slice (benchmarks/NOTES.md 24). None
    stays None (no limit)."""
    if bandlimit is None:
        return None
    dk = reciprocal_pixel_invA(shape, sampling_A, coarser=True)
    return float(max(float(bandlimit), (float(aperture_invA) + margin_px * dk) / _k_nyquist(sampling_A)))


def _k_nyquist(sampling_A: Any) -> float:
    """The smaller axis' Nyquist frequency 1/(2s) [1/Å]: the band limit's reference."""
    sy, sx = _pair(sampling_A)
    return min(1.0 / (2 * sy), 1.0 / (2 * sx))


def fresnel_propagator(
    shape: tuple[int, int],
    sampling_A: Any,
    wavelength_A: float,
    dz_A: float,
    tilt_mrad: tuple[float, float] = (0.0, 0.0),
    bandlimit: float | None = 2.0 / 3.0,
    xp: Any = np,
) -> Any:
    """Fresnel propagator over ``dz_A`` [Å], ``(Ny, Nx)`` complex128, zero frequency at the
    corner. ``sampling_A`` [Å/px] scalar or (y, x); ``tilt_mrad`` (t_y, t_x) [mrad];
    ``bandlimit`` fraction of Nyquist (None: no limit). Apply as ``ifft2(fft2(ψ)·H)``."""
    tilts = np.asarray([[float(t) for t in tilt_mrad]], dtype=np.float64)
    h = fresnel_propagators_tilted(shape, sampling_A, wavelength_A, dz_A, tilts, bandlimit, xp=np)[0]
    return xp.asarray(h.astype(np.complex128))


def fresnel_propagators_tilted(
    shape: tuple[int, int],
    sampling_A: Any,
    wavelength_A: float,
    dz_A: float,
    tilts_mrad: Any,
    bandlimit: float | None = 2.0 / 3.0,
    xp: Any = np,
) -> Any:
    """Per-position propagators for tilts ``tilts_mrad`` (B, 2) [mrad] -> (B, Ny, Nx) complex,
    corner-centred. Built with ``xp`` array operations so it can run inside a jit."""
    ky, kx = fftfreq_grid(shape, sampling_A, xp=xp)
    t = xp.tan(xp.asarray(tilts_mrad) * 1e-3)
    ty = t[:, 0][:, None, None]
    tx = t[:, 1][:, None, None]
    dz = float(dz_A)
    base = -np.pi * float(wavelength_A) * dz * (ky**2 + kx**2)
    phase = base[None] - 2 * np.pi * dz * (ky[None] * ty + kx[None] * tx)
    mask = bandlimit_mask(shape, sampling_A, bandlimit, xp=xp)
    return xp.exp(1j * phase) * mask[None]
