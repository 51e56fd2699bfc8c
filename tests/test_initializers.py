"""Initialisers that read the data's metadata: aberrations and scan rotation."""

from __future__ import annotations

import json

import numpy as np
import pytest

from phaser_core.context import InitContext
from phaser_core.data import RawData
from phaser_core.physics_constants import wavelength_A
from phaser_std.physics.initializers import (FocusedProbeConfig, FromDataScanConfig, init_focused_probe,
                                             init_scan_from_data)
from phaser_std.physics.probe import make_probe
from phaser_std.physics.scan import raster_scan


def _data(**extra) -> RawData:
    return RawData(patterns=np.ones((12, 32, 32), np.float32), reciprocal_sampling_invA=(0.1, 0.1),
                   energy_eV=200e3, convergence_angle_mrad=20.0, defocus_A=40.0, scan_shape=(3, 4),
                   scan_step_A=(0.5, 0.5), extra=extra)


def test_focused_probe_takes_the_aberrations_recorded_with_the_data():
    aberrations = {"C30": 2.0e4, "C12": 30.0, "phi12": 0.4}
    data = _data(aberrations=json.dumps(aberrations))
    probe = init_focused_probe(FocusedProbeConfig(), InitContext(data=data)).data[0]
    expected = make_probe((32, 32), data.real_space_sampling_A(), wavelength_A(200e3), 20.0, defocus_A=40.0,
                          aberrations=aberrations)
    without = make_probe((32, 32), data.real_space_sampling_A(), wavelength_A(200e3), 20.0, defocus_A=40.0)
    scale = np.sqrt(np.sum(np.abs(probe) ** 2))
    np.testing.assert_allclose(probe / scale, expected, atol=1e-6)
    assert np.abs(probe / scale - without).max() > 1e-2
    # the plan's value wins
    plan = init_focused_probe(FocusedProbeConfig(aberrations={}), InitContext(data=data)).data[0]
    np.testing.assert_allclose(plan / scale, without, atol=1e-6)


def test_focused_probe_takes_the_aperture_edge_of_the_data():
    """By default the aperture's edge width is estimated from the patterns: data whose
    bright-field disc has a 1-px soft rim get a soft probe, and the plan's value wins."""
    lam = wavelength_A(200e3)
    base = _data()
    soft = make_probe((32, 32), base.real_space_sampling_A(), lam, 20.0, defocus_A=40.0, soft_edge_px=1.0)
    disc = np.abs(np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(soft), norm="ortho"))) ** 2
    data = RawData(patterns=np.repeat(1e4 * disc[None], 12, axis=0).astype(np.float32),
                   reciprocal_sampling_invA=(0.1, 0.1), energy_eV=200e3, convergence_angle_mrad=20.0,
                   defocus_A=40.0, scan_shape=(3, 4), scan_step_A=(0.5, 0.5))
    probe = init_focused_probe(FocusedProbeConfig(), InitContext(data=data)).data[0]
    scale = np.sqrt(np.sum(np.abs(probe) ** 2))
    np.testing.assert_allclose(probe / scale, soft, atol=1e-6)
    hard = init_focused_probe(FocusedProbeConfig(soft_edge_px=0.0), InitContext(data=data)).data[0]
    expected = make_probe((32, 32), base.real_space_sampling_A(), lam, 20.0, defocus_A=40.0)
    np.testing.assert_allclose(hard / scale, expected, atol=1e-6)


def test_a_defocus_recorded_twice_is_refused():
    """A file with defocus_A and aberrations.C10 would count the defocus twice (make_probe
    adds C10 to it): the initialiser names both values unless the plan gives the aberrations."""
    data = _data(aberrations=json.dumps({"C10": -40.0, "C30": 1.0e4}))
    with pytest.raises(ValueError, match=r"defocus twice: defocus_A = 40.0 Å and aberrations C10 = -40.0 Å"):
        init_focused_probe(FocusedProbeConfig(), InitContext(data=data))
    init_focused_probe(FocusedProbeConfig(aberrations={"C30": 1.0e4}), InitContext(data=data))


def test_a_c10_in_the_plans_aberrations_is_the_defocus_in_place_of_the_datas():
    """Docs: the plan gives the defocus as init.probe.defocus_A "or C10 in its aberrations"
    (= −C10). It was added to the data's: C10 = −100 on data at +40 Å made a +140 Å probe."""
    data = _data()  # defocus_A 40 Å
    lam, samp = wavelength_A(200e3), data.real_space_sampling_A()
    probe = init_focused_probe(FocusedProbeConfig(aberrations={"C10": -100.0}), InitContext(data=data)).data[0]
    scale = np.sqrt(np.sum(np.abs(probe) ** 2))
    expected = make_probe((32, 32), samp, lam, 20.0, defocus_A=100.0)
    np.testing.assert_allclose(probe / scale, expected, atol=1e-6)
    with pytest.raises(ValueError, match=r"both give the defocus \(= −C10\): give one of them"):
        FocusedProbeConfig(defocus_A=50.0, aberrations={"C10": -100.0})


