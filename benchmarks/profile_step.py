"""Time one jitted conventional group step with parts switched off (where does a group go?).

    /work/venv/bin/python benchmarks/profile_step.py --solver lsqml --M 1 --S 1
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from phaser_std.backends import _jax, _numpy
from phaser_std.engines.conventional_solvers import EpieConfig, EpieSolver, LsqmlConfig, LsqmlSolver, make_group_step
from phaser_std.engines.noise_models import AnscombeConfig, AmplitudeNoise, AnscombeNoise, AmplitudeConfig


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--backend", default="jax")
    ap.add_argument("--solver", default="lsqml")
    ap.add_argument("--B", type=int, default=64)
    ap.add_argument("--M", type=int, default=1)
    ap.add_argument("--S", type=int, default=1)
    ap.add_argument("--N", type=int, default=64)
    ap.add_argument("--n", type=int, default=20)
    a = ap.parse_args()
    bk = _jax() if a.backend == "jax" else _numpy()
    rng = np.random.default_rng(0)
    N, B, M, S = a.N, a.B, a.M, a.S
    H = W = 200
    solver = (LsqmlSolver(LsqmlConfig()) if a.solver == "lsqml" else EpieSolver(EpieConfig())).for_slices(S)
    noise = AnscombeNoise(AnscombeConfig()) if a.solver == "lsqml" else AmplitudeNoise(AmplitudeConfig())
    props = None if S == 1 else bk.asarray(np.exp(1j * rng.random((S - 1, N, N))).astype(np.complex64))
    step = make_group_step(bk, solver, noise, props, (N, N))
    if a.backend == "jax":
        step = bk.jit(step, static_argnames=("update_object", "update_probe", "update_positions"))
    obj = bk.asarray(np.exp(0.1j * rng.random((S, H, W))).astype(np.complex64))
    probe = bk.asarray((rng.random((M, N, N)) + 1j * rng.random((M, N, N))).astype(np.complex64))
    meas = bk.asarray(rng.random((B, N, N)).astype(np.float32) * 10)
    starts = bk.asarray(rng.integers(0, H - N, (B, 2)).astype(np.int32))
    frac = bk.asarray(rng.random((B, 2)).astype(np.float32) - 0.5)
    mask = bk.asarray(np.ones(B, bool))
    hyper = {"beta_object": bk.asarray(0.5), "beta_probe": bk.asarray(0.5)}
    for uo, up in ((True, True), (True, False), (False, True), (False, False)):
        f = lambda: bk.synchronize(step(obj, probe, meas, starts, frac, mask, hyper, update_object=uo, update_probe=up))
        f()
        t0 = time.perf_counter()
        for _ in range(a.n):
            f()
        print(f"{a.backend} {a.solver} B={B} M={M} S={S} obj={uo} probe={up}: {(time.perf_counter() - t0) / a.n * 1e3:.2f} ms/group")


if __name__ == "__main__":
    main()
