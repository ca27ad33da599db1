#!/usr/bin/env bash
# The CUDA rasterizer's check and benchmark, run on the GPU machine (issue 3):
#   1. parity: CPU reference vs CUDA, forward and every gradient, on random scenes
#      (exit status 1 when a max relative error exceeds 1e-4);
#   2. our forward+backward benchmark on gsplat_raster.py's two scenes;
#   3. gsplat 1.5.3's benchmark (tools/bench/gsplat_raster.py) on the same scenes, same run;
#   4. a summary table (ours vs gsplat, median ms and ratio).
# Results go to $OUT (the device tool's output folder), else ./gpu-out.
#
# Build here first (no cargo on the GPU machine), then run there:
#   tools/cuda-toolchain.sh && source .cuda/env.sh
#   CARGO_TARGET_DIR=target-cuda cargo build --release -p splatforge-render --features cuda --example gpu_raster
#   tools/gpu-raster.sh --pack        # strip + xz the binary into .gpu-bin/ (git-ignored via .git/info/exclude)
#   device run, carry [".gpu-bin", ".whl"]:  tools/gpu-raster.sh
# Options (GPU side): SKIP_GSPLAT=1, SKIP_PARITY=1, NCU=1 (per-kernel times with Nsight Compute),
# TRAINING_SCALE=1 (also 1 M and 3 M Gaussians, SH degree 3, 1920×1080, one camera: ours against
# gsplat unpacked and packed; 20 timed iterations each, issue 18).
set -uo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=tools/gpu-common.sh
source tools/gpu-common.sh

if [[ "${1:-}" == "--pack" ]]; then
  set -e
  pack_binary "${CARGO_TARGET_DIR:-target-cuda}/release/examples/gpu_raster" gpu_raster
  ls -la .gpu-bin
  exit 0
fi

OUT="${OUT:-$PWD/gpu-out}"
mkdir -p "$OUT"
use_cuda_runtime
export PYTHONUNBUFFERED=1
BIN=/tmp/gpu_raster
if [[ -f .gpu-bin/gpu_raster.xz ]]; then
  unxz_to .gpu-bin/gpu_raster.xz "$BIN"
else
  cp .gpu-bin/gpu_raster "$BIN"
fi
chmod +x "$BIN"

nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,clocks.mem,temperature.gpu,utilization.gpu \
  --format=csv

status=0
if [[ -z "${SKIP_PARITY:-}" ]]; then
  echo "== parity"
  "$BIN" parity --json "$OUT/parity.json" > "$OUT/parity.log" 2>&1
  status=$?
  grep -E "^(PASS|FAIL)|parity|worst|^    " "$OUT/parity.log" | tail -25
fi

echo "== splatforge-cuda bench"
"$BIN" bench --json "$OUT/bench_ours.json" 2>&1

if [[ -n "${TRAINING_SCALE:-}" ]]; then
  echo "== splatforge-cuda bench, training scale"
  "$BIN" bench --training-scale --iters 20 --warmup 3 --json "$OUT/bench_training.json" 2>&1
fi

if [[ -n "${NCU:-}" ]]; then
  echo "== ncu"
  NCU_BIN="$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)"
  if [[ -n "$NCU_BIN" ]]; then
    timeout 150 "$NCU_BIN" --metrics gpu__time_duration.sum --csv "$BIN" profile > "$OUT/ncu.csv" 2> /tmp/ncu.err
    echo "ncu rc=$? lines=$(wc -l < "$OUT/ncu.csv")"; tail -3 /tmp/ncu.err
    # Scheduler / warp-state detail of one forward and one backward rasterizer launch.
    timeout 150 "$NCU_BIN" --kernel-name regex:sf_rasterize --launch-skip 2 --launch-count 2 \
      --section SchedulerStats --section WarpStateStats --section Occupancy --section ComputeWorkloadAnalysis \
      "$BIN" profile > "$OUT/ncu_detail.txt" 2>&1
    echo "ncu detail rc=$?"
  fi
fi

