#!/usr/bin/env bash
# BiRefNet parity on the GPU machine (issue 13): first the deformable convolution alone (ours on
# the GPU against ours on the CPU and against torchvision's deform_conv2d, with both sides' times:
# `matte_parity ops`, crates/matte/scripts/deform_parity.py), then ours (crates/matte) against the official model on
# identical full-size random weights, Swin-T (BiRefNet_lite) and Swin-L (BiRefNet), f32 and bf16
# (crates/matte/scripts/birefnet_parity.py), plus the same weights as a `_orig_mod.`-prefixed
# .pth loading to the same logits.
#
# Here (build machine):
#   eval "$(tools/cuda-toolchain.sh)"
#   CARGO_TARGET_DIR=target-cuda cargo build --release -p splatforge-matte --features cudnn --example matte_parity
#   CARGO_TARGET_DIR=target-cuda tools/gpu-matte-parity.sh --pack
#   mkdir -p .gpu-ref/birefnet-ref   # the official sources (read-only, git-ignored)
#   git -C <ZhengPeng7/BiRefNet> archive HEAD config.py dataset.py image_proc.py utils.py models | tar -x -C .gpu-ref/birefnet-ref
#   pip download einops==0.8.1 timm==1.0.15 into .whl/ (see /work/.library/device/README.md's wheel notes)
# Device: run "tools/gpu-matte-parity.sh" with carry [".gpu-bin", ".gpu-ref", ".whl"].
# Writes $OUT/matte_parity.log; exit status 0 when every comparison is within tolerance.
set -uo pipefail
source tools/gpu-common.sh
if [[ "${1:-}" == --pack ]]; then
  pack_binary "${CARGO_TARGET_DIR:-target}/release/examples/matte_parity" matte_parity
  exit 0
fi
OUT="${OUT:-/tmp/matte-parity}"; mkdir -p "$OUT"
LOG="$OUT/matte_parity.log"
use_cuda_runtime
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/einops-*.whl .whl/timm-*.whl
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
unxz_to .gpu-bin/matte_parity.xz /tmp/matte_parity; chmod +x /tmp/matte_parity
status=0
run() { echo "+ $*" | tee -a "$LOG"; "$@" 2>&1 | tee -a "$LOG"; local rc=${PIPESTATUS[0]}; [[ $rc == 0 ]] || status=$rc; }
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee -a "$LOG"
NVIDIA_TF32_OVERRIDE=0 run /tmp/matte_parity ops /tmp/deform
run python3 crates/matte/scripts/deform_parity.py /tmp/deform
cp /tmp/deform/deform_parity.json "$OUT/" 2>/dev/null
for pair in ${MODELS:-swin-t:swin_v1_t swin-l:swin_v1_l}; do
  model=${pair%%:*}; bb=${pair##*:}; D=/tmp/matte-$model
  run /tmp/matte_parity write "$D" --model "$model"
  run /tmp/matte_parity run "$D" --dtype f32 --time 1
  run /tmp/matte_parity run "$D" --dtype bf16 --time 1
  run python3 crates/matte/scripts/birefnet_parity.py --src .gpu-ref/birefnet-ref --dir "$D" --backbone "$bb" --size 1024
  run python3 -c "import torch,sys; from safetensors.torch import load_file; torch.save({'_orig_mod.'+k: v for k, v in load_file(sys.argv[1]).items()}, sys.argv[2])" "$D/model.safetensors" "$D/model.pth"
  run /tmp/matte_parity run "$D" --dtype f32 --weights "$D/model.pth" --tag pth
  run python3 -c "import sys; from safetensors.torch import load_file; a=load_file(sys.argv[1])['logits']; b=load_file(sys.argv[2])['logits']; d=float((a-b).abs().max()); print(f'.pth vs safetensors logits max|diff| {d:.3e}'); sys.exit(0 if d <= 1e-5 else 1)" "$D/ours_fp32.safetensors" "$D/ours_fp32_pth.safetensors"
done
echo "status $status" | tee -a "$LOG"
exit $status
