"""Registration of the built-in probe, object and scan initialisers.

Probe: ``focused`` (aperture + aberrations, falling back to the data's metadata) and
``from_file``. Object: ``vacuum`` and ``random``. Scan: ``from_data``, ``raster`` and
``from_file``. Each takes ``(config, ctx: InitContext)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import numpy as np

from phaser_core.config import in_range, param, yx_int_pair_or_none, yx_pair_or_none
from phaser_core.errors import DataError
from phaser_core.state import ObjectState, ProbeState
from phaser_std.physics.optics import check_aberrations

__all__ = ["register_all", "FocusedProbeConfig", "ProbeFileConfig", "VacuumObjectConfig",
           "RandomObjectConfig", "RasterScanConfig", "ScanFileConfig", "FromDataScanConfig"]


def _wavelength(ctx: Any) -> float:
    return float(ctx.wavelength_A) if ctx.wavelength_A is not None else ctx.data.wavelength_A()


def _mean_pattern(data: Any, n_sample: int = 256) -> np.ndarray | None:
    """The mean of up to ``n_sample`` evenly spaced patterns (Qy, Qx) [e⁻]
    (:func:`~phaser_std.data.preprocess.pacbed`: NaN where a pixel is NaN in every pattern,
    0 where masked), or None without usable data."""
    from phaser_std.data.preprocess import pacbed

    try:
        return pacbed(data, n_sample=n_sample)
    except Exception:  # noqa: BLE001 - no usable data
        return None


def _scale_to_data(modes: np.ndarray, mean_pattern: np.ndarray | None) -> np.ndarray:
    """Scale so Σ|P|² equals the mean pattern's sum [e⁻] (dead pixels, NaN, left out;
    unchanged without a pattern)."""
    total = float(np.nansum(mean_pattern)) if mean_pattern is not None else 0.0
    if not np.isfinite(total) or total <= 0:
        return modes
    return modes * np.sqrt(total / float(np.sum(np.abs(modes) ** 2)))


# ------------------------------------------------------------------------------ probe
def _check_probe_aberrations(instance: Any, attribute: Any, value: Any) -> None:
    check_aberrations(instance, attribute, value)
    if value is not None and "C10" in value and instance.defocus_A is not None:
        raise ValueError(f"C10 = {value['C10']} Å and defocus_A = {instance.defocus_A} Å both give the defocus "
                         "(= −C10): give one of them", attribute)


@attrs.frozen
class FocusedProbeConfig:
    """A probe from the condenser aperture and aberrations."""

    conv_angle_mrad: float | None = param(None, unit="mrad", doc="aperture semi-angle; default: the data's")
    defocus_A: float | None = param(None, unit="Å",
                                    doc="defocus (= −C10, positive: crossover downstream); default: the data's, "
                                        "else the data's bright-field parallax's (phaser_std.data.parallax), else 0")
    aberrations: dict | None = param(None, doc="Krivanek coefficients C10..C56 [Å] and angles phi12.. [rad] "
                                               "(null: the data file's `aberrations`, if any); a C10 here is "
                                               "the defocus (= −C10), in place of the data's",
                                     validator=_check_probe_aberrations)
    soft_edge_px: float | None = param(None, unit="px", doc="width of a soft aperture edge in reciprocal pixels; "
                                       "null: estimated from the rim of the data's bright-field disc (0 for a hard "
                                       "edge, about 1 where detector pixels or the simulator smooth it)")
    n_modes: int = param(1, doc="number of mixed-state probe modes")
    first_mode_power: float = param(0.8, doc="fraction of the power in mode 0 when n_modes > 1")
    focal_spread_A: float = param(0.0, unit="Å", validator=in_range(0),
                                  doc="standard deviation of the defocus (partial temporal coherence: "
                                      "Cc·σ_E/E); > 0: the modes are the strongest of that defocus ensemble "
                                      "(first_mode_power unused)")
    check_parallax: bool = param(True, doc="compare the defocus with the data's bright-field parallax (and the "
                                 "detector's orientation with the scan's) and warn when they disagree: a defocus "
                                 "of the wrong sign or a mirrored detector gives an inverted or failed "
                                 "reconstruction (phaser_std.data.parallax; a raster scan of 8x8 or more)")
    check_centre: bool = param(True, doc="warn when the bright-field disc's centre lies half a pixel or more off "
                               "the zero-angle pixel (Qy//2, Qx//2): the probe and the reconstruction put the "
                               "undiffracted beam there (post_load center_diffraction centres the patterns)")


def _data_aberrations(data: Any) -> dict | None:
    """Aberrations [Å, rad] recorded with the data (``aberrations`` attribute: a mapping or
    its JSON text, as ``phaser simulate`` writes it), or None."""
    value = (data.extra or {}).get("aberrations")
    if value is None:
        return None
    if isinstance(value, (bytes, str)):
        import json

        value = json.loads(value)
    ab = {str(k): float(v) for k, v in dict(value).items()}
    if "C10" in ab and getattr(data, "defocus_A", None) is not None:
        # make_probe adds C10 to the defocus: both recorded would count the defocus twice
        raise ValueError(f"the data gives the defocus twice: defocus_A = {data.defocus_A} Å and aberrations "
                         f"C10 = {ab['C10']} Å (C10 = −defocus_A); set init.probe.defocus_A and "
                         "init.probe.aberrations in the plan to say which to use")
    return ab or None


def data_soft_edge_px(data: Any, sampling_A: Any, wavelength_A: float, conv_angle_mrad: float,
                      mean_pattern: np.ndarray | None = None) -> float:
    """The aperture edge width [reciprocal px] of :func:`~phaser_std.physics.probe.estimate_soft_edge_px`
    on the data's mean pattern (:func:`_mean_pattern` unless given; 0 without data)."""
    from phaser_std.physics.probe import estimate_soft_edge_px

    mean = mean_pattern if mean_pattern is not None else _mean_pattern(data)
    if mean is None:
        return 0.0
    return estimate_soft_edge_px(mean, sampling_A, wavelength_A, conv_angle_mrad, mask=getattr(data, "mask", None))


