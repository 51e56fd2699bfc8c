"""Pearson of the phase against the truth along a run, for settings side by side.

    /work/venv/bin/python benchmarks/trajectory.py single64 --engine lsqml --group 16 --niter 12 \\
        --variant solver.illum_reg_object=0.1 --variant solver.illum_reg_object=0.3

Runs our engine with our defaults (only the engine, solver, group size and the dataset's
slices set, as ``bench.py --ours-defaults``) plus each ``--variant`` (``KEY.PATH=VALUE``
into the engine block, YAML values; repeat a variant's flag with ``;`` between
assignments), on jax, and prints the Pearson at iterations 1, 2, 3, 5, 8, 12, 20, 30, 50
and the last (benchmarks/NOTES.md 68).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench  # noqa: E402
import cases as C  # noqa: E402

SCORED = (1, 2, 3, 4, 5, 8, 12, 20, 30, 50)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset", choices=sorted(C.DATASETS))
    ap.add_argument("--engine", default="lsqml", choices=C.ENGINES)
    ap.add_argument("--group", type=int, default=64)
    ap.add_argument("--niter", type=int, default=20)
    ap.add_argument("--backend", default="jax")
    ap.add_argument("--variant", action="append", default=[], metavar="KEY.PATH=VALUE[;...]")
    a = ap.parse_args()

    import h5py
    import numpy as np
    from ruamel.yaml import YAML

    from phaser_core.plan import load_plan
    from phaser_core.runner import run_plan
    from worker_ours import score

    path = bench.ensure_dataset(a.dataset)
    with h5py.File(path, "r") as f:
        gt = f["ground_truth/phase"][()]
        gt_s = float(np.atleast_1d(f["ground_truth/phase"].attrs["sampling_A"])[0])
        periodic = str(f["ground_truth"].attrs.get("periodic", "no")).startswith("yes")

    class Scores:
        def __init__(self):
            self.points = []

        def __getattr__(self, name):
            return lambda *args, **kwargs: None

        def after_iteration(self, state, metrics, ctx):
            it = metrics["engine_iter"]
            if it in SCORED or it == metrics["niter"]:
                self.points.append((it, score(state, gt, gt_s, periodic)["pearson"]))

    for variant in a.variant or [""]:
        block = C.our_default_engine(a.engine, niter=a.niter, group=a.group, modes=1, slices=C.n_slices(a.dataset),
                                     thickness=C.total_thickness(a.dataset))
        for assignment in filter(None, variant.split(";")):
            key, value = assignment.split("=", 1)
            *parents, leaf = key.strip().split(".")
            node = block
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = YAML(typ="safe").load(value)
        plan = {"file_type": "phaser_plan", "version": 1, "backend": a.backend, "seed": 0,
                "raw_data": {"type": "hdf5", "path": str(path), "key": "patterns"}, "engines": [block]}
        scores = Scores()
        run_plan(load_plan(plan), quiet=True, observers=[scores])
        points = " ".join(f"{it}:{p:.4f}" for it, p in scores.points)
        print(f"{a.dataset} {a.engine} g{a.group} [{variant or 'defaults'}] {points}", flush=True)


if __name__ == "__main__":
    main()
