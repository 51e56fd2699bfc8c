"""Example third-party phaser plugin: the ``example_lab_raw`` raw-data loader."""

from .loader import ExampleLabRawConfig, load_example_lab_raw, write_example_lab_raw

__version__ = "0.1.0"
__all__ = ["ExampleLabRawConfig", "load_example_lab_raw", "write_example_lab_raw"]
