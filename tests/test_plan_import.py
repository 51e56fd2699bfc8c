"""``phaser import-plan``: plans of the published phaser (phaserEM 0.3) converted to ours.

The phaserEM plans here are written from PHASER_REFERENCE.md (section 2.12 and the
examples it lists), not copied from that package. Every converted plan must pass our real
``load_plan``; each sign, unit and counting conversion is checked by value.
"""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from ruamel.yaml import YAML

from phaser_core.config import Flag
from phaser_core.plan import load_plan
from phaser_std.plan_import import import_phaserem_plan, rebase_paths

#: PHASER_REFERENCE.md section 2.12, the full example plan
FULL_EXAMPLE = """
---
name: "si_multislice"
backend: jax
dtype: float32
raw_data:
  type: empad
  path: "data/Si_300kV.json"
post_load:
  - {type: crop_data, crop: [8, -8, 8, -8]}
  - {type: poisson, scale: 1.0e+7}
post_init:
  - drop_nans
  - diffraction_align
init:
  probe: {defocus: 150.0}
slices: {n: 10, total_thickness: 200}
engines:
  - type: conventional
    niter: 50
    grouping: 64
    noise_model: anscombe
    solver: {type: epie, beta_object: 0.5, beta_probe: 0.5}
    group_constraints: []
    iter_constraints: [{type: layers, sigma: 100, weight: 0.5}]
    save: {every: 10}
  - type: gradient
    sim_shape: [192, 192]
    probe_modes: 4
    niter: 300
    noise_model: {type: poisson, eps: 2.0}
    solvers:
      "object, probe": {type: adam, learning_rate: {type: piecewise, init: 1.0e-2, steps: {100: 3.0e-3}}}
      positions: {type: sgd, learning_rate: 0.5, momentum: 0.9}
    regularizers: [{type: obj_tv, cost: 1.0}]
    group_constraints: []
    iter_constraints: [{type: limit_probe_support, max_angle: 26}]
    update_positions: {after: 10}
    save_images: {every: 25}
    save_options: {images: [probe, object_phase_sum, object_mag_sum, scan], img_dtype: float}
"""


def _raw(path: str = "data/mos2.json") -> dict:
    return {"type": "empad", "path": path}


