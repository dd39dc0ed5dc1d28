#!/usr/bin/env python3
"""Folds one `scripts/gpu/device-run.sh measure` run into the result file committed under bench/results/:
device, model shape, workloads, commands, pagedllm's figure, HF's figure, the physical bound. Standard library
only (runs on the GPU machine). Usage: summarize.py RESULTS_DIR > gpu-llama8b.json"""
import json, os, sys

d = sys.argv[1]
load = lambda name: json.load(open(os.path.join(d, name)))
gpu = open(os.path.join(d, "gpu.txt")).read().strip()
weights = int(open(os.path.join(d, "weights_bytes.txt")).read())
bw = load("bandwidth.json")["bandwidth_read_plus_write_Bps"]
bound_tok_s = bw / weights  # one full weight read per decode step at batch 1

def ours(name):
    j = load(f"pagedllm-{name}.json")
    r = j["results"][0]
    return j, r

out = {"benchmark": "gpu-llama8b", "device": gpu, "model": "llama-8b shape (hf_peer.py make-model), random bf16 weights",
       "weights_bytes": weights, "copy_bandwidth_Bps": bw, "workloads": []}
j, r = ours("b1")
hf = load("hf-b1.json")
out["startup_s"] = j["load_s"]
out["workloads"].append({
    "name": "single stream, 128 in / 128 out",
    "command": j["command"], "hf_command": "hf_peer.py throughput --batch 1 --input 128 --output 128",
    "pagedllm_decode_tok_s": r["decode_tokens_per_s"], "pagedllm_output_tok_s": r["output_tokens_per_s"],
    "hf_output_tok_s": hf["output_tok_s"],
    "bandwidth_bound_tok_s": bound_tok_s,
    "fraction_of_bound": r["decode_tokens_per_s"] / bound_tok_s,
    "target_fraction": 0.7,
})
for name, hf_name, label in [("128x512", "128x512", "128 requests of 512 in / 128 out"),
                              ("1000x1024", "1000x1024", "1000 requests of 1024 in / 128 out")]:
    j, r = ours(name)
    hf = load(f"hf-{hf_name}.json")
    wall = r["wall_s"]
    out["workloads"].append({
        "name": label, "command": j["command"], "hf_command": f"hf_peer.py throughput (batch {hf['batch']}, requests {hf['requests']})",
        "pagedllm_requests_per_s": r["batch"] / wall, "pagedllm_output_tok_s": r["output_tokens_per_s"],
        "hf_requests_per_s": hf["requests_per_s"], "hf_output_tok_s": hf["output_tok_s"],
        "speedup_vs_hf": r["output_tokens_per_s"] / hf["output_tok_s"],
        "target_speedup": 3.0 if name == "128x512" else None,
        "compute_floor_note": "prefill ~2 x 8.03e9 FLOP/token; floor = max(bytes / bandwidth, FLOPs / peak) per phase",
    })
runs = {n: load(f"pagedllm-{n}.json") for n in ["b1", "128x512", "1000x1024"]}
out["engine_config"] = runs["128x512"]["engine_config"]
out["kv_blocks"] = {n: r["model"]["numKvBlocks"] for n, r in runs.items()}
# Where the engine thread's step time went and how many heap allocations a step made (absent in runs made
# before pagedllm-bench reported them).
def per_step(r):
    x = r["results"][0]
    return {"engine_steps": x.get("engine_steps"), "step_phase_ms": x.get("step_phase_ms"),
            "process_allocations_per_step": x.get("process_allocations_per_step", x.get("allocations_per_step"))}
out["per_engine_step"] = {n: per_step(r) for n, r in runs.items()}
parity = {}
for f in sorted(os.listdir(d)):
    if f.startswith("parity-") and f.endswith(".json"):
        p = load(f)
        parity[f[len("parity-"):-len(".json")]] = {k: p[k] for k in p if k not in ("items", "model")}
out["parity"] = parity
if os.path.exists(os.path.join(d, "note.txt")):
    out["note"] = open(os.path.join(d, "note.txt")).read().strip()
print(json.dumps(out, indent=2))
