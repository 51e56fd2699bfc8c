"""The jax backend: ``xp = jax.numpy``, compiled with ``jax.jit``, on CPU or GPU.

Only this module (and the factory in :mod:`phaser_std.backends`) imports jax.

Dtype policy. ``float32`` (the default) gives float32/complex64 arrays; ``float64`` gives
float64/complex128 and therefore turns on ``jax_enable_x64``. That switch is
**process-global** in jax: once any float64 jax backend exists, jax functions called
*without* an explicit dtype (``jnp.zeros(shape)``, ``jnp.arange(n) * 0.5``) return 64-bit
arrays in the whole process, for every backend. A float32 jax backend still converts every
array it is given with :meth:`JaxBackend.asarray` to float32/complex64 and its FFTs keep the
input precision, so kernels stay float32 as long as they create arrays with an explicit
``dtype=bk.real_dtype`` / ``bk.complex_dtype`` (which they must do anyway). The switch is never
turned off again by phaser, since arrays already created in 64 bits would then misbehave.

Arrays are immutable: :meth:`add_at` and :meth:`set_at` return new arrays (``x.at[i].add``),
so callers must always use the returned value.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from phaser_core.backend import BaseBackend


def enable_x64() -> None:
    """Turn on 64-bit floats in jax (process-global; see the module docstring)."""
    if not jax.config.read("jax_enable_x64"):
        jax.config.update("jax_enable_x64", True)


class JaxBackend(BaseBackend):
    """jax arrays on jax's default device; ``jit`` is :func:`jax.jit`."""

    name = "jax"
    xp = jnp

    def __init__(self, dtype: str = "float32"):
        super().__init__(dtype)
        if self.dtype == "float64":
            enable_x64()

    @property
    def device(self) -> Any:
        """The jax device arrays are placed on."""
        return jax.devices()[0]

    def asarray(self, x: Any, dtype: Any = None) -> Any:
        """Move ``x`` (numpy, jax or a Python scalar/list) onto the device. Floats and complex
        values follow the dtype policy unless ``dtype`` is given; integers keep their kind
        (int64 becomes int32 while x64 is off, as jax does)."""
        if self.dtype == "float64":
            enable_x64()  # in case something turned it off since this backend was made
        if not isinstance(x, jax.Array):
            x = np.asarray(x)
        if dtype is None:
            kind = np.dtype(x.dtype).kind
            dtype = {"f": self.real_dtype, "c": self.complex_dtype}.get(kind)
        if dtype is not None and np.dtype(dtype).itemsize == 8 and np.dtype(dtype).kind in "fiu" \
                and not jax.config.read("jax_enable_x64"):
            # jax would truncate with a warning; say which precision is really used
            dtype = {"f": np.float32, "i": np.int32, "u": np.uint32}[np.dtype(dtype).kind]
        elif dtype is not None and np.dtype(dtype) == np.complex128 \
                and not jax.config.read("jax_enable_x64"):
            dtype = np.complex64
        return jnp.asarray(x, dtype=dtype)

    def to_numpy(self, x: Any) -> np.ndarray:
        """A writable host copy of ``x`` (numpy arrays and scalars pass through ``np.asarray``)."""
        if isinstance(x, jax.Array):
            return np.array(x)
        return np.asarray(x)

    def add_at(self, target: Any, index: tuple, values: Any) -> Any:
        """``target[index] += values``, repeated indices accumulated. Returns a new array."""
        return target.at[index].add(values)

    def set_at(self, target: Any, index: tuple, values: Any) -> Any:
        """``target[index] = values``. Returns a new array."""
        return target.at[index].set(values)

    def jit(self, fn: Callable, **kwargs: Any) -> Callable:
        """:func:`jax.jit` with ``kwargs`` (``static_argnums``, ``static_argnames``,
        ``donate_argnums``, ...) passed through."""
        return jax.jit(fn, **kwargs)

    def value_and_grad(self, fn: Callable, **kwargs: Any) -> Callable:
        """:func:`jax.value_and_grad` (``has_aux``, ``argnums``, ...): automatic gradients.
        Backends without it (numpy, cupy) use the analytic adjoint instead."""
        return jax.value_and_grad(fn, **kwargs)

    def synchronize(self, x: Any = None) -> Any:
        """Block until ``x`` (any pytree of arrays) is computed; returns ``x``. With no
        argument, waits for all work jax has dispatched."""
        if x is None:
            for arr in jax.live_arrays():
                arr.block_until_ready()
            return None
        return jax.block_until_ready(x)
