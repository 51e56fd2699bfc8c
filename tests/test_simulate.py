"""phaser simulate: the file layout, dose scaling, seeding and the forward model."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from phaser_core.context import LoadContext
from phaser_core.errors import DataError
from phaser_core.physics_constants import wavelength_A
from phaser_std.data.loaders.hdf5 import Hdf5Config, load_hdf5
from phaser_std.data.simulate import (_fourier_shift, load_spec, simulate, simulate_probe, spec_from_dict,
                                      write_hdf5)
from phaser_std.physics.probe import make_probe

TINY = {
    "energy_eV": 200e3, "convergence_angle_mrad": 20.0, "defocus_A": 40.0,
    "detector_shape": [32, 32], "reciprocal_sampling_invA": 0.2,
    "scan": {"shape": [4, 5], "step_A": [0.7, 0.6]},
    "dose": 1e4,
    "object": {"cell_A": [3.0, 3.0], "atoms": [{"position": [0.0, 0.0], "strength_rad": 0.5, "width_A": 0.3}]},
    "seed": 3,
}


def tiny(**changes):
    d = {**TINY, **changes}
    return spec_from_dict(d)


def test_roundtrip_through_hdf5_loader(tmp_path):
    sim = simulate(tiny())
    path = write_hdf5(sim, tmp_path / "d.h5")
    data = load_hdf5(Hdf5Config(path=str(path)), LoadContext())
    ny, nx, qy, qx = sim.patterns.shape
    assert data.patterns.dtype == np.float32 and data.patterns.shape == (ny * nx, qy, qx)
    np.testing.assert_array_equal(data.patterns, sim.patterns.reshape(-1, qy, qx).astype(np.float32))
    nl = load_hdf5(Hdf5Config(path=str(path), key="patterns_noiseless"), LoadContext())
    np.testing.assert_array_equal(nl.patterns, sim.patterns_noiseless.reshape(-1, qy, qx).astype(np.float32))
    assert data.energy_eV == 200e3 and data.convergence_angle_mrad == 20.0 and data.defocus_A == 40.0
    assert data.reciprocal_sampling_invA == (0.2, 0.2)
    assert data.scan_shape == (4, 5) and data.scan_step_A == (0.7, 0.6)
    np.testing.assert_array_equal(data.scan_positions_A, sim.positions_A)
    gt = data.ground_truth
    assert gt["periodic"] is False
    assert gt["phase"].shape == sim.phases.shape[1:]
    assert gt["phase_sampling_A"] == pytest.approx(1 / (32 * 0.2))
    assert gt["probe"].shape == (1, 32, 32)
    assert gt["potential"].shape == sim.phases.shape


def test_file_has_every_key_the_benchmark_hook_reads(tmp_path):
    path = write_hdf5(simulate(tiny()), tmp_path / "d.h5")
    with h5py.File(path, "r") as f:
        assert f["patterns"].dtype == np.float32 and f["patterns"].ndim == 4
        for key in ("energy_eV", "convergence_angle_mrad", "defocus_A", "reciprocal_sampling_invA", "scan_shape"):
            assert key in f.attrs, key
        float(f.attrs["reciprocal_sampling_invA"])  # the hook reads a single float
        assert f["scan_positions"].shape == (20, 2)
        assert "sampling_A" in f["ground_truth/phase"].attrs
        assert str(f["ground_truth"].attrs["periodic"]) in ("yes", "no")


def test_pattern_sums_equal_dose_times_step_area():
    spec = tiny(dose=None, nominal_dose=2e4)
    sim = simulate(spec)
    sums = sim.patterns_noiseless.sum(axis=(-2, -1))
    # a pure phase object and unitary FFTs conserve Σ|ψ|² exactly for one slice
    np.testing.assert_allclose(sums, 2e4 * 0.7 * 0.6, rtol=1e-9)
    np.testing.assert_array_equal(sim.patterns, sim.patterns_noiseless)


def test_poisson_noise_is_seeded():
    a = simulate(tiny())
    b = simulate(tiny())
    c = simulate(tiny(), seed=4)
    np.testing.assert_array_equal(a.patterns, b.patterns)
    assert not np.array_equal(a.patterns, c.patterns)
    assert np.all(a.patterns == np.round(a.patterns))
    # Poisson: mean counts per pattern close to the expectation (4200 e, σ ≈ 65 per pattern)
    assert abs(a.patterns.sum() / a.patterns_noiseless.sum() - 1) < 0.01


def test_vacuum_pattern_is_the_probe_spectrum():
    spec = tiny(object={"atoms": []})
    sim = simulate(spec)
    s = spec.real_sampling_A()
    p = make_probe((32, 32), s, wavelength_A(200e3), 20.0, defocus_A=40.0) * np.sqrt(1e4 * 0.42)
    expected = np.fft.fftshift(np.abs(np.fft.fft2(p, norm="ortho")) ** 2)
    for pat in sim.patterns_noiseless.reshape(-1, 32, 32):
        np.testing.assert_allclose(pat, expected, rtol=1e-9, atol=1e-9 * expected.max())


def test_fourier_shift_moves_by_plus_d():
    a = np.zeros((16, 16), complex)
    a[8, 8] = 1
    ky = np.fft.fftfreq(16, 0.5)[:, None]
    kx = np.fft.fftfreq(16, 0.5)[None, :]
    out = np.abs(_fourier_shift(a, ky, kx, 1.0, -1.5)) ** 2  # (2, -3) pixels of 0.5 Å
    assert np.unravel_index(np.argmax(out), out.shape) == (10, 5)


def test_single_atom_lands_at_its_scan_position():
    """A probe centred on an atom sees the strongest scattering: with the atom at the field
    position of one scan point, that point's dark-field signal is the largest."""
    spec = tiny(defocus_A=0.0, dose=None, object={"cell_A": [100.0, 100.0], "atoms": []})
    sim0 = simulate(spec)
    target = 7
    pos = sim0.true_positions_A[target]
    from phaser_std.data import simulate as S

    phases = np.zeros_like(sim0.phases)
    S.add_gaussians(phases[0], sim0.sampling_A, pos[None], np.array([1.0]), np.array([0.3]))
    out = S.forward(sim0.probe, np.exp(1j * phases), sim0.true_positions_A, sim0.sampling_A, [])
    k = np.hypot(*np.meshgrid(np.arange(32) - 16, np.arange(32) - 16, indexing="ij"))
    adf = (out * (k > 8)).sum(axis=(-2, -1))
    assert int(np.argmax(adf)) == target


