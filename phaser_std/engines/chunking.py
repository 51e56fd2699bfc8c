"""How many positions of a group are computed at once (the group's *chunk*).

A group's update is defined on the whole group (its gradient or its accumulated update is
a sum over positions), but nothing forces the per-position work (shift, multislice, far
field, noise model, adjoint) to run on all B positions at once. On a CPU the arrays of a
whole group, ``B x modes x slices x Ny x Nx`` complex numbers, quickly outgrow the caches and
every pass over them goes to main memory: with 4 probe modes or 8 slices a group of 64 is
1.4-1.9x slower than the same group computed 4-16 positions at a time and summed
(``benchmarks/NOTES.md``). The gradient engine, ePIE, single-slice LSQML and LSQML's
multislice ``joint`` step chunk groups larger than their budget. The sums are the same, so
the chunk changes speed and peak memory, not the result (to float rounding).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from phaser_core.errors import DataError

__all__ = ["ChunkError", "CACHE_BUDGET_BYTES", "SWEEP_BUDGET_BYTES", "LANE_MIN_BYTES", "LANE_CACHE_BUDGET_BYTES",
           "LANE_SWEEP_BUDGET_BYTES", "LANE_JOINT_BUDGET_BYTES", "LANE_GRADIENT_SWEEP_BUDGET_BYTES", "lane_budget",
           "conventional_budget", "conventional_lane_budget", "gradient_lane_budget", "has_chunked_step",
           "auto_chunk", "resolve_chunk", "lane_plan", "engine_chunk", "backend_on_cpu", "named_backend_on_cpu",
           "named_backend_lanes"]

#: Per-chunk wave data [bytes] the automatic choice aims at (a share of a CPU's L2/L3),
#: counted as modes x slices x Ny x Nx complex numbers per position. The gradient step and
#: the single-slice steps gain down to 2 MiB (single-slice LSQML and ePIE with 4 modes
#: 20-28% faster than with 4 MiB, the gradient engine 0-20%); the multislice steps keep every
#: slice's waves of the group between passes and lose to that bookkeeping below ~16 MiB
#: (measured on the 2-core benchmark machine, benchmarks/NOTES.md 11, 16 and 19).
CACHE_BUDGET_BYTES = 2 * 2**20
SWEEP_BUDGET_BYTES = 16 * 2**20
#: The smallest group [bytes of waves: B x modes x slices x Ny x Nx complex] whose chunks
#: are spread over CPU lanes (:func:`engine_chunk`; measured, benchmarks/NOTES.md 27, 51).
LANE_MIN_BYTES = 512 * 2**10
#: Chunk budgets [bytes] on CPU lanes, where each lane (core) works in its own L2 (1 MiB on
#: the benchmark machine) beside the other: the single-slice steps and the gradient engine
#: 256 KiB, the multislice conventional steps 2 MiB (measured with two lanes, group 64,
#: benchmarks/NOTES.md 28: 1.1-1.35x faster than the one-device budgets).
LANE_CACHE_BUDGET_BYTES = 256 * 2**10
LANE_SWEEP_BUDGET_BYTES = 2 * 2**20
#: Chunk budget [bytes] on CPU lanes of LSQML's multislice ``joint`` step, whose first pass
#: keeps more per position than ePIE's sweep (every slice's entering wave, the
#: illuminations, χ) and whose second pass reads them again: half the other multislice
#: steps' lane budget ran 7-12% faster (8-20 slices of 64²-96², benchmarks/NOTES.md 65),
#: ePIE's sweep the same with either. On one device the whole group stays fastest.
LANE_JOINT_BUDGET_BYTES = 1 * 2**20
#: Chunk budget [bytes] on CPU lanes of the gradient engine's multislice step: two
#: positions of 8 x 64² (the single-slice steps' 256 KiB held one) ran 4-6% faster at
#: groups of 16, 64 and 256 (benchmarks/NOTES.md 66).
LANE_GRADIENT_SWEEP_BUDGET_BYTES = 512 * 2**10


def lane_budget(budget: int) -> int:
    """The chunk budget [bytes] on CPU lanes for a step whose one-device budget is ``budget``."""
    if int(budget) >= SWEEP_BUDGET_BYTES:
        return LANE_SWEEP_BUDGET_BYTES
    return min(int(budget), LANE_CACHE_BUDGET_BYTES)


def conventional_lane_budget(solver: str, n_slices: int) -> int | None:
    """The chunk budget [bytes] on CPU lanes of the built-in conventional rule ``solver``
    where it is not :func:`lane_budget` of its one-device budget: LSQML's multislice step,
    :data:`LANE_JOINT_BUDGET_BYTES`; None otherwise."""
    return LANE_JOINT_BUDGET_BYTES if solver == "lsqml" and int(n_slices) > 1 else None


def gradient_lane_budget(n_slices: int) -> int | None:
    """The chunk budget [bytes] on CPU lanes of the gradient engine's step where it is not
    :func:`lane_budget` of :data:`CACHE_BUDGET_BYTES`: multislice,
    :data:`LANE_GRADIENT_SWEEP_BUDGET_BYTES`; None on one slice."""
    return LANE_GRADIENT_SWEEP_BUDGET_BYTES if int(n_slices) > 1 else None


def auto_chunk(group_size: int, bytes_per_position: int, budget: int = CACHE_BUDGET_BYTES) -> int:
    """The largest divisor of ``group_size`` whose waves (``bytes_per_position`` each
    [bytes]) fit ``budget`` [bytes]; the whole group when it fits or when no divisor of
    at least half the wanted size exists (a prime group size)."""
    group_size = int(group_size)
    want = max(1, int(budget) // max(int(bytes_per_position), 1))
    if want >= group_size:
        return group_size
    best = max(d for d in range(1, want + 1) if group_size % d == 0)
    return best if 2 * best >= want else group_size


class ChunkError(DataError, ValueError):
    """``grouping.chunk`` does not divide the group: a :class:`DataError` (the command line
    prints its message, no traceback) when the scan holds fewer positions than
    ``grouping.size``, which caps the group to them."""


def resolve_chunk(requested: int | None, group_size: int, n_modes: int, n_slices: int,
                  wave_shape: tuple[int, int], itemsize: int, on_cpu: bool,
                  budget: int = CACHE_BUDGET_BYTES, lanes: int = 1) -> int:
    """The chunk an engine uses: ``requested`` when given (it must divide the group size),
    else :func:`auto_chunk` on a CPU (waves of ``n_modes·n_slices·Ny·Nx`` complex numbers of
    ``itemsize`` [bytes] per position) and the whole group on a GPU, whose batches should
    stay large. With several CPU ``lanes`` (the backend's devices, which compute chunks at
    once) the chunk is a divisor of the group's share per lane, so the chunks divide among
    the lanes (when the group size does)."""
    if requested is not None:
        requested = int(requested)
        if requested < 1 or group_size % requested:
            raise ChunkError(f"grouping.chunk: {requested} must be a positive divisor of the group size "
                             f"{group_size} (grouping.size, capped to the number of scan positions); set "
                             f"grouping.chunk to a divisor of {group_size}, or null to size it automatically")
        return requested
    if not on_cpu:
        return group_size
    per_position = int(n_modes) * int(n_slices) * int(wave_shape[0]) * int(wave_shape[1]) * int(itemsize)
    lanes = max(int(lanes), 1)
    if lanes > 1 and group_size % lanes == 0:
        return auto_chunk(group_size // lanes, per_position, budget)
    return auto_chunk(group_size, per_position, budget)


def lane_plan(lanes: int, requested: int | None, group_size: int, n_modes: int, n_slices: int,
              wave_shape: tuple[int, int], itemsize: int, on_cpu: bool, budget: int = CACHE_BUDGET_BYTES,
              chunked_step: bool = True, lane_budget_bytes: int | None = None) -> tuple[int, int]:
    """``(lanes_used, chunk)`` of a group step on a backend with ``lanes`` CPU lanes (jax: one
    CPU device per core), shared by the engines (:func:`engine_chunk`) and the memory planner.

    A step that computes its group in chunks spreads them over the lanes (``bk.sum_scan``),
    with chunks of ``lane_budget_bytes`` (None: :func:`lane_budget` of ``budget``) that
    divide among the lanes; where they do not divide among all of them, over the most lanes
    they divide among (64 positions on a 6-core machine: 4 lanes, not 6; 100 positions on
    8 lanes: 5). Where they divide among none (the whole group in one chunk, a prime group
    size, ``chunked_step`` False: a step without chunks) every lane would compute the same
    whole step, slower than one device (1.7x measured, benchmarks/NOTES.md 27), so the
    step uses one lane and the one-device ``budget``. So does a group whose waves are
    smaller than :data:`LANE_MIN_BYTES`, and a group uses no more lanes than give each half
    of that (16 positions of 64² on 8 lanes: 2): the lanes meet once per pass over the
    chunks, and every lane does the group's object-sized work, which outweighs half of a
    small group's waves (single slice, one mode, 64², groups of 8: LSQML 1.36x and the
    gradient engine 1.2x slower on two lanes; groups of 16: ePIE 1.42x and the gradient
    engine 1.11x faster, LSQML the same)."""
    waves = int(group_size) * int(n_modes) * int(n_slices) * int(wave_shape[0]) * int(wave_shape[1]) * int(itemsize)
    if lanes > 1 and chunked_step and waves >= LANE_MIN_BYTES:
        per_lane_budget = lane_budget(budget) if lane_budget_bytes is None else lane_budget_bytes
        # every lane gets at least half of LANE_MIN_BYTES of waves, the share measured to pay
        # on two lanes: a small group on a many-core machine uses fewer lanes than it has
        most = min(int(lanes), waves // (LANE_MIN_BYTES // 2))
        for used in range(most, 1, -1):
            chunk = resolve_chunk(requested, group_size, n_modes, n_slices, wave_shape, itemsize, on_cpu,
                                  per_lane_budget, used)
            if chunk < group_size and (group_size // chunk) % used == 0:
                return used, chunk
    return 1, resolve_chunk(requested, group_size, n_modes, n_slices, wave_shape, itemsize, on_cpu, budget)


def engine_chunk(bk: Any, requested: int | None, group_size: int, n_modes: int, n_slices: int,
                 wave_shape: tuple[int, int], budget: int = CACHE_BUDGET_BYTES,
                 chunked_step: bool = True, lane_budget_bytes: int | None = None) -> tuple[Any, int]:
    """``(backend, chunk)`` of an engine's group step: :func:`lane_plan` on ``bk``'s lanes;
    where it gives fewer lanes than ``bk`` has, the backend's twin on that many
    (``bk.with_lanes(n)``; ``bk.one_lane()`` for one)."""
    lanes = int(getattr(bk, "lanes", 1))
    used, chunk = lane_plan(lanes, requested, group_size, n_modes, n_slices, wave_shape,
                            int(np.dtype(bk.complex_dtype).itemsize), backend_on_cpu(bk), budget, chunked_step,
                            lane_budget_bytes)
    if used == lanes:
        return bk, chunk
    return (bk.one_lane() if used == 1 else bk.with_lanes(used)), chunk


def has_chunked_step(solver: str, n_slices: int, multislice: str = "joint") -> bool:
    """Whether the built-in conventional rule ``solver`` has a chunked group step
    (:mod:`~phaser_std.engines.chunked_steps`): ePIE (any slices), LSQML on one slice and
    its multislice ``joint`` step (and its probe-only step, for iterations without the
    object update). LSQML's ``sequential`` sweep has none."""
    if solver == "epie" or int(n_slices) == 1:
        return solver in ("epie", "lsqml")
    return solver == "lsqml" and multislice == "joint"


