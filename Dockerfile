# syntax=docker/dockerfile:1
# splatforge for 404-GEN's competition 0: `POST /generate` (multipart `prompt_image_file` +
# `seed`) → the PLY, `GET /health`, port 10006 (Competitions/competition0.md in
# 404-Repo/404-gen-subnet). Build: `docker build -t splatforge .` (from the repository root).
# Run on a machine with an NVIDIA driver for CUDA 13.0 and the container toolkit:
#   docker run --gpus all -p 10006:10006 -v /srv/hf:/models/huggingface splatforge
# Weights: the Hugging Face cache at /models/huggingface (HF_HOME). A mounted cache that holds
# microsoft/TRELLIS-image-large, facebook/dinov2-with-registers-large, ZhengPeng7/BiRefNet and
# ZhengPeng7/BiRefNet_lite (the deadline fallback) is used as it is (add -e HF_HUB_OFFLINE=1
# to forbid downloads, as an audit re-run may); otherwise splatforge fetches them into it at
# start, before /health turns 200.

# ---- build: the same steps as the GPU machine's binaries (tools/build-splatforge.sh runs
# tools/cuda-toolchain.sh's pinned CUDA 13.0 wheels and cuDNN, then cargo --locked). --------
FROM nvidia/cuda:13.0.0-cudnn-devel-ubuntu24.04 AS build
ARG RUST_VERSION=1.95.0
ENV DEBIAN_FRONTEND=noninteractive \
    RUSTUP_HOME=/usr/local/rustup CARGO_HOME=/usr/local/cargo \
    PATH=/usr/local/cargo/bin:$PATH
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl build-essential pkg-config \
      python3 python3-pip unzip \
 && rm -rf /var/lib/apt/lists/* \
 && curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal --default-toolchain "$RUST_VERSION"
WORKDIR /src
COPY . .
# .git stays out of the context (.dockerignore): `--build-arg SPLATFORGE_GIT_HASH=$(git
# rev-parse --short=12 HEAD)` puts the commit into GET /version.
ARG SPLATFORGE_GIT_HASH=""
ENV SPLATFORGE_GIT_HASH=$SPLATFORGE_GIT_HASH
# cuda-toolchain.sh installs its wheels with `pip --target` (no system packages touched).
ENV PIP_BREAK_SYSTEM_PACKAGES=1 CARGO_TARGET_DIR=/src/target-cuda
# Fetch first: cuda-toolchain.sh's libcuda stub also exports every driver function cudarc's
# sources bind, read from the cargo registry, as on the build machine.
RUN cargo fetch --locked \
 && tools/build-splatforge.sh \
 && strip target-cuda/release/splatforge \
 && cp target-cuda/release/splatforge /usr/local/bin/splatforge

# ---- run: the CUDA runtime with cuDNN 9 (cuBLAS, cuRAND, NVRTC, libcudnn*.so.9); the driver's
# libcuda comes from the host through the container toolkit. ------------------------------
FROM nvidia/cuda:13.0.0-cudnn-runtime-ubuntu24.04
COPY --from=build /usr/local/bin/splatforge /usr/local/bin/splatforge
ENV HF_HOME=/models/huggingface \
    TORCH_HOME=/models/torch
VOLUME /models
EXPOSE 10006
# 28 s of the competition's 30 s for each generation (time counts to the response headers;
# the rest is the network's): a request that would not fit is degraded, not late.
ENTRYPOINT ["splatforge"]
CMD ["serve", "--profile", "image-quality", "--host", "0.0.0.0", "--port", "10006", "--deadline-ms", "28000"]
