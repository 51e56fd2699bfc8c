"""Simulate a 4D-STEM data set with py4DSTEM's own wave-optics code (a second simulator,
independent of phaser and of abTEM) into phaser's hdf5 raw format, to check our conventions
end to end: reconstruct it with ``phaser run`` and score the phase against the projected
potential the simulation used.

py4DSTEM is not a dependency of phaser; run this in its own environment::

    python3 -m venv /tmp/p4venv && /tmp/p4venv/bin/pip install py4DSTEM==0.14.18 h5py
    /tmp/p4venv/bin/python benchmarks/py4dstem_crosscheck.py --out /tmp/p4_sto.h5 [--layers 8]

Why py4DSTEM, and what of it is used. No candidate on PyPI ships a ready 4D-STEM
multislice simulator that installs here: quantem 0.1.10 has Bloch-wave CBED
(``quantem.diffraction.bloch.calculate_cbed``: incoherent illumination, intensities only, no
probe position) and a ptychography *reconstruction* forward model bound to its dataset
classes; pyprismatic 1.1.16 does not build (``fatal error: fftw3.h: No such file or
directory``); prismatique needs it. py4DSTEM 0.14.18 ships every piece of a multislice 4D-STEM forward model, the ones its ptychography
engines use, and this script only strings them together:
- probe: ``py4DSTEM.process.phase.utils.ComplexProbe(...).build()._array`` (corner-centred,
  Σ|P|² = 1), with its own aberration code (``evaluate_chi``) and defocus alias;
- sub-pixel shift of the probe to each position: ``py4DSTEM.process.phase.utils.fft_shift``;
- object patches at a position: ``PtychographicReconstruction._extract_vectorized_patch_indices``;
- Fresnel propagator and multislice: ``Object2p5DMethodsMixin._precompute_propagator_arrays``,
  ``_propagate_array`` and ``Object2p5DProbeMethodsMixin._overlap_projection`` (transmit,
  propagate between slices, the exit wave not propagated);
- far field: ``numpy.fft.fft2`` of the exit wave, as ``_fourier_projection`` does; the data
  py4DSTEM reads are its fftshift (zero angle at pixel Q//2, its preprocessing ifftshifts);
- scattering factors (Lobato 2014) ``py4DSTEM.process.utils.single_atom_scatter`` and
  σ ``py4DSTEM.process.utils.electron_interaction_parameter``, wavelength
  ``electron_wavelength_angstrom``.
The projected potential is a Fourier synthesis from py4DSTEM's scattering factors, written
here (py4DSTEM's ``Crystal.generate_projected_potential`` is a display image: atom radii in
pixels, not Å (its ``R_2D`` is in pixels), positions rounded to pixels, blurred, divided by
the number of projections, and its ``units="VA"`` factor is h²/(2π m e)·1e18, 100x below
h²/(2π m e) = 47.88 V·Å² of Kirkland's V(q) = (h²/2πm₀e)·f_e(q); we use 47.88):
V_slice(k) = (1/A) Σ_atoms f_e(|k|)·47.88·exp(−2πi k·r_atom) [V·Å], periodic on the cell,
the atoms of each slice projected into it (infinite projection, as abtem_crosscheck's).
SrTiO₃ [001] has two atomic planes per cell: the slices are those planes, a/2 apart.

Conversion (py4DSTEM indexes every array (x, y): axis 0 is x; phaser (y, x)):
- patterns: ``fftshift(|fft2(exit)|²)`` of shape (Qx, Qy) per position, scan raster
  (x, y) -> ``(scan_y, scan_x, ky, kx)``, cropped to ``--det`` pixels about the centre.
  Evidence: ``spatial_frequencies`` returns (kx, ky) as fftfreq of gpts[0], gpts[1] and
  ``ComplexProbe.polar_coordinates`` puts kx on axis 0, ky on axis 1; the DataCube is
  (Rx, Ry, Qx, Qy).
- scan positions: py4DSTEM (x, y) [Å] with position p on object pixel p/sampling (the probe's
  corner pixel 0 goes to ``round(p)``, ``fft_shift`` moves it by the rest toward larger indices:
  ``exp(−2πi k·d)``), object pixel 0 at 0 Å -> ours (y, x) in the frame of the truth, pixel 0
  at 0 Å (our ``corner_A`` convention, docs/conventions.md).
- ground truth: σ·ΣV_slice [rad] (x, y) -> (y, x).
- defocus: ``ComplexProbe.set_parameters``: ``"defocus": v`` sets ``C10 = −v``, and
  ``evaluate_chi`` is χ = ½α²C10 + …, ``evaluate_aberrations`` exp(−iχ) (ours too). So
  py4DSTEM's ``defocus`` is −C10 (positive: underfocus), which is our ``defocus_A``.
  ``--c10`` sets py4DSTEM's C10 directly (written as ``defocus_A = −C10``).
- propagator: py4DSTEM's exp(−iπλΔz k²) (ours), tilt ramp exp(−2πiΔz k·tan t) (ours); no
  tilt here.
- scan rotation ``--rotation θ`` [deg]: py4DSTEM's ``AffineTransform(angle)`` acting as
  ``x @ [[c, −s], [s, c]]`` on (x, y) rows, i.e. x' = x c + y s, y' = −x s + y c: +x turns
  toward −y, the opposite of our ``rotation_deg`` (ours = −θ). Only the rotated positions
  are written (``/scan_positions``), so the reconstruction needs no angle.
"""

