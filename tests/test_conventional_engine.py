"""End-to-end tests of the conventional engine (ePIE, LSQML) on data from ``phaser simulate``.

Every dataset is simulated here (seeded) and reconstructed through the full run flow
(plan -> loader -> initialisers -> engine); quality is scored against the simulator's
ground truth with :mod:`phaser_std.analysis`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from phaser_core.errors import PhaserError
from phaser_core.observer import Observer
from phaser_core.statefile import load_state
from phaser_std.analysis import score_state
from helpers import assert_close
from recon import ground_truth, make_dataset, position_rms, run, true_positions

jax = pytest.importorskip("jax", reason="jax is needed for the fast engine tests")

MULTISLICE = {"slices": [{"shift_A": [0, 0], "thickness_A": 25.0},
                         {"shift_A": [1.6, 0.0], "thickness_A": 25.0},
                         {"shift_A": [0.0, 1.4], "thickness_A": 25.0}]}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("conventional")


@pytest.fixture(scope="module")
def single(data_dir) -> Path:
    """16x16 positions, 64² patterns, 1e5 e/Å² (Poisson) plus the noiseless patterns."""
    return make_dataset(data_dir / "single.h5", dose=1e5)


def _engine(solver: str, niter: int, **more) -> dict:
    return {"type": "conventional", "niter": niter, "grouping": {"size": 32}, "solver": {"type": solver}, **more}


@pytest.mark.parametrize("solver,niter", [("epie", 25), ("lsqml", 12)])
@pytest.mark.parametrize("key,threshold", [("patterns_noiseless", 0.95), ("patterns", 0.9)])
def test_single_slice_recovers_the_phase(single, solver, niter, key, threshold):
    state = run(single, [_engine(solver, niter)], backend="jax", key=key)
    score = score_state(state, ground_truth(single))
    assert score["pearson"] >= threshold, score


@pytest.mark.parametrize("multislice", ["joint", "sequential"])
def test_multislice_lsqml_resolves_each_slice_better_than_single_slice(data_dir, multislice):
    data = data_dir / "ms.h5"
    if not data.exists():
        make_dataset(data, convergence_angle_mrad=30.0, object=MULTISLICE)
    gt = ground_truth(data)
    single = run(data, [_engine("lsqml", 20)], backend="jax", key="patterns_noiseless")
    multi = run(data, [{**_engine("lsqml", 20, slices={"n": 3, "total_thickness_A": 75.0}),
                        "solver": {"type": "lsqml", "multislice": multislice}}], backend="jax",
                key="patterns_noiseless")
    assert multi.object.n_slices == 3
    for i in range(3):
        ms = score_state(multi, gt, slice_index=i)["pearson"]
        # the single-slice object scored against slice i (its best possible match is the sum)
        ss_gt = dict(gt, phase=gt["potential"][i])
        ss = score_state(single, ss_gt)["pearson"]
        assert ms > ss + 0.05, (i, ms, ss)
        assert ms > 0.9, (i, ms)


@pytest.mark.parametrize("solver", ["lsqml", "epie"])
def test_position_correction_reduces_a_random_error(data_dir, solver):
    data = data_dir / "jitter.h5"
    if not data.exists():  # 0.3 Å RMS in all: 0.3/√2 per axis
        make_dataset(data, scan={"shape": [16, 16], "step_A": 0.6, "jitter_A": 0.3 / np.sqrt(2)}, seed=1)
    nominal, true = true_positions(data)
    before = position_rms(nominal, true)
    state = run(data, [_engine(solver, 30, position_solver={"type": "momentum"}, update_positions={"after": 3})],
                backend="jax", key="patterns_noiseless")
    after = position_rms(state.scan_A, true)
    assert 0.25 < before < 0.35, before
    assert after < 0.1, (before, after)
    # the mean drift is removed: the scan as a whole does not move
    np.testing.assert_allclose(state.scan_A.mean(axis=0), nominal.mean(axis=0), atol=1e-6)


def test_four_probe_modes_fit_partially_coherent_data_better_than_one(data_dir):
    data = make_dataset(data_dir / "modes.h5", coherence={"source_size_A": 0.4, "n_source": 3}, dose=None)
    one = run(data, [_engine("lsqml", 15, probe_modes=1)], backend="jax")
    four = run(data, [_engine("lsqml", 15, probe_modes=4)], backend="jax")
    assert four.probe.n_modes == 4
    # measured ratio 0.41: this source (3 x 3 Gauss-Hermite points of σ = 0.4 Å) leaves 20% of its
    # power outside the four strongest modes (0.20 with the narrower ±2σ sampling before session 25)
    assert four.progress.loss[-1] < 0.5 * one.progress.loss[-1], (four.progress.loss[-1], one.progress.loss[-1])
    powers = np.sum(np.abs(four.probe.data) ** 2, axis=(-2, -1))
    assert np.all(np.diff(powers) <= 1e-6 * powers.sum()), "modes are not ordered by power"


@pytest.mark.parametrize("noise", ["amplitude", "anscombe", "poisson", "gaussian"])
def test_every_noise_model_converges(single, noise):
    state = run(single, [_engine("lsqml", 12, noise_model={"type": noise})], backend="jax")
    loss = np.asarray(state.progress.loss)
    assert np.all(np.isfinite(loss))
    assert loss[-1] < 0.9 * loss[0], loss  # noisy data: the loss falls to the noise floor
    assert score_state(state, ground_truth(single))["pearson"] > 0.9


@pytest.mark.parametrize("backend", ["numpy", "jax"])
@pytest.mark.parametrize("solver", ["epie", "lsqml"])
def test_loss_decreases_on_average_and_stays_finite(single, backend, solver):
    state = run(single, [_engine(solver, 8, probe_modes=2)], backend=backend)
    loss = np.asarray(state.progress.loss)
    assert np.all(np.isfinite(loss)) and np.all(np.isfinite(state.object.data)) and np.all(np.isfinite(state.probe.data))
    # monotone on average (noisy data: it settles at the noise floor, with small wiggles there)
    half = len(loss) // 2
    assert loss[1:half].mean() < loss[0] and loss[half:].mean() <= 1.001 * loss[1:half].mean(), loss
    assert loss.min() < 0.9 * loss[0], loss


def test_numpy_and_jax_give_the_same_reconstruction(single):
    engines = [_engine("lsqml", 4, position_solver={"type": "momentum"}, update_positions={"after": 1})]
    a = run(single, engines, backend="numpy")
    b = run(single, engines, backend="jax")
    scale = np.abs(a.object.data).max()
    # float32 on both; measured 6.8e-7·max, 5.5e-8 and 2.2e-7 Å (positions move 0.05 Å)
    assert np.max(np.abs(a.object.data - b.object.data)) < 2e-5 * scale
    assert np.max(np.abs(a.probe.data - b.probe.data)) < 2e-5 * np.abs(a.probe.data).max()
    np.testing.assert_allclose(a.progress.loss, b.progress.loss, rtol=1e-5)
    assert np.max(np.abs(a.scan_A - b.scan_A)) < 1e-5
    assert np.max(np.abs(a.scan_A - single_nominal_positions(single))) > 0.01  # they did move


@pytest.mark.parametrize("backend", ["numpy", "jax"])
@pytest.mark.parametrize("solver,slices,object_after", [
    ("lsqml", None, 0), ("lsqml", None, 2), ("lsqml", {"n": 3, "total_thickness_A": 75.0}, 0),
    ("lsqml", {"n": 3, "total_thickness_A": 75.0}, 2), ("epie", None, 0),
    ("epie", {"n": 3, "total_thickness_A": 75.0}, 0), ("epie", {"n": 3, "total_thickness_A": 75.0}, 1),
    ("epie:position", None, 0), ("epie:position", {"n": 3, "total_thickness_A": 75.0}, 0),
    ("epie:position", {"n": 3, "total_thickness_A": 75.0}, 1)])
def test_chunks_equal_whole_groups(data_dir, single, backend, solver, slices, object_after, monkeypatch):
    """LSQML (single slice and multislice joint step, each also with the probe alone, and
    the positions, before the object from the third iteration) and ePIE (single slice;
    multislice, also with the probe alone in the first iteration; both object step
    denominators, ``object_norm`` group and position) with groups of 24
    computed 8 positions at a time: the same reconstruction (probe, object, positions) as
    whole groups, to float32 rounding. 256 positions in groups of 24 leave a padded last
    group, whose masked positions must not reach the sums. LSQML runs with a large γ (0.3),
    so that both paths must regularise its steps alike (the chunked single-slice step takes
    γ's reference from the summed maps, the whole-group step from the positions' values:
    with the old group maximum on one path they differ by ~7e-2, at γ 1e-6 by 3e-7)."""
    import phaser_std.engines.conventional_solvers as cs

    solver, _, object_norm = solver.partition(":")  # "epie:position": ePIE with object_norm: position
    data = single
    if slices:
        data = data_dir / "ms.h5"
        if not data.exists():
            make_dataset(data, convergence_angle_mrad=30.0, object=MULTISLICE)
    name = f"{solver}_{'multislice' if slices else 'single_slice'}_chunked"
    calls = []
    names = [name] + (["lsqml_multislice_probe_chunked"] if solver == "lsqml" and slices and object_after else [])
    for step_name in names:
        monkeypatch.setattr(cs, step_name, lambda *a, _step=getattr(cs, step_name), _name=step_name, **k:
                            calls.append(_name) or _step(*a, **k))

    def engines(chunk):
        block = _engine(solver, 3, grouping={"size": 24, "chunk": chunk}, probe_modes=2, slices=slices,
                        position_solver={"type": "momentum"}, update_positions={"after": 1},
                        update_object={"after": object_after})
        if solver == "lsqml":
            block["solver"]["gamma"] = 0.3
        if object_norm:
            block["solver"]["object_norm"] = object_norm
        return [block]

    whole = run(data, engines(24), backend=backend)
    assert not calls
    chunked = run(data, engines(8), backend=backend)
    assert set(calls) == set(names), f"chunked steps used: {set(calls)}"
    scale = np.abs(whole.object.data).max()
    assert np.max(np.abs(chunked.object.data - whole.object.data)) < 2e-5 * scale
    assert np.max(np.abs(chunked.probe.data - whole.probe.data)) < 2e-5 * np.abs(whole.probe.data).max()
    np.testing.assert_allclose(chunked.progress.loss, whole.progress.loss, rtol=1e-5)
    assert np.max(np.abs(chunked.scan_A - whole.scan_A)) < 1e-5
    assert np.max(np.abs(whole.scan_A - single_nominal_positions(data))) > 0.01  # they did move


def single_nominal_positions(path):
    return true_positions(path)[0]


class _Seen(Observer):
    """Records the overall iteration numbers it is told about."""

    def __init__(self):
        self.iters = []

    def after_iteration(self, state, metrics, ctx):
        self.iters.append(metrics["total_iter"])


class _Crash(Observer):
    """Raises after a given iteration (after the output observer wrote its checkpoint)."""

    def __init__(self, at: int):
        self.at = at

    def after_iteration(self, state, metrics, ctx):
        if metrics["total_iter"] == self.at:
            raise RuntimeError("simulated crash")


def test_a_crashed_run_resumes_to_the_uninterrupted_result(single, tmp_path):
    from phaser_core.plan import load_plan
    from phaser_core.runner import run_plan

    plan = load_plan({
        "file_type": "phaser_plan", "version": 1, "backend": "numpy", "seed": 3,
        "raw_data": {"type": "hdf5", "path": str(single)},
        "output": {"checkpoint_every": 1, "images": []},
        "engines": [_engine("lsqml", 3, position_solver={"type": "momentum"}, update_positions={"after": 1}),
                    _engine("epie", 3, probe_modes=2)],
    })
    full = run_plan(plan, out_dir=tmp_path / "full", quiet=True)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_plan(plan, out_dir=tmp_path / "crash", quiet=True, observers=[_Crash(at=4)])
    seen = _Seen()
    resumed = run_plan(plan, out_dir=tmp_path / "crash", quiet=True, resume=True, observers=[seen])
    assert seen.iters == [5, 6], "the resumed run must start from the checkpoint of iteration 4"
    assert resumed.iteration.total_iter == full.iteration.total_iter == 6
    # numpy, same seed: bit for bit
    np.testing.assert_array_equal(resumed.object.data, full.object.data)
    np.testing.assert_array_equal(resumed.probe.data, full.probe.data)
    np.testing.assert_array_equal(resumed.scan_A, full.scan_A)
    np.testing.assert_array_equal(resumed.progress.loss, full.progress.loss)


@pytest.mark.parametrize("checkpoint_every", [1, 0], ids=["periodic-checkpoint", "on-error-checkpoint"])
def test_a_crash_inside_lsqml_with_position_correction_resumes_to_the_uninterrupted_result(
        single, tmp_path, checkpoint_every):
    """The crash lands inside an LSQML engine with two probe modes and momentum position
    correction (engine iteration 2 of 4, after the positions moved twice), so the resumed
    run must restore the engine's mid-run state: the modes (not resampled again), the
    probe scaling flag and the position solver's velocity in ``state.extra``.

    ``checkpoint_every=1`` resumes from the periodic checkpoint of the crash iteration,
    ``0`` from the one the output observer writes on the error."""
    from phaser_core.plan import load_plan
    from phaser_core.runner import run_plan

    plan = load_plan({
        "file_type": "phaser_plan", "version": 1, "backend": "numpy", "seed": 7,
        "raw_data": {"type": "hdf5", "path": str(single)},
        "output": {"checkpoint_every": checkpoint_every, "images": []},
        "engines": [_engine("epie", 1),
                    _engine("lsqml", 4, probe_modes=2, position_solver={"type": "momentum"},
                            update_positions={"after": 0})],
    })
    full = run_plan(plan, out_dir=tmp_path / "full", quiet=True)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_plan(plan, out_dir=tmp_path / "crash", quiet=True, observers=[_Crash(at=3)])

    ckpt = load_state(tmp_path / "crash" / "checkpoint.h5")
    assert (ckpt.iteration.engine_num, ckpt.iteration.engine_iter, ckpt.iteration.total_iter) == (1, 2, 3)
    assert ckpt.probe.n_modes == 2
    velocity = np.asarray(ckpt.extra["position_velocity"])
    # the checkpoint holds a live position-solver state: without it the test would prove nothing
    assert velocity.shape == ckpt.scan_A.shape and np.max(np.abs(velocity)) > 1e-4, np.max(np.abs(velocity))

    seen = _Seen()
    resumed = run_plan(plan, out_dir=tmp_path / "crash", quiet=True, resume=True, observers=[seen])
    assert seen.iters == [4, 5], "the resumed run must continue engine 1 from its iteration 2"
    assert resumed.iteration.total_iter == full.iteration.total_iter == 5
    assert resumed.probe.n_modes == full.probe.n_modes == 2
    # the positions did move (0.6 Å step, 16x16 scan), so scan_A equality means something
    nominal = single_nominal_positions(single)
    assert np.max(np.abs(full.scan_A - nominal)) > 1e-3
    # complex64 state on numpy; the positions are float64 but built from float32 shifts
    assert_close(resumed.object.data, full.object.data, np.complex64, err_msg="object")
    assert_close(resumed.probe.data, full.probe.data, np.complex64, err_msg="probe")
    assert_close(resumed.scan_A, full.scan_A, np.float32, err_msg="positions")
    assert_close(resumed.extra["position_velocity"], full.extra["position_velocity"], np.float32,
                 err_msg="position-solver velocity")
    assert resumed.extra.get("probe_scaled") is True
    assert_close(resumed.progress.loss, full.progress.loss, np.float32, err_msg="loss history")
    assert resumed.progress.iters == full.progress.iters == [1, 2, 3, 4, 5]


@pytest.mark.slow
def test_sigkill_mid_iteration_then_resume_matches(single, tmp_path):
    plan = tmp_path / "plan.yaml"
    plan.write_text(f"""file_type: phaser_plan
