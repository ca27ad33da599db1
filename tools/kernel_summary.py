"""Sums Nsight Compute's per-kernel durations by kernel name (tools/gpu-suite.sh, suites
trellis-kernels and matte-kernels).

    python3 tools/kernel_summary.py ncu.csv [--top N]
        a Markdown table of the kernels with the most total GPU time, with launch counts and
        shares;
    python3 tools/kernel_summary.py ncu.csv --base base.csv --per N [--wall-ms MS] [--top N]
        the difference of two runs that differ only in N more sampler steps, per step: the
        GPU time one step's kernels take, by kernel, and (with the step's wall time MS from a
        run outside the profiler) the share of the step the GPU spends in kernels; the rest is
        launch and host time, which the profiler cannot see.
"""
import argparse
import csv
from collections import defaultdict


def kernel_times(path):
    total_ns = defaultdict(float)
    launches = defaultdict(int)
    with open(path, newline="") as f:
        # ncu writes its own log lines before the CSV header.
        rows = [line for line in f if line.startswith('"')]
    for row in csv.DictReader(rows):
        if row.get("Metric Name") != "gpu__time_duration.sum":
            continue
        value = float(row["Metric Value"].replace(",", ""))
        scale = {"nsecond": 1.0, "ns": 1.0, "usecond": 1e3, "us": 1e3, "msecond": 1e6, "ms": 1e6,
                 "second": 1e9, "s": 1e9}[row["Metric Unit"]]
        name = row["Kernel Name"][:110]
        total_ns[name] += value * scale
        launches[name] += 1
    return total_ns, launches


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("csv")
    ap.add_argument("--top", type=int, default=40, help="kernels listed")
    ap.add_argument("--base", help="ncu CSV of the same run with N fewer sampler steps")
    ap.add_argument("--per", type=int, default=1, help="N: the steps the two runs differ by")
    ap.add_argument("--wall-ms", type=float, help="wall time of one such step outside the profiler")
    args = ap.parse_args()
    total_ns, launches = kernel_times(args.csv)
    if args.base:
        base_ns, base_launches = kernel_times(args.base)
        for name in set(total_ns) | set(base_ns):
            total_ns[name] = (total_ns[name] - base_ns.get(name, 0.0)) / args.per
            launches[name] = (launches[name] - base_launches.get(name, 0)) / args.per
        total_ns = defaultdict(float, {n: t for n, t in total_ns.items() if launches[n] > 0})
    grand = sum(total_ns.values())
    what = "per step, " if args.base else ""
    print(f"{what}{sum(launches[n] for n in total_ns):g} launches, {grand / 1e6:.1f} ms of kernel time")
    if args.wall_ms:
        print(f"wall time per step {args.wall_ms:.1f} ms: kernels {100 * grand / 1e6 / args.wall_ms:.0f} % of it")
    print("\n| kernel | launches | total ms | share |")
    print("|---|---:|---:|---:|")
    for name, ns in sorted(total_ns.items(), key=lambda kv: -kv[1])[: args.top]:
        print(f"| `{name}` | {launches[name]:g} | {ns / 1e6:.2f} | {100 * ns / grand:.1f} % |")


if __name__ == "__main__":
    main()
