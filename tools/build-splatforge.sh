#!/usr/bin/env bash
# The product build, one place for every path that ships `splatforge` with CUDA: the pinned
# CUDA 13.0 toolchain (tools/cuda-toolchain.sh: nvcc, headers, cuBLAS, the libcuda link stub,
# libcudnn.so.9 to link against), then the release binary with cuDNN convolutions, from the
# locked dependencies. The Dockerfile's build stage runs this script as it is, and
# `tools/gpu-suite.sh --build` runs it with the GPU checks' examples added, so the image and
# the binaries measured on the GPU machine are built the same way.
#
# Usage: tools/build-splatforge.sh [more cargo build arguments]   (binary:
#   ${CARGO_TARGET_DIR:-target-cuda}/release/splatforge)
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(tools/cuda-toolchain.sh)"
CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target-cuda}" cargo build --release --locked \
  -p splatforge --features splatforge/cudnn --bin splatforge "$@"
