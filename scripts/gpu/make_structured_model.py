#!/usr/bin/env python3
"""An 8B-shaped random-weight checkpoint with the default model's tokenizer and vocabulary, for the structured
outputs benchmark on the GPU (issue 10: grammar masks need real tokens to work on).

  python3 scripts/gpu/make_structured_model.py --tokenizer .gpu-bin/structured-tokenizer --out DIR [--seed 0]

The shape is hf_peer.py's llama-8b (from ../shared/device/hf_peer.py, copied into .gpu-bin/ by
build-device-binaries.sh) with vocab_size 49152, the size of SmolLM2's vocabulary; --tokenizer is a folder with
the tokenizer.json / tokenizer_config.json that `pagedllm-bench export-tokenizer` wrote from the default model.
BOS/EOS ids are SmolLM2's (1 = <|im_start|>, 2 = <|im_end|>). Weights are random bf16, made on the GPU with torch.
Prints one JSON line.
"""
import argparse, json, os, shutil, sys, time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", ".gpu-bin"))
from hf_peer import SHAPES  # noqa: E402  (the one place the 8B shape is written down)

VOCAB = 49152


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    from transformers import LlamaConfig, LlamaForCausalLM
    shape = dict(SHAPES["llama-8b"], vocab_size=VOCAB)
    cfg = LlamaConfig(**shape, bos_token_id=1, eos_token_id=2, torch_dtype="bfloat16")
    torch.manual_seed(a.seed)
    t = time.perf_counter()
    with torch.device("cuda"):
        m = LlamaForCausalLM(cfg).to(torch.bfloat16)
    m.generation_config.eos_token_id = None
    m.save_pretrained(a.out, safe_serialization=True, max_shard_size="5GB")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(a.tokenizer, name), os.path.join(a.out, name))
    print(json.dumps(dict(verb="make-structured-model", out=a.out, vocab_size=VOCAB,
                          params=sum(p.numel() for p in m.parameters()), seconds=round(time.perf_counter() - t, 2))))


if __name__ == "__main__":
    main()
