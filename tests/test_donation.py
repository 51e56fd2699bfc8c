"""The engines' compiled iterations update the object in place (jax).

The object, the probe and the gradient engine's solver states are donated to the iteration
program, so XLA writes the new ones into the old buffers: a large multislice object is not
held twice (the test checks the object-sized share: the object, and adam's moments) (measured on the paper's 80x80 x 128² x 20-slice case: the gradient engine's
peak 1659 -> 1400 MiB by XLA's buffer assignment; benchmarks/NOTES.md, session 4).
"""

from __future__ import annotations

import numpy as np
import pytest
from recon import make_dataset, run

jax = pytest.importorskip("jax", reason="donation is a jax feature")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("donation") / "data.h5", scan={"shape": [8, 8]})


@pytest.fixture
def iteration_memory(monkeypatch):
    """XLA's memory analysis of every compiled ``iteration_step`` program, in call order."""
    from phaser_std.backends.jax_backend import JaxBackend

    seen: list = []
    original = JaxBackend.jit

    def jit(self, fn, **kwargs):
        compiled = original(self, fn, **kwargs)
        if getattr(fn, "__name__", "") != "iteration_step":
            return compiled

        def call(*args, **kw):
            seen.append(compiled.lower(*args, **kw).compile().memory_analysis())
            return compiled(*args, **kw)

        return call

    monkeypatch.setattr(JaxBackend, "jit", jit)
    return seen


@pytest.mark.parametrize("engine,object_copies", [
    ({"type": "conventional", "solver": {"type": "epie"}}, 1.0),
    ({"type": "conventional", "solver": {"type": "lsqml"}, "slices": {"n": 2, "total_thickness_A": 20.0}}, 1.0),
    # the object and adam's two moments (complex mean, real variance)
    ({"type": "gradient"}, 2.5),
])
def test_iteration_writes_the_object_into_its_own_buffers(data, iteration_memory, engine, object_copies):
    state = run(data, [{**engine, "niter": 1, "grouping": {"size": 16}}], backend="jax")
    assert iteration_memory, "no iteration program was compiled"
    obj_bytes = np.asarray(state.object.data).astype(np.complex64).nbytes
    aliased = iteration_memory[0].alias_size_in_bytes
    assert aliased >= object_copies * obj_bytes, (aliased, obj_bytes)
