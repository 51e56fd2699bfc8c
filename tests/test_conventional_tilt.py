"""The conventional engines with a tilt per position and several slices: in each group's
step the untilted propagators are multiplied by each position's tilt ramp. A uniform tilt
per position runs as the same global tilt; a varying one is used (and numpy and jax agree)."""

from __future__ import annotations

import attrs
import numpy as np
import pytest
from recon import make_dataset, run

from phaser_core.statefile import save_state

ENGINE = {"type": "conventional", "niter": 2, "grouping": {"size": 12, "chunk": 12}}


@pytest.fixture(scope="module")
def start(tmp_path_factory):
    """Data and a 3-slice state after one iteration."""
    tmp = tmp_path_factory.mktemp("tilt")
    data = make_dataset(tmp / "d.h5", scan={"shape": [6, 6]})
    state = run(data, [{**ENGINE, "niter": 1, "slices": {"n": 3, "total_thickness_A": 12.0}}])
    return tmp, data, state


def _from(tmp, data, state, tilt, name, solver, backend):
    save_state(attrs.evolve(state, tilt_mrad=np.asarray(tilt, dtype=np.float64)), tmp / name)
    return run(data, [{**ENGINE, "solver": {"type": solver}}], backend=backend, init={"state": str(tmp / name)})


@pytest.mark.parametrize("solver", ["epie", "lsqml"])
def test_a_uniform_tilt_per_position_runs_as_the_global_tilt(start, solver, backend_name):
    if backend_name == "jax":
        pytest.importorskip("jax")
    tmp, data, state = start
    glob = _from(tmp, data, state, [2.0, -3.0], "glob.h5", solver, backend_name)
    per = _from(tmp, data, state, np.tile([2.0, -3.0], (36, 1)), "per.h5", solver, backend_name)
    np.testing.assert_allclose(per.object.data, glob.object.data, atol=2e-6)
    assert per.tilt_mrad.shape == (36, 2)  # the state keeps its own


@pytest.mark.parametrize("solver", ["epie", "lsqml"])
def test_a_varying_tilt_per_position_is_used_alike_on_numpy_and_jax(start, solver):
    pytest.importorskip("jax")
    tmp, data, state = start
    tilts = np.random.default_rng(0).normal(0.0, 5.0, size=(36, 2))
    mean = _from(tmp, data, state, tilts.mean(axis=0), "mean.h5", solver, "numpy")
    per = {b: _from(tmp, data, state, tilts, f"vary_{b}.h5", solver, b) for b in ("numpy", "jax")}
    assert np.abs(per["numpy"].object.data - mean.object.data).max() > 1e-3  # measured 6e-3 (LSQML), 2e-2
    np.testing.assert_allclose(per["jax"].object.data, per["numpy"].object.data, atol=2e-6)  # measured 2.4e-7


def test_the_planner_counts_whole_groups_and_their_propagators_for_a_tilt_per_position():
    from phaser_core.memory import DataShape
    from phaser_std.engines.conventional import ConventionalConfig
    from phaser_std.engines.memory import conventional_terms

    data = DataShape(n_patterns=1024, pattern_shape=(64, 64))
    shapes = {"probe": (1, 64, 64), "object": (8, 139, 139), "scan": (1024, 2)}
    config = ConventionalConfig()
    chunked = conventional_terms(config, data, {**shapes, "tilt": (2,)}, "float32", "jax")
    whole = conventional_terms(config, data, {**shapes, "tilt": (1024, 2)}, "float32", "jax")
    group = next(t for t in whole if t[0].startswith("group step"))
    assert "tilted propagators" in group[0] and "at a time" not in group[0] and "lanes" not in group[0]
    assert not any("tilted" in t[0] for t in chunked)
    assert sum(t[1] for t in whole if "lanes" not in t[0]) > sum(t[1] for t in chunked if "lanes" not in t[0])
