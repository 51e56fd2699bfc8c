"""Schedules: values pinned, optax and pure-Python formulas agree, plan-level evaluation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from phaser_core.config import ScheduleSpec, schedule_value
from phaser_core.registry import get_registry
from phaser_std.engines import schedules as S


def _make(name, use_optax, **cfg):
    comp = get_registry().get("schedule", name)
    return comp.obj(comp.make_config(**cfg), use_optax=use_optax)


CASES = [
    ("constant", {"value": 0.3}),
    ("piecewise", {"init": 1.0, "boundaries": (3, 7), "values": (0.5, 0.0)}),
    ("cosine", {"init": 0.1, "final": 0.01, "decay_steps": 10}),
    ("exponential", {"init": 2.0, "rate": 0.5, "steps": 4}),
    ("exponential", {"init": 2.0, "rate": 0.5, "steps": 4, "staircase": True, "final": 0.3}),
    ("warmup_cosine", {"init": 0.0, "peak": 1.0, "warmup_steps": 3, "decay_steps": 10, "final": 0.1}),
]


@pytest.mark.parametrize("name,cfg", CASES)
def test_optax_and_python_agree(name, cfg):
    pytest.importorskip("optax")
    fo = _make(name, True, **cfg)
    fp = _make(name, False, **cfg)
    for it in range(15):
        vo, vp = fo(it), fp(it)
        assert isinstance(vo, float) and isinstance(vp, float)
        assert vo == pytest.approx(vp, rel=1e-6, abs=1e-7), (it, vo, vp)


@pytest.mark.parametrize("use_optax", [False, None])
def test_values_pinned(use_optax):
    f = _make("piecewise", use_optax, init=1.0, boundaries=(3, 7), values=(0.5, 0.0))
    assert [f(i) for i in (0, 2, 3, 6, 7, 100)] == [1.0, 1.0, 0.5, 0.5, 0.0, 0.0]
    f = _make("cosine", use_optax, init=0.1, final=0.01, decay_steps=10)
    assert f(0) == pytest.approx(0.1) and f(10) == pytest.approx(0.01) and f(50) == pytest.approx(0.01)
    assert f(5) == pytest.approx(0.055, rel=1e-6)
    f = _make("exponential", use_optax, init=2.0, rate=0.5, steps=4)
    assert f(4) == pytest.approx(1.0, rel=1e-6) and f(2) == pytest.approx(2 * 0.5 ** 0.5, rel=1e-6)
    f = _make("warmup_cosine", use_optax, init=0.0, peak=1.0, warmup_steps=4, decay_steps=12, final=0.0)
    assert f(2) == pytest.approx(0.5, rel=1e-6) and f(4) == pytest.approx(1.0, rel=1e-6)
    assert f(8) == pytest.approx(0.5, rel=1e-5) and f(12) == pytest.approx(0.0, abs=1e-7)


def test_constant_and_cosine_without_optax_are_pure_python():
    f = S.make_cosine(S.CosineSchedule(init=1.0, final=0.0, decay_steps=4), use_optax=False)
    assert f(2) == pytest.approx(0.5 * (1 + math.cos(math.pi / 2)))
    assert S.make_constant(S.ConstantSchedule(value=3.0))(99) == 3.0


def test_schedule_spec_in_schedulable_value():
    reg = get_registry()
    spec = ScheduleSpec("cosine", S.CosineSchedule(init=1.0, final=0.0, decay_steps=2))
    assert schedule_value(spec, 1, reg) == pytest.approx(0.5, rel=1e-6)
    assert schedule_value(0.25, 5, reg) == 0.25


def test_invalid_configs_raise_clear_errors():
    with pytest.raises(ValueError, match="one value per boundary"):
        S.PiecewiseSchedule(boundaries=(1, 2), values=(0.1,))
    with pytest.raises(ValueError, match="increasing"):
        S.PiecewiseSchedule(boundaries=(3, 2), values=(0.1, 0.2))
    with pytest.raises(ValueError, match="decay_steps"):
        S.make_cosine(S.CosineSchedule(decay_steps=0), use_optax=False)
    with pytest.raises(ValueError, match="warmup_steps"):
        S.make_warmup_cosine(S.WarmupCosineSchedule(warmup_steps=10, decay_steps=10), use_optax=False)
    assert np.isfinite(S.make_exponential(S.ExponentialSchedule(), use_optax=False)(3))


def test_the_schedule_example_in_the_plan_docs_is_valid():
    """docs/plans.md's inline schedule example uses the schedule's real keys (it named
    ``start``/``end``, which a plan refuses)."""
    import re
    from pathlib import Path

    from phaser_core.plan import load_plan

    text = (Path(__file__).resolve().parents[1] / "docs" / "plans.md").read_text(encoding="utf-8")
    examples = re.findall(r"`beta_object: (\{type: [^`]+\})`", text)
    assert examples
    for example in examples:  # load_plan raises PlanError on an unknown key
        load_plan("file_type: phaser_plan\nraw_data: {type: npy, path: p.npy}\n"
                  f"engines: [{{type: conventional, solver: {{type: lsqml, beta_object: {example}}}}}]\n",
                  registry=get_registry())
