"""An engine's ``slices`` reslices the object it starts from; without a thickness it keeps
that object's total thickness (a plan from the published phaser relies on this)."""

from __future__ import annotations

import numpy as np
import pytest
from recon import make_dataset, run

from phaser_core.errors import PlanError
from phaser_core.plan import load_plan


def _plan(engines: list[dict], **keys) -> dict:
    return {"file_type": "phaser_plan", "version": 1, "raw_data": {"type": "hdf5", "path": "x.h5"},
            "engines": engines, **keys}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("slices") / "d.h5", scan={"shape": [6, 6]})


def test_reslicing_without_a_thickness_keeps_the_objects(data):
    first = {"type": "conventional", "niter": 1, "grouping": {"size": 12}}
    one = run(data, [first, {**first, "slices": {"n": 1}}], slices={"n": 2, "total_thickness_A": 10.0})
    np.testing.assert_allclose(one.object.thicknesses_A, [10.0])
    three = run(data, [first, {**first, "slices": {"n": 1}}, {**first, "slices": {"n": 3}}],
                slices={"n": 2, "total_thickness_A": 10.0})
    np.testing.assert_allclose(three.object.thicknesses_A, [10.0 / 3] * 3)
    assert three.object.data.shape[0] == 3


def test_slices_without_any_thickness_are_a_plan_error_at_the_engine():
    with pytest.raises(PlanError) as exc:
        load_plan(_plan([{"type": "conventional", "slices": {"n": 3}}]))
    (err,) = exc.value.errors
    assert err.path_str == "engines[0].slices" and "total_thickness_A" in err.message
    # a thickness from the plan's slices, an earlier engine or a state file is kept
    load_plan(_plan([{"type": "conventional", "slices": {"n": 3}}], slices={"n": 1, "total_thickness_A": 9}))
    load_plan(_plan([{"type": "conventional", "slices": {"n": 2, "total_thickness_A": 4}},
                     {"type": "gradient", "slices": {"n": 5}}]))
    load_plan(_plan([{"type": "conventional", "slices": {"n": 3}}], init={"state": "s.h5"}))


def test_an_engines_slices_are_checked_like_the_plans():
    with pytest.raises(PlanError) as exc:
        load_plan(_plan([{"type": "gradient", "slices": {"n": 3, "thicknesses_A": [1, 2]}}]))
    (err,) = exc.value.errors
    assert err.path_str == "engines[0].slices.thicknesses_A" and err.message == "has 2 values but n is 3"
