"""The forward model shared by every engine and every backend, and its adjoint.

All kernels take a backend ``bk`` and use ``bk.xp`` plus the backend's methods, contain no
Python control flow on array values and no in-place writes (``bk.add_at``/``bk.set_at``
with their return values), so they run under ``bk.jit`` on jax. Everything is batched over
a group of B positions; Python loops run only over slices (a static count).

Shapes: probe modes ``(M, Ny, Nx)``; object ``(S, H, W)``; views ``(B, S, Ny, Nx)``;
waves ``(B, M, Ny, Nx)``; propagators ``(S-1, Ny, Nx)`` (shared) or ``(B, S-1, Ny, Nx)``
(per-position tilt), corner-centred; detector-plane arrays corner-centred ``(B, Qy, Qx)``.

Call sequence of an engine, per group of positions ``idx``::

    starts, frac = scan_to_pixels(scan_A[idx], obj.corner_A, obj.sampling_A, probe.shape)
    # (host or device; check_views_inside(starts, probe.shape, obj.shape) once on the host)
    props = make_propagators(bk, probe.shape, obj.sampling_A, wavelength_A,
                             obj.thicknesses_A, tilt_mrad)          # once per engine
    probes = shift_probes(bk, probe_modes, frac)                    # (B, M, Ny, Nx)
    views = get_views(bk, obj_data, starts, probe.shape)            # (B, S, Ny, Nx)
    psis, exit_waves = multislice_forward(bk, probes, views, props)
    wave_k = farfield(bk, exit_waves)                                # (B, M, Qy, Qx)
    model = intensity(bk, wave_k)                                    # (B, Qy, Qx)
    # ... the noise model gives dL/d conj(wave_k) (gradient engines) or an updated
    # wave_k (ePIE/LSQML: exit-wave difference chi = farfield_adjoint(new_k) - exit) ...
    grad_exit = farfield_adjoint(bk, grad_k)                         # (B, M, Ny, Nx)
    grad_views, grad_probes = multislice_backward(bk, probes, views, props, psis, grad_exit)
    obj_grad = add_views(bk, xp.zeros_like(obj_data), starts, grad_views)   # (S, H, W)
    probe_grad = unshift_probes(bk, grad_probes, frac)               # (M, Ny, Nx), summed over B

The reconstruction grid is the detector grid: ``(Ny, Nx) == (Qy, Qx)``, and nothing here
crops, pads or resamples in reciprocal space. Patterns on another grid are refused when an
engine starts (:func:`phaser_std.engines.common.engine_arrays` raises a ``DataError``
asking to crop or bin the data in ``post_load``, or to initialise the probe on the
detector grid).

Gradients follow the Wirtinger convention: for a real loss L, ``grad = dL/d conj(z)``,
so that dL = 2·Re Σ conj(grad)·dz; steepest descent is ``z -= step·grad``.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Sequence

import numpy as np

from phaser_std.physics.propagation import fresnel_propagator, fresnel_propagators_tilted

__all__ = [
    "ShiftRamp",
    "shift_ramp_factors",
    "split_rows",
    "scan_to_pixels",
    "check_views_inside",
    "get_views",
    "add_views",
    "n_view_slices",
    "view_slice",
    "SliceViews",
    "shift_probes",
    "unshift_probes",
    "make_propagators",
    "propagate",
    "multislice_forward",
    "slice_indices",
    "multislice_backward",
    "back_through_slice",
    "farfield",
    "farfield_adjoint",
    "abs2",
    "intensity",
    "forward_intensity",
]


# --------------------------------------------------------------------------- positions
def scan_to_pixels(scan_A: Any, corner_A: Sequence[float], sampling_A: Sequence[float],
                   probe_shape: Sequence[int], xp: Any = np) -> tuple[Any, Any]:
    """Scan positions ``(B, 2)`` (y, x) [Å] -> integer view corners ``(B, 2)`` int32 and
    sub-pixel fractions ``(B, 2)`` [px] in [−0.5, 0.5].

    The probe's centre pixel ``(Ny//2, Nx//2)`` sits at the scan position: the position in
    object pixels is ``(scan − corner_A)/sampling_A = start + (Ny//2, Nx//2) + frac``.
    ``corner_A`` is the (y, x) position [Å] of object pixel (0, 0)'s centre.
    """
    scan = xp.asarray(scan_A)
    corner = xp.asarray(np.asarray(corner_A, dtype=np.float64))
    samp = xp.asarray(np.asarray(sampling_A, dtype=np.float64))
    half = xp.asarray(np.array([int(probe_shape[0]) // 2, int(probe_shape[1]) // 2], dtype=np.float64))
    p = (scan - corner) / samp - half
    start = xp.round(p)
    frac = p - start
    return start.astype(xp.int32), frac


def check_views_inside(starts: Any, probe_shape: Sequence[int], obj_shape: Sequence[int]) -> None:
    """Host-side check that every view lies inside the object; raises ``ValueError``
    saying how far out the worst one is (jax would silently clamp)."""
    s = np.asarray(starts)
    h, w = int(obj_shape[-2]), int(obj_shape[-1])
    ny, nx = int(probe_shape[0]), int(probe_shape[1])
    lo = s.min(axis=0) if s.size else np.zeros(2)
    hi = (s.max(axis=0) + np.array([ny, nx])) if s.size else np.zeros(2)
    if lo[0] < 0 or lo[1] < 0 or hi[0] > h or hi[1] > w:
        raise ValueError(
            f"probe views fall outside the ({h}, {w}) object: rows {lo[0]}..{hi[0]}, cols "
            f"{lo[1]}..{hi[1]}; build the object with phaser_std.physics.objects.object_grid "
            "around the scan (or increase pad_px)")


def get_views(bk: Any, obj: Any, starts: Any, probe_shape: Sequence[int], per_slice: bool = False) -> Any:
    """Gather object views: ``obj`` ``(S, H, W)`` -> ``(B, S, Ny, Nx)`` (one gather,
    :meth:`~phaser_core.backend.BaseBackend.get_windows`), or with ``per_slice`` a tuple of
    S arrays ``(B, Ny, Nx)``, one gather per slice.

    Per slice is for differentiating through the views: jax's autodiff then keeps S
    separate residuals and cotangents (which :func:`add_views` stacks into one
    scatter-add) instead of a ``(B, S, Ny, Nx)`` pair built and read by strided copies
    (XLA's buffer assignment of a model of the paper's 64 x 20 x 128² group step: 632 ->
    329 MiB of temporaries; benchmarks/NOTES.md 38)."""
    window = (int(probe_shape[0]), int(probe_shape[1]))
    if per_slice:
        return tuple(bk.get_windows(obj[i], starts, window) for i in range(obj.shape[0]))
    return bk.get_windows(obj, starts, window)


def add_views(bk: Any, target: Any, starts: Any, values: Any, by_slice: bool = False) -> Any:
    """Scatter-add views into ``target``; overlapping views accumulate.

    ``target`` ``(S, H, W)`` with ``values`` ``(B, S, Ny, Nx)`` or a tuple of S arrays
    ``(B, Ny, Nx)`` (:func:`get_views` per slice), or ``target`` ``(H, W)`` with ``values``
    ``(B, Ny, Nx)``. Returns the updated target (may be in place).

    A tuple is stacked and added in one scatter, or with ``by_slice`` one slice at a time,
    the last first (the order autodiff's way back makes them): then each slice's values
    can go once added and XLA adds into the target in place, where the stacked scatter
    keeps all S and their stacked copy (a whole group's gradient step; NOTES.md 60). For
    small views the one scatter is faster (a CPU's gradient step one position at a time:
    per slice 1.6x slower).
    """
    if isinstance(values, tuple) and by_slice:
        for i in reversed(range(len(values))):
            target = bk.set_at(target, (i,), bk.add_windows(target[i], starts, values[i]))
        return target
    if isinstance(values, tuple):
        return bk.add_windows(target, starts, bk.xp.stack(values, axis=1))
    return bk.add_windows(target, starts, values)


class SliceViews:
    """The views ``(B, S, Ny, Nx)`` of an object ``(S, H, W)`` at ``starts`` ``(B, 2)``
    [px], each slice's gathered where it is read: ``views[:, i]`` (``i`` an integer or a
    traced loop index) is :func:`get_views` of slice i alone. In a compiled loop over the
    slices only one slice's views are then live, not all S (a whole group of the paper's
    64 x 20 x 128² case: 160 MiB). ``shape`` and ``dtype`` are those of the array it
    stands for; nothing else of an array is offered."""

    def __init__(self, bk: Any, obj: Any, starts: Any, probe_shape: Sequence[int], offsets: Any = None):
        self.bk, self.obj, self.starts, self.offsets = bk, obj, starts, offsets
        self.window = (int(probe_shape[0]), int(probe_shape[1]))
        self.shape = (int(starts.shape[0]), int(obj.shape[0])) + self.window
        self.dtype = obj.dtype

    def after(self, dep: Any) -> tuple["SliceViews", Any]:
        """``(views, dep)``: the same views, gathered anew where they are read after ``dep``
        is computed (:meth:`~phaser_core.backend.BaseBackend.after`), not kept from reads
        before it."""
        obj, dep = self.bk.after(self.obj, dep)
        views = SliceViews(self.bk, obj, self.starts, self.window, self.offsets)
        return views, dep

    def __getitem__(self, key: Any) -> Any:
        if not (isinstance(key, tuple) and len(key) == 2 and key[0] == slice(None)):
            raise TypeError(f"SliceViews are read one slice at a time, as views[:, i]; got views[{key!r}]")
        views = self.bk.get_windows(self.obj[key[1]], self.starts, self.window)
        return views if self.offsets is None else views + self.offsets[key[1]]

    def transmit(self, psi: Any, i: Any) -> Any:
        """``psi`` ``(B, M, Ny, Nx)`` times slice ``i``'s views. With ``offsets`` (a tuple
        of S arrays ``(B, Ny, Nx)``, added to the gathered views; ``i`` a Python integer)
        the gather and the product are one :meth:`checkpoint` (jax): autodiff keeps ``psi``
        and the offsets for them, not the views, and gathers slice i anew on the way
        back, so the S slices' views are never all live. Differentiating with respect to
        zero offsets gives the views' gradients."""
        if self.offsets is None:
            return psi * self[:, i][:, None]

        def product(wave: Any, obj: Any, offset: Any) -> Any:
            return wave * (self.bk.get_windows(obj[i], self.starts, self.window) + offset)[:, None]

        return self.bk.checkpoint(product)(psi, self.obj, self.offsets[i])


