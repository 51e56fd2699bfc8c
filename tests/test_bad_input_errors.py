"""Bad input gets a clear error naming the file, plan line or array and what to do; no traceback.

Each test feeds one kind of bad input (a data file without metadata, a file of the wrong
format, an out-of-range setting, a bad --set, ...) through the ``phaser`` entry point
(:func:`phaser_core.cli.main`) or the loader, on tiny data made in ``tmp_path``.
"""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest

from phaser_core import cli
from phaser_core.context import LoadContext
from phaser_core.errors import DataError
from phaser_std.data.simulate import simulate, spec_from_dict, write_hdf5

TINY = {
    "energy_eV": 200e3, "convergence_angle_mrad": 25.0, "defocus_A": 30.0,
    "detector_shape": [16, 16], "reciprocal_sampling_invA": 0.25,
    "scan": {"shape": [3, 3], "step_A": 0.6}, "dose": 1e3,
    "object": {"cell_A": [2.5, 2.5], "atoms": [{"position": [0.5, 0.5], "strength_rad": 0.4}]},
}

ENGINE = """\
engines:
  - type: conventional
    niter: 1
    grouping: {size: 4}
    solver: {type: lsqml}
"""


@pytest.fixture(scope="module")
def tiny_h5(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "tiny.h5"
    write_hdf5(simulate(spec_from_dict(TINY)), path)
    return path


def _variant(tiny_h5: Path, folder: Path, name: str, edit) -> Path:
    path = folder / name
    path.write_bytes(tiny_h5.read_bytes())
    with h5py.File(path, "r+") as f:
        edit(f)
    return path


def _plan(folder: Path, raw_data: str, extra: str = "", name: str = "plan.yaml") -> Path:
    path = folder / name
    path.write_text(f"file_type: phaser_plan\nversion: 1\nname: t\nraw_data: {raw_data}\n{extra}{ENGINE}")
    return path


def _cli(capsys, *args: str) -> tuple[int, str]:
    """``phaser ARGS`` through the entry point: (exit code, stdout + stderr)."""
    rc = cli.main(list(args))
    captured = capsys.readouterr()
    text = captured.out + captured.err
    assert "Traceback" not in text
    return rc, " ".join(text.split())  # rich wraps long lines


def _run(capsys, plan: Path, *extra: str) -> tuple[int, str]:
    return _cli(capsys, "run", str(plan), "--out", str(plan.parent / "out"), "--quiet", *extra)


# -- 1. missing or invalid metadata ------------------------------------------------------


def _del(*names):
    def edit(f):
        for n in names:
            del f.attrs[n]
    return edit


@pytest.mark.parametrize("attrs_gone, expected", [
    (("energy_eV",), "energy_eV (the beam energy [eV]) is not in the data file; set raw_data.energy_eV"),
    (("convergence_angle_mrad",), "set raw_data.convergence_angle_mrad (or init.probe.conv_angle_mrad)"),
    (("reciprocal_sampling_invA", "angular_sampling_mrad"), "set raw_data.reciprocal_sampling_invA"),
])
def test_missing_metadata_names_file_attribute_and_plan_key(tiny_h5, tmp_path, capsys, attrs_gone, expected):
    _variant(tiny_h5, tmp_path, "d.h5", _del(*attrs_gone))
    rc, text = _run(capsys, _plan(tmp_path, "{type: hdf5, path: d.h5}"))
    assert rc == 1
    assert f"{tmp_path / 'd.h5'}" in text and expected in text
    assert not (tmp_path / "out" / "checkpoint.h5").exists()


def test_missing_scan_metadata(tiny_h5, tmp_path, capsys):
    def edit(f):
        del f["scan_positions"]
        del f.attrs["scan_step_A"]
    _variant(tiny_h5, tmp_path, "d.h5", edit)
    rc, text = _run(capsys, _plan(tmp_path, "{type: hdf5, path: d.h5}"))
    assert rc == 1 and "d.h5" in text and "no scan positions and no scan_step_A" in text
    assert "set raw_data.scan_step_A in the plan" in text


def test_npy_without_metadata(tmp_path, capsys):
    np.save(tmp_path / "p.npy", np.ones((3, 3, 16, 16), np.float32))
    rc, text = _run(capsys, _plan(tmp_path, "{type: npy, path: p.npy, energy_eV: 2.0e5, "
                                            "convergence_angle_mrad: 25, reciprocal_sampling_invA: 0.25}"))
    assert rc == 1 and "p.npy" in text and "set raw_data.scan_step_A" in text
    assert "given (a .npy file holds no metadata); set raw_data.scan_step_A" in " ".join(text.split())


@pytest.mark.parametrize("value, expected", [
    (0.0, "energy_eV is 0.0, it must be a positive number [eV]; fix the data file or set raw_data.energy_eV"),
    ("200 kV", "attribute energy_eV is '200 kV', not a number [eV]"),
])
def test_invalid_energy_attribute(tiny_h5, tmp_path, capsys, value, expected):
    def edit(f):
        f.attrs["energy_eV"] = value
    _variant(tiny_h5, tmp_path, "d.h5", edit)
    rc, text = _run(capsys, _plan(tmp_path, "{type: hdf5, path: d.h5}"))
    assert rc == 1 and "d.h5" in text and expected in text


def test_plan_override_wins_over_an_unreadable_attribute(tiny_h5, tmp_path):
    from phaser_std.data.loaders.hdf5 import Hdf5Config, load_hdf5

    def edit(f):
        f.attrs["energy_eV"] = "200 kV"
    path = _variant(tiny_h5, tmp_path, "d.h5", edit)
    data = load_hdf5(Hdf5Config(path=str(path), energy_eV=2e5), LoadContext())
    assert data.energy_eV == 2e5


def test_a_plan_scan_step_replaces_the_recorded_positions(tiny_h5, tmp_path):
    """The plan's ``scan_step_A`` overrides the file's step and its ``/scan_positions`` (it
    was silently ignored where the file recorded positions, as every simulated file does)."""
    from phaser_core.plan import load_plan
    from phaser_core.registry import get_registry
    from phaser_core.runner import initial_state, load_data

    (tmp_path / "d.h5").write_bytes(tiny_h5.read_bytes())
    plan = load_plan(_plan(tmp_path, "{type: hdf5, path: d.h5, scan_step_A: 0.3}"))
    data = load_data(plan, get_registry(), tmp_path)
    assert data.scan_positions_A is None and data.scan_step_A == (0.3, 0.3)
    scan = initial_state(plan, data, get_registry(), tmp_path).scan_A.reshape(3, 3, 2)
    np.testing.assert_allclose(np.diff(scan, axis=0)[..., 0], 0.3)
    np.testing.assert_allclose(np.diff(scan, axis=1)[..., 1], 0.3)


@pytest.mark.parametrize("raw, expected", [
    ("{type: hdf5, path: d.h5, scan_step_A: 0}", "scan_step_A is (0.0, 0.0), it must be a positive number [Å]"),
    ("{type: hdf5, path: d.h5, defocus_A: .nan}", "raw_data.defocus_A is nan; give a number [Å]"),
])
def test_a_zero_scan_step_or_a_nan_defocus_in_the_plan_is_refused(tiny_h5, tmp_path, capsys, raw, expected):
    (tmp_path / "d.h5").write_bytes(tiny_h5.read_bytes())
    rc, text = _run(capsys, _plan(tmp_path, raw))
    assert rc == 1 and expected in text


def test_a_nan_defocus_in_the_file_is_read_as_unknown(tiny_h5, tmp_path):
    """NaN, a common placeholder for "not known", made a NaN probe and a misleading
    divergence message; now it is read as a missing attribute (the probe takes the
    parallax's defocus where the scan allows one, else 0 Å; this 3 x 3 scan does not)."""
    from phaser_core.plan import load_plan
    from phaser_core.registry import get_registry
    from phaser_core.runner import initial_state, load_data

    def edit(f):
        f.attrs["defocus_A"] = np.nan
    _variant(tiny_h5, tmp_path, "d.h5", edit)
    plan = load_plan(_plan(tmp_path, "{type: hdf5, path: d.h5}"))
    data = load_data(plan, get_registry(), tmp_path)
    assert data.defocus_A is None
    notes: list[str] = []
    state = initial_state(plan, data, get_registry(), tmp_path, notes=notes)
    assert np.isfinite(state.probe.data).all()


def test_empad_path_doc_lists_every_plan_key():
    import attrs

    from phaser_std.data.loaders.empad import EmpadConfig

    doc = attrs.fields_dict(EmpadConfig)["path"].metadata["doc"]
    for key in ("energy_eV", "convergence_angle_mrad", "angular_sampling_mrad", "scan_step_A", "scan_shape"):
        assert key in doc


# -- 2. files of the wrong format --------------------------------------------------------


def test_text_file_named_h5(tmp_path, capsys):
    (tmp_path / "notes.h5").write_text("not hdf5")
    rc, text = _run(capsys, _plan(tmp_path, "{type: hdf5, path: notes.h5}"))
    assert rc == 1 and f"{tmp_path / 'notes.h5'}: cannot open it as HDF5" in text and "type: npy" in text
    rc, text = _cli(capsys, "inspect", str(tmp_path / "notes.h5"))
    assert rc == 1 and "cannot open it as HDF5" in text


def test_complex_patterns(tiny_h5, tmp_path, capsys):
    def edit(f):
        p = f["patterns"][()]
        del f["patterns"]
        f["patterns"] = p.astype(np.complex64)
    _variant(tiny_h5, tmp_path, "d.h5", edit)
    rc, text = _run(capsys, _plan(tmp_path, "{type: hdf5, path: d.h5}"))
    assert rc == 1 and "d.h5:/patterns: the patterns have dtype complex64; they must be real numbers" in text


NPY_META = "energy_eV: 2.0e5, convergence_angle_mrad: 25, reciprocal_sampling_invA: 0.25, scan_step_A: 0.6"


def test_npy_loader_on_bad_files(tiny_h5, tmp_path, capsys):
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}] * 4, dtype=object))
    rc, text = _run(capsys, _plan(tmp_path, f"{{type: npy, path: obj.npy, {NPY_META}}}"))
    assert rc == 1 and "obj.npy: cannot read the patterns as a .npy array of numbers" in text
    (tmp_path / "d.h5").write_bytes(tiny_h5.read_bytes())
    rc, text = _run(capsys, _plan(tmp_path, f"{{type: npy, path: d.h5, {NPY_META}}}"))
    assert rc == 1 and "d.h5: the patterns file is not a NumPy .npy file" in text and "type: hdf5" in text


