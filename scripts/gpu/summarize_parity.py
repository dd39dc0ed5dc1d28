#!/usr/bin/env python3
"""Folds one `scripts/gpu/device-run.sh check` run into a parity table (JSON on stdout): per checkpoint, GPU bf16
against HF bf16 and fp32 (with HF-bf16's own distance to fp32), GPU f32 against HF fp32 at the issue's thresholds,
HF bf16 against itself (SDPA vs eager attention, hf_bf16_spread.py) and the CPU backend against HF fp32.
Standard library only. Usage: summarize_parity.py RESULTS_DIR > gpu-parity.json"""
import json, os, sys

d = sys.argv[1]


def load(name):
    p = os.path.join(d, name)
    return json.load(open(p)) if os.path.exists(p) else None


def short(j, key):
    x = (j or {}).get(key)
    return None if x is None else {k: round(v, 4) if isinstance(v, float) else v for k, v in x.items()}


rows = {}
for shape in ["smollm2-real", "smollm2-135m", "qwen2-0.5b", "llama-1b", "llama-8b"]:
    bf16, f32 = load(f"parity-{shape}.json"), load(f"parity-f32-{shape}.json")
    spread, cpu = load(f"hf-bf16-spread-{shape}.json"), load(f"parity-cpu-{shape}.json")
    if not (bf16 or f32):
        continue
    rows[shape] = {
        "gpu_bf16": bf16 and {
            "vs_hf_bf16": short(bf16, "vs_reference"),
            "vs_hf_fp32_prompt_positions": short(bf16, "vs_fp32_prompt_positions"),
            "greedy_vs_hf_fp32": round(bf16["vs_fp32"]["greedy_match"], 4),
            "hf_bf16_vs_hf_fp32_prompt_positions": short(bf16, "hf_bf16_vs_fp32_prompt_positions"),
            "relative_criterion_pass": bf16["pass"], "command": bf16["command"]},
        "gpu_f32_vs_hf_fp32": f32 and {
            **short(f32, "vs_reference"), "thresholds": {"max_abs_logprob_diff": f32["logprob_tolerance"],
                                                       "greedy_match": f32["greedy_min_match"]},
            "pass": f32["pass"], "command": f32["command"]},
        "hf_bf16_sdpa_vs_hf_bf16_eager": spread and {
            **{k: round(v, 4) for k, v in spread["eager_vs_sdpa"].items()},
            "greedy_match": round(spread["greedy_eager_vs_sdpa"], 4)},
        "cpu_f32_vs_hf_fp32": cpu and {**short(cpu, "vs_reference"), "pass": cpu["pass"]},
    }
gpu = open(os.path.join(d, "gpu.txt")).read().strip()
print(json.dumps({"benchmark": "gpu-parity", "device": gpu,
                  "what": "teacher-forced log-probs of HF's reference tokens and greedy agreement, 8 random prompts "
                          "x (32 prompt + 32 greedy) per checkpoint (--peaked random weights; smollm2-real = the "
                          "default GGUF dequantized)",
                  "command": "scripts/gpu/device-run.sh check", "checkpoints": rows}, indent=1))
