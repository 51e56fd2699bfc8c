"""Plan files: structuring through the live registry, all-errors validation, migration,
overrides, local components and the resolved-plan round trip.

The registry here holds fakes (``plan_fakes``) so these tests do not depend on the real
engines; their config classes have the same kinds of fields as the real ones.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path

import attrs
import numpy as np
import pytest

from phaser_core.config import EngineSpec, Flag, NoiseModelSpec, ScheduleSpec, SolverSpec
from phaser_core.errors import PlanError
from phaser_core.plan import (
    InitPlan,
    OutputPlan,
    Plan,
    SlicesPlan,
    dump_plan,
    load_plan,
    plan_to_dict,
)
from phaser_core.plan_migrate import CURRENT_VERSION, MIGRATIONS, migrate, v0_to_v1

sys.path.insert(0, str(Path(__file__).parent))
import plan_fakes  # noqa: E402
from plan_fakes import MINIMAL_PLAN, ConventionalConfig, EpieConfig, make_registry  # noqa: E402

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.fixture(scope="module")
def registry():
    return make_registry()


def errors_of(text_or_path, registry, **kwargs) -> list:
    with pytest.raises(PlanError) as info:
        load_plan(text_or_path, registry=registry, **kwargs)
    return info.value.errors


def engine_plan(engine_body: str, extra: str = "") -> str:
    """MINIMAL_PLAN with the engine's lines replaced (indented 4 spaces)."""
    lines = "\n".join("    " + line for line in engine_body.strip("\n").splitlines())
    return ("file_type: phaser_plan\nversion: 1\nraw_data: {type: hdf5, path: data.h5}\n"
            f"engines:\n  - type: conventional\n{lines}\n{extra}")


# -- structuring ------------------------------------------------------------------------


def test_minimal_plan_gets_every_default(registry):
    plan = load_plan(MINIMAL_PLAN, registry=registry)
    assert isinstance(plan, Plan)
    assert plan.backend == "auto" and plan.dtype == "float32" and plan.seed == 0
    assert plan.raw_data.type == "hdf5" and plan.raw_data.config.path == "data.h5"
    (engine,) = plan.engines
    assert isinstance(engine, EngineSpec) and isinstance(engine.config, ConventionalConfig)
    assert engine.config.niter == 10
    # nested specs default to the component's default config, resolved through the registry
    assert engine.config.solver == SolverSpec("lsqml", plan_fakes.LsqmlConfig())
    assert engine.config.noise_model == NoiseModelSpec("amplitude", plan_fakes.AmplitudeConfig(eps=1e-2))
    # init defaults are filled too (focused has a config; vacuum has none)
    assert plan.init.probe.type == "focused" and plan.init.probe.config == plan_fakes.FocusedConfig()
    assert plan.init.object.type == "vacuum" and plan.init.object.config is None
    assert plan.output == OutputPlan() and plan.slices == SlicesPlan() and isinstance(plan.init, InitPlan)


def test_nested_specs_flags_and_schedules(registry):
    plan = load_plan(engine_plan("""
niter: 3
solver: {type: epie, beta_object: {type: cosine, start: 2}, beta_probe: 0.5}
update_probe: {after: 5, every: 2}
iter_constraints: [{type: limit_probe_support, max_angle_mrad: 26}]
grouping: {size: 16, kind: compact}
"""), registry=registry)
    cfg = plan.engines[0].config
    assert cfg.solver.type == "epie" and isinstance(cfg.solver.config, EpieConfig)
    assert isinstance(cfg.solver.config.beta_object, ScheduleSpec)
    assert cfg.solver.config.beta_object.config.start == 2.0
    assert cfg.solver.config.beta_probe == 0.5 and isinstance(cfg.solver.config.beta_probe, float)
    assert cfg.update_probe == Flag(True, after=5, every=2)
    assert not cfg.update_probe(4) and cfg.update_probe(5) and not cfg.update_probe(6)
    assert cfg.iter_constraints[0].config.max_angle_mrad == 26.0
    assert cfg.grouping.kind == "compact"


def test_flag_accepts_bool(registry):
    plan = load_plan(engine_plan("update_probe: false"), registry=registry)
    assert plan.engines[0].config.update_probe == Flag(False)


def test_json_plan(registry, tmp_path):
    path = tmp_path / "plan.json"
    path.write_text('{"file_type": "phaser_plan", "version": 1,\n "raw_data": {"type": "hdf5", "path": "x.h5"},\n'
                    ' "engines": [{"type": "conventional", "niter": "ten"}]}')
    (err,) = errors_of(path, registry)
    assert (err.line, err.col) == (3, 48) and err.path_str == "engines[0].niter"
    assert str(err).startswith(f"{path}:3:48: engines[0].niter: expected an integer, got 'ten'")


# -- errors -----------------------------------------------------------------------------


