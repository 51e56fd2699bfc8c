"""The memory planner: estimate a run's peak memory before anything large is allocated.

Engine-agnostic: the data shape comes from the loader (``RawData.patterns.shape``; the
``hdf5`` and ``npy`` loaders memory-map their files, so no pattern is read), the state
shapes from the initial state (or a state file), and each engine contributes its own terms
through ``engine.estimate_memory(data_shape, state_shapes, dtype, backend=NAME)``, which
returns a list of ``(term_name, bytes, setting_hint)`` or ``(term_name, bytes,
setting_hint, where)`` with ``where`` ``"device"`` (default) or ``"host"``.

The run's peak is the shared host terms (raw patterns, the initial state) plus the largest
engine's terms. :func:`check_memory` (called by :func:`phaser_core.runner.run_plan` before
the first engine) raises a :class:`PhaserError` naming the largest term and the setting to
change when the peak exceeds what is available:

- the budget ``PHASER_MEMORY_BUDGET_GIB`` (environment) when set, else
- host RAM (``MemAvailable`` of ``/proc/meminfo``, or ``os.sysconf``) for CPU backends, and
  for a GPU backend the device memory it reports for the device terms.

``PHASER_MEMORY_CHECK=0`` turns the check off. ``phaser plan-memory PLAN`` and ``phaser run
--dry-run`` print the estimate. ``python -m phaser_core.memory measure PLAN`` runs a plan and
prints its measured peak resident-memory growth (the calibration in docs/memory.md).
"""

from __future__ import annotations

import json
import math
import mmap
import os
import sys
from pathlib import Path
from typing import Any, Sequence

import attrs
import numpy as np

from .backend import build_backend, concrete_backend_name
from .config import env_enabled
from .data import count_dtype
from .errors import PhaserError
from .state import constant_unit_slices, unit_amplitude

GiB = float(1 << 30)
MiB = float(1 << 20)
ENV_BUDGET = "PHASER_MEMORY_BUDGET_GIB"
ENV_CHECK = "PHASER_MEMORY_CHECK"

__all__ = ["DataShape", "Term", "EngineEstimate", "MemoryEstimate", "data_shape", "state_shapes",
           "estimate_plan", "estimate_run", "available_memory", "process_rss", "runtime_baseline", "check_memory",
           "pool_checks", "PoolCheck", "shortfall_message", "format_bytes", "format_report", "ENV_BUDGET",
           "ENV_CHECK"]


# ---------------------------------------------------------------------------------------
# What an estimate is made of
# ---------------------------------------------------------------------------------------


@attrs.frozen
class DataShape:
    """The patterns as the run sees them.

    :ivar n_patterns: N.
    :ivar pattern_shape: (Qy, Qx) [px].
    :ivar host_itemsize: bytes per value of the host patterns (the loader's array).
    :ivar mapped: whether the host patterns are a memory map of the file (pages are read
        when the engine copies them to the device, and count as resident memory).
    :ivar count_itemsize: bytes a value takes on the device when every value is a whole
        number of electrons up to 65535 (counted data, kept as uint8 or uint16: 1 or 2);
        0 for other data (kept in the real dtype).
    """

    n_patterns: int
    pattern_shape: tuple[int, int]
    host_itemsize: int = 4
    mapped: bool = False
    count_itemsize: int = 0

    @property
    def host_bytes(self) -> int:
        return int(self.n_patterns) * int(self.pattern_shape[0]) * int(self.pattern_shape[1]) * int(self.host_itemsize)


@attrs.frozen
class Term:
    """One contribution to the peak [bytes]; ``hint`` says which setting changes it."""

    name: str
    bytes: int
    hint: str = ""
    where: str = "device"

    def to_dict(self) -> dict:
        return {"name": self.name, "bytes": int(self.bytes), "GiB": self.bytes / GiB, "hint": self.hint,
                "where": self.where}


@attrs.frozen
class EngineEstimate:
    index: int
    type: str
    terms: tuple[Term, ...]

    @property
    def total(self) -> int:
        return int(sum(t.bytes for t in self.terms))


