"""Bright-field parallax: the defocus and the scan-detector orientation, from the data alone.

With the probe defocused by Δf [Å] (docs/conventions.md: positive = underfocus, the
crossover downstream of the entrance surface), the ray that reaches the bright-field
detector pixel at scattering vector k [1/Å] crossed the specimen away from the probe
position by Δf·λ·k (geometric optics). So the virtual image of that pixel over the raster
is the bright-field image shifted by ``s(k) = M·k`` [Å] with ``M = Δf·λ·I`` when the
detector axes are parallel to the object axes (what ``RawData`` promises): the parallax
that tilt-corrected bright-field imaging removes (Varnavides et al., Microsc. Microanal.
29 (2023) 1407; Yu et al., Microsc. Microanal. 30 (2024) 1235).

:func:`parallax_fit` finds the map that makes the bright-field pixels' virtual images
agree best: it undoes the shifts ``M·k`` in Fourier space and scores the power of their
sum against the sum of their powers (the ``coherence``: 1 for images that share nothing,
the number of bins for identical ones). It searches Δf in ``M = Δf·λ·G`` for each of the
four detector orientations G that scan and detector can differ by, up to the sign of Δf
(as recorded; turned by 90°; mirrored across y; transposed), and reports the best:

- ``defocus_A``: the defocus [Å] the data show, sign included, for that orientation. A
  defocus of the wrong sign and a detector turned by 180° look alike (−G, and both give
  the inverted twin of the object);
- ``orientation``: ``"as recorded"``, or the correction the loader needs
  (``rotate90``, ``flip_y``, ``transpose``: docs/file-formats.md);
- ``rotation_deg``: then the scan's rotation relative to the detector, within ±45°, as
  ``init.scan.rotation_deg`` would correct it;
- ``resolved``: whether the images agree clearly, much better at Δf than at −Δf, and
  better than in the other orientations. Near focus the images barely move, and those
  of a strong object agree about as well at ±Δf (two peaks): not resolved. A perfect
  crystal agrees again at its lattice's aliases, so the search stays within the defocus
  range a probe that fits the detector's real-space window can have.
"""

from __future__ import annotations

import math

import attrs
import numpy as np

from phaser_core.data import RawData, detector_mask, read_rows

__all__ = ["ParallaxFit", "parallax_fit", "parallax_note", "describe", "ORIENTATIONS", "disc_centre", "centre_note"]

#: bins within this fraction of the bright-field disc's radius
INNER = 0.7

#: the detector orientations relative to the scan, up to a sign: name -> G (2, 2), k' = G k
ORIENTATIONS = {
    "as recorded": np.eye(2),
    "rotate90": np.array([[0.0, -1.0], [1.0, 0.0]]),
    "flip_y": np.array([[-1.0, 0.0], [0.0, 1.0]]),
    "transpose": np.array([[0.0, 1.0], [1.0, 0.0]]),
}