version: 1
backend: numpy
seed: 5
raw_data: {{type: hdf5, path: {single}}}
output: {{checkpoint_every: 1, images: []}}
engines:
  - {{type: conventional, niter: 8, grouping: {{size: 16}}, solver: {{type: lsqml}}}}
""")
    phaser = [sys.executable, "-m", "phaser_core.cli"]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    subprocess.run([*phaser, "run", str(plan), "--out", str(tmp_path / "full"), "--quiet"], check=True, env=env,
                   capture_output=True)
    proc = subprocess.Popen([*phaser, "run", str(plan), "--out", str(tmp_path / "killed"), "--quiet"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = tmp_path / "killed" / "checkpoint.h5"
    deadline = time.time() + 120
    while time.time() < deadline:
        if ckpt.exists():
            try:
                if load_state(ckpt).iteration.total_iter >= 3:
                    break
            except PhaserError:
                pass
        time.sleep(0.05)
    time.sleep(0.1)  # land inside the next iteration
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert load_state(ckpt).iteration.total_iter < 8, "the run finished before it could be killed"
    subprocess.run([*phaser, "run", "--resume", str(tmp_path / "killed"), "--quiet"], check=True, env=env,
                   capture_output=True)
    full = load_state(tmp_path / "full" / "final.h5")
    resumed = load_state(tmp_path / "killed" / "final.h5")
    # the second process continued from the checkpoint rather than starting over
    assert " start at iteration " in (tmp_path / "killed" / "log.txt").read_text()
    np.testing.assert_array_equal(resumed.object.data, full.object.data)
    np.testing.assert_array_equal(resumed.probe.data, full.probe.data)
    np.testing.assert_array_equal(resumed.progress.loss, full.progress.loss)


@pytest.mark.parametrize("backend", ["numpy", "jax"])
def test_step_sizes_follow_a_schedule(single, backend):
    """beta_object = 0 for two iterations (object frozen), then 1: a piecewise schedule."""
    schedule = {"type": "piecewise", "init": 0.0, "boundaries": [2], "values": [1.0]}
    solver = {"type": "epie", "beta_object": schedule, "beta_probe": 0.0}
    frozen = run(single, [{**_engine("epie", 2), "solver": solver}], backend=backend)
    np.testing.assert_array_equal(frozen.object.data, np.ones_like(frozen.object.data))
    moving = run(single, [{**_engine("epie", 3), "solver": solver}], backend=backend)
    assert np.abs(moving.object.data - 1).max() > 0.05


@pytest.mark.parametrize("kind,initial", [("epie", 1.0), ("lsqml", 0.5)])
def test_an_object_step_left_null_falls_on_one_slice_only(kind, initial):
    """β_object null: the solver's initial step until engine iteration 5, then 0.7x, from
    10 0.5x, from 20 0.3x, on one slice with counted data under 10⁴ e⁻/Å²; constant with
    several slices, from that dose on, for data whose dose is unknown (not counts), for a
    number the plan gives, and for the probe's step."""
    from phaser_core.registry import get_registry
    from phaser_std.engines.conventional_solvers import EpieConfig, EpieSolver, LsqmlConfig, LsqmlSolver

    solver_cls, config_cls = {"epie": (EpieSolver, EpieConfig), "lsqml": (LsqmlSolver, LsqmlConfig)}[kind]
    reg = get_registry()

    def steps(solver, name):
        return [solver.hyperparams(it, reg)[name] for it in (0, 4, 5, 9, 10, 19, 20, 99)]

    one = solver_cls(config_cls()).for_slices(1).for_dose(900.0)
    assert steps(one, "beta_object") == pytest.approx([initial * f for f in (1, 1, .7, .7, .5, .5, .3, .3)])
    assert steps(one, "beta_probe") == pytest.approx([initial] * 8)
    constant = [initial] * 8
    assert steps(solver_cls(config_cls()).for_slices(4).for_dose(900.0), "beta_object") == pytest.approx(constant)
    assert steps(solver_cls(config_cls()).for_slices(1).for_dose(1e4), "beta_object") == pytest.approx(constant)
    assert steps(solver_cls(config_cls()).for_slices(1).for_dose(None), "beta_object") == pytest.approx(constant)
    assert steps(solver_cls(config_cls(beta_object=0.8)).for_slices(1).for_dose(900.0),
                 "beta_object") == pytest.approx([0.8] * 8)
    # a solver never told its slice count or dose (a subclass's for_slices not calling
    # super, a plugin's engine) keeps it constant
    assert steps(solver_cls(config_cls()).for_dose(900.0), "beta_object") == pytest.approx(constant)
    assert steps(solver_cls(config_cls()).for_slices(1), "beta_object") == pytest.approx(constant)


