#!/usr/bin/env bash
# The CUDA fitting backend's check and benchmark, run on the GPU machine (issue 4, item 9):
#   1. gpu_fit parity: CudaBackend vs CpuBackend on data/shapes (loss + image gradient,
#      a short fit, densification replayed exactly); exit status 1 on a failure;
#   2. gpu_fit bench: the sparse-view case (hamburger, 4 x 256^2 training views, 16
#      validator views held out, 500 steps from 5,000 random points): one fit per seed
#      (the first also warms up), then RUNS timed fits of the first seed; exports targets,
#      initial Gaussians and schedule of every seed for (3);
#   3. tools/bench/gsplat_fit_reference.py (gsplat 1.5.3 + torch Adam) on the exported
#      data, same run; its PLY scored by `gpu_fit eval` (our evaluator, same views);
#   3b. gpu_fit sample: the sample dataset fitted with fit_on (the CLI's --device cuda path);
#   4. a summary table (ours vs reference: median wall time, held-out PSNR, ratio).
# Results go to $OUT (the device tool's output folder), else ./gpu-out.
#
# Build here first (no cargo on the GPU machine), then run there:
#   tools/cuda-toolchain.sh && source .cuda/env.sh
#   CARGO_TARGET_DIR=target-cuda cargo build --release -p splatforge-fit --features cuda --example gpu_fit
#   CARGO_TARGET_DIR=target-cuda tools/gpu-fit.sh --pack   # strip + xz into .gpu-bin/, with the GT PLY
#   device run, carry [".gpu-bin", ".whl"]:  tools/gpu-fit.sh
# Options (GPU side): RUNS=3 (timed fits of the first seed), SEEDS=0,1,2,3,4 (one fit each, both
# sides, for held-out PSNR), SKIP_PARITY=1, SKIP_REFERENCE=1.
set -uo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=tools/gpu-common.sh
source tools/gpu-common.sh

if [[ "${1:-}" == "--pack" ]]; then
  set -e
  pack_binary "${CARGO_TARGET_DIR:-target-cuda}/release/examples/gpu_fit" gpu_fit
  if [[ -f ../shared/fixtures/hamburger.ply ]]; then cp ../shared/fixtures/hamburger.ply .gpu-bin/hamburger.ply; fi
  ls -la .gpu-bin
  exit 0
fi

OUT="${OUT:-$PWD/gpu-out}"
mkdir -p "$OUT"
use_cuda_runtime
export PYTHONUNBUFFERED=1
BIN=/tmp/gpu_fit
unxz_to .gpu-bin/gpu_fit.xz "$BIN"
chmod +x "$BIN"
GT=.gpu-bin/hamburger.ply
[[ -f "$GT" ]] || GT=../shared/fixtures/hamburger.ply
EXPORT=/tmp/fit-export

nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu --format=csv

status=0
if [[ -z "${SKIP_PARITY:-}" ]]; then
  echo "== parity (data/shapes)"
  "$BIN" parity --json "$OUT/parity.json" > /tmp/parity.out 2>&1
  status=$?
  grep -vE '^\s' /tmp/parity.out | grep -vE '^[{}]' | tail -12
fi

echo "== sample dataset on the GPU (fit_on, as splatforge fit --device cuda)"
"$BIN" sample --runs "${RUNS:-3}" --json "$OUT/sample.json" 2>&1 | grep -E '^sample run' || status=2

