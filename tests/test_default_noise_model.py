"""A plan that names no noise model gets ``auto``, which picks one for its data: anscombe
for counted patterns (whole numbers of electrons on every valid pixel), amplitude for any
other patterns (benchmarks/NOTES.md 69)."""

from __future__ import annotations

import attrs
import numpy as np
import pytest
from recon import ground_truth, make_dataset, run

from phaser_core.data import holds_counts
from phaser_std.engines.noise_models import default_noise_model


@attrs.define
class Data:
    patterns: np.ndarray
    mask: np.ndarray | None = None

    @property
    def pattern_shape(self) -> tuple:
        return self.patterns.shape[-2:]


def _counts(shape=(3, 4, 8, 8)) -> np.ndarray:
    return np.random.default_rng(0).poisson(3.0, size=shape).astype(np.float32)


def test_counted_patterns_get_anscombe_and_other_patterns_amplitude():
    counts = _counts()
    assert default_noise_model(Data(counts)) == "anscombe"
    assert default_noise_model(Data(counts.astype(np.uint16))) == "anscombe"
    assert default_noise_model(Data(counts * 1e5)) == "anscombe"  # beyond uint16 storage: still counts
    assert default_noise_model(Data(counts + 0.5)) == "amplitude"  # gain-scaled or background-subtracted
    assert default_noise_model(Data(counts / counts.sum())) == "amplitude"  # normalised
    assert default_noise_model(Data(counts - 1.0)) == "amplitude"  # negative values: not counts


def test_masked_pixels_do_not_decide_whether_patterns_are_counts():
    counts = _counts()
    counts[..., 2, 5] = np.nan  # a dead pixel
    counts[..., 6, 1] = 1e6 + 0.25  # a hot one
    assert default_noise_model(Data(counts)) == "amplitude"
    mask = np.ones((8, 8), bool)
    mask[2, 5] = mask[6, 1] = False
    assert default_noise_model(Data(counts, mask)) == "anscombe"


def test_masked_pixels_of_integer_patterns_do_not_decide_either():
    """Integer patterns (a plugin loader's or the API's) whose dead pixels hold a negative
    marker (-1) that the mask leaves out are counts, as the same values as floats are."""
    counts = _counts().astype(np.int32)
    counts[..., 2, 5] = -1
    mask = np.ones((8, 8), bool)
    mask[2, 5] = False
    assert default_noise_model(Data(counts.astype(np.float32), mask)) == "anscombe"
    assert default_noise_model(Data(counts, mask)) == "anscombe"
    assert default_noise_model(Data(counts)) == "amplitude"


def test_no_patterns_are_no_reason_to_fail():
    assert holds_counts(Data(np.zeros((0, 8, 8), np.float32)))


def test_a_fraction_in_a_later_block_is_found():
    counts = _counts()
    counts[2, 3, 7, 7] = 4.5
    assert not holds_counts(Data(counts), block=64)
    counts[2, 3, 7, 7] = 4.0
    assert holds_counts(Data(counts), block=64)


@pytest.mark.parametrize("engine", [{"type": "conventional", "solver": {"type": "lsqml"}}, {"type": "gradient"}],
                         ids=["lsqml", "gradient"])
@pytest.mark.parametrize("dose,expected", [(1e5, "anscombe"), (None, "amplitude")], ids=["counted", "noiseless"])
def test_an_engine_without_a_noise_model_runs_the_data_default(tmp_path, engine, dose, expected):
    data = make_dataset(tmp_path / "d.h5", scan={"shape": [8, 8]}, dose=dose)
    block = {**engine, "niter": 2, "grouping": {"size": 16}}
    left_null = run(data, [block])
    named = run(data, [{**block, "noise_model": {"type": expected}}])
    np.testing.assert_array_equal(left_null.object.data, named.object.data)
    assert left_null.progress.loss == named.progress.loss


