"""The output observer: checkpoints, the final state file and images in the run folder.

Files in ``ctx.out_dir`` (nothing is written when the run has no output folder):

- ``checkpoint.h5``: the latest state, every ``checkpoint_every`` iterations (counted over
  the whole run), after each engine and when the run fails or is interrupted (the state
  after the last completed iteration when the engine had not yet moved on, as on Ctrl-C or an
  observer's error; after a crash inside an iteration, the newest checkpoint stands: the
  engine's arrays are copied from the device only for checkpoints and images, see
  :class:`~phaser_core.state.DeferredState`). Written atomically, so a SIGKILL leaves the
  previous one intact. ``phaser run --resume DIR`` continues from it.
- ``final.h5``: the state after the last engine.
- ``images/engine{num}_{kind}.tif|.png`` after each engine, ``images/final_{kind}.*`` at
  the end and ``images/iter{total_iter:05d}_{kind}.*`` every ``image_every`` iterations.
- With ``state_every``: ``states/iter{total_iter:05d}.h5`` every that many iterations and
  ``states/engine{num}.h5`` after each engine, all kept (a run's history, for looking back
  at convergence or starting another plan from any of them with ``init.state``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import numpy as np

from phaser_core.config import param
from phaser_core.observer import Observer
from phaser_core.state import DeferredState, StateExpired
from phaser_core.files import CHECKPOINT_NAME, FINAL_NAME, STATES_DIR

from .images import IMAGE_KINDS, check_kinds, write_images

IMAGES_DIR = "images"


def _check_images(instance: Any, attribute: Any, value: Any) -> None:
    check_kinds(value)


def _positive_or_none(instance: Any, attribute: Any, value: Any) -> None:
    if value is not None and int(value) < 1:
        raise ValueError(f"output.{attribute.name} must be a positive number of iterations or null, got {value}",
                         attribute)


@attrs.frozen
class OutputConfig:
    """What the output observer writes and how often."""

    checkpoint_every: int = param(10, doc="write checkpoint.h5 every N iterations (0: only after engines "
                                          "and on interruption)")
    images: tuple[str, ...] = param(("object_phase", "object_phase_sum", "probe", "probe_recip"),
                                    converter=tuple, validator=_check_images,
                                    doc=f"image kinds: {', '.join(IMAGE_KINDS)}")
    image_every: int | None = param(None, validator=_positive_or_none,
                                    doc="also write images every N iterations (null: only after each engine)")
    state_every: int | None = param(None, validator=_positive_or_none,
                                    doc="keep the state every N iterations in states/iterNNNNN.h5, and after each "
                                        "engine in states/engineN.h5 (null: none kept)")


def _host_array(x: Any, bk: Any) -> Any:
    """A numpy copy of ``x`` that later in-place updates by an engine cannot change."""
    if x is None or isinstance(x, (bool, int, float, complex, str, bytes)):
        return x
    if isinstance(x, dict):
        return {k: _host_array(v, bk) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_host_array(v, bk) for v in x)
    if isinstance(x, np.generic):
        return x.copy()
    if isinstance(x, np.ndarray):
        return x.copy()
    host = bk.to_numpy(x) if bk is not None else np.asarray(x)
    return np.array(host, copy=True)


def host_state(state: Any, bk: Any = None) -> Any:
    """A snapshot of ``state`` with every array copied to host numpy memory.

    Engines may update their arrays in place (numpy) or keep them on a device (jax,
    cupy); the snapshot stays as it was when taken.
    """
    if isinstance(state, DeferredState):
        state = state.take()
    return attrs.evolve(
        state,
        probe=attrs.evolve(state.probe, data=_host_array(state.probe.data, bk)),
        object=attrs.evolve(state.object, data=_host_array(state.object.data, bk),
                            thicknesses_A=np.array(_host_array(state.object.thicknesses_A, bk), copy=True)),
        scan_A=_host_array(state.scan_A, bk),
        tilt_mrad=_host_array(state.tilt_mrad, bk),
        iteration=attrs.evolve(state.iteration),
        progress=state.progress.copy(),
        extra=_host_array(dict(state.extra), bk),
    )


class OutputObserver(Observer):
    """Writes checkpoints, ``final.h5`` and images into the run's output folder."""

    def __init__(self, config: OutputConfig | None = None):
        self.config = config if config is not None else OutputConfig()
        #: host copy of the newest state written (a checkpoint, images, an engine's end)
        self.snapshot: Any = None
        #: the state after the last completed iteration: a deferred one as the engine handed
        #: it over, its arrays copied only when written (on a GPU the copy costs about as
        #: much as the iteration) and on an error while they are still there
        self.latest: Any = None
        self.written: list[Path] = []

    # -- helpers ----------------------------------------------------------------------

    @staticmethod
    def _out(ctx: Any) -> Path | None:
        out = getattr(ctx, "out_dir", None)
        return Path(out) if out is not None else None

    def _save(self, state: Any, name: str, ctx: Any) -> None:
        from phaser_core.statefile import save_state

        out = self._out(ctx)
        if out is None or state is None:
            return
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        self.written.append(save_state(state, out / name))

    def _images(self, state: Any, prefix: str, ctx: Any) -> None:
        out = self._out(ctx)
        if out is None or state is None or not self.config.images:
            return
        self.written.extend(write_images(state, self.config.images, out / IMAGES_DIR, prefix))

    # -- lifecycle --------------------------------------------------------------------

    def before_run(self, plan: Any, ctx: Any) -> None:
        self.snapshot = self.latest = None
        out = self._out(ctx)
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)

    def after_iteration(self, state: Any, metrics: dict, ctx: Any) -> None:
        if self._out(ctx) is None:
            return
        # a plain state (an engine that does not defer its copies) may be changed in place
        # by the next iteration: copied now, as the state to write on an error
        self.latest = state if isinstance(state, DeferredState) else host_state(state, getattr(ctx, "backend", None))
        total = int(state.iteration.total_iter)
        every = int(self.config.checkpoint_every or 0)
        checkpoint = every > 0 and total % every == 0
        images = bool(self.config.image_every) and total % int(self.config.image_every) == 0
        kept = bool(self.config.state_every) and total % int(self.config.state_every) == 0
        if checkpoint or images or kept:
            deferred = isinstance(self.latest, DeferredState)
            self.snapshot = host_state(state, getattr(ctx, "backend", None)) if deferred else self.latest
        if checkpoint:
            self._save(self.snapshot, CHECKPOINT_NAME, ctx)
        if images:
            self._images(self.snapshot, f"iter{total:05d}", ctx)
        if kept:
            self._save(self.snapshot, f"{STATES_DIR}/iter{total:05d}.h5", ctx)

    def after_engine(self, engine: Any, state: Any, ctx: Any) -> None:
        if self._out(ctx) is None:
            return
        self.snapshot = host_state(state, getattr(ctx, "backend", None))
        self._save(self.snapshot, CHECKPOINT_NAME, ctx)
        self._images(self.snapshot, f"engine{int(ctx.engine_num)}", ctx)
        if self.config.state_every:
            self._save(self.snapshot, f"{STATES_DIR}/engine{int(ctx.engine_num)}.h5", ctx)

    def after_run(self, state: Any, ctx: Any) -> None:
        if self._out(ctx) is None or state is None:
            return
        host = host_state(state, getattr(ctx, "backend", None))
        self._save(host, FINAL_NAME, ctx)
        self._images(host, "final", ctx)

    def on_run_error(self, error: BaseException, state: Any, ctx: Any) -> None:
        """Save the newest consistent state as the checkpoint: the last completed iteration
        when its arrays are still there (the error came before the engine moved on), else
        the newest written one or the runner's."""
        if self._out(ctx) is None:
            return
        best = self.snapshot
        if self.latest is not None and (best is None or
                                        int(self.latest.iteration.total_iter) > int(best.iteration.total_iter)):
            try:
                best = host_state(self.latest, getattr(ctx, "backend", None))
            except StateExpired:
                pass
        if state is not None:
            if best is None or int(state.iteration.total_iter) > int(best.iteration.total_iter):
                best = host_state(state, getattr(ctx, "backend", None))
        if best is not None:
            self._save(best, CHECKPOINT_NAME, ctx)