# The shipped examples as PHASER_REFERENCE.md describes them (section 2.12, "The shipped
# examples", and the "Typical hyperparameters" table), written out for these tests.
EXAMPLES = {
    "mos2_epie": {  # cupy, single slice, 4 modes
        "name": "mos2_epie", "backend": "cupy", "raw_data": _raw(),
        "init": {"probe": {"type": "focused", "conv_angle": 25.0, "defocus": -100.0}},
        "engines": [{"type": "conventional", "niter": 100, "grouping": 16, "probe_modes": 4,
                     "noise_model": "amplitude", "solver": {"type": "epie", "beta_object": 0.5, "beta_probe": 0.5},
                     "group_constraints": [], "iter_constraints": [],
                     "update_probe": {"after": 5}}],
    },
    "mos2_lsqml": {  # two LSQML engines, the second resized to 256², momentum position solver
        "name": "mos2_lsqml", "backend": "jax", "raw_data": _raw(),
        "engines": [
            {"type": "conventional", "niter": 50, "grouping": 64, "compact": True,
             "noise_model": {"type": "anscombe", "eps": 0.1},
             "solver": {"type": "lsqml", "beta_object": 1.0, "beta_probe": 1.0, "gamma": 1e-4,
                        "illum_reg_object": 1e-2, "illum_reg_probe": 1e-2, "stochastic": True},
             "group_constraints": [{"type": "clamp_object_amplitude", "amplitude": 1.1}],
             "iter_constraints": [], "update_probe": {"after": 5}},
            {"type": "conventional", "niter": 50, "grouping": 64, "sim_shape": [256, 256],
             "noise_model": "anscombe", "solver": "lsqml",
             "position_solver": {"type": "momentum", "step_size": 0.08, "max_step_size": 0.2, "momentum": 0.9},
             "group_constraints": [], "iter_constraints": [{"type": "limit_probe_support", "max_angle": 26.0}],
             "update_positions": {"after": 30}},
        ],
    },
    "mos2_grad": {  # Adam on object and probe, obj_l2 plus obj_tikh
        "name": "mos2_grad", "backend": "jax", "raw_data": _raw(),
        "engines": [{"type": "gradient", "niter": 200, "grouping": 128, "noise_model": {"type": "poisson", "eps": 0.1},
                     "solvers": {"object": {"type": "adam", "learning_rate": 5e-3, "nesterov": True},
                                 "probe": {"type": "adam", "learning_rate": 0.1}},
                     "regularizers": [{"type": "obj_l2", "cost": 0.4}, {"type": "obj_tikh", "cost": 0.2}],
                     "group_constraints": [], "iter_constraints": []}],
    },
    "si_grad": {  # multislice, Adam + SGD positions, layers_tikh, limit_probe_support, clamp
        "name": "si_grad", "backend": "jax", "raw_data": _raw("data/si.json"),
        "slices": {"n": 10, "total_thickness": 200},
        "engines": [{"type": "gradient", "niter": 200, "grouping": 64, "noise_model": {"type": "poisson", "eps": 1.0},
                     "solvers": {"object": {"type": "adam", "learning_rate": 1e-2},
                                 "probe": {"type": "adam", "learning_rate": 0.05},
                                 "positions": {"type": "sgd", "learning_rate": 0.5, "momentum": 0.9}},
                     "regularizers": [{"type": "layers_tikh", "cost": 500}],
                     "group_constraints": [],
                     "iter_constraints": [{"type": "limit_probe_support", "max_angle": 24.0},
                                          {"type": "clamp_object_amplitude", "amplitude": 1.0}],
                     "update_positions": {"after": 5}}],
    },
    "si_grad_exp": {  # the same on experimental data: a tilt refined too
        "name": "si_grad_exp", "backend": "jax", "raw_data": {"type": "empad", "path": "data/si_exp.json", "adu": 375},
        "init": {"scan": {"type": "raster", "rotation": 3.5}, "tilt": {"type": "global", "tilt": [1.0, -2.0]}},
        "slices": {"n": 21, "slice_thickness": 10},
        "engines": [{"type": "gradient", "niter": 150, "grouping": 32, "noise_model": {"type": "poisson", "eps": 0.5},
                     "solvers": {"object, probe": {"type": "adam", "learning_rate": 7e-2},
                                 "positions": {"type": "sgd", "learning_rate": 0.5, "momentum": 0.99},
                                 "tilt": {"type": "sgd", "learning_rate": 50.0, "momentum": 0.5}},
                     "regularizers": [{"type": "layers_tikh", "cost": 5000}, {"type": "obj_l2", "cost": 0.15}],
                     "group_constraints": [], "iter_constraints": [{"type": "limit_probe_support", "max_angle": 26}],
                     "update_positions": {"after": 5}, "update_tilt": {"after": 20}}],
    },
    "prsco3_grad": {  # two stages, 128² then 256²
        "name": "prsco3_grad", "backend": "jax", "raw_data": _raw("data/prsco3.json"),
        "slices": {"n": 15, "total_thickness": 300},
        "engines": [
            {"type": "gradient", "niter": 100, "grouping": 256, "sim_shape": [128, 128],
             "noise_model": {"type": "poisson", "eps": 2.0},
             "solvers": {"object": {"type": "adam", "learning_rate": 1e-3},
                         "probe": {"type": "adam", "learning_rate": 0.01}},
             "regularizers": [{"type": "layers_tikh", "cost": 1000}, {"type": "obj_tikh", "cost": 5}],
             "group_constraints": [], "iter_constraints": [{"type": "clamp_object_amplitude", "amplitude": 1.0}]},
            {"type": "gradient", "niter": 100, "grouping": 256, "sim_shape": [256, 256],
             "noise_model": {"type": "poisson", "eps": 2.0},
             "solvers": {"object": {"type": "adam", "learning_rate": 1e-3},
                         "probe": {"type": "adam", "learning_rate": 0.01}},
             "regularizers": [{"type": "layers_tikh", "cost": 1000}],
             "group_constraints": [], "iter_constraints": []},
        ],
    },
    "si_lsqml": {  # multislice LSQML with layers and obj_gaussian, expr β schedule
        "name": "si_lsqml", "backend": "jax", "raw_data": _raw("data/si.json"),
        "slices": {"n": 10, "total_thickness": 200},
        "engines": [{"type": "conventional", "niter": 100, "grouping": 32, "noise_model": "amplitude",
                     "solver": {"type": "lsqml", "beta_object": {"type": "expr", "expr": "1.0 - np.exp(-i/3)"}},
                     "group_constraints": [],
                     "iter_constraints": [{"type": "layers", "sigma": 50, "weight": 0.9},
                                          {"type": "obj_gaussian", "sigma": 0.3}]}],
    },
    "prsco3_lsqml": {  # multislice LSQML with layers and obj_low_pass
        "name": "prsco3_lsqml", "backend": "jax", "raw_data": _raw("data/prsco3.json"),
        "slices": {"thicknesses": [20.0] * 12},
        "engines": [{"type": "conventional", "niter": 100, "grouping": 64, "noise_model": "anscombe",
                     "solver": {"type": "lsqml", "beta_probe": {"type": "expr", "expr": "1.0 - np.exp(-i/3)"}},
                     "group_constraints": [],
                     "iter_constraints": [{"type": "layers", "sigma": 40}, {"type": "obj_low_pass", "max_freq": 0.3}]}],
    },
}