def test_the_run_is_told_which_noise_model_and_grid_it_got(tmp_path):
    from phaser_core.observer import Observer
    from phaser_core.plan import load_plan
    from phaser_core.runner import run_plan

    class Notes(Observer):
        def __init__(self):
            self.texts = []

        def on_note(self, text, ctx):
            self.texts.append((ctx.engine_num, text))

    data = make_dataset(tmp_path / "d.h5", scan={"shape": [6, 6]}, dose=1e5)
    notes = Notes()
    plan = {"file_type": "phaser_plan", "version": 1, "raw_data": {"type": "hdf5", "path": str(data)},
            "engines": [{"type": "conventional", "niter": 1, "sim_shape": [48, 48]},
                        {"type": "gradient", "niter": 1, "noise_model": {"type": "poisson"}}]}
    run_plan(load_plan(plan), quiet=True, observers=[notes])
    # the gradient engine names its model and stays on the grid: nothing to tell
    assert [n for n, _ in notes.texts] == [0, 0, 0]
    assert notes.texts[0][1].startswith("detector grid 64x64 -> 48x48")
    assert notes.texts[1][1].startswith("noise model auto: anscombe (for counted patterns")
    assert notes.texts[2][1].startswith("object step null: constant (")


def test_auto_takes_an_eps_and_an_unresolved_auto_model_says_how_to_resolve_it(tmp_path):
    from phaser_core.plan import load_plan
    from phaser_std.engines.noise_models import AutoConfig, AutoNoise

    plan = load_plan({"file_type": "phaser_plan", "version": 1, "raw_data": {"type": "hdf5", "path": "x.h5"},
                      "engines": [{"type": "gradient", "noise_model": {"eps": 0.01}}]})
    assert plan.engines[0].config.noise_model.type == "auto"
    model, name, reason = AutoNoise(AutoConfig(eps=0.01)).resolve(Data(_counts()))
    assert name == "anscombe" and model.config.eps == 0.01 and model.offset == 0.375
    assert reason == "for counted patterns"
    with pytest.raises(TypeError, match="build_noise_model"):
        AutoNoise().loss(None, None, None)


def test_sparse_counts_get_the_amplitude_model():
    """Under 0.5 e⁻ per valid pixel counted patterns get amplitude, and the reason is given;
    at more, anscombe; a mask's invalid pixels do not count."""
    from phaser_std.engines.noise_models import auto_noise_model, counts_per_pixel

    rng = np.random.default_rng(0)
    sparse = rng.poisson(400 / 64 ** 2, size=(20, 64, 64)).astype(np.float32)  # 400 e⁻ a pattern: ~0.098 a pixel
    dense = rng.poisson(4000 / 64 ** 2, size=(20, 64, 64)).astype(np.float32)  # 4000: 0.98
    assert counts_per_pixel(Data(sparse)) == pytest.approx(sparse.sum() / sparse.size)
    name, reason = auto_noise_model(Data(sparse))
    assert name == "amplitude" and reason == "for sparse counts: 0.096 e⁻ per pixel, under 0.5", reason
    assert auto_noise_model(Data(dense)) == ("anscombe", "for counted patterns")
    assert auto_noise_model(Data(sparse + 0.5)) == ("amplitude", "for non-counted patterns")
    # the same counts on a quarter of the pixels (the rest masked): 0.39 a valid pixel
    mask = np.zeros((64, 64), bool)
    mask[:32, :32] = True
    assert counts_per_pixel(Data(sparse, mask)) == pytest.approx(sparse[:, :32, :32].sum() / (20 * 32 * 32))
    quarter = np.where(mask, rng.poisson(1600 / 32 ** 2, size=(20, 64, 64)), 0).astype(np.float32)  # 1.6 a valid one
    assert auto_noise_model(Data(quarter, mask))[0] == "anscombe"
    assert auto_noise_model(Data(quarter))[0] == "amplitude"  # 0.39 over all 64² pixels


def test_sparse_counts_reconstruct_better_with_the_model_auto_picks(tmp_path):
    """360 e⁻ a pattern (10³ e⁻/Å², 0.088 a pixel), ePIE with our defaults: the
    Anscombe model fits the noise (Pearson 0.60 after 15 iterations, benchmarks/NOTES.md
    105), the amplitude model that auto picks does not (0.79)."""
    from phaser_std.analysis import score_state

    data = make_dataset(tmp_path / "d.h5", dose=1e3)
    block = {"type": "conventional", "niter": 15, "grouping": {"size": 32}, "solver": {"type": "epie"}}
    truth = ground_truth(data)
    auto = score_state(run(data, [block]), truth)["pearson"]
    anscombe = score_state(run(data, [{**block, "noise_model": {"type": "anscombe"}}]), truth)["pearson"]
    assert auto > 0.75 and anscombe < 0.65, (auto, anscombe)
