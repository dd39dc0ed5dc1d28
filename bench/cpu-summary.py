#!/usr/bin/env python3
"""Summarizes a bench/cpu-vs-llamacpp.sh run directory: per contender (binary x precision, llama.cpp) the median
and best over rounds of decode tok/s per batch and single-stream prompt tok/s (128 / TTFT at batch 1), beside the
steal share of each run. Prints JSON (write it next to the runs as summary.json).

Usage: python3 bench/cpu-summary.py OUTDIR [--note TEXT]
"""
import json
import os
import statistics
import sys


def main():
    d = sys.argv[1]
    note = sys.argv[sys.argv.index("--note") + 1] if "--note" in sys.argv else None
    runs = [json.loads(l) for l in open(os.path.join(d, "runs.jsonl")) if l.strip()]
    table = {}  # contender -> metric -> [values]
    steal = {}
    for run in runs:
        f = run["file"]
        name = os.path.basename(f)
        if name.startswith("llamacpp"):
            who = "llama.cpp"
            for l in open(f):
                if not l.strip().startswith("{"):
                    continue
                r = json.loads(l)
                if r["bench"] == "llama-bench":
                    key = "prompt128_tok_s" if r["n_gen"] == 0 else "decode_b1_llama-bench_tok_s"
                    table.setdefault(who, {}).setdefault(key, []).append(r["tok_s"])
                else:
                    table.setdefault(who, {}).setdefault(f"decode_b{r['batch']}_tok_s", []).append(r["decode_tok_s"])
        else:
            label, prec = name.rsplit("-r", 1)[0].rsplit("-", 1)
            who = f"{label} {prec}"
            res = json.load(open(f))
            for r in res["results"]:
                table.setdefault(who, {}).setdefault(f"decode_b{r['batch']}_tok_s", []).append(round(r["decode_tokens_per_s"], 1))
                if r["batch"] == 1:
                    table[who].setdefault("prompt128_tok_s", []).append(round(r["input_len"] / r["ttft_p50_s"], 1))
        steal.setdefault(who, []).append(run["steal_share"])
    out = {
        "dir": d,
        "note": note,
        "summary": {
            who: {k: {"median": round(statistics.median(v), 1), "best": max(v), "all": v} for k, v in sorted(m.items())}
            for who, m in table.items()
        },
        "steal_share_per_run": steal,
    }
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