def test_multislice_slices_differ_and_conserve_most_intensity():
    spec = tiny(dose=None, object={
        "cell_A": [3.0, 3.0], "thickness_A": 5.0,
        "atoms": [{"position": [0.0, 0.0], "strength_rad": 0.3, "width_A": 0.3}],
        "slices": [{}, {"shift_A": [1.5, 0.0]}, {"atoms": [], "random": {"density_per_A2": 0.1}}]})
    sim = simulate(spec)
    assert sim.phases.shape[0] == 3
    assert not np.allclose(sim.phases[0], sim.phases[1]) and not np.allclose(sim.phases[1], sim.phases[2])
    np.testing.assert_allclose(sim.thicknesses_A, [5.0, 5.0, 5.0])
    sums = sim.patterns_noiseless.sum(axis=(-2, -1))
    # the 2/3 band limit of the propagator may only remove a little intensity
    assert np.all(sums <= 1e5 * 0.42 * (1 + 1e-9)) and np.all(sums > 0.95 * 1e5 * 0.42)


def test_partially_coherent_probe_modes_are_orthogonal():
    spec = tiny(coherence={"defocus_spread_A": 30.0, "source_size_A": 0.3, "n_modes": 4})
    modes = simulate_probe(spec)
    assert modes.shape == (4, 32, 32)
    gram = np.einsum("aij,bij->ab", modes.conj(), modes)
    np.testing.assert_allclose(gram - np.diag(np.diag(gram)), 0, atol=1e-10)
    powers = np.real(np.diag(gram))
    assert np.all(np.diff(powers) <= 1e-12) and powers.sum() == pytest.approx(1.0, rel=1e-12)


def test_jitter_is_recorded_as_true_positions():
    sim = simulate(tiny(scan={"shape": [4, 5], "step_A": 0.6, "jitter_A": 0.1}))
    d = sim.true_positions_A - sim.positions_A
    assert 0.03 < d.std() < 0.3
    np.testing.assert_allclose(np.diff(sim.positions_A[:5, 1]), 0.6)


def test_spec_errors_name_the_key():
    with pytest.raises(DataError, match="energy_kV"):
        spec_from_dict({**TINY, "energy_kV": 200})
    with pytest.raises(DataError, match="C10"):
        spec_from_dict({**TINY, "aberrations": {"C10": 5.0}})
    with pytest.raises(DataError, match="sampling"):
        spec_from_dict({k: v for k, v in TINY.items() if k != "reciprocal_sampling_invA"})


