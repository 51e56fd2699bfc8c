"""The jax backend: ``xp = jax.numpy``, compiled with ``jax.jit``, on CPU or GPU.

Only this module (and the factory in :mod:`phaser_std.backends`) imports jax.

Dtype policy. ``float32`` (the default) gives float32/complex64 arrays; ``float64`` gives
float64/complex128 and therefore turns on ``jax_enable_x64``. That switch is
**process-global** in jax: once any float64 jax backend exists, jax functions called
*without* an explicit dtype (``jnp.zeros(shape)``, ``jnp.arange(n) * 0.5``) return 64-bit
arrays in the whole process, for every backend. A float32 jax backend still converts every
array it is given with :meth:`JaxBackend.asarray` to float32/complex64 and its FFTs keep the
input precision, so kernels stay float32 as long as they create arrays with an explicit
``dtype=bk.real_dtype`` / ``bk.complex_dtype`` (which they must do anyway). The switch is never
turned off again by phaser, since arrays already created in 64 bits would then misbehave.

Arrays are immutable: :meth:`add_at` and :meth:`set_at` return new arrays (``x.at[i].add``),
so callers must always use the returned value.

Compilation cache. Compiled group steps are kept on disk (jax's persistent compilation
cache) in ``$PHASER_CACHE_DIR/jax`` (default ``~/.cache/phaser/jax``), so a second run on
data of the same shapes starts without recompiling (measured: first iteration 0.7 -> 0.2 s
on ``examples/sim_small``). Every program is stored, the small ones too: the first
iteration of an engine also compiles a few dozen one-operation programs (initialisation,
optimizer states), 10-40 ms each, which load from the cache in a few ms (measured: the
gradient engine's first run of ``benchmarks`` single64 1.03 -> 0.84 s with them cached).
``PHASER_JAX_CACHE=0`` turns the cache off; ``PHASER_JAX_CACHE_MIN_COMPILE_S`` [s] (default 0)
stores only programs that took longer to compile; a cache directory the user configured
in jax is left alone.

CPU lanes. XLA:CPU runs an FFT on one core when it is called from its thread pool, which is
where a group step's FFTs run (``benchmarks/NOTES.md`` 18, 22), so one jax device leaves
half of a 2-core machine idle in the multislice steps. On import this module therefore asks
jax for one CPU device per core (``jax_num_cpu_devices``, at most 8;
``PHASER_JAX_CPU_DEVICES=N`` chooses, ``1`` turns it off; an ``XLA_FLAGS`` device count or a
jax that is already running is left alone). A backend on a CPU with several devices runs
the chunks of a group on the devices at once (:meth:`JaxBackend.sum_scan`, a ``shard_map``)
and adds their sums; everything else runs replicated, i.e. each device computes it as one
device would. Compiled programs take their array arguments on all devices
(:meth:`JaxBackend.share`). Engines whose step cannot split use :meth:`JaxBackend.one_lane`;
a step whose chunks divide among fewer lanes than there are runs on that many
(:meth:`JaxBackend.with_lanes`).
Like x64, the device count is process-global.
"""

from __future__ import annotations

from typing import Any, Callable

import functools
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from phaser_core.backend import BaseBackend
from phaser_core.config import env_enabled