if [[ -z "${SKIP_GSPLAT:-}" ]]; then
  echo "== gsplat 1.5.3 bench"
  install_gsplat
  python3 tools/bench/gsplat_raster.py --n 200000 --size 512 --cams 1 --json "$OUT/gsplat_a.json" 2>&1 | tail -3
  python3 tools/bench/gsplat_raster.py --n 50000 --size 256 --cams 4 --json "$OUT/gsplat_b.json" 2>&1 | tail -3
  if [[ -n "${TRAINING_SCALE:-}" ]]; then
    for n in 1000000 3000000; do
      for mode in unpacked packed; do
        flag=(); [[ $mode == packed ]] && flag=(--packed)
        python3 tools/bench/gsplat_raster.py --n $n --width 1920 --height 1080 --sh-degree 3 --iters 20 \
          "${flag[@]}" --json "$OUT/gsplat_${n}_$mode.json" 2>&1 | tail -3
      done
    done
  fi
  so="$(ls "$TORCH_EXTENSIONS_DIR"/*/gsplat_cuda/gsplat_cuda.so "$TORCH_EXTENSIONS_DIR"/gsplat_cuda/gsplat_cuda.so 2>/dev/null | head -1)"
  if [[ -n "$so" && ! -f .gpu-bin/gsplat_cuda.so.xz ]]; then
    python3 -c "import lzma,shutil,sys; shutil.copyfileobj(open(sys.argv[1],'rb'), lzma.open(sys.argv[2],'wb',preset=6))" "$so" "$OUT/gsplat_cuda.so.xz"
    ls -la "$so" "$OUT/gsplat_cuda.so.xz"
  fi
fi

python3 - "$OUT" <<'EOF'
import json, os, sys
out = sys.argv[1]
def load(p):
    try:
        with open(os.path.join(out, p)) as f:
            return json.load(f)
    except Exception:
        return None
allours = (load("bench_ours.json") or []) + (load("bench_training.json") or [])
ours = [o for o in allours if o["impl"] == "splatforge-cuda"]
gs = [load(p) for p in sorted(os.listdir(out)) if p.startswith("gsplat_") and p.endswith(".json")]
rows = []
def scene_key(o):
    return (o["n"], o.get("width", o.get("size")), o.get("height", o.get("size")), o["cams"], o.get("sh_degree", 0))
def match(o, packed=False):
    return next((x for x in gs if x and scene_key(x) == scene_key(o) and x.get("packed", False) == packed), None)
print("| scene | ours fwd+bwd ms (median) | gsplat unpacked ms | ours / gsplat | gsplat packed ms | ours / packed |")
print("|---|---|---|---|---|---|")
for o in ours:
    ms = o["fwd_bwd_ms_median"]
    g, gp = match(o), match(o, packed=True)
    gm = g["fwd_bwd_ms_median"] if g else None
    gpm = gp["fwd_bwd_ms_median"] if gp else None
    fmt = lambda v, f: "–" if v is None else format(v, f)
    n, w, h, cams, sh = scene_key(o)
    scene = f'{n} Gaussians, {w}x{h}, SH {sh}, {cams} camera(s)'
    print(f'| {scene} | {ms:.3f} | {fmt(gm, ".3f")} | {fmt(gm and ms / gm, ".2f")} | {fmt(gpm, ".3f")} | {fmt(gpm and ms / gpm, ".2f")} |')
    rows.append({"scene": scene, "ours_ms": ms, "gsplat_ms": gm, "ratio": gm and ms / gm,
                 "gsplat_packed_ms": gpm, "ratio_packed": gpm and ms / gpm, "gpu": (g or gp or {}).get("gpu")})
others = [o for o in allours if o["impl"] != "splatforge-cuda"]
if others:
    print("kernel variants (fwd+bwd median ms / fwd only):")
    for o in others:
        g = match(o)
        r = f' ratio {o["fwd_bwd_ms_median"] / g["fwd_bwd_ms_median"]:.2f}' if g else ""
        print(f'  {o["impl"]:24s} {o["n"]:>7d} {o["width"]}x{o["height"]} x{o["cams"]}: {o["fwd_bwd_ms_median"]:.3f} / {o["fwd_ms_median"]:.3f}{r}')
p = load("parity.json")
if p:
    print("parity:", "PASSED" if p["pass"] else "FAILED", "worst:", json.dumps(p["worst"]))
with open(os.path.join(out, "summary.json"), "w") as f:
    json.dump({"bench": rows, "parity_pass": p and p["pass"]}, f, indent=1)
EOF
exit $status
