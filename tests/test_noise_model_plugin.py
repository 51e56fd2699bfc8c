"""A noise model written from docs/hooks.md alone runs in every engine, mask included.

The plan names it as a local component (``module:attr``, with its attrs ``Config``), the
way a lab tries one before packaging it as a plugin."""

from __future__ import annotations

import attrs
import h5py
import numpy as np
import pytest
from recon import make_dataset, run


class PlainGaussian:
    """Gaussian noise, written against the documented interface only."""

    Config = attrs.make_class("Config", {"sigma": attrs.field(default=2.0)}, frozen=True)

    def __init__(self, config):
        self.config = config

    def loss(self, bk, model_I, measured_I):
        d = model_I - measured_I
        return bk.xp.sum(d * d, axis=(-2, -1)) / (2 * self.config.sigma ** 2)

    def grad_intensity(self, bk, model_I, measured_I):
        return (model_I - measured_I) / self.config.sigma ** 2

    def wave_update(self, bk, far_wave, model_I, measured_I):
        factor = (measured_I - model_I) / (2 * model_I + 1e-3)
        return factor[:, None] * far_wave


NOISE = {"type": "test_noise_model_plugin:PlainGaussian", "sigma": 2.0}


@pytest.fixture(scope="module")
def masked_data(tmp_path_factory):
    path = make_dataset(tmp_path_factory.mktemp("plugin_noise") / "d.h5", scan={"shape": [6, 6], "step_A": 0.6},
                        dose=1e5)
    with h5py.File(path, "a") as f:
        mask = np.ones((64, 64), bool)
        mask[3, 4] = False
        f["mask"] = mask
        p = f["patterns"][...]
        p[..., 3, 4] = 1e6  # under the mask: must not matter
        f["patterns"][...] = p
    return path


@pytest.mark.parametrize("engine, backend", [("conventional", "numpy"), ("gradient", "numpy"),
                                             ("conventional", "jax"), ("gradient", "jax")])
def test_a_documented_noise_model_runs_in_every_engine(masked_data, engine, backend):
    if backend == "jax":
        pytest.importorskip("jax")
    block = {"type": engine, "niter": 2, "grouping": {"size": 12}, "noise_model": NOISE}
    state = run(masked_data, [block], backend=backend)
    loss = np.asarray(state.progress.loss)
    assert np.isfinite(loss).all() and loss[-1] < 1e6  # the hot pixel (1e6 e⁻ each) is left out


def test_a_local_component_next_to_the_plan_is_found_without_pythonpath(tmp_path, monkeypatch):
    """The console script's sys.path holds neither the plan's folder nor the working
    folder, so a lab's module beside its plan failed to import ("No module named ...")."""
    import sys

    from phaser_core.errors import PlanError
    from phaser_core.plan import load_plan

    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".", str(tmp_path))])
    monkeypatch.delitem(sys.modules, "lab_noise_beside_the_plan", raising=False)
    (tmp_path / "lab").mkdir()
    (tmp_path / "lab" / "lab_noise_beside_the_plan.py").write_text(
        "from test_noise_model_plugin import PlainGaussian as Plain\n")
    plan = tmp_path / "lab" / "plan.yaml"
    plan.write_text("file_type: phaser_plan\nversion: 1\nraw_data: {type: hdf5, path: d.h5}\n"
                    "engines:\n  - {type: conventional, noise_model: {type: 'lab_noise_beside_the_plan:Plain'}}\n")
    monkeypatch.chdir(tmp_path)  # elsewhere: the plan's folder is what counts
    loaded = load_plan(plan)
    assert loaded.engines[0].config.noise_model.type == "lab_noise_beside_the_plan:Plain"
    # a run's plan.yaml (what --resume reads) looks in its original plan's folder (its header)
    from phaser_core.files import PLAN_DIR_HEADER

    monkeypatch.delitem(sys.modules, "lab_noise_beside_the_plan", raising=False)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if not p.startswith(str(tmp_path))])  # the first import's
    (tmp_path / "out").mkdir()
    resolved = tmp_path / "out" / "plan.yaml"
    resolved.write_text(f"# {PLAN_DIR_HEADER}{tmp_path / 'lab'}\n" + plan.read_text())
    assert load_plan(resolved).engines[0].config.noise_model.type == "lab_noise_beside_the_plan:Plain"
    # a module in neither folder still fails as a plan error naming it
    plan.write_text(plan.read_text().replace("lab_noise_beside_the_plan", "no_such_lab_module"))
    with pytest.raises(PlanError, match="cannot import local noise model 'no_such_lab_module:Plain'"):
        load_plan(plan)


class CostOnly:
    """Half a cost regularizer (``cost`` without ``weight``; no ``apply``), put where a
    constraint or a noise model goes, or among the gradient engine's costs."""

    Config = attrs.make_class("Config", {"weight_": attrs.field(default=1.0)}, frozen=True)

    def __init__(self, config):
        self.config = config

    def cost(self, bk, probe, obj, info, weight=1.0):
        return weight * bk.xp.sum(bk.xp.abs(obj) ** 2)


@pytest.mark.parametrize("engine_type, where, key, message", [
    ("conventional", "iter_constraints", "iter_constraints[0].type",
     "has no apply method: a constraint regularizer needs apply"),
    ("conventional", "noise_model", "noise_model.type",
     "has no loss, grad_intensity, wave_update methods: a noise model needs"),
    # a cost without the schedule the gradient engine asks it for (`weight(iteration)`)
    ("gradient", "regularizers", "regularizers[0].type", "has no weight method: a cost regularizer needs weight"),
])
def test_a_local_component_without_the_methods_its_place_needs_fails_validation(engine_type, where, key, message):
    """It passed `phaser validate` and the run died inside the engine (AttributeError)."""
    from phaser_core.errors import PlanError
    from phaser_core.plan import load_plan
    from phaser_core.plan_errors import format_path

    spec = {"type": "test_noise_model_plugin:CostOnly"}
    engine = {"type": engine_type, where: spec if where == "noise_model" else [spec]}
    with pytest.raises(PlanError) as info:
        load_plan({"file_type": "phaser_plan", "version": 1, "raw_data": {"type": "hdf5", "path": "d.h5"},
                   "engines": [engine]})
    (err,) = info.value.errors
    assert format_path(err.path) == f"engines[0].{key}" and message in err.message
