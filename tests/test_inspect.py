"""phaser inspect: the sampling figures (formulas) and the CLI's table and PNG."""

from __future__ import annotations

import numpy as np
import pytest

from phaser_core.data import RawData
from phaser_core.physics_constants import wavelength_A
from phaser_std.data.inspect import sampling_figures, virtual_images
from phaser_std.data.simulate import simulate, spec_from_dict, write_hdf5

TINY = {
    "energy_eV": 200e3, "convergence_angle_mrad": 20.0, "defocus_A": 100.0,
    "detector_shape": [32, 32], "reciprocal_sampling_invA": 0.2,
    "scan": {"shape": [4, 4], "step_A": 0.5}, "dose": 1e4,
    "object": {"cell_A": [3.0, 3.0], "atoms": [{"position": [0.0, 0.0], "strength_rad": 0.5}]},
}


def test_sampling_figures_formulas():
    data = RawData(patterns=np.zeros((4, 32, 32), np.float32), reciprocal_sampling_invA=(0.2, 0.2),
                   energy_eV=200e3, convergence_angle_mrad=20.0, defocus_A=100.0, scan_shape=(2, 2),
                   scan_step_A=(0.5, 0.25))
    f = sampling_figures(data)
    lam = wavelength_A(200e3)
    assert f["linear_oversampling"] == pytest.approx((1 / (2 * 0.5 * 0.2), 1 / (2 * 0.25 * 0.2)))
    assert f["areal_oversampling"] == pytest.approx(32 * 32 * (1 / 6.4) ** 2 / (0.5 * 0.25))
    s = 1 / (32 * 0.2)
    assert f["probe_sampling"][0] == pytest.approx(s / (lam / (4 * 0.02)))
    assert f["bf_disc_px"][0] == pytest.approx(2 * 0.02 / (lam * 0.2))
    assert f["ronchigram_magnification"][0] == pytest.approx(s / (100.0 * lam * 0.2))
    assert f["probe_diameter_A"] == pytest.approx(2 * 0.02 * 100 + 1.22 * lam / 0.02)
    infocus = sampling_figures(data.replace(defocus_A=0.0))
    assert infocus["ronchigram_magnification"][0] == np.inf


def test_a_detector_that_cuts_the_disc_is_flagged():
    # 200 kV (λ 0.02508 Å), 20 mrad: Δθ = λ·Δk = 0.50 mrad a pixel; 32 px reach 16·Δθ = 0.40α, 128 px 1.6α
    from phaser_std.data.inspect import summary_rows

    def note(q):
        data = RawData(patterns=np.ones((4, q, q), np.float32), reciprocal_sampling_invA=(0.02, 0.02),
                       energy_eV=200e3, convergence_angle_mrad=20.0, scan_shape=(2, 2), scan_step_A=(0.5, 0.5))
        return {r[0]: r for r in summary_rows(data)}["max. collection angle"]

    cut, whole = note(32), note(128)

    assert cut[1] == "0.4013 α" and "cuts the bright-field disc" in cut[2]
    assert whole[1] == "1.605 α" and whole[2] == "(Q/2)·Δθ"


def test_the_detector_mask_is_summarised():
    from phaser_std.data.inspect import summary_rows

    def row(mask):
        rows = {r[0]: r for r in summary_rows(RawData(patterns=np.ones((4, 8, 8), np.float32), mask=mask))}
        return rows["detector mask"][1]

    masked = np.ones((8, 8), bool)
    masked[0, :3] = False
    assert row(masked) == "3 of 64 pixels invalid"
    assert row(None) == "none (every pixel valid)"


def test_virtual_images_see_the_bright_field_disc(tmp_path):
    sim = simulate(spec_from_dict(TINY))
    data = RawData(patterns=sim.patterns_noiseless.reshape(16, 32, 32), reciprocal_sampling_invA=(0.2, 0.2),
                   energy_eV=200e3, convergence_angle_mrad=20.0, scan_shape=(4, 4))
    pac, bf, adf = virtual_images(data)
    total = data.patterns.sum(axis=(1, 2))
    assert np.all(bf > 0.8 * total) and np.all(adf < 0.1 * total)
    assert pac.shape == (32, 32)


def test_virtual_images_leave_out_masked_pixels():
    """A hot pixel outside the bright field, masked as invalid, enters neither the ADF
    signal nor the bright-field radius estimated without the convergence angle."""
    sim = simulate(spec_from_dict(TINY))
    patterns = sim.patterns_noiseless.reshape(16, 32, 32).copy()
    mask = np.ones((32, 32), bool)
    mask[1, 1] = False
    clean = RawData(patterns=patterns.copy(), scan_shape=(4, 4), mask=mask)
    patterns[:, 1, 1] = 1e6  # a hot pixel in the dark corner
    hot = RawData(patterns=patterns, scan_shape=(4, 4), mask=mask)
    for got, want in zip(virtual_images(hot)[1:], virtual_images(clean)[1:]):
        np.testing.assert_allclose(got, want, rtol=1e-12)
    # without the mask the hot pixel is the "bright field" and the images are wrong
    unmasked = RawData(patterns=patterns, scan_shape=(4, 4))
    assert not np.allclose(virtual_images(unmasked)[1], virtual_images(clean)[1], rtol=0.1)