def test_hdf5_loader_on_an_npy_file(tmp_path, capsys):
    np.save(tmp_path / "p.npy", np.ones((9, 16, 16), np.float32))
    rc, text = _run(capsys, _plan(tmp_path, "{type: hdf5, path: p.npy}"))
    assert rc == 1 and "p.npy: cannot open it as HDF5" in text


def test_rsciio_reader_failure_is_a_data_error(tmp_path):
    from phaser_std.data.loaders.rsciio import _read_signals

    def reader(path, lazy=False):
        raise OSError("not a Tofwerk file")

    reader.__module__ = "rsciio.tofwerk._api"
    with pytest.raises(DataError, match=r"x\.h5: rosettasciio's tofwerk reader .* cannot read it: "
                                        r"OSError: not a Tofwerk file\. Set raw_data.format"):
        _read_signals(reader, tmp_path / "x.h5", None)


# -- 3. inconsistent arrays in the hdf5 file ---------------------------------------------


def test_mask_of_the_wrong_shape(tiny_h5, tmp_path, capsys):
    def edit(f):
        f["mask"] = np.ones((8, 8), bool)
    _variant(tiny_h5, tmp_path, "d.h5", edit)
    rc, text = _run(capsys, _plan(tmp_path, "{type: hdf5, path: d.h5}"))
    assert rc == 1 and "d.h5:/mask has shape (8, 8) but the detector is (16, 16)" in text