@attrs.frozen
class MemoryEstimate:
    """Shared terms plus one :class:`EngineEstimate` per engine; ``peak`` is the largest run total."""

    backend: str
    dtype: str
    data: DataShape
    shapes: dict
    shared: tuple[Term, ...]
    engines: tuple[EngineEstimate, ...]

    @property
    def peak_engine(self) -> EngineEstimate | None:
        return max(self.engines, key=lambda e: e.total) if self.engines else None

    @property
    def peak_terms(self) -> tuple[Term, ...]:
        eng = self.peak_engine
        return self.shared + (eng.terms if eng is not None else ())

    @property
    def peak(self) -> int:
        return int(sum(t.bytes for t in self.peak_terms))

    def peak_engine_for(self, where: str | None = None) -> EngineEstimate | None:
        """The engine that needs the most of one pool (``where``: "device", "host"), or
        the largest total (``None``): a host-heavy engine must not hide one that needs
        more of the GPU."""
        if where is None or not self.engines:
            return self.peak_engine
        return max(self.engines, key=lambda e: sum(t.bytes for t in e.terms if t.where == where))

    def _terms_for(self, where: str | None) -> tuple[Term, ...]:
        eng = self.peak_engine_for(where)
        return self.shared + (eng.terms if eng is not None else ())

    def peak_where(self, where: str) -> int:
        """The most of pool ``where`` [bytes] any engine needs, the shared terms included."""
        return int(sum(t.bytes for t in self._terms_for(where) if t.where == where))

    def largest(self, where: str | None = None) -> Term:
        """The largest term a setting can change (one with a hint), else the largest, of
        the engine that needs the most of pool ``where`` (all pools: ``None``)."""
        pool = self._terms_for(where)
        terms = [t for t in pool if where is None or t.where == where] or list(pool)
        return max([t for t in terms if t.hint] or terms, key=lambda t: t.bytes)

    def to_dict(self) -> dict:
        eng = self.peak_engine
        return {
            "backend": self.backend, "dtype": self.dtype,
            "data": {"n_patterns": self.data.n_patterns, "pattern_shape": list(self.data.pattern_shape),
                     "host_itemsize": self.data.host_itemsize, "mapped": self.data.mapped},
            "state_shapes": {k: list(v) for k, v in self.shapes.items() if isinstance(v, tuple)},
            "shared": [t.to_dict() for t in self.shared],
            "engines": [{"index": e.index, "type": e.type, "total_bytes": e.total,
                         "terms": [t.to_dict() for t in e.terms]} for e in self.engines],
            "peak_bytes": self.peak, "peak_GiB": self.peak / GiB,
            "peak_engine": None if eng is None else eng.index,
            "largest": self.largest().to_dict() if self.peak_terms else None,
        }


def format_bytes(n: float) -> str:
    n = float(n)
    if n >= GiB:
        return f"{n / GiB:.2f} GiB"
    if n >= MiB:
        return f"{n / MiB:.1f} MiB"
    return f"{n / 1024:.1f} KiB"


# ---------------------------------------------------------------------------------------
# Shapes
# ---------------------------------------------------------------------------------------


def data_shape(data: Any) -> DataShape:
    """:class:`DataShape` of a :class:`~phaser_core.data.RawData`. Tells counted data (stored
    on the device as uint8 or uint16) with one pass over the patterns, which the engines
    then reuse (``RawData.counted_dtype``)."""
    pats = data.patterns
    counted = data.counted_dtype if hasattr(data, "counted_dtype") else count_dtype(pats)
    base = pats
    while base is not None and not isinstance(base, np.memmap) and getattr(base, "base", None) is not None:
        base = base.base
    mapped = isinstance(pats, np.memmap) or isinstance(base, np.memmap) or isinstance(base, mmap.mmap)
    return DataShape(n_patterns=int(pats.shape[0]), pattern_shape=(int(pats.shape[-2]), int(pats.shape[-1])),
                     host_itemsize=int(np.dtype(pats.dtype).itemsize), mapped=bool(mapped),
                     count_itemsize=0 if counted is None else int(counted.itemsize))


