"""State files of the published phaser (phaserEM 0.3, format versions 0.1 and 0.2), read
into a :class:`~phaser_core.state.ReconsState`, so that a reconstruction begun there
continues here (``init.state``, and anything else that calls
:func:`~phaser_core.statefile.load_state`).

What changes on the way in (docs/conventions.md, "From the published phaser"):

- **Object corner.** phaserEM places a probe of N pixels so that its pixel (N − 1)/2
  sits at the scan position; here pixel N//2 does. For an even N the object's corner
  moves back by half an object pixel, so that every probe lands on the same object pixels
  as there while the scan positions stay those of the file (the data's frame): the object
  is then where the sample was, and scores against a ground truth in that frame.
- **Tilt.** phaserEM's propagator ramp has the opposite sign: the tilt is negated. A tilt
  that is the same at every position becomes a global one.
- Probe, object, object sampling, scan positions, slice thicknesses and the wavelength carry
  over unchanged (the same layouts and units: Å, mrad, complex transmission functions).
- The loss record (``/progress/total_loss``, else ``detector_loss``) becomes the progress;
  its times are not kept.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from .errors import StateFileError
from .state import IterationCounters, ObjectState, ProbeState, Progress, ReconsState
from .statefile import _text

#: the ``/type`` of a phaserEM state file, and the newest format version read
PHASEREM_TYPE = "phaser_state"
PHASEREM_VERSION = (0, 2)


def is_phaserem_state(f: h5py.File) -> bool:
    """Whether the open file is a phaserEM state file (a ``/type`` dataset, no root attrs)."""
    return isinstance(f.get("type"), h5py.Dataset) and _text(f["type"][()]) == PHASEREM_TYPE


def read_phaserem_state(f: h5py.File, path: Path) -> ReconsState:
    """The phaserEM state in the open file ``f`` (named ``path`` in errors)."""
    version = _version(f, path)
    try:
        probe = np.asarray(f["probe/data"][()])
        obj = np.asarray(f["object/data"][()])
        if probe.ndim != 3 or obj.ndim != 3 or probe.dtype.kind != "c" or obj.dtype.kind != "c":
            raise StateFileError(f"{path}: phaserEM /probe/data and /object/data must be complex 3-d arrays, got "
                                 f"{probe.dtype} {probe.shape} and {obj.dtype} {obj.shape}")
        probe_sampling = _probe_sampling(f, probe.shape[-2:])
        obj_sampling = _pair(f["object/sampling"][()])
        corner = _pair(f["object/corner"][()])
        thick = np.asarray(f["object/thicknesses"][()], dtype=np.float64).reshape(-1)
        if thick.size == 0 and obj.shape[0] == 1:
            thick = np.zeros(1)
        if thick.shape != (obj.shape[0],):
            raise StateFileError(f"{path}: phaserEM /object has {obj.shape[0]} slices but "
                                 f"{thick.size} thicknesses")
        scan_node = f["scan/data"] if version >= (0, 2) else f["scan"]
        scan = np.asarray(scan_node[()], dtype=np.float64).reshape(-1, 2)
        tilt_node = f.get("scan/tilt") if version >= (0, 2) else f.get("tilt")
        tilt = np.zeros(2) if tilt_node is None else -np.asarray(tilt_node[()], dtype=np.float64).reshape(-1, 2)
        if tilt.ndim == 2 and np.all(tilt == tilt[:1]):
            tilt = tilt[0]  # one tilt for every position: global, which every engine takes
    except KeyError as exc:
        raise StateFileError(f"{path} is an incomplete phaserEM state file: {exc}") from None
    # the probe pixel phaserEM puts at a position, (N − 1)/2, against N//2 here: the object
    # moves under the positions, not the positions over the object, so both stay in the
    # frame of the data's positions
    offset = np.array([n // 2 - (n - 1) / 2 for n in probe.shape[-2:]]) * np.asarray(obj_sampling)
    return ReconsState(
        probe=ProbeState(data=probe, sampling_A=probe_sampling),
        object=ObjectState(data=obj, sampling_A=obj_sampling, corner_A=_pair(np.asarray(corner) - offset),
                           thicknesses_A=thick),
        scan_A=scan,
        tilt_mrad=tilt,
        iteration=IterationCounters(**{k: int(f[f"iter/{k}"][()]) if f"iter/{k}" in f else 0
                                       for k in ("engine_num", "engine_iter", "total_iter")}),
        progress=_progress(f),
        wavelength_A=float(f["wavelength"][()]) if "wavelength" in f else None,
    )


def _version(f: h5py.File, path: Path) -> tuple[int, int]:
    text = _text(f["version"][()]) if "version" in f else "0.1"
    try:
        version = tuple(int(p) for p in str(text).split(".")[:2])
    except ValueError:
        raise StateFileError(f"{path}: unreadable phaserEM state version {text!r}") from None
    if version > PHASEREM_VERSION:
        raise StateFileError(f"{path} is a phaserEM state of version {text}, newer than this phaser reads "
                             f"(up to {'.'.join(map(str, PHASEREM_VERSION))})")
    return version  # type: ignore[return-value]


def _probe_sampling(f: h5py.File, shape: tuple[int, ...]) -> tuple[float, float]:
    if "probe/sampling" in f:
        return _pair(f["probe/sampling"][()])
    extent = np.asarray(f["probe/extent"][()], dtype=np.float64).reshape(2)
    return (float(extent[0] / shape[0]), float(extent[1] / shape[1]))


def _progress(f: h5py.File) -> Progress:
    """The loss record: format 0.2's ``/progress/{total_loss,detector_loss}/{iters,values}``,
    or format 0.1's ``/progress/iters`` and ``/progress/detector_errors``."""
    records = [(f.get(f"progress/{name}/iters"), f.get(f"progress/{name}/values"))
               for name in ("total_loss", "detector_loss")]
    records.append((f.get("progress/iters"), f.get("progress/detector_errors")))
    for iters_ds, values_ds in records:
        if isinstance(iters_ds, h5py.Dataset) and isinstance(values_ds, h5py.Dataset):
            iters = [int(i) for i in iters_ds[()]]
            return Progress(iters=iters, loss=[float(v) for v in values_ds[()]],
                            time_s=[0.0] * len(iters), engine=[0] * len(iters))
    return Progress()


def _pair(value: object) -> tuple[float, float]:
    arr = np.asarray(value, dtype=np.float64).reshape(2)
    return (float(arr[0]), float(arr[1]))
