#!/usr/bin/env python3
"""Writes crates/engine/tests/fixtures/tokenizer/*.json: expected encodings and chat-template renders from an
implementation independent of pagedllm (HF transformers' GGUF tokenizer conversion + its Jinja2 chat templating).

Run with a Python that has `transformers`, `tokenizers` and `gguf` (e.g. /tmp/pyref/bin/python):

    python scripts/make_tokenizer_fixture.py [path/to/SmolLM2-135M-Instruct.Q4_1.gguf]

Outputs (small; the 49k-token vocabulary is NOT copied -- the Rust test reads the real GGUF from the model cache):
  smollm2_expected.json  encodings, decodes and ChatML renders for SmolLM2-135M-Instruct's tokenizer.
  spm_synthetic.json     a tiny SentencePiece-BPE ("llama") vocabulary with scores, plus the encodings transformers'
                         GGUF "llama" builder (LlamaTokenizer + merges generated from scores) gives for it.
"""

import json
import os
import sys

from tokenizers import pre_tokenizers
from transformers import AutoTokenizer
from transformers.integrations.gguf.gguf_tokenizer_mapping import convert_gguf_tokenizer

HERE = os.path.dirname(os.path.abspath(__file__))
OUT_DIR = os.path.join(HERE, "..", "crates", "engine", "tests", "fixtures", "tokenizer")
DEFAULT_GGUF = os.path.expanduser("~/.cache/pagedllm/models/SmolLM2-135M-Instruct.Q4_1.gguf")

TEXTS = [
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.",
    "Digits 12345 and 3.14159 and 2024-11-21",
    "héllo wörld — ünïcödé ñ 日本語のテキスト 中文",
    "emoji 😀🎉👍🏽 and 🇫🇷 flags",
    "  leading spaces, tabs\t\tand\n\nnewlines   trailing   ",
    "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
    "code: fn main() { println!(\"{}\", x + 1); }",
    "it's they're we've I'm you'll he'd",
    "",
]

CONVERSATIONS = [
    [{"role": "user", "content": "Hi there!"}],
    [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "And 3+3?"},
    ],
]


def smollm2(gguf_path):
    tok = AutoTokenizer.from_pretrained(os.path.dirname(gguf_path), gguf_file=os.path.basename(gguf_path))
    # transformers' GGUF path ignores `tokenizer.ggml.pre == "smollm"`; SmolLM2's own tokenizer.json on the Hub
    # splits digits individually before the GPT-2 byte-level regex, so reproduce that here.
    tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]
    )
    backend = tok.backend_tokenizer
    encodings = []
    for text in TEXTS:
        ids = backend.encode(text, add_special_tokens=False).ids
        encodings.append(
            {
                "text": text,
                "ids": ids,
                "decoded": backend.decode(ids, skip_special_tokens=False),
                "decoded_skip_special": backend.decode(ids, skip_special_tokens=True),
            }
        )
    renders = []
    for messages in CONVERSATIONS:
        for add_generation_prompt in (False, True):
            renders.append(
                {
                    "messages": messages,
                    "add_generation_prompt": add_generation_prompt,
                    "rendered": tok.apply_chat_template(
                        messages, tokenize=False, add_generation_prompt=add_generation_prompt
                    ),
                }
            )
    return {
        "source": os.path.basename(gguf_path),
        "vocab_size": backend.get_vocab_size(with_added_tokens=True),
        "bos_token_id": 1,
        "eos_token_id": 2,
        "encodings": encodings,
        "chat_template": tok.chat_template,
        "renders": renders,
    }


def spm_synthetic():
    """A small vocabulary shaped like a llama.cpp SentencePiece GGUF: <unk>, <s>, </s>, 256 byte tokens, pieces."""
    tokens = ["<unk>", "<s>", "</s>"]
    token_type = [2, 3, 3]
    scores = [0.0, 0.0, 0.0]
    for b in range(256):
        tokens.append(f"<0x{b:02X}>")
        token_type.append(6)
        scores.append(0.0)
    pieces = [
        "▁", "h", "e", "l", "o", "w", "r", "d", "t", "s", "a", "n", "i", ",", "!", "é",
        "he", "ll", "llo", "hell", "hello", "▁h", "▁he", "▁hello", "▁w", "wo", "or", "▁wor", "▁world", "ld",
        "▁t", "th", "▁th", "▁the", "es", "st", "▁test", "in", "ing", "▁s", "an", "▁a", "▁an", "▁▁", "▁▁▁",
    ]
    for rank, piece in enumerate(pieces):
        tokens.append(piece)
        token_type.append(1)
        # Longer, earlier pieces score higher, like a trained SentencePiece model's log-probabilities.
        scores.append(-float(rank) / 10.0 - (0.0 if len(piece) > 1 else 100.0))
    tokens.append("<|user|>")
    token_type.append(4)
    scores.append(0.0)
    tokenizer_dict = {
        "tokenizer_type": "llama",
        "tokens": tokens,
        "scores": scores,
        "token_type": token_type,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "unk_token_id": 0,
    }
    backend, _ = convert_gguf_tokenizer("llama", tokenizer_dict)
    texts = ["hello world", "hello, the test!", " hello  world", "héllo", "日本 ok", "the<|user|>world", ""]
    encodings = []
    for text in texts:
        ids = backend.encode(text, add_special_tokens=False).ids
        encodings.append({"text": text, "ids": ids, "decoded": backend.decode(ids, skip_special_tokens=False)})
    return {"tokens": tokens, "scores": scores, "token_types": token_type, "encodings": encodings}


def main():
    gguf_path = sys.argv[1] if len(sys.argv) > 1 else DEFAULT_GGUF
    os.makedirs(OUT_DIR, exist_ok=True)
    outputs = {"smollm2_expected.json": smollm2(gguf_path), "spm_synthetic.json": spm_synthetic()}
    for name, data in outputs.items():
        with open(os.path.join(OUT_DIR, name), "w", encoding="utf-8") as f:
            json.dump(data, f, ensure_ascii=False, indent=1)
            f.write("\n")
        print("wrote", os.path.join(OUT_DIR, name))


if __name__ == "__main__":
    main()
