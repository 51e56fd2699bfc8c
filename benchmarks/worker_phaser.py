"""Run the harness's run_phaser.py (phaserEM; ``cases.SHARED_BENCH``) in its venv, optionally scoring per iteration.

    .anchor-venv/bin/python benchmarks/worker_phaser.py --score-every K --target 0.9 -- RUN_PHASER_ARGS

It adds the process CPU time per iteration (``cpu_times_s``, ``cpu_s_per_iter_median``; all
threads, a measure that a shared machine's load disturbs less than wall time). With
``--score-every K``, the harness's timing
observer is wrapped: every K iterations the summed object phase is scored against the
ground truth (the harness's ``phase_metrics.compare_phase``, as in its ``score``), outside
the timed interval, and ``time_to_target_s`` (sum of iteration times, the first one with
its compilation included, up to the first iteration reaching ``--target`` pearson) and
``scores`` are added to the result JSON line.
"""

from __future__ import annotations

import time

T_PROCESS = time.perf_counter()  # the worker's start: startup_s counts from here

import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cases import SHARED_BENCH  # noqa: E402
from device_memory import device_peak_mib  # noqa: E402

sys.path.insert(0, str(SHARED_BENCH))


def main() -> None:
    argv = sys.argv[1:]
    sep = argv.index("--") if "--" in argv else len(argv)
    own, rest = argv[:sep], argv[sep + 1:]
    score_every, target = 0, None
    for i, a in enumerate(own):
        if a == "--score-every":
            score_every = int(own[i + 1])
        if a == "--target":
            target = float(own[i + 1])
    import run_phaser

    import h5py
    import numpy

    data = rest[rest.index("--data") + 1]
    gt = None
    if score_every:
        from phase_metrics import compare_phase

        with h5py.File(data, "r") as f:
            gt = f["ground_truth/phase"][()]
            gt_s = float(numpy.atleast_1d(f["ground_truth/phase"].attrs["sampling_A"])[0])
            periodic = str(f["ground_truth"].attrs.get("periodic", "no")).lower().startswith("yes")
    extra = {"scores": [], "time_to_target_s": None, "cpu_times_s": [], "startup_s": None}
    orig = run_phaser.make_timer

    def make_timer(time_limit=None):
        timer = orig(time_limit)
        inner = timer.update_iteration
        inner_start = timer.start_engine
        clock = {"c": None}

        def start_engine(init_state):
            if extra["startup_s"] is None:
                extra["startup_s"] = time.perf_counter() - T_PROCESS
            inner_start(init_state)
            clock["c"] = time.process_time()

        def update_iteration(state, i, n, errors):
            inner(state, i, n, errors)
            extra["cpu_times_s"].append(round(time.process_time() - clock["c"], 4))
            k = len(timer.iter_times)
            if score_every and (k % score_every == 0 or i == n):
                from phaser.utils.num import to_numpy

                obj = to_numpy(state.object.data)
                if obj.ndim == 2:
                    obj = obj[None]
                samp = state.object.sampling
                m = compare_phase(numpy.sum(numpy.angle(obj), axis=0), float(samp.sampling[0]), samp.corner,
                                  gt, gt_s, roi_min=samp.region_min, roi_max=samp.region_max, periodic=periodic)
                extra["scores"].append((k, m["pearson"], m["rms_rad"]))
                if extra["time_to_target_s"] is None and target is not None and m["pearson"] >= target:
                    extra["time_to_target_s"] = float(sum(timer.iter_times))
            timer.t_last = time.perf_counter()   # scoring is not timed
            clock["c"] = time.process_time()

        timer.update_iteration = update_iteration
        timer.start_engine = start_engine
        return timer

    run_phaser.make_timer = make_timer
    # capture the harness's final JSON line and add ours
    import io
    import contextlib

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        run_phaser.main(rest)
    lines = [ln for ln in buf.getvalue().splitlines() if ln.startswith("{")]
    res = json.loads(lines[-1])
    res.update(extra)
    if extra["time_to_target_s"] is not None and extra["startup_s"] is not None:
        res["time_to_target_from_start_s"] = extra["startup_s"] + extra["time_to_target_s"]
    res["peak_gpu_mib"] = device_peak_mib(rest[rest.index("--backend") + 1] if "--backend" in rest else "jax")
    cpu = extra["cpu_times_s"][1:]
    res["cpu_s_per_iter_median"] = float(numpy.median(cpu)) if cpu else None
    print(json.dumps(res))


if __name__ == "__main__":
    main()
