#!/usr/bin/env bash
# Builds what scripts/gpu/device-run.sh runs on the GPU machine into .gpu-bin/ (git-ignored; name it in the
# device tool's `carry`). Needs nvcc: scripts/install-nvcc.sh provides one from PyPI wheels.
set -euo pipefail
cd "$(dirname "$0")/../.."
export NVCC=${NVCC:-$(bash scripts/install-nvcc.sh)}
mkdir -p .gpu-bin
true  # .gpu-bin/ is in .gitignore
cargo build --release -p pagedllm-bench --features cuda
cp target/release/pagedllm-bench .gpu-bin/ && strip .gpu-bin/pagedllm-bench
test_bin=$(cargo test --release -p pagedllm-engine --features cuda --test gpu_decoder --no-run --message-format=json 2>/dev/null \
  | python3 -c 'import json,sys; print([j["executable"] for j in map(json.loads, sys.stdin) if j.get("executable") and j["target"]["name"]=="gpu_decoder"][0])')
cp "$test_bin" .gpu-bin/gpu_decoder && strip .gpu-bin/gpu_decoder
cp ../shared/device/hf_peer.py .gpu-bin/
ls -la .gpu-bin
