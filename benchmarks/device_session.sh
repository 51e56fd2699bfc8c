#!/usr/bin/env bash
# One session on a lent GPU machine (the `device` tool): install, check, time. Not CI.
#
#   benchmarks/prepare_device.sh                        # here: wheels -> .whl, harness -> .bench-shared
#   device run (carry .whl .bench-shared): bash benchmarks/device_session.sh STAGES
#
# STAGES is a comma list of: tests, paper, quick, cupy, paper-phaser, paper-cupy,
# gradient-variants (the paper-size gradient engine in chunks of 16 and 32 positions, and
# without its regularizers; NOTES.md session 4), stream-variants (the paper size with the
# patterns kept on the GPU, against the streamed default; NOTES.md 41), profile (the paper-size gradient engine
# under jax.profiler; the trace comes back), suite
# (default: tests,paper,quick). Each stage has its own time limit (seconds, PHASER_T_<STAGE>)
# so the call ends inside the lease; whatever a stage wrote under $OUT comes back, also
# when it was cut off (bench.py rewrites its JSON after every case). The machine has no
# network: our package, its missing dependencies and phaserEM come as wheels in .whl, and
# phaserEM runs in the same interpreter as ours (the image's jax), not in a venv of its own.
set -u
export PYTHONUNBUFFERED=1
# the device tool brings back at most 8 files: everything is written to $OUT/r and packed
# into $OUT/results.tgz at the end (a call cut off by its limit brings back what $OUT/r holds)
FINAL=${OUT:-/tmp/out}
OUT=$FINAL/r
mkdir -p "$OUT"
pack() { tar czf "$FINAL/results.tgz" -C "$OUT" . && rm -rf "$OUT"; }
trap pack EXIT
STAGES=",${1:-tests,paper,quick},"
T0=$(date +%s)
say() { echo "[$(($(date +%s) - T0)) s] $*" | tee -a "$OUT/session.log"; }
want() { [[ $STAGES == *",$1,"* ]]; }

if [[ -z ${PHASER_DRY_RUN:-} ]]; then  # PHASER_DRY_RUN=1: try the script here, python3 on PATH ready
    say "install"
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl/*.whl >"$OUT/install.log" 2>&1 || { cat "$OUT/install.log"; exit 1; }
    export PYTHONPATH=/tmp/site
fi
export PHASER_SHARED_BENCH=$PWD/.bench-shared
export PHASER_ANCHOR_PY=${PHASER_ANCHOR_PY:-$(command -v python3)}
export PHASER_CACHE_DIR=/tmp/phaser-cache

say "machine"
{
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv
    python3 - <<'PY'
import importlib.metadata as md
for p in ("numpy", "scipy", "jax", "jaxlib", "jax-cuda13-plugin", "cupy-cuda13x", "optax", "attrs", "cattrs",
          "pluggy", "h5py", "phaser-ptycho", "phaserEM"):
    try:
        print(p, md.version(p))
    except md.PackageNotFoundError:
        print(p, "missing")
import jax
print("jax devices", jax.devices())
import cupy
print("cupy device", cupy.cuda.runtime.getDeviceProperties(0)["name"])
PY
    python3 -m phaser_core.cli plugins | head -40
} >"$OUT/machine.txt" 2>&1
cat "$OUT/machine.txt" | head -30

# datasets on the CPU cores, in the background, while the tests run
say "simulating datasets (background)"
(
    python3 benchmarks/bench.py --simulate-only --cases '*/jax/single64/*/g64' '*/jax/multi64/*/g64'
    python3 benchmarks/bench.py --simulate-only --paper --cases '*/jax/paper_multi/m1/g64'
) >"$OUT/simulate.log" 2>&1 &
SIM=$!

if want tests; then
    say "tests: every backend against numpy (jax on the GPU, cupy)"
    XLA_PYTHON_CLIENT_PREALLOCATE=false timeout "${PHASER_T_TESTS:-100}" python3 -m pytest -q -p no:cacheprovider \
        -rs tests/test_backends.py tests/test_backend_engines.py tests/test_optimizers.py \
        tests/test_regularizers.py tests/test_noise_models.py tests/test_statefile.py tests/test_forward.py \
        tests/test_chunking.py tests/test_deferred_state.py >"$OUT/pytest-backends.txt" 2>&1
    say "tests rc=$? $(tail -1 "$OUT/pytest-backends.txt")"
    grep -E "^(FAILED|ERROR)" "$OUT/pytest-backends.txt" | head -20