from __future__ import annotations

import argparse
import json
import types

import numpy as np

HC2_OVER_2PI_ME = 47.87801  # h²/(2π m₀ e) [V·Å²] (CODATA 2018): V(q) [V·Å³] = this · f_e(q) [Å]

# SrTiO3 [001], fractional (x, y, z), atomic numbers
SRTIO3 = [(38, (0.0, 0.0, 0.0)), (8, (0.5, 0.5, 0.0)),
          (22, (0.5, 0.5, 0.5)), (8, (0.5, 0.0, 0.5)), (8, (0.0, 0.5, 0.5))]


def projected_slices(a: float, reps: tuple[int, int], n_cell: int) -> tuple[np.ndarray, float]:
    """σ-less projected potential [V·Å] of the two atomic planes of SrTiO3 [001], (2, Nx, Ny)."""
    from py4DSTEM.process.utils.single_atom_scatter import single_atom_scatter

    sas = single_atom_scatter()
    nx, ny = reps[0] * n_cell, reps[1] * n_cell
    ext = np.array([reps[0] * a, reps[1] * a])
    kx = np.fft.fftfreq(nx, ext[0] / nx)
    ky = np.fft.fftfreq(ny, ext[1] / ny)
    k2 = kx[:, None] ** 2 + ky[None, :] ** 2
    area = ext[0] * ext[1]
    out = np.zeros((2, nx, ny))
    for plane, z in enumerate((0.0, 0.5)):
        vk = np.zeros((nx, ny), dtype=complex)
        for Z, (fx, fy, fz) in SRTIO3:
            if fz != z:
                continue
            fe = sas.electron_scattering_factor(Z, k2, units="A") * HC2_OVER_2PI_ME  # V·Å³
            for i in range(reps[0]):
                for j in range(reps[1]):
                    rx, ry = (i + fx) * a, (j + fy) * a
                    vk += fe * np.exp(-2j * np.pi * (kx[:, None] * rx + ky[None, :] * ry))
        out[plane] = np.real(np.fft.ifft2(vk)) * (nx * ny) / area  # Σ_k V(k) e^{2πik·r} / A
    return out, ext[0] / nx


