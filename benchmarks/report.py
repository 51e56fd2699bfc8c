#!/usr/bin/env python
"""Markdown tables from bench.py JSON files (for RESULTS.md).

    /work/venv/bin/python benchmarks/report.py benchmarks/results/matrix-jax.json [...]
"""

from __future__ import annotations

import json
import sys


def _f(v, fmt="{:.3f}"):
    return "-" if v is None else fmt.format(v)


def machine_line(m: dict) -> str:
    ph = m.get("phaserEM") or {}
    return (f"{m.get('date_utc')} · {m.get('cpu_model')} x{m.get('cpu_count')} · {m.get('mem_total_gib')} GiB · "
            f"python {m.get('python')} · ours: numpy {m.get('numpy')}, jax {m.get('jax')}, scipy {m.get('scipy')} · "
            f"phaserEM {ph.get('phaserEM')} (jax {ph.get('jax')}, numpy {ph.get('numpy')}) · "
            f"load avg at start {m.get('loadavg_start')}, end {m.get('loadavg_end')} · {_f(m.get('total_s'), '{:.0f}')} s"
            + (f" · GPU {'; '.join(m['gpus'])}, cupy {m.get('cupy')}" if m.get("gpus") else ""))


def table(doc: dict) -> str:
    rows = doc["rows"]
    ttt = bool(doc.get("args", {}).get("ttt"))
    head = ["case", "first s ours", "first s ph", "s/iter ours", "s/iter ph", "ratio", "CPU ratio",
            "RSS MiB ours", "RSS MiB ph", "pearson ours", "pearson ph"]
    gpu = any(r.get("ours_gpu_mib") is not None for r in rows)
    if gpu:
        head += ["GPU MiB ours", "GPU MiB ph"]
    from_start = ttt and any(r.get("ours_ttt_start_s") is not None for r in rows)
    if ttt:
        head += ["t→target ours", "t→target ph", "ttt ratio"]
    if from_start:  # files from session 19 on: the same from the worker's start
        head += ["from start ours", "from start ph", "ratio"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        v = [r["case"], _f(r["ours_first_s"], "{:.1f}"), _f(r["phaser_first_s"], "{:.1f}"), _f(r["ours_s_iter"]),
             _f(r["phaser_s_iter"]), _f(r["speedup"], "{:.2f}x"), _f(r["speedup_cpu"], "{:.2f}x"),
             _f(r["ours_rss_mib"], "{:.0f}"), _f(r["phaser_rss_mib"], "{:.0f}"), _f(r["ours_pearson"]),
             _f(r["phaser_pearson"])]
        if gpu:
            v += [_f(r.get("ours_gpu_mib"), "{:.0f}"), _f(r.get("phaser_gpu_mib"), "{:.0f}")]
        if ttt:
            v += [_f(r["ours_ttt_s"], "{:.1f}"), _f(r["phaser_ttt_s"], "{:.1f}"), _f(r["ttt_speedup"], "{:.2f}x")]
        if from_start:
            v += [_f(r.get("ours_ttt_start_s"), "{:.1f}"), _f(r.get("phaser_ttt_start_s"), "{:.1f}"),
                  _f(r.get("ttt_start_speedup"), "{:.2f}x")]
        if r.get("ours_error") or r.get("phaser_error"):
            v[0] += " (error)"
        out.append("| " + " | ".join(v) + " |")
    return "\n".join(out)


def main() -> None:
    for path in sys.argv[1:]:
        doc = json.load(open(path))
        a = doc.get("args", {})
        print(f"### `{path}`\n")
        print(f"Machine: {machine_line(doc['machine'])}\n")
        print(f"Args: iters {a.get('iters')}, probe_after {a.get('probe_after')}, ttt {a.get('ttt')}, "
              f"target {a.get('target')}, score_every {a.get('score_every')}\n")
        print(table(doc))
        print()


if __name__ == "__main__":
    main()
