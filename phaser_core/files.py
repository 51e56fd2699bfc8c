"""Writing files so that a crash never leaves a torn one."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable

#: the run folder's state files (a public layout: other tools read them)
CHECKPOINT_NAME = "checkpoint.h5"
FINAL_NAME = "final.h5"
#: the kept states of ``output.state_every``
STATES_DIR = "states"


def holds_previous_run(out_dir: str | os.PathLike) -> bool:
    """Whether the run folder ``out_dir`` holds a checkpoint or a final state."""
    return any((Path(out_dir) / name).exists() for name in (CHECKPOINT_NAME, FINAL_NAME))


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_name)`` on a temporary file beside ``path``, make it durable
    (fsync), give it the usual permissions (0666 less the umask; ``mkstemp`` makes 0600)
    and rename it over ``path``. On any error the temporary file is removed."""
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    umask = os.umask(0)
    os.umask(umask)
    os.fchmod(fd, 0o666 & ~umask)
    os.close(fd)
    try:
        write(tmp_name)
        with open(tmp_name, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        raise
    return path


#: the comment line of a run folder's ``plan.yaml`` naming the folder its relative paths
#: resolve from
PLAN_DIR_HEADER = "plan_dir: "


def read_plan_dir(plan_file: Path) -> Path | None:
    """The folder a run's ``plan.yaml`` resolves its relative paths from (its
    ``# plan_dir:`` header, written by ``phaser run``), or None."""
    try:
        with open(plan_file, encoding="utf-8") as fh:
            for line in fh:
                if not line.startswith("#"):
                    break
                text = line[1:].strip()
                if text.startswith(PLAN_DIR_HEADER):
                    return Path(text[len(PLAN_DIR_HEADER):])
    except OSError:
        return None
    return None
