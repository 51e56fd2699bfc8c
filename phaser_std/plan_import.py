"""Convert a plan of the published phaser (phaserEM 0.3) into a plan of ours.

:func:`import_phaserem_plan` is a pure function: a phaserEM plan (the parsed YAML
mapping) in, ``(our plan mapping, notes)`` out. It reads no file and never changes its
input. ``phaser import-plan OLD.yaml`` (:mod:`phaser_std.commands`) wraps it.

The conversion is exact where it can be and says so where it cannot: every key whose
meaning changes on the way (beyond a rename or a unit), or that is dropped, gives one
human-readable note ``"path: what happened"``. The sign and counting differences it
applies (docs/conventions.md, "From the published phaser"):

- **defocus**: phaserEM's is C10 (positive = overfocus), ours ``defocus_A = −C10``;
- **raster rotation**: phaserEM's turns +x toward −y, ours toward +y: ``rotation_deg = −θ``;
- **tilt**: the opposite propagator ramp: ``(−t_y, −t_x)``;
- **flags** count iterations from 1 there, from 0 here, and anchor ``every`` differently:
  phaserEM's ``{after: A, every: E, before: B}`` (on at iterations i > A, i < B,
  (i − A) mod E = 0, i from 1) is ours ``{after: A + E − 1, every: E, before: B − 1}``;
- **piecewise schedules**: a phaserEM step at iteration s (1-based) is our boundary s − 1;
- **layers** ``sigma`` [Å] becomes ``sigma_slices`` = σ / mean slice thickness.
"""

from __future__ import annotations

import copy
import math
import os
from typing import Any, Mapping

import numpy as np

from phaser_core.plan_errors import format_path

__all__ = ["import_phaserem_plan", "rebase_paths"]

#: loaders whose settings include the common overrides (``energy_eV``, ``tilt_mrad``, ...)
_OUR_EMPAD_KEYS = {"path": "path", "diff_step": "angular_sampling_mrad", "adu": "adu"}

#: the phaserEM raw-data hook of the side-by-side harness (``../shared/bench/phaser_h5_hook.py``
#: in this project's layout), which reads our own ``hdf5`` raw-data file
_OUR_FILE_HOOK = "phaser_h5_hook:load_h5"

_BACKENDS = {"cuda": "cupy", "cupy": "cupy", "jax": "jax", "cpu": "numpy", "numpy": "numpy"}

#: phaserEM cost regularizers -> ours (same penalty up to our smoothing eps); keys besides
#: ``cost``/``eps`` are refused
_COSTS = {
    "obj_l1": "obj_l1", "obj_l2": "obj_l2", "obj_phase_l1": "obj_phase_l1", "obj_recip_l1": "obj_recip_l1",
    "obj_tv": "obj_tv", "obj_tikh": "obj_tikhonov", "obj_tikhonov": "obj_tikhonov",
    "layers_tv": "layers_tv", "layers_tikh": "layers_tikhonov", "layers_tikhonov": "layers_tikhonov",
    "probe_phase_tikh": "probe_phase_tikhonov", "probe_phase_tikhonov": "probe_phase_tikhonov",
    "probe_recip_tikh": "probe_recip_tikhonov", "probe_recip_tikhonov": "probe_recip_tikhonov",
    "probe_recip_tv": "probe_recip_tv",
}
_COSTS_WITH_EPS = {"obj_tv", "probe_recip_tv"}

#: phaserEM image names -> (ours, what changes; None: the same image)
_IMAGES = {
    "probe": ("probe", "the probe is written as its amplitude |P| (phaserEM: complex, or colour for phase)"),
    "probe_mag": ("probe", "probe_mag (|P|²) becomes probe (|P|)"),
    "probe_recip": ("probe_recip", "probe_recip is written as its amplitude |F[P]|"),
    "probe_recip_mag": ("probe_recip", "probe_recip_mag (|F[P]|²) becomes probe_recip (|F[P]|)"),
    "object_phase_stack": ("object_phase", None),
    "object_phase_sum": ("object_phase_sum", None),
    "object_mag_stack": ("object_amplitude", "object_mag_stack (|O|²) becomes object_amplitude (|O| per slice)"),
    "object_mag_sum": ("object_amplitude", "object_mag_sum (product of |O|² over slices) becomes "
                                           "object_amplitude (|O| per slice)"),
}

_ENGINE_DROPPED = {
    "calc_error": "the loss is recorded every iteration here",
    "calc_error_fraction": "the loss is recorded over every group here",
    "buffer_n_groups": "patterns are streamed by blocks of groups automatically (grouping.stream_patterns)",
    "send_every_group": "there is no job server here",
    "obj_pad_px": "the object's margin is the object initializer's pad_px here (a different measure)",
    "jit_unroll_slices": "no such setting here",
    "early_termination_smoothing": "our stop_when compares the loss itself, not a smoothed one",
    "check_every_group": "no such setting here",
    "mtf": "no detector MTF model here",
}


