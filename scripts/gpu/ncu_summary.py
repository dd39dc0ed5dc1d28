#!/usr/bin/env python3
"""Per-kernel totals from `ncu --csv --metrics gpu__time_duration.sum` output (one row per launch).

Usage: ncu_summary.py NCU_CSV_OUTPUT. Prints kernels by total time, with launch counts and one grid size."""
import csv
import sys
from collections import defaultdict

UNIT = {"nsecond": 1e-3, "ns": 1e-3, "usecond": 1.0, "us": 1.0, "msecond": 1e3, "ms": 1e3, "second": 1e6, "s": 1e6}

lines = open(sys.argv[1], errors="replace").read().splitlines()
start = next((i for i, l in enumerate(lines) if l.startswith('"ID"')), None)
if start is None:
    print("no ncu CSV rows; last lines:\n" + "\n".join(lines[-15:]))
    sys.exit(0)
total = defaultdict(float)
count = defaultdict(int)
grid = {}
for row in csv.DictReader(lines[start:]):
    if row.get("Metric Name") != "gpu__time_duration.sum":
        continue
    name = row["Kernel Name"].split("(")[0][:60]
    us = float(row["Metric Value"].replace(",", "")) * UNIT.get(row["Metric Unit"], 1.0)
    total[name] += us
    count[name] += 1
    grid.setdefault(name, f'{row.get("Grid Size", "")}x{row.get("Block Size", "")}')
all_us = sum(total.values())
print(f"{len(total)} kernels, {sum(count.values())} launches, {all_us / 1e3:.2f} ms in all")
for name, us in sorted(total.items(), key=lambda kv: -kv[1]):
    print(f"  {us / 1e3:8.3f} ms {100 * us / all_us:5.1f}%  x{count[name]:<4d} {name}  {grid[name]}")