def init_focused_probe(config: FocusedProbeConfig, ctx: Any) -> ProbeState:
    """Focused (aberrated) probe on the detector-sized grid, scaled to the data's dose."""
    from phaser_std.physics.probe import focal_spread_modes, make_modes, make_probe

    data = ctx.data
    conv = config.conv_angle_mrad if config.conv_angle_mrad is not None else data.convergence_angle_mrad
    if conv is None:
        raise data.missing("convergence_angle_mrad", "the probe's convergence semi-angle [mrad]",
                           "raw_data.convergence_angle_mrad (or init.probe.conv_angle_mrad)")
    if ctx.wavelength_A is None and data.energy_eV is None:
        raise data.missing("energy_eV", "the beam energy [eV]", "raw_data.energy_eV")
    aberrations = config.aberrations if config.aberrations is not None else _data_aberrations(data)
    thickness = float(np.sum(ctx.thicknesses_A)) if ctx.thicknesses_A is not None else 0.0
    fit = _NOT_MEASURED
    if config.defocus_A is not None:
        defocus = config.defocus_A
    elif "C10" in (config.aberrations or {}):
        defocus = 0.0  # the plan's C10 is the defocus, in place of the data's
    elif data.defocus_A is not None or "C10" in (aberrations or {}):
        defocus = data.defocus_A or 0.0
    else:  # nobody gave one: the data's parallax, at the object's entrance
        fit = _parallax_fit(data, ctx.scan_A)
        defocus = 0.0
        if fit is not None and fit.resolved and fit.orientation == "as recorded":
            defocus = round(fit.defocus_A + 0.5 * thickness, 1)
            ctx.notes.append(f"the probe's defocus is {defocus:+.1f} Å, from the data's bright-field parallax "
                             f"(neither the plan nor the data gave one; set init.probe.defocus_A to choose)")
        elif fit is None or not fit.resolved:
            ctx.notes.append("the probe's defocus is 0 Å: neither the plan nor the data gave one, and the data's "
                             "bright-field parallax shows none (near focus, too noisy, or not a raster scan); set "
                             "init.probe.defocus_A if it is not")
    sampling = data.real_space_sampling_A()
    mean = _mean_pattern(data)
    soft = config.soft_edge_px
    if soft is None:
        soft = data_soft_edge_px(data, sampling, _wavelength(ctx), float(conv), mean_pattern=mean)

    def probe_at(df: float) -> np.ndarray:
        return make_probe(data.pattern_shape, sampling, _wavelength(ctx), float(conv), defocus_A=float(df),
                          aberrations=aberrations, soft_edge_px=soft)

    if config.check_centre and mean is not None:
        note = _centre_note(data, mean)
        if note is not None:
            ctx.notes.append(f"warning: {note}")
    if config.check_parallax:
        from phaser_std.data.loaders._common import DETECTOR_KEYS_EXTRA

        fit = _parallax_fit(data, ctx.scan_A) if fit is _NOT_MEASURED else fit
        note = _parallax_note(fit, float(defocus), aberrations, thickness,
                              (data.extra or {}).get(DETECTOR_KEYS_EXTRA))
        if note is not None:
            ctx.notes.append(f"warning: {note}")
    if config.focal_spread_A > 0:
        modes = focal_spread_modes(probe_at, float(defocus), config.focal_spread_A, config.n_modes)
    else:
        rng = np.random.default_rng(_stream(ctx.seed, "probe-modes"))
        modes = make_modes(probe_at(float(defocus)), config.n_modes, config.first_mode_power,
                           rng if config.n_modes > 1 else None)
    return ProbeState(data=_scale_to_data(modes, mean), sampling_A=tuple(float(s) for s in sampling))