@pytest.mark.parametrize("aberrations, message", [
    ({"C30_A": 1.0e4}, r"unknown aberration coefficient\(s\) \['C30_A'\]"),
    ({"C30": "abc"}, "C30: expected a number"),
    ([{"name": "C30", "value": 1.0e4}], "must be a mapping of Krivanek names to numbers"),
])
def test_aberrations_that_a_run_cannot_use_are_refused_in_the_plan_and_the_spec(aberrations, message):
    """They passed `phaser validate` and crashed the run with a traceback (a misspelt name,
    a value that is not a number); a list in a simulation spec gave "'CommentedSeq' object
    has no attribute 'items'"."""
    from phaser_std.data.simulate import spec_from_dict

    with pytest.raises(ValueError, match=message):
        FocusedProbeConfig(aberrations=aberrations)
    spec = {"energy_eV": 200e3, "convergence_angle_mrad": 25.0, "defocus_A": 30.0, "detector_shape": [16, 16],
            "reciprocal_sampling_invA": 0.25, "scan": {"shape": [3, 3], "step_A": 0.6}, "aberrations": aberrations,
            "object": {"cell_A": [2.5, 2.5], "atoms": [{"position": [0.5, 0.5], "strength_rad": 0.4}]}}
    with pytest.raises(Exception, match=message):
        spec_from_dict(spec)


@pytest.mark.parametrize("rotation", [0.0, 17.0])
def test_scan_rotation_applies_to_recorded_positions_like_a_raster(rotation):
    positions = raster_scan((3, 4), (0.5, 0.5)) + np.array([5.0, 7.0])
    data = _data().replace(scan_positions_A=positions)
    scan = init_scan_from_data(FromDataScanConfig(rotation_deg=rotation), InitContext(data=data))
    expected = raster_scan((3, 4), (0.5, 0.5), rotation) + np.array([5.0, 7.0])
    np.testing.assert_allclose(scan, expected, atol=1e-12)


def test_a_nan_pattern_neither_breaks_the_edge_estimate_nor_the_scale():
    """One pattern of NaN (a dead frame) and a pixel NaN in every pattern (a dead pixel, on
    the aperture's rim): the mean pattern leaves the frame out and keeps the dead pixel NaN,
    so the soft rim is still found from the live pixels and the probe carries the live
    pixels' counts."""
    lam = wavelength_A(200e3)
    base = _data()
    soft = make_probe((32, 32), base.real_space_sampling_A(), lam, 20.0, defocus_A=40.0, soft_edge_px=1.0)
    disc = 1e4 * np.abs(np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(soft), norm="ortho"))) ** 2
    pats = np.repeat(disc[None], 12, axis=0).astype(np.float32)
    pats[5] = np.nan
    pats[:, 16, 24] = np.nan  # 0.8 /Å from the centre: the rim of the 20 mrad disc (0.797 /Å)
    data = RawData(patterns=pats, reciprocal_sampling_invA=(0.1, 0.1), energy_eV=200e3, convergence_angle_mrad=20.0,
                   defocus_A=40.0, scan_shape=(3, 4), scan_step_A=(0.5, 0.5))
    probe = init_focused_probe(FocusedProbeConfig(), InitContext(data=data)).data[0]
    live = float(disc.sum() - disc[16, 24])
    assert np.sum(np.abs(probe) ** 2) == pytest.approx(live, rel=1e-5)
    np.testing.assert_allclose(probe / np.sqrt(live), soft, atol=1e-6)


def test_a_raster_built_from_metadata_takes_the_files_recorded_rotation():
    """A file without /scan_positions but with `scan_rotation_deg` (as phaser simulate
    writes): the raster ignored the rotation, and an abTEM raster turned by 30° scored
    Pearson 0.03 (0.984 now, with no plan setting). The plan's rotation_deg adds to it."""
    data = _data(scan_rotation_deg=30.0)
    scan = init_scan_from_data(FromDataScanConfig(), InitContext(data=data))
    np.testing.assert_allclose(scan, raster_scan((3, 4), (0.5, 0.5), 30.0), atol=1e-12)
    scan = init_scan_from_data(FromDataScanConfig(rotation_deg=-5.0), InitContext(data=data))
    np.testing.assert_allclose(scan, raster_scan((3, 4), (0.5, 0.5), 25.0), atol=1e-12)
    # recorded positions already hold the rotation: the attribute is not applied again
    positions = raster_scan((3, 4), (0.5, 0.5), 30.0)
    scan = init_scan_from_data(FromDataScanConfig(), InitContext(data=data.replace(scan_positions_A=positions)))
    np.testing.assert_allclose(scan, positions, atol=1e-12)
