"""Compute backends: numpy (reference), jax and cupy (imported only when used)."""

from __future__ import annotations


def _numpy(dtype: str = "float32"):
    from .numpy_backend import NumpyBackend

    return NumpyBackend(dtype)


def register_all(register) -> None:
    register("numpy", _numpy, doc="CPU arrays with numpy (the reference backend).")
