"""The third-party plugin in plugins/phaser-example-loader, installed as its own distribution.

Install it first: ``pip install -e plugins/phaser-example-loader`` (``.ci/run`` does).
"""

from __future__ import annotations

import importlib.metadata as md
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from phaser_core.context import LoadContext
from phaser_core.errors import DataError
from phaser_core.physics_constants import wavelength_A
from phaser_core.plan import load_plan
from phaser_core.registry import Owner, Registry

try:
    DIST = md.distribution("phaser-example-loader")
except md.PackageNotFoundError:  # pragma: no cover - depends on the environment
    pytest.skip("phaser-example-loader is not installed; run `pip install -e plugins/phaser-example-loader`",
                allow_module_level=True)

from phaser_example_loader.loader import (  # noqa: E402
    ExampleLabRawConfig,
    load_example_lab_raw,
    unmirror_columns,
    write_example_lab_raw,
)

OWNER = "phaser-example-loader 0.1.0"


def example_entry_point() -> md.EntryPoint:
    eps = [ep for ep in md.entry_points(group="phaser.plugins") if ep.name == "phaser_example_loader"]
    assert len(eps) == 1, "the example plugin must declare one entry point in the group phaser.plugins"
    return eps[0]


@pytest.fixture(scope="module")
def registry():
    """The example plugin's entry point (plus a stub phaser_std and the plan fakes)."""
    sys.path.insert(0, str(Path(__file__).parent))
    import plan_fakes

    ep = example_entry_point()
    orig = md.entry_points
    md.entry_points = lambda group=None: [ep]
    try:
        return Registry.build(extra_plugins=[("phaser_std", plan_fakes)])
    finally:
        md.entry_points = orig


def test_entry_point_registers_loader_with_distribution_owner(registry):
    comp = registry.get("loader", "example_lab_raw")
    assert comp.owner == Owner("phaser_example_loader", "phaser-example-loader", "0.1.0")
    assert str(comp.owner) == OWNER and comp.config is ExampleLabRawConfig


def test_phaser_plugins_lists_the_loader():
    """`phaser plugins` with the real registry lists the loader with its package name and version."""
    env = dict(os.environ, COLUMNS="250")
    proc = subprocess.run([sys.executable, "-m", "phaser_core.cli", "plugins", "--json"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    rows = {(r["kind"], r["name"]): r for r in json.loads(proc.stdout)}
    row = rows[("loader", "example_lab_raw")]
    assert row["owner"] == OWNER and row["distribution"] == "phaser-example-loader" and row["version"] == "0.1.0"
    proc = subprocess.run([sys.executable, "-m", "phaser_core.cli", "plugins"], env=env,
                          capture_output=True, text=True, timeout=120)
    line = next(l for l in proc.stdout.splitlines() if "example_lab_raw" in l)
    assert OWNER in line


def test_plan_naming_the_loader_validates(registry, tmp_path):
    plan = load_plan("file_type: phaser_plan\nversion: 1\n"
                     "raw_data: {type: example_lab_raw, path: scan.npz, gain_counts_per_electron: 8}\n"
                     "engines: [{type: conventional, niter: 2}]\n", registry=registry)
    assert plan.raw_data.type == "example_lab_raw"
    assert plan.raw_data.config == ExampleLabRawConfig(path="scan.npz", gain_counts_per_electron=8.0)
    with pytest.raises(Exception, match=r"raw_data: unknown key 'gian'"):
        load_plan("file_type: phaser_plan\nraw_data: {type: example_lab_raw, path: x.npz, gian: 2}\n"
                  "engines: [{type: conventional}]\n", registry=registry)


def test_unmirror_keeps_the_centre_pixel():
    for q in (4, 5):
        frame = np.zeros((1, q, q))
        frame[0, 1, q // 2] = 1.0  # on the centre column: stays
        frame[0, 2, q // 2 + 1] = 2.0  # one right of centre -> one left
        out = unmirror_columns(frame)
        assert out[0, 1, q // 2] == 1.0 and out[0, 2, q // 2 - 1] == 2.0 and out.sum() == 3.0
        np.testing.assert_array_equal(unmirror_columns(out), frame)


def test_loader_reads_counts_applies_gain_and_unmirrors(tmp_path):
    rng = np.random.default_rng(0)
    ny, nx, q = 2, 3, 8
    electrons = rng.integers(0, 50, size=(ny * nx, q, q)).astype(np.float64)
    electrons[:, q // 2, q // 2 + 2] = 1000.0  # an asymmetric feature right of the centre
    gain = 4.0
    write_example_lab_raw(tmp_path / "scan.npz", electrons, energy_eV=200e3, scan_shape=(ny, nx),
                          scan_step_A=(0.5, 0.25), gain_counts_per_electron=gain, angular_sampling_mrad=0.5)
    # the file holds what the camera records: mirrored uint16 counts
    with np.load(tmp_path / "scan.npz") as npz:
        raw = npz["frames"]
    assert raw.dtype == np.uint16 and raw.shape == (ny * nx, q, q)
    assert raw[0, q // 2, q // 2 - 2] == 4000 and raw[0, q // 2, q // 2 + 2] != 4000

    ctx = LoadContext(plan_dir=tmp_path, dtype="float32")
    data = load_example_lab_raw(ExampleLabRawConfig(path="scan.npz"), ctx)
    assert data.patterns.dtype == np.float32 and data.patterns.shape == (ny * nx, q, q)
    np.testing.assert_array_equal(data.patterns, electrons.astype(np.float32))  # integers / 4 are exact
    assert data.energy_eV == 200e3 and data.scan_shape == (ny, nx) and data.scan_step_A == (0.5, 0.25)
    dk = 0.5e-3 / wavelength_A(200e3)
    np.testing.assert_allclose(data.reciprocal_sampling_invA, (dk, dk), rtol=1e-12)
    # the plan's gain overrides the sidecar; the folder form finds the one .npz
    data2 = load_example_lab_raw(ExampleLabRawConfig(path=".", gain_counts_per_electron=8.0), ctx)
    np.testing.assert_array_equal(data2.patterns, (electrons / 2).astype(np.float32))


def test_loader_errors_name_the_file(tmp_path):
    ctx = LoadContext(plan_dir=tmp_path)
    with pytest.raises(DataError, match="no such file"):
        load_example_lab_raw(ExampleLabRawConfig(path="missing.npz"), ctx)
    np.savez(tmp_path / "scan.npz", frames=np.zeros((2, 4, 4), np.uint16))
    with pytest.raises(DataError, match="scan.json is missing"):
        load_example_lab_raw(ExampleLabRawConfig(path="scan.npz"), ctx)
    (tmp_path / "scan.json").write_text(json.dumps({"energy_eV": 1e5}))
    with pytest.raises(DataError, match="gain_counts_per_electron must be a positive number"):
        load_example_lab_raw(ExampleLabRawConfig(path="scan.npz"), ctx)
