"""Images of a reconstruction state: TIFF with physical pixel sizes, plus PNG previews.

Each image kind turns a host-side :class:`~phaser_core.state.ReconsState` into a float32
stack ``(n, H, W)`` with its pixel size. TIFFs are ImageJ hyperstacks written with
tifffile: the resolution tags hold pixels per unit and the ImageJ metadata the unit
(``"angstrom"`` in real space, ``"1/angstrom"`` in reciprocal space) and, for object
stacks, the slice ``spacing`` [Å]. Read the pixel size back with::

    with tifffile.TiffFile(path) as tif:
        num, den = tif.pages[0].tags["XResolution"].value   # pixels per unit
        size_x = den / num                                  # [Å] (or [1/Å])
        unit = tif.imagej_metadata["unit"]

PNG previews tile the stack side by side, each panel stretched to 8 bits on its own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import attrs
import numpy as np

#: ImageJ unit strings (ASCII: ImageJ and most readers handle these everywhere)
REAL_UNIT = "angstrom"
RECIP_UNIT = "1/angstrom"


@attrs.frozen
class Image:
    """One image stack ``data`` (n, H, W) float32 with its (y, x) pixel size in ``unit``.

    ``axes`` is the ImageJ axes string (``"ZYX"`` for object slices, ``"CYX"`` for probe
    modes); ``spacing`` the slice distance [Å] for object stacks, else ``None``;
    ``roi`` an optional ``(y0, y1, x0, x1)`` pixel window used to stretch the preview.
    """

    data: np.ndarray
    pixel_size: tuple[float, float]
    unit: str
    axes: str = "ZYX"
    spacing: float | None = None
    roi: tuple[int, int, int, int] | None = None


def _scan_roi(state) -> tuple[int, int, int, int] | None:
    """Pixel window of the object covered by the scan positions (for preview contrast)."""
    scan = np.asarray(state.scan_A, dtype=np.float64) if state.scan_A is not None else None
    if scan is None or scan.ndim != 2 or scan.shape[0] == 0 or not np.all(np.isfinite(scan)):
        return None
    obj = state.object
    h, w = obj.shape
    sy, sx = obj.sampling_A
    y = (scan[:, 0] - obj.corner_A[0]) / sy
    x = (scan[:, 1] - obj.corner_A[1]) / sx
    y0, y1 = int(np.clip(np.floor(y.min()), 0, h - 1)), int(np.clip(np.ceil(y.max()) + 1, 1, h))
    x0, x1 = int(np.clip(np.floor(x.min()), 0, w - 1)), int(np.clip(np.ceil(x.max()) + 1, 1, w))
    if y1 - y0 < 2 or x1 - x0 < 2:
        return None
    return (y0, y1, x0, x1)


def _slice_spacing(state) -> float | None:
    t = np.asarray(state.object.thicknesses_A, dtype=np.float64).ravel()
    t = t[t > 0]
    return float(t.mean()) if t.size else None


def object_phase(state) -> Image:
    """Phase of each object slice [rad], ``(slices, H, W)``."""
    obj = np.asarray(state.object.data)
    return Image(np.angle(obj).astype(np.float32), tuple(map(float, state.object.sampling_A)), REAL_UNIT,
                 "ZYX", _slice_spacing(state), _scan_roi(state))


def object_phase_sum(state) -> Image:
    """Phase summed over slices [rad] (the total phase shift), ``(1, H, W)``."""
    obj = np.asarray(state.object.data)
    total = np.angle(obj).sum(axis=0, keepdims=True).astype(np.float32)
    return Image(total, tuple(map(float, state.object.sampling_A)), REAL_UNIT, "ZYX", None, _scan_roi(state))


def object_amplitude(state) -> Image:
    """Amplitude |O| of each object slice, ``(slices, H, W)``."""
    obj = np.asarray(state.object.data)
    return Image(np.abs(obj).astype(np.float32), tuple(map(float, state.object.sampling_A)), REAL_UNIT,
                 "ZYX", _slice_spacing(state), _scan_roi(state))


def probe(state) -> Image:
    """Amplitude |P| of each probe mode in real space, ``(modes, Ny, Nx)``."""
    p = np.asarray(state.probe.data)
    return Image(np.abs(p).astype(np.float32), tuple(map(float, state.probe.sampling_A)), REAL_UNIT, "CYX")


def probe_recip(state) -> Image:
    """|F[P]| of each probe mode, zero frequency at the centre, ``(modes, Ny, Nx)``.

    Pixel size is the reciprocal sampling ``1 / (N · Δx)`` [1/Å].
    """
    p = np.asarray(state.probe.data)
    f = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(p, axes=(-2, -1)), axes=(-2, -1), norm="ortho"),
                        axes=(-2, -1))
    ny, nx = p.shape[-2:]
    sy, sx = state.probe.sampling_A
    return Image(np.abs(f).astype(np.float32), (1.0 / (ny * sy), 1.0 / (nx * sx)), RECIP_UNIT, "CYX")


#: image kinds by the name used in ``output.images``
IMAGE_KINDS: dict[str, Callable] = {
    "object_phase": object_phase,
    "object_phase_sum": object_phase_sum,
    "object_amplitude": object_amplitude,
    "probe": probe,
    "probe_recip": probe_recip,
}


def check_kinds(names) -> None:
    """Raise ``ValueError`` naming every unknown image kind and the valid ones."""
    bad = [n for n in names if n not in IMAGE_KINDS]
    if bad:
        raise ValueError(f"output.images: unknown image kind(s) {', '.join(map(repr, bad))}; "
                         f"valid kinds are {', '.join(IMAGE_KINDS)}")


def write_tiff(image: Image, path: Path) -> Path:
    """Write ``image`` as an ImageJ TIFF with its pixel size (pixels per unit) and unit."""
    import tifffile

    data = np.ascontiguousarray(image.data, dtype=np.float32)
    sy, sx = image.pixel_size
    metadata: dict = {"unit": image.unit, "axes": image.axes}
    if image.spacing is not None and image.axes.startswith("Z"):
        metadata["spacing"] = float(image.spacing)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tifffile.imwrite(tmp, data, imagej=True, resolution=(1.0 / sx, 1.0 / sy), metadata=metadata)
    tmp.replace(path)
    return path


def _stretch(panel: np.ndarray, roi: tuple[int, int, int, int] | None) -> np.ndarray:
    """Map ``panel`` to uint8 with a 0.1-99.9 % percentile stretch taken inside ``roi``."""
    ref = panel[roi[0]:roi[1], roi[2]:roi[3]] if roi is not None else panel
    ref = ref[np.isfinite(ref)]
    if ref.size == 0:
        return np.zeros(panel.shape, np.uint8)
    lo, hi = np.percentile(ref, [0.1, 99.9])
    if not hi > lo:
        hi = lo + 1.0
    scaled = np.clip((np.nan_to_num(panel, nan=lo) - lo) / (hi - lo), 0.0, 1.0)
    return np.round(scaled * 255).astype(np.uint8)


def preview(image: Image, gap: int = 2) -> np.ndarray:
    """The stack's panels side by side as uint8, each stretched on its own."""
    n, h, w = image.data.shape
    out = np.full((h, n * w + (n - 1) * gap), 255, np.uint8)
    for i in range(n):
        out[:, i * (w + gap): i * (w + gap) + w] = _stretch(image.data[i], image.roi)
    return out