def _full() -> dict:
    return YAML(typ="safe").load(FULL_EXAMPLE)


def _convert(doc: dict) -> tuple[dict, list[str]]:
    return import_phaserem_plan(doc)


def _has(notes: list[str], *words: str) -> bool:
    return any(all(w in n for w in words) for n in notes)


# --------------------------------------------------------------------------- whole plans


def test_full_example_converts_and_validates():
    doc = _full()
    before = copy.deepcopy(doc)
    plan, notes = _convert(doc)
    assert doc == before  # the input is not modified
    load_plan(copy.deepcopy(plan))
    assert plan["file_type"] == "phaser_plan" and plan["version"] == 1
    assert plan["name"] == "si_multislice" and plan["backend"] == "jax" and plan["dtype"] == "float32"
    assert plan["raw_data"] == {"type": "empad", "path": "data/Si_300kV.json"}
    assert plan["post_load"] == [
        {"type": "crop_data", "scan": [8, -8, 8, -8]},
        {"type": "poisson", "scale": 1.0e7},
        {"type": "drop_nan_patterns", "threshold": 0.9},
        {"type": "center_diffraction"},
    ]
    assert plan["slices"] == {"n": 10, "total_thickness_A": 200.0}
    conv, grad = plan["engines"]
    assert conv["grouping"] == {"size": 64} and conv["noise_model"] == {"type": "anscombe"}
    assert conv["solver"] == {"type": "epie", "beta_object": 0.5, "beta_probe": 0.5}
    assert grad["probe_modes"] == 4 and grad["noise_model"] == {"type": "poisson", "eps": 2.0}
    assert grad["solvers"]["object"] == grad["solvers"]["probe"]
    assert grad["regularizers"] == [{"type": "obj_tv", "cost": 1.0}] and grad["cost_per"] == "group"
    assert grad["iter_constraints"] == [{"type": "limit_probe_support", "max_angle_mrad": 26.0}]
    assert plan["output"] == {"state_every": 10, "image_every": 25,
                              "images": ["probe", "object_phase_sum", "object_amplitude"]}
    assert grad["sim_shape"] == [192, 192] and _has(notes, "engines[1].sim_shape", "pad_crop")
    assert _has(notes, "poisson", "Gaussian")
    assert _has(notes, "image 'scan'")
    assert _has(notes, "img_dtype")


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_examples_convert_to_valid_plans(name):
    doc = EXAMPLES[name]
    before = copy.deepcopy(doc)
    plan, notes = _convert(doc)
    assert doc == before
    load_plan(copy.deepcopy(plan))  # raises PlanError with every problem
    assert all(isinstance(n, str) and n for n in notes)


def test_example_details():
    plan, notes = _convert(EXAMPLES["mos2_lsqml"])
    first, second = plan["engines"]
    assert first["grouping"] == {"size": 64, "kind": "compact"}
    assert first["solver"] == {"type": "lsqml"}  # phaserEM's β/γ/illum_reg mean something else here
    assert _has(notes, "engines[0].solver", "lsqml", "illum_reg_object")
    assert first["noise_model"] == {"type": "anscombe"} and _has(notes, "noise_model.eps")
    assert first["group_constraints"] == [{"type": "clamp_object_amplitude", "max_amplitude": 1.1}]
    assert second["position_solver"] == {"type": "momentum", "step_size": 0.08, "momentum": 0.9, "max_step_A": 0.2}
    assert second["update_positions"] == {"after": 30}
    # phaserEM's probe_modes default is 1, ours "keep": written out
    assert first["probe_modes"] == 1 and second["probe_modes"] == 1
    plan, notes = _convert(EXAMPLES["si_lsqml"])
    eng = plan["engines"][0]
    assert eng["iter_constraints"][1] == {"type": "obj_blur", "sigma_A": 0.3, "weight": 0.9}
    assert _has(notes, "engines[0].solver", "lsqml", "given: beta_object")
    plan, _ = _convert(EXAMPLES["si_grad_exp"])
    eng = plan["engines"][0]
    assert plan["slices"] == {"n": 21, "thicknesses_A": [10.0] * 21}
    assert eng["tilt"] == "per_position" and eng["update_tilt"] == {"after": 20}
    assert plan["raw_data"]["adu"] == 375