SEEDS="${SEEDS:-0,1,2,3,4}"
DIRS=()
if [[ "$SEEDS" == *,* ]]; then
  for s in ${SEEDS//,/ }; do DIRS+=("$EXPORT/seed$s"); done
else
  DIRS=("$EXPORT")
fi
echo "== ours: sparse-view bench (seeds $SEEDS; timed: the first)"
"$BIN" bench --gt "$GT" --runs "${RUNS:-3}" --seeds "$SEEDS" --export "$EXPORT" --out /tmp/ours.ply \
  --json "$OUT/bench_ours.json" > /tmp/bench.out 2>&1 || { status=2; tail -20 /tmp/bench.out; }
grep -E '^(run|seed) ' /tmp/bench.out

if [[ -z "${SKIP_REFERENCE:-}" ]]; then
  echo "== reference: gsplat 1.5.3 + torch Adam"
  install_gsplat
  python3 tools/bench/gsplat_fit_reference.py "${DIRS[@]}" --runs "${RUNS:-3}" --json "$OUT/ref.json" 2>&1 | tail -12
  echo "== reference PLYs scored by our evaluator"
  PLYS=()
  for d in "${DIRS[@]}"; do PLYS+=(--ply "$d/ref.ply"); done
  "$BIN" eval "${PLYS[@]}" --gt "$GT" --json "$OUT/ref_eval.json" > /tmp/eval.out 2>&1 || tail -5 /tmp/eval.out
  grep -E 'held-out' /tmp/eval.out
fi

python3 - "$OUT" <<'EOF'
import json, os, statistics, sys
out = sys.argv[1]
def load(p):
    try:
        with open(os.path.join(out, p)) as f:
            return json.load(f)
    except Exception:
        return None
ours, ref, ref_eval, par = load("bench_ours.json"), load("ref.json"), load("ref_eval.json"), load("parity.json")
if isinstance(ref_eval, dict):
    ref_eval = [ref_eval]
row = {}
if ours:
    row["ours_wall_s"] = ours["wall_s"]
    row["ours_wall_s_median"] = ours["wall_s_median"]
    row["ours_timed_psnr"] = ours["held_out_psnr"]
    row["ours_psnr_per_seed"] = [s["held_out_psnr"] for s in ours["per_seed"]]
    row["ours_gaussians_per_seed"] = [s["final_gaussians"] for s in ours["per_seed"]]
    row["seeds"] = [s["seed"] for s in ours["per_seed"]]
if ref:
    row["ref_wall_s"] = ref["wall_s"]
    row["ref_wall_s_median"] = ref["wall_s_median"]
    row["ref_gaussians_per_seed"] = [d["final_gaussians"] for d in ref["per_dir"]]
    row["gpu"] = ref["gpu"]
if ref_eval:
    row["ref_psnr_per_seed"] = [e["held_out_psnr"] for e in ref_eval]
if "ours_wall_s_median" in row and "ref_wall_s_median" in row:
    row["speedup"] = row["ref_wall_s_median"] / row["ours_wall_s_median"]
mean = lambda v: statistics.mean(v) if v else float("nan")
sd = lambda v: statistics.stdev(v) if len(v) > 1 else 0.0
print("| impl | wall s (median of timed runs) | held-out PSNR dB, mean ± sd over seeds | per seed |")
print("|---|---|---|---|")
if ours:
    v = row["ours_psnr_per_seed"]
    print(f'| splatforge CUDA | {row["ours_wall_s_median"]:.3f} | {mean(v):.2f} ± {sd(v):.2f} | {" ".join(f"{x:.2f}" for x in v)} |')
if ref:
    v = row.get("ref_psnr_per_seed", [])
    print(f'| gsplat + torch | {row["ref_wall_s_median"]:.3f} | {mean(v):.2f} ± {sd(v):.2f} | {" ".join(f"{x:.2f}" for x in v)} |')
if "speedup" in row:
    print(f'speedup {row["speedup"]:.2f}x')
if ours and row.get("ref_psnr_per_seed"):
    d = [a - b for a, b in zip(row["ours_psnr_per_seed"], row["ref_psnr_per_seed"])]
    row["psnr_delta_per_seed"] = d
    print(f"PSNR ours - reference per seed: {' '.join(f'{x:+.2f}' for x in d)} (mean {mean(d):+.3f})")
row["parity_pass"] = par and par.get("pass")
print("parity:", row["parity_pass"])
with open(os.path.join(out, "summary.json"), "w") as f:
    json.dump(row, f, indent=1)
EOF
cp /tmp/parity.out /tmp/bench.out "$OUT"/ 2>/dev/null
exit $status
