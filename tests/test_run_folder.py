"""The run folder: no silent reuse of an old run, readable files, plan checks before a run."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest

from phaser_core import cli
from phaser_core.errors import PlanError
from phaser_core.plan import dump_plan, load_plan
from phaser_core.state import ObjectState, ProbeState, ReconsState
from phaser_core.statefile import save_state

PLAN = """file_type: phaser_plan
version: 1
raw_data: {type: hdf5, path: data.h5}
engines:
  - {type: conventional, niter: 2}
"""


def test_run_refuses_a_folder_holding_a_previous_run(tmp_path, capsys):
    plan = tmp_path / "plan.yaml"
    plan.write_text(PLAN)
    out = tmp_path / "out"
    out.mkdir()
    (out / "final.h5").write_bytes(b"old")
    assert cli.main(["run", str(plan), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "holds a previous run" in err and "--resume" in err and "Traceback" not in err


def test_resume_takes_no_plan(tmp_path, capsys):
    assert cli.main(["run", str(tmp_path / "p.yaml"), "--resume", str(tmp_path)]) == 1
    assert "give no PLAN" in capsys.readouterr().err


def test_unknown_image_kind_is_a_plan_error_at_validation():
    with pytest.raises(PlanError, match="output.images") as info:
        load_plan(PLAN + "output: {images: [object_phse]}\n")
    assert "object_phase" in str(info.value)


def test_flag_every_must_be_positive():
    with pytest.raises(PlanError, match="every"):
        load_plan(PLAN.replace("niter: 2}", "niter: 2, update_probe: {every: 0}}"))


def test_load_plan_leaves_the_callers_mapping_alone():
    raw = {"file_type": "phaser_plan", "version": 1, "raw_data": {"type": "hdf5", "path": "d.h5"},
           "engines": [{"type": "conventional", "niter": 2}]}
    load_plan(raw, overrides=["engines[0].niter=5", "seed=3"])
    assert raw["engines"][0]["niter"] == 2 and "seed" not in raw


def test_written_files_are_readable_by_the_group(tmp_path):
    old = os.umask(0o022)
    try:
        state = ReconsState(probe=ProbeState(data=np.ones((1, 4, 4), np.complex64), sampling_A=(0.1, 0.1)),
                            object=ObjectState(data=np.ones((1, 8, 8), np.complex64), sampling_A=(0.1, 0.1),
                                               corner_A=(0.0, 0.0)),
                            scan_A=np.zeros((2, 2)))
        mode = stat.S_IMODE(os.stat(save_state(state, tmp_path / "s.h5")).st_mode)
        assert mode == 0o644
        dump_plan(load_plan(PLAN), tmp_path / "plan.yaml")
        assert stat.S_IMODE(os.stat(tmp_path / "plan.yaml").st_mode) == 0o644
    finally:
        os.umask(old)
