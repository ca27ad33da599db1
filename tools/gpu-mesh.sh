#!/usr/bin/env bash
# Meshing on the GPU machine (issue 15): `gpu_mesh` checks the CUDA TSDF fusion against the
# CPU path on the same renders (exit status 1 when the fields differ by more than 1e-4 τ),
# then times splat → GLB with rendering and fusion on the GPU, stage by stage, on
# robocop-with-hammer.spz (267,776 Gaussians) at 100,000 faces.
# Results go to $OUT (the device tool's output folder), else ./gpu-out.
#
# Build here first (no cargo on the GPU machine), then run there:
#   tools/cuda-toolchain.sh && source .cuda/env.sh
#   CARGO_TARGET_DIR=target-cuda cargo build --release -p splatforge-mesh --features cuda --example gpu_mesh
#   tools/gpu-mesh.sh --pack         # strip + xz the binary and the fixture into .gpu-bin/
#   device run, carry [".gpu-bin", ".whl"]:  tools/gpu-mesh.sh
set -uo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=tools/gpu-common.sh
source tools/gpu-common.sh

if [[ "${1:-}" == "--pack" ]]; then
  set -e
  pack_binary "${CARGO_TARGET_DIR:-target-cuda}/release/examples/gpu_mesh" gpu_mesh
  cp ../shared/fixtures/robocop-with-hammer.spz .gpu-bin/robocop-with-hammer.spz
  ls -la .gpu-bin
  exit 0
fi

OUT="${OUT:-$PWD/gpu-out}"
mkdir -p "$OUT"
use_cuda_runtime
BIN=/tmp/gpu_mesh
if [[ -f .gpu-bin/gpu_mesh.xz ]]; then
  unxz_to .gpu-bin/gpu_mesh.xz "$BIN"
else
  cp .gpu-bin/gpu_mesh "$BIN"
fi
chmod +x "$BIN"
nvidia-smi --query-gpu=name,driver_version --format=csv
"$BIN" .gpu-bin/robocop-with-hammer.spz --faces 100000 2>&1 | tee "$OUT/gpu_mesh.log"
exit "${PIPESTATUS[0]}"
