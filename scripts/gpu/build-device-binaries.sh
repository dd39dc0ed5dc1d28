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
for t in gpu_decoder seeded_sampling beam_search; do
  test_bin=$(cargo test --release -p pagedllm-engine --features cuda --test $t --no-run --message-format=json 2>/dev/null \
    | python3 -c 'import json,sys; t=sys.argv[1]; print([j["executable"] for j in map(json.loads, sys.stdin) if j.get("executable") and j["target"]["name"]==t][0])' $t)
  cp "$test_bin" .gpu-bin/$t && strip .gpu-bin/$t
done
cp ../shared/device/hf_peer.py .gpu-bin/
# The default model's tokenizer for the structured mode's checkpoint (scripts/gpu/make_structured_model.py).
.gpu-bin/pagedllm-bench export-tokenizer --model "${STRUCTURED_TOKENIZER_MODEL:-$HOME/.cache/pagedllm/models/SmolLM2-135M-Instruct.Q4_1.gguf}" \
  --out .gpu-bin/structured-tokenizer
ls -la .gpu-bin