#: PNG previews are enlarged (nearest neighbour, whole factors) until each panel is this big [px]
PREVIEW_MIN_PX = 256


def write_png(image: Image, path: Path) -> Path:
    """Write the 8-bit preview of ``image`` as a greyscale PNG."""
    from PIL import Image as PILImage

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    pixels = preview(image)
    zoom = max(1, -(-PREVIEW_MIN_PX // max(1, min(image.data.shape[-2:]))))
    if zoom > 1:  # small grids (64 px probes) are unreadable at 1:1; enlarge by whole pixels
        pixels = np.kron(pixels, np.ones((zoom, zoom), np.uint8))
    PILImage.fromarray(pixels).save(tmp, format="PNG")
    tmp.replace(path)
    return path


def write_images(state, names, folder: Path, prefix: str) -> list[Path]:
    """Write ``folder/{prefix}_{name}.tif`` and ``.png`` for each image kind in ``names``.

    ``state`` must hold host (numpy) arrays. Returns the paths written.
    """
    check_kinds(names)
    folder = Path(folder)
    written = []
    for name in names:
        image = IMAGE_KINDS[name](state)
        written.append(write_tiff(image, folder / f"{prefix}_{name}.tif"))
        written.append(write_png(image, folder / f"{prefix}_{name}.png"))
    return written