class _Importer:
    def __init__(self) -> None:
        self.notes: list[str] = []
        self.loader_type: str | None = None
        self.loader: dict | None = None
        self.save_every: list[tuple[tuple, Any]] = []
        self.image_every: list[tuple[tuple, Any]] = []
        self.images: list[str] = []

    def note(self, path: tuple, msg: str) -> None:
        self.notes.append(f"{format_path(path)}: {msg}" if path else msg)

    # ------------------------------------------------------------------ small values

    def unknown(self, d: Mapping, known: set, path: tuple) -> None:
        for k in d:
            if k not in known:
                self.note(path + (k,), f"unknown key {k!r}, dropped")

    def readable(self, value: Any, path: tuple, what: str) -> bool:
        """Whether a flag or schedule ``value`` is a mapping to convert; a hook (code) or
        anything else is noted as dropped."""
        if isinstance(value, Mapping):
            return True
        if isinstance(value, str):
            self.note(path, f"{what} hook {value!r} cannot be carried (code); dropped, our default applies")
        else:
            self.note(path, f"unreadable {what} {value!r}; dropped, our default applies")
        return False

    def flag(self, value: Any, path: tuple) -> Any:
        """A phaserEM flag as ours (None: nothing to write, the default applies)."""
        if value is None or isinstance(value, bool):
            return value
        if not self.readable(value, path, "flag"):
            return None
        self.unknown(value, {"after", "every", "before"}, path)
        after = int(value.get("after") or 0)
        every = int(value.get("every") or 1)
        before = value.get("before")
        out: dict[str, int] = {}
        # on at 1-based i > after, i < before, (i − after) % every == 0: the first such
        # 0-based iteration is after + every − 1, then every `every`
        first = after + every - 1
        if first > 0:
            out["after"] = first
        if every > 1:
            out["every"] = every
        if before is not None:
            out["before"] = max(int(before) - 1, 0)
        return out if out else True

    def schedule(self, value: Any, path: tuple) -> Any:
        """A phaserEM ScheduleLike as ours (None: not carried, noted)."""
        if value is None or isinstance(value, bool):
            return value
        if isinstance(value, (int, float)):
            return value
        if not self.readable(value, path, "schedule"):
            return None
        kind = value.get("type")
        if kind == "constant":
            self.unknown(value, {"type", "value"}, path)
            v = value.get("value")
            if not isinstance(v, (int, float)) or isinstance(v, bool):
                self.note(path, "constant schedule without a numeric value; dropped, our default applies")
                return None
            return v
        if kind == "expr":
            self.note(path, f"expr schedule {value.get('expr')!r} cannot be carried (no code runs in our plans); "
                            "dropped, our default applies. Write it as a piecewise, cosine, exponential or "
                            "warmup_cosine schedule")
            return None
        if kind == "piecewise":
            self.unknown(value, {"type", "init", "steps"}, path)
            init = value.get("init")
            steps = value.get("steps") or {}
            if not isinstance(init, (int, float)) or isinstance(init, bool) or not isinstance(steps, Mapping):
                self.note(path, "piecewise schedule whose init is not a number; dropped, our default applies")
                return None
            pts: list[tuple[int, float]] = []
            for k, v in steps.items():
                try:
                    it = int(k)
                except (TypeError, ValueError):
                    self.note(path, f"piecewise step {k!r} is not an iteration; schedule dropped, our default applies")
                    return None
                if not isinstance(v, (int, float)) or isinstance(v, bool):
                    self.note(path, f"piecewise step {k}: a nested schedule cannot be carried; schedule dropped, "
                                    "our default applies")
                    return None
                pts.append((it, float(v)))
            pts.sort()
            init_v = float(init)
            bounds: list[int] = []
            vals: list[float] = []
            for it, v in pts:
                b = it - 1  # 1-based engine iteration there, 0-based here
                if b <= 0:
                    init_v = v
                else:
                    bounds.append(b)
                    vals.append(v)
            if not bounds:
                return init_v
            return {"type": "piecewise", "init": init_v, "boundaries": bounds, "values": vals}
        self.note(path, f"unknown schedule type {kind!r}; dropped, our default applies")
        return None

    def slices(self, value: Any, path: tuple) -> dict | None:
        if value is None:
            return None
        if not isinstance(value, Mapping):
            self.note(path, f"unreadable slices {value!r}; dropped")
            return None
        self.unknown(value, {"n", "total_thickness", "slice_thickness", "thicknesses"}, path)
        if value.get("thicknesses") is not None:
            t = [float(x) for x in value["thicknesses"]]
            return {"n": len(t), "thicknesses_A": t}
        n = value.get("n")
        if n is None:
            self.note(path, "slices without n or thicknesses; dropped")
            return None
        out: dict[str, Any] = {"n": int(n)}
        if value.get("total_thickness") is not None:
            out["total_thickness_A"] = float(value["total_thickness"])
        elif value.get("slice_thickness") is not None:
            out["thicknesses_A"] = [float(value["slice_thickness"])] * int(n)
        return out

    @staticmethod
    def mean_dz(slices: dict | None) -> float | None:
        if not slices:
            return None
        if slices.get("thicknesses_A"):
            t = slices["thicknesses_A"]
            return float(sum(t)) / len(t) if len(t) else None
        if slices.get("total_thickness_A") is not None and slices.get("n"):
            return float(slices["total_thickness_A"]) / int(slices["n"])
        return None

    @classmethod
    def total_thickness(cls, slices: dict | None) -> float | None:
        dz = cls.mean_dz(slices)
        return None if dz is None else dz * int(slices["n"])

    @staticmethod
    def hook(value: Any) -> tuple[str | None, dict]:
        """(type, props) of a hook given as a string or a mapping."""
        if isinstance(value, str):
            return value, {}
        if isinstance(value, Mapping):
            props = {k: v for k, v in value.items() if k != "type"}
            return value.get("type"), props
        return None, {}

    # ------------------------------------------------------------------ top level

    def run(self, doc: Mapping) -> dict:
        doc = copy.deepcopy(dict(doc))
        out: dict[str, Any] = {"file_type": "phaser_plan", "version": 1}
        if doc.get("file_type", "phaser_plan") != "phaser_plan":
            self.note(("file_type",), f"{doc['file_type']!r} is not 'phaser_plan'; converted as a plan anyway")
        version = doc.get("version")
        if version is not None and str(version).strip() not in ("1", "1.0"):
            self.note(("version",), f"phaserEM plan version {version!r} (expected 1.0); converted as 1.0")
        if doc.get("name") is not None:
            out["name"] = str(doc["name"])
        else:
            self.note(("name",), "no name; ours defaults to 'phaser'")
        backend = doc.get("backend")
        if backend is None:
            # its automatic choice is ours by default (`auto`, which puts a GPU first)
            out["backend"] = "auto"
        elif str(backend).lower() in _BACKENDS:
            out["backend"] = _BACKENDS[str(backend).lower()]
        else:
            self.note(("backend",), f"unknown backend {backend!r}; dropped (auto: the fastest installed)")
        if doc.get("dtype") is not None:
            if doc["dtype"] in ("float32", "float64"):
                out["dtype"] = doc["dtype"]
            else:
                self.note(("dtype",), f"unknown dtype {doc['dtype']!r}; dropped (float32)")
        if doc.get("device") is not None:
            self.note(("device",), "no device selection in plans here (the backend picks its default device); dropped")

        out["raw_data"] = self.raw_data(doc.get("raw_data"), ("raw_data",))
        if doc.get("wavelength") is not None:
            self.wavelength(float(doc["wavelength"]), ("wavelength",))

        post_load = self.post_load(doc.get("post_load") or [], ("post_load",))
        post_load += self.post_init(doc.get("post_init") or [], ("post_init",))

        slices = self.slices(doc.get("slices"), ("slices",))
        init = self.init(doc.get("init") or {}, ("init",), out, slices)
        if post_load:
            out["post_load"] = post_load
        if init:
            out["init"] = init
        if slices is not None:
            out["slices"] = slices

        engines = doc.get("engines")
        if not isinstance(engines, list) or not engines:
            self.note(("engines",), "no engines; a plan needs at least one")
            out["engines"] = []
        else:
            current = slices
            out["engines"] = []
            for i, e in enumerate(engines):
                conv, current = self.engine(e, ("engines", i), current)
                out["engines"].append(conv)
        output = self.output()
        if output:
            out["output"] = output
        known = {"file_type", "version", "name", "backend", "dtype", "device", "wavelength", "raw_data",
                 "post_load", "post_init", "init", "slices", "engines"}
        self.unknown(doc, known, ())
        return out

    def wavelength(self, lam: float, path: tuple) -> None:
        """A wavelength [Å] as the converted loader's ``energy_eV`` (its relativistic
        energy), or a note where there is no converted loader."""
        from phaser_core.physics_constants import HC_EV_A, M0C2_EV

        if lam <= 0:
            self.note(path, f"wavelength {lam} Å is not positive; dropped")
            return
        # E from λ = hc / √(E(2m₀c² + E)): the energy whose wavelength is λ here
        energy = float(f"{-M0C2_EV + math.sqrt(M0C2_EV ** 2 + (HC_EV_A / lam) ** 2):.6g}")
        if self.loader is not None:
            self.loader["energy_eV"] = energy
            self.note(path, f"wavelength {lam} Å given as the loader's energy_eV {energy:g} (its relativistic "
                            "energy)")
        else:
            self.note(path, f"wavelength {lam} Å not carried: give the beam energy ({energy:g} eV) to the loader")

    def raw_data(self, value: Any, path: tuple) -> Any:
        kind, props = self.hook(value)
        self.loader_type = kind
        if kind == "empad":
            out: dict[str, Any] = {"type": "empad"}
            for k, v in props.items():
                if k in _OUR_EMPAD_KEYS:
                    if v is not None:
                        out[_OUR_EMPAD_KEYS[k]] = v
                elif k == "kv":
                    if v is not None:
                        out["energy_eV"] = float(v) * 1e3
                elif k == "det_flips":
                    if v is not None:
                        self.note(path + (k,), "det_flips not carried (set our flip_y, flip_x, transpose after "
                                               "checking the orientation with `phaser inspect`)")
                else:
                    self.note(path + (k,), f"unknown key {k!r}, dropped")
            self.loader = out
            return out
        if isinstance(kind, str) and kind.rsplit(".", 1)[-1] == _OUR_FILE_HOOK:
            self.loader = self.our_file_hook(props, path)
            return self.loader
        if kind is None:
            self.note(path, "no raw_data loader; a plan needs one")
            return value
        hint = {"gatan": " (a DM4 file: try our rsciio loader, `phaser describe loader rsciio`)",
                "manual": " (raw binary or HDF5 arrays: try our npy or hdf5 loaders)",
                "nion": " (try our rsciio loader)"}.get(kind, " (a loader in code cannot be carried)")
        self.note(path, f"loader {kind!r} not converted{hint}; the plan will not validate until it is replaced")
        return copy.deepcopy(value)

    def our_file_hook(self, props: Mapping, path: tuple) -> dict:
        """Our ``hdf5`` loader for the harness's hook that reads our raw-data file into
        phaserEM: the same file, read the same way (its ``defocus_map: abtem`` default reads
        the file's ``defocus_A`` as ours, positive = underfocus)."""
        out: dict[str, Any] = {"type": "hdf5"}
        pending_wavelength = None
        for k, v in props.items():
            if v is None:
                continue
            if k == "path":
                out["path"] = v
            elif k == "key":
                if v != "patterns":
                    out["key"] = str(v)
            elif k == "defocus":
                out["defocus_A"] = -float(v)
            elif k == "defocus_map":
                if str(v).lower() in ("same", "identity") and props.get("defocus") is None:
                    self.note(path + (k,), f"defocus_map {v!r} read the file's defocus_A as phaserEM's "
                                           "(C10, positive = overfocus); ours reads it as −C10: set "
                                           "raw_data.defocus_A to minus the file's value")
                elif str(v).lower() not in ("abtem", "same", "identity"):
                    self.note(path + (k,), f"unknown defocus_map {v!r}, dropped")
            elif k == "det_flips":
                flips = [bool(f) for f in v]
                if len(flips) != 3:
                    self.note(path + (k,), f"det_flips {v!r} is not three booleans; dropped")
                    continue
                flip_y, flip_x, transpose = flips
                # phaserEM flips, then transposes; ours transposes first, then flips the new axes
                if transpose:
                    flip_y, flip_x = flip_x, flip_y
                out.update({key: True for key, on in
                            (("transpose", transpose), ("flip_y", flip_y), ("flip_x", flip_x)) if on})
                if flip_y or flip_x:
                    self.note(path + (k,), "flips reflect about the zero-angle pixel (Qy//2, Qx//2) here; "
                                           "phaserEM flips the array, which on an even detector moves that "
                                           "pixel by one")
            elif k == "wavelength":
                pending_wavelength = float(v)
            elif k in ("scan_transpose", "center_scan", "scale"):
                if v:
                    self.note(path + (k,), f"{k} {v!r} not carried (no such loader setting here); dropped")
            else:
                self.note(path + (k,), f"unknown key {k!r}, dropped")
        if "path" not in out:
            self.note(path, "no path: the hdf5 loader needs one")
        if pending_wavelength is not None:
            self.loader = out
            self.wavelength(pending_wavelength, path + ("wavelength",))
        return out

    def steps(self, steps: Any, path: tuple) -> Any:
        """``(path, kind, props)`` of each hook of a list; a value that is not a list is
        dropped with a note."""
        if not isinstance(steps, list):
            self.note(path, "not a list; dropped")
            return
        for i, step in enumerate(steps):
            yield (path + (i,), *self.hook(step))

    def post_load(self, steps: Any, path: tuple) -> list:
        out: list = []
        for p, kind, props in self.steps(steps, path):
            if kind == "crop_data":
                self.unknown(props, {"crop"}, p)
                crop = props.get("crop")
                if crop is None or len(crop) != 4:
                    self.note(p, "crop_data without a 4-element crop; dropped")
                    continue
                if any(c is None for c in crop):
                    if crop[1] is None or crop[3] is None:
                        self.note(p, f"crop {list(crop)}: an open end (null) cannot be written here; dropped, "
                                     "give explicit stops in our crop_data.scan")
                        continue
                    crop = [0 if c is None else c for c in crop]
                out.append({"type": "crop_data", "scan": [int(c) for c in crop]})
            elif kind == "scale":
                self.unknown(props, {"scale"}, p)
                out.append({"type": "scale", "factor": float(props.get("scale", 1.0))})
            elif kind == "bin":
                self.unknown(props, {"bin"}, p)
                out.append({"type": "bin", "factor": int(props.get("bin", 2))})
            elif kind == "poisson":
                self.unknown(props, {"scale", "gaussian"}, p)
                new: dict[str, Any] = {"type": "poisson"}
                if props.get("scale") is not None:
                    new["scale"] = float(props["scale"])
                gauss = props.get("gaussian", 1.0e-3)
                if gauss:
                    self.note(p, f"poisson: the extra Gaussian noise of std {gauss} (phaserEM's default 1e-3) is "
                                 "not added here")
                out.append(new)
            elif kind == "offset":
                self.note(p, "offset (subtracting a constant from every pattern) has no step here; dropped")
            elif kind == "apply_mtf":
                self.note(p, "apply_mtf: no detector MTF here; dropped")
            else:
                self.note(p, f"post_load step {kind!r} not converted; dropped")
        return out

    def post_init(self, steps: Any, path: tuple) -> list:
        out: list = []
        for p, kind, props in self.steps(steps, path):
            if kind == "drop_nans":
                self.unknown(props, {"threshold"}, p)
                out.append({"type": "drop_nan_patterns", "threshold": float(props.get("threshold", 0.9))})
                self.note(p, "drop_nans runs as our post_load step drop_nan_patterns (before the initialisers; "
                             "the scan positions of dropped patterns go with them). The NaN pixels of the "
                             "patterns it keeps are set to 0 and masked (fill: true)")
            elif kind == "diffraction_align":
                if props:
                    self.unknown(props, set(), p)
                out.append({"type": "center_diffraction"})
                self.note(p, "diffraction_align runs as our post_load step center_diffraction (before the "
                             "initialisers)")
            else:
                self.note(p, f"post_init step {kind!r} not converted; dropped")
        return out

    # ------------------------------------------------------------------ init

    def init(self, init: Any, path: tuple, out: dict, slices: dict | None) -> dict:
        res: dict[str, Any] = {}
        if not isinstance(init, Mapping):
            self.note(path, "unreadable init; dropped")
            return res
        self.unknown(init, {"state", "probe", "object", "scan", "tilt"}, path)
        state = init.get("state")
        if state is not None:
            res["state"] = str(state)
            for k in ("probe", "object", "scan", "tilt"):
                if init.get(k) is not None:
                    self.note(path + (k,), f"with init.state the state's {k} is used here (phaserEM let "
                                           "init override it); dropped")
            if slices is not None:
                self.note(("slices",), "with init.state the state's slices are kept until an engine reslices "
                                       "(give the first engine `slices` to reslice)")
            return res

        probe = init.get("probe")
        if probe is not None:
            res["probe"] = self.probe(probe, path + ("probe",))
        res["object"] = self.object(init.get("object"), path + ("object",), slices)
        scan = init.get("scan")
        if scan is not None:
            new = self.scan(scan, path + ("scan",))
            if new is not None:
                res["scan"] = new
        tilt = init.get("tilt")
        if tilt is not None:
            self.tilt(tilt, path + ("tilt",))
        return {k: v for k, v in res.items() if v is not None}

    def probe(self, value: Any, path: tuple) -> dict | None:
        kind, props = self.hook(value)
        if kind not in (None, "focused"):
            self.note(path, f"probe hook {kind!r} not converted; our default focused probe applies")
            return None
        out: dict[str, Any] = {"type": "focused"}
        for k, v in props.items():
            if k == "conv_angle":
                if v is not None:
                    out["conv_angle_mrad"] = float(v)
            elif k == "defocus":
                if v is not None:
                    out["defocus_A"] = -float(v)
            elif k == "aberrations":
                if v:
                    self.note(path + (k,), "aberration list not converted (ours: Krivanek C10..C56 [Å], "
                                           "phi.. [rad] in `aberrations`, with C10 = −defocus_A); dropped")
            else:
                self.note(path + (k,), f"unknown key {k!r}, dropped")
        return out

    def object(self, value: Any, path: tuple, slices: dict | None) -> dict | None:
        kind, props = self.hook(value)
        if value is None or kind in (None, "random"):
            self.unknown(props, {"sigma"}, path)
            sigma = float(props.get("sigma", 1e-6))
            if slices is not None and int(slices.get("n", 1)) > 1:
                self.note(path, f"random object: phase_sigma_rad {sigma:g} is the spread of the total phase "
                                "here (phaserEM: of each slice)")
            return {"type": "random", "phase_sigma_rad": sigma}
        self.note(path, f"object hook {kind!r} not converted; our default vacuum object applies")
        return None

    def scan(self, value: Any, path: tuple) -> dict | None:
        kind, props = self.hook(value)
        if kind not in (None, "raster"):
            self.note(path, f"scan hook {kind!r} not converted; our default from_data applies")
            return None
        self.unknown(props, {"shape", "step_size", "rotation", "affine"}, path)
        rot = props.get("rotation")
        affine = self.raster_affine(props.get("affine"), float(rot or 0.0), path + ("affine",))
        shape = props.get("shape")
        step = props.get("step_size")
        if shape is None and step is None:
            # phaserEM merges this with the loader's raster (its metadata affine included): so does from_data
            out: dict[str, Any] = {"type": "from_data"}
            if rot:
                out["rotation_deg"] = -float(rot)
            if affine is not None:
                self.note(path + ("affine",), "a raster affine on the loader's raster is not carried (our "
                                              "from_data has none; give init.scan {type: raster, shape, step_A, "
                                              f"affine: {affine}}}")
            return out
        out = {"type": "raster"}
        if shape is not None:
            out["shape"] = [int(s) for s in shape]
        if step is not None:
            out["step_A"] = [float(s) for s in step] if isinstance(step, (list, tuple)) else float(step)
        if rot:
            out["rotation_deg"] = -float(rot)
        if affine is not None:
            out["affine"] = affine
        self.note(path, "raster: phaserEM's grid runs from −n/2 to n/2 − 1 steps, ours is centred (a shift "
                        "of half a step of the whole reconstruction)"
                        + ("; phaserEM also applied the EMPAD metadata's scan_correction, our raster does "
                           "not" if self.loader_type == "empad" else ""))
        return out

    def raster_affine(self, affine: Any, rotation_deg: float, path: tuple) -> list | None:
        """phaserEM's raster ``affine`` (applied to the stepped grid's (y, x) column vectors
        before its rotation R by phaserEM's ``rotation`` ``rotation_deg`` [deg], its sign as
        phaserEM writes it) as ours (applied after the rotation): R·A·Rᵀ, the same
        positions; None for none or the identity."""
        if affine is None:
            return None
        try:
            a = np.asarray(affine, dtype=np.float64)
        except (TypeError, ValueError):
            a = None
        if a is None or a.shape != (2, 2):
            self.note(path, f"not a 2x2 matrix ({affine!r}); dropped")
            return None
        if np.array_equal(a, np.eye(2)):
            return None
        th = math.radians(rotation_deg)
        r = np.array([[math.cos(th), -math.sin(th)], [math.sin(th), math.cos(th)]])
        ours = r @ a @ r.T
        return [[float(f"{v:.12g}") for v in row] for row in ours]

    def tilt(self, value: Any, path: tuple) -> None:
        kind, props = self.hook(value)
        if kind == "global":
            self.unknown(props, {"tilt"}, path)
            t = props.get("tilt")
            if t is None or len(t) != 2:
                self.note(path, "global tilt without a (y, x) pair; dropped")
                return
            if self.loader is not None:
                self.loader["tilt_mrad"] = [-float(t[0]), -float(t[1])]
                self.note(path, f"global tilt {list(t)} mrad given as the loader's tilt_mrad "
                                f"{self.loader['tilt_mrad']} (the opposite sign convention)")
            else:
                self.note(path, f"global tilt {list(t)} mrad not carried: give the loader tilt_mrad "
                                f"[{-float(t[0])}, {-float(t[1])}] (the opposite sign convention)")
            return
        if kind is None and not props:
            return  # `{}`: regenerate from the loader, as here
        self.note(path, f"tilt hook {kind!r} not converted (a per-position tilt file cannot be read here); "
                        "dropped")

    # ------------------------------------------------------------------ engines

    def engine(self, e: Any, path: tuple, current_slices: dict | None) -> tuple[Any, dict | None]:
        kind, props = self.hook(e)
        if kind not in ("conventional", "gradient"):
            self.note(path, f"engine {kind!r} not converted; the plan will not validate until it is replaced")
            return copy.deepcopy(e), current_slices
        out: dict[str, Any] = {"type": kind, "niter": int(props.get("niter", 10))}
        grouping: dict[str, Any] = {"size": int(props["grouping"]) if props.get("grouping") is not None else 64}
        compact = bool(props.get("compact", False))
        if compact:
            grouping["kind"] = "compact"
        shuffle = props.get("shuffle_groups")
        if shuffle is not None:
            if isinstance(shuffle, bool):
                if compact:
                    grouping["regroup"] = shuffle
                elif shuffle is False:
                    self.note(path + ("shuffle_groups",), "false with sparse groups: phaserEM re-partitioned "
                                                          "anyway (ours does too); dropped")
            else:
                self.note(path + ("shuffle_groups",), "a per-iteration shuffle flag cannot be carried "
                                                      "(ours: grouping.regroup true/false); dropped")
        out["grouping"] = grouping
        # phaserEM's default is 1 mode (an engine without the key truncates to one); ours keeps
        out["probe_modes"] = int(props["probe_modes"]) if props.get("probe_modes") is not None else 1
        if "base_mode_power" in props:
            self.note(path + ("base_mode_power",), "not carried (new modes here keep the total power; the "
                                                  "first mode's share is init.probe.first_mode_power)")
        if "bwlim_frac" in props:
            out["bandlimit"] = None if props["bwlim_frac"] is None else float(props["bwlim_frac"])
        sl = self.slices(props.get("slices"), path + ("slices",))
        if sl is not None:
            out["slices"] = sl
            # without a thickness an engine's slices keep the total thickness of the object
            total = self.total_thickness(current_slices)
            if self.mean_dz(sl) is None and total is not None:
                current_slices = {"n": sl["n"], "total_thickness_A": total}
            else:
                current_slices = sl
        if props.get("sim_shape") is not None:
            ss = [int(q) for q in props["sim_shape"]]
            method = props.get("resize_method", "pad_crop")
            if method == "pad_crop":
                out["sim_shape"] = ss
                self.note(path + ("sim_shape",), "kept (pad_crop): the engines after this one stay on its grid "
                                                 "until another sim_shape")
            else:
                self.note(path + ("resize_method",), f"{method!r} (interpolating the patterns to another detector "
                                                     "sampling) is not supported here, only pad_crop; sim_shape "
                                                     f"{ss} dropped")
        elif "resize_method" in props:
            self.note(path + ("resize_method",), "no sim_shape to resize to; dropped")
        if props.get("noise_model") is not None:
            nm = self.noise_model(props["noise_model"], path + ("noise_model",))
            if nm is not None:
                out["noise_model"] = nm
        else:
            self.note(path + ("noise_model",), "missing (required by phaserEM); ours picks anscombe for counted "
                                               "data, amplitude for sparse counts and other data")

        known = {"type", "niter", "grouping", "compact", "shuffle_groups", "probe_modes", "base_mode_power",
                 "bwlim_frac", "slices", "sim_shape", "resize_method", "noise_model", "update_probe",
                 "update_object", "update_positions", "update_tilt", "save", "save_images", "save_options",
                 "group_constraints", "iter_constraints", "early_termination", *_ENGINE_DROPPED}
        if kind == "conventional":
            known |= {"solver", "position_solver"}
            self.conventional(props, path, out, current_slices)
        else:
            known |= {"solvers", "regularizers"}
            self.gradient(props, path, out)
        gc = self.constraints(props.get("group_constraints") or [], path + ("group_constraints",),
                              current_slices, group=True)
        ic = self.constraints(props.get("iter_constraints") or [], path + ("iter_constraints",),
                              current_slices, group=False)
        if gc:
            out["group_constraints"] = gc
        if ic:
            out["iter_constraints"] = ic

        for k in ("update_object", "update_probe"):
            if k in props:
                f = self.flag(props[k], path + (k,))
                if f is not None:
                    out[k] = f
        has_pos = out.get("position_solver") is not None or \
            (out.get("solvers") or {}).get("positions") is not None
        f = self.flag(props.get("update_positions"), path + ("update_positions",))
        if has_pos:
            out["update_positions"] = False if f is None else f
        if kind == "gradient":
            has_tilt = (out.get("solvers") or {}).get("tilt") is not None
            f = self.flag(props.get("update_tilt"), path + ("update_tilt",))
            if has_tilt:
                out["update_tilt"] = False if f is None else f
        elif props.get("update_tilt"):
            self.note(path + ("update_tilt",), "the conventional engines do not refine the tilt (phaserEM "
                                               "ignored it too); dropped")

        if props.get("early_termination"):
            n = int(props["early_termination"])
            out["stop_when"] = {"patience": n, "min_rel_change": 0.0}
            self.note(path + ("early_termination",), f"becomes stop_when {{patience: {n}, min_rel_change: 0}}: stop "
                                                     f"once the loss has not reached a new best for {n} iterations "
                                                     "(phaserEM compares an exponentially smoothed loss)")
        self.save(props, path)
        for k, why in _ENGINE_DROPPED.items():
            if k in props:
                self.note(path + (k,), f"not carried: {why}")
        self.unknown(props, known, path)
        return out, current_slices

    def noise_model(self, value: Any, path: tuple) -> dict | None:
        kind, props = self.hook(value)
        if kind in ("amplitude", "anscombe"):
            self.unknown(props, {"gaussian_variance", "eps", "offset"}, path)
            offset = float(props.get("offset", 0.0 if kind == "amplitude" else 0.375))
            if props.get("eps") is not None:
                self.note(path + ("eps",), f"eps {props['eps']} not carried: phaserEM subtracts it inside the "
                                           "squared difference, ours adds it under the square roots (default 1e-3)")
            if props.get("gaussian_variance") is not None:
                self.note(path + ("gaussian_variance",), "not carried (it only rescaled phaserEM's loss)")
            if offset == 0.0:
                return {"type": "amplitude"}
            out: dict[str, Any] = {"type": "anscombe"}
            if offset != 0.375:
                out["offset"] = offset
            if kind == "amplitude":
                self.note(path, f"amplitude with offset {offset} is our anscombe with that offset")
            return out
        if kind == "poisson":
            self.unknown(props, {"eps", "offset", "gaussian_variance"}, path)
            out = {"type": "poisson"}
            if props.get("eps") is not None:
                out["eps"] = float(props["eps"])
            for k in ("offset", "gaussian_variance"):
                if props.get(k) is not None:
                    self.note(path + (k,), "unused by phaserEM's poisson model; dropped")
            return out
        self.note(path, f"noise model {kind!r} not converted; ours picks anscombe for counted data, "
                        "amplitude for sparse counts and other data")
        return None

    def conventional(self, props: Mapping, path: tuple, out: dict, slices: dict | None = None) -> None:
        solver = props.get("solver")
        kind, sp = self.hook(solver)
        p = path + ("solver",)
        if kind == "epie":
            self.unknown(sp, {"beta_object", "beta_probe"}, p)
            new: dict[str, Any] = {"type": "epie"}
            for k in ("beta_object", "beta_probe"):
                v = self.schedule(sp.get(k, 1.0), p + (k,))
                if v is not None:
                    new[k] = v
            if not slices or int(slices.get("n", 1)) <= 1:
                # phaserEM stepped each position by its own largest illumination: our closest
                new["object_norm"] = "position"
                self.note(p, "epie: object_norm: position, as phaserEM each position's object update divided by "
                             "its own largest illumination (where positions overlap ours averages the updates, "
                             "phaserEM added them; docs/engines.md)")
            else:
                self.note(p, "epie: β carried as is, but phaserEM normalised each position's object update by its "
                             "own largest illumination and divided it by the number of slices; ours divides the "
                             "group's summed update by the group's largest (object_norm: group; docs/engines.md)")
            out["solver"] = new
        elif kind == "lsqml":
            self.unknown(sp, {"beta_object", "beta_probe", "gamma", "illum_reg_object", "illum_reg_probe",
                              "stochastic"}, p)
            out["solver"] = {"type": "lsqml"}
            given = [k for k in ("beta_object", "beta_probe", "gamma", "illum_reg_object", "illum_reg_probe")
                     if k in sp]
            self.note(p, "lsqml: phaserEM's step sizes and regularisers (β, γ, illum_reg"
                         + (f"; given: {', '.join(given)}" if given else "; its defaults") + ") mean something "
                         "else here (illum_reg a fraction of the maximum, steps per position); our defaults "
                         "kept, as docs/engines.md advises")
            if "stochastic" in sp:
                self.note(p + ("stochastic",), "unused by phaserEM; dropped")
        else:
            self.note(p, f"solver {kind!r} not converted; our default lsqml applies")
        ps = props.get("position_solver")
        if ps is not None:
            new_ps = self.position_solver(ps, path + ("position_solver",))
            if new_ps is not None:
                out["position_solver"] = new_ps

    def position_solver(self, value: Any, path: tuple) -> dict | None:
        kind, props = self.hook(value)
        if kind not in ("momentum", "steepest_descent"):
            self.note(path, f"position solver {kind!r} not converted; dropped (no position correction)")
            return None
        self.unknown(props, {"step_size", "max_step_size", "momentum"} if kind == "momentum"
                     else {"step_size", "max_step_size"}, path)
        step = float(props.get("step_size", 1e-2))
        out: dict[str, Any] = {"type": "momentum", "step_size": step,
                               "momentum": float(props.get("momentum", 0.9)) if kind == "momentum" else 0.0}
        if kind == "steepest_descent":
            self.note(path, "steepest_descent is our momentum solver with momentum 0")
        mx = props.get("max_step_size")
        if mx is not None:
            out["max_step_A"] = float(mx)
        if kind == "steepest_descent":
            self.note(path + ("max_step_size",), "phaserEM's steepest_descent in fact clipped every step to its "
                                                 f"step_size ({step} Å), whatever max_step_size said; ours caps "
                                                 f"each step at max_step_A ({mx if mx is not None else 0.2} Å)")
        elif mx is None:
            self.note(path + ("max_step_size",), "unlimited there; ours caps each step at max_step_A (default "
                                                 "0.2 Å): raise it to match")
        return out

    def gradient(self, props: Mapping, path: tuple, out: dict) -> None:
        p = path + ("solvers",)
        solvers: dict[str, Any] = {"object": None, "probe": None}
        given = props.get("solvers")
        if not isinstance(given, Mapping) or not given:
            self.note(p, "no solvers (required by phaserEM); our defaults (Adam on object and probe) apply")
            solvers = {}
        else:
            for key, spec in given.items():
                names = [n.strip() for n in str(key).split(",") if n.strip()]
                bad = [n for n in names if n not in ("object", "probe", "positions", "tilt")]
                if bad:
                    self.note(p + (key,), f"unknown variable(s) {', '.join(bad)}; solver dropped")
                    continue
                conv = self.gradient_solver(spec, p + (key,))
                if conv is None:
                    continue
                if len(names) > 1 and conv.get("type") == "polyak_sgd":
                    self.note(p + (key,), "polyak_sgd shared by several variables took one step size from "
                                          "their joint gradient; here each variable gets its own")
                for n in names:
                    if n in ("positions", "tilt") and conv.get("type") == "polyak_sgd":
                        self.note(p + (key,), f"{n}: polyak_sgd steps by a group's loss, and the {n} are stepped "
                                              "once an iteration here; not carried (give it sgd or adam to "
                                              "refine them)")
                        continue
                    solvers[n] = copy.deepcopy(conv)
                    if n in ("positions", "tilt"):
                        unit = "Å" if n == "positions" else "mrad"
                        self.note(p + (key,), f"{n}: learning rate carried as is ({unit}"
                                              " per iteration here); the gradient's normalisation may differ from "
                                              "phaserEM's, check the first iterations")
            for n in ("object", "probe"):
                if solvers.get(n) is None:
                    self.note(p, f"no solver for the {n}: it is not updated (solvers.{n}: null)")
        if solvers:
            out["solvers"] = solvers
            if solvers.get("tilt") is not None:
                out["tilt"] = "per_position"
        regs = props.get("regularizers")
        if regs is None and props.get("regularizations") is not None:
            regs = props["regularizations"]
            self.note(path + ("regularizations",), "read as regularizers")
        costs = []
        for i, r in enumerate(regs or []):
            c = self.cost(r, path + ("regularizers", i))
            if c is not None:
                costs.append(c)
        if costs:
            out["regularizers"] = costs
            out["cost_per"] = "group"
            self.note(path + ("regularizers",), "cost_per: group: phaserEM added each cost's whole penalty at "
                                                "every group, so its weights are kept as they are")

    def gradient_solver(self, value: Any, path: tuple) -> dict | None:
        kind, props = self.hook(value)
        if kind == "sgd":
            self.unknown(props, {"learning_rate", "momentum", "nesterov"}, path)
            out: dict[str, Any] = {"type": "sgd"}
            lr = self.schedule(props.get("learning_rate"), path + ("learning_rate",))
            if lr is not None:
                out["learning_rate"] = lr
            elif props.get("learning_rate") is None:
                self.note(path + ("learning_rate",), "missing (required by phaserEM); our default 0.01 applies")
            mom = self.schedule(props.get("momentum"), path + ("momentum",))
            if mom is not None:
                out["momentum"] = mom
                out["nesterov"] = bool(props.get("nesterov", True))  # phaserEM's default: true
            return out
        if kind == "adam":
            self.unknown(props, {"learning_rate", "b1", "b2", "eps", "eps_root", "nesterov"}, path)
            out = {"type": "adam"}
            lr = self.schedule(props.get("learning_rate"), path + ("learning_rate",))
            if lr is not None:
                out["learning_rate"] = lr
            elif props.get("learning_rate") is None:
                self.note(path + ("learning_rate",), "missing (required by phaserEM); our default 0.01 applies")
            for k in ("b1", "b2", "eps", "eps_root"):
                if props.get(k) is not None:
                    out[k] = float(props[k])
            if props.get("nesterov") is not None:
                out["nesterov"] = bool(props["nesterov"])
            return out
        if kind == "polyak_sgd":
            self.unknown(props, {"max_learning_rate", "f_min", "scaling", "eps"}, path)
            out = {"type": "polyak_sgd"}
            for k in ("max_learning_rate", "scaling"):
                v = self.schedule(props.get(k), path + (k,))
                if v is not None:
                    out[k] = v
            if props.get("eps") is not None:
                out["eps"] = float(props["eps"])
            if props.get("f_min") is not None:
                out["f_min"] = float(props["f_min"])
                if float(props["f_min"]) != 0.0:
                    self.note(path + ("f_min",), "carried as is; ours is normalised per position (and per unit "
                                                 "probe intensity for the object), check its scale")
            return out
        self.note(path, f"gradient solver {kind!r} not converted; dropped")
        return None

    def cost(self, value: Any, path: tuple) -> dict | None:
        kind, props = self.hook(value)
        if kind not in _COSTS:
            self.note(path, f"cost regularizer {kind!r} not converted; dropped")
            return None
        new = _COSTS[kind]
        allowed = {"cost", "eps"} if kind in _COSTS_WITH_EPS else {"cost"}
        self.unknown(props, allowed, path)
        out: dict[str, Any] = {"type": new}
        if "cost" in props:
            v = self.schedule(props["cost"], path + ("cost",))
            if v is not None:
                out["cost"] = v
        else:
            self.note(path + ("cost",), "missing; our default weight 1.0 applies")
        if "eps" in props and kind in _COSTS_WITH_EPS:
            out["eps"] = float(props["eps"])
        return out

    def constraints(self, items: Any, path: tuple, slices: dict | None, *, group: bool) -> list:
        out: list = []
        if not isinstance(items, list):
            self.note(path, "not a list; dropped")
            return out
        for i, c in enumerate(items):
            p = path + (i,)
            kind, props = self.hook(c)
            if kind == "clamp_object_amplitude":
                self.unknown(props, {"amplitude"}, p)
                amp = props.get("amplitude", 1.1)
                if isinstance(amp, (list, tuple)) and len(amp) == 2:  # phaserEM's [min, max] form
                    out.append({"type": "clamp_object_amplitude", "min_amplitude": float(amp[0]),
                                "max_amplitude": float(amp[1])})
                else:
                    out.append({"type": "clamp_object_amplitude", "max_amplitude": float(amp)})
            elif kind == "limit_probe_support":
                self.unknown(props, {"max_angle"}, p)
                if props.get("max_angle") is None:
                    self.note(p, "limit_probe_support without max_angle; dropped")
                    continue
                out.append({"type": "limit_probe_support", "max_angle_mrad": float(props["max_angle"])})
            elif kind == "obj_low_pass":
                self.unknown(props, {"max_freq"}, p)
                mf = float(props.get("max_freq", 0.4))
                out.append({"type": "obj_low_pass", "cutoff": mf / 0.5})
                self.note(p, f"obj_low_pass: phaserEM's hard cut at {mf} cycles/px becomes our Gaussian filter "
                             f"of ½ at cutoff {mf / 0.5:g} of Nyquist (softer: it keeps some of the frequencies "
                             "beyond, and damps some below)")
            elif kind == "obj_gaussian":
                self.unknown(props, {"sigma", "weight"}, p)
                if props.get("sigma") is None:
                    self.note(p, "obj_gaussian without sigma; dropped")
                    continue
                out.append({"type": "obj_blur", "sigma_A": float(props["sigma"]),
                            "weight": float(props.get("weight", 0.9))})
            elif kind == "remove_phase_ramp":
                out.append({"type": "remove_phase_ramp"})
            elif kind == "layers":
                self.unknown(props, {"sigma", "weight"}, p)
                if group:
                    self.note(p, "layers is an iteration constraint in phaserEM (not allowed per group); kept")
                sigma = float(props.get("sigma", 50.0))
                dz = self.mean_dz(slices)
                if dz is None or dz <= 0:
                    self.note(p, f"layers: sigma {sigma} Å cannot be turned into slices (the slice thickness "
                                 "is not in the plan); dropped")
                    continue
                out.append({"type": "layers", "sigma_slices": round(sigma / dz, 6),
                            "weight": float(props.get("weight", 0.9))})
                self.note(p, f"layers: sigma {sigma} Å / {dz:g} Å per slice = sigma_slices {sigma / dz:g}; ours "
                             "blurs the complex object (phaserEM its logarithm) with a kernel cut at 3σ "
                             "(phaserEM 2σ)")
            else:
                self.note(p, f"constraint {kind!r} not converted; dropped")
        return out

    # ------------------------------------------------------------------ output

    def save(self, props: Mapping, path: tuple) -> None:
        for key, into in (("save", self.save_every), ("save_images", self.image_every)):
            if key not in props or props[key] in (None, False):
                continue
            v = props[key]
            if v is True:
                into.append((path + (key,), 1))
            elif isinstance(v, Mapping):
                every = int(v.get("every") or 1)
                if v.get("after") or v.get("before") is not None:
                    self.note(path + (key,), "after/before of an output flag cannot be carried (ours: every N "
                                             "iterations of the whole run); only every is kept")
                into.append((path + (key,), every))
            else:
                self.note(path + (key,), f"output flag {v!r} cannot be carried; dropped")
        opts = props.get("save_options")
        if isinstance(opts, Mapping):
            for k, v in opts.items():
                if k == "images":
                    for name in v or []:
                        if name in _IMAGES:
                            ours, why = _IMAGES[name]
                            if why:
                                self.note(path + ("save_options", "images"), why)
                            if ours not in self.images:
                                self.images.append(ours)
                        else:
                            self.note(path + ("save_options", "images"), f"image {name!r} has no counterpart "
                                                                         "here; dropped")
                elif k == "out_dir":
                    self.note(path + ("save_options", k), "the output folder is `phaser run --out DIR` here "
                                                          "(default ./<name>); dropped")
                else:
                    self.note(path + ("save_options", k), "not carried (our image files have a fixed format); "
                                                          "dropped")

    def output(self) -> dict:
        out: dict[str, Any] = {}
        if self.save_every:
            n = min(e for _, e in self.save_every)
            out["state_every"] = n
            where = ", ".join(format_path(p) for p, _ in self.save_every)
            self.note(("output", "state_every"), f"from save ({where}): "
                                                 f"a state every {n} iterations of the whole run and after each "
                                                 "engine (phaserEM counted the iterations of each engine)")
        if self.image_every:
            n = min(e for _, e in self.image_every)
            out["image_every"] = n
            self.note(("output", "image_every"), f"from save_images "
                                                 f"({', '.join(format_path(p) for p, _ in self.image_every)}): images "
                                                 f"every {n} iterations of the whole run and after each engine")
        if self.images:
            out["images"] = list(self.images)
        return out