def state_shapes(state: Any) -> dict:
    """``{"probe": (M, Ny, Nx), "object": (S, H, W), "scan": (N, 2), "tilt": (2,) or (N, 2)}`` of a ReconsState
    (engines choose their own dtype). The planner adds ``"probe_scaled"``: whether the
    probe-scaling pass already ran before this engine, ``"unit_object"``: whether the
    engine starts from the initial object and it has unit amplitude (one slice of it then
    scales the probe without a forward pass), and ``"vacuum_object"``: whether it starts
    from an initial object whose slices are each one value of modulus 1 (any number of
    slices then scale it without one)."""
    probe = tuple(int(v) for v in np.shape(state.probe.data))
    if len(probe) == 2:
        probe = (1, *probe)
    obj = tuple(int(v) for v in np.shape(state.object.data))
    if len(obj) == 2:
        obj = (1, *obj)
    return {"probe": probe, "object": obj, "scan": tuple(int(v) for v in np.shape(state.scan_A)),
            "tilt": tuple(int(v) for v in np.shape(getattr(state, "tilt_mrad", np.zeros(2))))}


# ---------------------------------------------------------------------------------------
# The estimate
# ---------------------------------------------------------------------------------------


def _engine_terms(engine: Any, data: DataShape, shapes: dict, dtype: str, backend: str) -> list[Term] | None:
    fn = getattr(engine, "estimate_memory", None)
    if fn is None:
        return None
    try:
        raw = fn(data, shapes, dtype, backend=backend)
    except TypeError:
        raw = fn(data, shapes, dtype)
    terms = []
    for item in raw:
        name, nbytes, hint, *rest = item
        terms.append(Term(str(name), int(nbytes), str(hint), str(rest[0]) if rest else "device"))
    return terms


