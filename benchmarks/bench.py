#!/usr/bin/env python
"""Benchmark our engines side by side with phaserEM 0.3.1 (not part of the test suite).

    /work/venv/bin/python benchmarks/bench.py --quick                 # group 64, jax (~5 min)
    /work/venv/bin/python benchmarks/bench.py                         # the default matrix
    /work/venv/bin/python benchmarks/bench.py --cases 'lsqml/jax/*/m1/g64' --iters 8
    /work/venv/bin/python benchmarks/bench.py --ttt --target 0.9      # time to target error
    /work/venv/bin/python benchmarks/bench.py --cases '*/jax/*/m1/g64' --repeat 3   # medians of 3 alternating runs
    /work/venv/bin/python benchmarks/bench.py --paper --no-phaser     # the paper's sizes (GPU)

Every case runs in its own process, ours (``worker_ours.py`` in this venv) and phaserEM
(``worker_phaser.py`` -> ``../shared/bench/run_phaser.py`` in ``.anchor-venv``) back to
back on the same ``phaser simulate`` file, with matched settings (``cases.py``). Reported
per case: first iteration (compilation included), median s/iter over the remaining
iterations (wall and process CPU), peak RSS, and with ``--ttt`` the time (sum of iteration
times) to reach the target pearson correlation against the ground truth. Writes JSON
(``--out``, default ``benchmarks/results/bench-<date-time>.json``) with the machine description and
prints a rich table with ratios (phaserEM / ours: > 1 means we are faster).
"""

from __future__ import annotations

import argparse
import datetime as dt
import fnmatch
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cases as C  # noqa: E402

REPO = C.HERE.parent
OUR_PY = Path(sys.executable)
#: phaserEM's interpreter (its own venv; PHASER_ANCHOR_PY where it lives elsewhere)
ANCHOR_PY = Path(os.environ.get("PHASER_ANCHOR_PY", REPO / ".anchor-venv" / "bin" / "python"))
#: our command line, run by this interpreter (no dependence on where pip put the script)
PHASER_CLI = [str(OUR_PY), "-m", "phaser_core.cli"]


# --------------------------------------------------------------------------- data
def ensure_dataset(name: str) -> Path:
    """Simulate the dataset with ``phaser simulate`` unless cached (keyed by its spec)."""
    path = C.dataset_path(name)
    if path.exists():
        return path
    from ruamel.yaml import YAML

    path.parent.mkdir(parents=True, exist_ok=True)
    spec = path.with_suffix(".yaml")
    with open(spec, "w") as f:
        YAML().dump(C.DATASETS[name], f)
    print(f"simulating {name} -> {path.name}", flush=True)
    subprocess.run([*PHASER_CLI, "simulate", str(spec), "--out", str(path)], check=True)
    return path


# --------------------------------------------------------------------------- machine
def byte_compile(tree: Path | None = None) -> None:
    """Write our packages' ``.pyc`` files before timing: phaserEM's were written by pip when
    it was installed, ours (an editable install, and ``PYTHONDONTWRITEBYTECODE`` on some
    machines) would otherwise be compiled from source in every worker's start-up (~0.06-0.1 s
    here)."""
    import compileall

    root = Path(tree) if tree else REPO
    for pkg in ("phaser_core", "phaser_std", "plugins"):
        if (root / pkg).exists():
            compileall.compile_dir(str(root / pkg), quiet=1)


