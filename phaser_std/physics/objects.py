"""Object grids and initial objects, slice and pixel-size resampling.

An object is ``(S, H, W)`` complex transmission functions (:class:`ObjectState`) with
``corner_A`` the (y, x) position [Å] of pixel (0, 0)'s centre in the scan frame.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from phaser_core.state import ObjectState
from phaser_std.physics.optics import _pair

__all__ = [
    "object_grid",
    "vacuum_object",
    "random_object",
    "resample_slices",
    "resample_object_slices",
    "resample_pixel_size",
]


def object_grid(scan_A: Any, probe_shape: Sequence[int], sampling_A: Any, pad_px: int = 8
                ) -> tuple[tuple[int, int], tuple[float, float]]:
    """Shape ``(H, W)`` and ``corner_A`` (y, x) [Å] of an object grid with pixel size
    ``sampling_A`` [Å] covering every probe view of ``scan_A`` ``(N, 2)`` [Å] with
    ``pad_px`` spare pixels on each side (room for position correction)."""
    scan = np.asarray(scan_A, dtype=np.float64).reshape(-1, 2)
    if scan.shape[0] == 0:
        raise ValueError("object_grid needs at least one scan position")
    s = np.array(_pair(sampling_A))
    n = np.array([int(probe_shape[0]), int(probe_shape[1])])
    lo, hi = scan.min(axis=0), scan.max(axis=0)
    pad = int(pad_px)
    corner = lo - (n // 2 + pad) * s
    size = np.ceil((hi - lo) / s - 1e-9).astype(int) + n + 2 * pad + 1
    return (int(size[0]), int(size[1])), (float(corner[0]), float(corner[1]))


def _thicknesses(n_slices: int, thicknesses_A: Any) -> np.ndarray:
    if thicknesses_A is None:
        return np.zeros(int(n_slices))
    t = np.asarray(thicknesses_A, dtype=np.float64).reshape(-1)
    if t.size == 1 and n_slices > 1:
        t = np.full(int(n_slices), float(t[0]))
    if t.size != n_slices:
        raise ValueError(f"{t.size} slice thicknesses given for {n_slices} slices")
    return t


def vacuum_object(scan_A: Any, probe_shape: Sequence[int], sampling_A: Any, n_slices: int = 1,
                  thicknesses_A: Any = None, pad_px: int = 8) -> ObjectState:
    """An all-ones (vacuum) object of ``n_slices`` slices around the scan."""
    shape, corner = object_grid(scan_A, probe_shape, sampling_A, pad_px)
    data = np.ones((int(n_slices), *shape), dtype=np.complex128)
    return ObjectState(data=data, sampling_A=_pair(sampling_A), corner_A=corner,
                       thicknesses_A=_thicknesses(n_slices, thicknesses_A))


def random_object(scan_A: Any, probe_shape: Sequence[int], sampling_A: Any, rng: np.random.Generator,
                  phase_sigma_rad: float = 1e-3, n_slices: int = 1, thicknesses_A: Any = None,
                  pad_px: int = 8) -> ObjectState:
    """Unit-amplitude object with Gaussian random phase of std ``phase_sigma_rad`` [rad]
    (divided evenly between slices, so the total phase has that spread)."""
    obj = vacuum_object(scan_A, probe_shape, sampling_A, n_slices, thicknesses_A, pad_px)
    sigma = float(phase_sigma_rad) / math.sqrt(int(n_slices))
    obj.data = np.exp(1j * rng.normal(0.0, sigma, size=obj.data.shape))
    return obj


def resample_slices(data: Any, thicknesses_A: Any, n_new: int,
                    new_thicknesses_A: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """Resample ``(S, H, W)`` transmission functions to ``n_new`` slices over the same
    total thickness, conserving the total complex phase (Σ log O per pixel).

    The log (i·phase + log-amplitude) of each old slice is spread uniformly over its depth
    and integrated over each new slice's depth. Phases per old slice should stay below π
    (principal log). Zero thicknesses are treated as equal depths when all are zero; a
    single slice of zero thickness goes whole into the new slice at its depth.
    Returns ``(data (n_new, H, W) complex128, thicknesses (n_new,) [Å])``.
    """
    d = np.asarray(data)
    n_old = d.shape[0]
    t_old = _thicknesses(n_old, thicknesses_A)
    total = float(t_old.sum())
    n_new = int(n_new)
    if n_new < 1:
        raise ValueError(f"the number of slices must be >= 1, got {n_new}")
    if new_thicknesses_A is not None:
        t_new = _thicknesses(n_new, new_thicknesses_A)
        if total > 0 and not np.isclose(t_new.sum(), total, rtol=1e-6):
            raise ValueError(f"new slice thicknesses sum to {t_new.sum()} Å, the object is {total} Å thick")
    else:
        t_new = np.full(n_new, total / n_new)
    # depth coordinates (unit depths when the thickness is unknown)
    eo = t_old if total > 0 else np.ones(n_old)
    en = t_new if total > 0 else np.full(n_new, n_old / n_new)
    zo = np.concatenate([[0.0], np.cumsum(eo)])
    zn = np.concatenate([[0.0], np.cumsum(en)])
    zn[-1] = zo[-1]
    overlap = np.clip(np.minimum(zn[1:, None], zo[None, 1:]) - np.maximum(zn[:-1, None], zo[None, :-1]), 0, None)
    weights = overlap / np.where(eo > 0, eo, 1.0)[None, :]  # (n_new, n_old), columns sum to 1
    for i in np.nonzero(eo <= 0)[0]:  # a slice of no depth: all of it to the new slice at its depth
        j = min(int(np.searchsorted(zn, zo[i], side="right")) - 1, n_new - 1)
        weights[:, i] = 0.0
        weights[j, i] = 1.0
    # unwrapped, so that a slice's phase beyond ±π is shared out as itself, not as its
    # wrapped value (which would keep the product but misplace the phase between slices)
    logs = np.log(np.abs(d)) + 1j * _unwrapped_phase(d)
    new = np.exp(np.tensordot(weights, logs, axes=(1, 0)))
    return new, t_new


def resample_object_slices(obj: ObjectState, n_new: int, new_thicknesses_A: Any = None) -> ObjectState:
    """:func:`resample_slices` on an :class:`ObjectState` (host arrays)."""
    data, t = resample_slices(obj.data, obj.thicknesses_A, n_new, new_thicknesses_A)
    return ObjectState(data=data, sampling_A=tuple(obj.sampling_A), corner_A=tuple(obj.corner_A), thicknesses_A=t)


def _crop_pad_centred(a: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Crop or zero-pad the last two axes of a centred spectrum (zero at N//2)."""
    out = np.zeros(a.shape[:-2] + tuple(shape), dtype=a.dtype)
    src, dst = [], []
    for n_old, n_new in zip(a.shape[-2:], shape):
        n = min(n_old, n_new)
        so, sn = n_old // 2 - n // 2, n_new // 2 - n // 2
        src.append(slice(so, so + n))
        dst.append(slice(sn, sn + n))
    out[(Ellipsis, *dst)] = a[(Ellipsis, *src)]
    return out


