"""``phaser inspect``: acquisition parameters, sampling figures and an overview image.

Sampling figures (symbols: Δk detector pixel [1/Å]; Δθ = λΔk [rad]; Q detector pixels;
s = 1/(QΔk) real-space pixel [Å]; Δr scan step [Å]; α convergence semi-angle [rad];
Δf defocus [Å]; per axis y and x):

- **Linear oversampling** (the fundamental ptychographic sampling of Edo et al., Phys. Rev.
  A 87, 053850 (2013)): R = 1/(2·Δr·Δk) = D/(2Δr), D = 1/Δk the probe window. The
  sampling condition of the 4D dataset is R ≥ 1 on each axis (scan step at most half the
  window the detector sampling resolves).
- **Areal oversampling**: measured intensities per reconstructed object pixel,
  O = Qy·Qx·s_y·s_x / (Δr_y·Δr_x) = 1/(Δk_y·Δk_x·Δr_y·Δr_x) = 4·R_y·R_x; the data hold
  O real numbers per complex unknown of the object.
- **Probe sampling**: detector pixels across the bright-field disc, 2α/Δθ, and the
  real-space pixel s relative to the aperture-limited half-period λ/(4α) (the finest
  period the probe transfers is λ/(2α)); s/(λ/(4α)) ≤ 1 means the probe is sampled at
  Nyquist. The detector collects up to θ_max = (Q/2)·Δθ, reported as a multiple of α.
- **Ronchigram magnification** (Gilgenbach, Chen and LeBeau, Microsc. Microanal. (2024)
  ozae055): with defocus Δf, a specimen point at distance r from the probe axis appears
  in the bright-field disc at angle r/Δf, so the shadow image samples the specimen at
  |Δf|·Δθ [Å per detector pixel]. M = s / (|Δf|·Δθ) is the number of detector pixels per
  reconstructed pixel (the shadow image's magnification relative to the object grid);
  the shadow image moves Δr/(|Δf|·Δθ) detector pixels per scan step. In focus M → ∞.
- **Bright-field parallax** (:mod:`phaser_std.data.parallax`): the defocus, sign
  included, and the detector's orientation relative to the scan that line up the
  bright-field pixels' virtual images.
- **Probe overlap** (geometric): beam diameter at the entrance surface
  d = 2·α·|Δf| + d₀ with d₀ = 1.22·λ/α the in-focus diameter [Å]; linear overlap
  1 − Δr/d (Bunk et al., Ultramicroscopy 108, 481 (2008)).

The PNG shows the PACBED (log scale), a virtual bright-field image (disc θ ≤ α), an
annular dark-field image (θ from 1.5α to the detector edge) and the probe-overlap map
Σ_positions |P(r − p)|² over the object field.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from phaser_core.data import CHECK_BLOCK, RawData, detector_mask, nonfinite_patterns, read_blocks
from phaser_core.errors import DataError
from phaser_std.physics.optics import mrad_to_invA


def sampling_figures(data: RawData) -> dict[str, Any]:
    """The figures of the module docstring, as a dict of floats (``None`` where unknown)."""
    out: dict[str, Any] = {}
    qy, qx = data.pattern_shape
    lam = data.wavelength_A() if data.energy_eV is not None else None
    dk = data.reciprocal_sampling_invA
    alpha_rad = data.convergence_angle_mrad * 1e-3 if data.convergence_angle_mrad is not None else None
    step = data.scan_step_A
    if step is None and data.scan_positions_A is not None and len(data.scan_positions_A) > 1:
        pos = np.asarray(data.scan_positions_A)
        d = np.sqrt(((pos[:, None] - pos[None]) ** 2).sum(-1)) if len(pos) <= 4096 else None
        if d is not None:
            np.fill_diagonal(d, np.inf)
            nn = float(np.median(d.min(axis=1)))
            step = (nn, nn)
    out["wavelength_A"] = lam
    out["scan_step_A"] = step
    if dk is not None:
        s = data.real_space_sampling_A()
        out["real_space_pixel_A"] = s
        out["probe_window_A"] = (1.0 / dk[0], 1.0 / dk[1])
        if lam is not None:
            out["angular_sampling_mrad"] = (lam * dk[0] * 1e3, lam * dk[1] * 1e3)
        if step is not None:
            r = (1.0 / (2 * step[0] * dk[0]), 1.0 / (2 * step[1] * dk[1]))
            out["linear_oversampling"] = r
            out["areal_oversampling"] = 4.0 * r[0] * r[1]
        if lam is not None and alpha_rad is not None:
            dth = (lam * dk[0], lam * dk[1])
            out["bf_disc_px"] = (2 * alpha_rad / dth[0], 2 * alpha_rad / dth[1])
            nyq = lam / (4 * alpha_rad)
            out["probe_sampling"] = (s[0] / nyq, s[1] / nyq)
            out["max_angle_over_alpha"] = ((qy // 2) * dth[0] / alpha_rad, (qx // 2) * dth[1] / alpha_rad)
            df = data.defocus_A
            if df is not None:
                if df == 0:
                    out["ronchigram_magnification"] = (math.inf, math.inf)
                    out["shadow_pixel_A"] = (0.0, 0.0)
                else:
                    out["shadow_pixel_A"] = (abs(df) * dth[0], abs(df) * dth[1])
                    out["ronchigram_magnification"] = (s[0] / (abs(df) * dth[0]), s[1] / (abs(df) * dth[1]))
                d = 2 * alpha_rad * abs(df) + 1.22 * lam / alpha_rad
                out["probe_diameter_A"] = d
                if step is not None:
                    out["linear_overlap"] = (1 - step[0] / d, 1 - step[1] / d)
    return out


def _fmt(v: Any, unit: str = "", digits: int = 4) -> str:
    if v is None:
        return "unknown"
    if isinstance(v, (tuple, list, np.ndarray)):
        vals = [_fmt(x, "", digits) for x in v]
        s = f"({', '.join(vals)})" if len(set(vals)) > 1 else vals[0]
        return f"{s} {unit}".strip()
    if isinstance(v, float):
        if math.isinf(v):
            return "∞"
        return f"{v:.{digits}g} {unit}".strip()
    return f"{v} {unit}".strip()


def _storage_summary(data: RawData) -> tuple[str, str]:
    """(value, note) of the storage row: the patterns' dtype and size as read, and what a
    run keeps (whole electrons up to 65535 as uint8/uint16: ``compact_counts``)."""
    p = np.asarray(data.patterns)
    mib = float(p.size) / (1 << 20)
    kept = data.counted_dtype
    value = f"{p.dtype} ({p.dtype.itemsize * mib:.4g} MiB)"
    if kept is None:
        return value, "not whole electrons: a run keeps the run's float dtype"
    return value, f"counts: a run keeps them as {kept} ({kept.itemsize * mib:.4g} MiB)"


def _dose_rows(data: RawData, mean_counts: float) -> list[tuple[str, str, str]]:
    """The dose [e⁻/Å²], the mean counts [e⁻] over the area per scan position (the step's,
    else the positions'), and what a null object step does on one slice at that dose
    (:func:`phaser_std.engines.conventional_solvers.falling_step_reason`); none without an
    area. Counted data show the run's own figure (:func:`counted_dose`, from a sample of
    the patterns), so the two agree at the threshold."""
    from phaser_std.data.preprocess import scan_area_per_position_A2
    from phaser_std.engines.conventional_solvers import counted_dose, falling_step_reason

    try:
        area = scan_area_per_position_A2(data)
    except DataError:
        return []
    counted = counted_dose(data)
    falls, why = falling_step_reason(counted)
    return [("dose", _fmt(mean_counts / area if counted is None else counted, "e/Å²"),
             "mean counts / area per position"),
            ("object step (null)", "falling" if falls else "constant", f"{why}; on one slice")]


def _noise_rows(data: RawData) -> list[tuple[str, str, str]]:
    """The mean counts per valid pixel, as the engines' ``auto`` noise model reads them,
    and the model it picks for these data with its reason (sparse counts get amplitude)."""
    from phaser_std.engines.noise_models import SPARSE_COUNTS_PER_PIXEL, auto_noise_model, counts_per_pixel

    per_pixel = counts_per_pixel(data)
    name, reason = auto_noise_model(data, per_pixel)
    return [("counts / pixel", _fmt(per_pixel, "e"),
             f"over the valid pixels; under {SPARSE_COUNTS_PER_PIXEL:g}: sparse"),
            ("noise model (auto)", name, reason)]


def summary_rows(data: RawData) -> list[tuple[str, str, str]]:
    """(quantity, value, note) rows: acquisition parameters then sampling figures."""
    f = sampling_figures(data)
    n = data.n_patterns
    rows = [
        ("source", str(data.source), ""),
        ("patterns", f"{n} x {data.pattern_shape[0]} x {data.pattern_shape[1]}", "N x Qy x Qx"),
        ("storage", *_storage_summary(data)),
        ("scan shape", " x ".join(map(str, data.scan_shape)) if data.scan_shape else "none (explicit positions)",
         "ny x nx"),
        ("energy", _fmt(data.energy_eV / 1e3 if data.energy_eV else None, "kV"), ""),
        ("wavelength", _fmt(f["wavelength_A"], "Å"), ""),
        ("convergence semi-angle", _fmt(data.convergence_angle_mrad, "mrad"), ""),
        ("defocus", _fmt(data.defocus_A, "Å"), "positive = underfocus"),
        ("beam tilt", _fmt(data.tilt_mrad, "mrad") if data.tilt_mrad is not None else "none recorded (0)",
         "(y, x), the initial global tilt"),
        ("detector mask", _mask_summary(data), "invalid pixels are left out of the fit"),
        ("detector sampling", _fmt(data.reciprocal_sampling_invA, "1/Å"), "per pixel"),
        ("angular sampling", _fmt(f.get("angular_sampling_mrad"), "mrad"), "per pixel"),
        ("real-space pixel", _fmt(f.get("real_space_pixel_A"), "Å"), "1/(Q·Δk)"),
        ("probe window", _fmt(f.get("probe_window_A"), "Å"), "1/Δk"),
        ("scan step", _fmt(f.get("scan_step_A"), "Å"), ""),
    ]
    bad = nonfinite_patterns(data)
    if bad:
        first = ", ".join(map(str, bad[:5])) + (", ..." if len(bad) > 5 else "")
        rows.append(("non-finite patterns", f"{len(bad)} of {n} ({first})",
                     "NaN or ±inf: a run stops; post_load: [{type: drop_nan_patterns}] drops them"))
    sums = _valid_sums(data)
    rows.append(("mean counts / pattern", _fmt(float(np.nanmean(sums)), "e"), "over the valid pixels"))
    rows += _dose_rows(data, float(np.nanmean(sums)))
    rows += _noise_rows(data)
    rows += [
        ("linear oversampling", _fmt(f.get("linear_oversampling")), "1/(2·Δr·Δk), Edo 2013; ≥ 1 needed"),
        ("areal oversampling", _fmt(f.get("areal_oversampling")), "intensities per object pixel"),
        ("probe sampling", _fmt(f.get("probe_sampling")), "s / (λ/4α); ≤ 1 at Nyquist"),
        ("bright-field disc", _fmt(f.get("bf_disc_px"), "px"), "2α/Δθ across"),
        ("aperture edge", _fmt(_edge_px(data, f), "px"), "rim width, 0 = hard (soft_edge_px)"),
        ("max. collection angle", _fmt(f.get("max_angle_over_alpha"), "α"), _collection_note(f)),
        ("Ronchigram magnification", _fmt(f.get("ronchigram_magnification")),
         "s/(|Δf|·Δθ), Gilgenbach 2024"),
        ("shadow-image pixel", _fmt(f.get("shadow_pixel_A"), "Å"), "|Δf|·Δθ"),
        ("probe diameter", _fmt(f.get("probe_diameter_A"), "Å"), "2α|Δf| + 1.22λ/α"),
        ("linear probe overlap", _fmt(f.get("linear_overlap")), "1 − Δr/d"),
        ("bright-field disc centre", _disc_row(data), "from (Qy//2, Qx//2), the zero angle; post_load "
                                                       "center_diffraction centres it"),
        ("bright-field parallax", _parallax_row(data), "the BF pixels' images shift by Δf·λ·k"),
    ]
    if data.ground_truth is not None:
        rows.append(("ground truth", ", ".join(k for k in data.ground_truth if not k.endswith("_units")), ""))
    return rows


def _disc_row(data: RawData) -> str:
    """The bright-field disc's centre relative to the zero-angle pixel [px]."""
    from phaser_std.data.parallax import disc_centre
    from phaser_std.data.preprocess import pacbed

    found = disc_centre(pacbed(data), detector_mask(data))
    if found is None:
        return "no disc found"
    qy, qx = data.pattern_shape
    return f"({found[0] - qy // 2:+.2f}, {found[1] - qx // 2:+.2f}) px"


