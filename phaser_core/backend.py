"""The compute-backend protocol: an array namespace plus what the array API lacks.

Shared kernels take a backend ``bk`` and use ``bk.xp`` for array functions; everything the
array API does not standardise (unitary FFTs, indexed add of overlapping views, jit, seeded
random streams, host/device transfer, the dtype policy) is a method here. No module outside
a backend's own imports cupy or jax.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
from typing import Any, Callable, Iterator, Protocol, Sequence, runtime_checkable

import numpy as np

DTYPES = {"float32": (np.float32, np.complex64), "float64": (np.float64, np.complex128)}


@runtime_checkable
class Backend(Protocol):
    """What every backend provides. Arrays are the backend's own type."""

    name: str
    xp: Any
    #: the float dtype name, ``"float32"`` (default) or ``"float64"``
    dtype: str
    #: devices :meth:`sum_scan` may spread its steps over
    lanes: int
    #: whether :meth:`scan` compiles one loop body (True) or runs a Python loop
    compiled_loops: bool

    @property
    def real_dtype(self) -> Any: ...
    @property
    def complex_dtype(self) -> Any: ...
    def asarray(self, x: Any, dtype: Any = None) -> Any: ...
    def to_numpy(self, x: Any) -> np.ndarray: ...
    @property
    def fft(self) -> Any: ...
    def fft2(self, x: Any) -> Any: ...
    def ifft2(self, x: Any) -> Any: ...
    def fft2c(self, x: Any) -> Any: ...
    def ifft2c(self, x: Any) -> Any: ...
    def fftshift(self, x: Any) -> Any: ...
    def ifftshift(self, x: Any) -> Any: ...
    def add_at(self, target: Any, index: tuple, values: Any) -> Any: ...
    def set_at(self, target: Any, index: tuple, values: Any) -> Any: ...
    def get_windows(self, arr: Any, starts: Any, shape: tuple[int, int]) -> Any: ...
    def add_windows(self, target: Any, starts: Any, values: Any) -> Any: ...
    def matmul(self, a: Any, b: Any) -> Any: ...
    def divide_real(self, z: Any, r: Any) -> Any: ...
    def jit(self, fn: Callable, **kwargs: Any) -> Callable: ...
    def after(self, x: Any, dep: Any) -> tuple[Any, Any]: ...
    def checkpoint(self, fn: Callable) -> Callable: ...
    def scan(self, fn: Callable, carry: Any, xs: tuple) -> tuple[Any, dict]: ...
    def one_lane(self) -> Any: ...
    def with_lanes(self, n: int) -> Any: ...
    def share(self, x: Any) -> Any: ...
    def split_rows(self, x: Any) -> Any: ...
    def split_rows_from(self, n_rows: int, row_shape: tuple, dtype: Any, fill: Callable) -> Any: ...
    def step_inputs(self, *xs: Any) -> tuple: ...
    def sum_scan(self, fn: Callable, carry: Any, xs: tuple, reduce: Any = None) -> tuple[Any, dict]: ...
    def rng(self, seed: int, stream: str) -> np.random.Generator: ...
    def synchronize(self, x: Any = None) -> Any: ...


#: the most lanes a backend is estimated with (None: all it has); :func:`lanes_at_most`
LANE_LIMIT: contextvars.ContextVar[int | None] = contextvars.ContextVar("phaser_lane_limit", default=None)


@contextlib.contextmanager
def lanes_at_most(n: int) -> Iterator[None]:
    """Within the block, the memory planner counts at most ``n`` lanes of a backend (what
    it would hold on :meth:`BaseBackend.with_lanes` ``(n)``): the runner's estimate for
    fewer lanes when the run does not fit on all of them."""
    token = LANE_LIMIT.set(max(1, int(n)))
    try:
        yield
    finally:
        LANE_LIMIT.reset(token)


def stream_seed(seed: int, stream: str) -> np.random.SeedSequence:
    """A seed sequence for the named random stream of ``seed`` (stable across processes)."""
    digest = hashlib.sha256(stream.encode()).digest()
    high, low = divmod(int(seed), 2**32)
    return np.random.SeedSequence([low, high, *np.frombuffer(digest[:8], dtype=np.uint32)])


def _leading(x: Any) -> int:
    return _leading(x[0]) if isinstance(x, tuple) else int(x.shape[0])


def _row(x: Any, i: int) -> Any:
    """Row ``i`` of an array, of each array of a (named) tuple; None stays None."""
    if x is None:
        return None
    if isinstance(x, tuple):
        rows = [_row(e, i) for e in x]
        return type(x)(*rows) if hasattr(x, "_fields") else tuple(rows)
    return x[i]


def _window_indices(xp: Any, starts: Any, shape: Sequence[int]) -> tuple[Any, Any]:
    """Row and column index arrays ``(B, Ny, 1)`` and ``(B, 1, Nx)`` of windows at ``starts``."""
    starts = xp.asarray(starts)
    iy = starts[:, 0][:, None] + xp.arange(int(shape[0]))[None, :]
    ix = starts[:, 1][:, None] + xp.arange(int(shape[1]))[None, :]
    return iy[:, :, None], ix[:, None, :]