def _transmit(bk: Any, psi: Any, views: Any, i: Any) -> Any:
    """``psi`` ``(B, M, Ny, Nx)`` times slice ``i`` of ``views`` (any form of
    :func:`n_view_slices`)."""
    if isinstance(views, SliceViews):
        return views.transmit(psi, i)
    return psi * view_slice(views, i)[:, None]


def n_view_slices(views: Any) -> int:
    """S of ``views``: ``(B, S, Ny, Nx)`` or a tuple of S arrays ``(B, Ny, Nx)``."""
    return len(views) if isinstance(views, tuple) else views.shape[1]


def view_slice(views: Any, i: int) -> Any:
    """Slice ``i`` of ``views`` (either form of :func:`n_view_slices`): ``(B, Ny, Nx)``."""
    return views[i] if isinstance(views, tuple) else views[:, i]


# --------------------------------------------------------------------------- sub-pixel shifts
_FREQ_CACHE: dict = {}


def _fftfreq(n: int) -> np.ndarray:
    """``np.fft.fftfreq(n)`` (float64, host), built once per length."""
    f = _FREQ_CACHE.get(n)
    if f is None:
        f = _FREQ_CACHE[n] = np.fft.fftfreq(n)
    return f


class ShiftRamp(NamedTuple):
    """The separable Fourier ramp of sub-pixel shifts: ``y`` = exp(−2πi k_y d_y) ``(B, Ny)``
    and ``x`` = exp(−2πi k_x d_x) ``(B, Nx)``, corner-centred, with k [1/px] and the shifts
    d [px].

    Every function taking sub-pixel fractions ``frac`` also takes these precomputed factors.
    Engines compute them once per iteration for all positions, outside the compiled group
    loop: inside it XLA fuses the sines and cosines into each consumer and evaluates them
    per element of the ``(B, M, Ny, Nx)`` product (measured: 1.5 ms of a 5 ms group step).
    Fractions stay needed where positions are differentiated."""

    y: Any
    x: Any


