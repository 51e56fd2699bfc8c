"""Simulate a 4D-STEM data set with abTEM (an independent simulator) into phaser's hdf5 raw
format, to check our conventions end to end: reconstruct it with ``phaser run`` and score
the phase against abTEM's projected potential.

abTEM is not a dependency of phaser; run this in its own environment::

    python3 -m venv /tmp/abvenv && /tmp/abvenv/bin/pip install abtem==1.0.11 h5py
    /tmp/abvenv/bin/python benchmarks/abtem_crosscheck.py --out /tmp/abtem_sto.h5 [--layers 6]

The files in ``tests/data`` (``tests/test_abtem_data.py``) were made with (then their
``scan_step_A`` attribute was corrected to GridScan's 0.58575 Å, which the script now
writes itself)::

    abtem_crosscheck.py --out tests/data/abtem_srtio3.h5 --reps 3 3 --det 32 --sampling 0.1 --layers 2 --compact
    abtem_crosscheck.py --out tests/data/abtem_srtio3_aberrated.h5 --reps 3 3 --det 32 --sampling 0.1 --layers 1 --compact --aberrations '{"C12": 40, "phi12": 0.5, "C23": 300, "phi23": 0.3, "C30": 100000}'
    abtem_crosscheck.py --out tests/data/abtem_srtio3_tilted.h5 --reps 3 3 --det 32 --sampling 0.1 --layers 8 --compact --tilt 10 -6
    abtem_crosscheck.py --out tests/data/abtem_srtio3_focal_spread.h5 --reps 3 3 --det 32 --sampling 0.1 --layers 2 --compact --focal-spread 100

Conversion (abTEM indexes arrays (x, y); phaser (y, x), docs/file-formats.md):
- patterns: abTEM ``(scan_x, scan_y, kx, ky)``, zero frequency at index n//2 ->
  ``(scan_y, scan_x, ky, kx)`` cropped to ``--det`` pixels about the centre;
- scan positions: abTEM (x, y) [Å] -> (y, x), in the frame of the ground truth;
- ground truth: σ·(projected potential) [rad], abTEM ``(x, y)`` -> ``(y, x)``;
- defocus: abTEM's ``defocus`` is −C10 (positive: underfocus), which is ``defocus_A``;
- aberrations: abTEM's Krivanek names and angles, written as they are (benchmarks/NOTES.md 25);
- tilt: abTEM's ``(tx, ty)`` [mrad] -> ``tilt_mrad`` ``(ty, tx)``;
- ``--focal-spread S`` [Å]: the patterns of ``--focal-points`` defocus values (Gauss-Hermite
  nodes of a Gaussian of standard deviation S about ``--defocus``) added with their weights,
  a beam with an energy spread; recorded as ``focal_spread_A`` (our loader ignores it: pass
  it to ``init.probe.focal_spread_A``).
"""

from __future__ import annotations

import argparse
import json

import numpy as np


