#!/usr/bin/env bash
# Issue 14's thread scaling on the lent GPU machine's CPUs (16 cores; this project's own machine has 2): our
# single-stream CPU decode at 1, 2, 4, 8 and 16 threads beside llama.cpp's, on the default model, via
# bench/cpu-thread-scaling.sh. No cargo there, and one call carries at most 64 MiB, so it takes two calls on the
# same warm machine (prepare them with `bash scripts/gpu/device-cpu-threads.sh pack` here):
#   call 1, carry [.gpu-model-a, .gpu-shared]:  bash scripts/gpu/device-cpu-threads.sh stash
#       stashes the model's first part in /tmp/smol and starts llama.cpp's CPU build (../shared/bench/llamacpp-cpu.sh,
#       copied into .gpu-shared/) in the background;
#   call 2, carry [.gpu-model-b, .gpu-cpu-bin]: bash scripts/gpu/device-cpu-threads.sh run
#       joins the model, waits for the build, runs llama.cpp's own batched figures at 8 threads and the scaling
#       bench; results under $OUT.
set -uo pipefail
MODE=${1:?pack|stash|run}
LB=/tmp/lcpu
case $MODE in
pack)
  # Here: the two halves of the default model, the peer's build script and source, our CPU bench binary.
  M=$HOME/.cache/pagedllm/models/SmolLM2-135M-Instruct.Q4_1.gguf
  SHARED=${SHARED:-$(cd "$(dirname "$0")/../.." && pwd)/../shared}
  rm -rf .gpu-model-a .gpu-model-b .gpu-shared .gpu-cpu-bin
  mkdir -p .gpu-model-a .gpu-model-b .gpu-shared/bench .gpu-shared/device/llamacpp .gpu-cpu-bin
  half=$(( $(stat -c %s "$M") / 2 ))
  head -c $half "$M" >.gpu-model-a/smollm2.part-a
  tail -c +$((half + 1)) "$M" >.gpu-model-b/smollm2.part-b
  cp "$SHARED/bench/llamacpp-cpu.sh" .gpu-shared/bench/
  cp "$SHARED/device/llamacpp/llama.cpp-0c1e570.tar.xz" .gpu-shared/device/llamacpp/
  # Compressed: the model half, the tree and the binary must fit one call's carry.
  cargo build --release -q -p pagedllm-bench && strip -o /tmp/pagedllm-bench-cpu target/release/pagedllm-bench \
    && gzip -9 -c /tmp/pagedllm-bench-cpu >.gpu-cpu-bin/pagedllm-bench.gz
  sha256sum "$M" | cut -d' ' -f1 >.gpu-model-b/sha256
  du -sh .gpu-model-a .gpu-model-b .gpu-shared .gpu-cpu-bin
  ;;
stash)
  mkdir -p /tmp/smol && cp .gpu-model-a/smollm2.part-a /tmp/smol/ && ls -la /tmp/smol
  lscpu | grep -E "Model name|^CPU\(s\)|Thread|Core|Socket|NUMA node\(s\)|L3"
  # The build alone: llamacpp-cpu.sh builds, then fails on the missing model (harmless; it runs again in `run`).
  cp -r .gpu-shared /tmp/lcpu-shared
  LLAMACPP_CPU_BUILD=$LB setsid nohup bash /tmp/lcpu-shared/bench/llamacpp-cpu.sh /nonexistent.gguf 2 /tmp/lcpu-first \
    >/tmp/lcpu-build.log 2>&1 </dev/null &
  echo "llama.cpp build started"
  ;;
run)
  FINAL=${OUT:-/tmp/out}
  gunzip -c .gpu-cpu-bin/pagedllm-bench.gz >/tmp/pagedllm-bench-cpu && chmod +x /tmp/pagedllm-bench-cpu
  M=/tmp/smol/SmolLM2-135M-Instruct.Q4_1.gguf
  cat /tmp/smol/smollm2.part-a .gpu-model-b/smollm2.part-b >$M
  [ "$(sha256sum $M | cut -d' ' -f1)" = "$(cat .gpu-model-b/sha256)" ] || { echo "model parts do not join to the default model"; exit 1; }
  for _ in $(seq 60); do [ -x $LB/build/bin/llama-bench ] && [ -x $LB/build/bin/llama-batched-bench ] && break; sleep 5; done
  [ -x $LB/build/bin/llama-bench ] || { echo "llama.cpp build not done"; tail -5 /tmp/lcpu-first/build.log; exit 1; }
  S=/tmp/scaling && rm -rf $S && mkdir -p $S
  lscpu >"$FINAL/lscpu.txt"
  # llama.cpp's usual figures (llama-bench and batched 1/16/64) at 8 threads, and ours at the same batches.
  LLAMACPP_CPU_BUILD=$LB bash /tmp/lcpu-shared/bench/llamacpp-cpu.sh $M 8 /tmp/lcpu-t8 >"$FINAL/llamacpp-t8.jsonl"
  /tmp/pagedllm-bench-cpu throughput --model $M --batch 1,16,64 --input-len 128 --output-len 128 --threads 8 \
    --cpu-precision fast --out "$FINAL/ours-fast-t8-batches.json" >/dev/null 2>&1
  MODEL=$M LLAMACPP_BIN=$LB/build/bin THREAD_COUNTS=${THREAD_COUNTS:-1,2,4,8,16} \
    bash bench/cpu-thread-scaling.sh $S "${ROUNDS:-2}" /tmp/pagedllm-bench-cpu >/dev/null
  # The device tool returns at most 8 files: the runs as one archive, the summary beside it.
  cp $S/summary.json "$FINAL/scaling-summary.json" && tar czf "$FINAL/scaling.tgz" -C $S .
  python3 - "$FINAL/scaling-summary.json" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
print("isa", s["cpu_isa"])
for t, e in s["threads"].items():
    print(t, {w: (v.get("decode_tok_s"), v.get("decode_speedup"), v.get("decode_vs_llamacpp")) for w, v in e.items()})
PY
  ;;
esac
