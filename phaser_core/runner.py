"""The run: load and preprocess data, build or resume the state, run engines, notify observers.

:func:`run_plan` is what ``phaser run`` calls. The flow:

1. Build the backend (:func:`~phaser_core.backend.build_backend`; ``auto``: the fastest
   installed) and the observers: ``output`` (when there is an output folder), ``logger``,
   ``progress`` (unless ``quiet``), then ``plan.observers``, then the ``observers`` argument.
2. ``before_run``; load ``plan.raw_data`` and apply ``plan.post_load`` in order.
3. The initial state: on ``resume`` the newest of ``DIR/checkpoint.h5`` and
   ``DIR/final.h5``; else the state file ``plan.init.state``; else the scan, probe and object
   initialisers, in that order. Then the memory check (:mod:`phaser_core.memory`): a run
   whose estimated peak does not fit stops here with a :class:`PhaserError`.
4. Each engine in plan order: ``before_engine``, ``engine.run(state, data, ctx)``,
   ``after_engine``. Then ``after_run``, or ``on_run_error`` when anything raised or the run
   was interrupted.

**Iteration counters** (``state.iteration``): before a fresh engine the runner sets
``engine_num`` to the engine's index and ``engine_iter`` to 0; an engine runs its
iterations ``engine_iter, engine_iter + 1, ..., niter - 1`` and, after each one, sets
``engine_iter`` and ``total_iter`` to the number of iterations completed (in the engine and
in the run) before notifying ``after_iteration``. A resumed engine therefore continues from
``engine_iter``. Engines derive per-iteration random numbers from (seed, engine_num,
iteration) and keep anything else they carry between iterations in ``state.extra``, so a
resumed run ends in the same state as an uninterrupted one.

**Ctrl-C** (and SIGTERM alike, as schedulers and ``kill`` send it): the first signal sets
``ctx.stop_requested``; engines stop after the current iteration, the output observer
writes ``checkpoint.h5`` and :class:`RunInterrupted` is raised with the command that
resumes. A second signal raises ``KeyboardInterrupt`` at once (the checkpoint then holds
the newest iteration the output observer could still copy: the last completed one when
the interruption came between iterations, else the newest ``checkpoint_every``
checkpoint).
"""

from __future__ import annotations

import signal
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import attrs
import numpy as np

from .backend import build_backend, lanes_at_most
from .context import InitContext, LoadContext, RunContext
from .data import check_finite, compact_counts, few_counts_warning
from .errors import DataError, PhaserError
from .files import CHECKPOINT_NAME, FINAL_NAME, STATES_DIR, holds_previous_run
from .interrupts import run_started, stop_requested_early, stop_signals_handled_by
from .observer import announce, notify
from .registry import get_registry
from .state import IterationCounters, Progress, ReconsState

#: observers the runner adds unless the plan names them itself
DEFAULT_OBSERVERS = ("output", "logger", "progress")


class RunInterrupted(PhaserError):
    """The run stopped early on request (Ctrl-C) after saving a checkpoint.

    ``state`` is the state at the last completed iteration, ``out_dir`` the run folder.
    """

    def __init__(self, message: str, *, state: ReconsState | None = None, out_dir: Path | None = None):
        super().__init__(message)
        self.state = state
        self.out_dir = out_dir


# -- observers ----------------------------------------------------------------------------


def _output_config(plan: Any, component: Any) -> Any:
    """The output observer's config from ``plan.output`` (fields the config class knows)."""
    output = getattr(plan, "output", None)
    if output is None or component.config is None:
        return component.make_config()
    names = attrs.fields_dict(component.config)
    return component.make_config(**{k: getattr(output, k) for k in names if hasattr(output, k)})


