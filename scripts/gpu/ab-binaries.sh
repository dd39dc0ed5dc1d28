#!/usr/bin/env bash
# A/B of two builds of pagedllm-bench on the GPU machine, interleaved in one call (same machine, same model):
#   bash scripts/gpu/ab-binaries.sh A_BIN B_BIN   (results under $OUT; llama-8b random bf16 from hf_peer.py)
# Used to decide whether a kernel change is kept: build B here, keep A from the previous build (both carried).
set -uo pipefail
A=$1; B=$2
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:/usr/local/nvidia/lib64:${LD_LIBRARY_PATH:-}
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
dir=/tmp/models/llama-8b
[ -d $dir ] || python3 .gpu-bin/hf_peer.py make-model --shape llama-8b --out $dir >/dev/null 2>&1
run() { # label, binary, args...
  local label=$1 bin=$2; shift 2
  timeout 200 $bin throughput --device cuda --model $dir --out "$OUT/$label.json" "$@" 2>&1 | grep -E '^\{"batch' \
    | python3 -c "import sys,json; d=json.loads(sys.stdin.read()); print('$label', round(d['output_tokens_per_s'],1), 'out tok/s; decode', round(d['decode_tokens_per_s'],1), d.get('step_phase_ms'))"
}
for round in 1 2; do
  for side in A B; do
    bin=$([ $side = A ] && echo $A || echo $B)
    run "$side-128x512-r$round" $bin --batch 128 --input-len 512 --output-len 128 --max-num-batched-tokens 8192
  done
done
for side in A B; do
  bin=$([ $side = A ] && echo $A || echo $B)
  run "$side-32x512" $bin --batch 32 --input-len 512 --output-len 128 --max-num-batched-tokens 8192
  run "$side-b1" $bin --batch 1 --input-len 128 --output-len 128
done