fi

say "waiting for the datasets"
wait $SIM
say "datasets: $(grep -c wrote "$OUT/simulate.log") written; $(tail -2 "$OUT/simulate.log" | tr '\n' ' ')"

bench() {  # bench NAME LIMIT ARGS...: one bench.py run, JSON and log under $OUT
    local name=$1 limit=$2
    shift 2
    say "bench $name (limit $limit s)"
    timeout "$limit" python3 benchmarks/bench.py --out "$OUT/$name.json" "$@" >"$OUT/$name.log" 2>&1
    say "bench $name rc=$?"
    grep -E "^\[[0-9]+/[0-9]+\]" "$OUT/$name.log" | cut -c1-230
}

want paper && bench gpu-paper-jax "${PHASER_T_PAPER:-130}" --paper --no-phaser --backends jax --iters 4 \
    --timeout 120 --cases '*/jax/paper_multi/m1/g64'
want quick && bench gpu-quick-jax "${PHASER_T_QUICK:-160}" --backends jax --phaser-backends jax --iters 5 \
    --timeout 60 --cases '*/jax/*64/m1/g64' '*/jax/single64/m4/g64'
want cupy && bench gpu-quick-cupy "${PHASER_T_CUPY:-120}" --backends cupy --no-phaser --iters 5 \
    --timeout 60 --cases '*/cupy/*64/m1/g64' '*/cupy/single64/m4/g64'
want paper-cupy && bench gpu-paper-cupy "${PHASER_T_PAPER_CUPY:-100}" --paper --no-phaser --backends cupy \
    --iters 3 --timeout 90 --cases '*/cupy/paper_multi/m1/g64'
want paper-phaser && bench gpu-paper-phaser "${PHASER_T_PAPER_PHASER:-200}" --paper --backends jax \
    --phaser-backends jax --iters 3 --timeout 190 --cases '*/jax/paper_multi/m1/g64'
if want gradient-variants; then
    for v in grouping.chunk=16 grouping.chunk=32 regularizers=[]; do
        name=${v#grouping.}; name=${name//[^a-z0-9=]/}
        bench "gpu-paper-gradient-${name/=/}" "${PHASER_T_VARIANT:-60}" --paper --no-phaser --backends jax \
            --iters 4 --timeout 55 --cases 'gradient/jax/paper_multi/m1/g64' --set "$v"
    done
fi
if want stream-variants; then
    # patterns kept on the GPU instead of streamed (the default there since session 9):
    # the cost of streaming in s/iter and what it saves in peak memory (NOTES.md 41)
    for e in epie lsqml gradient; do
        bench "gpu-paper-$e-kept" "${PHASER_T_VARIANT:-60}" --paper --no-phaser --backends jax \
            --iters 4 --timeout 55 --cases "$e/jax/paper_multi/m1/g64" --set grouping.stream_patterns=false
    done
fi
if want profile; then
    say "profile: the paper-size gradient engine (whole groups) under jax.profiler"
    timeout "${PHASER_T_PROFILE:-90}" python3 benchmarks/profile_engine.py gradient paper_multi --iters 5 --traced 2 \
        --top 40 --keep-trace "$FINAL/trace-gradient-paper.json.gz" >"$OUT/profile-gradient-paper.txt" 2>&1
    say "profile rc=$?"
    head -50 "$OUT/profile-gradient-paper.txt"
fi
if want suite; then
    say "the whole non-slow suite on the GPU machine"
    workers=$(python3 -c "import xdist" 2>/dev/null && echo "-n 4")  # pytest-xdist, where the image has it
    XLA_PYTHON_CLIENT_PREALLOCATE=false timeout "${PHASER_T_SUITE:-200}" python3 -m pytest -m "not slow" -q \
        -p no:cacheprovider $workers >"$OUT/pytest-suite.txt" 2>&1
    say "suite rc=$? $(tail -1 "$OUT/pytest-suite.txt")"
    grep -E "^(FAILED|ERROR)" "$OUT/pytest-suite.txt" | head -20
fi
say "done"
