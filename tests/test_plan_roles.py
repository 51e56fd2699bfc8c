"""Plan fields that take one role of a kind (a conventional solver, a constraint) say so."""

from __future__ import annotations

import pytest

from phaser_core.errors import PlanError
from phaser_core.plan import load_plan


def _plan(engine: str) -> str:
    return f"""file_type: phaser_plan
version: 1
raw_data: {{type: hdf5, path: data.h5}}
engines:
  - {engine}
"""


def test_a_gradient_optimizer_is_rejected_as_a_conventional_solver():
    with pytest.raises(PlanError) as info:
        load_plan(_plan("{type: conventional, solver: {type: adam}}"))
    (issue,) = info.value.errors
    assert "is a gradient solver, not a conventional one" in str(issue)
    assert "available: epie, lsqml" in str(issue)
    assert issue.line == 5


def test_a_cost_is_rejected_where_a_constraint_is_expected():
    with pytest.raises(PlanError, match="is a cost regularizer, not a constraint one"):
        load_plan(_plan("{type: conventional, iter_constraints: [{type: obj_tikhonov}]}"))


def test_unknown_conventional_solver_lists_only_conventional_ones():
    with pytest.raises(PlanError) as info:
        load_plan(_plan("{type: conventional, solver: {type: lsqm}}"))
    text = str(info.value)
    assert "did you mean 'lsqml'" in text and "adam" not in text