def test_invalid_example_reports_three_errors_in_order(registry):
    errors = errors_of(str(EXAMPLES / "invalid_plan.yaml"), registry)
    texts = [str(e) for e in errors]
    assert len(errors) == 3, texts
    name = str(EXAMPLES / "invalid_plan.yaml")
    assert texts[0] == (f"{name}:10:13: engines[0].solver.type: unknown solver 'epei'; did you mean 'epie'? "
                        "available: epie, lsqml (phaser-ptycho 0.1.0)")
    assert texts[1] == f"{name}:11:12: engines[0].niter: expected an integer, got 'ten'"
    assert texts[2].startswith(f"{name}:13:5: engines[0]: unknown key 'probe_modess'; did you mean 'probe_modes'?")


def test_all_errors_reported_at_once_with_positions(registry):
    text = engine_plan("""
niter: ten
foo: 1
solver:
  type: epei
update_probe: {after: x}
grouping: {size: 3, kind: sparce}
iter_constraints: [{type: limit_probe_support, max_angle_mrad: big}, 5]
noise_model: {type: amplitude, eps: [1]}
""", extra="observers: 5\n")
    got = {(e.path_str, e.line, e.col): e.message for e in errors_of(text, registry)}
    assert got == {
        ("engines[0].niter", 6, 12): "expected an integer, got 'ten'",
        ("engines[0]", 7, 5): got[("engines[0]", 7, 5)],
        ("engines[0].solver.type", 9, 13): "unknown solver 'epei'; did you mean 'epie'? "
                                           "available: epie, lsqml (phaser-ptycho 0.1.0)",
        ("engines[0].update_probe.after", 10, 27): "expected an integer, got 'x'",
        ("engines[0].grouping.kind", 11, 31): "expected one of 'sparse', 'compact', got 'sparce'; "
                                              "did you mean 'sparse'?",
        ("engines[0].iter_constraints[0].max_angle_mrad", 12, 68): "expected a number, got 'big'",
        ("engines[0].iter_constraints[1]", 12, 74): "expected a {type: NAME, ...} mapping naming a regularizer, got 5",
        ("engines[0].noise_model.eps", 13, 41): "expected a number, got a list",
        ("observers", 14, 12): "expected a list, got 5",
    }
    assert got[("engines[0]", 7, 5)].startswith("unknown key 'foo'; valid keys: niter, grouping")


def test_strict_scalars(registry):
    # YAML "yes"/"1" strings are not silently converted; bools are not integers
    text = engine_plan("niter: true\nprobe_modes: '2'", extra="seed: 1.5\nname: 3\n")
    got = {e.path_str: e.message for e in errors_of(text, registry)}
    assert got == {"engines[0].niter": "expected an integer, got true",
                   "engines[0].probe_modes": "expected an integer, got '2'",
                   "seed": "expected an integer, got 1.5",
                   "name": "expected a string, got 3"}


def test_missing_required_keys(registry):
    errors = errors_of("file_type: phaser_plan\nversion: 1\nraw_data: {type: hdf5}\n", registry)
    got = {(e.path_str, e.message) for e in errors}
    assert ("", "missing required key 'engines'") in got
    assert ("raw_data", "missing required key 'path'") in got
    by_msg = {e.message: e for e in errors}
    assert by_msg["missing required key 'path'"].line == 3


def test_missing_type_lists_available(registry):
    # a field with no default component (one with a default takes its type: test_plan_default_types)
    (err,) = errors_of(engine_plan("position_solver: {beta_object: 1}"), registry)
    assert err.path_str == "engines[0].position_solver"
    assert err.message.startswith("missing key 'type'") and "epie, lsqml (phaser-ptycho 0.1.0)" in err.message


def test_unknown_key_in_component_without_config(registry):
    (err,) = errors_of(MINIMAL_PLAN + "init: {object: {type: vacuum, thickness: 3}}\n", registry)
    assert err.path_str == "init.object" and err.message.startswith("unknown key 'thickness'")
    assert (err.line, err.col) == (7, 31)


def test_wrong_file_type_and_newer_version(registry):
    (err,) = errors_of("file_type: something_else\nversion: 1\n", registry)
    assert err.path_str == "file_type" and "phaser_plan" in err.message and err.line == 1
    (err,) = errors_of(MINIMAL_PLAN.replace("version: 1", "version: 99"), registry)
    assert err.path_str == "version" and "newer" in err.message


