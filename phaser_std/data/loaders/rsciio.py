"""The ``rsciio`` loader: vendor 4D-STEM formats through rosettasciio.

Any rosettasciio reader works (``mib`` Quantum Detectors Merlin, ``dm4`` Digital
Micrograph, ``emd``, ``hspy``, ``blo``, ...). rosettasciio is optional: install it with
``pip install phaser-ptycho[formats]``.

The first 3D/4D signal in the file is used (or ``signal_index``). rosettasciio orders the
array as (navigation..., signal...), numpy order: ``(Ny, Nx, Qy, Qx)``. The signal axes'
scales give the detector sampling when their units are ``1/nm``, ``1/Å`` or ``mrad``, the
navigation axes' scales the scan step when they are ``nm`` or ``Å``; the beam energy
[kV] and convergence angle [mrad] are read from ``Acquisition_instrument.TEM`` when
present. Zero angle is assumed at pixel ``(Qy//2, Qx//2)``; use ``center_diffraction``
otherwise. Qy is taken along the object's y and Qx along x unless the orientation keys
(:mod:`._common`) say otherwise. Counts are scaled to electrons by ``counts_per_electron``.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import attrs
import numpy as np

from phaser_core.config import param
from phaser_core.context import LoadContext
from phaser_core.data import RawData
from phaser_core.errors import DataError

from ._common import (LoaderCommon, apply_overrides, as_host_patterns, float_or_none, orient_patterns,
                      orient_sampling, to_stack)

INSTALL_HINT = "rosettasciio is not installed: run `pip install phaser-ptycho[formats]` (or `pip install rosettasciio`)"

_RECIP_UNITS = {"1/nm": 0.1, "nm^-1": 0.1, "1 / nm": 0.1, "1/å": 1.0, "1/a": 1.0, "å^-1": 1.0, "1/angstrom": 1.0}
_REAL_UNITS = {"nm": 10.0, "å": 1.0, "a": 1.0, "angstrom": 1.0, "pm": 0.01}


@attrs.frozen(kw_only=True)
class RsciioConfig(LoaderCommon):
    """Keys of the ``rsciio`` loader."""

    path: str = param(doc="the data file (relative to the plan's folder)")
    format: str | None = param(None, doc="rosettasciio reader name or file extension (mib, dm4, emd, hspy, ...); "
                               "default: from the file extension")
    signal_index: int | None = param(None, doc="which signal of a multi-signal file; default: the first 3D/4D one")
    counts_per_electron: float | None = param(None, unit="counts/e", doc="divide the data by this",
                                              converter=float_or_none)


def _rsciio() -> Any:
    try:
        return importlib.import_module("rsciio")
    except ImportError as exc:
        raise DataError(INSTALL_HINT) from exc


def reader_for(path: Path, fmt: str | None) -> Any:
    """The rosettasciio ``file_reader`` for ``fmt`` (a reader name or extension) or ``path``'s extension."""
    rsciio = _rsciio()
    key = (fmt or path.suffix.lstrip(".")).lower()
    names = []
    for plugin in rsciio.IO_PLUGINS:
        names.append(plugin["name"])
        exts = [e.lower() for e in plugin["file_extensions"]]
        if key == plugin["name"].lower() or key == plugin["api"].rsplit(".", 1)[-1].lower() or key in exts:
            return importlib.import_module(plugin["api"]).file_reader
    raise DataError(f"{path}: rosettasciio has no reader for {key!r}; set `format` to one of {', '.join(names)}")


def _read_signals(reader: Any, path: Path, fmt: str | None) -> list:
    """``reader(path)`` (lazily when the reader allows it); a :class:`DataError` naming the
    file and the reader when it cannot read the file."""
    parts = str(getattr(reader, "__module__", "rsciio")).split(".")  # rsciio.<reader>._api
    name = parts[1] if len(parts) > 1 else parts[0]
    try:
        try:
            return reader(str(path), lazy=True)
        except TypeError:
            return reader(str(path))
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - any reader failure is a file the reader cannot read
        raise DataError(f"{path}: rosettasciio's {name} reader (chosen from "
                        f"{'format: ' + fmt if fmt else 'the file extension'}) cannot read it: "
                        f"{type(exc).__name__}: {str(exc).rstrip('.')}. Set raw_data.format to the file's real "
                        "format, or use type: hdf5 for phaser's .h5 files") from None


def _get(d: Any, *keys: str) -> Any:
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def load_rsciio(config: RsciioConfig, ctx: LoadContext) -> RawData:
    """Read a 4D-STEM dataset with rosettasciio (lazily; one conversion to the run's dtype)."""
    path = ctx.resolve(config.path)
    if not path.exists():
        raise DataError(f"rsciio loader: file {path} does not exist (check raw_data.path)")
    reader = reader_for(path, config.format)
    signals = _read_signals(reader, path, config.format)
    if config.signal_index is not None:
        sig = signals[config.signal_index]
    else:
        sig = next((s for s in signals if np.ndim(s["data"]) in (3, 4)), None)
        if sig is None:
            shapes = [tuple(np.shape(s["data"])) for s in signals]
            raise DataError(f"{path}: no 3D or 4D signal among {shapes}; set signal_index")
    arr = np.asarray(sig["data"])
    patterns, shape_from_array = to_stack(arr, str(path))
    # counts divided by a gain become float; without one, 8/16-bit counts stay as they are
    patterns = as_host_patterns(orient_patterns(patterns, config), ctx.dtype,
                                keep_counts=config.counts_per_electron is None)
    if config.counts_per_electron is not None:
        if patterns is arr or not isinstance(patterns, np.ndarray) or not patterns.flags.writeable:
            patterns = np.array(patterns)  # never scale the reader's buffer in place
        np.divide(patterns, np.float32(config.counts_per_electron), out=patterns, casting="unsafe")

    axes = list(sig.get("axes", []))
    sig_axes = [a for a in axes if not a.get("navigate", False)][-2:]
    nav_axes = [a for a in axes if a.get("navigate", False)][-2:]
    recip = ang = step = None
    if len(sig_axes) == 2:
        units = [str(a.get("units", "")).strip().lower() for a in sig_axes]
        scales = [float(a.get("scale", 1.0)) for a in sig_axes]
        if all(u in _RECIP_UNITS for u in units):
            recip = (scales[0] * _RECIP_UNITS[units[0]], scales[1] * _RECIP_UNITS[units[1]])
        elif all(u == "mrad" for u in units):
            ang = (scales[0], scales[1])
    if len(nav_axes) == 2:
        units = [str(a.get("units", "")).strip().lower() for a in nav_axes]
        if all(u in _REAL_UNITS for u in units):
            step = tuple(float(a.get("scale", 1.0)) * _REAL_UNITS[u] for a, u in zip(nav_axes, units))
    md = sig.get("metadata", {}) or {}
    kv = _get(md, "Acquisition_instrument", "TEM", "beam_energy")
    conv = _get(md, "Acquisition_instrument", "TEM", "convergence_angle")
    data = RawData(
        patterns=patterns,
        reciprocal_sampling_invA=orient_sampling(recip, config),
        energy_eV=float(kv) * 1e3 if kv is not None else None,
        convergence_angle_mrad=float(conv) if conv is not None else None,
        scan_shape=shape_from_array,
        scan_step_A=step,
        source=str(path),
        extra={"rsciio_metadata": md},
    )
    return apply_overrides(data, config, file_angular_mrad=ang)
