#!/usr/bin/env python3
"""Summarizes a bench/cpu-thread-scaling.sh run directory: per thread count the median over rounds of our single-
stream decode tok/s and prompt tok/s (128 / TTFT) per precision, llama.cpp's llama-bench tg and pp, the ratio, and
each contender's speed-up over its own smallest thread count. Prints JSON.

Usage: python3 bench/cpu-thread-scaling-summary.py OUTDIR
"""
import glob
import json
import os
import re
import statistics
import sys


def main():
    d = sys.argv[1]
    rows = {}  # threads -> contender -> metric -> [values]

    def add(t, who, metric, v):
        rows.setdefault(t, {}).setdefault(who, {}).setdefault(metric, []).append(v)

    command = None
    for f in sorted(glob.glob(os.path.join(d, "ours-*-t*-r*.json"))):
        m = re.match(r"ours-(\w+)-t(\d+)-r\d+\.json", os.path.basename(f))
        res = json.load(open(f))
        command = command or res.get("command")
        r = res["results"][0]
        add(int(m.group(2)), f"ours {m.group(1)}", "decode_tok_s", r["decode_tokens_per_s"])
        add(int(m.group(2)), f"ours {m.group(1)}", "prompt_tok_s", r["input_len"] / r["ttft_p50_s"])
        isa = res["model"].get("cpuIsa")
    for f in sorted(glob.glob(os.path.join(d, "llamacpp-r*.json"))):
        for r in json.load(open(f)):
            metric = "prompt_tok_s" if r["n_gen"] == 0 else "decode_tok_s"
            add(int(r["n_threads"]), "llama.cpp", metric, r["avg_ts"])
    out = {"dir": d, "ours_command_example": command, "cpu_isa": isa, "threads": {}}
    base = {}
    for t in sorted(rows):
        entry = {}
        for who, metrics in sorted(rows[t].items()):
            med = {k: round(statistics.median(v), 1) for k, v in metrics.items()}
            med["runs"] = {k: [round(x, 1) for x in v] for k, v in metrics.items()}
            base.setdefault(who, med)
            for k in ("decode_tok_s", "prompt_tok_s"):
                if k in med and base[who].get(k):
                    med[k.replace("_tok_s", "_speedup")] = round(med[k] / base[who][k], 2)
            entry[who] = med
        lc = entry.get("llama.cpp", {})
        for who in entry:
            if who.startswith("ours") and lc:
                for k in ("decode_tok_s", "prompt_tok_s"):
                    if k in entry[who] and lc.get(k):
                        entry[who][k.replace("_tok_s", "_vs_llamacpp")] = round(entry[who][k] / lc[k], 2)
        out["threads"][t] = entry
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
