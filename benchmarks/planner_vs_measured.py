#!/usr/bin/env python
"""The memory planner's estimate beside the peaks a benchmark measured.

    /work/venv/bin/python benchmarks/planner_vs_measured.py benchmarks/results/h100-gpu-*.json

For each case of the bench.py JSON files, the plan the benchmark ran (``cases.our_engine``)
is estimated with ``phaser plan-memory``'s code on the same dataset (simulated here if
missing). Cases measured on a GPU (rows with ``ours_gpu_mib``) are compared with the planner's device
terms, estimated as for a GPU (whole groups: ``named_backend_on_cpu`` answers False);
the others with its whole peak against the peak RSS's growth above the worker's
RSS just before the run (``ours_baseline_rss_mib``: imports done, the backend's runtime
up; files written before it was recorded compare with the whole peak RSS).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import ensure_dataset, our_block  # noqa: E402


def estimate_mib(case: dict, on_gpu: bool, args: dict) -> float:
    import phaser_std.engines.memory as planner
    from phaser_core.memory import estimate_plan
    from phaser_core.plan import load_plan

    ds = case["dataset"]
    # the block the benchmark ran (its --set items, --ours-defaults), for a few iterations
    block = our_block(case, 4, bool(args.get("ours_defaults")), int(args.get("probe_after") or 0), args.get("set"))
    plan = load_plan({"file_type": "phaser_plan", "version": 1, "backend": case["backend"], "dtype": "float32",
                      "seed": 0, "raw_data": {"type": "hdf5", "path": str(ensure_dataset(ds))}, "engines": [block]})
    import phaser_std.engines.chunking as chunking

    saved = planner.named_backend_on_cpu, chunking.named_backend_on_cpu
    if on_gpu:  # as on the GPU machine: whole groups, no CPU lanes
        planner.named_backend_on_cpu = chunking.named_backend_on_cpu = lambda name: False
    try:
        est = estimate_plan(plan, backend=case["backend"])
    finally:
        planner.named_backend_on_cpu, chunking.named_backend_on_cpu = saved
    return (est.peak_where("device") if on_gpu else est.peak) / 2**20


def main(paths: list[str]) -> None:
    within = total = 0
    for path in paths:
        doc = json.load(open(path))
        for row in doc["rows"]:
            gpu = row.get("ours_gpu_mib")
            baseline = row.get("ours_baseline_rss_mib")
            if gpu is not None:
                kind, measured = "GPU", gpu
            elif baseline is not None and row.get("ours_rss_mib"):
                # the planner estimates a run's growth above the imported process
                kind, measured = "RSS growth", row["ours_rss_mib"] - baseline
            else:
                kind, measured = "RSS (with the process's baseline)", row.get("ours_rss_mib")
            if not measured:
                continue
            est = estimate_mib(row, on_gpu=gpu is not None, args=doc.get("args", {}))
            ratio = est / measured
            total += 1
            within += 0.75 <= ratio <= 1.25
            print(f"{row['case']:34s} {kind} measured {measured:7.0f} MiB  "
                  f"planner {est:7.0f} MiB  ratio {ratio:.2f}")
    print(f"within 25%: {within} of {total}")


if __name__ == "__main__":
    main(sys.argv[1:])
