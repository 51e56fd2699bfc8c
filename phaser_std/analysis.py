"""Scoring reconstructions against a ground truth (simulated data).

The ground truth's pixel (i, j) sits at (i, j)·s_gt [Å] in the frame of the scan positions
(the layout ``phaser simulate`` writes, see docs/file-formats.md); a reconstructed object's
pixel (i, j) at ``corner_A + (i, j)·sampling_A``. :func:`phase_score` band-limits the
ground truth to the reconstruction's Nyquist frequency (a finer ground truth holds detail
no reconstruction on that grid can show), samples it at the reconstruction's pixel centres
inside the scanned area, removes an offset and an affine phase ramp (ambiguities of
ptychography) by least squares and reports the Pearson correlation, the RMS error [rad]
and the slope of reconstructed against true phase (1: the right contrast).
:func:`frc` is the Fourier ring correlation of the two images, and the resolution where it
falls below 0.5 (``phaser score``).
"""

from __future__ import annotations

from typing import Any

import numpy as np


def sample_bilinear(image: np.ndarray, yy: np.ndarray, xx: np.ndarray, periodic: bool = False) -> np.ndarray:
    """``image`` at fractional pixel coordinates (``yy``, ``xx``), bilinear; edge-clamped or periodic."""
    h, w = image.shape
    y0 = np.floor(yy).astype(np.int64)
    x0 = np.floor(xx).astype(np.int64)
    fy = yy - y0
    fx = xx - x0

    def at(iy: np.ndarray, ix: np.ndarray) -> np.ndarray:
        if periodic:
            return image[np.mod(iy, h), np.mod(ix, w)]
        return image[np.clip(iy, 0, h - 1), np.clip(ix, 0, w - 1)]

    return ((1 - fy) * (1 - fx) * at(y0, x0) + (1 - fy) * fx * at(y0, x0 + 1)
            + fy * (1 - fx) * at(y0 + 1, x0) + fy * fx * at(y0 + 1, x0 + 1))


def bandlimit_image(image: np.ndarray, sampling_A: Any, k_max: Any) -> np.ndarray:
    """``image`` without the spatial frequencies beyond ``k_max`` (y, x) [1/Å] on either
    axis (a box filter in Fourier space). The image is treated as periodic: a non-periodic
    one rings at opposite edges. The scorer applies it only to ground truths finer than the
    reconstruction, which ``phaser simulate`` writes on the reconstruction's own grid
    (no filter) and abTEM's cross-check writes periodic."""
    s = np.broadcast_to(np.asarray(sampling_A, dtype=np.float64), (2,))
    k = np.broadcast_to(np.asarray(k_max, dtype=np.float64), (2,))
    ky = np.abs(np.fft.fftfreq(image.shape[0], s[0]))[:, None]
    kx = np.abs(np.fft.fftfreq(image.shape[1], s[1]))[None, :]
    keep = (ky <= k[0] + 1e-12) & (kx <= k[1] + 1e-12)
    if keep.all():
        return np.asarray(image, dtype=np.float64)
    return np.real(np.fft.ifft2(np.fft.fft2(image) * keep))


