#!/usr/bin/env bash
# Every GPU check and benchmark of the project in one device call, results in one archive.
#
# The device tool returns at most 8 files from $OUT and allows 10 minutes a command; each
# machine start costs minutes of the session's device time. So: build and pack everything
# here, then run the suites you need in one call; each suite writes into its own folder, runs
# under `timeout` with what is left of DEADLINE_S, and at the end everything is packed into
# $OUT/results.tar.gz (plus $OUT/summary.txt, the concatenated summaries, to read at once).
#
# Here (build machine; ~30 min cold on 2 cores, one cargo call shares candle-kernels' nvcc work):
#   tools/gpu-suite.sh --build      # CUDA toolchain, every GPU binary, wheels, references
#   tools/gpu-suite.sh --pack       # strip + xz the binaries into .gpu-bin/
# Device: run 'SUITES="trellis raster fit" tools/gpu-suite.sh' with carry
#   [".gpu-bin", ".whl", ".gpu-ref"].
# Suites: raster (tools/gpu-raster.sh), fit (tools/gpu-fit.sh, parity only unless FIT_FULL=1),
# diffusion (tools/diffusion_parity.py: ops, unet, vae unless PARITY_SECTIONS is set),
# pipeline (tools/gpu-pipeline.sh, PROFILES default "speed quality"),
# trellis (tools/gpu-trellis-parity.sh), trellis-e2e (image → PLY on full-size random weights:
# `splatforge generate --image` against the official pipeline, tools/trellis_reference.py, same
# folder and steps; then the official run again with --time-shims for the shims' own cost).
set -uo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=tools/gpu-common.sh
source tools/gpu-common.sh

TARGET="${CARGO_TARGET_DIR:-target-cuda}"
case "${1:-}" in
  --build)
    set -e
    # The product build (the Dockerfile's too), with the checks' examples in the same cargo call.
    CARGO_TARGET_DIR="$TARGET" tools/build-splatforge.sh \
      -p splatforge-render -p splatforge-fit -p splatforge-diffusion -p splatforge-trellis \
      --features "splatforge-render/cuda splatforge-fit/cuda splatforge-diffusion/cudnn splatforge-trellis/cudnn" \
      --example gpu_raster --example gpu_fit --example parity \
      --example stage1_parity --example slat_flow_parity --example gs_decoder_parity
    mkdir -p .whl
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
      -d .whl gsplat==1.5.3 diffusers==0.42.1 importlib_metadata easydict plyfile
    echo "Official sources for the TRELLIS suite go in .gpu-ref/ (see tools/gpu-trellis-parity.sh)."
    exit 0
    ;;
  --pack)
    set -e
    pack_binary "$TARGET/release/splatforge" splatforge
    pack_binary "$TARGET/release/examples/gpu_raster" gpu_raster
    pack_binary "$TARGET/release/examples/gpu_fit" gpu_fit
    pack_binary "$TARGET/release/examples/parity" diffusion_parity
    for b in stage1_parity slat_flow_parity gs_decoder_parity; do
      pack_binary "$TARGET/release/examples/$b" "$b"
    done
    cp ../shared/fixtures/hamburger.ply .gpu-bin/hamburger.ply
    cp ../shared/fixtures/ghost_rgba.png .gpu-bin/ghost_rgba.png  # trellis-e2e's input (no shared/ there)
    du -shc .gpu-bin .whl .gpu-ref 2>/dev/null
    exit 0
    ;;
esac

START=$SECONDS
DEADLINE_S="${DEADLINE_S:-570}"
SUITES="${SUITES:-trellis raster fit}"
FINAL="${OUT:-$PWD/gpu-out}"
WORK=/tmp/gpu-suite
rm -rf "$WORK"; mkdir -p "$WORK"
use_cuda_runtime
export PYTHONUNBUFFERED=1
status=0
left() { echo $((DEADLINE_S - (SECONDS - START))); }
suite() {  # name, command...
  local name=$1; shift
  local budget; budget=$(left)
  if ((budget < 20)); then echo "== $name: skipped, no time left" | tee -a "$WORK/summary.txt"; status=1; return; fi
  mkdir -p "$WORK/$name"
  echo "== $name (budget ${budget}s)" | tee -a "$WORK/summary.txt"
  local t0=$SECONDS
  OUT="$WORK/$name" timeout "$budget" "$@" > "$WORK/$name/stdout.log" 2>&1
  local rc=$?
  tail -40 "$WORK/$name/stdout.log" >> "$WORK/summary.txt"
  echo "== $name: exit $rc in $((SECONDS - t0)) s" | tee -a "$WORK/summary.txt"
  ((rc == 0)) || status=1
}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$WORK/summary.txt"
for s in $SUITES; do
  case "$s" in
    raster) suite raster tools/gpu-raster.sh ;;
    fit)
      if [[ -n "${FIT_FULL:-}" ]]; then suite fit tools/gpu-fit.sh
      else SKIP_REFERENCE=1 RUNS=1 SEEDS=0 suite fit tools/gpu-fit.sh; fi ;;
    diffusion)
      python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site \
        .whl/diffusers-*.whl .whl/importlib_metadata-*.whl
      unxz_to .gpu-bin/diffusion_parity.xz /tmp/diffusion_parity; chmod +x /tmp/diffusion_parity
      PYTHONPATH=/tmp/site PARITY_SECTIONS="${PARITY_SECTIONS:-ops,unet,vae}" \
        PARITY_ONLY="${PARITY_ONLY:-${PARITY_SECTIONS:-ops,unet,vae}}" \
        suite diffusion bash -c 'python3 tools/diffusion_parity.py /tmp/diffusion-work "$OUT" /tmp/diffusion_parity' ;;
    pipeline) PROFILES="${PROFILES:-speed quality}" DEADLINE_S=$(($(left) - 30)) suite pipeline tools/gpu-pipeline.sh ;;
    trellis) suite trellis tools/gpu-trellis-parity.sh ;;
    trellis-e2e)
      python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/easydict-*.whl .whl/plyfile-*.whl
      unxz_to .gpu-bin/splatforge.xz /tmp/splatforge; chmod +x /tmp/splatforge
      # Ours takes no --warm-up with --image: 4 runs after one load, the reference drops the first.
      PYTHONPATH=/tmp/site suite trellis-e2e bash -c 'set -e; M=/tmp/trellis-full; rm -rf $M
        /tmp/splatforge models make-random --family trellis --size full $M
        /tmp/splatforge generate --image .gpu-bin/ghost_rgba.png --models $M --profile image-quality \
          --repeat 4 --json -o /tmp/trellis-e2e.ply > "$OUT/ours.jsonl" 2> "$OUT/ours.stderr"
        python3 tools/trellis_reference.py $M --image .gpu-bin/ghost_rgba.png --repeat 3 \
          --ours "$OUT/ours.jsonl" --json "$OUT/reference.json" 2> "$OUT/reference.stderr"
        python3 tools/trellis_reference.py $M --image .gpu-bin/ghost_rgba.png --repeat 2 \
          --ours "$OUT/ours.jsonl" --time-shims --json "$OUT/reference_shims.json" 2>> "$OUT/reference.stderr" | tail -12' ;;
    *) echo "unknown suite $s" | tee -a "$WORK/summary.txt"; status=1 ;;
  esac
done
mkdir -p "$FINAL"
cp "$WORK/summary.txt" "$FINAL/summary.txt"
tar -czf "$FINAL/results.tar.gz" -C "$WORK" --exclude='*.ply' --exclude='*.safetensors' .
ls -la "$FINAL"
exit $status
