"""Small simulated datasets and plan runs shared by the engine tests."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from phaser_core.plan import load_plan
from phaser_core.runner import run_plan
from phaser_std.data.loaders.hdf5 import read_ground_truth
from phaser_std.data.simulate import simulate, spec_from_dict, write_hdf5

#: a MoS2-like projected cell: the default object of the engine tests
CELL = {
    "cell_A": [3.19, 5.525],
    "atoms": [
        {"position": [0.0, 0.0], "strength_rad": 0.6, "width_A": 0.3},
        {"position": [0.5, 0.5], "strength_rad": 0.6, "width_A": 0.3},
        {"position": [0.0, 0.3333], "strength_rad": 0.35, "width_A": 0.3},
        {"position": [0.5, 0.8333], "strength_rad": 0.35, "width_A": 0.3},
    ],
}

BASE_SPEC = {
    "energy_eV": 200e3,
    "convergence_angle_mrad": 25.0,
    "defocus_A": 50.0,
    "detector_shape": [64, 64],
    "reciprocal_sampling_invA": 0.1,
    "scan": {"shape": [16, 16], "step_A": 0.6},
    "dose": None,
    "object": CELL,
    "seed": 0,
}


def merge(base: dict, changes: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def make_dataset(path: Path, **changes: Any) -> Path:
    """Simulate ``BASE_SPEC`` updated with ``changes`` into ``path`` (hdf5 raw format)."""
    spec = spec_from_dict(merge(BASE_SPEC, changes))
    write_hdf5(simulate(spec), path)
    return path


def ground_truth(path: Path) -> dict:
    with h5py.File(path, "r") as f:
        return read_ground_truth(f["ground_truth"])


def true_positions(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(nominal, true) scan positions (N, 2) [Å]."""
    with h5py.File(path, "r") as f:
        return f["scan_positions"][...], f["ground_truth/scan_positions"][...]


def position_rms(a: np.ndarray, b: np.ndarray) -> float:
    """RMS distance [Å] between two position sets after removing their mean offset."""
    d = np.asarray(a) - np.asarray(b)
    d = d - d.mean(axis=0)
    return float(np.sqrt(np.mean(np.sum(d * d, axis=1))))


def run(data: Path, engines: list[dict], *, backend: str = "numpy", out_dir: Path | None = None,
        key: str = "patterns", seed: int = 0, **plan_keys: Any):
    """Run a plan on ``data`` and return the final state."""
    plan = {
        "file_type": "phaser_plan",
        "version": 1,
        "backend": backend,
        "seed": seed,
        "raw_data": {"type": "hdf5", "path": str(data), "key": key},
        "engines": engines,
        **plan_keys,
    }
    return run_plan(load_plan(plan), out_dir=out_dir, quiet=True)