# --------------------------------------------------------------------------- signs and units


def test_defocus_sign_flips():
    doc = {**EXAMPLES["mos2_epie"], "init": {"probe": {"type": "focused", "conv_angle": 21.0, "defocus": 150.0}}}
    plan, _ = _convert(doc)
    assert plan["init"]["probe"] == {"type": "focused", "conv_angle_mrad": 21.0, "defocus_A": -150.0}


def test_automatic_backend_stays_automatic():
    """phaserEM's `backend: null` picks jax, else cupy, else numpy; ours is `auto` (a GPU first)."""
    doc = {k: v for k, v in EXAMPLES["mos2_lsqml"].items() if k != "backend"}
    plan, notes = _convert(doc)
    assert plan["backend"] == "auto" and not _has(notes, "backend")
    plan, _ = _convert({**doc, "backend": None})
    assert plan["backend"] == "auto"
    plan, notes = _convert({**doc, "backend": "tpu"})
    assert "backend" not in plan and _has(notes, "unknown backend")


def test_raster_rotation_sign_flips():
    doc = {**EXAMPLES["mos2_epie"], "init": {"scan": {"type": "raster", "shape": [32, 48], "step_size": 0.5,
                                                      "rotation": 12.5}}}
    plan, notes = _convert(doc)
    assert plan["init"]["scan"] == {"type": "raster", "shape": [32, 48], "step_A": 0.5, "rotation_deg": -12.5}
    assert _has(notes, "init.scan", "half a step")
    # only a rotation: phaserEM merges it with the loader's raster, as from_data does here
    doc = {**EXAMPLES["mos2_epie"], "init": {"scan": {"rotation": -4.0}}}
    plan, _ = _convert(doc)
    assert plan["init"]["scan"] == {"type": "from_data", "rotation_deg": 4.0}
    load_plan(copy.deepcopy(plan))


def test_global_tilt_sign_flips_into_the_loader():
    plan, notes = _convert(EXAMPLES["si_grad_exp"])
    assert plan["raw_data"]["tilt_mrad"] == [-1.0, 2.0]
    assert "tilt" not in plan.get("init", {})
    assert _has(notes, "init.tilt", "tilt_mrad")


def test_layers_sigma_from_angstrom_to_slices():
    plan, notes = _convert(_full())
    assert plan["engines"][0]["iter_constraints"] == [{"type": "layers", "sigma_slices": 5.0, "weight": 0.5}]
    # explicit thicknesses; weight default 0.9 (phaserEM's) written out
    plan, _ = _convert(EXAMPLES["prsco3_lsqml"])
    assert plan["engines"][0]["iter_constraints"][0] == {"type": "layers", "sigma_slices": 2.0, "weight": 0.9}
    # an engine's own slices without a thickness keep the total: 200 Å in 4 slices
    doc = copy.deepcopy(EXAMPLES["si_lsqml"])
    doc["engines"][0]["slices"] = {"n": 4}
    plan, _ = _convert(doc)
    assert plan["engines"][0]["iter_constraints"][0]["sigma_slices"] == pytest.approx(1.0)
    # no thickness known: dropped with a note
    doc = copy.deepcopy(EXAMPLES["si_lsqml"])
    del doc["slices"]
    plan, notes = _convert(doc)
    assert all(c["type"] != "layers" for c in plan["engines"][0].get("iter_constraints", []))
    assert _has(notes, "layers", "cannot be turned into slices")


def test_obj_low_pass_cutoff_is_a_fraction_of_nyquist():
    plan, notes = _convert(EXAMPLES["prsco3_lsqml"])
    assert plan["engines"][0]["iter_constraints"][1] == {"type": "obj_low_pass", "cutoff": pytest.approx(0.6)}
    assert _has(notes, "obj_low_pass", "Gaussian")


def _phaserem_flag(flag: dict, i: int) -> bool:
    """phaserEM's flag at 1-based engine iteration i (PHASER_REFERENCE.md 2.4)."""
    after, every, before = flag.get("after", 0), flag.get("every", 1), flag.get("before")
    return i > after and (before is None or i < before) and (i - after) % every == 0