#: the parallax not fitted yet (None: fitted, and the data allow no fit)
_NOT_MEASURED = object()


def _centre_note(data: Any, mean_pattern: np.ndarray) -> str | None:
    """The bright-field disc's centre against the zero-angle pixel
    (:func:`phaser_std.data.parallax.centre_note`); a diagnostic that never stops a run."""
    from phaser_core.data import detector_mask
    from phaser_std.data.parallax import centre_note

    try:
        return centre_note(mean_pattern, detector_mask(data))
    except Exception:  # noqa: BLE001 (odd data: no diagnosis, no crash)
        return None


def _parallax_fit(data: Any, positions: Any = None) -> Any:
    """The data's bright-field parallax over the run's scan ``positions`` [Å], or None. A
    diagnostic: whatever the data hold, it never stops a run."""
    from phaser_std.data.parallax import parallax_fit

    try:
        return parallax_fit(data, positions=positions)
    except Exception:  # noqa: BLE001 (odd data the fit did not foresee: no diagnosis, no crash)
        return None


def _parallax_note(fit: Any, defocus_A: float, aberrations: dict | None, thickness_A: float = 0.0,
                   loader_keys: dict | None = None) -> str | None:
    """The data's bright-field parallax ``fit`` against the probe's defocus [Å] (``C10`` of
    the aberrations included: defocus = −C10) over an object ``thickness_A`` [Å] thick, the
    detector's orientation and the scan's rotation
    (:func:`phaser_std.data.parallax.parallax_note`); ``loader_keys``: the detector keys the
    loader applied."""
    from phaser_std.data.parallax import parallax_note

    ab = dict(aberrations or {})
    return parallax_note(fit, defocus_A - float(ab.get("C10", 0.0)), abs(float(ab.get("C12", 0.0))), thickness_A,
                         loader_keys)


def _stream(seed: int, name: str) -> np.random.SeedSequence:
    from phaser_core.backend import stream_seed

    return stream_seed(seed, name)


@attrs.frozen
class ProbeFileConfig:
    """A probe from a ``.npy`` file or a previous state file (``/probe``)."""

    path: str = param(doc="path of a .npy (modes, Ny, Nx) or (Ny, Nx) array, or an HDF5 state file")
    sampling_A: tuple | None = param(None, unit="Å", doc="(y, x) pixel size; default: the data's real-space sampling")
    scale_to_data: bool = param(True, doc="rescale Σ|P|² to the mean pattern sum")


def init_probe_from_file(config: ProbeFileConfig, ctx: Any) -> ProbeState:
    """Probe modes read from a file."""
    from phaser_std.physics.probe import load_probe

    path = Path(config.path).expanduser()
    if not path.is_absolute():
        path = Path(ctx.plan_dir) / path
    modes = load_probe(path)
    if config.sampling_A is not None:
        s = np.broadcast_to(np.asarray(config.sampling_A, dtype=float), (2,))
        sampling = (float(s[0]), float(s[1]))
    else:
        sampling = ctx.data.real_space_sampling_A()
        file_sampling = _file_probe_sampling(path)
        if file_sampling is not None and not np.allclose(file_sampling, sampling, rtol=1e-6):
            raise ValueError(f"probe in {path} has pixel size {tuple(file_sampling)} Å but the data's "
                             f"real-space sampling is {sampling} Å; resample the probe or the data")
    shape = ctx.data.pattern_shape
    if tuple(modes.shape[-2:]) != tuple(shape):
        raise ValueError(f"probe in {path} is {modes.shape[-2:]} but the patterns are {shape}; "
                         "resample the probe or crop/bin the data to match")
    if config.scale_to_data:
        modes = _scale_to_data(modes, _mean_pattern(ctx.data))
    return ProbeState(data=modes, sampling_A=tuple(float(v) for v in sampling))


