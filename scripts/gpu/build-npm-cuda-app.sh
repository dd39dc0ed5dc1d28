#!/usr/bin/env bash
# Builds .gpu-app/ (git-ignored; carry it) for scripts/gpu/npm-cuda-check.sh: the packed main package and the
# `-cuda` platform package installed into an empty app the way a user installs them (no cargo on PATH), plus a
# Node binary (the GPU machine has none) and a tokenizer for a random-weight model made there. Needs the CUDA
# addon built first: `PAGEDLLM_CUDA=1 npm run build:native` (NVCC from scripts/install-nvcc.sh).
# Usage: scripts/gpu/build-npm-cuda-app.sh [TOKENIZER_DIR]   (a dir with tokenizer.json + tokenizer_config.json;
#        npm-cuda-check.sh needs it, the `serve` mode of device-run.sh does not: it serves with --skip-tokenizer-init)
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
TOK=${1:-}
node -e 'const b=require("./bindings/pagedllm.linux-x64-gnu.node").backends(); if(!b.includes("cuda")) {console.error("bindings/ addon has no cuda backend: build it with PAGEDLLM_CUDA=1"); process.exit(1)}'
PACK=$(mktemp -d); APP=$(mktemp -d)
node scripts/package/pack.mjs --out "$PACK" --main
node scripts/package/pack.mjs --out "$PACK" --platform linux-x64-gnu-cuda --binary bindings/pagedllm.linux-x64-gnu.node
echo '{"name":"gpu-app","private":true,"type":"module"}' > "$APP/package.json"
# Only the -cuda package: it serves the CPU too, and the check must show that the CUDA one is the one in use.
(cd "$APP" && PAGEDLLM_SKIP_MODEL_FETCH=1 PATH=/usr/bin:/bin npm install --no-audit --no-fund --omit=optional \
  "$PACK"/pagedllm-0.1.0.tgz "$PACK"/pagedllm-linux-x64-gnu-cuda-0.1.0.tgz)
rm -rf .gpu-app && mkdir -p .gpu-app
tar -C "$APP" -cJf .gpu-app/app.tar.xz .
xz -T2 -6 -c "$(readlink -f "$(command -v node)")" > .gpu-app/node.xz
[ -z "$TOK" ] || cp "$TOK"/tokenizer.json "$TOK"/tokenizer_config.json .gpu-app/
ls -la "$PACK" .gpu-app
