"""Every example plan validates against the real registry; the README example runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from phaser_core.cli import main
from phaser_core.plan import load_plan
from phaser_std.analysis import score_state
from phaser_std.data.simulate import load_spec
from recon import ground_truth

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
PLANS = sorted(p for p in EXAMPLES.glob("*.yaml") if not p.name.startswith(("sim_", "invalid")))
SPECS = sorted(EXAMPLES.glob("sim_*.yaml"))


def test_there_are_example_plans_for_each_engine():
    names = {p.stem for p in PLANS}
    assert {"epie_single_slice", "lsqml_single_slice", "lsqml_modes", "lsqml_multislice_positions"} <= names


@pytest.mark.parametrize("plan", PLANS, ids=lambda p: p.stem)
def test_example_plan_validates(plan):
    load_plan(plan)


@pytest.mark.parametrize("spec", SPECS, ids=lambda p: p.stem)
def test_example_simulation_spec_loads(spec):
    assert load_spec(spec).detector_shape[0] > 0


def test_readme_example_runs_end_to_end(tmp_path, capsys):
    """The README's first command: simulate sim_small, run lsqml_single_slice (fewer iterations)."""
    data = tmp_path / "data" / "sim_small.h5"
    assert main(["simulate", str(EXAMPLES / "sim_small.yaml"), "--out", str(data)]) == 0
    plan = tmp_path / "plan.yaml"
    plan.write_text((EXAMPLES / "lsqml_single_slice.yaml").read_text())
    out = tmp_path / "run"
    assert main(["run", str(plan), "--out", str(out), "--quiet", "--set", "engines[0].niter=10"]) == 0
    for name in ("final.h5", "plan.yaml", "log.txt", "images/final_object_phase_sum.png"):
        assert (out / name).exists(), name
    from phaser_core.statefile import load_state

    state = load_state(out / "final.h5")
    assert score_state(state, ground_truth(data))["pearson"] > 0.9
