"""Scoring against ground truth: offsets and ramps do not count, phase wrapping does not hurt."""

from __future__ import annotations

import numpy as np

from phaser_core.state import ObjectState, ProbeState, ReconsState
from phaser_std.analysis import score_state


def _state(phase: np.ndarray, offset: float) -> ReconsState:
    obj = np.exp(1j * (phase + offset))[None]
    return ReconsState(probe=ProbeState(data=np.ones((1, 4, 4), complex), sampling_A=(0.2, 0.2)),
                       object=ObjectState(data=obj, sampling_A=(0.2, 0.2), corner_A=(0.0, 0.0),
                                          thicknesses_A=np.zeros(1)),
                       scan_A=np.array([[2.0, 2.0], [2.0, 10.0], [10.0, 2.0], [10.0, 10.0]]))


def test_a_phase_offset_near_pi_neither_wraps_nor_changes_the_score():
    yy, xx = np.mgrid[0:64, 0:64] * 0.2
    truth = 0.4 * np.sin(2 * np.pi * yy / 1.7) * np.cos(2 * np.pi * xx / 2.3)
    gt = {"phase": truth, "sampling_A": 0.2, "periodic": "no"}
    exact = score_state(_state(truth, 0.0), gt)
    shifted = score_state(_state(truth, np.pi - 0.05), gt)
    assert exact["pearson"] > 0.999999 and exact["rms_rad"] < 1e-9
    assert shifted["pearson"] > 0.999999 and shifted["rms_rad"] < 1e-6
    noisy = score_state(_state(truth + 0.2 * np.random.default_rng(0).normal(size=truth.shape), 0.0), gt)
    assert 0.5 < noisy["pearson"] < 0.95


def test_ground_truth_detail_beyond_the_reconstruction_grid_does_not_count():
    """A ground truth at 0.05 Å holding a 0.25 Å period that a 0.2 Å grid cannot show (its
    Nyquist is 2.5 /Å): band-limited to the reconstruction's Nyquist, the smooth part alone
    scores as a perfect reconstruction."""
    yy, xx = np.mgrid[0:256, 0:256] * 0.05
    smooth = 0.4 * np.sin(2 * np.pi * yy / 3.2) * np.cos(2 * np.pi * xx / 6.4)
    fine = 0.3 * np.cos(2 * np.pi * yy / 0.25)
    gt = {"phase": smooth + fine, "sampling_A": 0.05, "periodic": "yes"}
    ry, rx = np.mgrid[0:64, 0:64] * 0.2
    recon = 0.4 * np.sin(2 * np.pi * ry / 3.2) * np.cos(2 * np.pi * rx / 6.4)
    score = score_state(_state(recon, 0.0), gt)
    assert score["pearson"] > 0.9999 and score["rms_rad"] < 5e-3, score  # bilinear sampling: ~2e-3


def test_the_slope_reads_a_weak_contrast_that_pearson_does_not():
    yy, xx = np.mgrid[0:64, 0:64] * 0.2
    truth = 0.4 * np.sin(2 * np.pi * yy / 1.7) * np.cos(2 * np.pi * xx / 2.3)
    gt = {"phase": truth, "sampling_A": 0.2, "periodic": "no"}
    half = score_state(_state(0.5 * truth + 0.03 * yy, 0.0), gt)  # half the contrast, and a ramp
    assert half["pearson"] > 0.999999 and abs(half["slope"] - 0.5) < 1e-9
    over = score_state(_state(1.5 * truth, 0.0), gt)  # the same error the other way
    assert abs(over["slope"] - 1.5) < 1e-9 and abs(half["rms_rad"] - over["rms_rad"]) < 1e-9


def _field(n: int, cutoff: float, rng) -> np.ndarray:
    """White noise low-passed to radius ``cutoff`` [cycles/px]."""
    k = np.hypot(np.fft.fftfreq(n)[:, None], np.fft.fftfreq(n)[None, :])
    return np.real(np.fft.ifft2(np.fft.fft2(rng.normal(size=(n, n))) * (k <= cutoff)))


def test_frc_is_one_for_the_same_image_and_falls_where_the_signal_ends():
    from phaser_std.analysis import frc

    rng = np.random.default_rng(0)
    signal = _field(128, 0.25, rng)  # detail to 0.25 cycles/px: 2 Å at 0.5 Å pixels
    same = frc(signal, 3.0 * signal + 1.0, 0.5)
    assert np.all(same["frc"] > 0.999) and same["resolution_A"] is None
    noise = 0.05 * signal.std() * np.sqrt(128)
    noisy = frc(signal + rng.normal(scale=noise / 128 ** 0.5, size=signal.shape),
                signal + rng.normal(scale=noise / 128 ** 0.5, size=signal.shape), 0.5)
    # 1 / (0.25 cycles/px / 0.5 Å) = 2 Å, within the rings' width and the window's leakage
    assert 1.5 < noisy["resolution_A"] < 2.3, noisy["resolution_A"]
    unrelated = frc(signal, _field(128, 0.25, rng), 0.5)
    assert unrelated["resolution_A"] > 10.0  # below 0.5 at once (the first ring is the window's)