def test_the_dose_that_decides_the_object_step(tmp_path):
    """The engine tells the solver the dose of counted data (mean counts over the area per
    position) and says what the null step does: falling on the shipped 300 e⁻ abTEM file
    (878 e⁻/Å²), constant on the 10⁵ e⁻ one and on the same patterns as floats (not counts)."""
    import shutil

    from phaser_core.data import RawData
    from phaser_std.engines.conventional_solvers import counted_dose

    counts = np.full((9, 8, 8), 3.0, np.float32)
    raster = RawData(patterns=counts, scan_step_A=(0.5, 0.4))
    assert counted_dose(raster) == pytest.approx(64 * 3 / 0.2)
    assert counted_dose(RawData(patterns=counts + 0.5, scan_step_A=(0.5, 0.4))) is None
    grid = np.stack(np.meshgrid(np.arange(3) * 0.5, np.arange(3) * 0.5, indexing="ij"), -1).reshape(-1, 2)
    assert counted_dose(RawData(patterns=counts), grid) == pytest.approx(64 * 3 / 0.25)  # positions of the run

    def said(path):
        out = tmp_path / path.stem
        run(path, [{"type": "conventional", "niter": 1, "solver": {"type": "epie"}}], out_dir=out)
        return next(line for line in (out / "log.txt").read_text().splitlines() if "object step null" in line)

    data = Path(__file__).parent / "data"
    assert "falling (878 e⁻/Å², under 10000" in said(data / "abtem_srtio3_300e.h5")
    # taken once per run and kept with the state: a resumed run, whose corrected positions
    # may give another area, and later engines decide the same way
    from phaser_std.engines.conventional import _run_dose

    kept = load_state(tmp_path / "abtem_srtio3_300e" / "final.h5").extra["dose_e_per_A2"]
    assert kept == pytest.approx(878, abs=1)
    assert _run_dose({"dose_e_per_A2": 2e4}, raster, None) == 2e4
    assert _run_dose({"dose_e_per_A2": float("nan")}, raster, None) is None
    fresh: dict = {}
    assert _run_dose(fresh, raster, None) == pytest.approx(64 * 3 / 0.2) == fresh["dose_e_per_A2"]
    high = said(data / "abtem_srtio3.h5")
    dose = float(high.split("constant (")[1].split(" e⁻/Å²")[0])
    assert 2e5 < dose < 4e5 and "not under 10000" in high, high  # 10⁵ e⁻ over 0.586² Å²
    floats = tmp_path / "floats.h5"
    shutil.copy(data / "abtem_srtio3.h5", floats)
    with h5py.File(floats, "a") as f:
        p = f["patterns"][()].astype(np.float32) * 1.5
        del f["patterns"]
        f["patterns"] = p
    assert "constant (the patterns are not counts" in said(floats)


