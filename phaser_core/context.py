"""What phaser passes to plugin code besides its own config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs

from .data import RawData


@attrs.frozen(kw_only=True)
class LoadContext:
    """Given to loaders and preprocessing steps.

    ``plan_dir`` resolves relative paths in the plan; ``seed`` feeds named random streams.
    """

    plan_dir: Path = Path(".")
    seed: int = 0
    dtype: str = "float32"

    def resolve(self, path: str | Path) -> Path:
        p = Path(path).expanduser()
        return p if p.is_absolute() else (self.plan_dir / p)


@attrs.frozen(kw_only=True)
class InitContext:
    """Given to initialisers: the loaded data and what has been initialised so far."""

    data: RawData
    seed: int = 0
    dtype: str = "float32"
    plan_dir: Path = Path(".")
    #: number of object slices and their thicknesses [Å], from the plan's ``slices``
    n_slices: int = 1
    thicknesses_A: Any = None
    probe: Any = None  # ProbeState, once initialised
    scan_A: Any = None  # (N, 2) [Å], once initialised
    wavelength_A: float | None = None
    #: what an initialiser found or chose that the user should know (a default taken from
    #: the data, the data contradicting the plan: "warning: ..."): appended to, shown in the
    #: run's log and console before the first engine
    notes: list = attrs.field(factory=list)


@attrs.define(kw_only=True)
class RunContext:
    """Given to engines: backend, registry, observers, seed and where outputs go."""

    backend: Any
    registry: Any
    observers: list = attrs.field(factory=list)
    seed: int = 0
    out_dir: Path | None = None
    engine_num: int = 0
    plan: Any = None
    #: set by a signal handler; engines stop after the current iteration when it is true
    stop_requested: bool = False