@pytest.mark.parametrize("flag", [{"after": 5}, {"every": 10}, {"after": 3, "every": 4}, {"before": 7},
                                  {"after": 2, "every": 3, "before": 20}, {"after": 0, "every": 1}])
def test_flags_convert_exactly(flag):
    doc = copy.deepcopy(EXAMPLES["mos2_epie"])
    doc["engines"][0]["update_probe"] = flag
    plan, _ = _convert(doc)
    ours = plan["engines"][0]["update_probe"]
    f = Flag(True) if ours is True else Flag(**ours)
    for j in range(60):  # ours counts from 0
        assert f(j) == _phaserem_flag(flag, j + 1), (flag, ours, j)
    load_plan(copy.deepcopy(plan))


def test_known_flag_values():
    doc = copy.deepcopy(EXAMPLES["mos2_epie"])
    doc["engines"][0]["update_probe"] = {"every": 10}
    doc["engines"][0]["update_object"] = {"after": 5}
    plan, _ = _convert(doc)
    assert plan["engines"][0]["update_probe"] == {"after": 9, "every": 10}
    assert plan["engines"][0]["update_object"] == {"after": 5}


def test_position_updates_off_unless_flagged():
    # phaserEM's update_positions defaults to false; ours to {after: 1}
    doc = copy.deepcopy(EXAMPLES["mos2_lsqml"])
    del doc["engines"][1]["update_positions"]
    plan, _ = _convert(doc)
    assert plan["engines"][1]["update_positions"] is False


def test_grouping_int_and_compact():
    plan, _ = _convert(EXAMPLES["mos2_epie"])
    assert plan["engines"][0]["grouping"] == {"size": 16}
    plan, _ = _convert(EXAMPLES["mos2_lsqml"])
    assert plan["engines"][0]["grouping"] == {"size": 64, "kind": "compact"}
    doc = copy.deepcopy(EXAMPLES["mos2_epie"])
    del doc["engines"][0]["grouping"]  # phaserEM's default 64
    doc["engines"][0]["compact"] = True
    doc["engines"][0]["shuffle_groups"] = True
    plan, _ = _convert(doc)
    assert plan["engines"][0]["grouping"] == {"size": 64, "kind": "compact", "regroup": True}


def test_piecewise_schedule_boundaries_shift_by_one():
    plan, _ = _convert(_full())
    lr = plan["engines"][1]["solvers"]["object"]["learning_rate"]
    assert lr == {"type": "piecewise", "init": 1.0e-2, "boundaries": [99], "values": [3.0e-3]}
    doc = copy.deepcopy(EXAMPLES["mos2_grad"])
    doc["engines"][0]["solvers"]["probe"]["learning_rate"] = {"type": "piecewise", "init": 0.1,
                                                              "steps": {1: 0.2, "50": 0.05}}
    plan, _ = _convert(doc)
    # a step at iteration 1 holds from the start: it is the initial value
    assert plan["engines"][0]["solvers"]["probe"]["learning_rate"] == {
        "type": "piecewise", "init": 0.2, "boundaries": [49], "values": [0.05]}


def test_gradient_solvers_split_and_missing_ones_null():
    plan, _ = _convert(_full())
    s = plan["engines"][1]["solvers"]
    assert s["object"]["type"] == "adam" and s["object"] == s["probe"]
    assert s["positions"] == {"type": "sgd", "learning_rate": 0.5, "momentum": 0.9, "nesterov": True}
    doc = copy.deepcopy(EXAMPLES["mos2_grad"])
    del doc["engines"][0]["solvers"]["probe"]
    plan, notes = _convert(doc)
    assert plan["engines"][0]["solvers"]["probe"] is None
    assert _has(notes, "no solver for the probe")
    load_plan(copy.deepcopy(plan))
    # polyak_sgd shared with the per-iteration positions: kept for the object and probe only
    doc = copy.deepcopy(EXAMPLES["mos2_grad"])
    doc["engines"][0]["solvers"] = {"object, probe, positions": {"type": "polyak_sgd", "max_learning_rate": 0.5}}
    plan, notes = _convert(doc)
    s = plan["engines"][0]["solvers"]
    assert s["object"] == s["probe"] == {"type": "polyak_sgd", "max_learning_rate": 0.5} and "positions" not in s
    assert _has(notes, "positions: polyak_sgd steps by a group's loss", "not carried")
    load_plan(copy.deepcopy(plan))


# --------------------------------------------------------------------------- notes


