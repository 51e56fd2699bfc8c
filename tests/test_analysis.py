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
