#!/usr/bin/env bash
# A/B(/C...) of builds of pagedllm-bench on the GPU machine, interleaved in one call (same machine, same model):
#   bash scripts/gpu/ab-binaries.sh A_BIN B_BIN [C_BIN ...]   (results under $OUT; llama-8b random bf16)
#   FULL=1 ...: single stream, 128 x 512/128 and 1000 x 1024/128, two interleaved rounds (a refactor's A/B)
#   DECODE=1 ...: low-batch decode (batches 1, 4, 16 of 128/128, ROUNDS rounds, default 3), then 128 x 512/128 and
#                 1000 x 1024/128 once each (a decode-kernel change's A/B; NO_1000=1 leaves the last out)
# Used to decide whether a change is kept: build each variant here, carry them all, compare in one call.
set -uo pipefail
BINS=("$@")
label_of() { printf "\\x$(printf %x $((65 + $1)))"; }  # 0 -> A, 1 -> B, ...
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:/usr/local/nvidia/lib64:${LD_LIBRARY_PATH:-}
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
dir=/tmp/models/llama-8b
[ -d $dir ] || python3 .gpu-bin/hf_peer.py make-model --shape llama-8b --out $dir >/dev/null 2>&1
run() { # label, binary, args...
  local label=$1 bin=$2; shift 2
  timeout 200 $bin throughput --device cuda --model $dir --out "$OUT/$label.json" "$@" 2>&1 | grep -E '^\{"batch' \
    | python3 -c "import sys,json; d=json.loads(sys.stdin.read()); print('$label', round(d['output_tokens_per_s'],1), 'out tok/s; decode', round(d['decode_tokens_per_s'],1), d.get('step_phase_ms'))"
}
if [ -n "${DECODE:-}" ]; then
  for round in $(seq ${ROUNDS:-3}); do
    for b in 1 4 16; do
      for i in "${!BINS[@]}"; do
        run "$(label_of $i)-b$b-r$round" "${BINS[$i]}" --batch $b --input-len 128 --output-len 128
      done
    done
  done
  for i in "${!BINS[@]}"; do
    run "$(label_of $i)-128x512" "${BINS[$i]}" --batch 128 --input-len 512 --output-len 128 --max-num-batched-tokens 8192
    [ -n "${NO_1000:-}" ] || run "$(label_of $i)-1000x1024" "${BINS[$i]}" --batch 1000 --max-num-seqs 256 --input-len 1024 \
      --output-len 128 --max-num-batched-tokens 8192 --no-warmup
  done
  exit 0
fi
if [ -n "${FULL:-}" ]; then
  # The three workloads a refactor must keep (single stream, 128 x 512/128, 1000 x 1024/128 with 256 running),
  # each binary in turn within a round, two rounds.
  for round in 1 2; do
    for i in "${!BINS[@]}"; do
      run "$(label_of $i)-b1-r$round" "${BINS[$i]}" --batch 1 --input-len 128 --output-len 128
      run "$(label_of $i)-128x512-r$round" "${BINS[$i]}" --batch 128 --input-len 512 --output-len 128 --max-num-batched-tokens 8192
      run "$(label_of $i)-1000x1024-r$round" "${BINS[$i]}" --batch 1000 --max-num-seqs 256 --input-len 1024 --output-len 128 \
        --max-num-batched-tokens 8192 --no-warmup
    done
  done
  exit 0
fi
for round in 1 2; do
  for i in "${!BINS[@]}"; do
    run "$(label_of $i)-128x512-r$round" "${BINS[$i]}" --batch 128 --input-len 512 --output-len 128 --max-num-batched-tokens 8192
  done
done
for i in "${!BINS[@]}"; do
  run "$(label_of $i)-32x512" "${BINS[$i]}" --batch 32 --input-len 512 --output-len 128 --max-num-batched-tokens 8192
  run "$(label_of $i)-b1" "${BINS[$i]}" --batch 1 --input-len 128 --output-len 128
done
