"""Moving a reconstruction and its data to another detector grid (an engine's ``sim_shape``).

The detector sampling Δk [1/Å per px] stays; the grid's size Q changes, so the real-space
pixel 1/(Q·Δk) shrinks when the patterns are padded and grows when they are cropped
(phaserEM's ``pad_crop``), and the probe window 1/Δk is the same:

- patterns: cropped, then zero-padded, about the zero angle at Q//2; padded pixels are
  marked invalid, so no engine fits them (the detector mask);
- probe: its spectrum cropped or zero-padded the same way (exact interpolation of a
  band-limited probe), each kept detector pixel's intensity unchanged: the total is kept
  unless the crop cuts into the probe's spectrum (then, like the patterns, it loses what
  falls outside);
- object: Fourier-resampled to the new pixel size (each slice's log: phase and
  log-amplitude), first padded with vacuum at its far edges so that the new size is a whole
  number of pixels; the pixel (0, 0) moves, the field of view does not.

Scan positions [Å] are unchanged. Staged reconstructions use it: a cropped detector (larger
pixels, fewer of them) for the first iterations, the full one afterwards.
"""

from __future__ import annotations

import math
from typing import Any

import attrs
import numpy as np

from phaser_core.context import LoadContext
from phaser_core.errors import DataError
from phaser_core.observer import announce
from phaser_core.state import ObjectState, ProbeState, ReconsState
from phaser_std.physics.objects import _crop_pad_centred, resample_pixel_size

__all__ = ["resize_patterns", "resize_probe", "resize_object", "on_grid"]


def resize_patterns(data: Any, shape: tuple[int, int]) -> Any:
    """``data`` (a RawData) with its patterns cropped and/or padded to ``shape`` (Qy, Qx)."""
    from phaser_std.data.preprocess import CropConfig, PadConfig, crop_data, pad

    shape = (int(shape[0]), int(shape[1]))
    keep = tuple(min(a, b) for a, b in zip(data.pattern_shape, shape))
    if keep != tuple(data.pattern_shape):
        data = crop_data(CropConfig(size=keep), data, LoadContext())
    if keep != shape:
        data = pad(PadConfig(size=shape), data, LoadContext())
    return data


def resize_probe(probe: ProbeState, shape: tuple[int, int]) -> ProbeState:
    """The probe on a ``shape`` grid of the same window [Å]: pixel ``sampling·N/N'``.

    Its far field (the unitary FFT the engines' model uses) is cropped or zero-padded about
    the zero angle with every kept pixel's value unchanged, as the patterns are: a crop
    that cuts into the probe's spectrum drops the intensity outside it, as it drops the
    data's (a probe rescaled to its old total would be too bright for the cropped data,
    and only the first engine scales the probe to the data)."""
    old = probe.shape
    data = np.asarray(probe.data).astype(np.complex128)
    spec = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(data, axes=(-2, -1)), norm="ortho"), axes=(-2, -1))
    new = np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(_crop_pad_centred(spec, shape), axes=(-2, -1)),
                                       norm="ortho"), axes=(-2, -1))
    sampling = tuple(float(s) * o / n for s, o, n in zip(probe.sampling_A, old, shape))
    return attrs.evolve(probe, data=new, sampling_A=sampling)


def resize_object(obj: ObjectState, sampling_A: tuple[float, float], ratio: tuple[int, int, int, int]) -> ObjectState:
    """``obj`` at the pixel size ``sampling_A`` (y, x) [Å] = its own times ``qy/qy_new``,
    ``qx/qx_new`` (``ratio`` = (qy, qy_new, qx, qx_new)), exactly: padded with vacuum at the
    far edges to a size that divides, then :func:`resample_pixel_size`."""
    qy, qy_new, qx, qx_new = ratio
    h, w = obj.shape
    step_y, step_x = qy // math.gcd(qy, qy_new), qx // math.gcd(qx, qx_new)
    h2, w2 = -(-h // step_y) * step_y, -(-w // step_x) * step_x
    data = np.asarray(obj.data)
    if (h2, w2) != (h, w):
        data = np.pad(data, ((0, 0), (0, h2 - h), (0, w2 - w)), constant_values=1.0)
    padded = ObjectState(data=data, sampling_A=tuple(obj.sampling_A), corner_A=tuple(obj.corner_A),
                         thicknesses_A=np.asarray(obj.thicknesses_A))
    out = resample_pixel_size(padded, sampling_A)
    return ObjectState(data=out.data, sampling_A=tuple(float(s) for s in sampling_A), corner_A=out.corner_A,
                       thicknesses_A=out.thicknesses_A)


def on_grid(state: ReconsState, data: Any, shape: tuple[int, int] | None,
            ctx: Any = None) -> tuple[ReconsState, Any]:
    """``(state, data)`` on the detector grid ``shape`` (Qy, Qx), or on the state's probe
    grid when ``shape`` is None (an engine after one that changed the grid, or a state
    file from a run on a cropped or padded detector). Nothing changes when both are there
    already. A probe whose window [Å] is not the data's 1/Δk is an error (another detector
    sampling, not another grid). A move is announced to the run's observers (``ctx``)."""
    target = tuple(int(q) for q in (shape if shape is not None else state.probe.shape))
    if tuple(data.pattern_shape) == target and tuple(state.probe.shape) == target:
        return state, data
    window = np.asarray(state.probe.shape) * np.asarray(state.probe.sampling_A, dtype=np.float64)
    expected = 1.0 / np.asarray(data.reciprocal_sampling_invA, dtype=np.float64) \
        if data.reciprocal_sampling_invA is not None else window
    if not np.allclose(window, expected, rtol=1e-4):
        raise DataError(f"patterns are {tuple(data.pattern_shape)} but the probe is {tuple(state.probe.shape)} with a "
                        f"window of {tuple(np.round(window, 4))} Å where the data's detector sampling gives "
                        f"{tuple(np.round(expected, 4))} Å: crop or bin the data (post_load), or initialise the probe "
                        "on the detector grid")
    if tuple(data.pattern_shape) != target:
        data = resize_patterns(data, target)
    if tuple(state.probe.shape) != target:
        old = state.probe.shape
        probe = resize_probe(state.probe, target)
        obj = resize_object(state.object, probe.sampling_A, (old[0], target[0], old[1], target[1]))
        state = attrs.evolve(state, probe=probe, object=obj)
        if ctx is not None:
            announce(ctx, f"detector grid {old[0]}x{old[1]} -> {target[0]}x{target[1]}: pixel "
                          f"{probe.sampling_A[0]:.4g} x {probe.sampling_A[1]:.4g} Å, object {obj.shape[0]}x{obj.shape[1]}")
    return state, data
