"""Profile one benchmark case inside the engine (jax): XLA op times per iteration.

    /work/venv/bin/python benchmarks/profile_engine.py epie multi64 --modes 1 --group 64

Runs the case's plan (``cases.our_engine``) for ``--iters`` iterations, the last
``--traced`` of them under ``jax.profiler``, and prints the ops taking the most time per
iteration (host-side Python frames and executor bookkeeping left out). Ops of concurrent
thunks overlap, so the column does not add up to the wall time.
"""
from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench  # noqa: E402
import cases  # noqa: E402


class _Trace:
    def __init__(self, start: int, folder: str):
        self.n, self.start, self.folder, self.t = 0, start, folder, []
        self.last = None

    def __getattr__(self, name):
        return lambda *a, **k: None

    def before_engine(self, *a):
        self.last = time.perf_counter()

    def after_iteration(self, state, metrics, ctx):
        import jax

        self.n += 1
        now = time.perf_counter()
        self.t.append(now - self.last)
        if self.n == self.start:
            jax.profiler.start_trace(self.folder, create_perfetto_trace=True)
        if self.n == metrics["niter"] and self.n > self.start:
            jax.profiler.stop_trace()
        self.last = time.perf_counter()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("engine")
    ap.add_argument("dataset", help="a case's dataset (single64, multi64, ...) or an hdf5 raw-data file (.h5)")
    ap.add_argument("--modes", type=int, default=1)
    ap.add_argument("--group", type=int, default=64)
    ap.add_argument("--iters", type=int, default=6)
    ap.add_argument("--traced", type=int, default=3)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--chunk", type=int, default=None, help="grouping.chunk (default: the engine's choice)")
    ap.add_argument("--by-kind", action="store_true", help="sum the ops by kind (fft, fusion names) instead")
    ap.add_argument("--keep-trace", default=None, help="copy the perfetto trace (.json.gz) here")
    ap.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE",
                    help="change the engine block, as bench.py --set")
    a = ap.parse_args()
    from phaser_core.plan import load_plan
    from phaser_core.runner import run_plan

    if a.dataset.endswith(".h5"):  # any hdf5 raw-data file, one slice
        data, slices, thickness = Path(a.dataset), 1, 0.0
    else:
        data, slices, thickness = (cases.dataset_path(a.dataset), cases.n_slices(a.dataset),
                                   cases.total_thickness(a.dataset))
    block = cases.our_engine(a.engine, niter=a.iters, group=a.group, modes=a.modes, slices=slices,
                             thickness=thickness)
    if a.chunk:
        block["grouping"]["chunk"] = a.chunk
    for item in a.set:
        bench.set_path(block, item)
    folder = tempfile.mkdtemp(prefix="phaser-trace-")
    tr = _Trace(a.iters - a.traced, folder)
    plan = {"file_type": "phaser_plan", "version": 1, "backend": "jax", "dtype": "float32", "seed": 0,
            "raw_data": {"type": "hdf5", "path": str(data)}, "engines": [block]}
    run_plan(load_plan(plan), quiet=True, observers=[tr])
    print(f"{a.engine}/{a.dataset}/m{a.modes}/g{a.group}: s/iter {[round(t, 4) for t in tr.t]}")
    trace = glob.glob(f"{folder}/**/*.trace.json.gz", recursive=True)[0]
    if a.keep_trace:
        shutil.copy(trace, a.keep_trace)
    raw = json.load(gzip.open(trace))["traceEvents"]
    events = [e for e in raw if e.get("ph") == "X"]
    # on a GPU the kernels run on a device track of their own: per-process busy time first
    process = {e["pid"]: e.get("args", {}).get("name", "") for e in raw
               if e.get("ph") == "M" and e.get("name") == "process_name"}
    busy = collections.defaultdict(float)
    for e in events:
        busy[process.get(e.get("pid"), "?")] += e["dur"]
    for name, us in sorted(busy.items(), key=lambda kv: -kv[1]):
        print(f"{us / a.traced / 1e3:9.2f} ms/iter  process {name[:80]}")
    device = {pid for pid, name in process.items() if "GPU" in name or "device" in name.lower()}
    if device and not all(e.get("pid") in device for e in events):
        events = [e for e in events if e.get("pid") in device]
        print("(ops on the device tracks only)")
    total = collections.defaultdict(float)
    count = collections.Counter()
    for e in events:
        total[e["name"]] += e["dur"]
        count[e["name"]] += 1
    skip = ("$", "Thunk", "PjRt", "Pjit", "Execute", "Await", "Handle", "Parse", "Allocate")
    for name in [n for n in total if n.startswith(skip) or any(s in n for s in ("ThunkExecutor", "PjitFunction"))]:
        del total[name]
    if a.by_kind:  # fft.171, fft.172 ... -> fft
        kinds: dict = collections.defaultdict(float)
        kind_count: collections.Counter = collections.Counter()
        for name, us in total.items():
            kind = name.rsplit(".", 1)[0] if name.rsplit(".", 1)[-1].isdigit() else name
            kinds[kind] += us
            kind_count[kind] += count[name]
        print(f"{sum(total.values()) / a.traced / 1e3:9.2f} ms/iter  all ops (concurrent ones overlap)")
        total, count = kinds, kind_count
    shown = 0
    for name, us in sorted(total.items(), key=lambda kv: -kv[1]):
        print(f"{us / a.traced / 1e3:9.2f} ms/iter  x{count[name] / a.traced:6.0f}  {name[:90]}")
        shown += 1
        if shown >= a.top:
            break
    shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
