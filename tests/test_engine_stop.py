"""An engine's ``stop_when``: it stops before ``niter`` once its loss stops falling, says so,
and a resumed run stops where the uninterrupted one does (the loss record is in the state)."""

from __future__ import annotations

import numpy as np
import pytest
from recon import make_dataset

from phaser_core.observer import Observer
from phaser_core.plan import load_plan
from phaser_core.runner import run_plan
from phaser_std.engines.common import StopConfig


def test_converged_compares_the_recent_best_with_the_best_before():
    stop = StopConfig(patience=2, min_rel_change=0.1)
    assert not stop.converged([10.0, 9.0])  # too short to tell
    assert not stop.converged([10.0, 9.0, 8.0, 8.5])  # 8.0 < 0.9 * 10
    assert stop.converged([10.0, 9.5, 9.2, 9.1])  # 9.1 > 0.9 * 10
    assert not StopConfig(patience=2, min_rel_change=0.0).converged([3.0, 2.0, 1.0, 0.5])


class Notes(Observer):
    def __init__(self, crash_after=None):
        self.texts, self.crash_after = [], crash_after

    def on_note(self, text, ctx):
        self.texts.append(text)

    def after_iteration(self, state, metrics, ctx):
        if state.iteration.total_iter == self.crash_after:
            raise RuntimeError("simulated crash")


@pytest.mark.parametrize("engine", ["conventional", "gradient"])
def test_an_engine_stops_once_its_loss_stops_falling_and_a_resume_stops_there_too(tmp_path, engine):
    data = make_dataset(tmp_path / "d.h5", scan={"shape": [6, 6]})
    plan = {"file_type": "phaser_plan", "version": 1, "raw_data": {"type": "hdf5", "path": str(data)},
            "output": {"checkpoint_every": 1},
            "engines": [{"type": engine, "niter": 40, "stop_when": {"patience": 2, "min_rel_change": 0.2}}]}
    notes = Notes()
    whole = run_plan(load_plan(plan), out_dir=tmp_path / "a", quiet=True, observers=[notes])
    stopped = len(whole.progress.loss)
    assert 3 <= stopped < 40 and whole.iteration.engine_iter == stopped
    rule = StopConfig(patience=2, min_rel_change=0.2)
    assert rule.converged(whole.progress.loss) and not rule.converged(whole.progress.loss[:-1])
    assert any(t.startswith(f"stopped at iteration {stopped} of 40") for t in notes.texts)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_plan(load_plan(plan), out_dir=tmp_path / "b", quiet=True, observers=[Notes(crash_after=stopped - 1)])
    resumed = run_plan(load_plan(plan), out_dir=tmp_path / "b", quiet=True, resume=True)
    assert len(resumed.progress.loss) == stopped
    np.testing.assert_array_equal(resumed.object.data, whole.object.data)


class StopAt(Observer):
    """Ctrl-C (the first SIGINT sets ``ctx.stop_requested``) after a given iteration."""

    def __init__(self, total_iter):
        self.total_iter = total_iter

    def after_iteration(self, state, metrics, ctx):
        if state.iteration.total_iter == self.total_iter:
            ctx.stop_requested = True


def test_a_resume_after_an_engine_that_stopped_early_goes_on_with_the_next_engine(tmp_path):
    """Stopped by Ctrl-C at the iteration where ``stop_when`` ends an engine, the checkpoint
    holds that engine below its niter: the resume must not run it again."""
    from phaser_core.runner import RunInterrupted

    data = make_dataset(tmp_path / "d.h5", scan={"shape": [6, 6]})
    plan = {"file_type": "phaser_plan", "version": 1, "raw_data": {"type": "hdf5", "path": str(data)},
            "engines": [{"type": "conventional", "niter": 40, "stop_when": {"patience": 2, "min_rel_change": 0.2}},
                        {"type": "conventional", "niter": 2, "solver": "epie"}]}
    whole = run_plan(load_plan(plan), out_dir=tmp_path / "a", quiet=True)
    stopped = whole.progress.engine.count(0)
    assert 3 <= stopped < 40 and whole.progress.engine == [0] * stopped + [1, 1]
    with pytest.raises(RunInterrupted):
        run_plan(load_plan(plan), out_dir=tmp_path / "b", quiet=True, observers=[StopAt(stopped)])
    notes = Notes()
    resumed = run_plan(load_plan(plan), out_dir=tmp_path / "b", quiet=True, resume=True, observers=[notes])
    assert resumed.progress.engine == whole.progress.engine
    assert any(t.startswith(f"stopped at iteration {stopped} of 40") for t in notes.texts)
    np.testing.assert_array_equal(resumed.object.data, whole.object.data)
    np.testing.assert_array_equal(resumed.probe.data, whole.probe.data)


def test_the_stop_rule_on_flat_and_negative_losses():
    rule = StopConfig(patience=2, min_rel_change=0.0)
    assert rule.converged([1.0, 1.0, 1.0, 1.0])  # flat: no improvement at all
    assert not rule.converged([1.0, 1.0, 0.9, 1.0])
    rule = StopConfig(patience=2, min_rel_change=0.1)
    assert rule.converged([-10.0, -9.0, -9.5, -9.2])  # worse than the best, below zero
    assert not rule.converged([-10.0, -9.0, -11.5, -9.2])  # 15% better than -10
    assert rule.converged([-10.0, -9.0, -10.5, -9.2])  # 5%: not enough
