"""Calibrate the memory planner: measure the peak resident-memory growth of real runs
(each in a fresh process) and compare it with ``phaser plan-memory``'s estimate.

Not a test (run by hand; minutes on a laptop):

    python tests/memory_calibration.py [--out DIR] [--only numpy|jax] [--json FILE] [--fit] [--repeat K]

Datasets are simulated into DIR (cached). Prints a markdown table (case, estimate,
measured, ratio) as in docs/memory.md; each case is measured ``--repeat`` times (default 3)
and the largest kept (the peak a run can reach: a small jax run's varies by ~20 MiB with
XLA's compile threads); measurements already in ``--json FILE`` are reused
(``--estimate-only`` measures nothing new). ``--fit`` then prints the constants of
``phaser_std.engines.memory.CONSTANTS`` fitted (bounded least squares on the relative error)
to the measurements in FILE; paste them there after a change to an engine.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

SIZES = {"16x16/64": (16, 64), "32x32/64": (32, 64), "16x16/128": (16, 128), "32x32/128": (32, 128)}

#: (backend, engine, size, slices, modes, group, extra engine keys)
CASES = [
    ("numpy", "lsqml", "16x16/64", 1, 1, 16, {}),
    ("numpy", "lsqml", "16x16/64", 3, 4, 64, {}),
    ("numpy", "epie", "32x32/64", 1, 4, 64, {}),
    ("numpy", "lsqml", "32x32/64", 3, 4, 64, {"scale_probe": False}),
    ("numpy", "lsqml", "16x16/128", 1, 1, 16, {}),
    ("numpy", "lsqml", "16x16/128", 3, 4, 64, {}),
    ("numpy", "lsqml", "32x32/128", 3, 4, 64, {}),
    ("jax", "lsqml", "16x16/64", 1, 1, 16, {}),
    ("jax", "lsqml", "16x16/64", 3, 4, 64, {}),
    ("jax", "epie", "32x32/64", 1, 4, 64, {}),
    ("jax", "lsqml", "32x32/64", 3, 4, 64, {"scale_probe": False}),
    ("jax", "lsqml", "16x16/128", 1, 1, 16, {}),
    ("jax", "lsqml", "16x16/128", 3, 4, 64, {}),
    ("numpy", "gradient", "16x16/64", 1, 1, 16, {}),
    ("numpy", "gradient", "16x16/64", 3, 4, 64, {"scale_probe": False}),
    ("numpy", "gradient", "16x16/128", 1, 4, 64, {}),
    ("jax", "gradient", "16x16/64", 1, 1, 16, {}),
    ("jax", "gradient", "16x16/64", 3, 4, 64, {"scale_probe": False}),
    ("jax", "gradient", "16x16/128", 1, 4, 64, {}),
    ("numpy", "lsqml", "16x16/128", 1, 4, 64, {"scale_probe": False}),
    ("jax", "lsqml", "16x16/128", 1, 4, 64, {"scale_probe": False}),
    ("numpy", "gradient", "16x16/128", 3, 1, 64, {"scale_probe": False}),
    ("jax", "gradient", "16x16/128", 3, 1, 64, {"scale_probe": False}),
    ("numpy", "lsqml", "16x16/64", 1, 1, 16, {"scale_probe": False}),
    ("numpy", "lsqml", "16x16/128", 3, 4, 64, {"scale_probe": False}),
    ("jax", "lsqml", "16x16/64", 1, 1, 16, {"scale_probe": False}),
    ("jax", "lsqml", "16x16/128", 3, 4, 64, {"scale_probe": False}),
    ("jax", "gradient", "16x16/64", 1, 1, 16, {"scale_probe": False}),
    ("numpy", "gradient", "16x16/128", 3, 4, 64, {"scale_probe": False}),
    ("jax", "gradient", "16x16/128", 3, 4, 64, {"scale_probe": False}),
]

#: first measured after a fit to CASES, to check the model (held out then); ``--fit`` now uses
#: them too (docs/memory.md)
VALIDATION = [
    ("jax", "lsqml", "32x32/128", 3, 4, 64, {}),
    ("numpy", "gradient", "32x32/64", 1, 4, 16, {}),
    ("jax", "gradient", "32x32/64", 3, 1, 64, {}),
    ("jax", "epie", "16x16/128", 1, 4, 16, {}),
    ("numpy", "lsqml", "32x32/64", 1, 1, 256, {"scale_probe": False}),
    ("jax", "lsqml", "32x32/64", 3, 1, 256, {"scale_probe": False}),
    ("numpy", "lsqml", "32x32/128", 3, 4, 256, {"scale_probe": False}),
    ("jax", "lsqml", "32x32/128", 3, 4, 256, {"scale_probe": False}),
    # added with the chunked multislice ePIE step (session 5; in the refit since)
    ("numpy", "epie", "16x16/128", 3, 4, 64, {"scale_probe": False}),
    ("jax", "epie", "16x16/128", 3, 4, 64, {"scale_probe": False}),
    ("jax", "epie", "32x32/64", 3, 1, 256, {"scale_probe": False}),
    # added with the loops over the slices (session 12): 8 and 20 slices, whose programs no
    # longer grow with them (the gradient engine's autodiff step still does)
    ("jax", "epie", "16x16/64", 8, 1, 64, {}),
    ("jax", "lsqml", "16x16/64", 8, 4, 64, {}),
    ("jax", "gradient", "16x16/64", 8, 1, 64, {}),
    ("jax", "epie", "16x16/64", 20, 1, 64, {}),
    ("jax", "lsqml", "16x16/64", 20, 1, 64, {}),
    ("jax", "gradient", "16x16/64", 20, 1, 64, {}),
    ("numpy", "lsqml", "16x16/64", 8, 1, 64, {}),
    ("numpy", "epie", "16x16/64", 20, 1, 64, {}),
]


def dataset(out: Path, size: str) -> Path:
    from recon import make_dataset

    n, q = SIZES[size]
    path = out / f"d{n}_{q}.h5"
    if not path.exists():
        make_dataset(path, detector_shape=[q, q], reciprocal_sampling_invA=0.1 * 64 / q,
                     scan={"shape": [n, n], "step_A": 0.6}, dose=None)
    return path


def case_plan(out: Path, case: tuple) -> Path:
    backend, engine, size, slices, modes, group, extra = case
    eng = {"niter": 1, "grouping": {"size": group}, "probe_modes": modes, **extra}
    if slices > 1:
        eng["slices"] = {"n": slices, "total_thickness_A": 10.0 * slices}
    if engine == "gradient":
        eng["type"] = "gradient"
    else:
        eng.update(type="conventional", solver={"type": engine})
    plan = {"file_type": "phaser_plan", "version": 1, "backend": backend,
            "raw_data": {"type": "hdf5", "path": str(dataset(out, size))}, "engines": [eng]}
    name = f"{backend}_{engine}_{size.replace('/', '_')}_S{slices}_M{modes}_B{group}" + (
        "_noscale" if extra.get("scale_probe") is False else "")
    path = out / f"{name}.json"
    path.write_text(json.dumps(plan))
    return path


def label(case: tuple) -> str:
    backend, engine, size, slices, modes, group, extra = case
    s = f"{backend} {engine} {size} S={slices} M={modes} B={group}"
    return s + (" no probe scaling" if extra.get("scale_probe") is False else "")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="/tmp/phaser_memcal")
    ap.add_argument("--only", default=None)
    ap.add_argument("--json", default=None)
    ap.add_argument("--estimate-only", action="store_true")
    ap.add_argument("--fit", action="store_true", help="fit the constants to the measurements in --json")
    ap.add_argument("--repeat", type=int, default=3,
                    help="fresh runs per case, the largest kept (default 3: a small jax run's peak varies "
                         "by ~20 MiB)")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from phaser_core.memory import estimate_plan, measure_in_subprocess
    from phaser_core.plan import load_plan

    old = {}
    if args.json and Path(args.json).exists():
        old = {r["case"]: r for r in json.loads(Path(args.json).read_text())}
    rows = []
    print("| case | estimate [MiB] | measured [MiB] | ratio |\n| --- | ---: | ---: | ---: |", flush=True)
    for case in CASES + VALIDATION:
        if args.only and case[0] != args.only:
            continue
        path = case_plan(out, case)
        est = estimate_plan(load_plan(path), plan_dir=path.parent).peak
        meas = old.get(label(case), {}).get("measured")
        if meas is None and not args.estimate_only:
            t0 = time.time()
            try:
                runs = sorted(measure_in_subprocess(path)["growth"] for _ in range(max(1, args.repeat)))
                meas = runs[-1]  # the peak the planner must cover
            except Exception as exc:  # noqa: BLE001 - report and go on
                print(f"| {label(case)} | failed: {str(exc)[-300:]!r} |", flush=True)
                continue
            dt = time.time() - t0
        else:
            dt = 0.0
        ratio = est / meas if meas else float("nan")
        row = {"case": label(case), "estimate": est, "measured": meas, "ratio": ratio, "seconds": dt,
               "validation": case in VALIDATION}
        if meas is not None and dt:
            row["runs"] = runs
        elif "runs" in old.get(label(case), {}):
            row["runs"] = old[label(case)]["runs"]
        rows.append(row)
        print(f"| {label(case)} | {est / 2**20:.0f} | {(meas or 0) / 2**20:.0f} | {ratio:.2f} |", flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps(rows, indent=1))
    if args.fit and args.json:
        fit(json.loads(Path(args.json).read_text()))
    return 0


PARAMS = ("overhead_MiB", "compile_multislice_MiB", "dry_slice_waves", "dry_waves", "dry_pixels",
          "conv_slice_waves", "conv_waves", "conv_pixels", "grad_slice_waves", "grad_waves", "grad_pixels",
          "grad_overhead_MiB", "compile_unrolled_slice_MiB")


def fit(rows: list[dict]) -> None:
    """Fit the per-backend constants: measured ≈ patterns (host + device) + overhead +
    views + (a·S + k)·wave + d·B·P·c of the transient phase, the larger of the probe-scaling
    pass (when it runs) and the group step. The larger one depends on the constants, so the
    fit alternates: assign each case its larger phase under the current constants, refit
    (bounded least squares on the relative error), until the assignment settles."""
    import numpy as np
    from scipy.optimize import lsq_linear

    from phaser_std.engines.chunking import (CACHE_BUDGET_BYTES, conventional_budget, conventional_lane_budget,
                                             gradient_lane_budget, has_chunked_step, lane_plan, named_backend_lanes)
    from phaser_std.engines.memory import dry_run_batch

    measured = {r["case"]: r["measured"] for r in rows if r.get("measured")}
    mib = float(1 << 20)

    def lanes_and_chunk(backend, b, m, s, p, c, budget, lane_budget=None):
        """(lanes, chunk) as the engines choose them (chunking.lane_plan)."""
        return lane_plan(named_backend_lanes(backend), None, b, m, s, (p, 1), c, True, budget, True, lane_budget)

    def features(case, phase):
        backend, engine, size, s, m, group, extra = case
        n, q = SIZES[size]
        n_pos, p, c = n * n, q * q, 8
        x = np.zeros(len(PARAMS))
        x[0], x[1] = mib, (mib if s > 1 else 0.0)
        x[11] = mib if engine == "gradient" else 0.0
        x[12] = s * mib if engine == "lsqml" and s > 1 else 0.0  # its joint step unrolls the slices
        b = min(group, n_pos)
        budget = CACHE_BUDGET_BYTES if engine == "gradient" else conventional_budget(s)
        if engine == "gradient" or has_chunked_step(engine, s):
            lanes, chunk = lanes_and_chunk(backend, b, m, s, p, c, budget,
                                           gradient_lane_budget(s) if engine == "gradient"
                                           else conventional_lane_budget(engine, s))
        else:
            lanes, chunk = 1, b
        # patterns on the host and on each lane (the datasets are noiseless, not counted:
        # float32 on the device too, where counted data would be uint8 or uint16)
        patterns = (1 + lanes) * n_pos * p * 4
        if phase == "dry":
            b = min(dry_run_batch(), n_pos)
            x[2:5] = lanes * np.array((s * b * m * p * c, b * m * p * c, b * p * c))
            return x, patterns + lanes * b * s * p * c
        kept = 0
        if engine == "gradient":
            kept = lanes * b * p * 4  # the group's patterns, gathered by every lane
        elif chunk < b:  # the cases have no position solver, no explicit chunk
            # the kept terms mirror phaser_std/engines/memory.conventional_terms (keep in step)
            kept = lanes * b * p * 4
            if engine == "lsqml":
                kept += (2 + (s if s > 1 else 0)) * b * m * p * c + b * s * p * 4
            elif s > 1:
                kept += (s + 2) * b * m * p * c
        off = 5 if engine != "gradient" else 8
        x[off:off + 3] = lanes * np.array((s * chunk * m * p * c, chunk * m * p * c, chunk * p * c))
        return x, patterns + lanes * chunk * s * p * c + kept

    for backend in ("numpy", "jax"):
        cases = [c for c in CASES + VALIDATION if c[0] == backend and label(c) in measured]
        if not cases:
            continue
        jax = backend == "jax"
        # lower bounds from the code: the probe-scaling pass holds at least one wave of its
        # batch; a whole conventional group step at least 3 waves and one B·P array beside
        # its views (XLA's buffer assignment of jax's whole-group ePIE/LSQML steps: 3.6-7.7
        # waves of temporaries, 64² px, 1 and 4 modes, groups of 16 and 64). Left free, the
        # jax fit put these near 0 and moved that memory into the overhead: right for the
        # CPU cases (mostly chunked) but under by up to 2x for whole groups (a GPU's).
        # The gradient step holds at least the exit wave and its cotangent per position
        # (2 waves); with the CPU lanes' few gradient cases the jax fit otherwise put its
        # waves at 0 and moved them into the slice term (session 7).
        lo = [0, 0, 0 if jax else 1, 1, -6, 1, 2, 1, 1, 2 if jax else 0, 0, 0, 0]
        hi = [300, 200 if jax else 1e-9, 4 if jax else 5, 8, 8, 6, 8, 8, 6, 8, 8, 100 if jax else 1e-9,
              60 if jax else 1e-9]
        phases = {label(c): "group" for c in cases}
        sol = None
        for _ in range(10):
            a_rows, y = [], []
            for case in cases:
                x, fixed = features(case, phases[label(case)])
                meas = measured[label(case)]
                a_rows.append(x / meas)
                y.append((meas - fixed) / meas)
            sol = lsq_linear(np.array(a_rows), np.array(y), bounds=(lo, hi)).x
            new = {}
            for case in cases:
                # one slice of the (vacuum) start scales the probe without a forward pass
                scale = case[6].get("scale_probe", True) and case[3] > 1
                est = {ph: features(case, ph)[0] @ sol + features(case, ph)[1]
                       for ph in (("dry", "group") if scale else ("group",))}
                new[label(case)] = max(est, key=est.get)
            if new == phases:
                break
            phases = new
        print(f"{backend}: " + ", ".join(f"{k}={v:.2f}" for k, v in zip(PARAMS, sol)))


if __name__ == "__main__":
    raise SystemExit(main())
