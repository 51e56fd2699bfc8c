#!/usr/bin/env bash
# Here, before a lent-GPU session (benchmarks/device_session.sh): the wheels the device
# machine lacks (it has no network; its image has jax, cupy, numpy, h5py, rich, optax)
# into .whl, and a copy of the phaserEM harness (../shared/bench does not travel) into
# .bench-shared. Both are git-ignored through .git/info/exclude; carry them in the call.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-/work/venv/bin/python}
for p in /.whl/ /.bench-shared/; do grep -qx "$p" .git/info/exclude 2>/dev/null || echo "$p" >>.git/info/exclude; done
rm -rf .whl .bench-shared
mkdir -p .whl
PLAT="--only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
      --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64"
# ours: cattrs, ruamel.yaml (+ its C loader), and attrs/pluggy at versions we test with;
# phaserEM 0.3.1 and what it needs beyond the image
$PY -m pip download -q --no-deps $PLAT -d .whl cattrs ruamel.yaml ruamel.yaml.clib "attrs==$($PY -c 'import attrs; print(attrs.__version__)')" \
    "pluggy==$($PY -c 'import importlib.metadata as m; print(m.version("pluggy"))')" \
    phaserEM==0.3.1 py-pane==0.11.7 frozendict==2.4.7 optree==0.20.0 platformdirs==4.14.8
$PY -m pip wheel -q --no-deps -w .whl . ./plugins/phaser-example-loader
cp -r ../shared/bench .bench-shared
rm -rf build plugins/phaser-example-loader/build
ls .whl
du -sh .whl .bench-shared