@pytest.mark.parametrize("solver", ["epie", "lsqml"])
def test_probe_is_refined_from_a_wrong_initial_defocus(single, solver):
    """The data have 50 Å defocus; the initial probe assumes 80 Å."""
    gt = ground_truth(single)
    start = run(single, [_engine(solver, 20, update_probe=False)], backend="jax",
                init={"probe": {"type": "focused", "defocus_A": 80.0}})
    state = run(single, [_engine(solver, 20)], backend="jax", init={"probe": {"type": "focused", "defocus_A": 80.0}})
    assert score_state(state, gt)["pearson"] >= 0.95

    def overlap(probe):
        p, t = np.asarray(probe)[0], np.asarray(gt["probe"])[0]
        return abs(np.vdot(p, t)) / (np.linalg.norm(p) * np.linalg.norm(t))

    # measured: 0.79 with the probe frozen; 0.93 (ePIE) and 0.87 (LSQML) refined
    assert overlap(state.probe.data) > 0.85 > overlap(start.probe.data)


@pytest.mark.parametrize("engine", ["conventional", "gradient"])
def test_multislice_model_keeps_a_probe_wider_than_two_thirds_of_nyquist(tmp_path, engine):
    """Noiseless 3-slice data of a vacuum-like object whose 25 mrad aperture lies at 0.75 of
    the grid's Nyquist (32² px, 0.083 /Å): with the true probe and object held fixed, the
    engines' model reproduces the patterns. A propagator cut at 2/3 of Nyquist would remove
    the aperture's rim at every slice (loss ~1e3 times larger)."""
    data = make_dataset(tmp_path / "wide.h5", detector_shape=[32, 32], reciprocal_sampling_invA=0.083,
                        scan={"shape": [4, 4], "step_A": 0.6},
                        object={"atoms": [], "n_slices": 3, "thickness_A": 10.0})
    block = {"type": engine, "niter": 1, "update_object": False, "update_probe": False,
             "grouping": {"size": 16}, "slices": {"n": 3, "total_thickness_A": 30.0}}
    if engine == "conventional":
        block["solver"] = {"type": "epie"}
    state = run(data, [block])
    loss = float(state.progress.loss[-1])
    with h5py.File(data) as f:
        counts = float(np.sum(f["patterns"][...]))
    # the simulation kept the whole probe too: every electron of 1e5 e/Å² x 0.36 Å² arrives
    assert counts == pytest.approx(16 * 1e5 * 0.36, rel=1e-5)
    assert loss < 1e-6 * counts, (loss, counts)