def test_spec_file_errors_give_line_column_and_a_suggestion(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text("energy_eV: 200000\nreciprocal_sampling_invA: 0.1\ndose: lots\n"
                    "object:\n  n_slices: 2\n  slice_thickness_A: 8\n")
    with pytest.raises(DataError) as err:
        load_spec(spec)
    lines = str(err.value).splitlines()
    assert lines[0] == f"invalid simulation spec {spec}:"
    assert lines[1].strip().startswith(f"{spec}:3:7: dose: ")
    assert lines[2].strip().startswith(f"{spec}:6:3: object: unknown key 'slice_thickness_A'; "
                                       "did you mean 'thickness_A'?")


def test_cli_simulate_writes_the_file(tmp_path):
    from ruamel.yaml import YAML

    from phaser_core.cli import main
    from phaser_core.registry import set_registry

    spec = tmp_path / "spec.yaml"
    with open(spec, "w") as fh:
        YAML().dump(TINY, fh)
    set_registry(None)
    out = tmp_path / "d.h5"
    assert main(["simulate", str(spec), "--out", str(out), "--seed", "9"]) == 0
    with h5py.File(out, "r") as f:
        assert f["patterns"].shape == (4, 5, 32, 32)


@pytest.mark.parametrize("name", ["sim_small", "sim_multislice", "sim_modes"])
def test_examples_parse(name):
    from pathlib import Path

    from phaser_std.data.simulate import load_spec

    spec = load_spec(Path(__file__).parents[1] / "examples" / f"{name}.yaml")
    assert 0.1 <= spec.real_sampling_A()[0] <= 0.2


def test_independent_simulator_agrees_with_the_engines_forward_model():
    """Cross-check: the simulator's plain multislice and phaser_std.physics.forward give the
    same intensities for 3 different slices, a tilt and 2 probe modes (float64)."""
    fwd = pytest.importorskip("phaser_std.physics.forward")
    from phaser_std.backends.numpy_backend import NumpyBackend

    spec = tiny(dose=None, tilt_mrad=[2.0, -3.0], scan={"shape": [3, 3], "step_A": 0.55, "jitter_A": 0.07},
                coherence={"defocus_spread_A": 25.0, "n_defocus": 3, "n_modes": 2},
                object={"cell_A": [3.0, 3.0], "thickness_A": 6.0,
                        "atoms": [{"position": [0.1, 0.2], "strength_rad": 0.5, "width_A": 0.3}],
                        "slices": [{}, {"shift_A": [0.8, -0.4], "scale": 0.7},
                                   {"atoms": [], "random": {"density_per_A2": 0.1}}]})
    sim = simulate(spec)
    bk = NumpyBackend("float64")
    starts, frac = fwd.scan_to_pixels(sim.true_positions_A, (0.0, 0.0), sim.sampling_A, (32, 32))
    props = fwd.make_propagators(bk, (32, 32), sim.sampling_A, wavelength_A(spec.energy_eV), sim.thicknesses_A,
                                 spec.tilt_mrad)
    model = fwd.forward_intensity(bk, sim.probe, np.exp(1j * sim.phases), starts, frac, props)
    model = np.fft.fftshift(bk.to_numpy(model), axes=(-2, -1))
    ref = sim.patterns_noiseless.reshape(-1, 32, 32)
    np.testing.assert_allclose(model, ref, rtol=1e-8, atol=1e-9 * ref.max())


@pytest.mark.parametrize("n", [2, 3, 7, 15])
def test_the_simulated_spread_is_the_one_asked_for(n):
    """Equally spaced samples over ±2σ gave an ensemble 4-12% narrower than the spec's
    defocus spread / source size; Gauss-Hermite nodes give σ exactly."""
    from phaser_std.physics.probe import gaussian_nodes

    x, w = gaussian_nodes(10.0, n)
    assert w.sum() == pytest.approx(1.0) and np.sum(w * x) == pytest.approx(0.0, abs=1e-12)
    assert np.sqrt(np.sum(w * x * x)) == pytest.approx(10.0, rel=1e-12)


def test_every_spec_key_is_documented():
    """docs/file-formats.md lists the spec's keys (users only had the examples to copy)."""
    from pathlib import Path

    import attrs

    from phaser_std.data.simulate import CoherenceSpec, ObjectSpec, ScanSpec, SimSpec

    text = (Path(__file__).resolve().parents[1] / "docs" / "file-formats.md").read_text()
    section = text[text.index("## Simulation specs"):]
    for cls in (SimSpec, ScanSpec, ObjectSpec, CoherenceSpec):
        for field in attrs.fields(cls):
            if field.name != "nominal_dose":
                assert f"`{field.name}`" in section, (cls.__name__, field.name)
    assert "`nominal_dose`" in section
