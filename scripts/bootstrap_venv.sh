#!/usr/bin/env bash
# Create or refresh .venv with the pinned stack (see docs/stack.md for why each pin).
# Idempotent: a stamp file records the hash of the inputs, so a second run is instant.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3.11}
VENV=.venv
CACHE=.cache
STAMP=$VENV/.nextplay-stamp
HOROVOD_VERSION=0.28.1

inputs_hash() { cat setup.py requirements/*.txt scripts/bootstrap_venv.sh | sha256sum | cut -c1-16; }

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$(inputs_hash)" ]; then
  exit 0
fi

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP="$VENV/bin/python -m pip"
$PIP install -q --upgrade pip 'setuptools>=77' wheel
$PIP install -q -r requirements/pinned.txt
$PIP install -q --no-deps -e .

# Horovod: sdist only, needs C++17 for torch >= 2.1; build once, cache the wheel.
if ! $VENV/bin/python -c 'import horovod.torch' 2>/dev/null; then
  mkdir -p "$CACHE/wheels"
  wheel=$(ls "$CACHE"/wheels/horovod-$HOROVOD_VERSION-*.whl 2>/dev/null | head -1 || true)
  if [ -z "$wheel" ]; then
    src=$(mktemp -d)
    $PIP download -q --no-binary :all: --no-deps -d "$src" horovod==$HOROVOD_VERSION
    tar xzf "$src"/horovod-$HOROVOD_VERSION.tar.gz -C "$src"
    sed -i 's/set(CMAKE_CXX_STANDARD 14)/set(CMAKE_CXX_STANDARD 17)/' \
      "$src"/horovod-$HOROVOD_VERSION/CMakeLists.txt \
      "$src"/horovod-$HOROVOD_VERSION/horovod/torch/CMakeLists.txt
    gpu_ops=""
    if command -v nvidia-smi >/dev/null 2>&1; then gpu_ops="NCCL"; fi
    CMAKE_POLICY_VERSION_MINIMUM=3.5 MAKEFLAGS=-j"$(nproc)" HOROVOD_WITH_PYTORCH=1 \
    HOROVOD_WITHOUT_TENSORFLOW=1 HOROVOD_WITHOUT_MXNET=1 HOROVOD_WITH_GLOO=1 \
    HOROVOD_WITHOUT_MPI=1 HOROVOD_CPU_OPERATIONS=GLOO ${gpu_ops:+HOROVOD_GPU_OPERATIONS=$gpu_ops} \
      $PIP wheel -q --no-build-isolation --no-deps -w "$CACHE/wheels" "$src"/horovod-$HOROVOD_VERSION
    rm -rf "$src"
    wheel=$(ls "$CACHE"/wheels/horovod-$HOROVOD_VERSION-*.whl | head -1)
  fi
  $PIP install -q --no-deps "$wheel"
  $PIP install -q cloudpickle psutil pyyaml packaging cffi
fi

inputs_hash > "$STAMP"
echo "venv ready: $VENV"