def test_resume_keeps_the_band_limit_when_the_data_give_no_convergence_angle(tmp_path):
    """Aperture at 0.69 of Nyquist (64² px of 0.045 /Å), beyond the 2/3 rule, and no
    convergence angle in the file (the plan's probe initializer gives it): the band limit
    then comes from the starting probe's bandwidth, recorded in
    ``extra["probe_aperture_invA"]``. The run resumed after 8 of 10 iterations, whose probe
    has been refined, builds the same propagators and ends bit for bit where the
    uninterrupted run does (taken afresh from the refined probe, the limit moved from 0.72
    to 0.81 of Nyquist and the objects differed by up to 0.08)."""
    from phaser_core.observer import Observer
    from phaser_core.plan import load_plan
    from phaser_core.physics_constants import wavelength_A
    from phaser_core.runner import run_plan

    data = make_dataset(tmp_path / "d.h5", reciprocal_sampling_invA=0.045, dose=1e4,
                        object={"slices": [{"shift_A": [0, 0], "thickness_A": 20.0},
                                           {"shift_A": [1.0, 0], "thickness_A": 20.0}]})
    with h5py.File(data, "a") as f:
        del f.attrs["convergence_angle_mrad"]

    class Crash(Observer):
        def after_iteration(self, state, metrics, ctx):
            if metrics["total_iter"] == 8:
                raise RuntimeError("simulated crash")

    plan = load_plan({
        "file_type": "phaser_plan", "version": 1, "backend": "numpy", "seed": 3,
        "raw_data": {"type": "hdf5", "path": str(data)}, "output": {"checkpoint_every": 1, "images": []},
        "init": {"probe": {"type": "focused", "conv_angle_mrad": 25.0}},
        "engines": [{"type": "conventional", "niter": 10, "grouping": {"size": 32}, "solver": {"type": "lsqml"},
                     "slices": {"n": 2, "total_thickness_A": 40.0}}],
    })
    full = run_plan(plan, out_dir=tmp_path / "full", quiet=True)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_plan(plan, out_dir=tmp_path / "crash", quiet=True, observers=[Crash()])
    resumed = run_plan(plan, out_dir=tmp_path / "crash", quiet=True, resume=True)
    assert full.extra["probe_aperture_invA"] == pytest.approx(25e-3 / wavelength_A(200e3), rel=0.05)
    np.testing.assert_array_equal(resumed.object.data, full.object.data)
    np.testing.assert_array_equal(resumed.probe.data, full.probe.data)


