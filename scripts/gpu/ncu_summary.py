#!/usr/bin/env python3
"""Per-kernel totals from `ncu --csv --metrics gpu__time_duration.sum[,dram__bytes_read.sum]` output (one row per
launch and metric).

Usage: ncu_summary.py NCU_CSV_OUTPUT. Prints kernels by total time, with launch counts and one grid size; when the
run also collected dram__bytes_read.sum, each kernel's DRAM read bandwidth (bytes / time) beside it, which says
how far a memory-bound kernel (a batch-1 GEMV) is from the copy bandwidth."""
import csv
import sys
from collections import defaultdict

UNIT = {"nsecond": 1e-3, "ns": 1e-3, "usecond": 1.0, "us": 1.0, "msecond": 1e3, "ms": 1e3, "second": 1e6, "s": 1e6}
BYTES = {"byte": 1, "Kbyte": 1e3, "Mbyte": 1e6, "Gbyte": 1e9, "KB": 1e3, "MB": 1e6, "GB": 1e9}

lines = open(sys.argv[1], errors="replace").read().splitlines()
start = next((i for i, l in enumerate(lines) if l.startswith('"ID"')), None)
if start is None:
    print("no ncu CSV rows; last lines:\n" + "\n".join(lines[-15:]))
    sys.exit(0)
total = defaultdict(float)
read = defaultdict(float)
count = defaultdict(int)
grid = {}
for row in csv.DictReader(lines[start:]):
    metric = row.get("Metric Name")
    name = row["Kernel Name"].split("(")[0][:60]
    value = float(row["Metric Value"].replace(",", ""))
    if metric == "dram__bytes_read.sum":
        read[name] += value * BYTES.get(row["Metric Unit"], 1.0)
        continue
    if metric != "gpu__time_duration.sum":
        continue
    total[name] += value * UNIT.get(row["Metric Unit"], 1.0)
    count[name] += 1
    grid.setdefault(name, f'{row.get("Grid Size", "")}x{row.get("Block Size", "")}')
all_us = sum(total.values())
print(f"{len(total)} kernels, {sum(count.values())} launches, {all_us / 1e3:.2f} ms in all"
      + (f", {sum(read.values()) / 1e9:.2f} GB read from DRAM" if read else ""))
for name, us in sorted(total.items(), key=lambda kv: -kv[1]):
    bw = f"  {read[name] / (us * 1e-6) / 1e12:5.2f} TB/s read" if read else ""
    print(f"  {us / 1e3:8.3f} ms {100 * us / all_us:5.1f}%  x{count[name]:<4d} {name}  {grid[name]}{bw}")