@attrs.frozen
class ParallaxFit:
    """The bright-field parallax of a raster scan (see the module docstring)."""

    #: Δf [Å] that best aligns the bright-field images (for ``orientation``)
    defocus_A: float
    #: the detector orientation that aligns them best (a key of :data:`ORIENTATIONS`)
    orientation: str
    #: the scan rotation [deg] (as ``init.scan.rotation_deg``: positive turns the fast-scan
    #: direction from +x toward +y) that lines them up best, within ±45°
    rotation_deg: float
    #: the images' agreement at the best Δf (1: none; the number of bins: identical), and
    #: without the rotation
    coherence: float
    coherence_unrotated: float
    #: the agreement at −Δf (near focus the images agree about as well at ±Δf: the sign is
    #: not determined), and the best of the other orientations
    coherence_opposite: float
    coherence_other: float
    #: every orientation's best (Δf [Å], coherence)
    by_orientation: dict
    #: bright-field bins used; the largest shift [Å] the best Δf implies; the scan step [Å]
    n_bins: int
    max_shift_A: float
    step_A: float
    #: the smallest |Δf| [Å] whose parallax moves the outermost bin's image half a scan step
    resolvable_defocus_A: float
    #: the search's range ±[Å]
    search_limit_A: float = math.inf
    #: scan positions in the fitted window
    n_positions: int = 144

    @property
    def resolvable_rotation_deg(self) -> float:
        """The smallest scan rotation [deg] the fit tells from noise: on a 12x12 window the
        turn that moves the outermost bin's image a quarter of a scan step, shrinking as
        1/√(positions) on larger ones (the images' errors average). Near focus the images
        hardly move, and there a jittered scan turns them at random: +9° and −6° on 12x12
        rasters at +30 Å with 0.2 Å of jitter (this 14-17°), up to +6.7° on 24x24 (6.9°);
        while 8° at +100 Å with 1 Å steps on 24x24 reads 7.1-7.8° (this 4.3°)."""
        if self.max_shift_A <= 0.25 * self.step_A:
            return 90.0
        geometric = math.degrees(math.asin(0.25 * self.step_A / self.max_shift_A))
        return geometric * math.sqrt(144.0 / max(self.n_positions, 1))

    @property
    def resolved(self) -> bool:
        """The best Δf moves the images by more than half a scan step and aligns them clearly
        (coherence 2 or more), twice as well as −Δf and 1.2x better than any other orientation."""
        return bool(self.max_shift_A > 0.5 * self.step_A and self.coherence >= 2.0
                and self.coherence >= 2.0 * self.coherence_opposite and self.coherence >= 1.2 * self.coherence_other)


def _raster_axes(data: RawData, positions: np.ndarray | None = None) -> tuple[np.ndarray, tuple[int, int]] | None:
    """The raster's step vectors ``(2, 2)`` [Å] (rows: one scan row down, one column right,
    (y, x)) fitted to ``positions`` (N, 2) [Å] (default: the data's), and its shape; None
    without a raster of 8x8 or more, or with steps that do not span the plane."""
    from phaser_std.data.preprocess import raster_positions

    shape = data.scan_shape
    pos = raster_positions(data) if positions is None else np.asarray(positions, dtype=np.float64)
    if (shape is None or pos is None or int(shape[0]) * int(shape[1]) != data.n_patterns
            or pos.shape != (data.n_patterns, 2) or not np.all(np.isfinite(pos))):
        return None
    ny, nx = int(shape[0]), int(shape[1])
    if ny < 8 or nx < 8:
        return None
    ii, jj = np.indices((ny, nx))
    design = np.stack([np.ones(ny * nx), ii.ravel(), jj.ravel()], axis=1)
    coef, *_ = np.linalg.lstsq(design, pos, rcond=None)
    steps = coef[1:]
    if not abs(np.linalg.det(steps)) > 1e-12 * max(float(np.sum(steps**2)), 1e-300):
        return None
    return steps, (ny, nx)


class _Aligner:
    """The bins' windowed virtual images in Fourier space and their scattering vectors:
    :meth:`coherence` of a shift map."""

    def __init__(self, images: np.ndarray, k: np.ndarray, steps: np.ndarray):
        n, ny, nx = images.shape
        window = np.outer(np.hanning(ny), np.hanning(nx))
        im = images - images.mean(axis=(1, 2), keepdims=True)
        norm = np.sqrt(np.sum(im**2, axis=(1, 2), keepdims=True))
        im = im / np.where(norm > 0, norm, 1.0) * window
        self.spectra = np.fft.fft2(im)
        self.spectra[:, 0, 0] = 0.0
        self.power = float(np.sum(np.abs(self.spectra) ** 2))
        self.k = k
        self.to_px = np.linalg.inv(steps)  # Å (y, x) -> scan px (row, column)
        self.qy = np.fft.fftfreq(ny)
        self.qx = np.fft.fftfreq(nx)

    def coherence(self, m: np.ndarray) -> float:
        """Power of the sum of the images shifted back by ``m @ k`` [Å], over the sum of
        their powers."""
        px = (self.k @ m.T) @ self.to_px  # (n, 2) scan px
        ey = np.exp(2j * np.pi * px[:, :1] * self.qy[None, :])
        ex = np.exp(2j * np.pi * px[:, 1:] * self.qx[None, :])
        total = np.einsum("ny,nyx->yx", ey, self.spectra * ex[:, None, :])
        return float(np.sum(np.abs(total) ** 2)) / max(self.power, 1e-300)


