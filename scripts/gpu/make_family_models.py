#!/usr/bin/env python3
"""Random-weight HF checkpoints of the model families pagedllm serves, and HF transformers' reference outputs.

Two uses (run where torch + transformers are: the GPU machine, or a CPU wheel here):

  tiny  --out DIR [--families a,b]   scaled-down configs of each family (2 layers, hidden 64, vocab 512), float32
        weights, plus HF's float32 greedy continuations and teacher-forced log-probs for random token-id prompts
        in hf_peer.py's reference format (ref-fp32.json). Committed as fixtures under
        crates/engine/tests/fixtures/families/<family>/ and checked by crates/engine/tests/parity_families.rs,
        so CI checks CPU parity without torch.
  real  --family F --out DIR [--peaked]   one family at a real shape (bf16, random), for the GPU parity runs
        (`hf_peer.py reference` then `pagedllm-bench parity` on it; see scripts/gpu/device-run.sh families).

Prompts are 12 random token ids; 32 greedy steps: past every tiny config's sliding window (8), so windowed
attention is exercised. Families without a class in the installed transformers are skipped with a message.
"""
import argparse
import json
import os
import sys

import torch

TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=16, vocab_size=512, max_position_embeddings=256,
            rms_norm_eps=1e-6, bos_token_id=1, eos_token_id=2, pad_token_id=0)

# family -> (config class, model class, tiny overrides, real-shape overrides)
FAMILIES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", dict(rope_theta=10000.0, tie_word_embeddings=False), None),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", dict(rope_theta=1e6, tie_word_embeddings=True), None),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", dict(rope_theta=1e6, tie_word_embeddings=False),
              # Qwen3-0.6B
              dict(hidden_size=1024, intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16,
                   num_key_value_heads=8, head_dim=128, vocab_size=151936, max_position_embeddings=40960,
                   rope_theta=1e6, rms_norm_eps=1e-6, tie_word_embeddings=True)),
    "qwen3_moe": ("Qwen3MoeConfig", "Qwen3MoeForCausalLM",
                  dict(rope_theta=1e6, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                       norm_topk_prob=True, decoder_sparse_step=1, mlp_only_layers=[], tie_word_embeddings=False),
                  # Qwen3-30B-A3B's layers (128 experts, 8 per token, expert size 768), 4 of its 48.
                  dict(hidden_size=2048, intermediate_size=6144, moe_intermediate_size=768, num_hidden_layers=4,
                       num_attention_heads=32, num_key_value_heads=4, head_dim=128, vocab_size=151936,
                       num_experts=128, num_experts_per_tok=8, norm_topk_prob=True, decoder_sparse_step=1,
                       mlp_only_layers=[], max_position_embeddings=40960, rope_theta=1e6, rms_norm_eps=1e-6,
                       tie_word_embeddings=False)),
    # Qwen1.5-MoE / Qwen2-MoE: q/k/v bias, softmax top-k without renormalization, a shared expert behind a
    # sigmoid gate, and (through mlp_only_layers) one dense layer.
    "qwen2_moe": ("Qwen2MoeConfig", "Qwen2MoeForCausalLM",
                  dict(rope_theta=1e6, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                       shared_expert_intermediate_size=48, norm_topk_prob=False, decoder_sparse_step=1,
                       mlp_only_layers=[1], tie_word_embeddings=False),
                  None),
    "mistral": ("MistralConfig", "MistralForCausalLM", dict(rope_theta=1e6, sliding_window=8,
                                                            tie_word_embeddings=False),
                # Mistral 7B v0.1's layers, 8 of its 32, with the window cut from 4096 to 32 so the parity run's
                # 64-token sequences cross it at the real head and hidden sizes.
                dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=8, num_attention_heads=32,
                     num_key_value_heads=8, head_dim=128, vocab_size=32000, max_position_embeddings=32768,
                     sliding_window=32, rope_theta=10000.0, rms_norm_eps=1e-5, tie_word_embeddings=False)),
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM",
               dict(rope_theta=10000.0, sliding_window=8, attn_logit_softcapping=50.0,
                    final_logit_softcapping=30.0, query_pre_attn_scalar=16, hidden_activation="gelu_pytorch_tanh",
                    tie_word_embeddings=True),
               # Gemma 2 2B
               dict(hidden_size=2304, intermediate_size=9216, num_hidden_layers=26, num_attention_heads=8,
                    num_key_value_heads=4, head_dim=256, vocab_size=256000, sliding_window=4096,
                    attn_logit_softcapping=50.0, final_logit_softcapping=30.0, query_pre_attn_scalar=256,
                    hidden_activation="gelu_pytorch_tanh", max_position_embeddings=8192, rope_theta=10000.0,
                    rms_norm_eps=1e-6, tie_word_embeddings=True)),
    "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM",
               # Linear RoPE scaling on the global layers only (as Gemma 3 4B+ has, factor 8), local base 1e4.
               dict(rope_theta=1e6, rope_local_base_freq=10000.0, sliding_window=8, sliding_window_pattern=2,
                    rope_scaling=dict(rope_type="linear", factor=4.0),
                    query_pre_attn_scalar=16, hidden_activation="gelu_pytorch_tanh", tie_word_embeddings=True),
               # Gemma 3 1B (window 512 on 5 of every 6 layers; 32-token prompts + 32 steps stay inside it, so
               # the tiny fixtures' window 8 is what checks windows)
               dict(hidden_size=1152, intermediate_size=6912, num_hidden_layers=26, num_attention_heads=4,
                    num_key_value_heads=1, head_dim=256, vocab_size=262144, sliding_window=512,
                    sliding_window_pattern=6, rope_theta=1e6, rope_local_base_freq=10000.0,
                    query_pre_attn_scalar=256, hidden_activation="gelu_pytorch_tanh", max_position_embeddings=32768,
                    rms_norm_eps=1e-6, tie_word_embeddings=True)),
    # Phi-4-mini's shape scaled down: fused qkv / gate_up, partial rotary 0.75 (12 of 16 dims rotate), window 8,
    # LongRoPE with short/long factors and original_max_position_embeddings 8: the 12-token prompts are past it, so
    # HF runs every forward on the long factors (as the engine does when max_model_len > 8); `SHORT_REFERENCE`
    # below checks the short factors on sequences that stay within 8 tokens.
    "phi3": ("Phi3Config", "Phi3ForCausalLM",
             dict(rope_theta=10000.0, partial_rotary_factor=0.75, tie_word_embeddings=False, sliding_window=8,
                  original_max_position_embeddings=8,
                  rope_scaling=dict(type="longrope", short_factor=[1.0 + 0.1 * i for i in range(6)],
                                    long_factor=[1.5 + 0.7 * i for i in range(6)]),
                  ),
             # Phi-4-mini (3.8B): 24 query / 8 KV heads of 128, 96 rotary dims, tied 200k vocabulary, LongRoPE over
             # an original 4096-token context (factors made up: the published ones are not needed for parity). The
             # parity run's sequences stay under 4096, so this checks the short factors; the tiny fixture the long.
             dict(hidden_size=3072, intermediate_size=8192, num_hidden_layers=32, num_attention_heads=24,
                  num_key_value_heads=8, vocab_size=200064, max_position_embeddings=131072,
                  original_max_position_embeddings=4096, partial_rotary_factor=0.75, rope_theta=10000.0,
                  rope_scaling=dict(type="longrope", short_factor=[1.0 + 0.02 * i for i in range(48)],
                                    long_factor=[1.0 + 1.0 * i for i in range(48)]),
                  rms_norm_eps=1e-5, sliding_window=262144, tie_word_embeddings=True, pad_token_id=0)),
}

