"""Constraint regularizers: projections applied to the state after a group or an iteration.

Interface (every engine)::

    reg = spec.build(registry)            # cls(config)
    probe, obj = reg.apply(bk, probe, obj, info)

An engine applies the constraints of its ``group_constraints`` list after every group and
those of its ``iter_constraints`` list after every iteration: the list decides, so one
constraint can serve in either.

``probe`` ``(M, Ny, Nx)`` and ``obj`` ``(S, H, W)`` are complex backend arrays; ``info`` is a
:class:`phaser_std.engines.regularizers.RegInfo` (``sampling_A`` (y, x) [Å],
``wavelength_A`` [Å], ``thicknesses_A`` [Å], ``illumination`` (H, W) or None, ...).
``apply`` is pure (returns new arrays; no in-place writes, no Python branching on array
values), so it runs on numpy, cupy and inside ``jax.jit``; filters and masks depend only on
shapes and config and are built on the host with numpy.
"""

from __future__ import annotations

import math
from typing import Any

import attrs
import numpy as np

from phaser_core.config import in_range, param
from phaser_std.physics.optics import _pair, fftfreq_grid, fftfreq_grid_centred
from phaser_std.physics.forward import abs2

__all__ = ["ClampObjectAmplitude", "LimitProbeSupport", "ObjLowPass", "ObjBlur", "RemovePhaseRamp",
           "Layers", "OrthogonalizeProbeModes", "CenterProbe", "CONSTRAINTS"]

class Constraint:
    """Base class: the config kept, ``apply`` defined by subclasses."""

    name = "constraint"

    def __init__(self, config: Any):
        self.config = config

    def apply(self, bk: Any, probe: Any, obj: Any, info: Any) -> tuple[Any, Any]:  # pragma: no cover
        raise NotImplementedError


# ---------------------------------------------------------------------------------------


def _check_min_amplitude(instance: Any, attribute: Any, value: float) -> None:
    """``min_amplitude``: 0 <= min_amplitude <= max_amplitude."""
    top = instance.max_amplitude
    if isinstance(value, (int, float)) and isinstance(top, (int, float)) and not 0 <= value <= top:
        raise ValueError(f"must be >= 0 and <= max_amplitude = {top}, got {value}", attribute)


@attrs.frozen
class ClampAmplitudeConfig:
    max_amplitude: float = param(1.0, doc="upper bound of |O|", validator=in_range(0, lo_open=True))
    min_amplitude: float = param(0.0, doc="lower bound of |O|", validator=_check_min_amplitude)


class ClampObjectAmplitude(Constraint):
    """Rescale the object so that ``min_amplitude <= |O| <= max_amplitude``, phase kept
    (removes the scale ambiguity between object amplitude and probe intensity)."""

    name = "clamp_object_amplitude"

    def __init__(self, config: ClampAmplitudeConfig):
        super().__init__(config)
        if not 0 <= config.min_amplitude <= config.max_amplitude:
            raise ValueError(f"clamp_object_amplitude: need 0 <= min_amplitude <= max_amplitude, got "
                             f"{config.min_amplitude}, {config.max_amplitude}")

    def apply(self, bk, probe, obj, info):
        xp = bk.xp
        a = xp.abs(obj)
        tiny = 1e-30
        safe = xp.where(a > tiny, a, 1.0)
        clamped = xp.clip(a, self.config.min_amplitude, self.config.max_amplitude)
        new = xp.where(a > tiny, obj * (clamped / safe), self.config.min_amplitude + 0 * obj)
        return probe, new.astype(obj.dtype)


# ---------------------------------------------------------------------------------------


def _check_support(instance: Any, attribute: Any, value: float | None) -> None:
    """``radius_A`` (checked last): positive, and at least one of it and ``max_angle_mrad``."""
    in_range(0, lo_open=True)(instance, attribute, value)
    if value is None and instance.max_angle_mrad is None:
        raise ValueError("limit_probe_support needs max_angle_mrad [mrad] and/or radius_A [Å], "
                         "e.g. {type: limit_probe_support, max_angle_mrad: 30}")


@attrs.frozen
class ProbeSupportConfig:
    max_angle_mrad: float | None = param(None, unit="mrad", doc="zero probe Fourier components beyond this angle",
                                         validator=in_range(0, lo_open=True))
    radius_A: float | None = param(None, unit="Å", doc="zero the probe beyond this radius from the centre",
                                   validator=_check_support)


