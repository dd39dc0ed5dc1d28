#!/usr/bin/env python3
"""Writes tokenizer.json + tokenizer_config.json for a GPT-2-style BPE vocabulary stored in a GGUF file (the
default SmolLM2 model), so a random-weight HF checkpoint made on the GPU machine can carry the default model's
tokenizer (scripts/gpu/build-npm-cuda-app.sh). Needs `pip install gguf tokenizers` (no torch).
Usage: gguf_tokenizer_to_hf.py MODEL.gguf OUTDIR"""
import json
import os
import sys

from gguf import GGUFReader
from tokenizers import Tokenizer, decoders, models, pre_tokenizers


def main(gguf_path, out):
    r = GGUFReader(gguf_path)

    def strings(name):
        f = r.fields[name]
        return [bytes(f.parts[i]).decode("utf-8") for i in f.data]

    def scalar(name):
        f = r.fields[name]
        return int(f.parts[f.data[0]][0])

    kind = bytes(r.fields["tokenizer.ggml.model"].parts[-1]).decode()
    if kind != "gpt2":
        sys.exit(f"{gguf_path}: tokenizer.ggml.model is {kind!r}; only gpt2 (byte-level BPE) is handled")
    tokens, merges = strings("tokenizer.ggml.tokens"), strings("tokenizer.ggml.merges")
    tok = Tokenizer(models.BPE({t: i for i, t in enumerate(tokens)}, [tuple(m.split(" ", 1)) for m in merges]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    os.makedirs(out, exist_ok=True)
    tok.save(os.path.join(out, "tokenizer.json"))
    config = {
        "bos_token": tokens[scalar("tokenizer.ggml.bos_token_id")],
        "eos_token": tokens[scalar("tokenizer.ggml.eos_token_id")],
        "chat_template": bytes(r.fields["tokenizer.chat_template"].parts[-1]).decode(),
    }
    with open(os.path.join(out, "tokenizer_config.json"), "w") as f:
        json.dump(config, f)
    print(f"{len(tokens)} tokens, {len(merges)} merges -> {out}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
