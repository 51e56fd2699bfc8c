"""``phaser simulate``: 4D-STEM data with ground truth, written in the ``hdf5`` raw format.

The forward model here is deliberately a separate, plain implementation (numpy, one
batch of positions at a time over the full object field) so that it cross-checks the
engines' forward model rather than sharing its bugs. Only the probe, the Fresnel
propagator and the raster come from :mod:`phaser_std.physics`.

For each scan position p (y, x) [Å] in the frame of ``/ground_truth/phase`` (pixel (i, j)
of the field at (i, j)·s):

1. cut the ``(Qy, Qx)`` window starting at round(p/s) − Q//2 from every slice's
   transmission function O_i = exp(i·φ_i);
2. shift every probe mode by the sub-pixel residual p/s − round(p/s) with the Fourier
   ramp exp(−2πi k·d);
3. ψ ← ψ·O_1, then ψ ← F⁻¹[F[ψ]·H(Δz_i)]·O_{i+1} for each further slice (H from
   :func:`phaser_std.physics.propagation.fresnel_propagator`, tilt included);
4. I = Σ_modes |F[ψ]|², shifted so zero angle is at pixel Q//2.

The probe is scaled so Σ_modes Σ|P|² = dose·(scan step area): each pattern's sum is the
dose [e/Å²] times the area per position. With a dose, ``/patterns`` holds Poisson counts
(stream ``"simulate-noise"``); ``/patterns_noiseless`` always holds the expected values.

The spec (YAML) keys are the fields of :class:`SimSpec` and its parts; see
``examples/sim_small.yaml``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping

import attrs
import numpy as np
import scipy.fft as sfft

from phaser_core.backend import stream_seed
from phaser_core.config import in_range, yx_int_pair as _int_pair, yx_pair as _pair, yx_pair_or_none as _opt_pair
from phaser_core.errors import DataError
from phaser_core.physics_constants import wavelength_A
from phaser_std.data.loaders._common import angular_to_reciprocal
from phaser_std.physics.optics import check_aberrations


# ---------------------------------------------------------------------------------------
# The spec
# ---------------------------------------------------------------------------------------


def _positive_pair(instance: Any, attribute: Any, value: tuple | None) -> None:
    """A (y, x) pair (or ``None``) of positive numbers."""
    if value is not None and not all(v > 0 for v in value):
        raise ValueError(f"must be positive, got {value}", attribute)








@attrs.frozen(kw_only=True)
class AtomSpec:
    """One atom of the unit cell: a Gaussian phase bump."""

    #: fractional (y, x) position in the cell
    position: tuple[float, float] = attrs.field(converter=_pair)
    #: peak phase [rad]
    strength_rad: float = 0.5
    #: Gaussian standard deviation [Å]
    width_A: float = 0.25


@attrs.frozen(kw_only=True)
class RandomAtomsSpec:
    """Atoms at uniformly random positions over the field (stream ``"simulate-object"``)."""

    #: atoms per Å²
    density_per_A2: float = 0.05
    #: peak phase [rad]: a value or a [min, max] range
    strength_rad: tuple[float, float] = attrs.field(default=(0.2, 0.6), converter=_pair)
    #: Gaussian standard deviation [Å]
    width_A: float = 0.25


@attrs.frozen(kw_only=True)
class SliceSpec:
    """What differs in one slice: its own atoms (default: the object's), a lateral shift
    [Å] of its lattice, a phase scale factor, random atoms, a thickness [Å]."""

    atoms: tuple[AtomSpec, ...] | None = None
    random: RandomAtomsSpec | None = None
    shift_A: tuple[float, float] = attrs.field(default=(0.0, 0.0), converter=_pair)
    scale: float = 1.0
    thickness_A: float | None = None


@attrs.frozen(kw_only=True)
class ObjectSpec:
    """The specimen: a lattice of Gaussian phase atoms and/or random atoms, in slices."""

    #: rectangular (y, x) unit cell [Å]
    cell_A: tuple[float, float] = attrs.field(default=(3.0, 3.0), converter=_pair)
    #: the cell's atoms (fractional positions)
    atoms: tuple[AtomSpec, ...] = ()
    #: random atoms added to every slice that does not set its own
    random: RandomAtomsSpec | None = None
    #: number of slices (when ``slices`` is not given)
    n_slices: int = attrs.field(default=1, validator=in_range(1))
    #: propagation distance after each slice [Å]
    thickness_A: float = 2.0
    #: per-slice differences; its length sets the number of slices
    slices: tuple[SliceSpec, ...] | None = None
    #: lateral shift [Å] of the lattice in slice i is i·shift_per_slice_A (when ``slices`` is not given)
    shift_per_slice_A: tuple[float, float] = attrs.field(default=(0.0, 0.0), converter=_pair)


@attrs.frozen(kw_only=True)
class ScanSpec:
    """A raster scan centred on the field."""

    shape: tuple[int, int] = attrs.field(default=(16, 16), converter=_int_pair, validator=_positive_pair)
    #: (y, x) step [Å]
    step_A: tuple[float, float] = attrs.field(default=(0.6, 0.6), converter=_pair, validator=_positive_pair)
    #: fast axis turned from +x toward +y [deg]
    rotation_deg: float = 0.0
    #: Gaussian position error [Å] (true positions differ from the nominal raster)
    jitter_A: float = 0.0


@attrs.frozen(kw_only=True)
class CoherenceSpec:
    """Partial coherence: an incoherent sum of probes over a defocus spread (temporal)
    and a source-position spread (spatial), Gaussian-weighted."""

    #: standard deviation of the defocus [Å]
    defocus_spread_A: float = 0.0
    #: number of defocus samples (odd)
    n_defocus: int = 3
    #: standard deviation of the source position [Å]
    source_size_A: float = 0.0
    #: source positions per axis (odd)
    n_source: int = 3
    #: number of orthogonal modes kept in /ground_truth/probe (power-ordered); null: all
    n_modes: int | None = None


@attrs.frozen(kw_only=True)
class SimSpec:
    """A simulation: beam, detector, scan, dose, object. Units: eV, mrad, Å, e/Å²."""

    energy_eV: float = attrs.field(default=200e3, validator=in_range(0, lo_open=True))
    convergence_angle_mrad: float = attrs.field(default=25.0, validator=in_range(0, lo_open=True))
    #: positive = underfocus (= −C10) [Å]
    defocus_A: float = 0.0
    #: other Krivanek aberrations [Å] / angles [rad] (no C10: use defocus_A)
    aberrations: Any = attrs.field(factory=dict, converter=lambda v: dict(v) if isinstance(v, Mapping) else v,
                                   validator=check_aberrations)  # Any: a list is reported by the validator
    #: (Qy, Qx) detector pixels = probe window
    detector_shape: tuple[int, int] = attrs.field(default=(64, 64), converter=_int_pair, validator=_positive_pair)
    #: detector sampling [1/Å per px] (y, x); or give angular_sampling_mrad
    reciprocal_sampling_invA: tuple[float, float] | None = attrs.field(default=None, converter=_opt_pair,
                                                                      validator=_positive_pair)
    angular_sampling_mrad: tuple[float, float] | None = attrs.field(default=None, converter=_opt_pair,
                                                                   validator=_positive_pair)
    scan: ScanSpec = attrs.field(factory=ScanSpec)
    #: electron dose [e/Å²]; null: noiseless patterns (scaled to ``nominal_dose``)
    dose: float | None = 1e5
    nominal_dose: float = attrs.field(default=1e5, validator=in_range(0, lo_open=True))
    object: ObjectSpec = attrs.field(factory=ObjectSpec)
    #: beam tilt (y, x) [mrad] (enters the propagator: Δz·tan t lateral shift per slice)
    tilt_mrad: tuple[float, float] = attrs.field(default=(0.0, 0.0), converter=_pair)
    coherence: CoherenceSpec | None = None
    #: propagator band limit, fraction of Nyquist (null: none); raised to cover the probe's
    #: aperture, as in the engines
    bandlimit: float | None = 2.0 / 3.0
    #: probe aperture soft edge [reciprocal px]
    soft_edge_px: float = 0.0
    seed: int = 0

    def sampling_invA(self) -> tuple[float, float]:
        if self.reciprocal_sampling_invA is not None:
            return self.reciprocal_sampling_invA
        if self.angular_sampling_mrad is not None:
            return angular_to_reciprocal(self.angular_sampling_mrad, self.energy_eV)
        raise DataError("the spec needs reciprocal_sampling_invA or angular_sampling_mrad")

    def real_sampling_A(self) -> tuple[float, float]:
        dk = self.sampling_invA()
        return (1.0 / (self.detector_shape[0] * dk[0]), 1.0 / (self.detector_shape[1] * dk[1]))


def _converter() -> Any:
    import cattrs

    conv = cattrs.Converter(forbid_extra_keys=True, prefer_attrib_converters=True)
    return conv


def spec_from_dict(d: dict[str, Any], source: str = "spec") -> SimSpec:
    """Structure a dict into a :class:`SimSpec`; unknown keys and bad values raise
    :class:`DataError` listing every problem, each as ``file:line:col: path: message`` where
    ``d`` was loaded by ruamel's round-trip loader (as :func:`load_spec` does), the way plan
    errors are reported."""
    import cattrs

    from phaser_core.plan_errors import collect, to_issues

    try:
        spec = _converter().structure(dict(d or {}), SimSpec)
    except cattrs.BaseValidationError as exc:
        issues = to_issues(collect(exc), d, source)
        raise DataError(f"invalid simulation spec {source}:\n  " + "\n  ".join(map(str, issues))) from None
    if "C10" in spec.aberrations:
        raise DataError(f"{source}: give the defocus as defocus_A (= −C10), not aberrations.C10")
    if spec.reciprocal_sampling_invA is None and spec.angular_sampling_mrad is None:
        raise DataError(f"{source}: give reciprocal_sampling_invA [1/Å per px] or angular_sampling_mrad [mrad/px]")
    if spec.dose is not None and spec.dose <= 0:
        raise DataError(f"{source}: dose must be positive [e/Å²] or null, got {spec.dose}")
    return spec


def load_spec(path: str | Path) -> SimSpec:
    """Read a YAML simulation spec."""
    from ruamel.yaml import YAML
    from ruamel.yaml.error import MarkedYAMLError, YAMLError

    from phaser_core.plan_errors import yaml_syntax_error

    path = Path(path)
    if not path.exists():
        raise DataError(f"simulation spec {path} does not exist")
    try:
        d = YAML(typ="rt").load(path.read_text(encoding="utf-8"))
    except MarkedYAMLError as exc:  # file:line:col like a plan's syntax error
        line, col, problem = yaml_syntax_error(exc)
        where = f"{path}:{line}:{col}" if line is not None else str(path)
        raise DataError(f"invalid simulation spec {path}:\n  {where}: invalid YAML: {problem}") from None
    except (YAMLError, OSError, UnicodeDecodeError) as exc:
        raise DataError(f"invalid simulation spec {path}:\n  {path}: cannot read it as YAML: {exc}") from None
    if d is not None and not isinstance(d, dict):
        raise DataError(f"invalid simulation spec {path}: expected a mapping of keys (energy_eV, scan, ...), "
                        f"got {type(d).__name__}")
    return spec_from_dict(d, source=str(path))


# ---------------------------------------------------------------------------------------
# Object
# ---------------------------------------------------------------------------------------


def add_gaussians(field: np.ndarray, sampling_A: tuple[float, float], centres_A: np.ndarray,
                  strengths: np.ndarray, widths_A: np.ndarray) -> np.ndarray:
    """Add Gaussian bumps a·exp(−r²/(2w²)) at (y, x) centres [Å] (pixel (i, j) at (i, j)·s),
    each evaluated within ±5w of its centre. Modifies and returns ``field``."""
    h, w = field.shape
    sy, sx = sampling_A
    for (cy, cx), a, wid in zip(centres_A, strengths, widths_A):
        r = 5.0 * wid
        i0, i1 = max(int(math.floor((cy - r) / sy)), 0), min(int(math.ceil((cy + r) / sy)) + 1, h)
        j0, j1 = max(int(math.floor((cx - r) / sx)), 0), min(int(math.ceil((cx + r) / sx)) + 1, w)
        if i0 >= i1 or j0 >= j1:
            continue
        gy = np.exp(-((np.arange(i0, i1) * sy - cy) ** 2) / (2 * wid**2))
        gx = np.exp(-((np.arange(j0, j1) * sx - cx) ** 2) / (2 * wid**2))
        field[i0:i1, j0:j1] += a * np.outer(gy, gx)
    return field


def lattice_centres(shape: tuple[int, int], sampling_A: tuple[float, float], cell_A: tuple[float, float],
                    atoms: tuple[AtomSpec, ...], shift_A: tuple[float, float], origin_A: tuple[float, float],
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Centres [Å], strengths and widths of a rectangular lattice of ``atoms`` covering the
    field (cell (0, 0) at ``origin_A`` + ``shift_A``)."""
    if not atoms:
        return np.zeros((0, 2)), np.zeros(0), np.zeros(0)
    ext = (shape[0] * sampling_A[0], shape[1] * sampling_A[1])
    oy, ox = origin_A[0] + shift_A[0], origin_A[1] + shift_A[1]
    ny0, ny1 = math.floor(-oy / cell_A[0]) - 1, math.ceil((ext[0] - oy) / cell_A[0]) + 1
    nx0, nx1 = math.floor(-ox / cell_A[1]) - 1, math.ceil((ext[1] - ox) / cell_A[1]) + 1
    iy, ix = np.meshgrid(np.arange(ny0, ny1), np.arange(nx0, nx1), indexing="ij")
    cells = np.stack([oy + iy.ravel() * cell_A[0], ox + ix.ravel() * cell_A[1]], axis=-1)
    frac = np.array([a.position for a in atoms]) * np.array(cell_A)
    centres = (cells[:, None, :] + frac[None]).reshape(-1, 2)
    strengths = np.tile([a.strength_rad for a in atoms], len(cells))
    widths = np.tile([a.width_A for a in atoms], len(cells))
    return centres, strengths, widths


def random_centres(shape: tuple[int, int], sampling_A: tuple[float, float], spec: RandomAtomsSpec,
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    ext = np.array([shape[0] * sampling_A[0], shape[1] * sampling_A[1]])
    n = int(round(spec.density_per_A2 * ext[0] * ext[1]))
    centres = rng.uniform(0.0, 1.0, size=(n, 2)) * ext
    strengths = rng.uniform(spec.strength_rad[0], spec.strength_rad[1], size=n)
    return centres, strengths, np.full(n, spec.width_A)


def slice_phases(spec: SimSpec, shape: tuple[int, int], sampling_A: tuple[float, float],
                 origin_A: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """Phase of every slice (slices, H, W) [rad] and the thicknesses [Å] (slices,)."""
    obj = spec.object
    if obj.slices is not None:
        slices = list(obj.slices)
    else:
        slices = [SliceSpec(shift_A=(i * obj.shift_per_slice_A[0], i * obj.shift_per_slice_A[1]))
                  for i in range(int(obj.n_slices))]
    if not slices:
        raise DataError("the object needs at least one slice")
    rng = np.random.default_rng(stream_seed(spec.seed, "simulate-object"))
    phases = np.zeros((len(slices), *shape), dtype=np.float64)
    thick = np.zeros(len(slices))
    for i, sl in enumerate(slices):
        atoms = sl.atoms if sl.atoms is not None else obj.atoms
        c, a, w = lattice_centres(shape, sampling_A, obj.cell_A, atoms, sl.shift_A, origin_A)
        add_gaussians(phases[i], sampling_A, c, a, w)
        rnd = sl.random if sl.random is not None else obj.random
        if rnd is not None:
            c, a, w = random_centres(shape, sampling_A, rnd, rng)
            add_gaussians(phases[i], sampling_A, c, a, w)
        phases[i] *= sl.scale
        thick[i] = sl.thickness_A if sl.thickness_A is not None else obj.thickness_A
    return phases, thick


# ---------------------------------------------------------------------------------------
# Probe
# ---------------------------------------------------------------------------------------


def simulate_probe(spec: SimSpec) -> np.ndarray:
    """Probe modes (modes, Qy, Qx) complex128 with Σ_modes Σ|P|² = 1.

    Coherent: one mode. Partially coherent: the Gaussian-weighted incoherent set of probes
    over defocus and source position, turned into power-ordered orthogonal modes (SVD of
    the stacked, √weight-scaled probes), which describe the same mixed state.
    """
    from phaser_std.physics.probe import gaussian_nodes, make_probe

    shape = spec.detector_shape
    samp = spec.real_sampling_A()
    lam = wavelength_A(spec.energy_eV)
    coh = spec.coherence
    if coh is None or (coh.defocus_spread_A <= 0 and coh.source_size_A <= 0):
        p = make_probe(shape, samp, lam, spec.convergence_angle_mrad, defocus_A=spec.defocus_A,
                       aberrations=spec.aberrations or None, soft_edge_px=spec.soft_edge_px)
        return p[None]
    # the nodes focal_spread_modes reconstructs with
    dfs, wdf = gaussian_nodes(coh.defocus_spread_A, coh.n_defocus)
    src, wsrc = gaussian_nodes(coh.source_size_A, coh.n_source)
    ky = np.fft.fftfreq(shape[0], samp[0])[:, None]
    kx = np.fft.fftfreq(shape[1], samp[1])[None, :]
    probes = []
    for df, w1 in zip(dfs, wdf):
        base = make_probe(shape, samp, lam, spec.convergence_angle_mrad, defocus_A=spec.defocus_A + df,
                          aberrations=spec.aberrations or None, soft_edge_px=spec.soft_edge_px)
        for sy, w2 in zip(src, wsrc):
            for sx, w3 in zip(src, wsrc):
                shifted = _fourier_shift(base, ky, kx, sy, sx)
                probes.append(np.sqrt(w1 * w2 * w3) * shifted)
    stack = np.stack(probes).reshape(len(probes), -1)
    u, s, vh = np.linalg.svd(stack, full_matrices=False)
    modes = (s[:, None] * vh).reshape(-1, *shape)
    keep = coh.n_modes if coh.n_modes is not None else int(np.sum(s**2 > 1e-6 * np.sum(s**2)))
    modes = modes[:max(1, keep)]
    return modes / np.sqrt(np.sum(np.abs(modes) ** 2))


def _fourier_shift(a: np.ndarray, ky: np.ndarray, kx: np.ndarray, dy: float, dx: float) -> np.ndarray:
    """Shift ``a`` (last two axes) by (dy, dx) [Å]: F⁻¹[F[a]·exp(−2πi k·d)]; ``dy``/``dx``
    may be arrays (B,) giving a batch (B, ...)."""
    dy = np.asarray(dy, dtype=np.float64)
    dx = np.asarray(dx, dtype=np.float64)
    ramp = np.exp(-2j * np.pi * (ky * dy[..., None, None] + kx * dx[..., None, None]))
    if ramp.ndim > 2 and a.ndim > 2:
        ramp = ramp[:, None]
    return sfft.ifft2(sfft.fft2(a, axes=(-2, -1), workers=-1) * ramp, axes=(-2, -1), workers=-1)


# ---------------------------------------------------------------------------------------
# Forward simulation
# ---------------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class Simulation:
    """Everything :func:`simulate` computes (numpy, float64/complex128 until written)."""

    spec: SimSpec
    patterns_noiseless: np.ndarray  # (Ny, Nx, Qy, Qx)
    patterns: np.ndarray  # noisy if a dose was given
    positions_A: np.ndarray  # nominal (N, 2), ground-truth frame
    true_positions_A: np.ndarray  # (N, 2)
    probe: np.ndarray  # (modes, Qy, Qx), scaled to electrons
    phases: np.ndarray  # (slices, H, W) [rad]
    thicknesses_A: np.ndarray
    sampling_A: tuple[float, float]
    periodic: bool


def field_geometry(true_pos: np.ndarray, det_shape: tuple[int, int], sampling_A: tuple[float, float],
                   margin_px: int = 2) -> tuple[tuple[int, int], np.ndarray]:
    """Field shape (H, W) holding every probe window, and the offset [Å] that moves
    origin-centred positions into the field frame (pixel (i, j) at (i, j)·s)."""
    s = np.asarray(sampling_A)
    q = np.asarray(det_shape)
    lo, hi = true_pos.min(axis=0), true_pos.max(axis=0)
    offset = (q // 2 + margin_px) * s - lo
    size = np.ceil((hi - lo) / s).astype(int) + q + 2 * margin_px + 1
    return (int(size[0]), int(size[1])), offset


def forward(probe: np.ndarray, transmission: np.ndarray, positions_A: np.ndarray, sampling_A: tuple[float, float],
            propagators: list[np.ndarray], batch: int = 128) -> np.ndarray:
    """Far-field intensities (N, Qy, Qx), zero angle at Q//2, of ``probe`` (modes, Qy, Qx)
    through ``transmission`` (slices, H, W) at ``positions_A`` (N, 2) [Å] in the field frame.

    ``propagators[i]`` (corner-centred) propagates from slice i to slice i+1. FFTs run on
    every core (:mod:`scipy.fft` workers).
    """
    m, qy, qx = probe.shape
    sy, sx = sampling_A
    ky = np.fft.fftfreq(qy, sy)[:, None]
    kx = np.fft.fftfreq(qx, sx)[None, :]
    px = positions_A / np.array([sy, sx])
    start = np.rint(px).astype(int) - np.array([qy // 2, qx // 2])
    frac = (px - np.rint(px)) * np.array([sy, sx])
    h, w = transmission.shape[-2:]
    if (start < 0).any() or (start[:, 0] + qy > h).any() or (start[:, 1] + qx > w).any():
        raise DataError("internal: a probe window leaves the object field")
    out = np.empty((len(positions_A), qy, qx), dtype=np.float64)
    ar_y, ar_x = np.arange(qy), np.arange(qx)
    for b0 in range(0, len(positions_A), batch):
        sl = slice(b0, b0 + batch)
        iy = start[sl, 0][:, None, None] + ar_y[None, :, None]
        ix = start[sl, 1][:, None, None] + ar_x[None, None, :]
        psi = _fourier_shift(probe, ky, kx, frac[sl, 0], frac[sl, 1])  # (B, modes, Qy, Qx)
        for i in range(transmission.shape[0]):
            psi = psi * transmission[i][iy, ix][:, None]
            if i < transmission.shape[0] - 1:
                psi = sfft.ifft2(sfft.fft2(psi, axes=(-2, -1), workers=-1) * propagators[i], axes=(-2, -1),
                                 workers=-1)
        far = sfft.fft2(psi, axes=(-2, -1), norm="ortho", workers=-1)
        out[sl] = np.fft.fftshift(np.sum(np.abs(far) ** 2, axis=1), axes=(-2, -1))
    return out


def simulate(spec: SimSpec, seed: int | None = None) -> Simulation:
    """Run the simulation described by ``spec`` (``seed`` overrides ``spec.seed``)."""
    from phaser_std.physics.propagation import aperture_radius_invA, covering_bandlimit, fresnel_propagator
    from phaser_std.physics.scan import raster_scan

    if seed is not None:
        spec = attrs.evolve(spec, seed=int(seed))
    samp = spec.real_sampling_A()
    lam = wavelength_A(spec.energy_eV)
    q = spec.detector_shape
    nominal = raster_scan(spec.scan.shape, spec.scan.step_A, spec.scan.rotation_deg)
    true = nominal.copy()
    if spec.scan.jitter_A > 0:
        rng = np.random.default_rng(stream_seed(spec.seed, "simulate-jitter"))
        true = true + rng.normal(0.0, spec.scan.jitter_A, size=true.shape)
    shape, offset = field_geometry(np.concatenate([true, nominal]), q, samp)
    nominal = nominal + offset
    true = true + offset
    # lattice origin at the field centre (scan centre) so the pattern is symmetric about it
    phases, thick = slice_phases(spec, shape, samp, origin_A=tuple(offset))
    transmission = np.exp(1j * phases)
    area = abs(spec.scan.step_A[0] * spec.scan.step_A[1])
    dose = spec.dose if spec.dose is not None else spec.nominal_dose
    probe = simulate_probe(spec) * np.sqrt(dose * area)
    # the reconstruction engines' rule: the band limit never cuts the probe's aperture
    bandlimit = covering_bandlimit(spec.bandlimit, q, samp,
                                   aperture_radius_invA(probe, samp, spec.convergence_angle_mrad, lam))
    props = [fresnel_propagator(q, samp, lam, dz, tilt_mrad=spec.tilt_mrad, bandlimit=bandlimit)
             for dz in thick[:-1]]
    expected = forward(probe, transmission, true, samp, props)
    ny, nx = spec.scan.shape
    expected = expected.reshape(ny, nx, *q)
    if spec.dose is not None:
        rng = np.random.default_rng(stream_seed(spec.seed, "simulate-noise"))
        noisy = rng.poisson(np.clip(expected, 0.0, None)).astype(np.float64)
    else:
        noisy = expected
    periodic = False
    return Simulation(spec=spec, patterns_noiseless=expected, patterns=noisy, positions_A=nominal,
                      true_positions_A=true, probe=probe, phases=phases, thicknesses_A=thick,
                      sampling_A=samp, periodic=periodic)


def _sampling_attr(v: tuple[float, float]) -> Any:
    """A scalar when isotropic (what single-value readers expect), else a (y, x) array."""
    return float(v[0]) if v[0] == v[1] else np.asarray(v, dtype=np.float64)


def write_hdf5(sim: Simulation, path: str | Path) -> Path:
    """Write ``sim`` in the ``hdf5`` raw format (float32 patterns, ground truth), through a
    ``.tmp`` file beside ``path`` (removed if the write fails)."""
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{path} is a folder; give the output file's name, e.g. {path / 'sim.h5'}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        _write_raw_file(sim, tmp)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _write_raw_file(sim: Simulation, tmp: Path) -> None:
    """The file's datasets and attributes, written to ``tmp``."""
    import h5py

    spec = sim.spec
    dk = spec.sampling_invA()
    lam = wavelength_A(spec.energy_eV)
    with h5py.File(tmp, "w") as f:
        f.create_dataset("patterns", data=sim.patterns.astype(np.float32))
        f.create_dataset("patterns_noiseless", data=sim.patterns_noiseless.astype(np.float32))
        f.create_dataset("scan_positions", data=sim.positions_A.astype(np.float64))
        f["scan_positions"].attrs["units"] = "Å"
        a = f.attrs
        a["file_type"] = "phaser_raw"
        a["version"] = 1
        a["energy_eV"] = float(spec.energy_eV)
        a["wavelength_A"] = lam
        a["convergence_angle_mrad"] = float(spec.convergence_angle_mrad)
        a["defocus_A"] = float(spec.defocus_A)
        a["reciprocal_sampling_invA"] = _sampling_attr(dk)
        a["angular_sampling_mrad"] = _sampling_attr((dk[0] * lam * 1e3, dk[1] * lam * 1e3))
        a["real_space_sampling_A"] = _sampling_attr(sim.sampling_A)
        a["scan_step_A"] = np.asarray(spec.scan.step_A, dtype=np.float64)
        a["scan_shape"] = np.asarray(spec.scan.shape, dtype=np.int64)
        a["scan_rotation_deg"] = float(spec.scan.rotation_deg)
        a["tilt_mrad"] = np.asarray(spec.tilt_mrad, dtype=np.float64)
        a["dose_e_per_A2"] = float(spec.dose) if spec.dose is not None else float("nan")
        a["aberrations"] = json.dumps(spec.aberrations)
        a["simulator"] = "phaser simulate"
        a["simulation_spec"] = json.dumps(_converter().unstructure(spec))
        g = f.create_group("ground_truth")
        g.attrs["periodic"] = "yes" if sim.periodic else "no"
        g.attrs["sampling_A"] = _sampling_attr(sim.sampling_A)
        ph = g.create_dataset("phase", data=sim.phases.sum(axis=0).astype(np.float32))
        ph.attrs["sampling_A"] = _sampling_attr(sim.sampling_A)
        ph.attrs["units"] = "rad"
        pot = g.create_dataset("potential", data=sim.phases.astype(np.float32))
        pot.attrs["units"] = "rad (phase shift of each slice, σ·V_projected)"
        g.create_dataset("thicknesses_A", data=sim.thicknesses_A)
        g.create_dataset("probe", data=sim.probe.astype(np.complex64))
        g.create_dataset("scan_positions", data=sim.true_positions_A)


def simulate_to_file(spec_path: str | Path, out: str | Path, seed: int | None = None) -> Simulation:
    """Read a YAML spec, simulate and write the hdf5 file."""
    spec = load_spec(spec_path)
    sim = simulate(spec, seed=seed)
    write_hdf5(sim, out)
    return sim
