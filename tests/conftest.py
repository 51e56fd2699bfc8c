"""Shared fixtures.

``backend_name`` runs a test once per backend (numpy, jax, cupy), skipping the ones that
are not usable here with the reason (not installed, no GPU). ``backend`` is that backend
with the default float32 policy; ``make_backend(dtype)`` builds it with another policy.
A jax float64 backend turns on ``jax_enable_x64`` for the whole process; every test
restores the previous setting after it, so other tests see jax's default.
"""

from __future__ import annotations

import os
import sys

# jax's CPU lanes (phaser_std.backends.jax_backend): two, whatever the machine's cores, so
# the lanes path is tested everywhere (set before jax starts)
os.environ.setdefault("PHASER_JAX_CPU_DEVICES", "2")

import pytest

from phaser_core.errors import BackendUnavailable
from phaser_core.registry import get_registry

BACKEND_NAMES = ("numpy", "jax", "cupy")


def build_backend(name: str, dtype: str = "float32"):
    """The registered backend ``name`` with ``dtype``, or skip the test saying why not."""
    try:
        return get_registry().get("backend", name).obj(dtype)
    except BackendUnavailable as exc:
        if name == "cupy":
            pytest.skip(f"cupy needs a CUDA GPU ({exc})")
        pytest.skip(f"backend {name} unavailable: {exc}")


def _x64_flag():
    if "jax" not in sys.modules:
        return None
    return bool(sys.modules["jax"].config.read("jax_enable_x64"))


@pytest.fixture(params=BACKEND_NAMES)
def backend_name(request) -> str:
    """Each backend name in turn (skipped where unavailable)."""
    build_backend(request.param)  # skip early with the reason
    return request.param


@pytest.fixture(autouse=True)
def _restore_jax_x64():
    """Every test leaves ``jax_enable_x64`` as it found it: a jax float64 backend turns it on
    for the whole process, and a later test would see int64 and float64 arrays where jax
    gives 32-bit ones by default."""
    before = _x64_flag()
    yield
    after = _x64_flag()
    if after is not None and after != bool(before):
        sys.modules["jax"].config.update("jax_enable_x64", bool(before))


@pytest.fixture
def make_backend(backend_name):
    """``make_backend(dtype="float32")``: the parametrized backend with that dtype policy."""
    return lambda dtype="float32": build_backend(backend_name, dtype)


@pytest.fixture
def backend(make_backend):
    """The parametrized backend with the default float32 policy."""
    return make_backend("float32")


@pytest.fixture
def numpy_backend():
    """The reference numpy backend (float64, for reference computations)."""
    return build_backend("numpy", "float64")
