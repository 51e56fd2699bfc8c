"""Time the forward-model kernels one by one under jit (what one group step is made of).

    /work/venv/bin/python benchmarks/profile_kernels.py [--backend jax|numpy] [--B 64] [--M 1] [--S 1]
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from phaser_std.backends import _jax, _numpy
from phaser_std.physics import forward as fw


def timeit(fn, n=30):
    fn()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n * 1e3


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--backend", default="jax")
    ap.add_argument("--B", type=int, default=64)
    ap.add_argument("--M", type=int, default=1)
    ap.add_argument("--S", type=int, default=1)
    ap.add_argument("--N", type=int, default=64)
    a = ap.parse_args()
    bk = _jax() if a.backend == "jax" else _numpy()
    xp = bk.xp
    rng = np.random.default_rng(0)
    N, B, M, S = a.N, a.B, a.M, a.S
    H = W = 200
    obj = bk.asarray(np.exp(1j * rng.random((S, H, W))).astype(np.complex64))
    probe = bk.asarray((rng.random((M, N, N)) + 1j * rng.random((M, N, N))).astype(np.complex64))
    starts = bk.asarray(rng.integers(0, H - N, (B, 2)).astype(np.int32))
    frac = bk.asarray(rng.random((B, 2)).astype(np.float32) - 0.5)
    waves = bk.asarray((rng.random((B, M, N, N)) + 1j * rng.random((B, M, N, N))).astype(np.complex64))
    views4 = bk.asarray((rng.random((B, S, N, N)) + 0j).astype(np.complex64))
    sync = (lambda x: x.block_until_ready()) if a.backend == "jax" else (lambda x: x)
    J = (lambda f: bk.jit(f)) if a.backend == "jax" else (lambda f: f)
    k = {
        "get_views": J(lambda o, s: fw.get_views(bk, o, s, (N, N))),
        "add_views": J(lambda o, s, v: fw.add_views(bk, xp.zeros_like(o), s, v)),
        "shift_probes": J(lambda p, f: fw.shift_probes(bk, p, f)),
        "unshift_probes": J(lambda g, f: fw.unshift_probes(bk, g, f)),
        "fft2": J(lambda w: bk.fft2(w)),
        "intensity": J(lambda w: fw.intensity(bk, w)),
    }
    res = {
        "get_views": timeit(lambda: sync(k["get_views"](obj, starts))),
        "add_views": timeit(lambda: sync(k["add_views"](obj, starts, views4))),
        "shift_probes": timeit(lambda: sync(k["shift_probes"](probe, frac))),
        "unshift_probes": timeit(lambda: sync(k["unshift_probes"](waves, frac))),
        "fft2": timeit(lambda: sync(k["fft2"](waves))),
        "intensity": timeit(lambda: sync(k["intensity"](waves))),
    }
    for name, ms in res.items():
        print(f"{a.backend} B={B} M={M} S={S} N={N} {name:16s} {ms:8.3f} ms")


if __name__ == "__main__":
    main()