def shift_ramp_factors(bk: Any, frac: Any, shape: Sequence[int]) -> ShiftRamp:
    """:class:`ShiftRamp` of shifts ``frac`` ``(..., 2)`` [px] (any leading shape) for
    ``shape`` (Ny, Nx)."""
    xp = bk.xp
    cdt = bk.complex_dtype
    rdt = bk.real_dtype
    ky = xp.asarray(_fftfreq(int(shape[0])).astype(rdt))
    kx = xp.asarray(_fftfreq(int(shape[1])).astype(rdt))
    frac = xp.asarray(frac).astype(rdt)
    ry = xp.exp((-2j * np.pi) * (ky * frac[..., 0][..., None])).astype(cdt)
    rx = xp.exp((-2j * np.pi) * (kx * frac[..., 1][..., None])).astype(cdt)
    return ShiftRamp(ry, rx)


def _shift_ramp(bk: Any, frac: Any, shape: Sequence[int]) -> Any:
    """exp(−2πi k·d) ``(B, Ny, Nx)`` for shifts ``frac`` ``(B, 2)`` [px] or their
    :class:`ShiftRamp`: the outer product of the factors (exponentials on ``B·(Ny + Nx)``
    phases, not ``B·Ny·Nx``)."""
    f = frac if isinstance(frac, ShiftRamp) else shift_ramp_factors(bk, frac, shape)
    return f.y[:, :, None] * f.x[:, None, :]