def test_cli_inspect_prints_figures_and_writes_png(tmp_path, capsys):
    from phaser_core.cli import main
    from phaser_core.registry import set_registry

    path = write_hdf5(simulate(spec_from_dict(TINY)), tmp_path / "d.h5")
    png = tmp_path / "out" / "overview.png"
    set_registry(None)
    assert main(["inspect", str(path), "--png", str(png)]) == 0
    out = capsys.readouterr().out
    for text in ("linear oversampling", "areal oversampling", "probe sampling", "Ronchigram", "200 kV",
                 "0.5 Å", "4 x 4", "beam tilt"):
        assert text in out, text
    line = next(ln for ln in out.splitlines() if "linear oversampling" in ln)
    assert line.split("│")[2].strip() == "5"  # 1/(2 · 0.5 Å · 0.2 /Å)
    assert png.exists() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from PIL import Image

    with Image.open(png) as im:
        assert im.size[0] > 300 and im.size[1] > 300


def test_cli_inspect_missing_file(tmp_path, capsys):
    from phaser_core.cli import main

    assert main(["inspect", str(tmp_path / "nope.h5")]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_cli_inspect_a_plan_shows_its_data_after_post_load(tmp_path, capsys):
    from phaser_core.cli import main
    from phaser_core.registry import set_registry

    write_hdf5(simulate(spec_from_dict(TINY)), tmp_path / "d.h5")
    plan = tmp_path / "plan.yaml"
    plan.write_text("file_type: phaser_plan\nversion: 1\nraw_data: {type: hdf5, path: d.h5}\n"
                    "post_load: [{type: bin, factor: 2}]\nengines: [{type: conventional}]\n")
    set_registry(None)
    assert main(["inspect", str(plan)]) == 0  # the data path relative to the plan, as in a run
    out = capsys.readouterr().out
    (line,) = [ln for ln in out.splitlines() if "N x Qy x Qx" in ln]
    qy = spec_from_dict(TINY).detector_shape[0] // 2
    assert f"x {qy} x {qy}" in line
    assert main(["inspect", str(plan), "--key", "patterns_noiseless"]) == 1  # the plan names its own key
    assert "set raw_data.key in the plan" in capsys.readouterr().err
    plan.write_text("file_type: phaser_plan\nversion: 1\nraw_data: {type: hdf5, path: d.h5}\nengines: []\n")
    assert main(["inspect", str(plan)]) == 1
    captured = capsys.readouterr()
    assert "plan.yaml:4:10: engines: at least one engine" in captured.out + captured.err


def test_cli_inspect_takes_a_plans_overrides(tmp_path, capsys):
    """``--set`` changes the plan as ``phaser run`` would (here its post_load binning);
    on a data file it is refused with what to do."""
    from phaser_core.cli import main
    from phaser_core.registry import set_registry

    write_hdf5(simulate(spec_from_dict(TINY)), tmp_path / "d.h5")
    plan = tmp_path / "plan.yaml"
    plan.write_text("file_type: phaser_plan\nversion: 1\nraw_data: {type: hdf5, path: d.h5}\n"
                    "engines: [{type: conventional}]\n")
    set_registry(None)
    assert main(["inspect", str(plan), "--set", "post_load=[{type: bin, factor: 2}]"]) == 0
    (line,) = [ln for ln in capsys.readouterr().out.splitlines() if "N x Qy x Qx" in ln]
    qy = spec_from_dict(TINY).detector_shape[0] // 2
    assert f"x {qy} x {qy}" in line
    assert main(["inspect", str(tmp_path / "d.h5"), "--set", "raw_data.transpose=true"]) == 1
    assert "--set changes a plan; d.h5 is a data file" in capsys.readouterr().err


def test_cli_inspect_a_run_folders_plan_reads_the_data_from_its_plan_dir(tmp_path, capsys):
    """A run folder's plan.yaml keeps the plan's relative paths and names their folder in its
    ``# plan_dir:`` header (as ``phaser run --resume``, ``validate`` and ``score`` read it)."""
    from phaser_core.cli import main
    from phaser_core.registry import set_registry

    (tmp_path / "plans").mkdir()
    write_hdf5(simulate(spec_from_dict(TINY)), tmp_path / "plans" / "d.h5")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    plan = run_dir / "plan.yaml"
    plan.write_text(f"# resolved plan written by phaser run\n# plan_dir: {tmp_path / 'plans'}\n"
                    "file_type: phaser_plan\nversion: 1\nraw_data: {type: hdf5, path: d.h5}\n"
                    "engines: [{type: conventional}]\n")
    set_registry(None)
    assert main(["inspect", str(plan)]) == 0, capsys.readouterr().err
    assert "N x Qy x Qx" in capsys.readouterr().out


def test_the_dose_figures_name_a_mask_of_the_wrong_shape():
    from phaser_core.errors import DataError
    from phaser_std.data.inspect import _valid_sums

    with pytest.raises(DataError, match=r"the detector mask is \(6, 6\) but the patterns are \(8, 8\)"):
        _valid_sums(RawData(patterns=np.ones((4, 8, 8), np.float32), mask=np.ones((6, 6), bool)))


def test_the_storage_row_says_what_a_run_keeps():
    from phaser_core.data import RawData
    from phaser_std.data.inspect import summary_rows

    counts = np.random.default_rng(0).poisson(30.0, size=(4, 8, 8))
    for patterns, value, note in ((counts.astype(np.float32), "float32 (0.0009766 MiB)", "as uint8 (0.0002441 MiB)"),
                                  (counts.astype(np.uint16) + 300, "uint16", "as uint16"),
                                  (counts + np.float32(0.5), "float", "not whole electrons")):
        data = RawData(patterns=patterns, energy_eV=2e5, reciprocal_sampling_invA=(0.1, 0.1))
        row = next(r for r in summary_rows(data) if r[0] == "storage")
        assert value in row[1] and note in row[2], row


def test_inspect_names_the_noise_model_auto_picks_and_the_counts_that_decide():
    from phaser_core.data import RawData
    from phaser_std.data.inspect import summary_rows

    rng = np.random.default_rng(0)
    for per_pattern, per_px, name in ((400, "0.09", "amplitude"), (4000, "0.97", "anscombe")):
        patterns = rng.poisson(per_pattern / 64 ** 2, size=(16, 64, 64)).astype(np.float32)
        rows = {r[0]: r for r in summary_rows(RawData(patterns=patterns))}
        assert rows["counts / pixel"][1].startswith(per_px), rows["counts / pixel"]
        assert rows["noise model (auto)"][1] == name
    rows = {r[0]: r for r in summary_rows(RawData(patterns=patterns + 0.5))}
    assert rows["noise model (auto)"][1:] == ("amplitude", "for non-counted patterns")


def test_inspect_names_the_patterns_a_run_would_stop_at():
    """NaN or ±inf in a valid pixel stops a run (check_finite); inspect says which patterns
    and how to drop them, and leaves the row out when there are none or the mask hides them."""
    from phaser_std.data.inspect import summary_rows

    patterns = np.ones((12, 8, 8), np.float32)
    patterns[3, 2, 2] = np.nan
    patterns[7, 0, 0] = np.inf
    rows = {r[0]: r for r in summary_rows(RawData(patterns=patterns))}
    assert rows["non-finite patterns"][1] == "2 of 12 (3, 7)"
    assert "drop_nan_patterns" in rows["non-finite patterns"][2]
    mask = np.ones((8, 8), bool)
    mask[2, 2] = mask[0, 0] = False
    assert "non-finite patterns" not in {r[0] for r in summary_rows(RawData(patterns=patterns, mask=mask))}
    assert "non-finite patterns" not in {r[0] for r in summary_rows(RawData(patterns=np.ones((4, 8, 8))))}


def test_inspect_gives_the_dose_and_the_object_step_a_run_would_take():
    """The dose row is the run's own figure (counted data: the same sample of patterns),
    and the next row says what a null object step does there, as the run's log does."""
    from pathlib import Path

    from phaser_std.data.inspect import load_for_inspect, summary_rows
    from phaser_std.engines.conventional_solvers import counted_dose

    data_dir = Path(__file__).parent / "data"
    for name, falls in (("abtem_srtio3_300e.h5", "falling"), ("py4dstem_srtio3_rotated.h5", "constant")):
        data = load_for_inspect(data_dir / name)
        rows = {q: (v, note) for q, v, note in summary_rows(data)}
        assert rows["dose"][0] == f"{counted_dose(data):.4g} e/Å²", rows["dose"]
        assert rows["object step (null)"][0] == falls, rows["object step (null)"]
    # positions without a step (the py4DSTEM file records both): the area from the positions
    no_step = load_for_inspect(data_dir / "py4dstem_srtio3_rotated.h5")
    import attrs

    no_step = attrs.evolve(no_step, scan_step_A=None)
    rows = {q: v for q, v, _ in summary_rows(no_step)}
    assert rows["object step (null)"] == "constant" and "dose" in rows
