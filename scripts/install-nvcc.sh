#!/usr/bin/env bash
# Installs nvcc (CUDA 13.0, matching the GPU machines' driver) from NVIDIA's PyPI wheels into
# ~/.cache/pagedllm/cuda-nvcc and prints the nvcc path. No GPU, driver or root needed: the `cuda` feature
# only compiles kernels to PTX with it. Idempotent.
set -euo pipefail
DEST=${PAGEDLLM_NVCC_DIR:-$HOME/.cache/pagedllm/cuda-nvcc}
NVCC_BIN=$DEST/nvidia/cu13/bin/nvcc
if [ ! -x "$NVCC_BIN" ] || [ ! -e "$DEST/nvidia/cu13/nvvm/bin/cicc" ]; then
  python3 -m pip install --quiet --disable-pip-version-check --no-deps --target "$DEST" \
    "nvidia-cuda-nvcc==13.0.88" "nvidia-cuda-crt==13.0.88" "nvidia-cuda-runtime==13.0.96" \
    "nvidia-cuda-cccl==13.0.85" "nvidia-nvvm==13.0.88" >&2
fi
"$NVCC_BIN" --version >/dev/null
echo "$NVCC_BIN"
