"""A component mapping without ``type`` in a plan file sets the settings of the field's
default component, as ``--set`` does (``init: {probe: {defocus_A: 150}}``)."""

from __future__ import annotations

import pytest

from phaser_core.errors import PlanError
from phaser_core.plan import load_plan

PLAN = """file_type: phaser_plan
version: 1
raw_data: {type: hdf5, path: x.h5}
"""


def test_settings_without_a_type_go_to_the_default_component():
    plan = load_plan(PLAN + "init:\n  probe: {defocus_A: 150}\nengines:\n"
                            "  - {type: conventional, solver: {beta_object: 0.7}}\n")
    assert plan.init.probe.type == "focused" and plan.init.probe.config.defocus_A == 150
    solver = plan.engines[0].config.solver
    assert solver.type == "lsqml" and solver.config.beta_object == 0.7
    assert plan == load_plan(PLAN + "engines: [{type: conventional, solver: {type: lsqml, beta_object: 0.7}}]\n",
                             overrides=["init.probe.defocus_A=150"])


def test_a_mapping_without_a_type_and_no_default_component_is_still_an_error():
    with pytest.raises(PlanError) as exc:
        load_plan(PLAN + "engines:\n  - {type: conventional, position_solver: {momentum: 0.5}}\n")
    (err,) = exc.value.errors
    assert err.path_str == "engines[0].position_solver" and "missing key 'type'" in err.message
    with pytest.raises(PlanError) as exc:  # a default component's unknown key is located as usual
        load_plan(PLAN + "init:\n  probe: {defocus: 150}\nengines: [{type: conventional}]\n")
    (err,) = exc.value.errors
    assert err.path_str == "init.probe" and "defocus" in err.message and (err.line, err.col) == (5, 11)