def machine() -> dict:
    info = {"date_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "platform": platform.platform(), "python": platform.python_version(),
            "cpu_count": os.cpu_count()}
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal"):
                info["mem_total_gib"] = round(int(line.split()[1]) / 2 ** 20, 1)
        info["loadavg_start"] = open("/proc/loadavg").read().split()[:3]
    except OSError:
        pass
    from importlib.metadata import version

    for pkg in ("numpy", "scipy", "jax", "jaxlib", "phaser-ptycho"):
        try:
            info[pkg] = version(pkg)
        except Exception:
            pass
    if ANCHOR_PY.exists():
        out = subprocess.run([str(ANCHOR_PY), "-c", "from importlib.metadata import version as v; "
                              "print(v('phaserEM'), v('jax'), v('numpy'))"], capture_output=True, text=True)
        if out.returncode == 0:
            p, j, n = out.stdout.split()
            info["phaserEM"] = {"phaserEM": p, "jax": j, "numpy": n}
    try:
        # the driver only lists the devices: on a GPU it must not take jax's default 75% of
        # the memory away from the workers
        os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
        import jax

        info["jax_devices"] = [str(d) for d in jax.devices()]
    except Exception:
        pass
    try:
        gpu = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=30)
        if gpu.returncode == 0:
            info["gpus"] = [ln.strip() for ln in gpu.stdout.splitlines() if ln.strip()]
            info["cupy"] = _cupy_version()
    except (OSError, subprocess.SubprocessError):
        pass
    return info


def _cupy_version() -> str | None:
    """The installed cupy wheel's name and version (cupy-cuda12x, cupy-cuda13x, ...), if any."""
    from importlib.metadata import distributions

    for dist in distributions():
        name = dist.metadata["Name"] or ""
        if name.lower().startswith("cupy"):
            return f"{name} {dist.version}"
    return None


# --------------------------------------------------------------------------- runs
def _last_json(text: str) -> dict | None:
    for line in reversed(text.splitlines()):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                return None
    return None


def our_block(case: dict, niter: int, ours_defaults: bool = False, probe_after: int = 0,
              settings: tuple | list | None = ()) -> dict:
    """Our engine block of a case: matched to phaserEM's settings (or our defaults), then the
    ``--set KEY.PATH=VALUE`` items."""
    ds = case["dataset"]
    make = C.our_default_engine if ours_defaults else C.our_engine
    block = make(case["engine"], niter=niter, group=case["group"], modes=case["modes"],
                 slices=C.n_slices(ds), thickness=C.total_thickness(ds), probe_after=probe_after)
    for item in settings or ():
        set_path(block, item)
    return block


def run_ours(case: dict, data: Path, a) -> dict:
    block = our_block(case, a.iters, a.ours_defaults, a.probe_after, a.set)
    job = {"data": str(data), "backend": case["backend"], "dtype": a.dtype, "engine_block": block,
           "score_every": a.score_every if a.ttt else 0, "target": a.target, "final_score": True}
    t0 = time.perf_counter()
    try:
        p = subprocess.run([str(OUR_PY), str(C.HERE / "worker_ours.py"), json.dumps(job)], capture_output=True,
                           text=True, timeout=a.timeout, cwd=REPO)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {a.timeout} s"}
    res = _last_json(p.stdout)
    if p.returncode != 0 or res is None:
        return {"error": (p.stderr or p.stdout)[-1500:]}
    res["process_s"] = time.perf_counter() - t0
    return res


def set_path(block: dict, item: str) -> None:
    """``KEY.PATH=VALUE`` (VALUE read as YAML) into our engine block, e.g. ``grouping.chunk=16``."""
    from ruamel.yaml import YAML

    key, sep, text = item.partition("=")
    if not sep or not key:
        raise SystemExit(f"--set {item!r}: write KEY.PATH=VALUE, e.g. grouping.chunk=16")
    *parents, last = key.split(".")
    node = block
    for k in parents:
        node = node.setdefault(k, {})
    node[last] = YAML(typ="safe").load(text)


def run_phaser(case: dict, data: Path, a, out: Path) -> dict:
    if not ANCHOR_PY.exists():
        return {"error": f"{ANCHOR_PY} missing: see benchmarks/README.md"}
    ds = case["dataset"]
    args = C.phaser_args(case["engine"], niter=a.iters, group=case["group"], modes=case["modes"],
                         slices=C.n_slices(ds), thickness=C.total_thickness(ds), backend=case["backend"],
                         probe_after=a.probe_after, dtype=a.dtype)
    own = ["--score-every", str(a.score_every), "--target", str(a.target)] if a.ttt else []
    cmd = [str(ANCHOR_PY), str(C.HERE / "worker_phaser.py"), *own, "--", "--data", str(data), *args,
           "--out", str(out)]
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=a.timeout, cwd=REPO)
    except subprocess.TimeoutExpired:
        return {"error": f"timeout after {a.timeout} s"}
    res = _last_json(p.stdout)
    if p.returncode != 0 or res is None:
        return {"error": (p.stderr or p.stdout)[-1500:]}
    res["process_s"] = time.perf_counter() - t0
    return res


