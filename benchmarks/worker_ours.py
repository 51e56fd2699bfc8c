"""Run one benchmark case with our package in this process and print one JSON line.

    /work/venv/bin/python benchmarks/worker_ours.py '{"data": ..., "engine_block": {...},
                                                      "backend": "jax", "score_every": 0}'

Timing is the wall time between consecutive ``after_iteration`` notifications (like the
phaserEM harness's observer), the first measured from ``before_engine``; so it includes
everything the engine does between iterations. With ``score_every`` > 0 the object phase is
scored against the ground truth (``phase_metrics.compare_phase``, the harness's scorer)
every that many iterations, outside the timed intervals.
"""

from __future__ import annotations

import time

T_PROCESS = time.perf_counter()  # the worker's start: startup_s counts from here

import json  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
import sys  # noqa: E402

import h5py
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cases import SHARED_BENCH  # noqa: E402
from device_memory import device_peak_mib  # noqa: E402

sys.path.insert(0, str(SHARED_BENCH))
if os.environ.get("PHASER_BENCH_TREE"):
    # time another source tree (e.g. `git archive` of a baseline commit) with the same venv:
    # put it first on sys.path and drop the editable install's finder that would win
    sys.path.insert(0, os.environ["PHASER_BENCH_TREE"])
    os.environ.setdefault("PHASER_DISABLE_PLUGINS", "phaser_example_loader")
    sys.meta_path = [f for f in sys.meta_path if "editable" not in getattr(f, "__module__", "").lower()
                     and "editable" not in repr(f).lower()]


class Timer:
    def __init__(self, data: str, score_every: int, target: float | None):
        self.t_last = None
        self.c_last = None
        self.iter_times: list[float] = []
        self.cpu_times: list[float] = []
        self.losses: list[float] = []
        self.scores: list[tuple[int, float, float]] = []
        self.score_every = score_every
        self.target = target
        self.t_target = None
        self.startup_s = None
        if score_every:
            with h5py.File(data, "r") as f:
                self.gt = f["ground_truth/phase"][()]
                self.gt_s = float(np.atleast_1d(f["ground_truth/phase"].attrs["sampling_A"])[0])
                self.periodic = str(f["ground_truth"].attrs.get("periodic", "no")).startswith("yes")

    def before_run(self, plan, ctx): ...
    def after_run(self, state, ctx): ...
    def on_run_error(self, error, state, ctx): ...
    def after_engine(self, engine, state, ctx): ...

    def before_engine(self, engine, state, ctx):
        self.t_last = time.perf_counter()
        if self.startup_s is None:
            self.startup_s = self.t_last - T_PROCESS
        self.c_last = time.process_time()

    def after_iteration(self, state, metrics, ctx):
        now = time.perf_counter()
        self.cpu_times.append(time.process_time() - self.c_last)
        self.iter_times.append(now - self.t_last)
        self.losses.append(float(metrics["loss"]))
        it = len(self.iter_times)
        if self.score_every and (it % self.score_every == 0 or it == metrics["niter"]):
            p = score(state, self.gt, self.gt_s, self.periodic)
            self.scores.append((it, p["pearson"], p["rms_rad"]))
            if self.t_target is None and self.target is not None and p["pearson"] >= self.target:
                self.t_target = float(sum(self.iter_times))
        self.t_last = time.perf_counter()
        self.c_last = time.process_time()


def score(state, gt, gt_s, periodic) -> dict:
    from phase_metrics import compare_phase

    obj = np.asarray(state.object.data)
    phase = np.sum(np.angle(obj.reshape(-1, *obj.shape[-2:])), axis=0)
    scan = np.asarray(state.scan_A)
    m = compare_phase(phase, float(state.object.sampling_A[0]), np.asarray(state.object.corner_A), gt, gt_s,
                      roi_min=scan.min(axis=0), roi_max=scan.max(axis=0), periodic=periodic)
    m.pop("_aligned")
    return m


def runtime_baseline_mib(backend: str, dtype: str) -> float | None:
    """RSS [MiB] with the imports done and the backend's runtime up, just before the run:
    what the memory planner's estimate (a run's growth, docs/memory.md) comes on top of.
    The backend is built as ``python -m phaser_core.memory measure`` builds it (jax's CPU
    lanes are requested first). None for a tree older than that function (``compare_trees.py``
    runs this worker on old commits)."""
    try:
        from phaser_core.memory import runtime_baseline
    except ImportError:
        return None
    rss = runtime_baseline(backend, dtype)
    return None if rss is None else rss / 2**20


def main(arg: str) -> None:
    job = json.loads(arg)
    t0 = time.perf_counter()
    from phaser_core.plan import load_plan
    from phaser_core.runner import run_plan

    if job["backend"] == "jax":
        import jax  # noqa: F401
    elif job["backend"] == "cupy":
        import cupy  # noqa: F401
    t_import = time.perf_counter() - t0
    plan = {"file_type": "phaser_plan", "version": 1, "backend": job["backend"], "dtype": job.get("dtype", "float32"),
            "seed": int(job.get("seed", 0)), "raw_data": {"type": "hdf5", "path": job["data"], "key": job.get("key", "patterns")},
            "engines": [job["engine_block"]]}
    if job.get("init"):
        plan["init"] = job["init"]  # e.g. {"probe": {"type": "focused", "soft_edge_px": 1}}
    timer = Timer(job["data"], int(job.get("score_every", 0)), job.get("target"))
    baseline_mib = runtime_baseline_mib(job["backend"], job.get("dtype", "float32"))
    t1 = time.perf_counter()
    state = run_plan(load_plan(plan), quiet=True, observers=[timer])
    wall = time.perf_counter() - t1
    times = timer.iter_times
    rest = times[1:]
    out = {
        "tool": "ours", "import_s": t_import, "wall_s": wall,
        "iter_times_s": [round(x, 4) for x in times],
        "first_iter_s": times[0] if times else None,
        "s_per_iter_median": float(np.median(rest)) if rest else None,
        "s_per_iter": float(np.mean(rest)) if rest else None,
        "cpu_times_s": [round(x, 4) for x in timer.cpu_times],
        "cpu_s_per_iter_median": float(np.median(timer.cpu_times[1:])) if rest else None,
        "final_loss": timer.losses[-1] if timer.losses else None,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "baseline_rss_mib": baseline_mib,
        "peak_gpu_mib": device_peak_mib(job["backend"]),
        "scores": timer.scores, "time_to_target_s": timer.t_target, "startup_s": timer.startup_s,
        "time_to_target_from_start_s": (timer.startup_s + timer.t_target
                                        if timer.t_target is not None and timer.startup_s is not None else None),
    }
    if job.get("final_score") and not timer.scores:
        with h5py.File(job["data"], "r") as f:
            gt = f["ground_truth/phase"][()]
            gt_s = float(np.atleast_1d(f["ground_truth/phase"].attrs["sampling_A"])[0])
            periodic = str(f["ground_truth"].attrs.get("periodic", "no")).startswith("yes")
        p = score(state, gt, gt_s, periodic)
        out["pearson"], out["rms_rad"] = p["pearson"], p["rms_rad"]
    elif timer.scores:
        out["pearson"], out["rms_rad"] = timer.scores[-1][1], timer.scores[-1][2]
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1])