def disc_centre(mean_pattern: np.ndarray, valid: np.ndarray | None = None) -> tuple[float, float, int] | None:
    """The bright-field disc's centre (y, x) [px] in a mean pattern ``(Qy, Qx)`` (the
    centroid of its valid pixels above half the largest) and its size [px]; None without one."""
    disc = _disc(mean_pattern, valid)
    if disc is None:
        return None
    yy, xx = np.indices(disc.shape)
    return float(yy[disc].mean()), float(xx[disc].mean()), int(disc.sum())


def _disc(mean_pattern: np.ndarray, valid: np.ndarray | None) -> np.ndarray | None:
    """The bright-field disc ``(Qy, Qx)`` bool: the valid pixels of a mean pattern above half
    its largest; None with fewer than 7."""
    pac = np.nan_to_num(np.asarray(mean_pattern, dtype=np.float64))
    valid = np.ones(pac.shape, bool) if valid is None else np.asarray(valid, bool)
    if not valid.any() or not pac[valid].max() > 0:
        return None
    disc = valid & (pac > 0.5 * pac[valid].max())
    return disc if disc.sum() >= 7 else None


def centre_note(mean_pattern: np.ndarray, valid: np.ndarray | None = None, tolerance_px: float = 0.5) -> str | None:
    """A warning when the bright-field disc's centre lies ``tolerance_px`` or more off the
    zero-angle pixel (Qy//2, Qx//2) the patterns must put it on (docs/conventions.md)."""
    found = disc_centre(mean_pattern, valid)
    if found is None:
        return None
    qy, qx = np.shape(mean_pattern)
    dy, dx = found[0] - qy // 2, found[1] - qx // 2
    if max(abs(dy), abs(dx)) < tolerance_px:
        return None
    return (f"the bright-field disc's centre is ({dy:+.2f}, {dx:+.2f}) px off the zero-angle pixel (Qy//2, Qx//2) "
            f"= ({qy // 2}, {qx // 2}), where the reconstruction puts the undiffracted beam: centre the patterns "
            f"(post_load: [{{type: center_diffraction, method: disc}}]), or the result will be poor "
            f"(abTEM data shifted by 1 / 2 px: Pearson 0.936 / 0.788, centred again 0.983)")