# --------------------------------------------------------------------------- table
def combine(runs: list[dict]) -> dict:
    """One package's runs of a case (``--repeat``) as one: the medians of the timings (each
    run's s/iter is already its median over the iterations), the largest peak memory (the
    peak a run can reach), the first run's scores; every run kept under ``"runs"``."""
    if len(runs) == 1:
        return runs[0]

    def median(key):
        values = [r[key] for r in runs if r.get(key) is not None]
        return float(np.median(values)) if values else None

    def largest(key):
        values = [r[key] for r in runs if r.get(key) is not None]
        return max(values) if values else None

    out = dict(runs[0])
    for key in ("s_per_iter_median", "s_per_iter", "cpu_s_per_iter_median", "first_iter_s", "time_to_target_s",
                "startup_s", "time_to_target_from_start_s", "baseline_rss_mib"):
        out[key] = median(key)
    for key in ("peak_rss_mib", "peak_gpu_mib"):
        out[key] = largest(key)
    out["error"] = next((r["error"] for r in runs if r.get("error")), None)
    out["runs"] = runs
    return out


def _ratio(a, b):
    return (a / b) if (a is not None and b is not None and b > 0) else None


def summarize(case: dict, ours: dict, ph: dict | None) -> dict:
    row = {"case": C.case_id(case), **case}
    for tag, r in (("ours", ours), ("phaser", ph or {})):
        row[f"{tag}_first_s"] = r.get("first_iter_s")
        row[f"{tag}_s_iter"] = r.get("s_per_iter_median")
        row[f"{tag}_cpu_s_iter"] = r.get("cpu_s_per_iter_median")
        row[f"{tag}_rss_mib"] = r.get("peak_rss_mib")
        row[f"{tag}_baseline_rss_mib"] = r.get("baseline_rss_mib")
        row[f"{tag}_gpu_mib"] = r.get("peak_gpu_mib")
        row[f"{tag}_pearson"] = r.get("pearson")
        row[f"{tag}_ttt_s"] = r.get("time_to_target_s")
        row[f"{tag}_startup_s"] = r.get("startup_s")
        row[f"{tag}_ttt_start_s"] = r.get("time_to_target_from_start_s")
        row[f"{tag}_error"] = r.get("error")
    row["speedup"] = _ratio(row["phaser_s_iter"], row["ours_s_iter"])
    row["speedup_cpu"] = _ratio(row["phaser_cpu_s_iter"], row["ours_cpu_s_iter"])
    row["mem_ratio"] = _ratio(row["ours_rss_mib"], row["phaser_rss_mib"])
    row["gpu_mem_ratio"] = _ratio(row["ours_gpu_mib"], row["phaser_gpu_mib"])
    row["phaser_backend"] = (ph or {}).get("backend")
    row["ttt_speedup"] = _ratio(row["phaser_ttt_s"], row["ours_ttt_s"])
    row["ttt_start_speedup"] = _ratio(row["phaser_ttt_start_s"], row["ours_ttt_start_s"])
    return row


def _f(v, fmt="{:.3f}"):
    return "-" if v is None else fmt.format(v)


