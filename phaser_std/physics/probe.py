"""Probe construction: focused (aberrated) probes, mixed-state modes, probes from files.

A probe is complex, real space, centred on pixel ``(Ny//2, Nx//2)``. It is built in
reciprocal space as A(k)·exp(−iχ(k)) (A: condenser aperture, χ: aberration function,
``defocus_A`` = −C10) and brought to real space with a centred unitary inverse FFT.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np

from phaser_std.backends.numpy_backend import NumpyBackend
from phaser_std.physics.optics import (aberration_phase, fftfreq_grid_centred, mrad_to_invA, normalize_aberrations,
                                       reciprocal_pixel_invA)

__all__ = ["make_probe", "make_modes", "orthogonalize_modes", "load_probe", "probe_aperture",
           "estimate_soft_edge_px", "SOFT_EDGE_CANDIDATES_PX"]

#: aperture edge widths [reciprocal px] :func:`estimate_soft_edge_px` chooses among
SOFT_EDGE_CANDIDATES_PX = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0)


def probe_aperture(shape: tuple[int, int], sampling_A: Any, wavelength_A: float, conv_angle_mrad: float,
                   soft_edge_px: float = 0.0) -> np.ndarray:
    """Condenser aperture A(k) on the centred reciprocal grid of an ``(Ny, Nx)`` real-space
    grid with pixel size ``sampling_A`` [Å]; semi-angle ``conv_angle_mrad`` [mrad].

    ``soft_edge_px`` > 0 gives a linear edge of that width in reciprocal-space pixels.
    """
    ky, kx = fftfreq_grid_centred(shape, sampling_A)
    k = np.sqrt(ky**2 + kx**2)
    k_cut = mrad_to_invA(conv_angle_mrad, wavelength_A)
    if soft_edge_px and soft_edge_px > 0:
        dk = reciprocal_pixel_invA(shape, sampling_A)
        return np.clip((k_cut - k) / (float(soft_edge_px) * dk) + 0.5, 0.0, 1.0)
    return (k <= k_cut).astype(np.float64)


def estimate_soft_edge_px(mean_pattern: Any, sampling_A: Any, wavelength_A: float, conv_angle_mrad: float,
                          mask: Any = None, rim_px: float = 3.0, min_pixels: int = 16) -> float:
    """The aperture edge width [reciprocal px] that best explains the rim of the
    bright-field disc in ``mean_pattern`` (``(Qy, Qx)`` [e⁻], centred like the patterns).

    A hard aperture gives 0. A detector whose pixels integrate the edge, or a simulator
    that antialiases the aperture (abTEM's default), gives about 1. The estimate is the
    candidate of :data:`SOFT_EDGE_CANDIDATES_PX` whose ``s·A_w(k)² + b`` (least squares
    in the scale s and the background b) best fits the valid pixels within ``rim_px`` of
    the cutoff α/λ, provided it halves the residual of the hard edge. It is 0 when fewer
    than ``min_pixels`` such pixels lie on the detector (a bright-field disc larger than
    the detector) or the fit is degenerate.

    Limits: the radius and centre are taken as given. A hard disc 1-2 px off centre would
    otherwise fit as a soft edge of 0.75-2 px; the halving rule keeps it at 0
    (``tests/test_probe.py``). A soft edge on a disc that is also off centre can be missed.
    """
    mean = np.asarray(mean_pattern, dtype=np.float64)
    shape = mean.shape
    ky, kx = fftfreq_grid_centred(shape, sampling_A)
    k = np.sqrt(ky**2 + kx**2)
    dk = reciprocal_pixel_invA(shape, sampling_A)
    rim = (np.abs(k - mrad_to_invA(conv_angle_mrad, wavelength_A)) < rim_px * dk) & np.isfinite(mean)
    if mask is not None:
        rim &= np.asarray(mask, dtype=bool)
    if int(rim.sum()) < min_pixels:
        return 0.0
    y = mean[rim]
    if not float(np.sum((y - y.mean()) ** 2)) > 0:
        return 0.0
    residual = {}
    for w in SOFT_EDGE_CANDIDATES_PX:
        a = probe_aperture(shape, sampling_A, wavelength_A, conv_angle_mrad, w)[rim]  # the model is s·a² + b
        design = np.stack([a**2, np.ones_like(a)], axis=1)
        coef = np.linalg.lstsq(design, y, rcond=None)[0]
        if coef[0] > 0:
            residual[float(w)] = float(np.sum((design @ coef - y) ** 2))
    if not residual:
        return 0.0
    best = min(residual, key=residual.get)
    # a soft edge must explain the rim clearly better than a hard one (half the residual):
    # a disc slightly off centre or of a slightly wrong radius should not pass for one
    if best > 0 and 0.0 in residual and residual[best] > 0.5 * residual[0.0]:
        return 0.0
    return best


def make_probe(
    shape: tuple[int, int],
    sampling_A: Any,
    wavelength_A: float,
    conv_angle_mrad: float,
    *,
    defocus_A: float = 0.0,
    aberrations: Mapping[str, float] | None = None,
    soft_edge_px: float = 0.0,
    xp: Any = np,
) -> Any:
    """A single probe ``(Ny, Nx)`` complex128, centred on ``(Ny//2, Nx//2)``, Σ|P|² = 1.

    ``sampling_A`` [Å/px] (scalar or (y, x)); ``wavelength_A`` [Å]; ``conv_angle_mrad``
    [mrad] aperture semi-angle; ``defocus_A`` [Å] (= −C10; positive: crossover downstream);
    ``aberrations`` Krivanek coefficients [Å] and angles [rad] (added to the defocus).
    """
    if conv_angle_mrad <= 0:
        raise ValueError(f"conv_angle_mrad must be positive, got {conv_angle_mrad}")
    ab = normalize_aberrations(aberrations, defocus_A)
    ky, kx = fftfreq_grid_centred(shape, sampling_A)
    a = probe_aperture(shape, sampling_A, wavelength_A, conv_angle_mrad, soft_edge_px)
    if not a.any():
        raise ValueError(
            f"the aperture ({conv_angle_mrad} mrad) contains no reciprocal pixel of the "
            f"{tuple(shape)} grid at {sampling_A} Å/px: increase the grid or the angle")
    chi = aberration_phase(ky, kx, wavelength_A, ab)
    spec = a * np.exp(-1j * chi)
    probe = np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(spec), norm="ortho"))
    probe = probe / np.sqrt(np.sum(np.abs(probe) ** 2))
    return xp.asarray(probe.astype(np.complex128))


def _poly_orders(n: int) -> list[tuple[int, int]]:
    """(py, px) exponents by increasing total degree: (0,0), (0,1), (1,0), (1,1), (0,2), ..."""
    out: list[tuple[int, int]] = []
    deg = 0
    while len(out) < n:
        for py in range(deg + 1):
            px = deg - py
            if deg == 2 and py == 1:
                continue
            out.append((py, px))
        if deg == 2:
            out.insert(len(out) - 2, (1, 1))
        deg += 1
    return out[:n]


def make_modes(probe: Any, n_modes: int, first_mode_power: float = 0.8,
               rng: np.random.Generator | None = None) -> np.ndarray:
    """Mixed-state probe modes ``(M, Ny, Nx)`` complex128 from one probe ``(Ny, Nx)`` (or
    ``(1, Ny, Nx)``).

    Mode 0 is the probe; the others are the probe times low-order polynomials in x, y
    (x, y, xy, x², y², ...; Hermite-Gauss-like), Gram-Schmidt orthogonalised. Mode powers:
    ``first_mode_power`` of the input power for mode 0, the rest split equally, so the
    mode powers sum exactly to Σ|probe|². ``rng`` adds a small random perturbation to the
    extra modes (None: deterministic).
    """
    p = np.asarray(probe)
    if p.ndim == 3:
        p = p[0]
    p = p.astype(np.complex128)
    total = float(np.sum(np.abs(p) ** 2))
    n_modes = int(n_modes)
    if n_modes < 1:
        raise ValueError(f"n_modes must be >= 1, got {n_modes}")
    if n_modes == 1:
        return p[None].copy()
    if not 0.0 < first_mode_power <= 1.0:
        raise ValueError(f"first_mode_power must be in (0, 1], got {first_mode_power}")
    ny, nx = p.shape
    w = np.abs(p) ** 2
    w = w / w.sum()
    yy, xx = np.meshgrid(np.arange(ny) - ny // 2, np.arange(nx) - nx // 2, indexing="ij")
    # centre and scale coordinates by the probe's intensity-weighted width
    cy, cx = float((w * yy).sum()), float((w * xx).sum())
    sy = max(np.sqrt(float((w * (yy - cy) ** 2).sum())), 1.0)
    sx = max(np.sqrt(float((w * (xx - cx) ** 2).sum())), 1.0)
    y, x = (yy - cy) / sy, (xx - cx) / sx
    basis: list[np.ndarray] = []
    for py, px in _poly_orders(n_modes):
        m = p * (y**py) * (x**px)
        if rng is not None and basis:
            m = m + 0.05 * np.abs(p) * (rng.normal(size=p.shape) + 1j * rng.normal(size=p.shape))
        for b in basis:
            m = m - np.vdot(b, m) * b
        norm = np.sqrt(np.sum(np.abs(m) ** 2))
        if norm < 1e-12 * np.sqrt(total):
            raise ValueError("could not build an independent probe mode; the probe is too small "
                             "on its grid for this many modes")
        basis.append(m / norm)
    powers = np.full(n_modes, (1.0 - first_mode_power) / (n_modes - 1)) * total
    powers[0] = first_mode_power * total
    return np.stack([np.sqrt(pw) * b for pw, b in zip(powers, basis)])


def gaussian_nodes(sigma: float, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` Gauss-Hermite nodes [the unit of ``sigma``: Å for a defocus spread or a source
    size] of a Gaussian of standard deviation ``sigma`` about 0, and their weights (summing
    to 1); one node at 0 when σ ≤ 0 or n ≤ 1. The nodes' spread is σ exactly for any n ≥ 2
    (equally spaced samples over ±2σ gave 0.88-0.96σ)."""
    if sigma <= 0 or n <= 1:
        return np.zeros(1), np.ones(1)
    x, w = np.polynomial.hermite_e.hermegauss(int(n))
    return sigma * x, w / w.sum()


def focal_spread_modes(probe_at: Any, defocus_A: float, spread_A: float, n_modes: int,
                       n_points: int | None = None) -> np.ndarray:
    """The ``n_modes`` strongest modes ``(M, Ny, Nx)`` of a probe whose defocus [Å] varies
    with standard deviation ``spread_A`` about ``defocus_A`` (partial temporal coherence):
    the probes ``probe_at(defocus)`` at the ``n_points`` nodes (default max(7, 2M+1)) of a
    Gauss-Hermite rule for that Gaussian, weighted by √w, orthogonalised (the eigenmodes of
    the ensemble's density matrix, by decreasing power) and the strongest kept, scaled so
    the power sums to one probe's."""
    n_points = max(7, 2 * int(n_modes) + 1) if n_points is None else int(n_points)
    offsets, weights = gaussian_nodes(spread_A, n_points)
    ensemble = np.stack([np.sqrt(w) * np.asarray(probe_at(defocus_A + dz), dtype=np.complex128)
                         for dz, w in zip(offsets, weights)])
    modes = orthogonalize_modes(NumpyBackend("float64"), ensemble)[:int(n_modes)]
    total = float(np.sum(np.abs(ensemble) ** 2))
    return modes * np.sqrt(total / float(np.sum(np.abs(modes) ** 2)))


def orthogonalize_modes(bk: Any, modes: Any) -> Any:
    """Orthogonalise probe modes ``(M, Ny, Nx)`` (eigen-decomposition of their Gram matrix),
    sorted by decreasing power; the total power Σ|P|² is unchanged. Backend-agnostic."""
    xp = bk.xp
    m = modes.shape[0]
    flat = xp.reshape(modes, (m, -1))
    gram = bk.matmul(flat, xp.conj(flat).T)  # (M, M) Hermitian
    evals, evecs = xp.linalg.eigh(gram)
    order = xp.argsort(-xp.real(evals))
    evecs = evecs[:, order]
    new = bk.matmul(xp.conj(evecs).T, flat)
    return xp.reshape(new, modes.shape)


def load_probe(path: str | Path) -> np.ndarray:
    """Load probe modes ``(M, Ny, Nx)`` complex from a ``.npy`` file or from the ``/probe``
    dataset of an HDF5 state file (a 2-D array becomes one mode)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"probe file {path} does not exist")
    if path.suffix.lower() == ".npy":
        arr = np.load(path)
    else:
        import h5py

        with h5py.File(path, "r") as f:
            if "probe" not in f:
                raise KeyError(f"{path} has no '/probe' dataset; give a .npy file or a phaser state file")
            node = f["probe"]
            if isinstance(node, h5py.Group):
                if "data" not in node:
                    raise KeyError(f"{path}: group '/probe' has no 'data' dataset")
                node = node["data"]
            arr = node[()]
    arr = np.asarray(arr)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise ValueError(f"probe in {path} must be (Ny, Nx) or (modes, Ny, Nx), got shape {arr.shape}")
    return arr.astype(np.complex128)