class LimitProbeSupport(Constraint):
    """Probe support in reciprocal space (``θ = λ|k| <= max_angle_mrad``) and/or real space
    (``|r − centre| <= radius_A``); both are hard masks on the centred grids."""

    name = "limit_probe_support"

    def __init__(self, config: ProbeSupportConfig):
        super().__init__(config)
        if config.max_angle_mrad is None and config.radius_A is None:
            raise ValueError("limit_probe_support: give max_angle_mrad [mrad] and/or radius_A [Å]")

    def apply(self, bk, probe, obj, info):
        shape = tuple(probe.shape[-2:])
        out = probe
        if self.config.max_angle_mrad is not None:
            if info.wavelength_A is None:
                raise ValueError("limit_probe_support with max_angle_mrad needs the wavelength (info.wavelength_A)")
            ky, kx = fftfreq_grid_centred(shape, info.sampling_A)
            theta_mrad = 1e3 * float(info.wavelength_A) * np.sqrt(ky ** 2 + kx ** 2)
            mask = bk.asarray((theta_mrad <= self.config.max_angle_mrad).astype(np.float64))
            out = bk.ifft2c(bk.fft2c(out) * mask)
        if self.config.radius_A is not None:
            sy, sx = _pair(info.sampling_A)
            y = (np.arange(shape[0]) - shape[0] // 2)[:, None] * sy
            x = (np.arange(shape[1]) - shape[1] // 2)[None, :] * sx
            mask = bk.asarray((np.sqrt(y ** 2 + x ** 2) <= self.config.radius_A).astype(np.float64))
            out = out * mask
        return out.astype(probe.dtype), obj


# ---------------------------------------------------------------------------------------


@attrs.frozen
class LowPassConfig:
    cutoff: float = param(0.8, doc="frequency where the Gaussian filter is ½, as a fraction of Nyquist")


class ObjLowPass(Constraint):
    """Gaussian low-pass of every object slice: ``F(f) = exp(−ln2·(f/f_c)²)`` with ``f``
    [cycles/px] and ``f_c = cutoff·½`` (F = ½ at the cutoff; periodic in the plane)."""

    name = "obj_low_pass"

    def apply(self, bk, probe, obj, info):
        if self.config.cutoff <= 0:
            raise ValueError(f"obj_low_pass: cutoff must be > 0 (fraction of Nyquist), got {self.config.cutoff}")
        ky, kx = fftfreq_grid(tuple(obj.shape[-2:]), 1.0)
        fc = 0.5 * self.config.cutoff
        filt = bk.asarray(np.exp(-math.log(2.0) * (ky ** 2 + kx ** 2) / fc ** 2))
        return probe, bk.ifft2(bk.fft2(obj) * filt).astype(obj.dtype)


@attrs.frozen
class BlurConfig:
    sigma_A: float = param(0.5, unit="Å", doc="standard deviation of the Gaussian blur")
    weight: float = param(1.0, doc="blend: w·blurred + (1 − w)·O")


class ObjBlur(Constraint):
    """Gaussian blur of every object slice in the plane, ``sigma_A`` [Å], Fourier filter
    ``1 − w(1 − exp(−2π²σ²k²))`` (k [1/Å])."""

    name = "obj_blur"

    def apply(self, bk, probe, obj, info):
        ky, kx = fftfreq_grid(tuple(obj.shape[-2:]), info.sampling_A)
        g = np.exp(-2.0 * np.pi ** 2 * self.config.sigma_A ** 2 * (ky ** 2 + kx ** 2))
        filt = bk.asarray(1.0 - self.config.weight * (1.0 - g))
        return probe, bk.ifft2(bk.fft2(obj) * filt).astype(obj.dtype)


# ---------------------------------------------------------------------------------------


@attrs.frozen
class PhaseRampConfig:
    remove_offset: bool = param(True, doc="also remove the (weighted) mean phase of each slice")


class IlluminationMap:
    """Σ over scan positions of the probe intensity Σ_modes |P|² [e⁻ per pixel, the probe's
    scale] on the object grid ``(H, W)`` (a backend array), each view at its integer corner (a weight needs no
    sub-pixel shift): the count of corners convolved with the probe intensity by FFT, on
    the backend (O(H·W·log), whatever the number of positions). The corners are counted on
    the host (O(N)); the counts' transform is made again only when the positions move. The
    views lie inside the grid, so the cyclic convolution does not wrap."""

    def __init__(self, bk: Any, geometry: Any, probe_shape: tuple[int, int]):
        self.bk, self.geometry = bk, geometry
        self.probe_shape = (int(probe_shape[0]), int(probe_shape[1]))
        self._starts: np.ndarray | None = None
        self._counts_ft: Any = None
        h, w = (int(n) for n in geometry.shape[-2:])
        py, px = self.probe_shape

        def convolve(counts_ft: Any, probe: Any) -> Any:
            xp = bk.xp
            kernel = xp.pad(xp.sum(xp.real(probe * xp.conj(probe)), axis=0), ((0, h - py), (0, w - px)))
            return xp.maximum(xp.fft.irfft2(counts_ft * xp.fft.rfft2(kernel), s=(h, w)), 0.0)

        self._convolve = bk.jit(convolve)

    def __call__(self, probe: Any, scan_A: np.ndarray) -> Any:
        from phaser_std.physics.forward import scan_to_pixels

        g = self.geometry
        starts = np.asarray(scan_to_pixels(np.asarray(scan_A, dtype=np.float64), g.corner_A, g.sampling_A,
                                           self.probe_shape)[0], dtype=np.int64)
        if self._starts is None or not np.array_equal(starts, self._starts):
            h, w = (int(n) for n in g.shape[-2:])
            counts = np.zeros((h, w))
            np.add.at(counts, (starts[:, 0] % h, starts[:, 1] % w), 1.0)
            self._counts_ft = self.bk.xp.fft.rfft2(self.bk.asarray(counts))
            self._starts = starts
        return self._convolve(self._counts_ft, probe)


def illumination_map(probe: np.ndarray, scan_A: np.ndarray, geometry: Any) -> np.ndarray:
    """:class:`IlluminationMap` once, on the host (float64)."""
    from phaser_std.backends.numpy_backend import NumpyBackend

    probe = np.asarray(probe)
    return IlluminationMap(NumpyBackend("float64"), geometry, probe.shape[-2:])(probe, scan_A)


def needs_illumination(constraints: list) -> bool:
    """Whether any of ``constraints`` reads ``info.illumination`` (:func:`illumination_map`)."""
    return any(getattr(c, "needs_illumination", False) for c in constraints)


class RemovePhaseRamp(Constraint):
    """Remove an affine phase ``a + g_y·y + g_x·x`` from each slice (a ptychographic ambiguity).

    The slope is the weighted mean phase difference between neighbouring pixels,
    ``g_y = arg Σ w·O[y+1]·conj(O[y])`` (immune to phase wrapping); products of neighbours
    already weight by object amplitude, and ``w`` is ``info.illumination`` (the probe
    intensity summed over positions, so only the illuminated area counts) when given, else 1.
    The offset is ``arg Σ w·|O|·O`` after removing the ramp. Amplitudes are unchanged. As an
    iteration constraint the engines give it the illumination of the iteration's positions
    and probe; as a group constraint it weights every pixel alike.
    """

    name = "remove_phase_ramp"
    needs_illumination = True

    def apply(self, bk, probe, obj, info):
        xp = bk.xp
        s, h, w = obj.shape
        illum = getattr(info, "illumination", None)
        wt = xp.ones((h, w), dtype=bk.real_dtype) if illum is None else xp.real(illum).astype(bk.real_dtype)
        wy = xp.sqrt(wt[1:, :] * wt[:-1, :])
        wx = xp.sqrt(wt[:, 1:] * wt[:, :-1])
        gy = xp.angle(xp.sum(wy * obj[:, 1:, :] * xp.conj(obj[:, :-1, :]), axis=(-2, -1)))  # (S,)
        gx = xp.angle(xp.sum(wx * obj[:, :, 1:] * xp.conj(obj[:, :, :-1]), axis=(-2, -1)))
        y = xp.asarray(np.arange(h) - (h - 1) / 2.0, dtype=bk.real_dtype)[None, :, None]
        x = xp.asarray(np.arange(w) - (w - 1) / 2.0, dtype=bk.real_dtype)[None, None, :]
        ramp = gy[:, None, None] * y + gx[:, None, None] * x
        out = obj * xp.exp(-1j * ramp)
        if self.config.remove_offset:
            off = xp.angle(xp.sum(wt * xp.abs(out) * out, axis=(-2, -1)))
            out = out * xp.exp(-1j * off)[:, None, None]
        return probe, out.astype(obj.dtype)


# ---------------------------------------------------------------------------------------


@attrs.frozen
class LayersConfig:
    sigma_slices: float = param(1.0, doc="standard deviation of the blur along depth [slices]")
    weight: float = param(0.9, doc="blend: w·blurred + (1 − w)·O")


def depth_blur_matrix(n: int, sigma: float) -> np.ndarray:
    """``(n, n)`` row-normalised Gaussian weights along depth, truncated at the object's top
    and bottom (no wrap-around: the top slice never mixes with the bottom one)."""
    z = np.arange(n)
    if sigma <= 0:
        return np.eye(n)
    k = np.exp(-0.5 * ((z[:, None] - z[None, :]) / sigma) ** 2)
    k[np.abs(z[:, None] - z[None, :]) > math.ceil(3 * sigma)] = 0.0
    return k / k.sum(axis=1, keepdims=True)


class Layers(Constraint):
    """Gaussian blur of the complex object along depth in real space (a matrix over slices,
    renormalised at the top and bottom: no Fourier filter, so no wrap-around mixing of the
    first and last slices), blended ``w·blurred + (1 − w)·O``. No-op for one slice.
    Blurring O rather than log O avoids phase-wrapping trouble; for weak phase objects
    they agree to first order."""

    name = "layers"

    def apply(self, bk, probe, obj, info):
        n = obj.shape[0]
        if n == 1:
            return probe, obj
        w = self.config.weight
        mat = w * depth_blur_matrix(n, self.config.sigma_slices) + (1 - w) * np.eye(n)
        m = bk.asarray(mat.astype(np.complex128))
        mixed = bk.matmul(m, bk.xp.reshape(obj, (n, -1)))
        return probe, bk.xp.reshape(mixed, obj.shape).astype(obj.dtype)


# ---------------------------------------------------------------------------------------


@attrs.frozen
class OrthoConfig:
    """No settings."""


class OrthogonalizeProbeModes(Constraint):
    """Orthogonalise the probe modes (eigenvectors of their Gram matrix), sorted by
    decreasing power; total power unchanged (:func:`phaser_std.physics.probe.orthogonalize_modes`)."""

    name = "orthogonalize_probe_modes"

    def apply(self, bk, probe, obj, info):
        if probe.shape[0] == 1:
            return probe, obj
        from phaser_std.physics.probe import orthogonalize_modes

        return orthogonalize_modes(bk, probe).astype(probe.dtype), obj


@attrs.frozen
class CenterConfig:
    """No settings."""


class CenterProbe(Constraint):
    """Shift the probe (all modes by the same Fourier shift) so that the centre of mass of
    Σ_modes |P|² sits at pixel ``(Ny//2, Nx//2)``.

    The object is deliberately **not** shifted the opposite way: a probe offset is equivalent
    to a constant offset of every scan position, and the object adapts to the re-centred
    probe over the next updates; shifting the object too would need sub-pixel interpolation
    of the whole field of view every time and blur it.
    """

    name = "center_probe"

    def apply(self, bk, probe, obj, info):
        xp = bk.xp
        ny, nx = probe.shape[-2:]
        inten = xp.sum(abs2(xp, probe), axis=0)
        total = xp.sum(inten)
        y = xp.asarray(np.arange(ny) - ny // 2, dtype=bk.real_dtype)[:, None]
        x = xp.asarray(np.arange(nx) - nx // 2, dtype=bk.real_dtype)[None, :]
        safe = xp.where(total > 0, total, 1.0)
        cy = xp.sum(inten * y) / safe
        cx = xp.sum(inten * x) / safe
        ky = xp.asarray(np.fft.fftfreq(ny), dtype=bk.real_dtype)[:, None]
        kx = xp.asarray(np.fft.fftfreq(nx), dtype=bk.real_dtype)[None, :]
        # shift by d = −c: spectrum times exp(−2πi k·d) = exp(+2πi k·c)
        phase = xp.exp(2j * np.pi * (ky * cy + kx * cx))
        return bk.ifft2(bk.fft2(probe) * phase).astype(probe.dtype), obj


CONSTRAINTS = (
    ("clamp_object_amplitude", ClampObjectAmplitude, ClampAmplitudeConfig),
    ("limit_probe_support", LimitProbeSupport, ProbeSupportConfig),
    ("obj_low_pass", ObjLowPass, LowPassConfig),
    ("obj_blur", ObjBlur, BlurConfig),
    ("remove_phase_ramp", RemovePhaseRamp, PhaseRampConfig),
    ("layers", Layers, LayersConfig),
    ("orthogonalize_probe_modes", OrthogonalizeProbeModes, OrthoConfig),
    ("center_probe", CenterProbe, CenterConfig),
)
