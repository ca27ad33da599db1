"""Sums Nsight Compute's per-kernel durations by kernel name (tools/gpu-suite.sh, suite
trellis-kernels): `python3 tools/kernel_summary.py ncu.csv [TOP]` prints a Markdown table of
the kernels with the most total GPU time, with launch counts and shares."""
import csv
import sys
from collections import defaultdict


def main():
    path = sys.argv[1]
    top = int(sys.argv[2]) if len(sys.argv) > 2 else 40
    total_ns = defaultdict(float)
    launches = defaultdict(int)
    with open(path, newline="") as f:
        # ncu writes its own log lines before the CSV header.
        rows = [line for line in f if line.startswith('"')]
    for row in csv.DictReader(rows):
        if row.get("Metric Name") != "gpu__time_duration.sum":
            continue
        value = float(row["Metric Value"].replace(",", ""))
        scale = {"nsecond": 1.0, "usecond": 1e3, "msecond": 1e6, "second": 1e9}[row["Metric Unit"]]
        name = row["Kernel Name"][:110]
        total_ns[name] += value * scale
        launches[name] += 1
    grand = sum(total_ns.values())
    print(f"{sum(launches.values())} launches, {grand / 1e6:.1f} ms of kernel time\n")
    print("| kernel | launches | total ms | share |")
    print("|---|---:|---:|---:|")
    for name, ns in sorted(total_ns.items(), key=lambda kv: -kv[1])[:top]:
        print(f"| `{name}` | {launches[name]} | {ns / 1e6:.2f} | {100 * ns / grand:.1f} % |")


if __name__ == "__main__":
    main()
