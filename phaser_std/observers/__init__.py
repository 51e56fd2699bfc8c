"""Observers: the progress display, the plain-text logger and the output writer.

Observers are the only way state leaves a running engine; each is registered like a
third-party one and built as ``cls(config)``. The runner adds ``output`` (when the run has
an output folder), ``logger`` and ``progress`` (unless quiet) to the plan's observers.
"""

from __future__ import annotations


def register_all(register) -> None:
    from .logger import LoggerConfig, LogObserver
    from .output import OutputConfig, OutputObserver
    from .progress import ProgressConfig, ProgressObserver

    register("progress", ProgressObserver, config=ProgressConfig,
             doc="Progress display: engine, iteration, loss, s/iter, ETA (rich bar, or plain lines off a terminal).")
    register("logger", LogObserver, config=LoggerConfig, aliases=("log",),
             doc="Plain-text log in DIR/log.txt (and stderr off a terminal).")
    register("output", OutputObserver, config=OutputConfig,
             doc="Writes DIR/checkpoint.h5, DIR/final.h5 and DIR/images/*.tif|png.")