def _file_probe_sampling(path: Path) -> np.ndarray | None:
    """The ``sampling_A`` attribute of ``/probe`` in an HDF5 state file, if any."""
    if path.suffix.lower() == ".npy":
        return None
    import h5py

    with h5py.File(path, "r") as f:
        s = f["probe"].attrs.get("sampling_A")
    return None if s is None else np.asarray(s, dtype=float).reshape(2)


# ------------------------------------------------------------------------------ object
def _need_probe_and_scan(ctx: Any, who: str) -> None:
    if ctx.probe is None or ctx.scan_A is None:
        raise ValueError(f"object initializer {who!r} needs the probe and scan to be initialised first")


@attrs.frozen
class VacuumObjectConfig:
    """An all-ones object covering the scan."""

    pad_px: int = param(8, unit="px", doc="spare pixels on each side of the scanned area")


def init_vacuum_object(config: VacuumObjectConfig, ctx: Any) -> ObjectState:
    """Vacuum (transmission 1) in every slice."""
    from phaser_std.physics.objects import vacuum_object

    _need_probe_and_scan(ctx, "vacuum")
    return vacuum_object(ctx.scan_A, ctx.probe.shape, ctx.probe.sampling_A, ctx.n_slices,
                         ctx.thicknesses_A, config.pad_px)


@attrs.frozen
class RandomObjectConfig:
    """Unit amplitude with a small random phase (seeded)."""

    phase_sigma_rad: float = param(1e-3, unit="rad", doc="standard deviation of the total phase")
    pad_px: int = param(8, unit="px", doc="spare pixels on each side of the scanned area")


def init_random_object(config: RandomObjectConfig, ctx: Any) -> ObjectState:
    """Random phase object from the ``object-init`` stream of the plan's seed."""
    from phaser_std.physics.objects import random_object

    _need_probe_and_scan(ctx, "random")
    rng = np.random.default_rng(_stream(ctx.seed, "object-init"))
    return random_object(ctx.scan_A, ctx.probe.shape, ctx.probe.sampling_A, rng, config.phase_sigma_rad,
                         ctx.n_slices, ctx.thicknesses_A, config.pad_px)


# ------------------------------------------------------------------------------ scan
@attrs.frozen
class FromDataScanConfig:
    """Scan positions recorded with the data, else a raster from its scan shape and step."""

    rotation_deg: float = param(0.0, unit="deg", doc="scan rotation: applied when building a raster (added to "
                                "the file's scan_rotation_deg), and about their centroid to positions recorded "
                                "with the data")


def init_scan_from_data(config: FromDataScanConfig, ctx: Any) -> np.ndarray:
    """``RawData.scan_positions_A`` or a raster from ``scan_shape`` and ``scan_step_A``."""
    from phaser_std.data.preprocess import recorded_rotation_deg
    from phaser_std.physics.scan import raster_scan, rotate_positions

    data = ctx.data
    if data.scan_positions_A is not None:
        scan = np.asarray(data.scan_positions_A, dtype=np.float64).reshape(-1, 2)
        if config.rotation_deg:
            scan = rotate_positions(scan, config.rotation_deg, scan.mean(axis=0))  # about the centroid
    else:
        missing = [k for k in ("scan_shape", "scan_step_A") if getattr(data, k) is None]
        if missing:
            units = {"scan_shape": "(ny, nx) points", "scan_step_A": "(y, x) raster step [Å]"}
            raise DataError(f"{data.source or 'the raw data'}: no scan positions and no "
                            f"{' or '.join(f'{k} ({units[k]})' for k in missing)} {data.metadata_source}; set "
                            f"{' and '.join('raw_data.' + k for k in missing)} in the plan, or use "
                            "init.scan {type: raster, shape: [ny, nx], step_A: ...}")
        scan = raster_scan(data.scan_shape, data.scan_step_A, recorded_rotation_deg(data) + config.rotation_deg)
    if scan.shape[0] != data.n_patterns:
        raise DataError(f"{data.source or 'the raw data'}: the scan has {scan.shape[0]} positions but there are "
                        f"{data.n_patterns} patterns")
    return scan