def test_scan_shape_attribute_contradicting_the_patterns(tiny_h5, tmp_path, capsys):
    def edit(f):
        f.attrs["scan_shape"] = np.array([2, 2])
    _variant(tiny_h5, tmp_path, "d.h5", edit)
    rc, text = _run(capsys, _plan(tmp_path, "{type: hdf5, path: d.h5}"))
    assert rc == 1 and "scan_shape (2, 2) has 4 points but there are 9 patterns" in text
    assert "raw_data.scan_shape" in text


# -- 4. out-of-range settings ------------------------------------------------------------


@pytest.mark.parametrize("override, expected", [
    ("engines[0].grouping.size=0", "engines[0].grouping.size: must be >= 1, got 0"),
    ("engines[0].probe_modes=0", "engines[0].probe_modes: must be >= 1, got 0"),
    ("engines[0].grouping.chunk=3", "engines[0].grouping.chunk: must be a divisor of grouping.size = 4 (1, 2, 4), "
                                    "or null to size it automatically; got 3"),
    ("engines[0].niter=-3", "engines[0].niter: must be >= 0, got -3"),
    ("engines[0].position_solver={type: momentum, step_size: -1}",
     "engines[0].position_solver.step_size: must be > 0, got -1.0"),
    ("engines[0].iter_constraints=[{type: limit_probe_support}]",
     "engines[0].iter_constraints[0]: limit_probe_support needs max_angle_mrad [mrad] and/or radius_A [Å]"),
    ("engines[0].group_constraints=[{type: clamp_object_amplitude, min_amplitude: 2}]",
     "engines[0].group_constraints[0].min_amplitude: must be >= 0 and <= max_amplitude = 1.0, got 2"),
    ("engines[0].noise_model={type: gaussian, sigma: 0}", "engines[0].noise_model.sigma: must be > 0, got 0.0"),
    ("engines[0].noise_model={type: amplitude, eps: -1}", "engines[0].noise_model.eps: must be > 0, got -1.0"),
    ("engines[0].solver={type: epie, beta_object: 5}", "engines[0].solver.beta_object: must be >= 0 and <= 1, got 5.0"),
    ("engines[0].solver={type: lsqml, illum_reg_object: -0.1}",
     "engines[0].solver.illum_reg_object: must be >= 0, got -0.1"),
])
def test_out_of_range_settings_fail_validate(tmp_path, capsys, override, expected):
    plan = _plan(tmp_path, "{type: hdf5, path: d.h5}")
    rc, text = _cli(capsys, "validate", str(plan), "--set", override)
    assert rc == 1 and expected in text