def simulate(args: argparse.Namespace) -> dict:
    from py4DSTEM.process.phase.phase_base_class import PtychographicReconstruction
    from py4DSTEM.process.phase.ptychographic_methods import Object2p5DMethodsMixin, Object2p5DProbeMethodsMixin
    from py4DSTEM.process.phase.utils import AffineTransform, ComplexProbe, fft_shift
    from py4DSTEM.process.utils import electron_interaction_parameter, electron_wavelength_angstrom

    a = 3.905
    slices_v, s = projected_slices(a, tuple(args.reps), args.n_cell)  # (2, Nx, Ny) [V·Å], s [Å/px]
    sigma = electron_interaction_parameter(args.energy)  # rad/(V·Å)
    wavelength = electron_wavelength_angstrom(args.energy)
    nx, ny = slices_v.shape[1:]
    obj = np.exp(1j * sigma * np.tile(slices_v, (args.layers, 1, 1))).astype(np.complex64)  # (2L, Nx, Ny)
    n_slices = obj.shape[0]

    params = {"C10": args.c10} if args.c10 is not None else {"defocus": args.defocus}
    probe = ComplexProbe(energy=args.energy, gpts=(nx, ny), sampling=(s, s), semiangle_cutoff=args.alpha,
                         rolloff=0.0, parameters=params).build()._array  # corner-centred (x, y)

    shim = types.SimpleNamespace(_xp=np, _xp_storage=np, _object_type="complex", _num_slices=n_slices,
                                 _region_of_interest_shape=np.array((nx, ny)), _object_shape=(nx, ny))
    shim._propagate_array = lambda arr, prop: Object2p5DMethodsMixin._propagate_array(shim, arr, prop)
    shim._propagator_arrays = Object2p5DMethodsMixin._precompute_propagator_arrays(
        shim, (nx, ny), (s, s), args.energy, np.full(n_slices, a / 2))

    # scan: a raster over the periodic field, (x, y) [Å], fast axis y as py4DSTEM's meshgrid(indexing="ij")
    ext = np.array([nx * s, ny * s])
    nsx, nsy = args.scan_shape if args.scan_shape else (int(round(ext[0] / args.step)), int(round(ext[1] / args.step)))
    stx, sty = args.scan_step if args.scan_step else (ext[0] / nsx, ext[1] / nsy)
    gx, gy = np.meshgrid(np.arange(nsx) * stx, np.arange(nsy) * sty, indexing="ij")
    pos = np.stack([gx.ravel(), gy.ravel()], axis=-1).astype(np.float64)  # (nsx*nsy, 2) (x, y), x slow
    if args.rotation:
        pos = np.asarray(AffineTransform(angle=np.deg2rad(args.rotation))(pos, pos.mean(0)), dtype=np.float64)
    pos_px = pos / s
    q = args.det
    pats = np.empty((pos.shape[0], q, q))
    batch = 64
    for b0 in range(0, pos.shape[0], batch):
        p = pos_px[b0:b0 + batch]
        rows, cols = PtychographicReconstruction._extract_vectorized_patch_indices(shim, p)
        shifted = fft_shift(probe, p - np.round(p), np)
        _, _, exit_w = Object2p5DProbeMethodsMixin._overlap_projection(shim, obj, rows, cols, shifted)
        inten = np.fft.fftshift(np.abs(np.fft.fft2(exit_w)) ** 2, axes=(-2, -1))  # (B, Qx, Qy)
        pats[b0:b0 + batch] = inten[:, nx // 2 - q // 2:nx // 2 + q // 2, ny // 2 - q // 2:ny // 2 + q // 2]
    pats = pats.reshape(nsx, nsy, q, q).transpose(1, 0, 3, 2)  # (scan_y, scan_x, ky, kx)
    pos_yx = pos.reshape(nsx, nsy, 2).transpose(1, 0, 2)[..., ::-1].reshape(-1, 2)  # row-major, x fast
    rng = np.random.default_rng(args.seed)
    expected = pats / pats.sum(axis=(-2, -1), keepdims=True).mean() * args.dose
    counts = rng.poisson(expected).astype(np.float32)
    phase = (sigma * slices_v.sum(axis=0) * args.layers).T  # (y, x) [rad]
    return {
        "patterns": counts, "patterns_noiseless": expected.astype(np.float32), "scan_positions": pos_yx,
        "phase": phase.astype(np.float32), "sampling_A": s, "dk_yx_invA": (1.0 / ext[1], 1.0 / ext[0]),
        "scan_shape": (nsy, nsx), "step_yx_A": (sty, stx), "wavelength_A": wavelength,
        "thickness_A": args.layers * a, "n_slices": n_slices, "sigma": sigma,
        "defocus_A": (-args.c10 if args.c10 is not None else args.defocus),
    }


def write(path: str, sim: dict, args: argparse.Namespace) -> None:
    import h5py

    from abtem_crosscheck import write_ground_truth, write_patterns  # beside this script; imports no abTEM

    with h5py.File(path, "w") as f:
        write_patterns(f, sim, args.compact)
        f.attrs["energy_eV"] = float(args.energy)
        f.attrs["convergence_angle_mrad"] = float(args.alpha)
        f.attrs["defocus_A"] = float(sim["defocus_A"])  # py4DSTEM "defocus" = −C10 = ours
        dky, dkx = sim["dk_yx_invA"]  # a scalar for a square field (what single-value readers expect)
        f.attrs["reciprocal_sampling_invA"] = dky if abs(dky - dkx) < 1e-9 * dky else np.array([dky, dkx])
        f.attrs["scan_shape"] = np.array(sim["scan_shape"])
        f.attrs["scan_step_A"] = np.array(sim["step_yx_A"])
        f.attrs["wavelength_A"] = sim["wavelength_A"]
        f.attrs["real_space_sampling_A"] = sim["sampling_A"]
        f.attrs["simulator"] = "py4DSTEM 0.14.18 (ComplexProbe, fft_shift, multislice mixins)"
        f.attrs["simulation_spec"] = json.dumps({k: v for k, v in vars(args).items() if k != "out"})
        write_ground_truth(f, sim["phase"], sim["sampling_A"], sim["thickness_A"], n_slices=sim["n_slices"])


def main() -> None:
    from abtem_crosscheck import beam_arguments  # beside this script; imports no abTEM

    ap = beam_arguments(__doc__, 0.0, "py4DSTEM's defocus = −C10 [Å]")
    ap.add_argument("--c10", type=float, default=None, help="py4DSTEM's C10 [Å] instead of --defocus")
    ap.add_argument("--reps", type=int, nargs=2, default=(4, 4), help="unit cells along x, y")
    ap.add_argument("--layers", type=int, default=2, help="unit cells along the beam (2 slices each)")
    ap.add_argument("--n-cell", type=int, default=40, help="pixels per 3.905 Å cell (40: 0.0976 Å)")
    ap.add_argument("--step", type=float, default=0.6, help="scan step [Å], fitted to the field")
    ap.add_argument("--scan-shape", type=int, nargs=2, default=None, metavar=("NX", "NY"))
    ap.add_argument("--scan-step", type=float, nargs=2, default=None, metavar=("SX", "SY"), help="[Å]")
    ap.add_argument("--rotation", type=float, default=0.0, help="py4DSTEM AffineTransform angle [deg]")
    ap.add_argument("--det", type=int, default=48, help="detector pixels kept about the centre")
    ap.add_argument("--dose", type=float, default=1e5, help="electrons per pattern")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--compact", action="store_true", help="uint16 counts only (tests/data)")
    args = ap.parse_args()
    sim = simulate(args)
    write(args.out, sim, args)
    print(json.dumps({"out": args.out, "patterns": list(sim["patterns"].shape), "dk_yx_invA": sim["dk_yx_invA"],
                      "sampling_A": sim["sampling_A"], "step_yx_A": sim["step_yx_A"], "n_slices": sim["n_slices"],
                      "phase_range": [float(sim["phase"].min()), float(sim["phase"].max())]}))


if __name__ == "__main__":
    main()