def build_observers(plan: Any, registry: Any, *, out_dir: Path | None, quiet: bool,
                    extra: list | None = None) -> list:
    """Default observers (output, logger, progress) + ``plan.observers`` + ``extra``."""
    plan_specs = tuple(getattr(plan, "observers", ()) or ())
    named = {spec.type for spec in plan_specs}
    observers: list = []
    for name in DEFAULT_OBSERVERS:
        if name in named or (name == "output" and out_dir is None) or (name == "progress" and quiet):
            continue
        comp = registry.get("observer", name)
        if name == "output":
            config = _output_config(plan, comp)
        elif name == "logger" and quiet and comp.config is not None and "echo" in attrs.fields_dict(comp.config):
            config = comp.make_config(echo="never")  # quiet: the log file only
        else:
            config = comp.make_config()
        observers.append(comp.obj(config))
    observers.extend(spec.build(registry) for spec in plan_specs)
    observers.extend(extra or ())
    return observers


def _notify_all(observers: list, method: str, *args: Any) -> None:
    """Call ``method`` on every observer even if some raise (the error path)."""
    for obs in observers:
        try:
            getattr(obs, method)(*args)
        except Exception as exc:  # noqa: BLE001 - one broken observer must not stop the checkpoint
            print(f"phaser: observer {type(obs).__name__}.{method} failed: {type(exc).__name__}: {exc}",
                  file=sys.stderr)


# -- data and initial state ---------------------------------------------------------------


def load_data(plan: Any, registry: Any, plan_dir: Path) -> Any:
    """``plan.raw_data`` loaded, then each ``plan.post_load`` step applied in order; patterns
    holding NaN or ±inf then stop the run (:func:`~phaser_core.data.check_finite`), and
    counted ones are kept as uint8/uint16 from here on (:func:`~phaser_core.data.compact_counts`)."""
    ctx = LoadContext(plan_dir=Path(plan_dir), seed=int(plan.seed), dtype=str(plan.dtype))
    data = plan.raw_data.build(registry, ctx)
    for step in getattr(plan, "post_load", ()) or ():
        data = step.build(registry, data, ctx)
    check_finite(data)
    warning = few_counts_warning(data)
    if warning:
        print(f"phaser: warning: {warning}", file=sys.stderr)
    return compact_counts(data)


def _wavelength(data: Any) -> float | None:
    try:
        return float(data.wavelength_A())
    except (PhaserError, ValueError, AttributeError, TypeError):
        return None


def check_state_fits_data(state: ReconsState, data: Any, path: Path) -> None:
    """A state read from ``path`` (``init.state``, a checkpoint to resume) must hold one
    scan position per pattern of ``data``; a :class:`DataError` names both counts."""
    n_positions, n_patterns = int(np.shape(state.scan_A)[0]), int(data.n_patterns)
    if n_positions != n_patterns:
        raise DataError(f"{path}: the state holds {n_positions} scan positions but the data (after post_load) "
                        f"{n_patterns} patterns; start from a state of the same scan (the same data and "
                        "post_load crop), or drop init.state")


def initial_state(plan: Any, data: Any, registry: Any, plan_dir: Path, notes: list | None = None) -> ReconsState:
    """The state before the first engine: from ``plan.init.state`` or the initialisers;
    ``notes`` collects what the initialisers tell the user (:attr:`InitContext.notes`)."""
    init = plan.init
    state_path = getattr(init, "state", None)
    if state_path:
        from .statefile import load_state

        path = LoadContext(plan_dir=Path(plan_dir)).resolve(state_path)
        state = load_state(path)
        check_state_fits_data(state, data, path)
        # a new run from a previous result: its own counters, progress and engine carry-over
        return attrs.evolve(state, iteration=IterationCounters(), progress=Progress(), extra={})
    thicknesses = np.asarray(plan.slices.resolve(), dtype=np.float64)
    wavelength = _wavelength(data)
    ictx = InitContext(data=data, seed=int(plan.seed), dtype=str(plan.dtype), plan_dir=Path(plan_dir),
                       n_slices=int(thicknesses.size), thicknesses_A=thicknesses, wavelength_A=wavelength,
                       notes=notes if notes is not None else [])
    scan = np.asarray(init.scan.build(registry, ictx), dtype=np.float64)
    ictx = attrs.evolve(ictx, scan_A=scan)
    probe = init.probe.build(registry, ictx)
    ictx = attrs.evolve(ictx, probe=probe)
    obj = init.object.build(registry, ictx)
    # the data's beam tilt (y, x) [mrad], when recorded, is the initial global tilt
    tilt = getattr(data, "tilt_mrad", None)
    tilt = np.zeros(2) if tilt is None else np.asarray(tilt, dtype=np.float64).reshape(2)
    return ReconsState(probe=probe, object=obj, scan_A=scan, tilt_mrad=tilt, wavelength_A=wavelength)