def print_table(rows: list[dict], ttt: bool) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title="ours vs phaserEM 0.3.1 (ratio = phaserEM / ours; > 1: ours faster)")
    cols = ["case", "first s ours/ph", "s/iter ours", "s/iter ph", "ratio", "cpu ratio", "RSS MiB ours/ph",
            "pearson ours/ph"]
    gpu = any(r.get("ours_gpu_mib") is not None for r in rows)
    if gpu:
        cols += ["GPU MiB ours/ph"]
    if ttt:
        cols += ["t→target ours/ph", "ttt ratio", "from start ours/ph", "ratio"]
    for c in cols:
        t.add_column(c, justify="right" if c != "case" else "left")
    for r in rows:
        err = r.get("ours_error") or r.get("phaser_error")
        vals = [r["case"], f"{_f(r['ours_first_s'], '{:.1f}')}/{_f(r['phaser_first_s'], '{:.1f}')}",
                _f(r["ours_s_iter"]), _f(r["phaser_s_iter"]), _f(r["speedup"], "{:.2f}x"),
                _f(r["speedup_cpu"], "{:.2f}x"),
                f"{_f(r['ours_rss_mib'], '{:.0f}')}/{_f(r['phaser_rss_mib'], '{:.0f}')}",
                f"{_f(r['ours_pearson'], '{:.3f}')}/{_f(r['phaser_pearson'], '{:.3f}')}"]
        if gpu:
            vals += [f"{_f(r['ours_gpu_mib'], '{:.0f}')}/{_f(r['phaser_gpu_mib'], '{:.0f}')}"]
        if ttt:
            vals += [f"{_f(r['ours_ttt_s'], '{:.1f}')}/{_f(r['phaser_ttt_s'], '{:.1f}')}",
                     _f(r["ttt_speedup"], "{:.2f}x"),
                     f"{_f(r['ours_ttt_start_s'], '{:.1f}')}/{_f(r['phaser_ttt_start_s'], '{:.1f}')}",
                     _f(r["ttt_start_speedup"], "{:.2f}x")]
        if err:
            vals[0] += " [red](error)[/red]"
        t.add_row(*vals)
    Console(width=200).print(t)