def split_rows(a: Any, n: int) -> Any:
    """``(n·C, ...)`` -> ``(n, C, ...)``; a :class:`ShiftRamp` factor by factor."""
    if isinstance(a, ShiftRamp):
        return ShiftRamp(split_rows(a.y, n), split_rows(a.x, n))
    return a.reshape((n, a.shape[0] // n) + tuple(a.shape[1:]))


def _fft2_pair(bk: Any, x: Any) -> Any:
    """Unnormalised forward FFT over the last two axes; followed by :func:`_ifft2_pair`
    (which divides by Ny·Nx) the pair is the identity, exactly like the unitary
    ``bk.fft2``/``bk.ifft2`` pair, without the two extra scaling passes over the array."""
    return bk.fft.fft2(x, axes=(-2, -1))


def _ifft2_pair(bk: Any, x: Any) -> Any:
    return bk.fft.ifft2(x, axes=(-2, -1))


def shift_probes(bk: Any, probe: Any, frac: Any) -> Any:
    """Shift probe modes ``(M, Ny, Nx)`` by ``frac`` ``(B, 2)`` [px] (positive: toward
    larger indices; or its :class:`ShiftRamp`) with a Fourier phase ramp exp(−2πi k·d)
    -> ``(B, M, Ny, Nx)``."""
    ramp = _shift_ramp(bk, frac, probe.shape[-2:])
    return _ifft2_pair(bk, _fft2_pair(bk, probe)[None] * ramp[:, None])


def unshift_probes(bk: Any, grad: Any, frac: Any) -> Any:
    """Adjoint of :func:`shift_probes`: ``(B, M, Ny, Nx)`` -> ``(M, Ny, Nx)`` summed over B.

    The sum over positions is taken in Fourier space, before the inverse FFT (M inverse
    FFTs instead of B·M)."""
    xp = bk.xp
    ramp = _shift_ramp(bk, frac, grad.shape[-2:])
    return _ifft2_pair(bk, xp.sum(_fft2_pair(bk, grad) * xp.conj(ramp)[:, None], axis=0))


# --------------------------------------------------------------------------- propagation
def make_propagators(bk: Any, shape: Sequence[int], sampling_A: Any, wavelength_A: float,
                     thicknesses_A: Any, tilt_mrad: Any = (0.0, 0.0),
                     bandlimit: float | None = 2.0 / 3.0) -> Any | None:
    """Propagators between slices, corner-centred, on ``bk`` in its complex dtype.

    ``thicknesses_A`` (S,) [Å]: the wave is propagated by ``thicknesses_A[i]`` after slice
    i, the last slice is not propagated. ``tilt_mrad`` (2,) gives ``(S-1, Ny, Nx)``;
    ``(B, 2)`` gives per-position ``(B, S-1, Ny, Nx)``. Returns None for one slice.
    """
    xp = bk.xp
    t = np.asarray(thicknesses_A, dtype=np.float64).reshape(-1)
    if t.size <= 1:
        return None
    tilt = tilt_mrad if hasattr(tilt_mrad, "shape") else np.asarray(tilt_mrad, dtype=np.float64)
    if len(tilt.shape) == 1:
        tl = tuple(float(v) for v in np.asarray(bk.to_numpy(tilt)))
        hs = [fresnel_propagator(shape, sampling_A, wavelength_A, dz, tl, bandlimit) for dz in t[:-1]]
        return bk.asarray(np.stack(hs)).astype(bk.complex_dtype)
    hs = [fresnel_propagators_tilted(shape, sampling_A, wavelength_A, dz, tilt, bandlimit, xp=xp)
          for dz in t[:-1]]
    return xp.stack(hs, axis=1).astype(bk.complex_dtype)


def _prop_for_slice(props: Any, i: int) -> Any:
    """Propagator after slice i, broadcastable against ``(B, M, Ny, Nx)``."""
    if props.ndim == 3:
        return props[i]
    return props[:, i][:, None]


def propagate(bk: Any, wave: Any, h: Any) -> Any:
    """ifft2(fft2(wave)·h): Fresnel propagation with a corner-centred propagator."""
    return _ifft2_pair(bk, _fft2_pair(bk, wave) * h)


# --------------------------------------------------------------------------- multislice
def slice_indices(bk: Any, start: int, stop: int, step: int = 1) -> Any:
    """Slice indices for a loop over slices with :meth:`~phaser_core.backend.BaseBackend.scan`:
    a device array where the backend compiles the loop (a traced index), else host integers
    (numpy's), with which cupy indexes arrays and lists without a device round trip."""
    return bk.xp.arange(start, stop, step) if bk.compiled_loops else np.arange(start, stop, step)


def multislice_forward(bk: Any, probes: Any, views: Any, props: Any, loop: bool | None = None) -> tuple[Any, Any]:
    """Multislice through object views.

    ``probes`` ``(B, M, Ny, Nx)`` or ``(M, Ny, Nx)``; ``views`` ``(B, S, Ny, Nx)``, S
    arrays ``(B, Ny, Nx)`` (:func:`get_views` per slice) or :class:`SliceViews`; ``props`` as from
    :func:`make_propagators` (None when S == 1).
    Returns ``(psis, exit_waves)``: ``psis[i]`` the wave entering slice i
    ``(B, M, Ny, Nx)`` (``psis[0]`` the probe), and the exit wave ψ_{S-1}·O_{S-1}.
    With ``loop`` (default: where the backend compiles loops,
    :attr:`~phaser_core.backend.BaseBackend.compiled_loops`, and ``views`` is one array or
    :class:`SliceViews` without offsets; with offsets, a tuple per slice, it is read with
    Python indices, so unrolled)
    the slices are one compiled loop body, so the program's size and its compile time and
    memory do not grow with them, and ``psis`` is one ``(S, B, M, Ny, Nx)`` array.
    Otherwise the slices are unrolled and ``psis`` is a list (no stacking copies: LSQML's
    chunked multislice step keeps them apart, 8% faster at 8 slices; NOTES.md 58).
    """
    n_slices = n_view_slices(views)
    psi = probes if probes.ndim == 4 else probes[None]
    if n_slices == 1:
        return [psi], _transmit(bk, psi, views, 0)
    if loop is None:
        loop = (bk.compiled_loops and not isinstance(views, tuple)
                and getattr(views, "offsets", None) is None)
    if loop:
        # the entering waves are written into one carried buffer, which XLA updates in
        # place: stacked scan outputs joined to the last wave cost a copy of all of them
        # and, until it is done, twice their memory
        def through(carry, x):
            wave, entering = carry
            (i,) = x
            entering = bk.set_at(entering, (i,), wave)
            return (propagate(bk, _transmit(bk, wave, views, i), _prop_for_slice(props, i)), entering), {}

        psi = bk.xp.broadcast_to(psi, (views.shape[0],) + tuple(psi.shape[1:]))  # the carry keeps its shape
        entering = bk.xp.zeros((n_slices,) + tuple(psi.shape), dtype=psi.dtype)
        (last, entering), _ = bk.scan(through, (psi, entering), (slice_indices(bk, 0, n_slices - 1),))
        return bk.set_at(entering, (n_slices - 1,), last), _transmit(bk, last, views, n_slices - 1)
    psis = [psi]
    for i in range(n_slices - 1):
        psi = propagate(bk, _transmit(bk, psi, views, i), _prop_for_slice(props, i))
        psis.append(psi)
    return psis, _transmit(bk, psi, views, n_slices - 1)


def back_through_slice(bk: Any, g: Any, view: Any, props: Any, i: int) -> Any:
    """An update ``g`` ``(B, M, Ny, Nx)`` of the wave leaving slice ``i`` (> 0) carried back
    to the wave leaving slice ``i - 1``: the adjoint of x -> O_i·propagate(x, H_{i-1}), i.e.
    ``conj(O_i)·g`` (the adjoint of the transmission ``view`` ``(B, Ny, Nx)``, not its
    inverse) propagated by ``conj(H_{i-1})``."""
    return propagate(bk, bk.xp.conj(view)[:, None] * g, bk.xp.conj(_prop_for_slice(props, i - 1)))


def multislice_backward(bk: Any, probes: Any, views: Any, props: Any, psis: list,
                        grad_exit: Any) -> tuple[Any, Any]:
    """Adjoint of :func:`multislice_forward`.

    ``grad_exit`` ``(B, M, Ny, Nx)`` = dL/d conj(exit wave). Returns ``(grad_views
    (B, S, Ny, Nx), grad_probes (B, M, Ny, Nx))``: dL/d conj(view) (summed over modes) and
    dL/d conj(entrance probe) per position (use :func:`unshift_probes` to reach the
    unshifted probe modes). ``psis`` are those returned by the forward pass.
    """
    xp = bk.xp
    n_slices = n_view_slices(views)
    g = grad_exit
    grads = [None] * n_slices
    for i in range(n_slices - 1, -1, -1):
        o = view_slice(views, i)[:, None]
        grads[i] = xp.sum(xp.conj(psis[i]) * g, axis=1)
        g = xp.conj(o) * g
        if i > 0:
            g = propagate(bk, g, xp.conj(_prop_for_slice(props, i - 1)))
    return xp.stack(grads, axis=1), g


# --------------------------------------------------------------------------- far field
def farfield(bk: Any, exit_waves: Any) -> Any:
    """Detector-plane wave, unitary ``fft2``, corner-centred."""
    return bk.fft2(exit_waves)


def farfield_adjoint(bk: Any, wave_k: Any) -> Any:
    """Adjoint (= inverse, unitary) of :func:`farfield`."""
    return bk.ifft2(wave_k)


def abs2(xp: Any, z: Any) -> Any:
    """|z|² without the square root of ``abs`` (real dtype of ``z``)."""
    return xp.real(z) ** 2 + xp.imag(z) ** 2


def intensity(bk: Any, wave_k: Any) -> Any:
    """Σ_modes |wave_k|² [e⁻]: ``(B, M, Qy, Qx)`` -> ``(B, Qy, Qx)``."""
    return bk.xp.sum(abs2(bk.xp, wave_k), axis=-3)


def forward_intensity(bk: Any, probe: Any, obj: Any, starts: Any, frac: Any, props: Any) -> Any:
    """Convenience: model intensities ``(B, Ny, Nx)`` corner-centred for probe modes
    ``(M, Ny, Nx)``, object ``(S, H, W)`` and view corners/fractions."""
    probes = shift_probes(bk, probe, frac)
    if bk.compiled_loops and obj.shape[0] > 1:
        # gathered slice by slice inside the compiled loop: one slice's views live, not all
        # S (the paper's 64 x 20 x 128² batch: 184 -> 24 MiB of temporaries)
        views = SliceViews(bk, obj, starts, probe.shape[-2:])
    else:
        views = get_views(bk, obj, starts, probe.shape[-2:])
    _, exit_waves = multislice_forward(bk, probes, views, props)
    return intensity(bk, farfield(bk, exit_waves))