def test_out_of_range_setting_in_the_file_is_located(tmp_path, capsys):
    plan = _plan(tmp_path, "{type: hdf5, path: d.h5}")
    plan.write_text(plan.read_text() + "    iter_constraints: [{type: limit_probe_support}]\n")
    rc, text = _cli(capsys, "validate", str(plan))
    assert rc == 1 and f"{plan}:10:24: engines[0].iter_constraints[0]: limit_probe_support needs" in text


class _FailsBeforeTheFirstIteration:
    def before_engine(self, engine, state, ctx):
        raise RuntimeError("boom")

    def __getattr__(self, name):
        return lambda *args: None


def test_failure_before_the_first_iteration_leaves_no_checkpoint(tiny_h5, tmp_path):
    from phaser_core.plan import load_plan
    from phaser_core.runner import run_plan

    (tmp_path / "d.h5").write_bytes(tiny_h5.read_bytes())
    plan = load_plan(_plan(tmp_path, "{type: hdf5, path: d.h5}"))
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="boom"):
        run_plan(plan, out_dir=out, plan_dir=tmp_path, quiet=True, observers=[_FailsBeforeTheFirstIteration()])
    assert not (out / "checkpoint.h5").exists()
    run_plan(plan, out_dir=out, plan_dir=tmp_path, quiet=True)  # the corrected rerun, same folder
    assert (out / "final.h5").exists()


def test_a_start_state_of_another_scan_is_refused_naming_both_counts(tiny_h5, tmp_path, capsys):
    """``init.state`` from a run on 9 patterns, on data cropped to 6 (a traceback deep in the
    engine before), and the reverse (half of the data silently unused before)."""
    (tmp_path / "d.h5").write_bytes(tiny_h5.read_bytes())
    rc, text = _run(capsys, _plan(tmp_path, "{type: hdf5, path: d.h5}", name="first.yaml"))
    assert rc == 0, text
    crop = "post_load: [{type: crop_data, scan: [0, 2, 0, 3]}]\n"
    state = f"init: {{state: {tmp_path / 'out' / 'final.h5'}}}\n"
    rc, text = _cli(capsys, "run", str(_plan(tmp_path, "{type: hdf5, path: d.h5}", crop + state, "cropped.yaml")),
                    "--out", str(tmp_path / "cropped"), "--quiet")
    assert rc == 1
    assert (f"{tmp_path / 'out' / 'final.h5'}: the state holds 9 scan positions but the data (after post_load) "
            "6 patterns" in text) and "drop init.state" in text
    rc, text = _cli(capsys, "run", str(_plan(tmp_path, "{type: hdf5, path: d.h5}", crop, "small.yaml")),
                    "--out", str(tmp_path / "small"), "--quiet")
    assert rc == 0, text
    state = f"init: {{state: {tmp_path / 'small' / 'final.h5'}}}\n"
    rc, text = _cli(capsys, "run", str(_plan(tmp_path, "{type: hdf5, path: d.h5}", state, "whole.yaml")),
                    "--out", str(tmp_path / "whole"), "--quiet")
    assert rc == 1 and "the state holds 6 scan positions but the data (after post_load) 9 patterns" in text


# -- 5. non-finite patterns --------------------------------------------------------------


def test_nan_patterns_stop_the_run_with_the_remedy(tiny_h5, tmp_path, capsys):
    def edit(f):
        p = f["patterns"][()]
        p[0, 1, 3, 3] = np.nan
        p[2, 2, 5, 5] = np.inf
        f["patterns"][...] = p
    _variant(tiny_h5, tmp_path, "d.h5", edit)
    plan = _plan(tmp_path, "{type: hdf5, path: d.h5}")
    rc, text = _run(capsys, plan)
    assert rc == 1 and "d.h5:/patterns: 2 of the 9 patterns hold NaN or infinite values (patterns 1, 8" in text
    assert "post_load: [{type: drop_nan_patterns}]" in text
    rc, text = _run(capsys, plan, "--set", "post_load=[drop_nan_patterns]")
    assert rc == 0, text


def test_nan_only_in_masked_pixels_passes():
    from phaser_core.data import RawData, check_finite

    p = np.ones((4, 8, 8), np.float32)
    p[:, 0, 0] = np.nan  # a dead pixel
    mask = np.ones((8, 8), bool)
    with pytest.raises(DataError, match="4 of the 4 patterns"):
        check_finite(RawData(patterns=p, source="x.h5"))
    mask[0, 0] = False
    check_finite(RawData(patterns=p, mask=mask, source="x.h5"))


# -- 6. SIGTERM --------------------------------------------------------------------------


