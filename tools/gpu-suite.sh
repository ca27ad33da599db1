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
# Suites: mesh (tools/gpu-mesh.sh), image (an opaque 1024² RGB picture → matte → TRELLIS → PLY,
# image-quality and image-speed, and image → GLB, on full-size random weights calibrated to VOXELS), ops (TRELLIS' cuDNN 3-D convolution and fused LayerNorm + modulation vs the CPU paths), trellis-asset (stage 2 and the decoder on a real asset's voxels, ours and the official run_detail_variation), trellis-kernels (per-kernel times of a short image → PLY run and of one step of each flow beside its wall time, ncu), graphs (crates/trellis/examples/graph_probe.rs: a stage-1 flow step captured as a CUDA graph, replay against eager), raster (tools/gpu-raster.sh), fit (tools/gpu-fit.sh, parity only unless FIT_FULL=1),
# diffusion (tools/diffusion_parity.py: ops, unet, vae unless PARITY_SECTIONS is set),
# pipeline (tools/gpu-pipeline.sh, PROFILES default "speed quality"),
# trellis (tools/gpu-trellis-parity.sh), matte (tools/gpu-matte-parity.sh), matte-kernels (per-kernel
# GPU time of our BiRefNet at 1024² bf16 under ncu, MATTE_MODEL swin-l or swin-t),
# trellis-e2e (image → PLY on full-size random weights, calibrated to VOXELS occupied voxels:
# `splatforge generate --image` against the official pipeline, tools/trellis_reference.py, same
# folder and steps; then, unless SHIMS=0, the official run again with --time-shims for the
# shims' own cost), trellis-e2e-parity (issue 12's end-to-end parity on the same folder: the
# official pipeline runs once with seed 0 and dumps the noise torch.randn drew, its voxels, latents
# and PLY (tools/trellis_reference.py --dump-noise --dump-ply); `splatforge generate --image
# --noise` runs ours from that noise (--save-latents); tools/trellis_e2e_parity.py compares voxel
# sets and every PLY property, PASS at relative L2 ≤ PARITY_BOUND, default 2e-2 for the fp16
# torsos of image-quality), text (tools/gpu-text.sh: `generate --prompt --profile text-image-quality`, FLUX.1-schnell
# 4 steps → matte → TRELLIS on full-size random weights, FLUX 33.7 GB written here first and its write
# timed; TEXT_SIDES default "512 1024", TEXT_PROFILES default text-image-quality (add text-image-speed), TEXT_REPEAT 3, TRELLIS calibrated to VOXELS per side),
# python-chain (tools/gpu-python-chain.sh, issue 13: ours against the Python chain 404's base miner
# runs, tools/python_chain_reference.py: diffusers FLUX.1-schnell bf16 → official BiRefNet fp16 →
# official TRELLIS → save_ply, per stage and total as ours/chain; image → PLY on the image suite's
# photo and folder, then text → PLY at CHAIN_SIDE (default 1024) on gpu-text.sh's FLUX and
# calibrated folder, written unless there; CHAIN_PARTS default "image text", CHAIN_REPEAT 2,
# OURS_REPEAT 3),
# service (`splatforge bench --suite service`: results per hour and p50/p90/p99 latency of
# `serve` with 4 clients in a closed loop, `speed` on full-size random MVDream and `image-speed`
# on the image suite's calibrated TRELLIS folder, 1, 2 and 4 workers per device, SERVICE_S
# seconds a case (default 30: the six cases with their server starts, warm-ups and the model
# writes take about 8 minutes); SERVICE_WORKERS default "1,2,4", SERVICE_PROFILES default
# "speed image-speed"; $OUT/service/service.{json,md}),
# reference-miner (tools/gpu-reference-miner.sh, issue 18: ours against the 404 reference miner's
# text → 3D, its own DreamGaussian + MVDream SDS code from .gpu-ref/three-gen
# (tools/three-gen-ref.sh) run by tools/reference_miner.py as its serve.py runs it, on full-size
# random MVDream: ours `generate --profile reference-fast` (or reference-text-mv) in fp32 and
# fp16, theirs the same settings in fp32, ours/theirs per stage and in total; MINER_VARIANTS
# default "fast" (the seeds' text_mv_fast: 250 iterations, batch 4, 4000 points, guidance 50),
# "text_mv" the shipped config (1000 iterations; about as long again: one variant a call on a
# cold machine), MINER_REPEAT 2, OURS_REPEAT 3).
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
      --example stage1_parity --example slat_flow_parity --example gs_decoder_parity --example ops_parity \
      --example graph_probe
    eval "$(tools/cuda-toolchain.sh)"
    CARGO_TARGET_DIR="$TARGET" cargo build --release --locked -p splatforge-matte --features cudnn \
      --example matte_parity
    CARGO_TARGET_DIR="$TARGET" cargo build --release --locked -p splatforge-mesh --features cuda \
      --example gpu_mesh
    mkdir -p .whl
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
      -d .whl gsplat==1.5.3 diffusers==0.42.1 importlib_metadata easydict plyfile einops==0.8.1 timm==1.0.15 \
      omegaconf==2.3.0 loguru==0.7.2 open_clip_torch==2.24.0 ftfy==6.3.1 wcwidth==0.9.5
    # omegaconf's parser runtime has no wheel on PyPI: built here (pure Python).
    ls .whl/antlr4_python3_runtime-4.9.3-*.whl > /dev/null 2>&1 \
      || python3 -m pip wheel -q --no-deps -w .whl antlr4-python3-runtime==4.9.3
    # The 404 reference miner's code (suite reference-miner), when its clone is here.
    [[ -d "${THREE_GEN_GIT:-/work/.mirror/404-Repo+three-gen-subnet/repo}" ]] && tools/three-gen-ref.sh
    echo "Official sources go in .gpu-ref/ (see tools/gpu-trellis-parity.sh, tools/gpu-matte-parity.sh and tools/three-gen-ref.sh)."
    exit 0
    ;;
  --pack)
    set -e
    # PACK (default: all) picks the binaries, to stay under the 64 MiB a device call carries.
    for b in ${PACK:-splatforge gpu_raster gpu_fit diffusion_parity stage1_parity slat_flow_parity gs_decoder_parity ops_parity matte_parity gpu_mesh graph_probe}; do
      case "$b" in
        splatforge) pack_binary "$TARGET/release/splatforge" splatforge ;;
        diffusion_parity) pack_binary "$TARGET/release/examples/parity" diffusion_parity ;;
        *) pack_binary "$TARGET/release/examples/$b" "$b" ;;
      esac
    done
    cp ../shared/fixtures/hamburger.ply .gpu-bin/hamburger.ply
    cp ../shared/fixtures/ghost_rgba.png .gpu-bin/ghost_rgba.png  # trellis-e2e's input (no shared/ there)
    cp ../shared/fixtures/robocop-with-hammer.spz .gpu-bin/robocop-with-hammer.spz  # the mesh suite's
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
# photo_1024: an opaque picture (ghost_rgba.png on white, 1024², /tmp/photo_1024.png), like
# the ones 404's orchestrator sends, so that the matte network runs.
photo_1024() {
  python3 - <<'PY'
from PIL import Image
im = Image.open(".gpu-bin/ghost_rgba.png").convert("RGBA")
bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
bg.alpha_composite(im)
bg.convert("RGB").resize((1024, 1024), Image.LANCZOS).save("/tmp/photo_1024.png")
PY
}
# calibrated_trellis DIR PICTURE: full-size random TRELLIS whose structure decoder is
# calibrated on the cut-out the random matte makes of PICTURE (a first short run saves it), so
# that runs on PICTURE see VOXELS voxels. Written next to DIR and renamed at the end: DIR exists
# only complete. Exported for the suites' `bash -c`.
calibrated_trellis() {
  # Each step checked here: `set -e` does not reach into a function called in a condition.
  local m=$1 p=$2
  rm -rf "$m" "$m.part" /tmp/trellis-uncalibrated /tmp/cut
  /tmp/splatforge models make-random --family trellis --size full /tmp/trellis-uncalibrated || return
  /tmp/splatforge generate --image "$p" --models /tmp/trellis-uncalibrated --profile image-speed \
    --ss-steps 1 --slat-steps 1 --save-views /tmp/cut -o /tmp/cut.ply > /dev/null || return
  rm -rf /tmp/trellis-uncalibrated
  /tmp/splatforge models make-random --family trellis --size full "$m.part" \
    --voxels "${VOXELS:-20000}" --calibration-image /tmp/cut/cutout.png || return
  mv "$m.part" "$m"
}
export -f calibrated_trellis
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
    # env, not a prefix on `suite`: a prefix would change DEADLINE_S for suite's own budget.
    pipeline) suite pipeline env PROFILES="${PROFILES:-speed quality}" DEADLINE_S=$(($(left) - 30)) tools/gpu-pipeline.sh ;;
    trellis-kernels)
      # Per-kernel GPU time of image → PLY runs under Nsight Compute (duration only), summed by
      # kernel name: a whole run with 2 + 2 sampler steps (kernels.md), and one step of each
      # flow as the difference of runs with 2 more steps of it (kernels_{ss,slat}_step.md, every
      # step guided: rescale_t 3 and the interval [0.5, 1] cover 2 and 4 steps), beside that
      # step's wall time outside the profiler (the same difference of plain runs): what the
      # GPU spends in kernels, and what is launch and host time.
      unxz_to .gpu-bin/splatforge.xz /tmp/splatforge; chmod +x /tmp/splatforge
      suite trellis-kernels bash -c 'set -e; M=/tmp/trellis-full
        [[ -d $M ]] || /tmp/splatforge models make-random --family trellis --size full $M \
          --voxels "${VOXELS:-20000}" --calibration-image .gpu-bin/ghost_rgba.png
        NCU_BIN="$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu | head -1)"
        gen() { /tmp/splatforge generate --image .gpu-bin/ghost_rgba.png --models $M --profile image-quality \
          --set trellis.sparse_structure_steps=$1 --set trellis.slat_steps=$2 -o /tmp/k.ply "${@:3}"; }
        gen 2 2 --repeat 3 --json > "$OUT/wall_2_2.jsonl"
        gen 4 4 --repeat 3 --json > "$OUT/wall_4_4.jsonl"
        step_ms() { python3 -c "import json, statistics as st, sys
m = lambda f: st.median(json.loads(l)[\"stages_ms\"][sys.argv[1]] for l in list(open(f))[1:])
print(round((m(sys.argv[3]) - m(sys.argv[2])) / 2, 2))" $1 "$OUT/wall_2_2.jsonl" "$OUT/wall_4_4.jsonl"; }
        for s in "2 2" "4 2" "2 4"; do set -- $s
          "$NCU_BIN" --clock-control none --metrics gpu__time_duration.sum --csv --log-file "$OUT/ncu_$1_$2.csv" \
            /tmp/splatforge generate --image .gpu-bin/ghost_rgba.png --models $M --profile image-quality \
            --set trellis.sparse_structure_steps=$1 --set trellis.slat_steps=$2 -o /tmp/k.ply >> "$OUT/run.log" 2>&1
        done
        python3 tools/kernel_summary.py "$OUT/ncu_2_2.csv" | tee "$OUT/kernels.md"
        python3 tools/kernel_summary.py "$OUT/ncu_4_2.csv" --base "$OUT/ncu_2_2.csv" --per 2 \
          --wall-ms "$(step_ms sparse_structure)" | tee "$OUT/kernels_ss_step.md"
        python3 tools/kernel_summary.py "$OUT/ncu_2_4.csv" --base "$OUT/ncu_2_2.csv" --per 2 \
          --wall-ms "$(step_ms slat)" | tee "$OUT/kernels_slat_step.md"' ;;
    matte-kernels)
      # Per-kernel GPU time of our BiRefNet (MATTE_MODEL: swin-l, or swin-t for the lite) at 1024²
      # in bf16 under Nsight Compute (duration only), summed by kernel name over both runs of
      # `--time 1` (the first and the timed second: the shares are what to read): where the
      # matte's 2.3–3.9× against the official fp16 model goes.
      unxz_to .gpu-bin/matte_parity.xz /tmp/matte_parity; chmod +x /tmp/matte_parity
      suite matte-kernels bash -c 'set -e; D=/tmp/matte-${MATTE_MODEL:-swin-l}
        [[ -f $D/model.safetensors ]] || /tmp/matte_parity write $D --model "${MATTE_MODEL:-swin-l}"
        NCU_BIN="$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu | head -1)"
        "$NCU_BIN" --clock-control none --metrics gpu__time_duration.sum --csv --log-file "$OUT/ncu.csv" \
          /tmp/matte_parity run $D --dtype bf16 --time 1 > "$OUT/run.log" 2>&1
        tail -3 "$OUT/run.log"
        python3 tools/kernel_summary.py "$OUT/ncu.csv" | tee "$OUT/kernels.md"' ;;
    graphs)  # Whether a stage-1 flow step captures as a CUDA graph, and what replay saves.
      unxz_to .gpu-bin/graph_probe.xz /tmp/graph_probe; chmod +x /tmp/graph_probe
      # The suites' full-size folder when one of them wrote it, else the probe writes stage 1.
      suite graphs bash -c 'set -o pipefail; M=/tmp/trellis-full
        /tmp/graph_probe /tmp/graph-probe $([[ -d $M ]] && echo --models $M) | tee "$OUT/graph_probe.json"' ;;
    trellis) suite trellis tools/gpu-trellis-parity.sh ;;
    matte) suite matte tools/gpu-matte-parity.sh ;;
    mesh) suite mesh tools/gpu-mesh.sh ;;
    ops)  # TRELLIS' GPU-only op paths against the CPU paths; f32 without TF32, as the parity runs.
      unxz_to .gpu-bin/ops_parity.xz /tmp/ops_parity; chmod +x /tmp/ops_parity
      suite ops env NVIDIA_TF32_OVERRIDE=0 /tmp/ops_parity ;;
    image)
      unxz_to .gpu-bin/splatforge.xz /tmp/splatforge; chmod +x /tmp/splatforge
      photo_1024
      suite image bash -c 'set -e; M=/tmp/trellis-photo; P=/tmp/photo_1024.png
        calibrated_trellis $M $P
        for profile in image-quality image-speed; do
          /tmp/splatforge generate --image $P --models $M --profile $profile --repeat "${OURS_REPEAT:-4}" \
            --json -o /tmp/photo.ply > "$OUT/$profile.jsonl" 2> "$OUT/$profile.stderr"
          tail -3 "$OUT/$profile.stderr"
        done
        /usr/bin/time -v /tmp/splatforge generate --image $P --models $M --profile image-speed --json \
          -o "$OUT/photo.glb" > "$OUT/glb.jsonl" 2> "$OUT/glb.stderr"
        tail -25 "$OUT/glb.stderr"; ls -la "$OUT"' ;;
    trellis-asset)
      # Stage 2 and the decoder on a real asset's voxels (hamburger.ply's centres voxelised:
      # 22,631 voxels, about 7,100 tokens after stage 2's downsampling, where the calibrated
      # random structure's 20,000 scattered voxels give about 17,000), stage 1 skipped on both
      # sides: ours `generate --structure`, theirs `run_detail_variation`. Random weights
      # (the structure decoder is not used, so no calibration).
      python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/easydict-*.whl .whl/plyfile-*.whl
      unxz_to .gpu-bin/splatforge.xz /tmp/splatforge; chmod +x /tmp/splatforge
      PYTHONPATH=/tmp/site suite trellis-asset bash -c 'set -e; M=/tmp/trellis-full
        [[ -d $M ]] || /tmp/splatforge models make-random --family trellis --size full $M
        python3 tools/voxelize_splat.py .gpu-bin/hamburger.ply /tmp/asset.safetensors | tee "$OUT/asset.txt"
        for profile in image-quality image-speed; do
          /tmp/splatforge generate --image .gpu-bin/ghost_rgba.png --models $M --profile $profile \
            --structure /tmp/asset.safetensors --repeat "${OURS_REPEAT:-4}" --json -o /tmp/asset.ply \
            > "$OUT/ours_$profile.jsonl" 2> "$OUT/ours_$profile.stderr"
        done
        python3 tools/trellis_reference.py $M --image .gpu-bin/ghost_rgba.png --structure /tmp/asset.safetensors \
          --repeat "${REF_REPEAT:-3}" --ours "$OUT/ours_image-quality.jsonl" --json "$OUT/reference.json" \
          2> "$OUT/reference.stderr"' ;;
    trellis-e2e)
      python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/easydict-*.whl .whl/plyfile-*.whl
      unxz_to .gpu-bin/splatforge.xz /tmp/splatforge; chmod +x /tmp/splatforge
      # Ours takes no --warm-up with --image: 4 runs after one load, the reference drops the first.
      PYTHONPATH=/tmp/site suite trellis-e2e bash -c 'set -e; M=/tmp/trellis-full; rm -rf $M
        /tmp/splatforge models make-random --family trellis --size full $M \
          --voxels "${VOXELS:-20000}" --calibration-image .gpu-bin/ghost_rgba.png
        /tmp/splatforge generate --image .gpu-bin/ghost_rgba.png --models $M --profile image-quality \
          --repeat "${OURS_REPEAT:-4}" --json -o /tmp/trellis-e2e.ply > "$OUT/ours.jsonl" 2> "$OUT/ours.stderr"
        # The same with our attention kernel only (SPLATFORGE_ATTENTION; the default is auto).
        SPLATFORGE_ATTENTION=fused /tmp/splatforge generate --image .gpu-bin/ghost_rgba.png --models $M \
          --profile image-quality --repeat "${OURS_REPEAT:-4}" --json -o /tmp/trellis-e2e-fused.ply \
          > "$OUT/ours_fused.jsonl" 2> "$OUT/ours_fused.stderr"
        python3 tools/trellis_reference.py $M --image .gpu-bin/ghost_rgba.png --repeat "${REF_REPEAT:-3}" \
          --ours "$OUT/ours.jsonl" --ours "$OUT/ours_fused.jsonl" --json "$OUT/reference.json" 2> "$OUT/reference.stderr"
        [[ "${SHIMS:-1}" == 0 ]] || python3 tools/trellis_reference.py $M --image .gpu-bin/ghost_rgba.png --repeat 2 \
          --ours "$OUT/ours.jsonl" --time-shims --json "$OUT/reference_shims.json" 2>> "$OUT/reference.stderr" | tail -12' ;;
    trellis-e2e-parity)
      python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/easydict-*.whl .whl/plyfile-*.whl
      unxz_to .gpu-bin/splatforge.xz /tmp/splatforge; chmod +x /tmp/splatforge
      # The trellis-e2e suite's folder when it ran before in this call; both sides at the
      # pipeline.json samplers (image-quality's, the official default). A failing side shows
      # its last lines (ours names the voxel counts when the structures differ).
      PYTHONPATH=/tmp/site suite trellis-e2e-parity bash -c 'set -e; M=/tmp/trellis-full
        [[ -d $M ]] || /tmp/splatforge models make-random --family trellis --size full $M \
          --voxels "${VOXELS:-20000}" --calibration-image .gpu-bin/ghost_rgba.png
        python3 tools/trellis_reference.py $M --image .gpu-bin/ghost_rgba.png --seed 0 --repeat 0 \
          --dump-noise /tmp/e2e-noise.safetensors --dump-ply /tmp/e2e-official.ply \
          --json "$OUT/reference.json" 2> "$OUT/reference.stderr" || { tail -5 "$OUT/reference.stderr"; exit 1; }
        /tmp/splatforge generate --image .gpu-bin/ghost_rgba.png --models $M --profile image-quality \
          --noise /tmp/e2e-noise.safetensors --save-latents /tmp/e2e-ours.safetensors --json \
          -o /tmp/e2e-ours.ply > "$OUT/ours.jsonl" 2> "$OUT/ours.stderr" || { tail -3 "$OUT/ours.stderr"; exit 1; }
        python3 tools/trellis_e2e_parity.py --official /tmp/e2e-noise.safetensors \
          --official-ply /tmp/e2e-official.ply --ours /tmp/e2e-ours.ply \
          --ours-latents /tmp/e2e-ours.safetensors --bound "${PARITY_BOUND:-2e-2}" --json "$OUT/parity.json"' ;;
    text)
      unxz_to .gpu-bin/splatforge.xz /tmp/splatforge; chmod +x /tmp/splatforge
      suite text env SPLATFORGE=/tmp/splatforge SIZE=full WORKDIR=/tmp tools/gpu-text.sh ;;
    python-chain)
      python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/diffusers-*.whl \
        .whl/importlib_metadata-*.whl .whl/easydict-*.whl .whl/plyfile-*.whl .whl/einops-*.whl .whl/timm-*.whl
      unxz_to .gpu-bin/splatforge.xz /tmp/splatforge; chmod +x /tmp/splatforge
      photo_1024
      PYTHONPATH=/tmp/site suite python-chain tools/gpu-python-chain.sh ;;
    reference-miner)
      python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/diffusers-*.whl \
        .whl/importlib_metadata-*.whl .whl/plyfile-*.whl .whl/omegaconf-*.whl .whl/antlr4_python3_runtime-*.whl \
        .whl/loguru-*.whl .whl/open_clip_torch-*.whl .whl/ftfy-*.whl .whl/wcwidth-*.whl
      install_gsplat  # exports PYTHONPATH=/tmp/site
      unxz_to .gpu-bin/splatforge.xz /tmp/splatforge; chmod +x /tmp/splatforge
      suite reference-miner tools/gpu-reference-miner.sh ;;
    service)
      unxz_to .gpu-bin/splatforge.xz /tmp/splatforge; chmod +x /tmp/splatforge
      photo_1024
      # The models of the pipeline suite (MVDream, bf16) and of the image suite (TRELLIS
      # calibrated on the same picture), reused when an earlier suite of this call wrote them.
      # The table is printed at the end; $OUT/service.md has the cases done so far if cut off.
      suite service bash -c 'set -e; MV=/tmp/splatforge-models/mvdream-full-bf16; M=/tmp/trellis-photo
        P=/tmp/photo_1024.png
        [[ -f $MV/model_index.json ]] || /tmp/splatforge models make-random $MV --size full --dtype bf16
        [[ -d $M ]] || calibrated_trellis $M $P
        profiles=(); for p in ${SERVICE_PROFILES:-speed image-speed}; do profiles+=(--profile "$p"); done
        /tmp/splatforge bench --suite service "${profiles[@]}" --models $MV --trellis $M --image $P \
          --workers "${SERVICE_WORKERS:-1,2,4}" --concurrency 4 --duration "${SERVICE_S:-30}" \
          --device cuda:0 --json "$OUT/service.json" --md "$OUT/service.md"' ;;
    *) echo "unknown suite $s" | tee -a "$WORK/summary.txt"; status=1 ;;
  esac
done
mkdir -p "$FINAL"
cp "$WORK/summary.txt" "$FINAL/summary.txt"
tar -czf "$FINAL/results.tar.gz" -C "$WORK" --exclude='*.ply' --exclude='*.safetensors' .
ls -la "$FINAL"
exit $status