def _resize_spectrum_of_real_fields(a: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """:func:`_crop_pad_centred` for the spectrum of fields that are real (a slice's phase
    and log-amplitude, carried as one complex log): along an even axis the ±N/2 frequency
    has one bin, so padding shares it half and half between −N/2 and +N/2, and cropping to
    an even size gathers both into the new −N/2 bin. Copied to one side instead, each field
    would turn complex, the phase leaking into the amplitude (|O| 0.82-1.23 for a pure phase
    object of 64² resampled to 128²)."""
    out = a
    for axis, n_new in zip((-2, -1), shape):
        n_old = out.shape[axis]
        if n_new == n_old:
            continue
        n = min(n_old, n_new)
        so, sn = n_old // 2 - n // 2, n_new // 2 - n // 2
        moved = np.moveaxis(out, axis, 0)
        res = np.zeros((n_new,) + moved.shape[1:], dtype=a.dtype)
        res[sn:sn + n] = moved[so:so + n]
        if n % 2 == 0:
            if n_new > n_old:  # the old −N/2 bin (res[sn]) shared with +N/2
                res[sn] *= 0.5
                res[sn + n] = res[sn]
            else:  # the new −N/2 bin gathers the old +N/2 one too
                res[sn] += moved[so + n]
        out = np.moveaxis(res, 0, axis)
    return out


def _unwrapped_phase(d: np.ndarray) -> np.ndarray:
    """The phase of ``d`` (..., H, W) about each slice's mean phase, unwrapped where that
    is unambiguous (whole turns only, so ``exp(1j·phase)`` is unchanged).

    A slice is unwrapped when unwrapping along its rows then down its first column and
    along its columns then across its first row give the same phase: a smooth phase beyond
    ±π. Where they differ (a jump over π between neighbours: a sharp atom, noise where the
    amplitude is low) either path would add a false 2π to the rest of a row or column, so
    the slice keeps its phase within π of its mean phase (wrapped about the mean, not about
    0: an offset near π no longer wraps). [rad]"""
    offset = np.angle(np.sum(d, axis=(-2, -1), keepdims=True))
    about = np.angle(d * np.exp(-1j * offset))
    rows = np.unwrap(about, axis=-1)
    rows = rows + (np.unwrap(rows[..., :, :1], axis=-2) - rows[..., :, :1])
    cols = np.unwrap(about, axis=-2)
    cols = cols + (np.unwrap(cols[..., :1, :], axis=-1) - cols[..., :1, :])
    consistent = np.all(np.isclose(rows, cols, rtol=0.0, atol=1e-6), axis=(-2, -1), keepdims=True)
    return offset + np.where(consistent, rows, about)


def resample_pixel_size(obj: ObjectState, new_sampling_A: Any) -> ObjectState:
    """Resample the object to pixel size ``new_sampling_A`` [Å] (approximately: the new
    shape is rounded, and the pixel size adjusted so the field of view is unchanged) by
    Fourier crop/pad of each slice's log (phase and log-amplitude)."""
    d = np.asarray(obj.data).astype(np.complex128)
    s_old = np.array(obj.sampling_A, dtype=np.float64)
    s_req = np.array(_pair(new_sampling_A))
    h, w = d.shape[-2:]
    new_shape = (max(1, int(round(h * s_old[0] / s_req[0]))), max(1, int(round(w * s_old[1] / s_req[1]))))
    if new_shape == (h, w):
        return ObjectState(data=d, sampling_A=tuple(obj.sampling_A), corner_A=tuple(obj.corner_A),
                           thicknesses_A=np.asarray(obj.thicknesses_A))
    s_new = s_old * np.array([h, w]) / np.array(new_shape)
    # the phase unwrapped first: a wrapped phase (beyond ±π: a strong object, or an offset
    # near π) jumps by 2π, and the Fourier interpolation would ring about every jump
    logs = np.log(np.abs(d)) + 1j * _unwrapped_phase(d)
    spec = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(logs, axes=(-2, -1))), axes=(-2, -1))
    spec = _resize_spectrum_of_real_fields(spec, new_shape) * (new_shape[0] * new_shape[1]) / (h * w)
    new_logs = np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(spec, axes=(-2, -1))), axes=(-2, -1))
    # the Fourier interpolation keeps pixel (h//2, w//2) fixed in space
    corner = (np.array(obj.corner_A) + s_old * (np.array([h, w]) // 2)
              - s_new * (np.array(new_shape) // 2))
    return ObjectState(data=np.exp(new_logs), sampling_A=(float(s_new[0]), float(s_new[1])),
                       corner_A=(float(corner[0]), float(corner[1])),
                       thicknesses_A=np.asarray(obj.thicknesses_A))
