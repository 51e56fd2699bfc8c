"""Datasets and the case matrix of the benchmark (shared by the driver and the workers).

Datasets are ``phaser simulate`` specs, simulated once (seeded) into ``benchmarks/.cache``.
A case is one (engine, backend, slices, modes, group) reconstruction of one dataset; the
settings each package runs with are built here from the case, matched between packages:
same noise model per engine, same group size, modes, slices, iterations, float32 (or
``--dtype float64`` for both), the probe updated from the first iteration
(``--probe-after 0`` for phaserEM).
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import os
from pathlib import Path

HERE = Path(__file__).resolve().parent
CACHE = HERE / ".cache"
#: the phaserEM harness (../shared/bench beside the repository); PHASER_SHARED_BENCH points
#: elsewhere (a GPU machine, where ../shared does not travel)
SHARED_BENCH = Path(os.environ.get("PHASER_SHARED_BENCH", HERE.parent.parent / "shared" / "bench"))

#: a MoS2-like projected cell (the object of the engine tests)
CELL_ATOMS = [
    {"position": [0.0, 0.0], "strength_rad": 0.6, "width_A": 0.3},
    {"position": [0.5, 0.5], "strength_rad": 0.6, "width_A": 0.3},
    {"position": [0.0, 0.3333], "strength_rad": 0.35, "width_A": 0.3},
    {"position": [0.5, 0.8333], "strength_rad": 0.35, "width_A": 0.3},
]


def _spec(scan: int, det: int, n_slices: int = 1, step: float = 0.6, seed: int = 0) -> dict:
    obj: dict = {"cell_A": [3.19, 5.525], "atoms": copy.deepcopy(CELL_ATOMS)}
    if n_slices > 1:
        # weaker atoms per slice (total phase like the single-slice case), each slice's
        # lattice shifted a little further, plus random atoms so the slices differ
        for a in obj["atoms"]:
            a["strength_rad"] = round(a["strength_rad"] * 2.0 / n_slices, 4)
        obj.update({"n_slices": n_slices, "thickness_A": 10.0, "shift_per_slice_A": [0.15, 0.25],
                    "random": {"density_per_A2": 0.02, "strength_rad": [0.05, 0.15], "width_A": 0.3}})
    return {
        "energy_eV": 200e3, "convergence_angle_mrad": 25.0, "defocus_A": 50.0,
        "detector_shape": [det, det], "reciprocal_sampling_invA": 0.1,
        "scan": {"shape": [scan, scan], "step_A": step}, "dose": 1e5, "object": obj, "seed": seed,
    }


#: name -> (simulate spec, slices) ; 'default' sizes fit a 2-core CPU
DATASETS = {
    "single64": _spec(32, 64),                    # 1024 patterns of 64², 1 slice
    "multi64": _spec(16, 64, n_slices=8),         # 256 patterns of 64², 8 slices
    "single128": _spec(48, 128),                  # 2304 patterns of 128² (--big)
    "single64x50": _spec(50, 64),                 # 2500 patterns of 64² (--big; the harness README's size)
    "multi64x20": _spec(16, 64, n_slices=20),
    "multi96": _spec(32, 96, n_slices=13),        # 1024 patterns of 96², 13 slices (--big; the harness README's size)
    # the paper's sizes (--paper; GPU)
    "paper_single": _spec(64, 128),               # 4096 patterns of 128²
    "paper_multi": _spec(80, 128, n_slices=20),   # 6400 patterns of 128², 20 slices
}


def dataset_path(name: str) -> Path:
    spec = DATASETS[name]
    h = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:10]
    return CACHE / f"{name}-{h}.h5"


def n_slices(name: str) -> int:
    return int(DATASETS[name]["object"].get("n_slices", 1))


def total_thickness(name: str) -> float:
    o = DATASETS[name]["object"]
    return float(o.get("thickness_A", 10.0)) * n_slices(name)


# --------------------------------------------------------------------------- settings
CONV_MRAD = 25.0
NOISE = {"epie": "amplitude", "lsqml": "anscombe", "gradient": "poisson"}


def our_engine(engine: str, *, niter: int, group: int, modes: int, slices: int, thickness: float,
               probe_after: int = 0) -> dict:
    """Our engine block matched to run_phaser.py's (phaserEM's example settings)."""
    common: dict = {"niter": niter, "grouping": {"size": group}, "probe_modes": modes,
                    "noise_model": {"type": NOISE[engine], "eps": 0.1}}
    if probe_after:
        common["update_probe"] = {"after": probe_after}
    if slices > 1:
        common["slices"] = {"n": slices, "total_thickness_A": thickness}
    if engine == "epie":
        return {"type": "conventional", **common, "solver": {"type": "epie", "beta_object": 0.5, "beta_probe": 0.5}}
    if engine == "lsqml":
        return {"type": "conventional", **common,
                "solver": {"type": "lsqml", "beta_object": 1.0, "beta_probe": 1.0, "gamma": 1e-4,
                           "illum_reg_object": 1e-2, "illum_reg_probe": 1e-2},
                "group_constraints": [{"type": "clamp_object_amplitude", "max_amplitude": 1.1}]}
    if engine == "gradient":
        regs = [{"type": "obj_l2", "cost": 1.0}, {"type": "obj_tikh", "cost": 5.0}]
        if slices > 1:
            regs.append({"type": "layers_tikh", "cost": 500.0})
        # cost_per group: phaserEM adds each cost's whole penalty at every group (its fraction
        # evaluates to 1), so its example weights act positions/group times ours per iteration
        return {"type": "gradient", **common, "cost_per": "group",
                "solvers": {"object": {"type": "adam", "learning_rate": 1e-2, "nesterov": True},
                            "probe": {"type": "adam", "learning_rate": 1e-2, "nesterov": True}},
                "regularizers": regs,
                "iter_constraints": [{"type": "limit_probe_support", "max_angle_mrad": round(CONV_MRAD * 1.1, 3)}]}
    raise ValueError(engine)


def our_default_engine(engine: str, *, niter: int, group: int, modes: int, slices: int, thickness: float,
                       probe_after: int = 0) -> dict:
    """Our engine block with our own defaults (what `phaser describe engine ...` lists):
    only the engine, solver, group size, modes and slices are set (``bench.py --ours-defaults``,
    for time to target "with each package's example settings")."""
    block: dict = {"niter": niter, "grouping": {"size": group}, "probe_modes": modes}
    if probe_after:
        block["update_probe"] = {"after": probe_after}
    if slices > 1:
        block["slices"] = {"n": slices, "total_thickness_A": thickness}
    if engine in ("epie", "lsqml"):
        return {"type": "conventional", **block, "solver": {"type": engine}}
    if engine == "gradient":
        return {"type": "gradient", **block}
    raise ValueError(engine)


def phaser_args(engine: str, *, niter: int, group: int, modes: int, slices: int, thickness: float,
                backend: str, probe_after: int = 0, dtype: str = "float32") -> list[str]:
    """Arguments of the harness's run_phaser.py for the same case."""
    a = ["--engine", engine, "--backend", backend, "--iters", str(niter), "--group", str(group),
         "--modes", str(modes), "--slices", str(slices), "--probe-after", str(probe_after),
         "--dtype", dtype, "--quiet"]
    if slices > 1:
        a += ["--thickness", str(thickness)]
    return a


# --------------------------------------------------------------------------- the matrix
ENGINES = ("epie", "lsqml", "gradient")
BACKENDS = ("numpy", "jax")
MODES = (1, 4)
GROUPS = (16, 64, 256)


def case_id(c: dict) -> str:
    return f"{c['engine']}/{c['backend']}/{c['dataset']}/m{c['modes']}/g{c['group']}"


def matrix(size: str = "default", engines=ENGINES, backends=BACKENDS) -> list[dict]:
    if size == "paper":
        sets = ["paper_single", "paper_multi"]
    elif size == "big":
        sets = ["single64", "multi64", "single128", "single64x50", "multi96", "multi64x20"]
    else:
        sets = ["single64", "multi64"]
    out = []
    for ds, eng, bk, m, g in itertools.product(sets, engines, backends, MODES, GROUPS):
        out.append({"engine": eng, "backend": bk, "dataset": ds, "modes": m, "group": g})
    return out


def quick(cases: list[dict]) -> list[dict]:
    """The --quick subset: group 64, jax, 1 mode (plus 4 modes single slice)."""
    return [c for c in cases if c["group"] == 64 and c["backend"] == "jax"
            and (c["modes"] == 1 or c["dataset"].startswith("single"))]