class BaseBackend:
    """Shared implementation for backends whose ``xp`` has ``fft`` and fancy indexing.

    Subclasses set ``name`` and ``xp`` and override what differs (transfer, add_at, jit).
    FFTs act on the last two axes and are unitary (``norm="ortho"``): Σ|ψ|² is the same in
    real and reciprocal space. ``fft2``/``ifft2`` keep the zero frequency at the corner;
    ``fft2c``/``ifft2c`` keep it at ``(N//2, N//2)`` on both sides.
    """

    name = "base"
    xp: Any = np
    #: How many devices :meth:`sum_scan` spreads its steps over (1: none).
    lanes = 1
    #: Whether :meth:`scan` compiles one loop body (jax) rather than running a Python loop:
    #: loops over slices then use it, so a program's size does not grow with the slices.
    compiled_loops = False

    def __init__(self, dtype: str = "float32"):
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        self.dtype = dtype

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} {self.dtype}>"

    @property
    def real_dtype(self) -> Any:
        """The float dtype of the policy, as a numpy dtype (every array library accepts it)."""
        return np.dtype(DTYPES[self.dtype][0])

    @property
    def complex_dtype(self) -> Any:
        return np.dtype(DTYPES[self.dtype][1])

    def asarray(self, x: Any, dtype: Any = None) -> Any:
        """Move ``x`` to this backend. Floats and complex values follow the dtype policy
        unless ``dtype`` is given; integer arrays keep their type."""
        arr = np.asarray(x) if not hasattr(x, "__array_namespace__") and not hasattr(x, "device") else x
        if dtype is None:
            kind = np.dtype(arr.dtype).kind if hasattr(arr, "dtype") else "f"
            dtype = {"f": self.real_dtype, "c": self.complex_dtype}.get(kind)
        return self.xp.asarray(arr, dtype=dtype)

    def to_numpy(self, x: Any) -> np.ndarray:
        return np.asarray(x)

    @property
    def fft(self) -> Any:
        """The FFT namespace (``fft2``/``ifft2`` with ``axes`` and ``norm``) for this
        backend's arrays; ``xp.fft`` unless a backend has a faster one."""
        return self.xp.fft

    def fft2(self, x: Any) -> Any:
        return self.fft.fft2(x, axes=(-2, -1), norm="ortho")

    def ifft2(self, x: Any) -> Any:
        return self.fft.ifft2(x, axes=(-2, -1), norm="ortho")

    def fftshift(self, x: Any) -> Any:
        return self.xp.fft.fftshift(x, axes=(-2, -1))

    def ifftshift(self, x: Any) -> Any:
        return self.xp.fft.ifftshift(x, axes=(-2, -1))

    def fft2c(self, x: Any) -> Any:
        return self.fftshift(self.fft2(self.ifftshift(x)))

    def ifft2c(self, x: Any) -> Any:
        return self.fftshift(self.ifft2(self.ifftshift(x)))

    def add_at(self, target: Any, index: tuple, values: Any) -> Any:
        """``target[index] += values`` with repeated indices accumulated. May work in place:
        always use the returned array."""
        raise NotImplementedError

    def set_at(self, target: Any, index: tuple, values: Any) -> Any:
        """``target[index] = values``. May work in place: always use the returned array."""
        target[index] = values
        return target

    def get_windows(self, arr: Any, starts: Any, shape: tuple[int, int]) -> Any:
        """Windows of ``shape`` (Ny, Nx) [px] cut from ``arr`` ``(..., H, W)`` at the corners
        ``starts`` ``(B, 2)`` (row, col) [px], inside the array -> ``(B, ..., Ny, Nx)``."""
        iy, ix = _window_indices(self.xp, starts, shape)
        lead = arr.ndim - 2
        v = arr[(slice(None),) * lead + (iy, ix)]  # (..., B, Ny, Nx)
        return self.xp.moveaxis(v, lead, 0) if lead else v

    def add_windows(self, target: Any, starts: Any, values: Any) -> Any:
        """Add ``values`` ``(B, ..., Ny, Nx)`` into ``target`` ``(..., H, W)`` at the corners
        ``starts`` ``(B, 2)`` (row, col) [px]; overlapping windows accumulate. Use the
        returned array."""
        iy, ix = _window_indices(self.xp, starts, values.shape[-2:])
        lead = target.ndim - 2
        if lead:
            values = self.xp.moveaxis(values, 0, lead)
        return self.add_at(target, (slice(None),) * lead + (iy, ix), values)

    def matmul(self, a: Any, b: Any) -> Any:
        """``a @ b`` in the full precision of the dtype policy (a GPU backend must not
        drop float32 products to TF32's 10-bit mantissa)."""
        return a @ b

    def divide_real(self, z: Any, r: Any) -> Any:
        """``z / r`` for complex ``z`` and real ``r`` (broadcast), each part divided by ``r``."""
        return z / r

    def jit(self, fn: Callable, **kwargs: Any) -> Callable:
        """Compile ``fn`` where the backend can; the identity elsewhere."""
        return fn

    def after(self, x: Any, dep: Any) -> tuple[Any, Any]:
        """``(x, dep)`` unchanged, but where the backend compiles, ``x`` counts as new once
        ``dep`` is computed: what is computed from it later is not merged with the same
        computation done earlier (XLA's common-subexpression elimination would keep that
        earlier result alive in between). The identity on eager backends."""
        return x, dep

    def checkpoint(self, fn: Callable) -> Callable:
        """``fn``, which automatic differentiation (where the backend has it) recomputes on
        the way back from its inputs instead of keeping what it computed in between
        (``jax.checkpoint``). The identity elsewhere."""
        return fn

    def scan(self, fn: Callable, carry: Any, xs: tuple) -> tuple[Any, dict]:
        """``jax.lax.scan`` over the leading axis of the arrays in the tuple ``xs`` (None
        entries are passed as None, tuple entries element by element): ``fn(carry, x) ->
        (carry, y)`` with ``y`` a dict of arrays; returns the last carry and each ``y``
        entry stacked along a new leading axis. A Python loop here; jax compiles it as one
        loop."""
        n = _leading(next(x for x in xs if x is not None))
        out: dict = {}
        for i in range(n):
            carry, y = fn(carry, tuple(_row(x, i) for x in xs))
            for k, v in y.items():
                if i == 0:  # filled row by row: no list of rows and stacked copy at once
                    out[k] = self.xp.empty((n,) + tuple(v.shape), dtype=v.dtype)
                out[k][i] = v
        return carry, out

    def one_lane(self) -> Any:
        """The backend computing on one device (itself where it has one lane)."""
        return self

    def with_lanes(self, n: int) -> Any:
        """The backend computing on ``n`` of its :attr:`lanes` (itself where it has one)."""
        return self

    def share(self, x: Any) -> Any:
        """``x`` placed where every one of the backend's :attr:`lanes` reads it; here ``x``."""
        return x

    def split_rows(self, x: Any) -> Any:
        """Host array ``x`` ``(N, ...)`` onto the device with its rows split over the
        :attr:`lanes` (one copy in all; rows are then read with ``take``); here, with one
        lane, :meth:`step_inputs`'s placement."""
        return self.step_inputs(x)[0]

    def split_rows_from(self, n_rows: int, row_shape: tuple, dtype: Any, fill: Callable) -> Any:
        """:meth:`split_rows` of an ``(n_rows, *row_shape)`` array of ``dtype`` that
        ``fill(start, stop, out)`` writes a range of rows of into ``out`` (host, ``stop -
        start`` rows), so a backend with lanes can build each lane's rows without a whole
        host copy beside them; here, the whole array filled once."""
        out = np.empty((int(n_rows),) + tuple(row_shape), dtype=dtype)
        fill(0, int(n_rows), out)
        return self.split_rows(out)

    def step_inputs(self, *xs: Any) -> tuple:
        """Host arrays onto the device as a compiled step's arguments (:meth:`asarray`, then
        :meth:`share`), as one transfer where the backend can batch them."""
        return tuple(self.share(self.asarray(x)) for x in xs)

    def sum_scan(self, fn: Callable, carry: Any, xs: tuple, reduce: Any = None) -> tuple[Any, dict]:
        """:meth:`scan` over independent steps whose carry only accumulates: each step adds
        its terms to the carry's entries (``carry + terms``, whatever their order), or for an
        entry named ``"max"`` in ``reduce`` (a tuple parallel to the carry's top level;
        None: all ``"sum"``) takes an element-wise maximum. A step must not read the carry
        for anything else. Under that contract a backend with several :attr:`lanes` may run
        the steps on its devices at once and add (or max) their carries at the end; the
        result equals the plain scan's to float rounding. Here: :meth:`scan`."""
        return self.scan(fn, carry, xs)

    def rng(self, seed: int, stream: str) -> np.random.Generator:
        """A host random generator for the named stream of ``seed``. The same on every
        backend, so the same plan gives the same groupings and noise everywhere."""
        return np.random.default_rng(stream_seed(seed, stream))

    def synchronize(self, x: Any = None) -> Any:
        """Wait for pending device work (for timing); returns ``x``."""
        return x


def _registered(name: str, registry: Any) -> str:
    """``name``, or numpy for ``auto`` when ``registry`` has no ``auto`` (a host
    application's own registry)."""
    return "numpy" if name == "auto" and ("backend", "auto") not in registry else name


def build_backend(name: str, dtype: str, registry: Any) -> Any:
    """The backend a plan's ``backend: name`` runs on, built from ``registry`` for the dtype
    name. ``auto`` (the plan's default) is the bundled plugin's choice of the fastest
    installed backend; a registry without it runs numpy."""
    return registry.get("backend", _registered(name, registry)).obj(dtype)


def concrete_backend_name(name: str, dtype: str, registry: Any) -> str:
    """The name of the backend :func:`build_backend` gives for ``backend: name``: ``name``
    itself, or for ``auto`` the one it picks on this machine, so that a run's ``plan.yaml``,
    its resume and the memory planner name what really runs."""
    name = _registered(name, registry)
    if name != "auto":
        return name
    return str(registry.get("backend", name).obj(dtype).name)
