#!/usr/bin/env python
"""Time our engines from two source trees back to back (the gains recorded in NOTES.md).

    git archive <base-commit> | tar -x -C /tmp/base
    /work/venv/bin/python benchmarks/compare_trees.py --base /tmp/base --reps 2 \
        --cases 'lsqml/jax/single64/m1/g64' 'epie/numpy/single64/m1/g64' [--set grouping.chunk=64]

Each case runs ``worker_ours.py`` once per tree per repetition, alternating base and new,
and reports the median of the per-run medians (wall and CPU s/iter, first iteration).
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cases as C  # noqa: E402
from bench import ensure_dataset, set_path  # noqa: E402


def run(tree: str | None, case: dict, iters: int, settings: list | None = None) -> dict:
    ds = case["dataset"]
    data = ensure_dataset(ds)
    block = C.our_engine(case["engine"], niter=iters, group=case["group"], modes=case["modes"],
                         slices=C.n_slices(ds), thickness=C.total_thickness(ds))
    for item in settings or ():
        set_path(block, item)
    job = {"data": str(data), "backend": case["backend"], "engine_block": block}
    env = dict(os.environ)
    if tree:
        env["PHASER_BENCH_TREE"] = tree
    p = subprocess.run([sys.executable, str(C.HERE / "worker_ours.py"), json.dumps(job)], capture_output=True,
                       text=True, env=env)
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        raise SystemExit(p.stderr[-2000:])
    return json.loads(lines[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", required=True, help="baseline source tree")
    ap.add_argument("--cases", nargs="+", required=True)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--iters", type=int, default=6)
    ap.add_argument("--set", action="append", metavar="KEY.PATH=VALUE",
                    help="change the engine block of both trees, e.g. --set grouping.chunk=64; repeatable")
    a = ap.parse_args()
    todo = [c for c in C.matrix("big") if any(fnmatch.fnmatch(C.case_id(c), p) for p in a.cases)]
    from bench import byte_compile

    byte_compile(Path(a.base))  # both trees start from .pyc files
    byte_compile()
    print(f"{'case':34s} {'base wall':>9s} {'new wall':>9s} {'gain':>6s} {'base cpu':>9s} {'new cpu':>9s} "
          f"{'gain':>6s} {'first base/new':>15s} {'loss base/new':>20s}")
    for case in todo:
        res = {"base": [], "new": []}
        for _ in range(a.reps):
            res["base"].append(run(a.base, case, a.iters, a.set))
            res["new"].append(run(None, case, a.iters, a.set))
        m = {k: (float(np.median([r["s_per_iter_median"] for r in v])),
                 float(np.median([r["cpu_s_per_iter_median"] for r in v])),
                 float(np.median([r["first_iter_s"] for r in v])), v[-1]["final_loss"]) for k, v in res.items()}
        b, n = m["base"], m["new"]
        print(f"{C.case_id(case):34s} {b[0]:9.3f} {n[0]:9.3f} {b[0] / n[0]:5.2f}x {b[1]:9.3f} {n[1]:9.3f} "
              f"{b[1] / n[1]:5.2f}x {b[2]:7.2f}/{n[2]:<7.2f} {b[3]:9.3f}/{n[3]:<9.3f}", flush=True)


if __name__ == "__main__":
    main()