# LongRoPE families: HF picks the long factors for a whole forward once the sequence passes
# original_max_position_embeddings (and Phi3's `generate` recomputes the cache when it crosses). A second reference,
# ref-fp32-short.json, holds sequences within that many tokens (3-token prompts, 4 steps: 7 tokens, and the engine's
# 8-token scoring request), all on the short factors, for an engine with max_model_len = that original context.
SHORT_REFERENCE = {"phi3": (3, 4)}


def build(family, overrides, dtype, seed):
    import transformers
    cfg_name, model_name, tiny, _ = FAMILIES[family]
    Config = getattr(transformers, cfg_name, None)
    Model = getattr(transformers, model_name, None)
    if Config is None or Model is None:
        raise RuntimeError(f"transformers {transformers.__version__} has no {cfg_name}/{model_name}")
    cfg = Config(**overrides)
    cfg.torch_dtype = dtype
    torch.manual_seed(seed)
    model = Model(cfg).to(dtype).eval()
    return model


@torch.no_grad()
def spread_weights(model, gemma):
    """HF's init (std 0.02) leaves a tiny model's distributions nearly uniform, where a wrong kernel hardly moves a
    log-prob. Re-draw: matrices ~ N(0, 1/fan_in), embeddings ~ N(0, 1), norms 1 + N(0, 0.2) (Gemma's `(1 + w)`
    norms: w ~ N(0, 0.3)), the head 4x, so attention is far from uniform and the next token is peaked."""
    g = torch.Generator().manual_seed(7)
    for n, p in model.named_parameters():
        if "norm" in n:
            p.copy_((0.0 if gemma else 1.0) + torch.randn(p.shape, generator=g) * (0.3 if gemma else 0.2))
        elif p.dim() == 2 and "embed" in n:
            p.copy_(torch.randn(p.shape, generator=g))
        elif p.dim() == 2:
            p.copy_(torch.randn(p.shape, generator=g) / p.shape[1] ** 0.5 * (4.0 if "lm_head" in n else 1.0))
        elif p.dim() == 3:  # stacked experts [experts, out, in]
            p.copy_(torch.randn(p.shape, generator=g) / p.shape[2] ** 0.5)
        else:  # biases
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)


