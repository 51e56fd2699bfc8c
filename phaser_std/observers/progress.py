"""The progress display: engine, iteration/niter, loss, seconds per iteration and ETA.

On a terminal it is a rich progress bar, one row per engine. Elsewhere (a pipe, a batch
job's log) it prints one plain line per iteration instead. It is an observer like any
other: engines never draw progress themselves.
"""

from __future__ import annotations

import sys
from typing import IO, Any

import attrs

from phaser_core.config import param
from phaser_core.observer import Observer

from .logger import engine_label


def _check_mode(instance: Any, attribute: Any, value: Any) -> None:
    if value not in ("auto", "rich", "plain"):
        raise ValueError(f"progress.mode must be 'auto', 'rich' or 'plain', got {value!r}", attribute)


@attrs.frozen
class ProgressConfig:
    """How progress is shown."""

    mode: str = param("auto", validator=_check_mode,
                      doc="'rich' (live bar), 'plain' (one line per iteration) or 'auto' (rich on a terminal)")
    smoothing: int = param(10, doc="seconds per iteration and ETA average the last N iterations (an engine's "
                           "first, which includes compilation, left out once there are others)")


def format_duration(seconds: float | None) -> str:
    """``1:02:03`` / ``2:03``, or ``-:--`` when unknown."""
    if seconds is None or not seconds == seconds or seconds == float("inf"):
        return "-:--"
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class ProgressObserver(Observer):
    """Shows the run's progress; falls back to plain lines off a terminal."""

    def __init__(self, config: ProgressConfig | None = None, *, stream: IO[str] | None = None):
        self.config = config if config is not None else ProgressConfig()
        self._stream = stream
        mode = self.config.mode
        if mode == "auto":
            s = stream or sys.stdout
            mode = "rich" if bool(getattr(s, "isatty", lambda: False)()) else "plain"
        self.mode = mode
        #: read by the logger: it need not echo iterations to stderr when this prints them
        self.prints_plain_lines = mode == "plain"
        self._progress: Any = None
        self._task: Any = None
        self._times: list[float] = []
        self._niter: int | None = None

    # -- numbers ----------------------------------------------------------------------

    def _s_per_iter(self) -> float | None:
        # an engine's first iteration includes its compilation (jax: 0.5-1 s on a CPU,
        # seconds on a GPU at the paper's sizes): left out once later ones are timed, so
        # that it does not inflate the rate and the ETA for the next `smoothing` iterations
        times = self._times[1:] if len(self._times) > 1 else self._times
        recent = times[-max(1, int(self.config.smoothing)):]
        return sum(recent) / len(recent) if recent else None

    def _eta(self, done: int) -> float | None:
        spi = self._s_per_iter()
        if spi is None or self._niter is None:
            return None
        return max(self._niter - done, 0) * spi

    # -- rich -------------------------------------------------------------------------

    def _start_rich(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        console = Console(file=self._stream) if self._stream is not None else Console()
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TextColumn("{task.fields[spi]} s/iter"),
            TextColumn("ETA {task.fields[eta]}"),
            console=console,
        )
        self._progress.start()

    def _stop_rich(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
            self._task = None

    def _print(self, message: str) -> None:
        if self._progress is not None:
            self._progress.console.print(message, highlight=False, markup=False)
        else:
            print(message, file=self._stream or sys.stdout, flush=True)

    # -- lifecycle --------------------------------------------------------------------

    def before_run(self, plan: Any, ctx: Any) -> None:
        if self.mode == "rich":
            self._start_rich()

    def before_engine(self, engine: Any, state: Any, ctx: Any) -> None:
        self._times = []
        niter = getattr(getattr(engine, "config", None), "niter", None)
        self._niter = int(niter) if niter is not None else None
        label = engine_label(engine, ctx)
        done = int(state.iteration.engine_iter)
        if self._progress is not None:
            self._task = self._progress.add_task(label, total=self._niter, completed=done,
                                                 loss="n/a", spi="-", eta="-:--")
        else:
            self._print(f"{label} start" + (f" at iteration {done}" if done else ""))

    def after_iteration(self, state: Any, metrics: dict, ctx: Any) -> None:
        if metrics.get("niter") is not None:
            self._niter = int(metrics["niter"])
        if metrics.get("time_s") is not None:
            self._times.append(float(metrics["time_s"]))
        done = int(state.iteration.engine_iter)
        loss = metrics.get("loss")
        loss_s = f"{float(loss):.4e}" if loss is not None else "n/a"
        spi = self._s_per_iter()
        spi_s = f"{spi:.3g}" if spi is not None else "-"
        eta_s = format_duration(self._eta(done))
        if self._progress is not None:
            if self._task is None:
                self._task = self._progress.add_task(engine_label(None, ctx), total=self._niter,
                                                     loss="n/a", spi="-", eta="-:--")
            self._progress.update(self._task, total=self._niter, completed=done, loss=loss_s, spi=spi_s, eta=eta_s)
        else:
            of = f"/{self._niter}" if self._niter is not None else ""
            self._print(f"{engine_label(None, ctx)} iter {done}{of} loss {loss_s} {spi_s} s/iter ETA {eta_s}")

    def on_note(self, text: str, ctx: Any) -> None:
        self._print(f"{engine_label(None, ctx)} {text}")

    def after_engine(self, engine: Any, state: Any, ctx: Any) -> None:
        if self._progress is None:
            self._print(f"{engine_label(engine, ctx)} done")

    def after_run(self, state: Any, ctx: Any) -> None:
        self._stop_rich()

    def on_run_error(self, error: BaseException, state: Any, ctx: Any) -> None:
        self._stop_rich()
