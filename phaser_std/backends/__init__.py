"""Compute backends: numpy (reference), jax and cupy (imported only when used).

Each factory takes the dtype name (``"float32"`` default, ``"float64"``) and returns a
backend; jax and cupy are imported inside their factory, so a missing library only matters
when a plan asks for that backend, and then raises
:class:`~phaser_core.errors.BackendUnavailable` saying how to install it.
"""

from __future__ import annotations

from phaser_core.errors import BackendUnavailable


def _numpy(dtype: str = "float32"):
    """A run's numpy backend; glibc's malloc thresholds are fixed first, so that the group
    steps' freed temporaries are reused (:func:`.host_memory.retain_freed_memory`). Helpers
    that build a :class:`NumpyBackend` for a small host computation inside a jax or cupy
    run leave malloc alone."""
    from .host_memory import retain_freed_memory
    from .numpy_backend import NumpyBackend

    retain_freed_memory()
    return NumpyBackend(dtype)


def _jax(dtype: str = "float32"):
    try:
        from .jax_backend import JaxBackend
    except ImportError as exc:
        raise BackendUnavailable(
            f"the jax backend needs jax, which cannot be imported ({exc}). "
            'Install it with: pip install "phaser-ptycho[jax]"'
        ) from exc
    return JaxBackend(dtype)


def _cupy(dtype: str = "float32"):
    try:
        import cupy  # noqa: F401
    except ImportError as exc:
        raise BackendUnavailable(
            f"the cupy backend needs cupy, which cannot be imported ({exc}). "
            'Install it with: pip install "phaser-ptycho[cupy]" (and a CUDA toolkit matching your GPU)'
        ) from exc
    from .cupy_backend import CupyBackend, gpu_count

    try:
        n_gpus = gpu_count()
    except Exception as exc:  # cupy raises CUDARuntimeError without a driver
        raise BackendUnavailable(
            f"the cupy backend needs a CUDA GPU, but CUDA reports none ({type(exc).__name__}: {exc}). "
            "Use backend: jax or numpy on this machine."
        ) from exc
    if n_gpus < 1:
        raise BackendUnavailable(
            "the cupy backend needs a CUDA GPU, but none is present. Use backend: jax or numpy on this machine."
        )
    return CupyBackend(dtype)


def _auto(dtype: str = "float32"):
    """The fastest backend this machine has: jax on a GPU, else cupy on a CUDA GPU, else
    jax on the CPU (its compiled steps, on every core: 3-6x numpy's speed), else numpy.
    The published phaser's automatic choice is jax, then cupy, then numpy; a GPU comes first
    here, so a CPU-only jax beside a working cupy does not leave the GPU idle."""
    try:
        jax_backend = _jax(dtype)
    except BackendUnavailable:
        jax_backend = None
    if jax_backend is not None and jax_backend.device.platform != "cpu":
        return jax_backend
    try:
        return _cupy(dtype)
    except BackendUnavailable:
        pass
    return jax_backend if jax_backend is not None else _numpy(dtype)


def register_all(register) -> None:
    register("auto", _auto, doc="the fastest installed: jax on a GPU, else cupy on a CUDA GPU, else jax, "
                                "else numpy (the plan's default).")
    register("numpy", _numpy, doc="CPU arrays with numpy (the reference backend).")
    register("jax", _jax, doc="jax arrays on CPU or GPU, compiled with jax.jit (extra: [jax]).")
    register("cupy", _cupy, doc="cupy arrays on a CUDA GPU (extra: [cupy]).")