def test_sigterm_stops_cleanly_with_a_resumable_checkpoint(tiny_h5, tmp_path):
    import signal
    import subprocess
    import sys
    import time

    (tmp_path / "d.h5").write_bytes(tiny_h5.read_bytes())
    plan = _plan(tmp_path, "{type: hdf5, path: d.h5}")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "phaser_core.cli", "run"]
    proc = subprocess.Popen(cmd + [str(plan), "--out", str(out), "--set", "engines[0].niter=100000"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while "iter 2/" not in ((out / "log.txt").read_text() if (out / "log.txt").exists() else ""):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = " ".join((stdout + stderr).split())
    assert proc.returncode == 130 and "Traceback" not in text
    assert "interrupted: run interrupted after iteration" in text and f"Resume with: phaser run --resume {out}" in text
    with h5py.File(out / "checkpoint.h5", "r") as f:
        done = int(f["iteration"].attrs["total_iter"])
    assert done >= 2
    resumed = subprocess.run(cmd + ["--resume", str(out), "--quiet", "--set", f"engines[0].niter={done + 1}"],
                             capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    with h5py.File(out / "final.h5", "r") as f:
        assert int(f["iteration"].attrs["total_iter"]) == done + 1


# -- 7. phaser simulate ------------------------------------------------------------------


@pytest.mark.parametrize("spec, expected", [
    ("energy_eV: 200000\ndetector_shape: [16, 16\nreciprocal_sampling_invA: 0.25\n",
     "s.yaml:3:25: invalid YAML: while parsing a flow sequence"),
    ("convergence_angle_mrad: -25\nreciprocal_sampling_invA: 0.25\n",
     "s.yaml:1:25: convergence_angle_mrad: must be > 0, got -25.0"),
    ("reciprocal_sampling_invA: 0.25\nscan: {shape: [0, 3]}\n", "s.yaml:2:15: scan.shape: must be positive, got (0, 3)"),
])
def test_simulate_spec_errors_are_located(tmp_path, capsys, spec, expected):
    (tmp_path / "s.yaml").write_text(spec)
    rc, text = _cli(capsys, "simulate", str(tmp_path / "s.yaml"), "--out", str(tmp_path / "o.h5"))
    assert rc == 1 and f"invalid simulation spec {tmp_path / 's.yaml'}" in text
    assert f"{tmp_path}/{expected}" in text
    assert not (tmp_path / "o.h5").exists()


# -- 8. a plugin whose hook implementation does not match the hook -----------------------


def test_plugin_hookimpl_with_a_wrong_parameter_is_a_clean_plugin_error(monkeypatch, capsys):
    import types

    from phaser_core import hookimpl
    from phaser_core import registry as registry_module

    plugin = types.ModuleType("lab_bad_plugin")

    @hookimpl
    def register_loaders(regster):  # misspelt: the hook's parameter is `register`
        pass

    plugin.register_loaders = register_loaders

    class EntryPoint:
        name = "lab_bad"
        dist = types.SimpleNamespace(metadata={"Name": "lab-bad-dist"}, version="1.0")

        def load(self):
            return plugin

    monkeypatch.setattr(registry_module.md, "entry_points", lambda group=None: [EntryPoint()])
    registry_module.set_registry(None)
    try:
        rc, text = _cli(capsys, "plugins")
    finally:
        registry_module.set_registry(None)
    assert rc == 2
    assert "plugin 'lab_bad' (distribution lab-bad-dist) failed to load: PluginValidationError" in text
    assert "Argument(s) {'regster'} are declared in the hookimpl" in text
    assert "PHASER_DISABLE_PLUGINS=lab_bad" in text


# -- 9. --set ----------------------------------------------------------------------------


def test_set_error_names_the_set_argument(tmp_path, capsys):
    (tmp_path / "d.h5").write_bytes(b"")  # present: only the --set error is reported
    plan = _plan(tmp_path, "{type: hdf5, path: d.h5}")
    rc, text = _cli(capsys, "validate", str(plan), "--set", "engines[0].grouping.size=0")
    assert rc == 1 and "--set 'engines[0].grouping.size=0': engines[0].grouping.size: must be >= 1, got 0" in text
    assert f"{plan}:" not in text


def test_set_into_a_defaulted_component_merges_with_its_default(tmp_path):
    from phaser_core.plan import load_plan

    plan = load_plan(_plan(tmp_path, "{type: hdf5, path: d.h5}"), overrides=["init.probe.defocus_A=20"])
    assert plan.init.probe.type == "focused" and plan.init.probe.config.defocus_A == 20.0
    # a component written as a bare name takes keys too
    plan = load_plan(_plan(tmp_path, "{type: hdf5, path: d.h5}").read_text().replace(
        "solver: {type: lsqml}", "solver: epie"), overrides=["engines[0].solver.beta_object=0.3"])
    assert plan.engines[0].config.solver.type == "epie"
    assert plan.engines[0].config.solver.config.beta_object == 0.3


def test_output_errors_are_reported_once_with_one_path(tmp_path, capsys):
    (tmp_path / "d.h5").write_bytes(b"")  # present: only the output errors are reported
    plan = _plan(tmp_path, "{type: hdf5, path: d.h5}")
    rc, text = _cli(capsys, "validate", str(plan), "--set", "output.image_every=0")
    assert rc == 1 and text.count("must be") == 1 and "1 error in" in text
    plan.write_text(plan.read_text() + "output: {images: [bogus]}\n")
    rc, text = _cli(capsys, "validate", str(plan))
    assert rc == 1 and f"{plan}:10:18: output.images: unknown image kind(s) 'bogus'" in text
    assert "output.images: output.images" not in text


def test_local_component_without_a_config_class_says_where_settings_come_from(tmp_path, capsys):
    from phaser_core import cli

    plan = tmp_path / "plan.yaml"
    plan.write_text("file_type: phaser_plan\nversion: 1\nraw_data: {type: hdf5, path: d.h5}\nengines:\n"
                    "  - type: conventional\n    solver: {type: 'os:getcwd', beta_object: 1}\n")
    assert cli.main(["validate", str(plan)]) == 1
    out = " ".join(capsys.readouterr().out.split())
    assert "plan.yaml:6:33: engines[0].solver: unknown key 'beta_object'" in out
    assert "a local component takes them from an attrs class in its `Config` attribute" in out


# -- review findings: --set and --no-local, validate's paths, check_finite's memory --------


def test_set_does_not_import_a_local_component_under_no_local(tmp_path, capsys, monkeypatch):
    from phaser_core import cli

    (tmp_path / "evil_module_s17.py").write_text("import os\nos.environ['EVIL_MODULE_S17'] = 'ran'\n"
                                                 "class Model:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("EVIL_MODULE_S17", raising=False)
    plan = tmp_path / "p.yaml"
    plan.write_text("file_type: phaser_plan\nversion: 1\nraw_data: {type: hdf5, path: d.h5}\nengines:\n"
                    "  - type: conventional\n    noise_model: {type: 'evil_module_s17:Model'}\n")
    assert cli.main(["validate", "--no-local", str(plan), "--set", "engines[0].noise_model.eps=2"]) == 1
    assert "not allowed" in capsys.readouterr().out
    assert "EVIL_MODULE_S17" not in os.environ


def test_set_with_a_negative_index_is_reported_at_the_set_argument(tmp_path, capsys):
    from phaser_core import cli

    plan = tmp_path / "p.yaml"
    plan.write_text("file_type: phaser_plan\nversion: 1\nraw_data: {type: hdf5, path: d.h5}\nengines:\n"
                    "  - {type: conventional, niter: 20}\n")
    (tmp_path / "d.h5").touch()
    assert cli.main(["validate", str(plan), "--set", "engines[-1].niter=-3"]) == 1
    out = " ".join(capsys.readouterr().out.split())
    assert "--set 'engines[-1].niter=-3': engines[0].niter: must be >= 0, got -3" in out


def test_validate_resolves_paths_as_a_run_does(tmp_path, capsys, monkeypatch):
    from phaser_core import cli

    home = tmp_path / "home"
    home.mkdir()
    (home / "d.h5").touch()
    monkeypatch.setenv("HOME", str(home))
    plan = tmp_path / "p.yaml"
    plan.write_text("file_type: phaser_plan\nversion: 1\nraw_data: {type: hdf5, path: ~/d.h5}\nengines:\n"
                    "  - {type: conventional}\n")
    assert cli.main(["validate", str(plan)]) == 0
    # a run folder's plan.yaml: relative paths start at the folder its header names
    (tmp_path / "data.h5").touch()
    run_dir = tmp_path / "out"
    run_dir.mkdir()
    (run_dir / "plan.yaml").write_text(f"# plan_dir: {tmp_path}\nfile_type: phaser_plan\nversion: 1\n"
                                       "raw_data: {type: hdf5, path: data.h5}\nengines:\n  - {type: conventional}\n")
    assert cli.main(["validate", str(run_dir / "plan.yaml")]) == 0
    capsys.readouterr()


def test_check_finite_takes_one_block_of_memory_and_checks_the_mask_shape():
    import tracemalloc

    from phaser_core.data import RawData, check_finite
    from phaser_core.errors import DataError

    p = np.ones((512, 64, 64), np.float32)  # 8 MiB
    p[:, 3, 4] = np.nan
    mask = np.ones((64, 64), bool)
    mask[3, 4] = False
    tracemalloc.start()
    try:
        check_finite(RawData(patterns=p, mask=mask), block=1 << 16)  # blocks of 16 patterns
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 * 16 * 64 * 64 * 4, peak  # a few blocks (measured 0.33 MiB); was all the patterns (8 MiB)
    with pytest.raises(DataError, match=r"the detector mask is \(6, 6\) but the patterns are \(64, 64\)"):
        check_finite(RawData(patterns=p, mask=np.ones((6, 6), bool)))
    with pytest.raises(DataError, match=r"the detector mask is \(6, 6\)"):  # counted data: no NaN, same check
        check_finite(RawData(patterns=np.ones((4, 64, 64), np.uint16), mask=np.ones((6, 6), bool)))


def test_inspect_counts_only_the_valid_pixels():
    from phaser_core.data import RawData
    from phaser_std.data.inspect import summary_rows

    p = np.ones((4, 8, 8), np.float32)
    p[:, 0, 0] = np.nan
    p[:, 1, 1] = 1e6
    mask = np.ones((8, 8), bool)
    mask[0, 0] = mask[1, 1] = False
    rows = {r[0]: r for r in summary_rows(RawData(patterns=p, mask=mask))}
    assert rows["mean counts / pattern"][1] == "62 e"


def test_an_override_under_a_defaulted_component_keeps_the_defaults_own_settings():
    from phaser_core.config import GradientSolverSpec
    from phaser_core.plan_overrides import missing_node
    from phaser_std.engines.optimizers import AdamConfig

    assert missing_node(GradientSolverSpec("adam", AdamConfig())) == {"type": "adam"}
    assert missing_node(GradientSolverSpec("adam", AdamConfig(learning_rate=0.5))) == {"type": "adam",
                                                                                      "learning_rate": 0.5}


def test_patterns_of_a_few_counts_warn_that_they_may_not_be_electrons(tmp_path, capsys):
    from recon import make_dataset, run

    from phaser_core.data import FEW_COUNTS_PER_PATTERN, RawData, few_counts_warning, mean_counts

    patterns = np.full((4, 3, 8, 8), 1.0 / 64, np.float32)  # normalised: one count a pattern
    patterns[0, 0, 2, 2] = np.nan  # left out, like masked pixels
    data = RawData(patterns=patterns, source="norm.h5")
    assert mean_counts(data) == pytest.approx(1.0, rel=0.02)
    assert "norm.h5: the patterns hold 0.999 counts" in few_counts_warning(data)
    assert few_counts_warning(RawData(patterns=patterns * FEW_COUNTS_PER_PATTERN * 1.1)) is None
    # a run says so, and goes on
    path = make_dataset(tmp_path / "d.h5", scan={"shape": [4, 4]})
    with h5py.File(path, "r+") as f:
        f["patterns"][...] = f["patterns"][...] / f["patterns"][...].sum(axis=(-2, -1), keepdims=True)
    run(path, [{"type": "conventional", "niter": 1}])
    assert "hold 1 counts on average" in capsys.readouterr().err


@pytest.mark.parametrize("engine", ["conventional", "gradient"])
def test_a_chunk_that_does_not_divide_the_capped_group_is_a_clean_error(tiny_h5, tmp_path, capsys, engine):
    """``grouping: {size: 16, chunk: 8}`` is a valid plan, but on a scan of 9 positions the
    group holds 9, which 8 does not divide: a message saying what to set, no traceback."""
    plan = tmp_path / "plan.yaml"
    plan.write_text(textwrap.dedent(f"""\
        file_type: phaser_plan
        version: 1
        name: t
        raw_data: {{type: hdf5, path: {tiny_h5}}}
        engines:
          - type: {engine}
            niter: 1
            grouping: {{size: 16, chunk: 8}}
        """))
    rc, text = _run(capsys, plan)
    assert rc == 1
    assert "grouping.chunk: 8 must be a positive divisor of the group size 9" in text
    assert "set grouping.chunk to a divisor of 9, or null" in text


# -- output paths the commands cannot write ------------------------------------------------


def test_output_paths_that_cannot_be_written_are_clean_errors(tiny_h5, tmp_path, capsys):
    """A folder given as simulate's output file, a file given as a run's folder, a negative
    seed, a folder that cannot be created: one line each, no traceback, no stray .tmp."""
    spec = tmp_path / "spec.yaml"
    spec.write_text("\n".join(f"{k}: {v}" for k, v in TINY.items()).replace("'", ""))
    (tmp_path / "outs").mkdir()
    rc, text = _cli(capsys, "simulate", str(spec), "--out", str(tmp_path / "outs"))
    assert rc == 1 and f"{tmp_path / 'outs'} is a folder; give the output file's name" in text
    assert not (tmp_path / "outs.tmp").exists()
    with pytest.raises(SystemExit):
        cli.main(["simulate", str(spec), "--out", str(tmp_path / "s.h5"), "--seed", "-3"])
    assert "--seed: must be 0 or more, got -3" in " ".join(capsys.readouterr().err.split())

    (tmp_path / "d.h5").write_bytes(tiny_h5.read_bytes())
    plan = _plan(tmp_path, "{type: hdf5, path: d.h5}")
    (tmp_path / "afile").write_text("")
    rc, text = _cli(capsys, "run", str(plan), "--out", str(tmp_path / "afile"), "--quiet")
    assert rc == 1 and f"--out {tmp_path / 'afile'} is a file; the run writes a folder there" in text
    rc, text = _cli(capsys, "run", str(plan), "--out", str(tmp_path / "afile" / "run"), "--quiet")
    assert rc == 1 and f"{tmp_path / 'afile' / 'run'}" in text and "check the path" in text


def test_a_refinement_switch_without_its_solver_fails_validation(tmp_path, capsys):
    """``update_positions: true`` without a position solver refined nothing and said nothing;
    the default switch, ``false`` and a switch with its solver stay valid."""
    (tmp_path / "d.h5").write_bytes(b"")
    plan = tmp_path / "p.yaml"
    plan.write_text(textwrap.dedent("""\
        file_type: phaser_plan
        version: 1
        raw_data: {type: hdf5, path: d.h5}
        engines:
          - {type: conventional, update_positions: true}
          - {type: conventional, update_positions: {after: 3}, position_solver: momentum}
          - {type: conventional, update_positions: false}
          - {type: gradient, update_tilt: {after: 2}, solvers: {positions: adam}, update_positions: {every: 2}}
          - {type: gradient}
        """))
    rc, text = _cli(capsys, "validate", str(plan))
    assert rc == 1 and "2 errors" in text
    assert (f"{plan}:5:44: engines[0].update_positions: is set, but position_solver is null, so nothing would "
            "be refined: give position_solver (e.g. {type: momentum})") in text
    assert "engines[3].update_tilt: is set, but solvers.tilt is null" in text
    assert "engines[2]" not in text and "engines[4]" not in text and "engines[3].update_positions" not in text


def test_a_resume_below_the_iterations_done_is_refused_and_leaves_the_plan(tiny_h5, tmp_path, capsys):
    """`phaser run --resume OUT --set engines[0].niter=0` after 1 iteration ran nothing and
    rewrote OUT/plan.yaml with niter 0: the plan no longer described the run."""
    (tmp_path / "d.h5").write_bytes(tiny_h5.read_bytes())
    plan = _plan(tmp_path, "{type: hdf5, path: d.h5}")
    rc, text = _run(capsys, plan)
    assert rc == 0, text
    written = (tmp_path / "out" / "plan.yaml").read_text()
    rc, text = _cli(capsys, "run", "--resume", str(tmp_path / "out"), "--set", "engines[0].niter=0", "--quiet")
    assert rc == 1 and "engines[0].niter = 0: that engine has done 1 iterations already" in text
    assert (tmp_path / "out" / "plan.yaml").read_text() == written
    rc, text = _cli(capsys, "run", "--resume", str(tmp_path / "out"), "--set", "engines[0].niter=2", "--quiet")
    assert rc == 0, text


def test_a_zero_scan_step_beside_recorded_positions_reads_as_unknown(tiny_h5, tmp_path):
    """A converter may write 0 for a step it does not know; with the positions recorded the
    step is not used, so the file runs on its positions (refusing it pointed at
    raw_data.scan_step_A, which replaces the positions with an ideal raster)."""
    from phaser_core.plan import load_plan
    from phaser_core.registry import get_registry
    from phaser_core.runner import load_data

    def edit(f):
        f.attrs["scan_step_A"] = [0.0, 0.0]
    _variant(tiny_h5, tmp_path, "d.h5", edit)
    data = load_data(load_plan(_plan(tmp_path, "{type: hdf5, path: d.h5}")), get_registry(), tmp_path)
    assert data.scan_step_A is None and data.scan_positions_A is not None


def test_value_checks_are_reported_beside_the_errors_that_stop_a_component():
    """Every problem at once: a value check (``in_range``) of a component whose other
    fields failed, or around a nested component that failed, and every failing check of a
    component that was built (attrs stops at the first), not only the first of them."""
    from phaser_core.errors import PlanError
    from phaser_core.plan import load_plan

    engine = {"type": "conventional", "niter": -3, "probe_modes": "x", "grouping": {"size": 0, "kind": "bad"},
              "solver": {"type": "epie", "beta_probe": -1}}
    with pytest.raises(PlanError) as info:
        load_plan({"file_type": "phaser_plan", "version": 1, "raw_data": {"type": "hdf5", "path": "data.h5"},
                   "engines": [engine]})
    got = {e.path_str: e.message for e in info.value.errors}
    assert got == {
        "engines[0].niter": "must be >= 0, got -3",
        "engines[0].probe_modes": "expected an integer, got 'x'",
        "engines[0].grouping.size": "must be >= 1, got 0",
        "engines[0].grouping.kind": "'kind' must be in ('sparse', 'compact') (got 'bad')",
        "engines[0].solver.beta_probe": "must be >= 0 and <= 1, got -1.0",
    }, got