def remove_ramp(values: np.ndarray, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """``values`` minus its least-squares plane a + b·y + c·x."""
    a = np.stack([np.ones(values.size), yy.ravel(), xx.ravel()], axis=1)
    coef, *_ = np.linalg.lstsq(a, values.ravel(), rcond=None)
    return values - (a @ coef).reshape(values.shape)


def scanned_box_A(scan_A: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(lo, hi)`` (y, x) [Å]: the bounding box of ``scan_A`` ``(N, 2)``, shrunk about its
    centre until its corners lie inside the positions' convex hull (to within their typical
    spacing, so a jittered raster keeps its box): a rotated raster's bounding box holds
    unscanned corners, which scored as if reconstructed (Pearson 0.913 against 0.985 over
    the scanned area for a raster turned by 30°)."""
    pos = np.asarray(scan_A, dtype=np.float64)
    lo, hi = pos.min(axis=0), pos.max(axis=0)
    from phaser_std.physics.scan import hull_and_spacing

    hull, spacing = hull_and_spacing(pos)
    if hull is None:
        return lo, hi  # collinear or too few positions: the box is the scanned area
    centre = 0.5 * (lo + hi)

    def inside(f: float) -> bool:
        half = 0.5 * f * (hi - lo)
        corners = centre + np.array([[-1, -1], [-1, 1], [1, -1], [1, 1]]) * half
        return bool(np.all(corners @ hull.equations[:, :2].T + hull.equations[:, 2] <= spacing))

    if inside(1.0):
        return lo, hi
    f_in, f_out = 0.0, 1.0
    for _ in range(30):
        f = 0.5 * (f_in + f_out)
        f_in, f_out = (f, f_out) if inside(f) else (f_in, f)
    half = 0.5 * f_in * (hi - lo)
    return centre - half, centre + half


def scan_box(shape: tuple, sampling_A: Any, corner_A: Any, scan_A: np.ndarray,
             margin_A: float = 0.0) -> tuple[int, int, int, int]:
    """Pixel bounds ``(i0, i1, j0, j1)`` [px] of the scanned box of ``scan_A`` ``(N, 2)``
    (y, x) [Å] (:func:`scanned_box_A`), shrunk by ``margin_A`` [Å] on each side, on a grid of
    ``shape`` with pixel size ``sampling_A`` (y, x) [Å] and pixel (0, 0)'s centre at
    ``corner_A`` (y, x) [Å]."""
    s = np.broadcast_to(np.asarray(sampling_A, dtype=np.float64), (2,))
    corner = np.asarray(corner_A, dtype=np.float64)
    box_lo, box_hi = scanned_box_A(scan_A)
    lo = box_lo + margin_A
    hi = box_hi - margin_A
    i0, j0 = np.maximum(np.ceil((lo - corner) / s).astype(int), 0)
    i1, j1 = np.minimum(np.floor((hi - corner) / s).astype(int) + 1, shape[-2:])
    if i1 - i0 < 3 or j1 - j0 < 3:
        raise ValueError("the scanned area holds fewer than 3x3 reconstruction pixels")
    return int(i0), int(i1), int(j0), int(j1)


def phase_score(recon_phase: np.ndarray, recon_sampling_A: Any, recon_corner_A: Any, gt_phase: np.ndarray,
                gt_sampling_A: Any, scan_A: np.ndarray, *, periodic: bool = False, margin_A: float = 0.0,
                with_frc: bool = False) -> dict:
    """Compare a reconstructed phase (H, W) [rad] with the ground truth, band-limited to
    the reconstruction's Nyquist frequency 1/(2·``recon_sampling_A``).

    Only pixels inside the scanned box of ``scan_A`` (:func:`scanned_box_A`, shrunk by
    ``margin_A`` [Å]) count.
    Returns ``{"pearson", "rms_rad", "slope", "n_pixels"}`` after removing an offset and a
    phase ramp from both images (``slope``: the least-squares factor of reconstructed
    against true phase), and with ``with_frc`` their :func:`frc` as ``"frc"``.
    """
    s = np.broadcast_to(np.asarray(recon_sampling_A, dtype=np.float64), (2,))
    sg = np.broadcast_to(np.asarray(gt_sampling_A, dtype=np.float64), (2,))
    corner = np.asarray(recon_corner_A, dtype=np.float64)
    i0, i1, j0, j1 = scan_box(recon_phase.shape, s, corner, scan_A, margin_A)
    ii, jj = np.meshgrid(np.arange(i0, i1), np.arange(j0, j1), indexing="ij")
    gy = (corner[0] + ii * s[0]) / sg[0]
    gx = (corner[1] + jj * s[1]) / sg[1]
    gt_bl = bandlimit_image(np.asarray(gt_phase, dtype=np.float64), sg, 1.0 / (2.0 * s))
    gt = sample_bilinear(gt_bl, gy, gx, periodic)
    rec = np.asarray(recon_phase, dtype=np.float64)[i0:i1, j0:j1]
    yy = (ii - ii.mean()) / max(1, ii.max() - ii.min())
    xx = (jj - jj.mean()) / max(1, jj.max() - jj.min())
    rec_c = remove_ramp(rec, yy, xx)
    gt_c = remove_ramp(gt, yy, xx)
    pearson = float(np.corrcoef(rec_c.ravel(), gt_c.ravel())[0, 1])
    rms = float(np.sqrt(np.mean((rec_c - gt_c) ** 2)))
    slope = float(np.sum(rec_c * gt_c) / max(np.sum(gt_c * gt_c), 1e-300))
    out = {"pearson": pearson, "rms_rad": rms, "slope": slope, "n_pixels": int(rec.size)}
    if with_frc:
        out["frc"] = frc(rec_c, gt_c, s)
    return out


#: the FRC threshold whose crossing :func:`frc` reports as the resolution
FRC_THRESHOLD = 0.5
#: rings from 0 to the Nyquist frequency: wide enough that each holds some of a crystal's
#: Bragg reflections (thin rings fall between them and correlate residuals alone)
FRC_RINGS = 24
#: rings where the second image's power per pixel is below this fraction of its mean are
#: left out of the crossing (no signal to correlate)
INFORMATIVE_FRACTION = 1e-3


def frc(a: np.ndarray, b: np.ndarray, sampling_A: Any, n_rings: int | None = None) -> dict:
    """Fourier ring correlation of two images of the same shape and pixel size
    ``sampling_A`` (y, x) [Å], each windowed (Hann) after removing its mean.

    Returns ``{"k_invA": ring centres [1/Å], "frc": values, "informative": rings where
    b holds signal, "resolution_A": 1/k where the FRC first falls below``
    :data:`FRC_THRESHOLD` ``in an informative ring (None: never, up to the smaller axis'
    Nyquist frequency)}``. ``b`` is the reference (the ground truth): rings where it holds
    under`` :data:`INFORMATIVE_FRACTION` ``of its mean power per pixel (between a
    crystal's Bragg rings) do not count.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"frc needs two 2-d images of one shape, got {a.shape} and {b.shape}")
    s = np.broadcast_to(np.asarray(sampling_A, dtype=np.float64), (2,))
    window = np.outer(np.hanning(a.shape[0]), np.hanning(a.shape[1]))
    fa = np.fft.fft2((a - a.mean()) * window)
    fb = np.fft.fft2((b - b.mean()) * window)
    ky = np.fft.fftfreq(a.shape[0], s[0])[:, None]
    kx = np.fft.fftfreq(a.shape[1], s[1])[None, :]
    k = np.hypot(ky, kx)
    k_nyq = float(min(1.0 / (2.0 * s[0]), 1.0 / (2.0 * s[1])))
    n = int(n_rings or FRC_RINGS)
    edges = np.linspace(0.0, k_nyq, n + 1)
    ring = np.digitize(k.ravel(), edges) - 1
    inside = (ring >= 0) & (ring < n)
    ring = ring[inside]

    def ring_sum(v: np.ndarray) -> np.ndarray:
        return np.bincount(ring, weights=v.ravel()[inside], minlength=n)

    cross = ring_sum(np.real(fa * np.conj(fb)))
    power_b = ring_sum(np.abs(fb) ** 2)
    power = np.sqrt(ring_sum(np.abs(fa) ** 2) * power_b)
    values = np.where(power > 0, cross / np.maximum(power, 1e-300), 0.0)
    centres = 0.5 * (edges[1:] + edges[:-1])
    # rings where ``b`` holds (almost) nothing carry no information: between a crystal's
    # Bragg rings the correlation is of residuals alone
    pixels = np.maximum(np.bincount(ring, minlength=n), 1)
    density = power_b / pixels
    informative = density > INFORMATIVE_FRACTION * np.mean(density[1:][density[1:] > 0]) if np.any(density[1:] > 0) \
        else np.zeros(n, dtype=bool)
    informative[0] = False  # the first ring holds the window's leakage
    below = np.nonzero(informative & (values < FRC_THRESHOLD))[0]
    resolution = None if below.size == 0 else float(1.0 / centres[below[0]])
    return {"k_invA": centres, "frc": values, "informative": informative, "resolution_A": resolution}


def score_state(state: Any, ground_truth: dict, *, slice_index: int | None = None, margin_A: float = 0.0,
                with_frc: bool = False) -> dict:
    """:func:`phase_score` of a state's summed object phase (or one slice) against
    ``RawData.ground_truth`` (``phase`` or ``potential`` per slice, ``sampling_A``)."""
    obj = np.asarray(state.object.data)
    # remove each slice's mean phase over the scanned area before taking angles, so an
    # offset near ±π does not wrap (a constant is removed from the score anyway)
    i0, i1, j0, j1 = scan_box(obj.shape, state.object.sampling_A, state.object.corner_A,
                              np.asarray(state.scan_A), margin_A)
    mean = obj[:, i0:i1, j0:j1].mean(axis=(-2, -1), keepdims=True)
    phases = np.angle(obj * np.conj(mean) / np.maximum(np.abs(mean), 1e-30))
    if slice_index is None:
        recon = phases.sum(axis=0)
        gt = np.asarray(ground_truth["phase"])
    else:
        potential = np.asarray(ground_truth["potential"])
        if potential.shape[0] != obj.shape[0]:
            raise ValueError(f"the state has {obj.shape[0]} slices, the ground truth {potential.shape[0]}")
        recon = phases[slice_index]
        gt = potential[slice_index]
    periodic = str(ground_truth.get("periodic", "no")).lower() in ("yes", "true", "1")
    return phase_score(recon, state.object.sampling_A, state.object.corner_A, gt, ground_truth["sampling_A"],
                       np.asarray(state.scan_A), periodic=periodic, margin_A=margin_A, with_frc=with_frc)