def conventional_budget(n_slices: int) -> int:
    """The chunk budget [bytes] of a conventional engine's group step: the single-slice
    steps (ePIE, LSQML) gain down to :data:`CACHE_BUDGET_BYTES`, the multislice steps use
    :data:`SWEEP_BUDGET_BYTES`."""
    return CACHE_BUDGET_BYTES if int(n_slices) == 1 else SWEEP_BUDGET_BYTES


def backend_on_cpu(bk: Any) -> bool:
    """Whether ``bk`` computes on the CPU (numpy; jax on its CPU platform)."""
    if bk.name == "cupy":
        return False
    device = getattr(bk, "device", None)
    return device is None or getattr(device, "platform", "cpu") == "cpu"


def named_backend_lanes(backend: str) -> int:
    """The CPU lanes a backend named ``backend`` would have (jax: its CPU devices when it
    computes on the CPU; 1 otherwise), for the memory planner, which has no backend; at
    most :data:`phaser_core.backend.LANE_LIMIT` where the runner set one."""
    if backend != "jax" or not named_backend_on_cpu(backend):
        return 1
    from phaser_core.backend import LANE_LIMIT
    from phaser_std.backends.jax_backend import cpu_lane_mesh
    mesh = cpu_lane_mesh()
    lanes = 1 if mesh is None else int(mesh.size)
    limit = LANE_LIMIT.get()
    return lanes if limit is None else min(lanes, limit)


def named_backend_on_cpu(backend: str) -> bool:
    """:func:`backend_on_cpu` from a backend's name (the memory planner has no backend):
    jax counts as CPU unless its default platform is a GPU."""
    if backend == "cupy":
        return False
    if backend == "jax":
        try:
            # through the backend module, which asks jax for its CPU lanes before jax starts
            from phaser_std.backends.jax_backend import jax
        except ImportError:
            return True
        return jax.default_backend() == "cpu"
    return True