def _total_iter(path: Path) -> int:
    from .statefile import read_counters

    return read_counters(path).total_iter


def check_resumable(plan: Any, out_dir: Path, registry: Any) -> None:
    """A :class:`PhaserError` when ``plan`` (a resume's, perhaps with ``--set``) cannot
    continue the run in ``out_dir``: fewer engines than it has reached, or an ``niter``
    below the iterations its engine has done (the run would not change while its
    plan.yaml said otherwise)."""
    from .statefile import read_counters

    at = read_counters(resume_file(out_dir))
    engines = tuple(plan.engines)
    if at.engine_num >= len(engines):
        raise PhaserError(f"cannot resume {out_dir}: it is at engine {at.engine_num}, and the plan has "
                          f"{len(engines)} engine(s)")
    niter = _niter(engines[at.engine_num], registry)
    if niter is not None and niter < at.engine_iter:
        raise PhaserError(f"cannot resume {out_dir} with engines[{at.engine_num}].niter = {niter}: that engine has "
                          f"done {at.engine_iter} iterations already. A resume continues a run: raise niter, or "
                          "start a new run (init.state can start it from this one's final.h5)")


def resume_file(out_dir: Path) -> Path:
    """The state file to resume from: the newer of ``checkpoint.h5`` and ``final.h5``."""
    out_dir = Path(out_dir)
    found = [out_dir / n for n in (FINAL_NAME, CHECKPOINT_NAME) if (out_dir / n).is_file()]
    if not found:
        raise PhaserError(f"cannot resume {out_dir}: it holds neither {CHECKPOINT_NAME} nor {FINAL_NAME}. "
                          f"Start the run with: phaser run PLAN --out {out_dir}")
    # final.h5 first: on a tie it wins
    return max(found, key=_total_iter)


def _niter(spec: Any, registry: Any) -> int | None:
    """The engine's iteration count from its config (``niter``), when it has one."""
    try:
        niter = getattr(spec.resolved_config(registry), "niter", None)
    except Exception:  # noqa: BLE001 - the engine's build reports config problems itself
        return None
    return int(niter) if niter is not None else None


def resumed_engine(plan: Any, state: ReconsState, registry: Any) -> int:
    """The first engine a resume from ``state`` runs: the state's engine, or the next one
    when it had finished its iterations."""
    num = int(state.iteration.engine_num)
    engines = tuple(plan.engines)
    niter = _niter(engines[num], registry) if num < len(engines) else None
    return num + 1 if niter is not None and int(state.iteration.engine_iter) >= niter else num  # finished


# -- Ctrl-C and SIGTERM -------------------------------------------------------------------


