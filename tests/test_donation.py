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


def _record_programs(monkeypatch, name: str) -> list:
    """XLA's memory analysis of every call of the compiled programs named ``name``, in call
    order."""
    from phaser_std.backends.jax_backend import JaxBackend

    seen: list = []
    original = JaxBackend.jit

    def jit(self, fn, **kwargs):
        compiled = original(self, fn, **kwargs)
        if getattr(fn, "__name__", "") != name:
            return compiled

        def call(*args, **kw):
            seen.append(compiled.lower(*args, **kw).compile().memory_analysis())
            return compiled(*args, **kw)

        return call

    monkeypatch.setattr(JaxBackend, "jit", jit)
    return seen


@pytest.fixture
def iteration_memory(monkeypatch):
    """XLA's memory analysis of every compiled ``iteration_step`` program, in call order."""
    return _record_programs(monkeypatch, "iteration_step")


@pytest.fixture
def constraint_memory(monkeypatch):
    """The same for the programs applying the constraints after each iteration."""
    return _record_programs(monkeypatch, "iteration_constraints")


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


@pytest.mark.parametrize("engine", [
    {"type": "conventional", "solver": {"type": "epie"}},
    {"type": "gradient"},
])
def test_iteration_constraints_write_the_object_into_its_own_buffer(data, constraint_memory, engine):
    """The constraints after each iteration (here an amplitude clamp and the probe's
    support) take the object and probe buffers too: no second object at the end of an
    iteration."""
    constraints = [{"type": "clamp_object_amplitude", "max_amplitude": 1.0},
                   {"type": "limit_probe_support", "max_angle_mrad": 30}]
    state = run(data, [{**engine, "niter": 1, "grouping": {"size": 16}, "iter_constraints": constraints}],
                backend="jax")
    assert constraint_memory, "no iteration-constraint program was compiled"
    obj_bytes = np.asarray(state.object.data).astype(np.complex64).nbytes
    probe_bytes = np.asarray(state.probe.data).astype(np.complex64).nbytes
    assert constraint_memory[0].alias_size_in_bytes >= obj_bytes + probe_bytes
