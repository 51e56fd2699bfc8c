"""Stopping ``phaser run`` with Ctrl-C (SIGINT) or SIGTERM before the run's own handler
(:func:`phaser_core.runner.run_plan`) is in place: a first signal is recorded, and the run
stops cleanly before its first iteration."""

from __future__ import annotations

import signal
import sys
import threading
from contextlib import contextmanager
from typing import Any, Iterator

#: the signals that stop a run cleanly: Ctrl-C, and what schedulers and `kill` send
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


#: within :func:`early_stop_requests`: whether a stop was asked for, and whether the run
#: has taken its own handler (plain values: a signal handler must not wait on a lock)
_EARLY = {"stop": False, "run": False}


def stop_requested_early() -> bool:
    """Whether a stop was asked for within :func:`early_stop_requests` (the run reads it
    when its own handler takes over, and then counts as started: :func:`run_started`)."""
    return _EARLY["stop"]


def run_started() -> None:
    """The run has its own handler: after it returns, a signal acts at once again."""
    _EARLY["run"] = True


def release() -> None:
    """The command will reach no run to read a stop (a dry run): one asked for so far acts
    now (KeyboardInterrupt), and a later signal acts at once."""
    if _EARLY["stop"] and not _EARLY["run"]:
        raise KeyboardInterrupt
    _EARLY["run"] = True


def stop_unheeded() -> bool:
    """A stop was asked for and no run read it (the command ended before its run: a plan
    error, a refused resume)."""
    return _EARLY["stop"] and not _EARLY["run"]


@contextmanager
def early_stop_requests() -> Iterator[None]:
    """Within the block (``phaser run`` from its start: imports, the plan and the data take
    seconds), a first SIGINT or SIGTERM only sets a flag that the run reads when it starts:
    it then stops before its first engine with a checkpoint of the initial state. Python's
    own handler raised KeyboardInterrupt wherever the import was, as a traceback, or inside
    a library callback that swallows it (jax's garbage-collection callback), and the run
    went on as if nothing had been pressed. A second signal still aborts at once."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    _EARLY.update(stop=False, run=False)  # (run_plan outside this block sets "run" too)

    def handler(signum: int, frame: Any) -> None:
        if _EARLY["stop"] or _EARLY["run"]:
            raise KeyboardInterrupt
        _EARLY["stop"] = True
        print("\nphaser: stopping before the first iteration, with a checkpoint (press Ctrl-C again to abort "
              "at once)", file=sys.stderr, flush=True)

    try:
        with stop_signals_handled_by(handler):
            yield
    finally:
        _EARLY.update(stop=False, run=False)


@contextmanager
def stop_signals_handled_by(handler: Any) -> Iterator[None]:
    """Within the block, :data:`STOP_SIGNALS` call ``handler(signum, frame)``; the previous
    handlers come back after it."""
    previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    for sig in STOP_SIGNALS:
        signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, prev in previous.items():
            signal.signal(sig, prev if prev is not None else signal.SIG_DFL)