def import_phaserem_plan(doc: Mapping) -> tuple[dict, list[str]]:
    """Our plan (a mapping ready for ``load_plan``) and notes, from a phaserEM plan mapping.

    ``doc`` is not modified. Each note is ``"path: what changed or was not carried"``.
    Relative paths (``raw_data.path``, ``init.state``) are left as they are, relative to
    the old plan's folder (:func:`rebase_paths` moves them).
    """
    if not isinstance(doc, Mapping):
        raise TypeError(f"a phaserEM plan is a mapping, got {type(doc).__name__}")
    imp = _Importer()
    plan = imp.run(doc)
    return plan, imp.notes


def rebase_paths(plan: dict, old_dir: str, new_dir: str) -> list[str]:
    """Rewrite the relative paths of ``plan`` (in place) from ``old_dir`` to ``new_dir``.

    String operations only (no file is touched). Returns a note per path changed.
    """
    notes: list[str] = []
    old_dir = os.path.abspath(old_dir)
    new_dir = os.path.abspath(new_dir)
    if old_dir == new_dir:
        return notes
    places: list[tuple[dict, str, str]] = []
    if isinstance(plan.get("raw_data"), dict):
        places.append((plan["raw_data"], "path", "raw_data.path"))
    if isinstance(plan.get("init"), dict):
        places.append((plan["init"], "state", "init.state"))
    for holder, key, where in places:
        p = holder.get(key)
        if not isinstance(p, str) or not p or os.path.isabs(os.path.expanduser(p)) or p.startswith("~"):
            continue
        new = os.path.relpath(os.path.join(old_dir, p), new_dir)
        if new != p:
            holder[key] = new
            notes.append(f"{where}: {p!r} rewritten as {new!r} (relative to the new plan's folder)")
    return notes