def _check_affine(instance: Any, attribute: Any, value: Any) -> None:
    if value is not None and np.shape(np.asarray(value, dtype=object)) != (2, 2):
        raise ValueError(f"must be a 2x2 matrix [[a, b], [c, d]] acting on (y, x), got {value!r}", attribute)


@attrs.frozen
class RasterScanConfig:
    """A raster scan centred on the origin."""

    shape: tuple[int, int] | None = param(None, doc="(ny, nx) points; default: the data's scan_shape",
                                          converter=yx_int_pair_or_none)
    step_A: float | tuple[float, float] | None = param(None, unit="Å", doc="(y, x) step (or one number); default: "
                                                       "the data's", converter=yx_pair_or_none)
    rotation_deg: float = param(0.0, unit="deg", doc="turns the fast axis from +x toward +y")
    affine: tuple | None = param(None, doc="2x2 matrix acting on (y, x) column vectors after the rotation "
                                           "(scan distortion), e.g. [[1, 0.02], [0, 0.98]]",
                                 validator=_check_affine)


def init_raster_scan(config: RasterScanConfig, ctx: Any) -> np.ndarray:
    """Raster scan from the config (falling back to the data's scan shape/step)."""
    from phaser_std.physics.scan import raster_scan

    shape = config.shape if config.shape is not None else ctx.data.scan_shape
    step = config.step_A if config.step_A is not None else ctx.data.scan_step_A
    if shape is None:
        raise ValueError("scan initializer 'raster': shape is missing (not in init.scan nor the data)")
    if step is None:
        raise ValueError("scan initializer 'raster': step_A is missing (not in init.scan nor the data)")
    scan = raster_scan(tuple(shape), step, config.rotation_deg, config.affine)
    if scan.shape[0] != ctx.data.n_patterns:
        raise ValueError(f"raster scan {tuple(shape)} has {scan.shape[0]} positions but the data have "
                         f"{ctx.data.n_patterns} patterns")
    return scan


@attrs.frozen
class ScanFileConfig:
    """Scan positions (N, 2) (y, x) [Å] from a file."""

    path: str = param(doc=".npy or text (N, 2) (y, x) [Å], or an HDF5 file with a /scan dataset")


def init_scan_from_file(config: ScanFileConfig, ctx: Any) -> np.ndarray:
    """Positions read from ``.npy``, ``.txt``/``.csv`` or an HDF5 ``/scan`` dataset."""
    path = Path(config.path).expanduser()
    if not path.is_absolute():
        path = Path(ctx.plan_dir) / path
    if not path.exists():
        raise FileNotFoundError(f"scan file {path} does not exist")
    suf = path.suffix.lower()
    if suf == ".npy":
        scan = np.load(path)
    elif suf in (".txt", ".csv", ".dat"):
        scan = np.loadtxt(path, delimiter="," if suf == ".csv" else None)
    else:
        import h5py

        with h5py.File(path, "r") as f:
            key = next((k for k in ("scan", "scan_A", "scan_positions_A") if k in f), None)
            if key is None:
                raise KeyError(f"{path} has no '/scan' dataset")
            node = f[key]
            if isinstance(node, h5py.Group):
                node = node[next(iter(node.keys()))]
            scan = node[()]
    scan = np.asarray(scan, dtype=np.float64)
    if scan.ndim != 2 or scan.shape[1] != 2:
        raise ValueError(f"scan in {path} must be (N, 2) (y, x) [Å], got shape {scan.shape}")
    if scan.shape[0] != ctx.data.n_patterns:
        raise ValueError(f"scan in {path} has {scan.shape[0]} positions but the data have "
                         f"{ctx.data.n_patterns} patterns")
    return scan


def register_all(register) -> None:
    register("focused", init_focused_probe, config=FocusedProbeConfig, target="probe")
    register("from_file", init_probe_from_file, config=ProbeFileConfig, target="probe")
    register("vacuum", init_vacuum_object, config=VacuumObjectConfig, target="object")
    register("random", init_random_object, config=RandomObjectConfig, target="object")
    register("from_data", init_scan_from_data, config=FromDataScanConfig, target="scan")
    register("raster", init_raster_scan, config=RasterScanConfig, target="scan")
    register("from_file", init_scan_from_file, config=ScanFileConfig, target="scan")
