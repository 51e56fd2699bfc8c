"""Raw-data loaders bundled with phaser: one module per format.

``hdf5`` (phaser's own file), ``npy`` (array + plan metadata), ``empad`` (EMPAD raw frames
with the published phaser's JSON metadata) and ``rsciio`` (vendor formats through
rosettasciio: ``mib``, ``dm4``, ``emd``, ``hspy``, ...; install ``phaser-ptycho[formats]``).
Every loader returns a :class:`phaser_core.data.RawData` in electrons, zero angle at pixel
``(Qy//2, Qx//2)``, detector axes parallel to the object axes.
"""

from __future__ import annotations


def register_all(register) -> None:
    from .empad import EmpadConfig, load_empad
    from .hdf5 import Hdf5Config, load_hdf5
    from .npy import NpyConfig, load_npy
    from .rsciio import RsciioConfig, load_rsciio

    register("hdf5", load_hdf5, config=Hdf5Config, aliases=("h5",))
    register("npy", load_npy, config=NpyConfig)
    register("empad", load_empad, config=EmpadConfig)
    register("rsciio", load_rsciio, config=RsciioConfig, aliases=("rosettasciio",))
