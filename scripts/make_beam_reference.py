#!/usr/bin/env python3
"""Beam search reference outputs of HF transformers on the default model, for pagedllm's beam search test.

HF transformers loads the very same GGUF file as pagedllm (dequantized to float32, like
`scripts/make_parity_fixture.py`) and runs `generate(num_beams=k, do_sample=False, length_penalty=...,
early_stopping=..., num_return_sequences=k)` for every case. For each returned beam we record its generated
tokens (the EOS included when it ended on one; the length comes from `beam_indices`, so padding never counts)
and HF's `sequences_scores` (the length-normalized score). Stop-string cases add
`generate(stop_strings=[...], tokenizer=tok)` (HF's `StopStringCriteria`: a beam ends when a stop string ends inside
its last token, the prompt's text included). The Rust test `crates/engine/tests/beam_search.rs`
runs the same requests through pagedllm's engine and compares.

Regenerate (once, by a developer; CI never runs this):
    python3 -m venv /tmp/hfenv && /tmp/hfenv/bin/pip install torch transformers gguf accelerate numpy
    npm run fetch-model        # puts the GGUF in ~/.cache/pagedllm/models/
    /tmp/hfenv/bin/python scripts/make_beam_reference.py \
        --gguf ~/.cache/pagedllm/models/SmolLM2-135M-Instruct.Q4_1.gguf \
        --out crates/engine/tests/fixtures/beam_smollm2.json
    # only the stop-string cases, merged into the existing fixture (its other cases are kept as they are):
    /tmp/hfenv/bin/python scripts/make_beam_reference.py --gguf ... --out <fixture> --only-stop-cases
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
    "def fibonacci(n):",
    "Once upon a time, in a small village,",
]
CHAT = [{"role": "user", "content": "What is 2+2?"}]
MAX_NEW_TOKENS = 20
# (beam width, length_penalty, early_stopping)
SETTINGS = [
    (2, 1.0, False),
    (4, 1.0, False),
    (8, 1.0, False),
    (4, 0.0, "never"),
    (4, 2.0, True),
    (8, -0.5, "never"),
]
# (prompt index (CHAT is last), beam width, length_penalty, early_stopping, stop strings): a stop inside one token,
# one spanning tokens, one that starts in the prompt's text, several at once.
STOP_CASES = [
    (0, 4, 1.0, False, ["."]),
    (0, 2, 1.0, False, ["is Paris"]),
    (1, 4, 1.0, False, ["return"]),
    (1, 2, 0.0, "never", ["ci(n -"]),
    (2, 4, 2.0, True, ["Elara", "wise"]),
    (3, 4, 1.0, False, ["="]),
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--only-stop-cases", action="store_true",
                    help="regenerate only the stop-string cases and merge them into the existing --out fixture")
    args = ap.parse_args()
    torch.set_num_threads(1)
    path = os.path.expanduser(args.gguf)
    d, name = os.path.dirname(path), os.path.basename(path)
    sha = hashlib.sha256(open(path, "rb").read()).hexdigest()
    tok = AutoTokenizer.from_pretrained(d, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=name, dtype=torch.float32)
    model.eval()
    torch.set_grad_enabled(False)
    eos = model.generation_config.eos_token_id
    eos = eos if isinstance(eos, list) else [eos]

    prompts = [{"prompt": p, "chat": False, "prompt_ids": tok(p, add_special_tokens=True)["input_ids"]} for p in PROMPTS]
    chat_text = tok.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
    prompts.append({"prompt": chat_text, "chat": True, "prompt_ids": tok(chat_text, add_special_tokens=False)["input_ids"]})

    runs = [] if args.only_stop_cases else [(p, k, lp, es, None) for p in prompts for k, lp, es in SETTINGS]
    runs += [(prompts[i], k, lp, es, stops) for i, k, lp, es, stops in STOP_CASES]
    cases = []
    for p, k, lp, es, stops in runs:
        ids = torch.tensor([p["prompt_ids"]])
        extra = {} if stops is None else {"stop_strings": stops, "tokenizer": tok}
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            num_beams=k,
            num_return_sequences=k,
            do_sample=False,
            temperature=None,
            top_p=None,
            top_k=None,
            length_penalty=lp,
            early_stopping=es,
            max_new_tokens=MAX_NEW_TOKENS,
            eos_token_id=eos,
            pad_token_id=eos[0],
            return_dict_in_generate=True,
            output_scores=True,
            **extra,
        )
        plen = ids.shape[1]
        beams = []
        for i in range(k):
            n = int((out.beam_indices[i] >= 0).sum())
            gen = [int(t) for t in out.sequences[i, plen:plen + n]]
            beams.append({"token_ids": gen, "score": float(out.sequences_scores[i]), "text": tok.decode(gen)})
        case = {
            "prompt": p["prompt"], "chat": p["chat"], "prompt_ids": p["prompt_ids"],
            "beam_width": k, "length_penalty": lp, "early_stopping": es,
            "max_tokens": MAX_NEW_TOKENS, "beams": beams,
        }
        if stops is not None:
            case["stop"] = stops
        cases.append(case)
        print(k, lp, es, json.dumps(p["prompt"][:30]), "->", json.dumps(beams[0]["text"][:50]))

    if args.only_stop_cases:
        old = json.load(open(args.out))
        if old["model_sha256"] != sha:
            raise SystemExit(f"{args.out} was made from another model file")
        cases = [c for c in old["cases"] if "stop" not in c] + cases
    json.dump({
        "model_file": name,
        "model_sha256": sha,
        "generator": f"transformers {transformers.__version__}, torch {torch.__version__}, float32, "
                     f"generate(num_beams=k, do_sample=False), max_new_tokens {MAX_NEW_TOKENS}; "
                     f"cases with `stop` add stop_strings=stop, tokenizer=tok",
        "eos_token_ids": eos,
        "cases": cases,
    }, open(args.out, "w"), indent=1)


if __name__ == "__main__":
    main()