def _parallax_row(data: RawData) -> str:
    """The defocus and detector orientation the data's bright-field parallax shows."""
    from phaser_std.data.parallax import describe, parallax_fit

    try:
        return describe(parallax_fit(data))
    except Exception as exc:  # noqa: BLE001 (a diagnostic row: the others still print)
        return f"not measured ({type(exc).__name__}: {exc})"


def _valid_sums(data: RawData) -> np.ndarray:
    """Each pattern's counts [e⁻] over the detector's valid pixels (a hot or NaN pixel under
    the mask left out)."""
    valid = detector_mask(data)  # a mask not of the patterns' shape: a DataError naming the file
    return _pixel_sums(np.asarray(data.patterns), valid)


def _pixel_sums(patterns: np.ndarray, pixels: np.ndarray | None, block: int = CHECK_BLOCK) -> np.ndarray:
    """Each pattern's sum [e⁻] over ``pixels`` ``(Qy, Qx)`` bool (None: all), in float64,
    ``block`` values at a time (the selected pixels of all patterns at once were a copy of
    that size)."""
    pixels = None if pixels is None else np.asarray(pixels, dtype=bool)
    axes = tuple(range(1, patterns.ndim))
    return np.concatenate([(c.sum(axis=axes, dtype=np.float64) if pixels is None
                            else c[:, pixels].sum(axis=1, dtype=np.float64))
                           for _, c in read_blocks(patterns, block)] or [np.zeros(0)])