@contextmanager
def _sigint_handler(ctx: RunContext) -> Iterator[None]:
    """First SIGINT or SIGTERM: ``ctx.stop_requested = True``; a second one: ``KeyboardInterrupt``.
    A stop asked for earlier (:func:`early_stop_requests`) counts as the first."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    if stop_requested_early():
        ctx.stop_requested = True
    run_started()

    def handler(signum: int, frame: Any) -> None:
        if ctx.stop_requested:
            raise KeyboardInterrupt
        ctx.stop_requested = True
        again = "press Ctrl-C" if signum == signal.SIGINT else f"send {signal.Signals(signum).name}"
        print(f"\nphaser: stopping after the current iteration and writing a checkpoint "
              f"({again} again to abort at once)", file=sys.stderr, flush=True)

    with stop_signals_handled_by(handler):
        yield


def _interrupted(state: ReconsState, out_dir: Path | None) -> RunInterrupted:
    it = state.iteration
    where = f"after iteration {int(it.total_iter)} (engine {int(it.engine_num)}, iteration {int(it.engine_iter)})"
    if out_dir is None:
        return RunInterrupted(f"run interrupted {where}; it had no output folder, so nothing was saved",
                              state=state, out_dir=None)
    return RunInterrupted(f"run interrupted {where}; checkpoint written to {Path(out_dir) / CHECKPOINT_NAME}. "
                          f"Resume with: phaser run --resume {out_dir}", state=state, out_dir=Path(out_dir))


def _state_to_keep(exc: BaseException, state: ReconsState | None, resume: bool) -> ReconsState | None:
    """The state ``on_run_error`` may save: ``None`` when a fresh run failed (not on an
    interruption) before its first iteration, so that no checkpoint of the initial state
    makes the corrected rerun with the same output folder refuse as "a previous run"."""
    if state is None or resume or isinstance(exc, (RunInterrupted, KeyboardInterrupt)):
        return state
    return state if int(state.iteration.total_iter) > 0 else None


# -- memory check (phaser_core.memory) ------------------------------------------------------


def _check_memory(plan: Any, data: Any, state: ReconsState, registry: Any, backend: Any,
                  first_engine: int = 0) -> tuple[Any, str | None]:
    """Stop before the first engine (``first_engine``: a resume's) when the memory
    planner's estimate of it and the engines after it does not fit the
    available memory (``PHASER_MEMORY_BUDGET_GIB``, host RAM, the GPU's memory);
    ``PHASER_MEMORY_CHECK=0`` skips it. An estimator that fails only warns.

    Returns ``(backend, note)``: the backend to run on and what to tell the user. A backend
    with several CPU lanes, each holding its own copy of the object and its update maps
    (jax: one lane a core), that does not fit on all of them runs on the most lanes that
    fit (``backend.with_lanes(n)``) rather than stopping; the note says so."""
    from .config import env_enabled
    from .memory import ENV_CHECK, available_memory, check_memory, estimate_run, format_bytes, pool_checks

    if not env_enabled(ENV_CHECK):
        return backend, None  # nothing to check: no estimate (it reads the patterns once)
    name = getattr(backend, "name", None)
    try:
        est = estimate_run(plan, data, state, registry, backend=name, first_engine=first_engine)
    except PhaserError:
        raise
    except Exception as exc:  # noqa: BLE001 - the estimate must never break a run that would fit
        print(f"phaser: memory estimate skipped: {type(exc).__name__}: {exc}", file=sys.stderr)
        return backend, None
    try:
        check_memory(est, backend)
        return backend, None
    except PhaserError:
        lanes = int(getattr(backend, "lanes", 1))
        if lanes < 2:
            raise
        avail = available_memory(backend)
        for n in range(lanes - 1, 0, -1):
            with lanes_at_most(n):
                fewer = estimate_run(plan, data, state, registry, backend=name, first_engine=first_engine)
            if all(c.fits for c in pool_checks(fewer, avail)):
                return backend.with_lanes(n), (
                    f"memory: the run needs about {format_bytes(est.peak)} on {lanes} CPU lanes but "
                    f"{format_bytes(avail.get('host') or 0)} is available ({avail.get('source', '')}); it runs on {n} "
                    f"of them (about {format_bytes(fewer.peak)}; with jax, PHASER_JAX_CPU_DEVICES sets the lanes)")
        raise


# -- the run ------------------------------------------------------------------------------


def run_plan(plan: Any, *, out_dir: Path | None = None, registry: Any = None, resume: bool = False,
             plan_dir: Path = Path("."), observers: list | None = None, quiet: bool = False,
             overwrite: bool = False) -> ReconsState:
    """Run ``plan`` and return the final state (host arrays).

    :param out_dir: the run folder for checkpoints, ``final.h5``, ``log.txt`` and images;
        ``None`` writes nothing.
    :param registry: the component registry (default: the process-wide one).
    :param resume: continue the run in ``out_dir`` from its newest state file.
    :param overwrite: start afresh in an ``out_dir`` that holds a previous run, deleting
        its ``checkpoint.h5`` and ``final.h5`` (refused otherwise, so that a run is not lost
        by mistake).
    :param plan_dir: the folder relative paths in the plan are resolved against.
    :param observers: extra observer instances, notified after the plan's.
    :param quiet: no progress display.
    :raises RunInterrupted: after a first Ctrl-C, once the checkpoint is written.
    """
    registry = registry if registry is not None else get_registry()
    out_dir = Path(out_dir) if out_dir is not None else None
    plan_dir = Path(plan_dir)
    if resume and out_dir is None:
        raise PhaserError("resume needs the run folder: run_plan(..., out_dir=DIR, resume=True)")
    replaces_previous = out_dir is not None and not resume and holds_previous_run(out_dir)
    if replaces_previous and not overwrite:
        raise PhaserError(f"{out_dir} holds a previous run: continue it with run_plan(..., resume=True), "
                          "start afresh with overwrite=True, or choose another out_dir")
    backend = build_backend(plan.backend, plan.dtype, registry)
    obs = build_observers(plan, registry, out_dir=out_dir, quiet=quiet, extra=observers)
    ctx = RunContext(backend=backend, registry=registry, observers=obs, seed=int(plan.seed), out_dir=out_dir,
                     engine_num=0, plan=plan)
    engines = tuple(plan.engines)
    state: ReconsState | None = None
    with _sigint_handler(ctx):
        try:
            resume_from = resume_file(out_dir) if resume else None  # before the (slow) data load
            notify(obs, "before_run", plan, ctx)
            data = load_data(plan, registry, plan_dir)
            if resume_from is not None:
                from .statefile import load_state

                state = load_state(resume_from)
                check_state_fits_data(state, data, resume_from)
                first = resumed_engine(plan, state, registry)  # the next one when its engine had finished
            else:
                notes: list[str] = []
                state = initial_state(plan, data, registry, plan_dir, notes=notes)
                for text in notes:
                    announce(ctx, text)
                first = 0
            ctx.backend, note = _check_memory(plan, data, state, registry, backend, first_engine=first)
            if note:
                announce(ctx, note)
            if replaces_previous:
                # the old state files go once this run can start (a plan that fails to load
                # or fit leaves them), so a later resume cannot pick them over this run's
                for name in (CHECKPOINT_NAME, FINAL_NAME):
                    (out_dir / name).unlink(missing_ok=True)
                for kept in (out_dir / STATES_DIR).glob("*.h5"):
                    kept.unlink()
            for num, spec in enumerate(engines):
                if num < first:
                    continue
                niter = _niter(spec, registry)
                if not (resume and num == int(state.iteration.engine_num)):  # a resumed engine keeps its counters
                    state = attrs.evolve(state, iteration=IterationCounters(
                        engine_num=num, engine_iter=0, total_iter=int(state.iteration.total_iter)))
                ctx.engine_num = num
                if ctx.stop_requested:
                    raise _interrupted(state, out_dir)
                engine = spec.build(registry)
                notify(obs, "before_engine", engine, state, ctx)
                new_state = engine.run(state, data, ctx)
                if not isinstance(new_state, ReconsState):
                    raise PhaserError(f"engine {num} ({spec.type}) returned {type(new_state).__name__}, "
                                      "not a ReconsState: engine.run must return the updated state")
                state = new_state
                finished = niter is None or int(state.iteration.engine_iter) >= niter
                if ctx.stop_requested and not finished:
                    raise _interrupted(state, out_dir)
                notify(obs, "after_engine", engine, state, ctx)
                if ctx.stop_requested and num < len(engines) - 1:
                    raise _interrupted(state, out_dir)
            notify(obs, "after_run", state, ctx)
        except BaseException as exc:
            _notify_all(obs, "on_run_error", exc, _state_to_keep(exc, state, resume), ctx)
            if isinstance(exc, KeyboardInterrupt) and out_dir is not None and (out_dir / CHECKPOINT_NAME).is_file():
                print(f"phaser: aborted; {out_dir / CHECKPOINT_NAME} holds the newest saved iteration. "
                      f"Resume with: phaser run --resume {out_dir}", file=sys.stderr, flush=True)
            raise
    return state
