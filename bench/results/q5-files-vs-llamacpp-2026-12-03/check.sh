#!/usr/bin/env bash
# Q5_0 / Q5_1 / Q5_K files made by llama.cpp's llama-quantize, read by pagedllm (exact and fast CPU modes) and by
# llama.cpp (llama-completion), greedy 24 tokens from the same prompt. A decoder with a wrong bit order gives
# unrelated text from the first token; agreement for many tokens (until a near-tie flips, expected between
# different arithmetic: llama.cpp's int8 activations are closest to our fast mode) shows the files are read alike.
# Usage (from the repo root, after `npm run build` and a llama.cpp CPU build with llama-completion and llama-quantize):
#   bash bench/results/q5-files-vs-llamacpp-2026-12-03/check.sh WORKDIR > OUT.txt
set -euo pipefail
W=${1:?workdir}; mkdir -p "$W"
B=${LLAMACPP_BIN:-$HOME/.cache/pagedllm-peers/llamacpp-cpu/build/bin}
SMOL=$HOME/.cache/pagedllm/models/SmolLM2-135M-Instruct.Q4_1.gguf
here=$(cd "$(dirname "$0")" && pwd)
# The default model has 576-wide rows (not a multiple of 256, so llama-quantize gives it no K-quants): Q5_K is
# checked on a small random Llama with 512-wide rows and the same tokenizer.
python3 "$here/make_small_random_gguf.py" "$SMOL" "$W/small.f16.gguf"
for t in Q5_K_S Q5_K_M Q5_0 Q5_1; do "$B/llama-quantize" "$W/small.f16.gguf" "$W/small.$t.gguf" $t 2 >"$W/q-small-$t.log" 2>&1; done
for t in Q5_K_M Q5_0 Q5_1; do "$B/llama-quantize" --allow-requantize "$SMOL" "$W/smol.$t.gguf" $t 2 >"$W/q-smol-$t.log" 2>&1; done
P="The quick brown fox jumps over"
for f in small.Q5_K_S small.Q5_K_M small.Q5_0 small.Q5_1 smol.Q5_0 smol.Q5_1 smol.Q5_K_M; do
  types=$(python3 - "$W/$f.gguf" <<'PY'
import sys, collections
sys.path.insert(0, __import__('os').path.expanduser('~/.cache/pagedllm-peers/llamacpp-cpu/src/gguf-py'))
import gguf
r = gguf.GGUFReader(sys.argv[1])
print(dict(collections.Counter(t.tensor_type.name for t in r.tensors)))
PY
)
  echo "== $f $types"
  echo "llama.cpp: $("$B/llama-completion" -m "$W/$f.gguf" -p "$P" -n 24 --temp 0 -t 2 --no-warmup -no-cnv --simple-io 2>/dev/null | tr '\n' ' ' | sed "s/^$P//")"
  for p in exact fast; do
    echo "ours $p: $(node dist/cli.js generate --model "$W/$f.gguf" --temperature 0 --max-tokens 24 --cpu-precision $p --quiet --no-stream "$P" | tr '\n' ' ')"
  done
done
