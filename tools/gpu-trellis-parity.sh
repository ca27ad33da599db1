#!/usr/bin/env bash
# TRELLIS component parity on the GPU machine (issue 12): stage 1 (preprocess, DINOv2, sparse-
# structure flow, sampler, decoder), the stage-2 flow and the Gaussian decoder, each against the
# official modules on identical full-size random weights, in f32 and in half precision.
#
# Here (build machine):
#   eval "$(tools/cuda-toolchain.sh)"
#   CARGO_TARGET_DIR=target-cuda cargo build --release -p splatforge-trellis --features cudnn \
#     --example stage1_parity --example slat_flow_parity --example gs_decoder_parity
#   CARGO_TARGET_DIR=target-cuda tools/gpu-trellis-parity.sh --pack
#   mkdir -p .gpu-ref/{trellis-ref,dinov2-ref,utils3d}   # official sources (read-only, git-ignored)
#   git -C <microsoft/TRELLIS> archive HEAD trellis | tar -x -C .gpu-ref/trellis-ref
#   git -C <facebookresearch/dinov2> archive HEAD dinov2 | tar -x -C .gpu-ref/dinov2-ref
#   git -C <EasternJournalist/utils3d> archive 9a4eb15e4021b67b12c460c7057d642626897ec8 utils3d | tar -x -C .gpu-ref/utils3d
#   pip download easydict, plyfile into .whl/ (see /work/.library/device/README.md's wheel notes)
# Device: run "tools/gpu-trellis-parity.sh" with carry [".gpu-bin", ".gpu-ref", ".whl"].
# PARTS (default "stage1 stage2 decoder") picks the comparisons; STAGE1_DTYPES (default "f32 bf16"),
# DECODER_DTYPES (default "f32 f16").
# Writes $OUT/trellis_parity.log; exit status 0 when every comparison is within tolerance.
set -uo pipefail
source tools/gpu-common.sh
BINS=(stage1_parity slat_flow_parity gs_decoder_parity)
if [[ "${1:-}" == --pack ]]; then
  for b in "${BINS[@]}"; do pack_binary "${CARGO_TARGET_DIR:-target}/release/examples/$b" "$b"; done
  exit 0
fi
OUT="${OUT:-/tmp/trellis-parity}"; mkdir -p "$OUT"
LOG="$OUT/trellis_parity.log"
use_cuda_runtime
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/easydict-*.whl .whl/plyfile-*.whl
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
for b in "${BINS[@]}"; do [[ -f ".gpu-bin/$b.xz" ]] || continue; unxz_to ".gpu-bin/$b.xz" "/tmp/$b"; chmod +x "/tmp/$b"; done
REF=.gpu-ref
status=0
run() { echo "+ $*" | tee -a "$LOG"; "$@" 2>&1 | tee -a "$LOG"; local rc=${PIPESTATUS[0]}; [[ $rc == 0 ]] || status=$rc; }
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee -a "$LOG"
PARTS="${PARTS:-stage1 stage2 decoder}"
has() { [[ " $PARTS " == *" $1 "* ]]; }
# Stage 1: ours writes weights, inputs and outputs; the official modules run on them.
if has stage1; then
for dt in ${STAGE1_DTYPES:-f32 bf16}; do
  run /tmp/stage1_parity /tmp/s1-$dt --size full --dtype $dt
  if [[ $dt == f32 ]]; then half=(); else half=(--fp16); fi
  run python3 crates/trellis/scripts/parity_stage1.py /tmp/s1-$dt --trellis $REF/trellis-ref --dinov2 $REF/dinov2-ref "${half[@]}"
done
fi
# Stage 2: the official script writes weights and outputs; ours loads and compares.
if has stage2; then
run python3 crates/trellis/scripts/slat_flow_parity.py $REF/trellis-ref /tmp/slat full
run /tmp/slat_flow_parity /tmp/slat bf16
run /tmp/slat_flow_parity /tmp/slat f16
fi
# Gaussian decoder: ours writes weights and outputs; the official decoder and save_ply compare.
if has decoder; then
run /tmp/gs_decoder_parity write /tmp/dec-full --full
for dt in ${DECODER_DTYPES:-f32 f16}; do
  run /tmp/gs_decoder_parity run /tmp/dec-full --dtype $dt --repeat 10
  run python3 crates/trellis/scripts/gs_decoder_parity.py /tmp/dec-full --trellis $REF/trellis-ref --utils3d $REF/utils3d --dtype $dt
done
fi
echo "status $status" | tee -a "$LOG"
exit $status
