"""Hook implementations: the module named by this distribution's ``phaser.plugins`` entry point."""

from __future__ import annotations

from phaser_core import hookimpl


@hookimpl
def register_loaders(register):
    from .loader import ExampleLabRawConfig, load_example_lab_raw

    register("example_lab_raw", load_example_lab_raw, config=ExampleLabRawConfig)