def test_another_thickness_reuses_the_compiled_programs(tmp_path):
    """The propagators (and the gradient engine's slice distances) are arguments of the
    compiled steps, not constants in them: a multislice run with another slice thickness
    (same shapes) compiles nothing new, it loads every program from jax's compilation
    cache. ePIE, LSQML and the gradient engine (with its tilt refined, which the distances
    enter), and LSQML after it with the tilt it refined per position."""
    pytest.importorskip("jax", reason="jax is not installed")
    data = make_dataset(tmp_path / "d.h5", detector_shape=[32, 32], scan={"shape": [6, 6]})
    code = f"""
import sys
sys.path.insert(0, {str(Path(__file__).resolve().parent)!r})
import recon
slices = {{"n": 3, "total_thickness_A": float(sys.argv[1])}}
tilt = {{"tilt": {{"type": "adam", "learning_rate": 0.2}}}}
lsqml = {{"type": "conventional", "solver": {{"type": "lsqml"}}}}
per_position = {{"type": "gradient", "solvers": tilt, "update_tilt": True, "tilt": "per_position"}}
for blocks in ([lsqml], [{{"type": "conventional", "solver": {{"type": "epie"}}}}],
               [{{"type": "gradient", "solvers": tilt, "update_tilt": True}}], [per_position, lsqml]):
    recon.run({str(data)!r}, [dict(b, niter=2, grouping={{"size": 12}}, slices=slices) for b in blocks],
              backend="jax")
"""
    cache = tmp_path / "cache"
    env = dict(os.environ, PHASER_CACHE_DIR=str(cache), PHASER_JAX_CACHE="1", PHASER_JAX_CACHE_MIN_COMPILE_S="0")

    def entries():
        return {p.name for p in (cache / "jax").iterdir()}

    subprocess.run([sys.executable, "-c", code, "30"], check=True, env=env, capture_output=True, text=True)
    first = entries()
    assert first, "nothing was written to the compilation cache"
    subprocess.run([sys.executable, "-c", code, "45"], check=True, env=env, capture_output=True, text=True)
    assert entries() == first, f"compiled anew for another thickness: {sorted(entries() - first)}"


