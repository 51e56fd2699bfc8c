"""The bundled plugin: every built-in component, registered like any third-party one.

Each hook delegates to the subpackage that owns that kind, so the registration of a
component sits next to its code.
"""

from __future__ import annotations

from phaser_core import hookimpl


@hookimpl
def register_backends(register):
    from phaser_std.backends import register_all

    register_all(register)


@hookimpl
def register_loaders(register):
    from phaser_std.data.loaders import register_all

    register_all(register)


@hookimpl
def register_preprocessors(register):
    from phaser_std.data.preprocess import register_all

    register_all(register)


@hookimpl
def register_initializers(register):
    from phaser_std.physics.initializers import register_all

    register_all(register)


@hookimpl
def register_noise_models(register):
    from phaser_std.engines.noise_models import register_all

    register_all(register)


@hookimpl
def register_regularizers(register):
    from phaser_std.engines.regularizers import register_all

    register_all(register)


@hookimpl
def register_solvers(register):
    from phaser_std.engines.solvers import register_all

    register_all(register)


@hookimpl
def register_schedules(register):
    from phaser_std.engines.schedules import register_all

    register_all(register)


@hookimpl
def register_engines(register):
    from phaser_std.engines import register_all

    register_all(register)


@hookimpl
def register_observers(register):
    from phaser_std.observers import register_all

    register_all(register)


@hookimpl
def register_commands(cli):
    from phaser_std.commands import register_all

    register_all(cli)
