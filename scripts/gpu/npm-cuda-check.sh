#!/usr/bin/env bash
# Run ON the GPU machine with .gpu-app/ (scripts/gpu/build-npm-cuda-app.sh) and .gpu-bin/hf_peer.py carried: the
# installed npm packages (main + pagedllm-linux-x64-gnu-cuda, no source build) generate on the GPU through the CLI
# a user runs, `npx pagedllm generate --device cuda`, on a random-weight SmolLM2-shaped checkpoint, and the same
# greedy request on `--device cpu` (the -cuda addon's CPU backend) gives the same tokens in float32.
# Results under $OUT (summary.txt, the JSON outputs).
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
W=/tmp/npm-cuda-check; rm -rf $W && mkdir -p $W/app
xz -dc .gpu-app/node.xz > $W/node && chmod +x $W/node
tar -C $W/app -xJf .gpu-app/app.tar.xz
export PATH=$W:$PATH LD_LIBRARY_PATH=/usr/local/cuda/lib64:/usr/local/nvidia/lib64:${LD_LIBRARY_PATH:-}
log() { echo "== $*" | tee -a "$OUT/summary.txt"; }
log "node $(node --version); packages: $(ls $W/app/node_modules | tr '\n' ' ')"
python3 .gpu-bin/hf_peer.py make-model --shape smollm2-135m --out $W/model --peaked >"$OUT/make-model.log" 2>&1
cp .gpu-app/tokenizer.json .gpu-app/tokenizer_config.json $W/model/
CLI="node $W/app/node_modules/pagedllm/dist/cli.js"
ROOT=$PWD
cd $W/app
node -e 'const p = "pagedllm-linux-x64-gnu-cuda"; console.log("installed", p, require(p + "/package.json").version, "backends", JSON.stringify(require(p).backends()))' 2>&1 | tee -a "$OUT/summary.txt"
for dev in cuda cpu; do
  start=$(date +%s%N)
  timeout 300 $CLI generate --model $W/model --device $dev --dtype float32 --max-tokens 32 --temperature 0 --json \
    "The capital of France is" >"$OUT/generate-$dev.json" 2>"$OUT/generate-$dev.err"
  log "generate --device $dev: exit $? in $(( ($(date +%s%N) - start) / 1000000 )) ms; stderr: $(tail -c 300 "$OUT/generate-$dev.err" | tr '\n' ' ')"
done
timeout 300 $CLI generate --model $W/model --device cuda --max-tokens 16 --temperature 0 "The capital of France is" \
  >"$OUT/generate-cuda-bf16.txt" 2>&1; log "generate --device cuda (bf16, streamed text): exit $?"
node -e '
const fs = require("fs");
const read = (d) => JSON.parse(fs.readFileSync(process.argv[1] + "/generate-" + d + ".json", "utf8"));
const [g, c] = ["cuda", "cpu"].map(read);
const a = g.outputs[0].tokenIds, b = c.outputs[0].tokenIds;
let same = 0; while (same < Math.min(a.length, b.length) && a[same] === b[same]) same++;
console.log(`greedy tokens: cuda ${a.length}, cpu ${b.length}, identical prefix ${same}` + (same === a.length && a.length === b.length ? " (PASS)" : " (FAIL)"));
' "$OUT" 2>&1 | tee -a "$OUT/summary.txt"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee -a "$OUT/summary.txt"
# Issue 15 through the installed packages on the GPU: llm.beamSearch (CUDA = CPU), bestOf, and the server's
# use_beam_search / best_of on `pagedllm serve --device cuda` (scripts/gpu/npm-cuda-beam-check.mjs).
cp "$ROOT/scripts/gpu/npm-cuda-beam-check.mjs" $W/app/
PORT=8723
$CLI serve --model $W/model --device cuda --dtype float32 --gpu-memory-utilization 0.3 --served-model-name m \
  --port $PORT >"$OUT/serve.log" 2>&1 &
SERVER=$!
for _ in $(seq 120); do
  node -e "fetch('http://127.0.0.1:$PORT/health').then((r) => process.exit(r.ok ? 0 : 1), () => process.exit(1))" && break
  sleep 0.5
done
timeout 300 node $W/app/npm-cuda-beam-check.mjs $W/model http://127.0.0.1:$PORT "$OUT/beam-check.json" 2>&1 | tee -a "$OUT/summary.txt"
log "beam/best_of check exit ${PIPESTATUS[0]}"
kill -TERM $SERVER; wait $SERVER; log "server exit $?"