def _bright_field_bins(data: RawData, patterns: np.ndarray, bins_across: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Virtual images ``(n, ny, nx)`` of the bright-field disc's detector bins (b x b pixels,
    the disc ``bins_across`` bins wide, bins at least 3/4 inside it and valid) and their
    scattering vectors ``(n, 2)`` (y, x) [1/Å]."""
    ny, nx, qy, qx = patterns.shape
    mask = detector_mask(data)
    valid = np.ones((qy, qx), bool) if mask is None else mask
    if not valid.any():
        return None
    # a scan row of the window at a time, each given back once read (a memory-mapped file:
    # the whole 32 x 32 window held 64 MiB and more at once; benchmarks/NOTES.md 106)
    total = np.zeros((qy, qx), dtype=np.float64)
    for line in read_rows(patterns, range(ny)):
        total += line.sum(axis=0, dtype=np.float64)
    pac = np.where(valid, total / (ny * nx), 0.0)
    if not np.all(np.isfinite(pac)):
        return None
    disc = _disc(pac, valid)
    if disc is None:
        return None
    # the disc's centre and radius [px]; bins well inside it: there every pixel's image is the
    # same defocus-contrast image, shifted (near the rim the aperture cuts one of the two
    # beams that interfere, and the images differ: in focus they are all that has contrast)
    yy, xx = np.nonzero(disc)
    cy, cx = float(yy.mean()), float(xx.mean())
    radius = math.sqrt(disc.sum() / math.pi)
    b = max(1, int(round(2.0 * radius / bins_across)))
    hy, hx = (qy // b) * b, (qx // b) * b
    cover = disc[:hy, :hx].reshape(hy // b, b, hx // b, b).mean(axis=(1, 3))
    centres = np.indices(cover.shape).reshape(2, -1).T * b + (b - 1) / 2  # (bins, 2) [px]
    inner = np.hypot(centres[:, 0] - cy, centres[:, 1] - cx).reshape(cover.shape) <= INNER * radius
    keep = np.argwhere((cover >= 0.75) & inner)
    if len(keep) < 7:
        return None
    # only the detector rows and columns of the kept bins are read
    (i0, j0), (i1, j1) = keep.min(axis=0), keep.max(axis=0) + 1
    # masked pixels read as 0 (a NaN or hot one under the mask would spoil the bin)
    window = valid[i0 * b:i1 * b, j0 * b:j1 * b]
    cut = np.empty((ny, nx) + window.shape, dtype=np.float32)
    for y, line in enumerate(read_rows(patterns, range(ny))):
        cut[y] = np.where(window, line[:, i0 * b:i1 * b, j0 * b:j1 * b], 0)
    binned = cut.reshape(ny, nx, i1 - i0, b, j1 - j0, b).sum(axis=(3, 5), dtype=np.float64)
    images = np.moveaxis(binned[:, :, keep[:, 0] - i0, keep[:, 1] - j0], -1, 0)
    dky, dkx = data.reciprocal_sampling_invA
    k = np.stack([(keep[:, 0] * b + (b - 1) / 2 - cy) * dky, (keep[:, 1] * b + (b - 1) / 2 - cx) * dkx], axis=1)
    return images, k


def _turn(angle_deg: float) -> np.ndarray:
    """The rotation by ``angle_deg`` [deg] of (y, x) vectors that turns +x toward +y."""
    a = math.radians(angle_deg)
    return np.array([[math.cos(a), math.sin(a)], [-math.sin(a), math.cos(a)]])


def _search(aligner: _Aligner, g: np.ndarray, wavelength: float, limit_A: float, step_df: float) -> tuple[float, float]:
    """The Δf [Å] in [−limit, limit] that maximises the coherence of ``Δf·λ·g``: a grid of
    4·``step_df``, then one of ``step_df`` about its best point, then a parabola through the
    best point and its neighbours."""
    def best_of(grid: np.ndarray) -> tuple[int, np.ndarray]:
        scores = np.array([aligner.coherence(df * wavelength * g) for df in grid])
        return int(np.argmax(scores)), scores

    coarse = np.arange(-limit_A, limit_A + 2 * step_df, 4 * step_df)
    i, _ = best_of(coarse)
    grid = coarse[i] + step_df * np.arange(-4, 5)
    i, scores = best_of(grid)
    best = float(grid[i])
    if 0 < i < len(grid) - 1:
        m, c, p = scores[i - 1], scores[i], scores[i + 1]
        den = m - 2 * c + p
        if den < 0:
            best += 0.5 * (m - p) / den * step_df
    return best, aligner.coherence(best * wavelength * g)


def parallax_fit(data: RawData, max_side: int = 32, bins_across: int = 12,
                 max_defocus_A: float | None = None, positions: np.ndarray | None = None) -> ParallaxFit | None:
    """Fit the bright-field parallax of ``data`` (module docstring); None when the data do
    not allow it: no raster of at least 8x8 positions, no detector sampling or energy, or
    fewer than 7 bright-field bins.

    :param max_side: scans larger than ``max_side`` positions a side use a central window of
        that size (the parallax does not depend on where).
    :param bins_across: bright-field bins across the disc's diameter (detector pixels binned
        b x b to get about as many).
    :param max_defocus_A: the search range ±[Å]; None: 1/(α_disc·Δk), twice the defocus at
        which the geometric probe fills the detector's real-space window 1/Δk.
    :param positions: the scan positions (N, 2) [Å] to judge (a run's, its
        ``init.scan.rotation_deg`` applied); default: the data's.
    """
    axes = _raster_axes(data, positions)
    sampling = data.reciprocal_sampling_invA
    if (axes is None or sampling is None or data.energy_eV is None
            or not all(np.isfinite(v) and v > 0 for v in sampling)):
        return None
    steps, (ny, nx) = axes
    patterns = np.asarray(data.patterns).reshape(ny, nx, *data.pattern_shape)
    y0, x0 = max((ny - max_side) // 2, 0), max((nx - max_side) // 2, 0)
    patterns = patterns[y0:y0 + max_side, x0:x0 + max_side]
    bins = _bright_field_bins(data, patterns, bins_across)
    if bins is None:
        return None
    images, k = bins
    wavelength = data.wavelength_A()
    k_max = float(np.max(np.linalg.norm(k, axis=1)))
    dk = float(min(data.reciprocal_sampling_invA))
    if max_defocus_A is None:
        alpha = max(k_max * wavelength, 1e-6)  # the bins' largest angle [rad], about the disc's
        max_defocus_A = 1.0 / (alpha * dk)
    step_A = float(math.sqrt(abs(np.linalg.det(steps))))
    # a grid fine enough that the outermost bin moves a quarter step between its points
    step_df = max(step_A / (4.0 * wavelength * k_max), 1e-3)
    aligner = _Aligner(images, k, steps)
    found = {name: _search(aligner, g, wavelength, max_defocus_A, step_df) for name, g in ORIENTATIONS.items()}
    name = max(found, key=lambda n: found[n][1])
    defocus, best = found[name]
    # then a rotation of the scan relative to the detector, within ±45° (the orientations
    # above cover the rest): M = Δf·λ·R(φ)·G, and Δf again at the best φ
    g = ORIENTATIONS[name]
    angles = np.arange(-45.0, 45.1, 3.0)
    scores = np.array([aligner.coherence(defocus * wavelength * _turn(a) @ g) for a in angles])
    i = int(np.argmax(scores))
    angle = float(angles[i])
    if 0 < i < len(angles) - 1:
        m, c, p = scores[i - 1], scores[i], scores[i + 1]
        if m - 2 * c + p < 0:
            angle += 0.5 * (m - p) / (m - 2 * c + p) * 3.0
    grid = defocus + step_df * np.arange(-4, 5)
    defocus = float(grid[int(np.argmax([aligner.coherence(df * wavelength * _turn(angle) @ g) for df in grid]))])
    g = _turn(angle) @ g
    best = aligner.coherence(defocus * wavelength * g)
    # the shifts were turned by φ from the recorded scan's axes: the scan needs −φ
    return ParallaxFit(defocus_A=defocus, orientation=name, rotation_deg=-angle, coherence=best,
                       coherence_unrotated=aligner.coherence(defocus * wavelength * ORIENTATIONS[name]),
                       coherence_opposite=aligner.coherence(-defocus * wavelength * g),
                       coherence_other=max(c for n, (_, c) in found.items() if n != name),
                       by_orientation={n: (round(d, 2), round(c, 4)) for n, (d, c) in found.items()},
                       n_bins=len(k), n_positions=int(patterns.shape[0] * patterns.shape[1]),
                       max_shift_A=abs(defocus) * wavelength * k_max, step_A=step_A,
                       resolvable_defocus_A=0.5 * step_A / (wavelength * k_max), search_limit_A=max_defocus_A)


_TURNED = {"rotate90": "turned by 90°", "flip_y": "mirrored (across one axis)", "transpose": "transposed"}

#: the loader settings (applied after its current ones) that turn data of an orientation
#: class back, by the sign of the data's defocus relative to the true one (found by
#: applying every setting to simulated data: tests/test_parallax.py)
_LOADER_FIX = {("rotate90", 1): {"rotate90": 1}, ("rotate90", -1): {"rotate90": 3},
               ("flip_y", 1): {"flip_y": True}, ("flip_y", -1): {"flip_x": True},
               ("transpose", 1): {"transpose": True}, ("transpose", -1): {"transpose": True, "rotate90": 2}}

#: one loader setting for each of the detector's 8 orientations, the plainest first
_PLAIN_SETTINGS = ({}, {"rotate90": 1}, {"rotate90": 3}, {"rotate90": 2}, {"flip_y": True}, {"flip_x": True},
                   {"transpose": True}, {"transpose": True, "rotate90": 2})
_SETTING_KEYS = ("transpose", "flip_y", "flip_x", "rotate90")


def _setting_text(setting: dict) -> str:
    """``transpose: true with rotate90: 2``: loader keys as a plan writes them."""
    words = [f"{k}: {str(v).lower() if isinstance(v, bool) else v}" for k, v in setting.items()]
    return " with ".join(words) if words else "none"


def _combined(current: dict, fix: dict) -> dict:
    """The plainest loader setting equal to ``current`` followed by ``fix`` (both in the
    loader's order: transpose, flips, quarter turns), found by applying them to a labelled
    5x5 detector (odd: every reflection moves a pixel)."""
    from types import SimpleNamespace

    from phaser_std.data.loaders._common import orient_patterns

    def apply(setting: dict, a: np.ndarray) -> np.ndarray:
        return np.asarray(orient_patterns(a, SimpleNamespace(**{k: setting.get(k, 0) for k in _SETTING_KEYS})))

    labels = np.arange(25).reshape(5, 5)
    want = apply(fix, apply(current, labels))
    return next(s for s in _PLAIN_SETTINGS if np.array_equal(apply(s, labels), want))


def _loader_fix(orientation: str, est: float, probe: float, small: float, current: dict | None = None) -> str:
    """The loader setting that corrects the orientation: known when the probe's defocus is
    trusted for its sign, else the two candidates. ``current``: the loader's own detector
    keys (:func:`~phaser_std.data.loaders._common.loader_orientation`), which the setting
    named then replaces."""
    if not isinstance(current, dict) or not set(current) <= set(_SETTING_KEYS):
        current = None  # not a record of the loader keys: name the fix alone

    def setting(sign: int) -> str:
        fix = _LOADER_FIX[(orientation, sign)]
        if not current:
            return f"with {_setting_text(fix)}"
        whole = _combined(current, fix)
        return (f"with {_setting_text(whole)} in place of its {_setting_text(current)}" if whole else
                f"without its {_setting_text(current)}")

    if abs(probe) >= small:
        return setting(1 if est * probe > 0 else -1)
    return (f"{setting(1 if est > 0 else -1)} if the defocus is positive "
            f"(underfocus), {setting(-1 if est > 0 else 1)} if negative")


def describe(fit: ParallaxFit | None) -> str:
    """One line for ``phaser inspect``."""
    if fit is None:
        return "not measured (needs a raster of 8x8 or more, the detector sampling and the energy)"
    if not fit.resolved:
        return (f"not resolved: near focus (|Δf| under ~{fit.resolvable_defocus_A:.0f} Å), beyond "
                f"±{fit.search_limit_A:.0f} Å, too noisy or too few positions")
    where = "detector as recorded" if fit.orientation == "as recorded" else f"detector {_TURNED[fit.orientation]}"
    return (f"defocus ≈ {fit.defocus_A:+.0f} Å, {where}, scan rotation ≈ {round(fit.rotation_deg):+d}° "
            f"± {fit.resolvable_rotation_deg:.0f}°")


def parallax_note(fit: ParallaxFit | None, probe_defocus_A: float, astigmatism_A: float = 0.0,
                  thickness_A: float = 0.0, loader_keys: dict | None = None) -> str | None:
    """A warning for the run's log and console when the data's parallax contradicts the
    probe's defocus [Å] (the plan's or the data's) or the detector's orientation; None when
    they agree or the parallax resolves nothing.

    ``astigmatism_A``: the probe's two-fold astigmatism |C12| [Å]; one as large as half the
    defocus can look like a mirrored detector or a rotated scan, and neither is then judged.
    ``thickness_A``: the object's thickness [Å] (its slices'); the images of a thick
    specimen move with the defocus at some depth in it, anywhere from the entrance (Δf) to
    the exit (Δf − t), so only a parallax outside that range is a contradiction.
    ``loader_keys``: the detector keys the loader applied (``loader_orientation`` of
    :mod:`phaser_std.data.loaders._common`; RawData's ``extra["phaser_detector_keys"]``),
    so that a correction is named as the whole setting to give it."""
    if fit is None or not fit.resolved:
        return None
    est, probe, small = fit.defocus_A, float(probe_defocus_A), fit.resolvable_defocus_A
    lo, hi = probe - max(float(thickness_A), 0.0), probe
    shown = f"the data's bright-field parallax shows a defocus of ≈ {est:+.0f} Å"
    judged = not (astigmatism_A > 0 and astigmatism_A >= 0.5 * max(abs(probe), abs(est)))
    if fit.orientation != "as recorded":
        if not judged:
            return None  # the astigmatism may be what maps it so: neither it nor the sign is judged
        return (f"the data's bright-field images line up best with the detector {_TURNED[fit.orientation]} "
                f"relative to the scan (defocus ≈ {est:+.0f} Å that way): the reconstruction will fail unless the "
                f"loader corrects it, {_loader_fix(fit.orientation, est, probe, small, loader_keys)} (docs/file-formats.md). "
                f"A two-fold astigmatism as large as the defocus can look the same.")
    if (abs(fit.rotation_deg) >= max(5.0, fit.resolvable_rotation_deg)
            and fit.coherence >= 1.03 * fit.coherence_unrotated and judged):
        return (f"the data's bright-field images line up best with the scan turned a further "
                f"{fit.rotation_deg:+.0f}° relative to the detector (defocus ≈ {est:+.0f} Å that way): add "
                f"{fit.rotation_deg:+.0f}° to init.scan.rotation_deg, or the reconstruction will blur or fail. "
                f"A two-fold astigmatism as large as the defocus can look alike.")
    if (est > 0 and hi < -small) or (est < 0 and lo > small):
        depth = (f", {hi:+.0f} to {lo:+.0f} Å from the entrance to the exit of the {thickness_A:.0f} Å object,"
                 if lo < hi else "")
        thick = ("" if lo < hi else " The images of a specimen much thicker than 2·|Δf| move with the defocus "
                 "at its depth (Δf − t/2 mid-way): for one, give the plan its slices.")
        return (f"the probe's defocus is {probe:+.0f} Å{depth} but {shown} (docs/conventions.md: positive = "
                f"underfocus): with the wrong sign the object comes out inverted (its twin). A detector turned "
                f"by 180° relative to the scan (flip_y and flip_x) looks the same.{thick}")
    if lo < hi:
        return None  # a thick object: any depth's defocus may show
    if abs(probe) < small <= 0.5 * abs(est):
        return f"the probe's defocus is {probe:+.0f} Å; {shown}: set init.probe.defocus_A to it"
    if abs(probe) >= small and not 0.5 <= est / probe <= 2.0:
        return f"the probe's defocus is {probe:+.0f} Å; {shown}"
    return None