def enable_compilation_cache() -> Path | None:
    """Point jax's persistent compilation cache at phaser's cache folder (see the module
    docstring); returns the folder, or None when disabled or already configured."""
    if not env_enabled("PHASER_JAX_CACHE"):
        return None
    if getattr(jax.config, "jax_compilation_cache_dir", None):
        return None
    base = os.environ.get("PHASER_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "phaser")
    folder = Path(base) / "jax"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None  # read-only home: run without the cache
    jax.config.update("jax_compilation_cache_dir", str(folder))
    min_s = float(os.environ.get("PHASER_JAX_CACHE_MIN_COMPILE_S", "0"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", min_s)
    return folder


MAX_CPU_LANES = 8
LANE_AXIS = "lanes"


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, which a container's CPU set or
    ``taskset`` narrows), not the machine's count: every lane holds its own copy of the
    patterns, object and optimizer state, so lanes without a core of their own cost memory
    and wait on each other."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # no affinity on this platform (macOS, Windows)
        return os.cpu_count() or 1


def request_cpu_devices() -> int | None:
    """Ask jax for one CPU device per core before its backends start (see the module
    docstring); returns the number asked for, or None when left alone."""
    want = os.environ.get("PHASER_JAX_CPU_DEVICES", "").strip()
    try:
        n = int(want) if want else min(usable_cores(), MAX_CPU_LANES)
    except ValueError:
        raise ValueError(f"PHASER_JAX_CPU_DEVICES={want!r}: give a whole number of CPU devices (1: one device, "
                         "no lanes)") from None
    if n <= 1 or "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", ""):
        return None
    try:
        jax.config.update("jax_num_cpu_devices", n)
    except RuntimeError:  # jax is already running: its devices stay as they are
        return None
    return n


request_cpu_devices()


def cpu_lane_mesh(lanes: int | None = None) -> Mesh | None:
    """A one-axis mesh over jax's first ``lanes`` CPU devices (None: all of them) when jax
    computes on a CPU and that leaves more than one device; else None."""
    devices = jax.devices()
    n = len(devices) if lanes is None else min(int(lanes), len(devices))
    if devices[0].platform != "cpu" or n < 2:
        return None
    return Mesh(np.array(devices[:n]), (LANE_AXIS,))


def _shard_map() -> Callable:
    try:
        from jax import shard_map
    except ImportError:  # jax < 0.6
        from jax.experimental.shard_map import shard_map
    return shard_map


@jax.tree_util.register_pytree_node_class
class LaneRows:
    """An ``(N, ...)`` array split over the CPU lanes along its first axis (zero rows pad N
    to a multiple of the lanes): each lane holds N/L rows, so the lanes together hold one
    copy where a replicated array costs one per lane (:meth:`JaxBackend.split_rows`).
    :meth:`take` gathers rows into an array every lane holds. A pytree: it passes through
    ``jit`` and ``scan`` as its array."""

    split_over_lanes = True

    def __init__(self, data: Any, mesh: Mesh):
        self.data, self.mesh = data, mesh

    def tree_flatten(self) -> tuple:
        return (self.data,), self.mesh

    @classmethod
    def tree_unflatten(cls, mesh: Mesh, children: tuple) -> "LaneRows":
        return cls(children[0], mesh)

    @property
    def dtype(self) -> Any:
        return self.data.dtype

    def take(self, idx: Any) -> Any:
        """Rows ``idx`` (any shape of indices into the unpadded rows), on every lane: each
        lane gathers the rows it holds, zeros for the others, and one ``psum`` adds them
        (exact: one lane holds each row)."""
        def gather(local, idx):
            n = local.shape[0]
            here = idx - jax.lax.axis_index(LANE_AXIS) * n
            mine = (here >= 0) & (here < n)
            rows = local[jnp.clip(here, 0, n - 1)]
            mine = mine.reshape(mine.shape + (1,) * (rows.ndim - mine.ndim))
            return jax.lax.psum(jnp.where(mine, rows, jnp.zeros((), rows.dtype)), LANE_AXIS)

        return _shard_map()(gather, mesh=self.mesh, in_specs=(PartitionSpec(LANE_AXIS), PartitionSpec()),
                            out_specs=PartitionSpec(), check_vma=False)(self.data, jnp.asarray(idx, jnp.int32))


def enable_x64() -> None:
    """Turn on 64-bit floats in jax (process-global; see the module docstring)."""
    if not jax.config.read("jax_enable_x64"):
        jax.config.update("jax_enable_x64", True)


#: Sums whose packed copy would take at least this many bytes [bytes] are all-reduced
#: alone, the smaller ones packed into one array: packing copies every sum once more (a
#: concatenation on each lane, real sums as complex beside complex ones), which for ~1 MiB
#: costs about what an all-reduce's rendezvous of the lanes saves (~0.15 ms on the 2-core
#: benchmark machine). Object-sized maps of 8 slices (2.3 + 1.2 MiB at 8 x 190², as LSQML
#: multislice sums them) all-reduced alone: 6.8-8.1 -> 5.6-5.8 ms a sum (NOTES.md 63).
PSUM_ALONE_BYTES = 1 << 20


def _psum_packed(tree: Any) -> Any:
    """``psum`` over the lanes of every array in ``tree``: the arrays whose packed copy
    would take :data:`PSUM_ALONE_BYTES` or more each alone (XLA may combine those of one
    dtype into one all-reduce of a tuple), the others as one all-reduce of one packed array:
    each all-reduce is a rendezvous of the lanes, ~0.15 ms on a 2-core CPU whatever its
    size (benchmarks/NOTES.md 27). Where any packed array is complex, all are packed in the
    complex dtype (real ones with a zero imaginary part, which adds nothing): splitting the
    complex ones into real and imaginary parts instead took a de-interleaving copy that XLA
    spread over the thread pool both lanes share, 0.6 ms a call in LSQML's single-slice
    step (NOTES.md 44). The real parts add exactly as they would alone."""
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    if not leaves:
        return tree
    packed_itemsize = jnp.dtype(jnp.result_type(*leaves)).itemsize
    out = [jax.lax.psum(x, LANE_AXIS) if x.size * packed_itemsize >= PSUM_ALONE_BYTES else None for x in leaves]
    small = [i for i, x in enumerate(out) if x is None]
    if small:
        dtype = jnp.result_type(*(leaves[i] for i in small))
        flat = [leaves[i].reshape(-1).astype(dtype) for i in small]
        summed = jnp.split(jax.lax.psum(jnp.concatenate(flat), LANE_AXIS),
                           np.cumsum([f.size for f in flat])[:-1].tolist())
        for i, v in zip(small, summed):
            x = leaves[i]
            out[i] = (v if jnp.iscomplexobj(x) else jnp.real(v)).reshape(x.shape).astype(x.dtype)
    return jax.tree_util.tree_unflatten(treedef, out)


class _PlacedJit:
    """A jitted function whose array arguments are placed by ``place`` before each call
    (and before :meth:`lower`)."""

    def __init__(self, compiled: Callable, place: Callable):
        self._compiled, self._place = compiled, place
        functools.update_wrapper(self, compiled)

    def _placed(self, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        return jax.tree_util.tree_map(self._place, (args, kwargs))

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        args, kwargs = self._placed(args, kwargs)
        return self._compiled(*args, **kwargs)

    def lower(self, *args: Any, **kwargs: Any) -> Any:
        args, kwargs = self._placed(args, kwargs)
        return self._compiled.lower(*args, **kwargs)


class JaxBackend(BaseBackend):
    """jax arrays on jax's default device; ``jit`` is :func:`jax.jit`."""

    name = "jax"
    xp = jnp
    compiled_loops = True

    def __init__(self, dtype: str = "float32", lanes: bool | int = True):
        """``lanes``: True, every CPU device; a number, the first that many; False or 1,
        one device (no lanes)."""
        super().__init__(dtype)
        enable_compilation_cache()
        if self.dtype == "float64":
            enable_x64()
        self.mesh = None if lanes is False else cpu_lane_mesh(None if lanes is True else int(lanes))
        self.lanes = 1 if self.mesh is None else int(self.mesh.size)
        self._placement = None if self.mesh is None else NamedSharding(self.mesh, PartitionSpec())

    @property
    def device(self) -> Any:
        """The jax device arrays are placed on."""
        return jax.devices()[0]

    def asarray(self, x: Any, dtype: Any = None) -> Any:
        """Move ``x`` (numpy, jax or a Python scalar/list) onto the device. Floats and complex
        values follow the dtype policy unless ``dtype`` is given; integers keep their kind
        (int64 becomes int32 while x64 is off, as jax does)."""
        if self.dtype == "float64":
            enable_x64()  # in case something turned it off since this backend was made
        if isinstance(x, jax.Array):
            return jnp.asarray(x, dtype=self._target_dtype(x.dtype, dtype))
        # cast on the host, then copy: a device-side conversion would compile a small XLA
        # program for every new shape and dtype (~20 ms each on a CPU)
        return jax.device_put(self._host_cast(x, dtype))

    def _target_dtype(self, have: Any, dtype: Any) -> Any:
        """The dtype :meth:`asarray` gives an array of dtype ``have`` (``dtype``: asked for)."""
        if dtype is None:
            kind = np.dtype(have).kind
            dtype = {"f": self.real_dtype, "c": self.complex_dtype}.get(kind)
            if dtype is None and np.dtype(have).itemsize == 8 and kind in "iu" \
                    and not jax.config.read("jax_enable_x64"):
                dtype = {"i": np.int32, "u": np.uint32}[kind]
        if dtype is not None and np.dtype(dtype).itemsize == 8 and np.dtype(dtype).kind in "fiu" \
                and not jax.config.read("jax_enable_x64"):
            # jax would truncate with a warning; say which precision is really used
            dtype = {"f": np.float32, "i": np.int32, "u": np.uint32}[np.dtype(dtype).kind]
        elif dtype is not None and np.dtype(dtype) == np.complex128 \
                and not jax.config.read("jax_enable_x64"):
            dtype = np.complex64
        return dtype

    def _host_cast(self, x: Any, dtype: Any = None) -> np.ndarray:
        x = np.asarray(x)
        return np.asarray(x, dtype=self._target_dtype(x.dtype, dtype))

    def step_inputs(self, *xs: Any) -> tuple:
        """Host arrays (numpy or scalars; dtypes as :meth:`asarray` gives them) placed as a
        compiled step's arguments are, on every lane (:meth:`share`), in one batched
        transfer. An engine sends its group rows, view corners, sub-pixel shifts and masks
        every iteration: an :meth:`asarray` and then a :meth:`share` for each cost ~1.7 ms
        of host time per iteration on a 2-core CPU, this ~0.3 ms
        (``benchmarks/NOTES.md`` 45)."""
        if self.dtype == "float64":
            enable_x64()
        host = [self._host_cast(x) for x in xs]
        return tuple(jax.device_put(host) if self._placement is None else jax.device_put(host, self._placement))

    def one_lane(self) -> "JaxBackend":
        """This backend on jax's first device only (no lanes; itself when it has none)."""
        return self.with_lanes(1)

    def with_lanes(self, n: int) -> "JaxBackend":
        """This backend on its first ``n`` lanes (1: one device, no lanes; itself for ``n``
        of at least its own lanes). Twins are built once each: a step whose chunks divide
        among 4 lanes but not 6 runs on 4 of a 6-core machine's lanes, not on one
        (:func:`~phaser_std.engines.chunking.lane_plan`)."""
        n = max(1, int(n))
        if n >= self.lanes:
            return self
        twins = self.__dict__.setdefault("_twins", {})
        if n not in twins:
            twins[n] = JaxBackend(self.dtype, lanes=n if n > 1 else False)
        return twins[n]

    def share(self, x: Any) -> Any:
        """``x`` placed once where every lane reads it (see the module docstring): a large
        array that each compiled step takes as an argument (the patterns), which would
        otherwise be copied to the other lanes at every call. Arrays a compiled step
        closes over must stay as :meth:`asarray` makes them."""
        if self._placement is None or not isinstance(x, (jax.Array, np.ndarray)) \
                or isinstance(x, jax.core.Tracer) or getattr(x, "sharding", None) == self._placement:
            return x
        if getattr(getattr(x, "sharding", None), "mesh", None) == self.mesh:
            return x  # placed on these lanes already, split or otherwise (split_rows)
        return jax.device_put(x, self._placement)

    def split_rows(self, x: np.ndarray) -> Any:
        """Host array ``x`` ``(N, ...)`` onto the lanes split along its first axis (a
        :class:`LaneRows`: one copy in all, not one per lane); without lanes,
        :meth:`step_inputs`'s placement."""
        if self.mesh is None:
            return self.step_inputs(x)[0]
        x = self._host_cast(x)

        def fill(start: int, stop: int, out: np.ndarray) -> None:
            out[...] = x[start:stop]

        return self.split_rows_from(x.shape[0], x.shape[1:], x.dtype, fill)

    def split_rows_from(self, n_rows: int, row_shape: tuple, dtype: Any, fill: Callable) -> Any:
        """:meth:`split_rows` of rows that ``fill(start, stop, out)`` writes into a host
        buffer: one lane's rows at a time, each sent to its device before the next is
        filled, so the host holds one lane's share (plus its zero padding rows) beside the
        lanes' copy, not a whole second copy of the array."""
        if self.mesh is None:
            return super().split_rows_from(n_rows, row_shape, dtype, fill)
        n_rows, row_shape = int(n_rows), tuple(int(q) for q in row_shape)
        dtype = np.dtype(self._target_dtype(np.dtype(dtype), None) or dtype)
        per = -(-n_rows // self.lanes)
        shards = []
        for lane, device in enumerate(self.mesh.devices.flat):
            host = np.zeros((per,) + row_shape, dtype=dtype)  # rows past n_rows stay zero
            start, stop = lane * per, min(n_rows, (lane + 1) * per)
            if stop > start:
                fill(start, stop, host[:stop - start])
            shards.append(jax.device_put(host, device).block_until_ready())
            del host
        return LaneRows(jax.make_array_from_single_device_arrays(
            (per * self.lanes,) + row_shape, NamedSharding(self.mesh, PartitionSpec(LANE_AXIS)), shards), self.mesh)

    def to_numpy(self, x: Any) -> np.ndarray:
        """A writable host copy of ``x`` (numpy arrays and scalars pass through ``np.asarray``)."""
        if isinstance(x, jax.Array):
            return np.array(x)
        return np.asarray(x)

    def add_at(self, target: Any, index: tuple, values: Any) -> Any:
        """``target[index] += values``, repeated indices accumulated. Returns a new array."""
        return target.at[index].add(values)

    def set_at(self, target: Any, index: tuple, values: Any) -> Any:
        """``target[index] = values``. Returns a new array."""
        return target.at[index].set(values)

    def get_windows(self, arr: Any, starts: Any, shape: tuple[int, int]) -> Any:
        """One windowed gather (``vmap`` of ``dynamic_slice``): XLA copies whole rows,
        where an index-array gather moves element by element (5x slower on CPU), and its
        transpose under autodiff is the windowed scatter of :meth:`add_windows`."""
        lead = tuple(arr.shape[:-2])
        size = lead + (int(shape[0]), int(shape[1]))
        zeros = (jnp.zeros((), dtype=jnp.int32),) * len(lead)  # int32 like the corners, also under x64
        return jax.vmap(lambda st: jax.lax.dynamic_slice(arr, zeros + (st[0], st[1]), size))(
            jnp.asarray(starts, dtype=jnp.int32))

    def add_windows(self, target: Any, starts: Any, values: Any) -> Any:
        """One windowed ``scatter_add`` (3-5x faster on CPU than scattering element by
        element). Returns a new array."""
        lead = target.ndim - 2
        starts = jnp.asarray(starts, dtype=jnp.int32)
        index = jnp.concatenate([jnp.zeros((starts.shape[0], lead), dtype=jnp.int32), starts], axis=1)
        dims = jax.lax.ScatterDimensionNumbers(update_window_dims=tuple(range(1, values.ndim)),
                                               inserted_window_dims=(),
                                               scatter_dims_to_operand_dims=tuple(range(target.ndim)))
        return jax.lax.scatter_add(target, index, values.astype(target.dtype), dims)

    def matmul(self, a: Any, b: Any) -> Any:
        """``a @ b`` at ``Precision.HIGHEST``: on a GPU jax's default computes float32
        products in TF32 (relative error ~1e-3), which would break the float32 agreement
        with numpy."""
        return jnp.matmul(a, b, precision=jax.lax.Precision.HIGHEST)

    def divide_real(self, z: Any, r: Any) -> Any:
        """``z / r`` for complex ``z`` and real ``r``, part by part: jax would make ``r``
        complex and divide complex by complex, 3x slower (46 against 15 µs for a 201²
        object on one core) and not how numpy rounds (numpy's division by a complex with a
        zero imaginary part divides each part, as this does)."""
        if not jnp.iscomplexobj(z) or jnp.iscomplexobj(r):
            return z / r
        r = jnp.asarray(r, dtype=jnp.real(z).dtype)
        return jax.lax.complex(jnp.real(z) / r, jnp.imag(z) / r)

    def jit(self, fn: Callable, **kwargs: Any) -> Callable:
        """:func:`jax.jit` with ``kwargs`` (``static_argnums``, ``static_argnames``,
        ``donate_argnums``, ...) passed through. On several CPU lanes the array arguments
        are first placed on all of them (:meth:`share`), as the program's outputs are: the
        first call and the later ones then see the same placement and compile once."""
        compiled = jax.jit(fn, **kwargs)
        return compiled if self._placement is None else _PlacedJit(compiled, self.share)

    def after(self, x: Any, dep: Any) -> tuple[Any, Any]:
        """:func:`jax.lax.optimization_barrier` of both: ``x`` read after ``dep``."""
        return jax.lax.optimization_barrier((x, dep))

    def scan(self, fn: Callable, carry: Any, xs: Any) -> tuple[Any, Any]:
        """:func:`jax.lax.scan` (one compiled loop)."""
        return jax.lax.scan(fn, carry, xs)

    def sum_scan(self, fn: Callable, carry: Any, xs: Any, reduce: Any = None) -> tuple[Any, Any]:
        """:meth:`~phaser_core.backend.BaseBackend.sum_scan`: on several CPU lanes, each
        device scans its share of the steps, the first from the carry given and the others
        from zero sums (``"max"`` entries: all from the carry), and the shares are added
        (one packed ``psum``) or maxed (``pmax``); the stacked outputs stay split over the
        devices along their leading axis. One lane, or steps that do not divide among the
        lanes: :func:`jax.lax.scan`."""
        n = next(int(x.shape[0]) for x in jax.tree_util.tree_leaves(xs))
        if self.lanes == 1 or n % self.lanes:
            return jax.lax.scan(fn, carry, xs)
        keys = list(carry) if isinstance(carry, dict) else list(range(len(carry)))
        ops = {k: "sum" for k in keys} if reduce is None else (
            dict(reduce) if isinstance(reduce, dict) else dict(zip(keys, reduce)))
        if set(ops) != set(keys) or set(ops.values()) - {"sum", "max"}:
            raise ValueError(f"sum_scan: reduce must name 'sum' or 'max' for each carry entry {keys}")

        def rebuild(values: dict) -> Any:
            return dict(values) if isinstance(carry, dict) else type(carry)(values[k] for k in keys)

        def share(carry, xs_local):
            # the carry enters as an input (a shard_map body may not use the lanes' arrays
            # from outside), and lane 0 adds it inside: psum-ing a carry the steps pass
            # through unchanged, added afterwards, crashed XLA:CPU (NOTES.md 27)
            first = jax.lax.axis_index(LANE_AXIS) == 0
            start = rebuild({k: jax.tree_util.tree_map(lambda c: jnp.where(first, c, jnp.zeros_like(c)), carry[k])
                             if ops[k] == "sum" else carry[k] for k in keys})
            local, ys = jax.lax.scan(fn, start, xs_local)
            summed = _psum_packed({k: local[k] for k in keys if ops[k] == "sum"})
            return {k: summed[k] if ops[k] == "sum" else jax.lax.pmax(local[k], LANE_AXIS) for k in keys}, ys

        split = PartitionSpec(LANE_AXIS)
        whole = PartitionSpec()
        merged, ys = _shard_map()(share, mesh=self.mesh, in_specs=(whole, split), out_specs=(whole, split),
                                  check_vma=False)(carry, xs)
        return rebuild(merged), ys

    def value_and_grad(self, fn: Callable, **kwargs: Any) -> Callable:
        """:func:`jax.value_and_grad` (``has_aux``, ``argnums``, ...): automatic gradients.
        Backends without it (numpy, cupy) use the analytic adjoint instead."""
        return jax.value_and_grad(fn, **kwargs)

    def checkpoint(self, fn: Callable) -> Callable:
        """:func:`jax.checkpoint`: autodiff keeps ``fn``'s inputs and recomputes the rest
        of it on the way back."""
        return jax.checkpoint(fn)

    def stop_gradient(self, x: Any) -> Any:
        """:func:`jax.lax.stop_gradient`."""
        return jax.lax.stop_gradient(x)

    def synchronize(self, x: Any = None) -> Any:
        """Block until ``x`` (any pytree of arrays) is computed; returns ``x``. With no
        argument, waits for all work jax has dispatched."""
        if x is None:
            for arr in jax.live_arrays():
                arr.block_until_ready()
            return None
        return jax.block_until_ready(x)