def _mask_summary(data: RawData) -> str:
    if data.mask is None:
        return "none (every pixel valid)"
    mask = np.asarray(data.mask, dtype=bool)
    return f"{int(mask.size - mask.sum())} of {mask.size} pixels invalid"


def _collection_note(figures: dict[str, Any]) -> str:
    """The collection angle's note: a warning when the detector's edge cuts the disc."""
    ratio = figures.get("max_angle_over_alpha")
    if ratio is not None and min(ratio) < 1:
        return ("(Q/2)·Δθ; below 1: the detector cuts the bright-field disc, "
                "so the probe's aperture does not fit the grid (bin less or use more pixels)")
    return "(Q/2)·Δθ"


def _edge_px(data: RawData, figures: dict[str, Any]) -> float | None:
    """The aperture edge width the probe initializer would estimate [reciprocal px]."""
    sampling = figures.get("real_space_pixel_A")
    if data.convergence_angle_mrad is None or figures.get("wavelength_A") is None or sampling is None:
        return None
    from phaser_std.physics.initializers import data_soft_edge_px

    return data_soft_edge_px(data, sampling, figures["wavelength_A"], float(data.convergence_angle_mrad))


def print_summary(data: RawData, console: Any = None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    table = Table(title="phaser inspect")
    for col in ("quantity", "value", "note"):
        table.add_column(col, overflow="fold")  # a long path is folded, not cut
    for row in summary_rows(data):
        table.add_row(*row)
    console.print(table)


def virtual_images(data: RawData) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """PACBED (Qy, Qx), virtual bright-field and annular dark-field intensities (N,).

    BF: θ ≤ α; ADF: 1.5α ≤ θ (to the detector edge); both over the valid detector pixels
    (``data.mask``) only. Without the convergence angle, the BF radius is estimated from
    the PACBED (valid pixels above half its largest valid value), in the units of the
    detector grid: 1/Å with a known sampling, else pixels."""
    from phaser_std.data.preprocess import nanmean_patterns

    p = np.asarray(data.patterns)
    qy, qx = data.pattern_shape
    valid = np.ones((qy, qx), bool) if data.mask is None else np.asarray(data.mask, bool)
    pac = nanmean_patterns(p)
    yy, xx = np.indices((qy, qx))
    if data.reciprocal_sampling_invA is not None:
        ky = (yy - qy // 2) * data.reciprocal_sampling_invA[0]
        kx = (xx - qx // 2) * data.reciprocal_sampling_invA[1]
        k = np.sqrt(ky**2 + kx**2)
    else:
        k = np.sqrt((yy - qy // 2) ** 2 + (xx - qx // 2) ** 2).astype(np.float64)
    if data.convergence_angle_mrad is not None and data.energy_eV is not None and data.reciprocal_sampling_invA:
        kbf = mrad_to_invA(data.convergence_angle_mrad, data.wavelength_A())
    else:
        bright = valid & (pac > 0.5 * pac[valid].max()) if valid.any() else valid
        kbf = float(k[bright].max()) if bright.any() else float(k.max()) / 4
    bf_mask = (k <= kbf) & valid
    adf_mask = (k >= 1.5 * kbf) & valid
    bf = _pixel_sums(p, bf_mask)
    adf = _pixel_sums(p, adf_mask) if adf_mask.any() else np.zeros(len(p))
    return pac, bf, adf


def overlap_map(data: RawData, max_field_px: int = 1024) -> tuple[np.ndarray, tuple[float, float]] | None:
    """Σ_positions |P(r − p)|² on a grid of the real-space pixel, with the focused (defocused)
    probe from the metadata; ``None`` when the metadata are insufficient."""
    from phaser_std.data.preprocess import raster_positions
    from phaser_std.physics.probe import make_probe

    pos = raster_positions(data)
    if (pos is None or data.reciprocal_sampling_invA is None or data.energy_eV is None
            or data.convergence_angle_mrad is None):
        return None
    s = data.real_space_sampling_A()
    q = data.pattern_shape
    probe = make_probe(q, s, data.wavelength_A(), data.convergence_angle_mrad, defocus_A=data.defocus_A or 0.0)
    inten = np.abs(probe) ** 2
    px = pos / np.asarray(s)
    lo = np.floor(px.min(axis=0)).astype(int) - np.array(q) // 2 - 1
    hi = np.ceil(px.max(axis=0)).astype(int) + np.array(q) // 2 + 2
    shape = hi - lo
    if (shape > max_field_px).any():
        return None
    field = np.zeros(tuple(shape), dtype=np.float64)
    starts = np.rint(px).astype(int) - np.array(q) // 2 - lo
    for y0, x0 in starts:
        field[y0:y0 + q[0], x0:x0 + q[1]] += inten
    return field, (float(lo[0] * s[0]), float(lo[1] * s[1]))


def write_png(data: RawData, path: str | Path) -> Path:
    """Write the 2x2 overview (PACBED, BF, ADF, probe overlap) as a PNG with matplotlib Agg."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    path = Path(path)
    pac, bf, adf = virtual_images(data)
    fig, axes = plt.subplots(2, 2, figsize=(9, 8))
    ax = axes[0, 0]
    ax.imshow(np.log10(np.clip(pac, 1e-3 * max(pac.max(), 1e-30), None)), cmap="magma")
    ax.set_title("PACBED (log10)")
    for ax, img, title in ((axes[0, 1], bf, "virtual bright field"), (axes[1, 0], adf, "annular dark field")):
        if data.scan_shape is not None and data.scan_shape[0] * data.scan_shape[1] == len(img):
            ax.imshow(img.reshape(data.scan_shape), cmap="gray")
        else:
            from phaser_std.data.preprocess import raster_positions

            pos = raster_positions(data)
            if pos is not None:
                ax.scatter(pos[:, 1], pos[:, 0], c=img, cmap="gray", s=8)
                ax.invert_yaxis()
                ax.set_aspect("equal")
        ax.set_title(title)
    ax = axes[1, 1]
    ov = overlap_map(data)
    if ov is not None:
        field, corner = ov
        s = data.real_space_sampling_A()
        # corner is pixel (0, 0)'s centre; imshow's extent is the outer pixel edges
        ext = (corner[1] - s[1] / 2, corner[1] + (field.shape[1] - 0.5) * s[1],
               corner[0] + (field.shape[0] - 0.5) * s[0], corner[0] - s[0] / 2)
        im = ax.imshow(field, cmap="viridis", extent=ext)
        fig.colorbar(im, ax=ax, fraction=0.046)
        ax.set_xlabel("x [Å]")
        ax.set_ylabel("y [Å]")
        ax.set_title("probe overlap Σ|P(r−p)|²")
    else:
        ax.text(0.5, 0.5, "probe overlap: metadata missing", ha="center", va="center")
        ax.set_axis_off()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


PLAN_SUFFIXES = (".yaml", ".yml", ".json")


def load_for_inspect(path: str | Path, key: str = "patterns", overrides: list[str] | tuple[str, ...] = ()) -> RawData:
    """The data to inspect: an hdf5 raw-data file (its ``key`` dataset), or a plan's data
    as a run sees them (any loader, every ``post_load`` step applied; relative paths from
    the plan's folder, or from the ``# plan_dir:`` of a run folder's ``plan.yaml``), with
    ``overrides`` (``phaser run --set``'s) applied to the plan."""
    from phaser_core.context import LoadContext
    from phaser_std.data.loaders.hdf5 import Hdf5Config, load_hdf5

    path = Path(path)
    if not path.exists():
        raise DataError(f"{path} does not exist")
    if overrides and path.suffix.lower() not in PLAN_SUFFIXES:
        raise DataError(f"--set changes a plan; {path.name} is a data file (give its plan, or set the values there)")
    if path.suffix.lower() in PLAN_SUFFIXES:
        if key != "patterns":
            raise DataError(f"--key {key} applies to an hdf5 file; for {path.name} set raw_data.key in the plan")
        from phaser_core.files import read_plan_dir
        from phaser_core.plan import load_plan
        from phaser_core.registry import get_registry
        from phaser_core.runner import load_data

        registry = get_registry()
        plan_dir = read_plan_dir(path) or path.resolve().parent
        return load_data(load_plan(path, registry=registry, overrides=overrides), registry, plan_dir)
    return load_hdf5(Hdf5Config(path=str(path.resolve()), key=key), LoadContext())
