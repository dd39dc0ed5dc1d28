#!/usr/bin/env python3
"""Reference outputs of HF transformers on the embedded default model, for pagedllm's parity test.

HF transformers loads the very same GGUF file (it dequantizes every tensor to float32 and undoes llama.cpp's
Q/K permutation itself), tokenizes each prompt, and runs greedy decoding for 32 steps in float32. For every
step we record the chosen token and the top-5 log-probs (log_softmax of the raw logits). The Rust test
`crates/engine/tests/parity_hf.rs` checks pagedllm gives the same tokens and log-probs within 1e-3.

Regenerate (once, by a developer; CI never runs this):
    python3 -m venv /tmp/pyref && /tmp/pyref/bin/pip install torch transformers gguf numpy accelerate
    npm run fetch-model        # puts the GGUF in ~/.cache/pagedllm/models/
    /tmp/pyref/bin/python scripts/make_parity_fixture.py \
        --gguf ~/.cache/pagedllm/models/SmolLM2-135M-Instruct.Q4_1.gguf \
        --out crates/engine/tests/fixtures/parity_smollm2.json
"""
import argparse
import hashlib
import json
import os

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

PROMPTS = [
    "The capital of France is",
    "Hello, my name is",
    "def fibonacci(n):",
    "Once upon a time, in a small village,",
    "The three primary colors are",
    "1, 2, 3, 4, 5,",
]
CHAT = [{"role": "user", "content": "What is 2+2?"}]
STEPS = 32
TOP = 5


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    path = os.path.expanduser(args.gguf)
    d, name = os.path.dirname(path), os.path.basename(path)
    sha = hashlib.sha256(open(path, "rb").read()).hexdigest()
    tok = AutoTokenizer.from_pretrained(d, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=name, torch_dtype=torch.float32)
    model.eval()
    torch.set_grad_enabled(False)

    cases = [{"prompt": p, "chat": False, "prompt_ids": tok(p, add_special_tokens=True)["input_ids"]} for p in PROMPTS]
    chat_text = tok.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
    cases.append({"prompt": chat_text, "chat": True, "messages": CHAT,
                  "prompt_ids": tok(chat_text, add_special_tokens=False)["input_ids"]})

    for c in cases:
        ids = torch.tensor([c["prompt_ids"]])
        out = model(ids, use_cache=True)
        past = out.past_key_values
        logits = out.logits[0, -1]
        gen, tops = [], []
        for _ in range(STEPS):
            lp = torch.log_softmax(logits.double(), dim=-1)
            vals, idx = torch.topk(lp, TOP)
            tops.append([[int(i), float(v)] for i, v in zip(idx, vals)])
            nxt = int(torch.argmax(logits))
            gen.append(nxt)
            out = model(torch.tensor([[nxt]]), past_key_values=past, use_cache=True)
            past = out.past_key_values
            logits = out.logits[0, -1]
        c["greedy_ids"] = gen
        c["greedy_text"] = tok.decode(gen)
        c["top5"] = tops
        print(json.dumps(c["prompt"][:40]), "->", json.dumps(c["greedy_text"][:60]))

    json.dump({
        "model_file": name,
        "model_sha256": sha,
        "generator": f"transformers {transformers.__version__}, torch {torch.__version__}, float32, greedy, {STEPS} steps",
        "steps": STEPS,
        "top": TOP,
        "cases": cases,
    }, open(args.out, "w"), indent=1)


if __name__ == "__main__":
    main()
