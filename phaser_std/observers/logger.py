"""The plain-text logger: timestamped lines in ``DIR/log.txt`` (and on stderr off a terminal).

One line per event: run start/end, engine start/end, each iteration's loss and seconds per
iteration, and errors or interruptions. The file is opened in append mode, so a resumed
run continues the same log, and flushed after each line, so a killed run keeps its log.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import IO, Any

import attrs

from phaser_core.config import param
from phaser_core.observer import Observer


def _check_echo(instance: Any, attribute: Any, value: Any) -> None:
    if value not in ("auto", "always", "never"):
        raise ValueError(f"logger.echo must be 'auto', 'always' or 'never', got {value!r}", attribute)


@attrs.frozen
class LoggerConfig:
    """Where the log goes."""

    filename: str = param("log.txt", doc="log file name inside the output folder")
    echo: str = param("auto", validator=_check_echo,
                      doc="copy lines to stderr: 'auto' (when stderr is not a terminal and no "
                          "progress observer prints plain lines), 'always' or 'never'")


def timestamp() -> str:
    """UTC time as ``2026-01-31T12:00:00.123Z``."""
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1000):03d}Z"


def engine_label(engine: Any, ctx: Any) -> str:
    """``engine 1 (lsqml)``: the engine index and its plan name when known."""
    num = int(getattr(ctx, "engine_num", 0))
    name = None
    plan = getattr(ctx, "plan", None)
    try:
        name = plan.engines[num].type
    except (AttributeError, IndexError, TypeError):
        name = type(engine).__name__ if engine is not None else None
    return f"engine {num} ({name})" if name else f"engine {num}"


def format_iteration(state: Any, metrics: dict) -> str:
    """``iter 3/10 (total 13) loss 1.234e-01 0.052 s/iter``."""
    it = state.iteration
    niter = metrics.get("niter")
    of = f"/{int(niter)}" if niter is not None else ""
    loss = metrics.get("loss")
    loss_s = f"{float(loss):.6e}" if loss is not None else "n/a"
    t = metrics.get("time_s")
    t_s = f" {float(t):.3g} s/iter" if t is not None else ""
    return f"iter {int(it.engine_iter)}{of} (total {int(it.total_iter)}) loss {loss_s}{t_s}"


class LogObserver(Observer):
    """Writes timestamped plain-text lines to ``DIR/log.txt`` and, off a terminal, stderr."""

    def __init__(self, config: LoggerConfig | None = None, *, stream: IO[str] | None = None):
        self.config = config if config is not None else LoggerConfig()
        self._stream = stream
        self._file: IO[str] | None = None
        self._echo = False
        self._t_engine = 0.0

    # -- output -----------------------------------------------------------------------

    def _echo_wanted(self, ctx: Any) -> bool:
        if self.config.echo != "auto":
            return self.config.echo == "always"
        stream = self._stream or sys.stderr
        is_tty = bool(getattr(stream, "isatty", lambda: False)())
        others_print = any(getattr(o, "prints_plain_lines", False) for o in getattr(ctx, "observers", []) or [])
        return not is_tty and not others_print

    def write(self, message: str) -> None:
        line = f"{timestamp()} {message}"
        if self._file is not None:
            self._file.write(line + "\n")
            self._file.flush()
        if self._echo:
            stream = self._stream or sys.stderr
            print(line, file=stream, flush=True)

    def _close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    # -- lifecycle --------------------------------------------------------------------

    def before_run(self, plan: Any, ctx: Any) -> None:
        self._close()
        out = getattr(ctx, "out_dir", None)
        if out is not None:
            Path(out).mkdir(parents=True, exist_ok=True)
            self._file = open(Path(out) / self.config.filename, "a", encoding="utf-8")
        self._echo = self._echo_wanted(ctx)
        name = getattr(plan, "name", "phaser")
        backend = getattr(getattr(ctx, "backend", None), "name", "?")
        self.write(f"run {name!r} started: backend {backend}, dtype {getattr(plan, 'dtype', '?')}, "
                   f"seed {getattr(plan, 'seed', '?')}, {len(getattr(plan, 'engines', ()))} engine(s)")

    def before_engine(self, engine: Any, state: Any, ctx: Any) -> None:
        self._t_engine = time.perf_counter()
        it = state.iteration
        where = f" at iteration {int(it.engine_iter)}" if int(it.engine_iter) else ""
        self.write(f"{engine_label(engine, ctx)} start{where} (total {int(it.total_iter)})")

    def after_iteration(self, state: Any, metrics: dict, ctx: Any) -> None:
        self.write(f"{engine_label(None, ctx)} {format_iteration(state, metrics)}")

    def on_note(self, text: str, ctx: Any) -> None:
        self.write(f"{engine_label(None, ctx)} {text}")

    def after_engine(self, engine: Any, state: Any, ctx: Any) -> None:
        dt = time.perf_counter() - self._t_engine
        loss = state.progress.loss[-1] if state.progress.loss else None
        loss_s = f", final loss {loss:.6e}" if loss is not None else ""
        self.write(f"{engine_label(engine, ctx)} done after {dt:.1f} s (total {int(state.iteration.total_iter)} "
                   f"iterations{loss_s})")

    def after_run(self, state: Any, ctx: Any) -> None:
        total = int(state.iteration.total_iter) if state is not None else 0
        self.write(f"run finished after {total} iterations")
        self._close()

    def on_run_error(self, error: BaseException, state: Any, ctx: Any) -> None:
        try:
            if isinstance(error, KeyboardInterrupt) or type(error).__name__ == "RunInterrupted":
                self.write(f"run interrupted: {error}" if str(error) else "run interrupted")
            else:
                culprit = _culprit(ctx, error)
                self.write(f"run failed: {type(error).__name__}: {error}" + (f" (raised in {culprit})" if culprit else ""))
        finally:
            self._close()


def _culprit(ctx: Any, error: BaseException) -> str | None:
    """Who raised ``error`` when it was not phaser (:meth:`phaser_core.registry.Registry.culprit`);
    None when the run's registry cannot tell (a plugin's own registry, a test's fake)."""
    try:
        said = ctx.registry.culprit(error)
    except Exception:  # noqa: BLE001 - the log line matters more than the attribution
        return None
    return said if isinstance(said, str) else None