def test_unsupported_keys_are_dropped_with_notes():
    doc = copy.deepcopy(EXAMPLES["mos2_grad"])
    doc["wavelength"] = 0.0250793
    doc["mystery"] = 3
    eng = doc["engines"][0]
    eng.update({"resize_method": "resample", "sim_shape": [64, 64], "buffer_n_groups": 4, "calc_error": {"every": 5},
                "send_every_group": True, "bogus": 1, "save_options": {"out_dir": "{name}_out", "unwrap_phase": True}})
    eng["iter_constraints"] = [{"type": "nonneg_object_phase"}]
    eng["regularizers"].append({"type": "obj_magic", "cost": 1})
    doc["post_init"] = ["my.module:hook"]
    plan, notes = _convert(doc)
    load_plan(copy.deepcopy(plan))
    for words in [("mystery", "unknown key"), ("engines[0].bogus", "unknown key"),
                  ("engines[0].resize_method", "not supported"), ("buffer_n_groups",), ("calc_error", "not carried"),
                  ("send_every_group",), ("out_dir", "--out"), ("unwrap_phase",),
                  ("nonneg_object_phase", "not converted"), ("obj_magic", "not converted"),
                  ("post_init[0]", "my.module:hook")]:
        assert _has(notes, *words), words
    # a wavelength becomes the loader's beam energy (200 kV)
    assert plan["raw_data"]["energy_eV"] == pytest.approx(200e3, rel=1e-5)
    assert "bogus" not in plan["engines"][0] and "mystery" not in plan


def test_expr_schedule_and_unknown_loader_notes():
    doc = copy.deepcopy(EXAMPLES["mos2_epie"])
    doc["engines"][0]["solver"]["beta_object"] = {"type": "expr", "expr": "1.0 - np.exp(-i/3)"}
    plan, notes = _convert(doc)
    assert plan["engines"][0]["solver"] == {"type": "epie", "beta_probe": 0.5, "object_norm": "position"}
    assert _has(notes, "engines[0].solver.beta_object", "expr schedule", "cannot be carried")
    doc = {**EXAMPLES["mos2_epie"], "raw_data": {"type": "gatan", "path": "scan.dm4"}}
    plan, notes = _convert(doc)
    assert _has(notes, "raw_data", "gatan", "rsciio")


def test_init_state_keeps_path_and_notes_overrides():
    doc = {**EXAMPLES["mos2_epie"], "init": {"state": "prev/iter100.h5", "probe": {"defocus": 10.0}}}
    plan, notes = _convert(doc)
    assert plan["init"] == {"state": "prev/iter100.h5"}
    assert _has(notes, "init.probe", "state")
    load_plan(copy.deepcopy(plan))


def test_rebase_paths(tmp_path):
    plan, _ = _convert({**EXAMPLES["mos2_epie"], "init": {"state": "prev/s.h5"}})
    notes = rebase_paths(plan, str(tmp_path / "old"), str(tmp_path / "new"))
    assert plan["raw_data"]["path"] == "../old/data/mos2.json" and plan["init"]["state"] == "../old/prev/s.h5"
    assert len(notes) == 2


# --------------------------------------------------------------------------- the command


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "phaser_core.cli", *args], cwd=cwd, capture_output=True, text=True)