def test_cli_score_reads_a_run_folder_and_its_data(tmp_path, capsys):
    import json

    from recon import make_dataset

    from phaser_core.cli import main

    data = make_dataset(tmp_path / "d.h5", scan={"shape": [8, 8]})
    plan = tmp_path / "plan.yaml"
    plan.write_text("file_type: phaser_plan\nversion: 1\nraw_data: {type: hdf5, path: d.h5}\n"
                    "engines: [{type: conventional, niter: 3, grouping: {size: 16}}]\n")
    assert main(["run", str(plan), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["score", str(tmp_path / "run"), "--json"]) == 0  # the truth from the run's plan (its folder)
    scores = json.loads(capsys.readouterr().out)["scores"]["sum of slices"]
    assert scores["pearson"] > 0.95 and 0.8 < scores["slope"] < 1.1  # measured 0.982, 0.943
    assert scores["frc_resolution_A"] is None  # the FRC stays above 0.5 out to Nyquist here
    assert main(["score", str(tmp_path / "run" / "final.h5")]) == 1  # a bare state names no data
    assert "--truth DATA.h5" in capsys.readouterr().err
    assert main(["score", str(tmp_path / "run" / "final.h5"), "--truth", str(data)]) == 0
    assert "sum of slices" in capsys.readouterr().out


def test_frc_of_a_crystal_does_not_stop_between_its_reflections():
    """A lattice of atoms has its power on the Bragg reflections; thin rings between them
    hold only the window's leakage, whose correlation must not read as the resolution
    limit (it did: 9.4 Å for this 0.8 Å-blurred lattice)."""
    from phaser_std.analysis import frc

    s, n = 0.078, 300
    yy, xx = np.mgrid[0:n, 0:n] * s
    truth = np.zeros((n, n))
    for fy, fx, amp in [(0, 0, 0.6), (0.5, 0.5, 0.6), (0.0, 1 / 3, 0.35), (0.5, 5 / 6, 0.35)]:
        for iy in range(-1, 9):
            for ix in range(-1, 6):
                cy, cx = (iy + fy) * 3.19, (ix + fx) * 5.525
                truth += amp * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 0.3 ** 2))
    k = np.hypot(np.fft.fftfreq(n, s)[:, None], np.fft.fftfreq(n, s)[None, :])
    recon = np.real(np.fft.ifft2(np.fft.fft2(truth) * np.exp(-(k * 0.4) ** 2)))
    recon += np.random.default_rng(0).normal(scale=0.01, size=truth.shape)
    for rings in (24, 150):
        result = frc(recon, truth, s, n_rings=rings)
        assert result["resolution_A"] is None or result["resolution_A"] < 1.0, (rings, result["resolution_A"])


def test_a_rotated_scan_is_scored_inside_the_area_it_covers():
    """The bounding box of a raster turned by 30° holds unscanned corners, which scored as
    reconstructed; the box now shrinks about its centre until its corners are in the scan's
    hull. An axis-aligned raster, jittered, keeps its bounding box."""
    from phaser_std.analysis import phase_score, scanned_box_A
    from phaser_std.physics.scan import raster_scan

    rng = np.random.default_rng(0)
    straight = raster_scan((10, 10), 1.0) + rng.normal(0, 0.2, (100, 2))
    lo, hi = scanned_box_A(straight)
    np.testing.assert_array_equal(lo, straight.min(axis=0))
    np.testing.assert_array_equal(hi, straight.max(axis=0))
    turned = raster_scan((10, 10), 1.0, rotation_deg=30.0)
    lo, hi = scanned_box_A(turned)
    assert np.all(hi - lo < 0.85 * np.ptp(turned, axis=0))  # 12.3 Å across: its corners are unscanned
    # a reconstruction right up to a step beyond the outermost positions (where the probe
    # still lights it), noise in the unscanned corners: scored ≈ 1 (the truth's pixel
    # (i, j) at (i, j)·s [Å]; the scan moved into that frame)
    from scipy.spatial import ConvexHull

    s = 0.25
    turned = turned + 10.0
    yy, xx = np.mgrid[0:80, 0:80] * s
    truth = np.sin(2.1 * yy) * np.cos(1.7 * xx)
    recon = truth.copy()
    eq = ConvexHull(turned).equations
    pixels = np.stack([yy.ravel(), xx.ravel()], axis=-1)
    outside = np.any(pixels @ eq[:, :2].T + eq[:, 2] > 1.0, axis=1).reshape(yy.shape)
    recon[outside] = rng.normal(0, 1, outside.sum())
    score = phase_score(recon, (s, s), (0.0, 0.0), truth, (s, s), turned, periodic=False)
    assert score["pearson"] > 0.999, score
