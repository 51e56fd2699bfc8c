"""phaser core: hook specs, the plugin registry, plans, the reconstruction state, the CLI.

The core imports nothing from the bundled plugin ``phaser_std``; it finds it, like any
third-party plugin, through the ``phaser.plugins`` entry point.
"""

from .backend import Backend, BaseBackend
from .config import (
    ComponentSpec,
    ConstraintSpec,
    ConventionalSolverSpec,
    CostSpec,
    EngineSpec,
    Flag,
    GradientSolverSpec,
    LoaderSpec,
    NoiseModelSpec,
    ObjectInitSpec,
    ObserverSpec,
    PositionSolverSpec,
    PreprocessorSpec,
    ProbeInitSpec,
    RegularizerSpec,
    ScanInitSpec,
    ScheduleSpec,
    Schedulable,
    SolverSpec,
    param,
)
from .context import InitContext, LoadContext, RunContext
from .data import RawData
from .errors import (
    BackendUnavailable,
    DataError,
    DuplicateComponentError,
    PhaserError,
    PlanError,
    PluginError,
    PluginLoadError,
    StateFileError,
    UnknownComponentError,
)
from .hookspecs import hookimpl, hookspec
from .observer import Observer
from .registry import Component, Registry, get_registry
from .state import DeferredState, IterationCounters, ObjectState, ProbeState, Progress, ReconsState, StateExpired

__version__ = "0.1.0"

__all__ = [name for name in dir() if not name.startswith("_")]