def simulate(args: argparse.Namespace) -> dict:
    import abtem
    from abtem.core.energy import energy2sigma, energy2wavelength
    from ase import Atoms
    from ase.build import mx2

    abtem.config.set({"device": "cpu", "fft": "numpy"})
    if args.material == "mos2":
        cell = mx2(formula="MoS2", kind="2H", a=3.19, thickness=3.19, size=(1, 1, 1), vacuum=2.0)
        cell = abtem.orthogonalize_cell(cell)  # 3.19 x 5.53 Å: a slightly anisotropic detector sampling
    else:  # SrTiO3 [001], cubic 3.905 Å: a square field, one detector sampling
        a = 3.905
        cell = Atoms("SrTiO3", scaled_positions=[(0, 0, 0), (0.5, 0.5, 0.5), (0.5, 0.5, 0), (0.5, 0, 0.5),
                                                  (0, 0.5, 0.5)], cell=(a, a, a), pbc=True)
    atoms = cell * (args.reps[0], args.reps[1], args.layers)
    atoms.center(vacuum=2.0, axis=2)
    potential = abtem.Potential(atoms, sampling=args.sampling, slice_thickness=args.slice_thickness,
                                projection="infinite", parametrization="lobato", periodic=True)
    aberrations = json.loads(args.aberrations) if args.aberrations else {}
    extent = np.asarray(potential.extent, dtype=float)  # (x, y) [Å]
    scan = abtem.GridScan(start=(0.0, 0.0), end=tuple(extent), sampling=args.step)
    detector = abtem.PixelatedDetector(max_angle=None)

    def patterns_at(defocus: float) -> np.ndarray:
        probe = abtem.Probe(energy=args.energy, semiangle_cutoff=args.alpha, defocus=defocus,
                            aberrations=aberrations, tilt=tuple(args.tilt))  # abTEM: (x, y) [mrad]
        probe.grid.match(potential)
        measurement = probe.scan(potential, scan=scan, detectors=detector).compute()
        return np.asarray(measurement.array, dtype=np.float64)  # (scan_x, scan_y, kx, ky)

    if args.focal_spread > 0:
        # partial temporal coherence: the intensities of a Gaussian spread of defocus [Å]
        # (standard deviation --focal-spread) added incoherently, by Gauss-Hermite quadrature
        nodes, weights = np.polynomial.hermite_e.hermegauss(args.focal_points)
        weights = weights / weights.sum()
        pats = sum(w * patterns_at(args.defocus + args.focal_spread * x) for x, w in zip(nodes, weights))
    else:
        pats = patterns_at(args.defocus)
    nkx, nky = pats.shape[-2:]
    q = args.det
    cx, cy = nkx // 2, nky // 2
    pats = pats[..., cx - q // 2:cx + q // 2, cy - q // 2:cy + q // 2]
    pats = np.transpose(pats, (1, 0, 3, 2))  # (scan_y, scan_x, ky, kx)
    wavelength = energy2wavelength(args.energy)
    dk = 1.0 / extent  # (x, y) [1/Å per px] of the full grid
    # positions of the scan grid, (x, y) [Å] -> (y, x)
    pos_xy = np.asarray(scan.get_positions(), dtype=float).reshape(-1, 2)
    nsx, nsy = pats.shape[1], pats.shape[0]
    pos_xy = pos_xy.reshape(nsx, nsy, 2)
    pos_yx = np.transpose(pos_xy, (1, 0, 2))[..., ::-1].reshape(-1, 2)
    sigma = energy2sigma(args.energy)
    vproj = np.asarray(potential.project().compute().array, dtype=np.float64)  # (x, y) [V·Å]
    phase = (sigma * vproj).T  # (y, x) [rad]
    rng = np.random.default_rng(args.seed)
    expected = pats / pats.sum(axis=(-2, -1), keepdims=True).mean() * args.dose
    counts = rng.poisson(expected).astype(np.float32)
    return {
        "patterns": counts, "patterns_noiseless": expected.astype(np.float32),
        "scan_positions": pos_yx, "phase": phase.astype(np.float32),
        "sampling_yx_A": (float(potential.sampling[1]), float(potential.sampling[0])),
        "dk_yx_invA": (float(dk[1]), float(dk[0])), "scan_shape": (nsy, nsx),
        # GridScan fits its step to the field (extent/gpts), not exactly --step
        "step_yx_A": (float(scan.sampling[1]), float(scan.sampling[0])), "wavelength_A": float(wavelength),
        "thickness_A": float(potential.thickness), "n_atoms": len(atoms),
    }


def write_patterns(f: object, sim: dict, compact: bool) -> None:
    """The counts (and without ``compact`` the noiseless intensities) and the scan
    positions into the open hdf5 file ``f`` (also used by py4dstem_crosscheck.py)."""
    if compact:  # counts as uint16, no noiseless copy: a file small enough for the tests
        f.create_dataset("patterns", data=sim["patterns"].astype(np.uint16), compression="gzip",
                         compression_opts=9, shuffle=True)
    else:
        f.create_dataset("patterns", data=sim["patterns"], compression="gzip")
        f.create_dataset("patterns_noiseless", data=sim["patterns_noiseless"], compression="gzip")
    f["scan_positions"] = sim["scan_positions"]


def write_ground_truth(f: object, phase: np.ndarray, sampling_yx_A: tuple, thickness_A: float, **extra: object) -> None:
    """``/ground_truth``: the phase (y, x) [rad], its sampling [Å] (a scalar where the
    pixels are square, what single-value readers expect, else (y, x)), periodic, the
    thickness [Å] and ``extra`` attributes."""
    gt = f.create_group("ground_truth")
    gt["phase"] = phase
    sy, sx = (float(v) for v in np.broadcast_to(np.asarray(sampling_yx_A, dtype=float), (2,)))
    gt_s = sy if abs(sy - sx) < 1e-9 * sy else np.array([sy, sx])
    gt["phase"].attrs["sampling_A"] = gt_s
    gt.attrs["sampling_A"] = gt_s
    gt.attrs["periodic"] = "yes"
    gt.attrs["thickness_A"] = thickness_A
    for key, value in extra.items():
        gt.attrs[key] = value


def write(path: str, sim: dict, args: argparse.Namespace) -> None:
    import h5py

    with h5py.File(path, "w") as f:
        write_patterns(f, sim, args.compact)
        f.attrs["energy_eV"] = float(args.energy)
        f.attrs["convergence_angle_mrad"] = float(args.alpha)
        f.attrs["defocus_A"] = float(args.defocus)
        dky, dkx = sim["dk_yx_invA"]
        f.attrs["reciprocal_sampling_invA"] = dky if abs(dky - dkx) < 1e-9 * dky else np.array([dky, dkx])
        f.attrs["scan_shape"] = np.array(sim["scan_shape"])
        f.attrs["scan_step_A"] = np.array(sim["step_yx_A"])
        f.attrs["wavelength_A"] = sim["wavelength_A"]
        f.attrs["simulator"] = "abTEM"
        if any(args.tilt):  # ours is (y, x)
            f.attrs["tilt_mrad"] = np.array([args.tilt[1], args.tilt[0]], dtype=float)
        if args.aberrations:  # Krivanek C_nm [Å], phi_nm [rad]: the same names and angles as ours
            f.attrs["aberrations"] = args.aberrations
        if args.focal_spread > 0:  # for the record: a single probe cannot describe these patterns
            f.attrs["focal_spread_A"] = float(args.focal_spread)
        f.attrs["simulation_spec"] = json.dumps({k: v for k, v in vars(args).items() if k != "out"})
        write_ground_truth(f, sim["phase"], sim["sampling_yx_A"], sim["thickness_A"])


def beam_arguments(doc: str, defocus_A: float, defocus_help: str) -> argparse.ArgumentParser:
    """A parser with the output file and the beam's arguments (also py4dstem_crosscheck's)."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--energy", type=float, default=200e3, help="[eV]")
    ap.add_argument("--alpha", type=float, default=25.0, help="convergence semi-angle [mrad]")
    ap.add_argument("--defocus", type=float, default=defocus_A, help=defocus_help)
    return ap


def main() -> None:
    ap = beam_arguments(__doc__, 50.0, "abTEM defocus = −C10 [Å] (+: underfocus)")
    ap.add_argument("--material", choices=("mos2", "srtio3"), default="srtio3")
    ap.add_argument("--reps", type=int, nargs=2, default=(6, 6), help="unit cells along x, y")
    ap.add_argument("--layers", type=int, default=1, help="unit cells (MoS2: layers) along the beam")
    ap.add_argument("--sampling", type=float, default=0.05, help="potential sampling [Å]")
    ap.add_argument("--slice-thickness", type=float, default=1.0, help="[Å]")
    ap.add_argument("--step", type=float, default=0.6, help="scan step [Å] (GridScan fits it to the field)")
    ap.add_argument("--det", type=int, default=64, help="detector pixels kept about the centre")
    ap.add_argument("--dose", type=float, default=1e5, help="electrons per pattern")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--compact", action="store_true", help="uint16 counts only (tests/data)")
    ap.add_argument("--tilt", type=float, nargs=2, default=(0.0, 0.0), metavar=("TX", "TY"),
                    help="beam tilt in abTEM's (x, y) order [mrad]; written as tilt_mrad (y, x)")
    ap.add_argument("--aberrations", default="", help='JSON, e.g. \'{"C12": 30, "phi12": 0.5, "C30": 1e5}\' [Å, rad]')
    ap.add_argument("--focal-spread", type=float, default=0.0,
                    help="standard deviation of the defocus [Å]: partial temporal coherence (0: coherent)")
    ap.add_argument("--focal-points", type=int, default=7, help="defocus values of the --focal-spread quadrature")
    args = ap.parse_args()
    sim = simulate(args)
    write(args.out, sim, args)
    print(json.dumps({"out": args.out, "patterns": list(sim["patterns"].shape), "dk_yx_invA": sim["dk_yx_invA"],
                      "sampling_yx_A": sim["sampling_yx_A"], "step_yx_A": sim["step_yx_A"],
                      "thickness_A": sim["thickness_A"]}))


if __name__ == "__main__":
    main()