# --------------------------------------------------------------------------- main
def gradient_available() -> bool:
    p = subprocess.run([*PHASER_CLI, "plugins"], capture_output=True, text=True)
    return "gradient" in p.stdout


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="group 64, jax only (1 mode; 4 modes single slice)")
    ap.add_argument("--big", action="store_true", help="add the 48x48 x 128² and the 32x32 x 96² x 13-slice datasets")
    ap.add_argument("--paper", action="store_true", help="the paper's sizes (GPU machines)")
    ap.add_argument("--cases", nargs="*", default=None,
                    help="fnmatch patterns on engine/backend/dataset/mMODES/gGROUP, e.g. 'lsqml/jax/*/m1/g64'")
    ap.add_argument("--engines", nargs="*", default=list(C.ENGINES))
    ap.add_argument("--backends", nargs="*", default=list(C.BACKENDS))
    ap.add_argument("--iters", type=int, default=6, help="iterations per run (first = compile, rest timed)")
    ap.add_argument("--probe-after", type=int, default=0, help="probe updated from this iteration (both packages)")
    ap.add_argument("--ttt", action="store_true", help="score every --score-every iterations; time to --target")
    ap.add_argument("--target", type=float, default=0.9, help="pearson vs ground truth for --ttt")
    ap.add_argument("--score-every", type=int, default=1)
    ap.add_argument("--no-phaser", action="store_true", help="ours only")
    ap.add_argument("--ours-defaults", action="store_true",
                    help="our engines with our own default settings (phaserEM keeps its example settings)")
    ap.add_argument("--phaser-backends", nargs="*", default=["jax", "numpy"],
                    help="backends on which phaserEM runs beside ours; a cupy case is compared "
                         "with phaserEM on jax (it has no cupy runner), run once for both")
    ap.add_argument("--set", action="append", metavar="KEY.PATH=VALUE",
                    help="change our engine block (phaserEM unchanged), e.g. --set grouping.chunk=16; repeatable")
    ap.add_argument("--dtype", choices=["float32", "float64"], default="float32",
                    help="floating-point precision of both packages")
    ap.add_argument("--simulate-only", action="store_true", help="simulate the cases' datasets and stop")
    ap.add_argument("--timeout", type=float, default=900.0, help="per process [s]")
    ap.add_argument("--repeat", type=int, default=1,
                    help="runs of each package per case, alternating (ours, phaserEM, ours, ...); the "
                         "medians are reported (this VM's speed drifts by up to 1.6x within minutes)")
    ap.add_argument("--out", default=None, help="JSON output path")
    a = ap.parse_args(argv)

    engines = [e for e in a.engines if e != "gradient" or gradient_available()]
    size = "paper" if a.paper else ("big" if a.big else "default")
    todo = C.matrix(size, engines, a.backends)
    if a.quick:
        todo = C.quick(todo)
    if a.cases:
        todo = [c for c in todo if any(fnmatch.fnmatch(C.case_id(c), pat) for pat in a.cases)]
    if not todo:
        raise SystemExit("no case matches (see --cases; ids are engine/backend/dataset/mMODES/gGROUP)")
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    out = Path(a.out) if a.out else C.HERE / "results" / f"bench-{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    work = C.CACHE / "runs" / stamp
    if a.simulate_only:
        for name in dict.fromkeys(c["dataset"] for c in todo):
            print(ensure_dataset(name))
        return
    byte_compile()
    mach = machine()
    print(f"{len(todo)} cases; machine: {mach.get('cpu_model')} x{mach.get('cpu_count')}, "
          f"load {mach.get('loadavg_start')}", flush=True)
    rows, raw = [], []
    phaser_done: dict[str, dict] = {}  # phaserEM's jax runs, shared by the jax and cupy cases
    t_all = time.perf_counter()
    for i, case in enumerate(todo):
        data = ensure_dataset(case["dataset"])
        cid = C.case_id(case)
        ph_case = {**case, "backend": "jax"} if case["backend"] == "cupy" else case
        ph_id = C.case_id(ph_case)
        # phaserEM's gradient engine needs jax (or torch): no numpy counterpart
        with_phaser = not a.no_phaser and ph_case["backend"] in a.phaser_backends \
            and not (case["engine"] == "gradient" and case["backend"] == "numpy")
        ours_runs, ph_runs = [], []
        for k in range(max(a.repeat, 1)):
            ours_runs.append(run_ours(case, data, a))
            if with_phaser and ph_id not in phaser_done:
                ph_runs.append(run_phaser(ph_case, data, a, work / (ph_id.replace("/", "_") + (f"-{k}" if k else ""))))
        if ph_runs:
            phaser_done[ph_id] = {**combine(ph_runs), "backend": ph_case["backend"]}
        ours = combine(ours_runs)
        ph = phaser_done.get(ph_id) if with_phaser else None
        row = summarize(case, ours, ph)
        rows.append(row)
        raw.append({"case": case, "ours": ours, "phaser": ph})
        print(f"[{i + 1}/{len(todo)}] {cid}: ours {_f(row['ours_s_iter'])} s/iter (first "
              f"{_f(row['ours_first_s'], '{:.1f}')} s), phaserEM {_f(row['phaser_s_iter'])} s/iter "
              f"(first {_f(row['phaser_first_s'], '{:.1f}')} s), ratio phaserEM/ours {_f(row['speedup'], '{:.2f}')}x"
              + (f", time to target ours/phaserEM {_f(row['ours_ttt_s'], '{:.1f}')}/"
                 f"{_f(row['phaser_ttt_s'], '{:.1f}')} s (from the process start "
                 f"{_f(row['ours_ttt_start_s'], '{:.1f}')}/{_f(row['phaser_ttt_start_s'], '{:.1f}')} s)"
                 if a.ttt else "")
              + (" ERROR " + str(row.get("ours_error") or row.get("phaser_error"))[-300:]
                 if row.get("ours_error") or row.get("phaser_error") else ""), flush=True)
        out.write_text(json.dumps({"machine": mach, "args": vars(a), "rows": rows, "raw": raw}, indent=1))
    mach["loadavg_end"] = open("/proc/loadavg").read().split()[:3] if os.path.exists("/proc/loadavg") else None
    mach["total_s"] = time.perf_counter() - t_all
    out.write_text(json.dumps({"machine": mach, "args": vars(a), "rows": rows, "raw": raw}, indent=1))
    print_table(rows, a.ttt)
    print(f"wrote {out} ({mach['total_s']:.0f} s)")


if __name__ == "__main__":
    main()