def test_yaml_syntax_error_and_missing_file(registry, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("file_type: phaser_plan\nengines: [1\nname: x\n")
    (err,) = errors_of(bad, registry)
    assert err.message.startswith("invalid YAML") and err.line is not None and err.col is not None
    # the unclosed `[` of line 2, not only where the parser gave up
    assert "while parsing a flow sequence (begun at line 2, column 10): expected ',' or ']'" in err.message
    (err,) = errors_of(str(tmp_path / "nope.yaml"), registry)
    assert err.message == "file not found" and err.file.endswith("nope.yaml")
    (err,) = errors_of("- a\n- b\n", registry)
    assert "must be a mapping" in err.message


def test_cross_field_checks(registry):
    text = ("file_type: phaser_plan\nversion: 1\nraw_data: {type: hdf5, path: d.h5}\nengines: []\n"
            "dtype: float16\nbackend: nmupy\nslices: {n: 3, thicknesses_A: [1, 2]}\n")
    got = {e.path_str: e.message for e in errors_of(text, registry)}
    assert "at least one engine" in got["engines"]
    assert got["dtype"] == "expected one of float32, float64, got 'float16'"
    assert got["backend"].startswith("unknown backend 'nmupy'; did you mean 'numpy'?")
    assert got["slices.thicknesses_A"] == "has 2 values but n is 3"
    (err,) = errors_of(MINIMAL_PLAN + "slices: {n: 4}\n", registry)
    assert err.path_str == "slices" and "total_thickness_A" in err.message


def test_slices_resolve():
    np.testing.assert_array_equal(SlicesPlan().resolve(), np.zeros(1))
    np.testing.assert_allclose(SlicesPlan(4, total_thickness_A=100.0).resolve(), [25.0] * 4, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(SlicesPlan(2, thicknesses_A=(1.0, 3.0)).resolve(), [1.0, 3.0])
    # an explicit zero thickness is kept; an engine's slices split the object's thickness,
    # and an object of none gives none to split
    np.testing.assert_array_equal(SlicesPlan(3, total_thickness_A=0.0).resolve(), np.zeros(3))
    np.testing.assert_allclose(SlicesPlan(4).resolve(current_total_A=20.0), [5.0] * 4, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="needs total_thickness_A"):
        SlicesPlan(3).resolve(current_total_A=0.0)
    with pytest.raises(ValueError, match="total_thickness_A"):
        SlicesPlan(3).resolve()


# -- overrides --------------------------------------------------------------------------


def test_overrides(registry):
    plan = load_plan(MINIMAL_PLAN, registry=registry,
                     overrides=["engines[0].niter=5", "engines[0].solver={type: epie, beta_probe: 0.25}",
                                "seed=7", "init.probe={type: focused, defocus_A: -50}", "output.image_every=2"])
    cfg = plan.engines[0].config
    assert cfg.niter == 5 and cfg.solver.type == "epie" and cfg.solver.config.beta_probe == 0.25
    assert plan.seed == 7 and plan.init.probe.config.defocus_A == -50.0 and plan.output.image_every == 2


def test_override_errors(registry):
    errors = errors_of(MINIMAL_PLAN, registry, overrides=["engines[3].niter=5", "nonsense", "raw_data.path.x=1"])
    assert [e.file for e in errors] == ["--set"] * 3
    assert "has 1 items" in errors[0].message and "path=value" in errors[1].message
    assert "not a mapping" in errors[2].message
    # an override with a wrong type is reported like a file error
    (err,) = errors_of(MINIMAL_PLAN, registry, overrides=["engines[0].niter=ten"])
    assert err.path_str == "engines[0].niter" and err.message == "expected an integer, got 'ten'"


# -- migration --------------------------------------------------------------------------


def test_migration_v0_to_v1_is_pure():
    old = {"file_type": "phaser_plan", "version": 0, "data": {"type": "hdf5", "path": "d.h5"},
           "engines": [{"type": "conventional", "iterations": 4}]}
    snapshot = {"file_type": "phaser_plan", "version": 0, "data": {"type": "hdf5", "path": "d.h5"},
                "engines": [{"type": "conventional", "iterations": 4}]}
    new = v0_to_v1(old)
    assert old == snapshot  # the input is untouched
    assert new == {"file_type": "phaser_plan", "version": 1, "raw_data": {"type": "hdf5", "path": "d.h5"},
                   "engines": [{"type": "conventional", "niter": 4}]}
    assert MIGRATIONS[0] is v0_to_v1 and migrate(old, 0) == new and CURRENT_VERSION == 1


def test_old_plan_loads_through_migration(registry):
    text = ("file_type: phaser_plan\nversion: 0\ndata: {type: hdf5, path: d.h5}\n"
            "engines:\n  - type: conventional\n    iterations: 4\n    solver: {type: epei}\n")
    (err,) = errors_of(text, registry)
    # positions survive the migration
    assert err.path_str == "engines[0].solver.type" and (err.line, err.col) == (7, 20)
    plan = load_plan(text.replace("epei", "epie"), registry=registry)
    assert plan.version == 1 and plan.engines[0].config.niter == 4 and plan.raw_data.config.path == "d.h5"


# -- local components -------------------------------------------------------------------


@attrs.frozen
class LocalSolverConfig:
    alpha: float = 0.5


class LocalSolver:
    """A solver given as package.module:attr."""

    Config = LocalSolverConfig

    def __init__(self, config):
        self.config = config


def test_local_component(registry, monkeypatch):
    module = types.ModuleType("my_local_solvers")
    module.LocalSolver = LocalSolver
    monkeypatch.setitem(sys.modules, "my_local_solvers", module)
    text = engine_plan('solver: {type: "my_local_solvers:LocalSolver", alpha: 0.25}')
    plan = load_plan(text, registry=registry)
    solver = plan.engines[0].config.solver
    assert solver.type == "my_local_solvers:LocalSolver" and solver.config == LocalSolverConfig(0.25)
    assert isinstance(solver.build(registry), LocalSolver)
    (err,) = errors_of(text.replace("0.25", "big"), registry)
    assert err.path_str == "engines[0].solver.alpha"
    (err,) = errors_of(text, registry, allow_local=False)
    assert err.path_str == "engines[0].solver.type" and "not allowed" in err.message
    monkeypatch.setenv("PHASER_ALLOW_LOCAL_COMPONENTS", "0")
    errors_of(text, registry)


# -- round trip -------------------------------------------------------------------------


def test_resolved_plan_round_trip(registry, tmp_path):
    text = engine_plan("""
niter: 3
solver: {type: epie, beta_object: {type: cosine, start: 2}, beta_probe: 1.0e-3}
update_probe: {after: 5}
iter_constraints: [{type: limit_probe_support}]
position_solver: {type: lsqml}
""", extra="slices: {n: 2, thicknesses_A: [10, 12.5]}\noutput: {images: [probe]}\nname: rt\n")
    plan = load_plan(text, registry=registry)
    data = plan_to_dict(plan, registry)
    # fully resolved: every default is written, every spec is {type: name, **config}
    assert data["engines"][0]["noise_model"] == {"type": "amplitude", "eps": 0.01}
    assert data["engines"][0]["solver"]["beta_object"] == {"type": "cosine", "start": 2.0, "end": 0.1, "niter": 100}
    assert data["engines"][0]["update_probe"] == {"after": 5}
    assert data["init"]["object"] == {"type": "vacuum"} and data["output"]["checkpoint_every"] == 10
    path = tmp_path / "plan.yaml"
    dump_plan(plan, path, registry, header="resolved")
    assert path.read_text().startswith("# resolved\nfile_type: phaser_plan\n")
    again = load_plan(path, registry=registry)
    assert again == plan
    assert plan_to_dict(again, registry) == data


@pytest.mark.parametrize("line, path, message, col", [
    # an ``in_`` validator (a real engine's ``cost_per``) passes its attribute
    ("cost_per: batch", "engines[0].cost_per", "'cost_per' must be in ('iteration', 'group') (got 'batch')", 15),
    # a comparison validator (ge) names the field only in its message
    ("update_probe: {every: 0}", "engines[0].update_probe.every", "'every' must be >= 1: 0", 27),
])
def test_validator_errors_name_the_key_and_its_line(line, path, message, col):
    """An attrs validator's error points at the value's line and says the message, not the
    attribute's repr."""
    from phaser_core.registry import get_registry

    text = ("file_type: phaser_plan\nversion: 1\nraw_data: {type: hdf5, path: data.h5}\nengines:\n"
            f"  - type: gradient\n    niter: 2\n    {line}\n")
    (err,) = errors_of(text, get_registry())
    assert (err.path_str, err.message, err.line, err.col) == (path, message, 7, col)


def test_untyped_tuple_and_dict_fields_take_lists_and_mappings():
    """Fields typed as a bare ``tuple`` or ``dict`` (the raster scan's shape and step, the
    focused probe's aberrations) take a YAML list or mapping; they were refused before
    ("expected tuple or null, got a list")."""
    from phaser_core.registry import get_registry

    text = ("file_type: phaser_plan\nversion: 1\nraw_data: {type: hdf5, path: data.h5}\n"
            "init:\n  scan: {type: raster, shape: [20, 20], step_A: [0.6, 0.5]}\n"
            "  probe: {type: focused, aberrations: {C30: 1.0e5, C12: 40, phi12: 0.5}}\n"
            "engines:\n  - type: conventional\n    niter: 1\n")
    plan = load_plan(text, registry=get_registry())
    assert plan.init.scan.config.shape == (20, 20) and plan.init.scan.config.step_A == (0.6, 0.5)
    assert plan.init.probe.config.aberrations == {"C30": 1.0e5, "C12": 40, "phi12": 0.5}
    (err,) = errors_of(text.replace("shape: [20, 20]", "shape: 20x20"), get_registry())
    assert err.path_str == "init.scan.shape" and "got" in err.message
