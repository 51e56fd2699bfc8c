"""``--set`` on real plans: through settings a resolved plan writes as null, into a schedule
written as a bare name, on YAML aliases, and the raster's one-number step."""

from __future__ import annotations

import textwrap

from phaser_core.config import ScheduleSpec
from phaser_core.plan import dump_plan, load_plan
from phaser_core.registry import get_registry

PLAN = textwrap.dedent("""\
    file_type: phaser_plan
    version: 1
    raw_data: {type: hdf5, path: d.h5}
    engines:
      - type: conventional
        solver: &s {type: lsqml, beta_object: cosine}
      - type: conventional
        solver: *s
    """)


def test_set_goes_through_settings_a_resolved_plan_writes_as_null(tmp_path):
    """A run's plan.yaml writes every unset setting (``stop_when: null``, ``slices: null``):
    ``phaser run --resume OUT --set engines[0].stop_when.patience=3`` failed with "is not a
    mapping" where the original plan took it."""
    path = tmp_path / "plan.yaml"
    path.write_text(PLAN)
    resolved = tmp_path / "resolved.yaml"
    dump_plan(load_plan(path), resolved, get_registry())
    assert "stop_when: null" in resolved.read_text()
    for source in (path, resolved):
        plan = load_plan(source, overrides=["engines[0].stop_when.patience=3", "engines[1].slices.n=2",
                                            "engines[1].slices.total_thickness_A=10",
                                            "init.probe.aberrations.C12=3"])
        assert plan.engines[0].config.stop_when.patience == 3 and plan.engines[1].config.slices.n == 2
        assert dict(plan.init.probe.config.aberrations) == {"C12": 3}


def test_set_reaches_into_a_schedule_written_as_a_bare_name(tmp_path):
    """``beta_object: cosine`` (a float | schedule setting) took no ``--set`` below it."""
    path = tmp_path / "plan.yaml"
    path.write_text(PLAN)
    plan = load_plan(path, overrides=["engines[0].solver.beta_object.decay_steps=10"])
    beta = plan.engines[0].config.solver.config.beta_object
    assert isinstance(beta, ScheduleSpec) and beta.type == "cosine" and beta.config.decay_steps == 10


def test_set_on_an_aliased_node_changes_only_the_place_it_names(tmp_path):
    """Two engines sharing ``solver: *s``: the override of one reached the other."""
    path = tmp_path / "plan.yaml"
    path.write_text(PLAN)
    plan = load_plan(path, overrides=["engines[0].solver.beta_probe=0.9"])
    assert plan.engines[0].config.solver.config.beta_probe == 0.9
    assert plan.engines[1].config.solver.config.beta_probe == 0.5  # lsqml's default


def test_the_raster_step_takes_one_number_as_documented(tmp_path):
    path = tmp_path / "plan.yaml"
    path.write_text(PLAN.replace("engines:", "init: {scan: {type: raster, shape: [6, 6], step_A: 0.6}}\nengines:"))
    scan = load_plan(path).init.scan.config
    assert scan.step_A == (0.6, 0.6) and scan.shape == (6, 6)


def test_a_flow_mapping_without_a_space_after_its_colon_is_told_so():
    """``{type:adam}`` is YAML for the one key ``type:adam``; the error says so instead of
    listing the keys the default solver takes."""
    import pytest

    from phaser_core.errors import PlanError

    with pytest.raises(PlanError) as info:
        load_plan(PLAN, overrides=["engines[0].solver={type:epie}"])
    assert "YAML reads {type:epie} as one key 'type:epie'; put a space after the colon: {type: epie}" in str(info.value)
    plan = load_plan(PLAN, overrides=["engines[0].solver={type: epie}"])
    assert plan.engines[0].config.solver.type == "epie"