@torch.inference_mode()
def reference(model, prompts, steps):
    items = []
    for ids in prompts:
        x = torch.tensor([ids])
        gen = model.generate(x, max_new_tokens=steps, min_new_tokens=steps, do_sample=False, pad_token_id=0)
        full = gen[0]
        lp = torch.log_softmax(model(full[None]).logits[0].float(), -1)
        tok_lp = lp[:-1].gather(-1, full[1:, None])[:, 0]
        top = lp.topk(5, dim=-1)
        p = len(ids)
        items.append(dict(prompt=full[:p].tolist(), greedy=full[p:].tolist(),
                          prompt_logprobs=[None] + tok_lp[:p - 1].tolist(), greedy_logprobs=tok_lp[p - 1:].tolist(),
                          top5_ids=top.indices[p - 1:-1].tolist(), top5_logprobs=top.values[p - 1:-1].tolist()))
    return items


def tiny(a):
    import transformers
    names = a.families.split(",") if a.families else list(FAMILIES)
    made = []
    for fam in names:
        overrides = dict(TINY, **FAMILIES[fam][2])
        try:
            model = build(fam, overrides, torch.float32, seed=len(made) + 1)
        except Exception as e:  # a family this transformers lacks: say so, go on
            print(json.dumps(dict(family=fam, skipped=str(e))), flush=True)
            continue
        spread_weights(model, gemma=fam.startswith("gemma"))
        d = os.path.join(a.out, fam)
        model.generation_config.eos_token_id = None
        model.save_pretrained(d, safe_serialization=True)
        g = torch.Generator().manual_seed(100 + len(made))
        prompts = [torch.randint(3, TINY["vocab_size"], (12,), generator=g).tolist() for _ in range(4)]
        items = reference(model, prompts, 32)
        with open(os.path.join(d, "ref-fp32.json"), "w") as f:
            json.dump(dict(model=fam, dtype="fp32", steps=32, transformers=transformers.__version__, items=items), f)
        if fam in SHORT_REFERENCE:
            plen, steps = SHORT_REFERENCE[fam]
            short = [torch.randint(3, TINY["vocab_size"], (plen,), generator=g).tolist() for _ in range(4)]
            with open(os.path.join(d, "ref-fp32-short.json"), "w") as f:
                json.dump(dict(model=fam, dtype="fp32", steps=steps, transformers=transformers.__version__,
                               max_model_len=overrides["original_max_position_embeddings"],
                               items=reference(model, short, steps)), f)
        made.append(fam)
        print(json.dumps(dict(family=fam, out=d, params=sum(p.numel() for p in model.parameters()))), flush=True)
    print(json.dumps(dict(verb="tiny", made=made)), flush=True)


def real(a):
    _, _, _, shape = FAMILIES[a.family]
    if shape is None:
        sys.exit(f"no real shape listed for {a.family}")
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = build(a.family, dict(shape, bos_token_id=1, eos_token_id=2), torch.bfloat16, seed=0)
    if a.peaked:
        with torch.no_grad():
            model.get_output_embeddings().weight.mul_(8.0)
    model.generation_config.eos_token_id = None
    model.save_pretrained(a.out, safe_serialization=True, max_shard_size="5GB")
    print(json.dumps(dict(verb="real", family=a.family, out=a.out,
                          params=sum(p.numel() for p in model.parameters()))), flush=True)


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="verb", required=True)
    t = sub.add_parser("tiny")
    t.add_argument("--out", required=True)
    t.add_argument("--families", default="")
    r = sub.add_parser("real")
    r.add_argument("--family", required=True, choices=FAMILIES)
    r.add_argument("--out", required=True)
    r.add_argument("--peaked", action="store_true")
    a = p.parse_args()
    tiny(a) if a.verb == "tiny" else real(a)


if __name__ == "__main__":
    main()