def resampled_length(n: int, q: int, q_new: int) -> int:
    """An object's length [px] after a move from ``q`` to ``q_new`` detector pixels along
    that axis: padded to a multiple of q / gcd(q, q_new), then scaled by q_new / q
    (:func:`phaser_std.physics.grid.resize_object`)."""
    step = q // math.gcd(q, q_new)
    return -(-n // step) * step * q_new // q


def on_detector_grid(ds: DataShape, shapes: dict, grid: tuple[int, int]) -> tuple[DataShape, dict]:
    """The data and state shapes on another detector grid (``sim_shape``): the patterns
    cropped or padded to ``grid``, the probe on it, the object resampled by the same ratio
    (:mod:`phaser_std.physics.grid`)."""
    q = tuple(ds.pattern_shape)
    if tuple(grid) == q and tuple(shapes["probe"][-2:]) == tuple(grid):
        return ds, shapes
    py, px = shapes["probe"][-2:]
    s, h, w = shapes["object"]
    out = dict(shapes, probe=(shapes["probe"][0], grid[0], grid[1]),
               object=(s, resampled_length(h, py, grid[0]), resampled_length(w, px, grid[1])))
    return attrs.evolve(ds, pattern_shape=(int(grid[0]), int(grid[1]))), out


def _kept_by_later_engines(shapes: dict, config: Any) -> dict:
    """``shapes`` after an engine with ``config``: its ``slices.n`` and ``probe_modes``, where
    set, are what the next engine keeps when it sets none (``null``: keep). The engines'
    own rule (``phaser_std.engines.common.resample_for_engine``) read from the configs, as
    the core imports nothing from phaser_std."""
    slices = getattr(config, "slices", None)
    modes = getattr(config, "probe_modes", None)
    out = dict(shapes)
    if slices is not None:
        out["object"] = (int(slices.n), *shapes["object"][1:])
    if modes is not None:
        out["probe"] = (int(modes), *shapes["probe"][1:])
    return out


def estimate_run(plan: Any, data: Any, state: Any, registry: Any, backend: str | None = None,
                 first_engine: int = 0) -> MemoryEstimate:
    """The estimate for ``plan`` given its loaded ``data`` and the ``state`` (host) its
    engine ``first_engine`` starts from (a resume's: the engines before it are done). An
    engine that keeps the slices or probe modes (``null``) is sized with those the engines
    before it set."""
    backend = backend or concrete_backend_name(str(plan.backend), str(plan.dtype), registry)
    dtype = str(plan.dtype)
    ds = data_shape(data)
    shapes = state_shapes(state)
    # a memory-mapped file's pages are given back as each pass reads them (data.PageRelease)
    shared = [Term("raw patterns in host memory" + (" (a memory-mapped file, its pages given back as read)"
                                                    if ds.mapped else ""),
                   0 if ds.mapped else ds.host_bytes, "crop or bin the data (post_load), or scan a smaller area",
                   "host")]
    obj_host = int(np.asarray(state.object.data).nbytes) + int(np.asarray(state.probe.data).nbytes)
    shared.append(Term("initial state (host copy kept by the runner)", obj_host,
                       "a smaller object field (fewer slices, less padding)", "host"))
    engines = []
    # the probe-scaling pass runs once per run (the first engine that asks for it); on one
    # slice of unit amplitude, or on slices that are each one value of modulus 1 (a vacuum
    # start), the initial object before any engine changed it, it needs no forward pass
    scaled = bool((getattr(state, "extra", None) or {}).get("probe_scaled", False))
    # a one-slice object of unit amplitude takes the shortcut on one slice only (split
    # among an engine's slices, a random phase varies in each); a vacuum on any number
    unit = shapes["object"][0] == 1 and unit_amplitude(state.object.data)
    vacuum = constant_unit_slices(state.object.data)
    grid = shapes["probe"][-2:]
    initial = shapes
    for num, spec in enumerate(plan.engines):
        if num < first_engine:
            continue
        engine = spec.build(registry)
        # an engine's sim_shape moves it and the ones after it to another detector grid
        grid = tuple(int(q) for q in (getattr(getattr(engine, "config", None), "sim_shape", None) or grid))
        ds_e, shapes_e = on_detector_grid(ds, shapes, grid)
        if (ds_e, shapes_e) != (ds, shapes):
            shared_grid = Term(f"patterns resized to the engine's {grid[0]}x{grid[1]} grid (host copy)",
                               ds_e.n_patterns * grid[0] * grid[1] * ds_e.host_itemsize,
                               "no sim_shape, or crop or bin the data (post_load)", "host")
        terms = _engine_terms(engine, ds_e, dict(shapes_e, probe_scaled=scaled, unit_object=unit and num == 0,
                                                         vacuum_object=vacuum and num == 0),
                              dtype, backend)
        if terms is not None and (ds_e, shapes_e) != (ds, shapes):
            terms = [shared_grid, *terms]
        scaled = scaled or bool(getattr(getattr(engine, "config", None), "scale_probe", False))
        shapes = _kept_by_later_engines(shapes, getattr(engine, "config", None))
        if terms is None:
            terms = [Term(f"engine {spec.type!r} gives no estimate", 0, "")]
        engines.append(EngineEstimate(num, str(spec.type), tuple(terms)))
    return MemoryEstimate(backend=backend, dtype=dtype, data=ds, shapes=initial, shared=tuple(shared),
                          engines=tuple(engines))


def estimate_plan(plan: Any, registry: Any = None, plan_dir: Path = Path("."),
                  backend: str | None = None, notes: list | None = None) -> MemoryEstimate:
    """Load the data (memory-mapped where the loader can) and build the initial state, then
    estimate; allocates nothing engine-sized. ``notes`` collects what the initialisers
    tell the user (a run would show them)."""
    from .registry import get_registry
    from .runner import initial_state, load_data

    registry = registry if registry is not None else get_registry()
    data = load_data(plan, registry, Path(plan_dir))
    state = initial_state(plan, data, registry, Path(plan_dir), notes=notes)
    return estimate_run(plan, data, state, registry, backend=backend)


# ---------------------------------------------------------------------------------------
# What is available, and the check
# ---------------------------------------------------------------------------------------


def host_available() -> int | None:
    """Available host memory [bytes]: ``MemAvailable`` of /proc/meminfo, else os.sysconf."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def device_available(backend: Any) -> int | None:
    """Memory of the backend's accelerator [bytes] when it reports one; None on a CPU."""
    dev = getattr(backend, "device", None)
    if dev is not None and str(getattr(dev, "platform", "cpu")) != "cpu":
        try:
            stats = dev.memory_stats() or {}
            limit = stats.get("bytes_limit")
            if limit:
                return int(limit) - int(stats.get("bytes_in_use", 0))
        except Exception:  # noqa: BLE001 - a backend without memory stats
            return None
    if getattr(backend, "name", "") == "cupy":
        try:
            free, _total = backend.xp.cuda.Device().mem_info
            return int(free)
        except Exception:  # noqa: BLE001
            return None
    return None


def available_memory(backend: Any = None) -> dict:
    """``{"device": bytes|None, "host": bytes|None, "source": text}``: the limits the check
    uses. ``device`` is None on CPU backends (everything counts against ``host``)."""
    env = os.environ.get(ENV_BUDGET)
    dev = device_available(backend) if backend is not None else None
    host = host_available()
    if env:
        try:
            budget = int(float(env) * GiB)
        except ValueError:
            raise PhaserError(f"{ENV_BUDGET}={env!r} is not a number of GiB") from None
        if dev is not None:
            return {"device": budget, "host": host, "source": f"{ENV_BUDGET}={env}",
                    "host_source": "MemAvailable (host)"}
        return {"device": None, "host": budget, "source": f"{ENV_BUDGET}={env}"}
    src = "MemAvailable (host)" + (", device memory" if dev is not None else "")
    return {"device": dev, "host": host, "source": src}


@attrs.frozen
class PoolCheck:
    """One memory pool a run draws on, against what is available in it."""

    label: str  #: "device", "host", or "memory" (CPU backends: one pool)
    need: int  #: the estimate's peak in this pool [bytes]
    have: int | None  #: available [bytes]; None: unknown (never fails)
    where: str | None  #: the terms' ``where`` this pool counts (None: all)
    source: str = ""  #: where ``have`` comes from (MemAvailable, a budget setting, ...)

    @property
    def fits(self) -> bool:
        return self.have is None or self.need <= self.have


def pool_checks(est: MemoryEstimate, avail: dict) -> list[PoolCheck]:
    """The pools of ``avail`` (:func:`available_memory`) with the estimate's need in each: on
    an accelerator the device terms against the device and the host terms against the host;
    on a CPU every term against the host. The one rule behind the run's check, the report
    and ``plan-memory --budget-GiB``."""
    src = avail.get("source", "")
    if avail["device"] is not None:
        return [PoolCheck("device", est.peak_where("device"), avail["device"], "device", src),
                PoolCheck("host", est.peak_where("host"), avail["host"], "host", avail.get("host_source", src))]
    return [PoolCheck("memory", est.peak, avail["host"], None, src)]


def shortfall_message(est: MemoryEstimate, check: PoolCheck) -> str:
    """What does not fit, in one sentence naming the largest term and its setting."""
    big = est.largest(check.where)
    eng = est.peak_engine_for(check.where)
    which = f" (engine {eng.index}: {eng.type})" if eng is not None else ""
    return (f"the run needs about {format_bytes(check.need)} of {check.label}{which} but "
            f"{format_bytes(check.have or 0)} is available ({check.source}). The largest term: {big.name} needs "
            f"{format_bytes(big.bytes)}: {big.hint}.")


def check_memory(est: MemoryEstimate, backend: Any = None) -> None:
    """Raise :class:`PhaserError` when ``est`` does not fit what :func:`available_memory` gives."""
    if not env_enabled(ENV_CHECK):
        return
    avail = available_memory(backend)
    for check in pool_checks(est, avail):
        if not check.fits:
            raise PhaserError(f"{shortfall_message(est, check)} "
                              f"See `phaser plan-memory PLAN`; set {ENV_CHECK}=0 to run anyway.")


# ---------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------


def process_rss() -> int | None:
    """This process's resident memory now [bytes] (``VmRSS``); None where /proc is missing."""
    try:
        return _status_kib("VmRSS") * 1024
    except (OSError, ValueError):
        return None


def runtime_baseline(backend: str, dtype: str = "float32", registry: Any = None) -> int | None:
    """This process's resident memory [bytes] once the backend named ``backend`` is built
    and its runtime started by one tiny computation (jax: its XLA client and a first
    compilation): what a run's memory, the planner's estimate, comes on top of (the
    calibration's baseline, :func:`measure_peak`). None where /proc is missing."""
    from .registry import get_registry

    bk = build_backend(backend, dtype, registry if registry is not None else get_registry())
    bk.synchronize(bk.xp.sum(bk.asarray(np.ones(4, dtype=np.float32))))
    return process_rss()


def format_report(est: MemoryEstimate, avail: dict | None = None, baseline: int | None = None) -> str:
    """A plain-text table of every term, per engine, and the peak. ``baseline`` [bytes]: the
    resident memory of a process with the imports done and the backend's runtime up (what
    the estimate, a run's growth, comes on top of), to give the peak a process monitor
    (``/usr/bin/time``, ``top``) would show."""
    d = est.data
    m, ny, nx = est.shapes["probe"]
    s, h, w = est.shapes["object"]
    lines = [f"memory estimate ({est.backend}, {est.dtype}): {d.n_patterns} patterns of "
             f"{d.pattern_shape[0]}x{d.pattern_shape[1]}, probe {m}x{ny}x{nx}, object {s}x{h}x{w} (initial)"]
    width = max([len(t.name) for t in est.shared] + [len(t.name) for e in est.engines for t in e.terms] + [10])

    def row(t: Term) -> str:
        return f"  {t.name:<{width}}  {format_bytes(t.bytes):>11}  {t.where:<6}  {t.hint}"

    lines.append("shared:")
    lines.extend(row(t) for t in est.shared)
    for e in est.engines:
        lines.append(f"engine {e.index} ({e.type}): {format_bytes(e.total)}")
        lines.extend(row(t) for t in sorted(e.terms, key=lambda t: -t.bytes))
    big = est.largest() if est.peak_terms else None
    lines.append(f"peak: {format_bytes(est.peak)}" + (f" (engine {est.peak_engine.index})" if est.peak_engine else "")
                 + (f"; largest term: {big.name} ({format_bytes(big.bytes)})" if big else ""))
    if baseline:
        lines.append(f"process peak: about {format_bytes(baseline + est.peak)} resident (the peak above, plus "
                     f"{format_bytes(baseline)} that a process holds before the run: Python, the imports, "
                     f"the backend's runtime)")
    if avail is not None:
        for check in pool_checks(est, avail):
            if check.have is not None:
                lines.append(f"available {check.label}: {format_bytes(check.have)} ({check.source}), needs "
                             f"{format_bytes(check.need)} -> " + ("fits" if check.fits else "DOES NOT FIT"))
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------
# Measuring a run's peak (calibration; run in a fresh process)
# ---------------------------------------------------------------------------------------


def _status_kib(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise OSError(f"/proc/self/status has no {field}")


def measure_peak(plan_path: str | Path) -> dict:
    """Run the plan in *this* process and return ``{"baseline": RSS before the run,
    "peak": peak RSS during it, "growth": peak - baseline}`` [bytes].

    The baseline is taken after imports and the backend's runtime is up; the peak is
    ``VmHWM`` after resetting it (``/proc/self/clear_refs``), else ``ru_maxrss``. Call it in
    a fresh process (``python -m phaser_core.memory measure PLAN``).
    """
    import resource

    from .plan import load_plan
    from .registry import get_registry
    from .runner import run_plan

    registry = get_registry()
    path = Path(plan_path)
    plan = load_plan(path, registry=registry)
    runtime_baseline(plan.backend, plan.dtype, registry)  # the runtime is up
    reset = True
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")
    except OSError:
        reset = False
    baseline = _status_kib("VmRSS") * 1024
    run_plan(plan, out_dir=None, registry=registry, plan_dir=path.resolve().parent, quiet=True)
    if reset:
        peak = _status_kib("VmHWM") * 1024
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"baseline": baseline, "peak": peak, "growth": peak - baseline, "reset": reset}


def measure_in_subprocess(plan_path: str | Path, timeout: float = 600.0) -> dict:
    """:func:`measure_peak` in a fresh Python process; returns its dict."""
    import subprocess

    # compiled programs from jax's persistent cache need far less memory than compiling
    # them: measure the worst case, a first run
    env = dict(os.environ, PHASER_JAX_CACHE="0")
    proc = subprocess.run([sys.executable, "-m", "phaser_core.memory", "measure", str(plan_path)],
                          capture_output=True, text=True, timeout=timeout, env=env)
    if proc.returncode != 0:
        raise PhaserError(f"measuring {plan_path} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _main(argv: Sequence[str]) -> int:
    if len(argv) == 2 and argv[0] == "measure":
        print(json.dumps(measure_peak(argv[1])))
        return 0
    print("usage: python -m phaser_core.memory measure PLAN", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