def _epie_group_update(bk, starts, psi, chi, object_norm, shape=(12, 14)):
    """One ePIE object update (β 1) of a zero object slice from waves ``psi`` (B, 1, Ny, Nx)
    and updates ``chi`` at corners ``starts`` (whole-group path), on the host."""
    from phaser_std.engines.conventional_solvers import EpieConfig, EpieSolver

    solver = EpieSolver(EpieConfig(object_norm=object_norm))
    obj = bk.xp.zeros(shape, dtype=bk.complex_dtype)
    mask = bk.xp.ones(psi.shape[0], dtype=bk.real_dtype)
    new, delta, _ = solver.object_update(bk, obj, bk.asarray(starts), bk.asarray(psi), bk.asarray(chi), mask)
    return bk.to_numpy(delta)


def test_epie_object_norm_position_is_each_positions_own_step_averaged_where_they_overlap():
    """``object_norm: position``: where positions do not overlap, a group's object update
    is the sum of each position's own ePIE update (divided by its largest |ψ|²); for
    χ = ψ·δO a pixel never moves further than δO (β 1), and it moves by δO exactly where
    the group's summed illumination reaches one position's peak. ``group`` divides by the
    summed map's largest value instead: smaller steps where positions overlap."""
    from conftest import build_backend

    bk = build_backend("numpy", "float64")
    rng = np.random.default_rng(0)
    n = 6
    yy, xx = np.mgrid[:n, :n] - (n - 1) / 2
    probe = np.exp(-(yy**2 + xx**2) / 4.0)[None].astype(complex)  # peak |P|² = 0.94 (even n)
    d_obj = (rng.normal(size=(12, 14)) + 1j * rng.normal(size=(12, 14))) * 0.1

    def waves(starts):
        psi = np.stack([probe] * len(starts))
        chi = np.stack([probe * d_obj[y:y + n, x:x + n][None] for y, x in starts])
        return psi, chi

    # apart: the sum of the positions' own updates
    apart = [(0, 0), (6, 8)]
    psi, chi = waves(apart)
    together = _epie_group_update(bk, apart, psi, chi, "position")
    alone = sum(_epie_group_update(bk, [s], psi[i:i + 1], chi[i:i + 1], "position") for i, s in enumerate(apart))
    np.testing.assert_allclose(together, alone, atol=1e-12)
    peak = np.max(np.abs(probe) ** 2)
    y, x = apart[1]
    np.testing.assert_allclose(together[y:y + n, x:x + n], np.abs(probe[0]) ** 2 * d_obj[y:y + n, x:x + n] / peak,
                               atol=1e-12)

    # overlapping (a compact group): the step per pixel is w·δO with 0 <= w <= 1, w = 1 where
    # the summed illumination passes one position's peak
    close = [(0, 0), (0, 1), (1, 0), (1, 1), (2, 2)]
    psi, chi = waves(close)
    step = _epie_group_update(bk, close, psi, chi, "position")
    illum = np.zeros((12, 14))
    for y, x in close:
        illum[y:y + n, x:x + n] += np.abs(probe[0]) ** 2
    lit = illum > 1e-9
    w = np.zeros_like(illum)
    w[lit] = (step[lit] / d_obj[lit]).real
    np.testing.assert_allclose((step[lit] / d_obj[lit]).imag, 0.0, atol=1e-9)
    assert w.min() >= 0.0 and w.max() <= 1.0 + 1e-9
    np.testing.assert_allclose(w[illum >= peak], 1.0, atol=1e-9)
    # the group rule's step is the per-position one scaled down by the largest overlap
    group = _epie_group_update(bk, close, psi, chi, "group")
    np.testing.assert_allclose(group[lit], (illum * d_obj)[lit] / illum.max(), atol=1e-9)
    assert illum.max() > 2 * peak


def test_momentum_steps_limited_unevenly_keep_the_scan_centre():
    """One outlier's estimate among 100 small ones: its mean, removed before the limit,
    dragged every other position by 0.1 Å, and the limit then left a mean behind, so the
    whole scan drifted (0.0475 Å); the limited steps' mean is removed instead."""
    from phaser_std.engines.positions import MomentumPositionConfig, MomentumPositionSolver

    rng = np.random.default_rng(0)
    scan = rng.uniform(0, 10, (100, 2))
    shift = rng.normal(0, 0.01, (100, 2))
    shift[0] = (0.0, 10.0)
    solver = MomentumPositionSolver(MomentumPositionConfig(step_size=1.0, momentum=0.5, max_step_A=0.2))
    extra: dict = {}
    for _ in range(3):
        new = solver.update(scan, shift, extra)
        np.testing.assert_allclose(new.mean(axis=0), scan.mean(axis=0), atol=1e-12)
        step = np.linalg.norm(new - scan, axis=1)
        assert step[0] < 0.2 * 1.02 and step[1:].max() < 0.08  # not dragged by the outlier (0.1 Å before)
        scan = new
