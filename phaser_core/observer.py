"""The observer protocol: lifecycle calls through which state leaves an engine."""

from __future__ import annotations

from typing import Any


class Observer:
    """Base class with do-nothing lifecycle methods; override the ones you need.

    Call order for a plan with engines E0, E1: ``before_run``, ``before_engine(E0)``,
    ``after_iteration`` × niter, ``after_engine(E0)``, ``before_engine(E1)``, ...,
    ``after_run``; ``on_run_error`` replaces ``after_run`` when the run fails or is
    interrupted. ``metrics`` holds at least ``loss`` (noise-model NLL per pattern),
    ``time_s`` (seconds this iteration), ``engine_iter``, ``niter``, ``total_iter``.
    ``on_note(text, ctx)`` receives what an engine decided for the user (:func:`announce`).

    The ``state`` of ``after_iteration`` is a :class:`~phaser_core.state.DeferredState`: its
    counters, progress and wavelength are there at once; its probe, object, positions, tilt
    and ``extra`` are copied from the engine when first read, which must happen during the
    call (later reads raise :class:`~phaser_core.state.StateExpired`). An observer that
    keeps a state keeps ``state.take()``. Reading no arrays costs nothing, which matters on
    a GPU, where the copy can take as long as the iteration.
    """

    def before_run(self, plan: Any, ctx: Any) -> None: ...
    def after_run(self, state: Any, ctx: Any) -> None: ...
    def on_run_error(self, error: BaseException, state: Any, ctx: Any) -> None: ...
    def before_engine(self, engine: Any, state: Any, ctx: Any) -> None: ...
    def after_engine(self, engine: Any, state: Any, ctx: Any) -> None: ...
    def after_iteration(self, state: Any, metrics: dict, ctx: Any) -> None: ...
    def on_note(self, text: str, ctx: Any) -> None: ...


def announce(ctx: Any, text: str) -> None:
    """Tell every observer that has ``on_note`` (the log, the console) something a run
    decided for the user: a default it resolved from the data, a grid it moved to."""
    for obs in getattr(ctx, "observers", ()) or ():
        method = getattr(obs, "on_note", None)
        if method is not None:
            method(text, ctx)


def notify(observers: list, method: str, *args: Any) -> None:
    """Call ``method`` on every observer in order."""
    for obs in observers:
        getattr(obs, method)(*args)
