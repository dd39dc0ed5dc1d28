#!/usr/bin/env bash
# Builds what scripts/gpu/device-run.sh runs on the GPU machine into .gpu-bin/ (git-ignored), and packs it as
# .gpu-bin-pack/gpu-bin.tgz (name that in the device tool's `carry`; see the end). Needs nvcc:
# scripts/install-nvcc.sh provides one from PyPI wheels.
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
# The binaries (~60 MB) plus the tree pass the device tool's 64 MiB carry limit: carry this tarball instead
# (`.gpu-bin-pack`, git-ignored) and untar it first on the device: `tar -xzf .gpu-bin-pack/gpu-bin.tgz && ...`.
mkdir -p .gpu-bin-pack && tar -czf .gpu-bin-pack/gpu-bin.tgz .gpu-bin && ls -la .gpu-bin-pack