def test_command_prints_plan_and_notes(tmp_path):
    (tmp_path / "old.yaml").write_text(FULL_EXAMPLE)
    r = _cli("import-plan", "old.yaml", cwd=tmp_path)
    # its data file is missing: the converted plan would not run, so it does not "validate"
    assert r.returncode == 1 and "raw_data.path: no such file: data/Si_300kV.json" in r.stderr
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "Si_300kV.json").write_text("{}")
    r = _cli("import-plan", "old.yaml", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    new = YAML(typ="safe").load(r.stdout)
    assert new["init"]["probe"]["defocus_A"] == -150.0
    assert list(new)[:3] == ["file_type", "version", "name"]
    assert new["engines"][1]["sim_shape"] == [192, 192] and "validates" in r.stderr
    # --out in another folder: the data path follows
    r = _cli("import-plan", "old.yaml", "--out", "sub/new.yaml", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    new = YAML(typ="safe").load((tmp_path / "sub" / "new.yaml").read_text())
    assert new["raw_data"]["path"] == "../data/Si_300kV.json"


def test_command_exits_1_when_the_result_does_not_validate(tmp_path):
    doc = copy.deepcopy(EXAMPLES["mos2_epie"])
    doc["raw_data"] = {"type": "nion", "path": "x.ndata", "diff_step": 1.0}
    buf = tmp_path / "old.yaml"
    YAML().dump(doc, buf)
    r = _cli("import-plan", str(buf), cwd=tmp_path)
    assert r.returncode == 1
    assert "does not validate" in r.stderr and "nion" in r.stderr


def test_early_termination_becomes_stop_when():
    doc = copy.deepcopy(EXAMPLES["mos2_grad"])
    doc["engines"][0].update({"early_termination": 10, "early_termination_smoothing": 0.9})
    plan, notes = _convert(doc)
    assert plan["engines"][0]["stop_when"] == {"patience": 10, "min_rel_change": 0.0}
    assert _has(notes, "engines[0].early_termination", "stop_when") and _has(notes, "smoothing")
    load_plan(copy.deepcopy(plan))


def test_epie_single_slice_takes_each_positions_own_step():
    # phaserEM steps each position's object update by its own largest illumination: on one
    # slice that is object_norm: position; with several slices the default stays (its steps
    # there are also divided by the number of slices), with a note either way
    plan, notes = _convert(EXAMPLES["mos2_epie"])
    assert plan["engines"][0]["solver"] == {"type": "epie", "beta_object": 0.5, "beta_probe": 0.5,
                                            "object_norm": "position"}
    assert _has(notes, "engines[0].solver", "object_norm: position")
    plan, notes = _convert(_full())  # 10 slices
    assert "object_norm" not in plan["engines"][0]["solver"]
    assert _has(notes, "engines[0].solver", "number of slices")


def test_clamp_object_amplitude_with_a_min_max_pair():
    doc = copy.deepcopy(EXAMPLES["mos2_epie"])
    doc["engines"][0]["group_constraints"] = [{"type": "clamp_object_amplitude", "amplitude": [0.5, 1.2]},
                                              {"type": "clamp_object_amplitude", "amplitude": 1.1}]
    plan, _ = _convert(doc)
    assert plan["engines"][0]["group_constraints"] == [
        {"type": "clamp_object_amplitude", "min_amplitude": 0.5, "max_amplitude": 1.2},
        {"type": "clamp_object_amplitude", "max_amplitude": 1.1}]
    load_plan(plan)


# --------------------------------------------------------------------------- the harness's hook

#: the phaserEM plan that ``../shared/bench/run_phaser.py`` writes for one of our hdf5 files
#: (its hook ``phaser_h5_hook:load_h5`` reads our raw-data format into phaserEM)
HARNESS_PLAN = {
    "name": "d_epie_jax", "backend": "jax", "dtype": "float32",
    "raw_data": {"type": "phaser_h5_hook:load_h5", "path": "d.h5", "key": "patterns", "defocus_map": "abtem",
                 "det_flips": [False, False, False], "scan_transpose": False},
    "post_load": [], "post_init": [],
    "engines": [{"type": "conventional", "niter": 3, "grouping": 16, "probe_modes": 1, "update_probe": {"after": 1},
                 "update_object": True, "calc_error": {"every": 1}, "save": False, "save_images": False,
                 "noise_model": {"type": "amplitude", "eps": 0.1},
                 "solver": {"type": "epie", "beta_object": 0.5, "beta_probe": 0.5},
                 "group_constraints": [], "iter_constraints": []}],
}


def test_the_harness_hook_becomes_our_hdf5_loader(tmp_path):
    """The hook reads our own file, so the converted plan validates and runs as it is."""
    from recon import make_dataset

    from phaser_core.runner import run_plan

    make_dataset(tmp_path / "d.h5", scan={"shape": [6, 6], "step_A": 0.6}, dose=1e5)
    plan, notes = _convert(HARNESS_PLAN)
    assert plan["raw_data"] == {"type": "hdf5", "path": "d.h5"}
    assert not _has(notes, "raw_data")
    state = run_plan(load_plan(copy.deepcopy(plan)), plan_dir=tmp_path, quiet=True)
    assert len(state.progress.loss) == 3 and np.isfinite(state.progress.loss).all()


def test_the_harness_hook_settings_convert():
    def raw(**props):
        plan, notes = _convert({**HARNESS_PLAN, "raw_data": {**HARNESS_PLAN["raw_data"], **props}})
        return plan["raw_data"], notes

    # its `defocus` is phaserEM's (C10, + = overfocus); the file's own defocus_A is read as ours
    assert raw(defocus=-120.0, key="patterns_noiseless")[0] == {"type": "hdf5", "path": "d.h5", "defocus_A": 120.0,
                                                                 "key": "patterns_noiseless"}
    out, notes = raw(defocus_map="same")
    assert "defocus_A" not in out and _has(notes, "raw_data.defocus_map", "minus the file's value")
    out, notes = raw(scan_transpose=True, scale=2.0)
    assert _has(notes, "raw_data.scan_transpose", "not carried") and _has(notes, "raw_data.scale", "not carried")
    out, notes = raw(wavelength=0.025079340317328468)  # 200 kV
    assert out["energy_eV"] == pytest.approx(200e3, rel=1e-5) and _has(notes, "raw_data.wavelength", "energy_eV")
    plan, notes = _convert({**HARNESS_PLAN, "init": {"tilt": {"type": "global", "tilt": [1.0, -2.0]}}})
    assert plan["raw_data"]["tilt_mrad"] == [-1.0, 2.0]


@pytest.mark.parametrize("flips", [(y, x, t) for y in (False, True) for x in (False, True) for t in (False, True)])
def test_the_harness_hook_detector_flips_orient_as_phaserem_does(flips):
    """phaserEM's ``det_flips`` (flip_y, flip_x, transpose) flip the array's last two axes,
    then transpose; ours transposes first. On an odd detector (where flipping the array is
    the reflection about Qy//2, Qx//2 that ours makes) the two agree pixel for pixel."""
    from phaser_std.data.loaders._common import orient_patterns
    from phaser_std.data.loaders.hdf5 import Hdf5Config

    patterns = np.random.default_rng(0).random((2, 5, 7))
    theirs = patterns
    if flips[0]:
        theirs = np.flip(theirs, axis=-2)
    if flips[1]:
        theirs = np.flip(theirs, axis=-1)
    if flips[2]:
        theirs = np.swapaxes(theirs, -2, -1)
    plan, _ = _convert({**HARNESS_PLAN, "raw_data": {**HARNESS_PLAN["raw_data"], "det_flips": list(flips)}})
    settings = {k: v for k, v in plan["raw_data"].items() if k != "type"}
    np.testing.assert_array_equal(orient_patterns(patterns, Hdf5Config(**settings)), theirs)


@pytest.mark.parametrize("rotation", [0.0, 30.0, -12.5])
@pytest.mark.parametrize("affine", [None, [[1.0, 0.05], [0.0, 0.97]]])
def test_a_raster_with_unequal_steps_rotation_and_affine_gives_phaserems_positions(rotation, affine):
    """phaserEM's raster (0.3.1): the stepped grid, then its affine on (y, x) column vectors,
    then the rotation R (CCW); ours applies the affine after the rotation, so R·A·Rᵀ gives
    the same positions (the affine used to be dropped, and a false note said unequal steps
    with a rotation gave another grid). Compared after centring (phaserEM's grid is half a
    step off centre, noted)."""
    import numpy as np

    from phaser_std.physics.scan import raster_scan

    shape, step = (4, 5), (0.5, 1.0)
    yy, xx = np.meshgrid(np.arange(shape[0]) * step[0], np.arange(shape[1]) * step[1], indexing="ij")
    theirs = np.stack([yy.ravel(), xx.ravel()], axis=-1)
    if affine is not None:
        theirs = theirs @ np.asarray(affine).T
    th = np.deg2rad(rotation)
    theirs = theirs @ np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]]).T
    scan = {"type": "raster", "shape": list(shape), "step_size": list(step), "rotation": rotation}
    if affine is not None:
        scan["affine"] = affine
    plan, notes = _convert({**EXAMPLES["mos2_epie"], "init": {"scan": scan}})
    ours = plan["init"]["scan"]
    assert ("affine" in ours) == (affine is not None) and not _has(notes, "grids differ")
    pos = raster_scan(ours["shape"], ours["step_A"], ours.get("rotation_deg", 0.0), ours.get("affine"))
    np.testing.assert_allclose(pos - pos.mean(axis=0), theirs - theirs.mean(axis=0), atol=1e-9)
    load_plan(copy.deepcopy(plan))


def test_the_save_note_counts_per_engine_without_an_off_by_one():
    """phaserEM 0.3.1 saves after iterations 2, 4 and the last with `save: {every: 2}`: the
    note no longer claims the earlier snapshot's off-by-one."""
    doc = copy.deepcopy(EXAMPLES["mos2_epie"])
    doc["engines"][0]["save"] = {"every": 2}
    plan, notes = _convert(doc)
    assert plan["output"]["state_every"] == 2
    assert _has(notes, "output.state_every", "counted the iterations of each engine")
    assert not _has(notes, "off by one")
