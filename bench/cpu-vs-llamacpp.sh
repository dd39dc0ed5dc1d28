#!/usr/bin/env bash
# Our CPU decode/prefill beside llama.cpp's, on the same GGUF file and machine, in one run: ROUNDS rounds, each
# running every pagedllm-bench binary given (e.g. an old and a new build, for a refactor's A/B) in both CPU
# precisions, then llama.cpp (../shared/bench/llamacpp-cpu.sh), interleaved so that a noisy stretch of the machine
# hits every contender. The hypervisor's steal time (from /proc/stat) is recorded per run: on the 2-vCPU machines
# it reaches 30%+, and a figure taken under heavy steal is not comparable to one taken without.
#
# Usage: bash bench/cpu-vs-llamacpp.sh OUTDIR ROUNDS BIN [BIN...]
#   env SHARED (../shared), MODEL (default: the default model's cached GGUF), THREADS (2), BATCHES (1,16,64), IN (128), OUTLEN (128),
#       PRECISIONS ("exact fast"; "fast" halves a round's time)
# Writes OUTDIR/<bin-label>-<precision>-r<k>.json, OUTDIR/llamacpp-r<k>.jsonl and OUTDIR/runs.jsonl (one line per
# run: what ran, its steal share, the file). Summarize with: python3 bench/cpu-summary.py OUTDIR
set -euo pipefail
O=${1:?usage: cpu-vs-llamacpp.sh OUTDIR ROUNDS BIN [BIN...]}; R=${2:?rounds}; shift 2
here=$(cd "$(dirname "$0")" && pwd)
MODEL=${MODEL:-$HOME/.cache/pagedllm/models/SmolLM2-135M-Instruct.Q4_1.gguf}
SHARED=${SHARED:-$here/../../shared}  # ../shared beside the checkout
T=${THREADS:-2}; BATCHES=${BATCHES:-1,16,64}; IN=${IN:-128}; OUTLEN=${OUTLEN:-128}
mkdir -p "$O"
cpu_ticks() { awk '/^cpu /{print $2+$3+$4+$5+$6+$7+$8+$9, $9}' /proc/stat; }
# Runs "$@" and appends {label, steal_share, file} to runs.jsonl.
timed() {
  local label=$1 file=$2; shift 2
  read -r t0 s0 < <(cpu_ticks)
  "$@"
  read -r t1 s1 < <(cpu_ticks)
  python3 -c 'import json,sys; t,s=int(sys.argv[3]),int(sys.argv[4]); print(json.dumps({"run": sys.argv[1], "file": sys.argv[2], "steal_share": round(s/t, 3) if t else None}))' \
    "$label" "$file" $((t1 - t0)) $((s1 - s0)) >>"$O/runs.jsonl"
}
for r in $(seq "$R"); do
  for bin in "$@"; do
    label=$(basename "$bin")
    for p in ${PRECISIONS:-exact fast}; do
      f="$O/$label-$p-r$r.json"
      timed "$label $p round $r" "$f" "$bin" throughput --model "$MODEL" --batch "$BATCHES" --input-len "$IN" \
        --output-len "$OUTLEN" --threads "$T" --cpu-precision "$p" --out "$f" >/dev/null 2>&1
    done
  done
  f="$O/llamacpp-r$r.jsonl"
  timed "llama.cpp round $r" "$f" bash -c "bash '$SHARED/bench/llamacpp-cpu.sh' '$MODEL' '$T' /tmp/llamacpp-cpu-run > '$f'"
done
