"""The reconstruction-state file: one HDF5 file, readable with plain h5py.

The layout (documented in ``docs/file-formats.md``, "The state file") is a public interface::

    /                 attrs file_type="phaser_state", format_version=1, phaser_version,
                            wavelength_A [Å] (absent when unknown)
    /probe            (modes, Ny, Nx) complex; attr sampling_A (y, x) [Å]
    /object           (slices, H, W) complex; attrs sampling_A (y, x) [Å],
                            corner_A (y, x) [Å], thicknesses_A (slices,) [Å]
    /scan             (N, 2) (y, x) [Å]; attr units="A"
    /tilt             (2,) or (N, 2) (y, x) [mrad]; attr units="mrad"
    /iteration        group; attrs engine_num, engine_iter, total_iter
    /progress         group; datasets iters, loss, time_s, engine (one entry per iteration)
    /extra            group; ``state.extra`` as nested groups and datasets

Files are written atomically (a temporary file in the same folder, then ``os.replace``), so
a crash or SIGKILL during a save leaves either the old file or the new one, never a torn one.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from .files import atomic_write
from .errors import StateFileError
from .state import IterationCounters, ObjectState, ProbeState, Progress, ReconsState

FILE_TYPE = "phaser_state"
#: the newest layout this module writes and reads
FORMAT_VERSION = 1

_PROGRESS_FIELDS = {"iters": np.int64, "loss": np.float64, "time_s": np.float64, "engine": np.int64}
_COUNTERS = ("engine_num", "engine_iter", "total_iter")
#: attribute on an /extra dataset recording that it held a Python scalar or None
_KIND_ATTR = "phaser_kind"
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def _phaser_version() -> str:
    try:
        from importlib.metadata import version

        return version("phaser-ptycho")
    except Exception:  # not installed (running from a source tree)
        from . import __version__

        return __version__


def _to_host(x: Any, backend: Any) -> np.ndarray:
    """A numpy copy of ``x``, through ``backend.to_numpy`` when given (device arrays)."""
    if backend is not None:
        return np.asarray(backend.to_numpy(x))
    if hasattr(x, "get") and not isinstance(x, (np.ndarray, dict)):  # cupy without a backend
        return np.asarray(x.get())
    return np.asarray(x)


# -- writing ------------------------------------------------------------------------------


def save_state(state: ReconsState, path: str | os.PathLike, *, backend: Any = None) -> Path:
    """Write ``state`` to the HDF5 file ``path`` atomically; returns the path.

    ``backend`` converts device arrays to numpy (``backend.to_numpy``); without it arrays
    must be numpy or convertible with ``np.asarray``. Dtypes are kept exactly (complex64
    stays complex64, float32 stays float32).
    """
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise StateFileError(f"cannot write state file {path}: folder {folder} does not exist")

    def write(tmp_name: str) -> None:
        with h5py.File(tmp_name, "w") as f:
            _write(f, state, backend)

    return atomic_write(path, write)


def _write(f: h5py.File, state: ReconsState, backend: Any) -> None:
    f.attrs["file_type"] = FILE_TYPE
    f.attrs["format_version"] = FORMAT_VERSION
    f.attrs["phaser_version"] = _phaser_version()
    if state.wavelength_A is not None:
        f.attrs["wavelength_A"] = float(state.wavelength_A)

    probe = _to_host(state.probe.data, backend)
    if probe.ndim != 3:
        raise StateFileError(f"probe must be (modes, Ny, Nx), got shape {probe.shape}")
    ds = f.create_dataset("probe", data=probe)
    ds.attrs["sampling_A"] = np.asarray(state.probe.sampling_A, dtype=np.float64)

    obj = _to_host(state.object.data, backend)
    if obj.ndim != 3:
        raise StateFileError(f"object must be (slices, H, W), got shape {obj.shape}")
    ds = f.create_dataset("object", data=obj)
    ds.attrs["sampling_A"] = np.asarray(state.object.sampling_A, dtype=np.float64)
    ds.attrs["corner_A"] = np.asarray(state.object.corner_A, dtype=np.float64)
    thick = np.atleast_1d(_to_host(state.object.thicknesses_A, backend))
    ds.attrs["thicknesses_A"] = thick

    scan = _to_host(state.scan_A, backend)
    ds = f.create_dataset("scan", data=scan)
    ds.attrs["units"] = "A"
    tilt = _to_host(state.tilt_mrad, backend)
    ds = f.create_dataset("tilt", data=tilt)
    ds.attrs["units"] = "mrad"

    grp = f.create_group("iteration")
    for name in _COUNTERS:
        grp.attrs[name] = int(getattr(state.iteration, name))

    grp = f.create_group("progress")
    for name, dtype in _PROGRESS_FIELDS.items():
        grp.create_dataset(name, data=np.asarray(getattr(state.progress, name), dtype=dtype))

    _write_extra(f.create_group("extra"), state.extra, backend, "extra")


def _write_extra(grp: h5py.Group, tree: dict, backend: Any, where: str) -> None:
    if not isinstance(tree, dict):
        raise StateFileError(f"state.{where} must be a dict, got {type(tree).__name__}")
    for key, value in tree.items():
        here = f"{where}.{key}"
        if not isinstance(key, str) or not key or "/" in key or key in (".", ".."):
            raise StateFileError(f"state.{where} has key {key!r}: keys must be non-empty strings without '/'")
        if isinstance(value, dict):
            _write_extra(grp.create_group(key), value, backend, here)
        elif value is None:
            ds = grp.create_dataset(key, data=h5py.Empty("f"))
            ds.attrs[_KIND_ATTR] = "none"
        elif type(value) is int and not _INT64_MIN <= value <= _INT64_MAX:
            # HDF5 has no integer wider than 64 bits: the decimal text round-trips exactly
            ds = grp.create_dataset(key, data=str(value))
            ds.attrs[_KIND_ATTR] = "int"
        elif type(value) in (bool, int, float, complex, str):
            ds = grp.create_dataset(key, data=value)
            ds.attrs[_KIND_ATTR] = type(value).__name__
        elif isinstance(value, np.generic) and value.dtype.kind in "biufc":
            ds = grp.create_dataset(key, data=value)
            ds.attrs[_KIND_ATTR] = "numpy_scalar"
        else:
            arr = _to_host(value, backend)
            if arr.dtype.kind not in "biufcSU":
                raise StateFileError(
                    f"state.{here} has type {type(value).__name__} ({arr.dtype}); the state file stores "
                    "numeric arrays, numbers, strings, None and dicts of them"
                )
            if arr.dtype.kind == "U":
                arr = arr.astype(h5py.string_dtype())
            grp.create_dataset(key, data=arr)


# -- reading ------------------------------------------------------------------------------


def load_state(path: str | os.PathLike) -> ReconsState:
    """Read a state file into a :class:`ReconsState` of host numpy arrays.

    A state file of the published phaser (phaserEM 0.3) is read too
    (:mod:`phaser_core.phaserem_state`). Raises :class:`StateFileError` naming the file for a
    missing file, a file that is not a phaser state file, a newer format version, or missing/malformed datasets.
    """
    path = Path(path)
    if not path.is_file():
        raise StateFileError(f"state file {path} does not exist")
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise StateFileError(f"{path} is not a phaser state file: it cannot be opened as HDF5 ({exc})") from exc
    with f:
        file_type = _text(f.attrs.get("file_type"))
        if file_type is None:
            from .phaserem_state import is_phaserem_state, read_phaserem_state

            if is_phaserem_state(f):
                return read_phaserem_state(f, path)
        if file_type != FILE_TYPE:
            found = "no file_type attribute" if file_type is None else f"file_type={file_type!r}"
            raise StateFileError(f"{path} is not a phaser state file ({found}; expected file_type={FILE_TYPE!r})")
        version = f.attrs.get("format_version")
        if version is None:
            raise StateFileError(f"{path}: the root attribute format_version is missing")
        if int(version) > FORMAT_VERSION:
            raise StateFileError(
                f"{path} has state format version {int(version)}, newer than this phaser reads "
                f"(up to {FORMAT_VERSION}; written by phaser {_text(f.attrs.get('phaser_version'))}). "
                "Upgrade phaser to read it."
            )
        if int(version) < 1:
            raise StateFileError(f"{path}: invalid format_version {int(version)}")
        missing = _missing(f)
        if missing:
            raise StateFileError(f"{path} is an incomplete phaser state file: missing {', '.join(missing)}")
        try:
            return _read(f, path)
        except StateFileError:
            raise
        except (KeyError, ValueError, TypeError) as exc:
            raise StateFileError(f"{path} is a malformed phaser state file: {exc}") from exc


_REQUIRED = {
    "probe": ("sampling_A",),
    "object": ("sampling_A", "corner_A", "thicknesses_A"),
    "scan": (),
    "tilt": (),
    "iteration": _COUNTERS,
    "progress": (),
}


def _missing(f: h5py.File) -> list[str]:
    out = []
    for name, attrs in _REQUIRED.items():
        if name not in f:
            out.append(f"/{name}")
            continue
        out.extend(f"attribute {a!r} of /{name}" for a in attrs if a not in f[name].attrs)
    if "progress" in f:
        out.extend(f"/progress/{n}" for n in _PROGRESS_FIELDS if n not in f["progress"])
    return out


def _read(f: h5py.File, path: Path) -> ReconsState:
    probe = f["probe"][()]
    obj = f["object"][()]
    if probe.ndim != 3 or probe.dtype.kind != "c":
        raise StateFileError(f"{path}: /probe must be complex (modes, Ny, Nx), got {probe.dtype} {probe.shape}")
    if obj.ndim != 3 or obj.dtype.kind != "c":
        raise StateFileError(f"{path}: /object must be complex (slices, H, W), got {obj.dtype} {obj.shape}")
    oattrs = f["object"].attrs
    thick = np.atleast_1d(np.asarray(oattrs["thicknesses_A"]))
    if thick.shape != (obj.shape[0],):
        raise StateFileError(
            f"{path}: /object has {obj.shape[0]} slices but attribute thicknesses_A has shape {thick.shape}"
        )
    scan = f["scan"][()]
    if scan.ndim != 2 or scan.shape[1] != 2:
        raise StateFileError(f"{path}: /scan must be (N, 2) (y, x) [Å], got shape {scan.shape}")
    tilt = f["tilt"][()]
    if tilt.shape not in ((2,), (scan.shape[0], 2)):
        raise StateFileError(f"{path}: /tilt must be (2,) or ({scan.shape[0]}, 2) [mrad], got shape {tilt.shape}")

    counters = _counters_of(f)
    prog = f["progress"]
    progress = Progress(
        iters=[int(v) for v in prog["iters"][()]],
        loss=[float(v) for v in prog["loss"][()]],
        time_s=[float(v) for v in prog["time_s"][()]],
        engine=[int(v) for v in prog["engine"][()]],
    )
    wavelength = f.attrs.get("wavelength_A")
    return ReconsState(
        probe=ProbeState(data=probe, sampling_A=_pair(f["probe"].attrs["sampling_A"], path, "probe.sampling_A")),
        object=ObjectState(
            data=obj,
            sampling_A=_pair(oattrs["sampling_A"], path, "object.sampling_A"),
            corner_A=_pair(oattrs["corner_A"], path, "object.corner_A"),
            thicknesses_A=thick,
        ),
        scan_A=scan,
        tilt_mrad=tilt,
        iteration=counters,
        progress=progress,
        wavelength_A=None if wavelength is None else float(wavelength),
        extra=_read_extra(f["extra"]) if "extra" in f else {},
    )


def _read_extra(grp: h5py.Group) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, item in grp.items():
        if isinstance(item, h5py.Group):
            out[key] = _read_extra(item)
            continue
        kind = _text(item.attrs.get(_KIND_ATTR))
        if kind == "none":
            out[key] = None
        elif kind is not None:
            value = item[()]
            if kind == "numpy_scalar":
                out[key] = value
            elif kind == "str":
                out[key] = _text(value)
            elif kind == "int" and isinstance(value, bytes):
                out[key] = int(value.decode())
            else:
                out[key] = {"bool": bool, "int": int, "float": float, "complex": complex}[kind](value.item())
        else:
            if h5py.check_string_dtype(item.dtype) is not None:
                out[key] = np.asarray(item.asstr()[()], dtype=str)
            else:
                out[key] = np.asarray(item[()])
    return out


def _counters_of(f: h5py.File) -> IterationCounters:
    return IterationCounters(**{n: int(f["iteration"].attrs[n]) for n in _COUNTERS})


def read_counters(path: str | os.PathLike) -> IterationCounters:
    """The iteration counters of a state file, without reading its arrays."""
    try:
        with h5py.File(path, "r") as f:
            return _counters_of(f)
    except (OSError, KeyError) as exc:
        raise StateFileError(f"cannot read the iteration counters of {path}: {exc}. "
                             "The file is damaged or not a phaser state file.") from exc


def _pair(value: Any, path: Path, name: str) -> tuple[float, float]:
    arr = np.asarray(value, dtype=np.float64).ravel()
    if arr.shape != (2,):
        raise StateFileError(f"{path}: attribute {name} must be (y, x), got {arr.tolist()}")
    return (float(arr[0]), float(arr[1]))


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.ndarray) and value.shape == ():
        return _text(value.item())
    return str(value)
