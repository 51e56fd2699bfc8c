"""Fake components for plan, CLI and registry tests.

The real engines and solvers are written elsewhere; these stand-ins have config classes
shaped like the real ones (an engine with ``niter: int``, ``solver: SolverSpec``,
``noise_model: NoiseModelSpec``, a ``Flag`` and a ``Schedulable``) so plan structuring is
tested against the same kinds of fields. This module is also a plugin (its ``@hookimpl``
functions) so it can be passed to ``Registry.build(extra_plugins=...)``.
"""

from __future__ import annotations

import sys
from typing import Literal

import attrs

from phaser_core import hookimpl
from phaser_core.config import Flag, NoiseModelSpec, RegularizerSpec, Schedulable, SolverSpec, param
from phaser_core.registry import Owner, Registry

STD_OWNER = Owner("phaser_std", "phaser-ptycho", "0.1.0")


@attrs.frozen
class HDF5Config:
    path: str = param(doc="the data file")
    energy_eV: float | None = param(None, unit="eV", doc="beam energy")


@attrs.frozen
class FocusedConfig:
    conv_angle_mrad: float | None = param(None, unit="mrad", doc="convergence semi-angle")
    defocus_A: float = param(0.0, unit="Å", doc="defocus, positive = underfocus")


@attrs.frozen
class AmplitudeConfig:
    eps: float = param(1e-2, doc="added under the square roots")


@attrs.frozen
class EpieConfig:
    beta_object: Schedulable = param(1.0, doc="object step size")
    beta_probe: Schedulable = param(1.0, doc="probe step size")


@attrs.frozen
class LsqmlConfig:
    beta_object: float = param(0.9, doc="object step size")
    beta_probe: float = param(0.9, doc="probe step size")


@attrs.frozen
class CosineConfig:
    start: float = param(1.0, doc="value at iteration 0")
    end: float = param(0.1, doc="value at the last iteration")
    niter: int = param(100, doc="iterations over which it decays")


@attrs.frozen
class LimitSupportConfig:
    max_angle_mrad: float = param(30.0, unit="mrad", doc="largest angle kept in the probe")


@attrs.frozen
class GroupingConfig:
    size: int = param(64, doc="positions per group")
    kind: Literal["sparse", "compact"] = param("sparse", doc="how groups are drawn")


@attrs.frozen
class ConventionalConfig:
    niter: int = param(100, doc="iterations")
    grouping: GroupingConfig = param(GroupingConfig(), doc="grouping of positions")
    probe_modes: int = param(1, doc="incoherent probe modes")
    noise_model: NoiseModelSpec = param(NoiseModelSpec("amplitude"), doc="noise model")
    solver: SolverSpec = param(SolverSpec("lsqml"), doc="update rule")
    position_solver: SolverSpec | None = param(None, doc="position correction")
    iter_constraints: tuple[RegularizerSpec, ...] = param((), doc="constraints applied every iteration")
    update_probe: Flag = param(Flag(), doc="when the probe is updated")


class _Thing:
    """A fake component (never run in these tests)."""

    def __init__(self, config=None, *args, **kwargs):
        self.config = config


def _fn(*args, **kwargs):
    """A fake function component."""


@hookimpl
def register_backends(register):
    register("numpy", _fn)
    register("other", _fn)  # a second backend, for overrides


@hookimpl
def register_loaders(register):
    register("hdf5", _fn, config=HDF5Config)


@hookimpl
def register_initializers(register):
    register("focused", _fn, config=FocusedConfig, target="probe")
    register("vacuum", _fn, target="object")
    register("from_data", _fn, target="scan")


@hookimpl
def register_noise_models(register):
    register("amplitude", _Thing, config=AmplitudeConfig)
    register("poisson", _Thing)


@hookimpl
def register_regularizers(register):
    register("limit_probe_support", _Thing, config=LimitSupportConfig, role="constraint")


@hookimpl
def register_solvers(register):
    register("epie", _Thing, config=EpieConfig, role="conventional")
    register("lsqml", _Thing, config=LsqmlConfig, role="conventional")


@hookimpl
def register_schedules(register):
    register("cosine", _fn, config=CosineConfig)


@hookimpl
def register_engines(register):
    register("conventional", _Thing, config=ConventionalConfig)


HOOKS = (register_backends, register_loaders, register_initializers, register_noise_models,
         register_regularizers, register_solvers, register_schedules, register_engines)


def make_registry(owner: Owner = STD_OWNER) -> Registry:
    """A registry holding only the fakes, owned as if by ``phaser-ptycho 0.1.0``."""
    registry = Registry()
    for hook in HOOKS:
        hook(register=registry._register_callback(hook.__name__, owner))
    return registry


def install() -> Registry:
    """Make the fakes the process-wide registry (for CLI runs in a subprocess)."""
    from phaser_core.registry import set_registry

    registry = make_registry()
    set_registry(registry)
    return registry


MINIMAL_PLAN = """\
file_type: phaser_plan
version: 1
raw_data: {type: hdf5, path: data.h5}
engines:
  - type: conventional
    niter: 10
"""


if __name__ == "__main__":  # python plan_fakes.py ARGS...: the phaser CLI on the fakes
    install()
    from phaser_core.cli import main

    sys.exit(main(sys.argv[1:]))
