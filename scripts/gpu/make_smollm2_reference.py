#!/usr/bin/env python3
"""HF transformers references on the embedded default model (SmolLM2-135M-Instruct Q4_1 GGUF), in the format of
`../shared/device/hf_peer.py reference`, for `pagedllm-bench parity` on the GPU (the bf16 check of issue 4).

HF loads the same GGUF (dequantized to float32, then cast to --dtype: bf16 is the dequantized weights rounded to
bf16, which is what pagedllm's CUDA backend uploads), runs greedy decoding on natural-text prompts, and records the
teacher-forced log-prob of every token and the top-5 log-probs at each generated position. Runs on the CPU, so it
is made here (torch is not on the GPU machine's path to this model) and carried with the run:

    python3 -m venv /tmp/hfvenv && /tmp/hfvenv/bin/pip install torch transformers gguf accelerate
    for dt in bf16 fp32; do /tmp/hfvenv/bin/python scripts/gpu/make_smollm2_reference.py \
        --gguf ~/.cache/pagedllm/models/SmolLM2-135M-Instruct.Q4_1.gguf --dtype $dt --out .gpu-model/ref-$dt.json; done
"""
import argparse
import json
import os
import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from make_parity_fixture import PROMPTS as FIXTURE_PROMPTS  # noqa: E402  (the CPU parity fixture's prompts)

PROMPTS = FIXTURE_PROMPTS + ["Water boils at a temperature of", "The quick brown fox"]


@torch.inference_mode()
def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--dtype", choices=["bf16", "fp32"], required=True)
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    path = os.path.expanduser(a.gguf)
    d, name = os.path.dirname(path), os.path.basename(path)
    dtype = torch.bfloat16 if a.dtype == "bf16" else torch.float32
    tok = AutoTokenizer.from_pretrained(d, gguf_file=name)
    m = AutoModelForCausalLM.from_pretrained(d, gguf_file=name, dtype=dtype).eval()
    items = []
    for text in PROMPTS:
        ids = torch.tensor([tok(text, add_special_tokens=True)["input_ids"]])
        P = ids.shape[1]
        gen = m.generate(ids, max_new_tokens=a.steps, min_new_tokens=a.steps, do_sample=False, pad_token_id=0)
        full = gen[0]
        lp = torch.log_softmax(m(full[None]).logits[0].float(), -1)
        tok_lp = lp[:-1].gather(-1, full[1:, None])[:, 0]
        top = lp.topk(5, dim=-1)
        items.append(dict(
            prompt=full[:P].tolist(), greedy=full[P:].tolist(),
            prompt_logprobs=[None] + tok_lp[:P - 1].tolist(),
            greedy_logprobs=tok_lp[P - 1:].tolist(),
            top5_ids=top.indices[P - 1:-1].tolist(), top5_logprobs=top.values[P - 1:-1].tolist()))
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(dict(model=name, dtype=a.dtype, steps=a.steps, items=items), f)
    print(json.dumps(dict(out=a.out, prompts=len(items), steps=a.steps, dtype=a.dtype)))


if __name__ == "__main__":
    main()
