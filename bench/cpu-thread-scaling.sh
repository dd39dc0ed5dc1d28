#!/usr/bin/env bash
# Single-stream CPU decode and prompt speed at several thread counts, ours beside llama.cpp's on the same GGUF file
# and machine, in one run, rounds interleaved (issue 14's "2, 4 and 8 threads scale"). Needs more cores than this
# project's 2-vCPU machine for the larger counts: scripts/gpu/device-run.sh cpu-threads runs it on the lent GPU
# machine's CPUs.
#
# Usage: bash bench/cpu-thread-scaling.sh OUTDIR ROUNDS BIN
#   env MODEL (default: the default model's cached GGUF), THREAD_COUNTS (1,2,4,8), PRECISIONS (fast exact),
#       LLAMACPP_BIN (a folder holding llama-bench: default, ../shared/bench/llamacpp-cpu.sh's build), IN (128), OUTLEN (128)
# Writes OUTDIR/ours-<precision>-t<T>-r<k>.json, OUTDIR/llamacpp-r<k>.json (llama-bench -o json, every count),
# OUTDIR/cpu.txt (lscpu) and OUTDIR/summary.json (python3 bench/cpu-thread-scaling-summary.py OUTDIR).
set -euo pipefail
O=${1:?usage: cpu-thread-scaling.sh OUTDIR ROUNDS BIN}; R=${2:?rounds}; BIN=${3:?pagedllm-bench binary}
here=$(cd "$(dirname "$0")" && pwd)
MODEL=${MODEL:-$HOME/.cache/pagedllm/models/SmolLM2-135M-Instruct.Q4_1.gguf}
COUNTS=${THREAD_COUNTS:-1,2,4,8}; PRECISIONS=${PRECISIONS:-fast exact}; IN=${IN:-128}; OUTLEN=${OUTLEN:-128}
LB=${LLAMACPP_BIN:-$HOME/.cache/pagedllm-peers/llamacpp-cpu/build/bin}
mkdir -p "$O"
lscpu >"$O/cpu.txt" 2>&1 || true
for r in $(seq "$R"); do
  for t in ${COUNTS//,/ }; do
    for p in $PRECISIONS; do
      "$BIN" throughput --model "$MODEL" --batch 1 --input-len "$IN" --output-len "$OUTLEN" --threads "$t" \
        --cpu-precision "$p" --out "$O/ours-$p-t$t-r$r.json" >/dev/null 2>&1
    done
  done
  "$LB/llama-bench" -m "$MODEL" -t "$COUNTS" -p "$IN" -n "$OUTLEN" -r 3 -o json >"$O/llamacpp-r$r.json" 2>"$O/llamacpp-r$r.err"
done
python3 "$here/cpu-thread-scaling-summary.py" "$O" | tee "$O/summary.json"
