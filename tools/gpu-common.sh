# shellcheck shell=bash
# Steps shared by the GPU scripts (tools/gpu-fit.sh, gpu-raster.sh, gpu-pipeline.sh), sourced by
# each from the repository root. Only functions: sourcing changes nothing by itself.

# pack_binary FILE NAME: strip FILE and xz it into .gpu-bin/NAME.xz, the folder the device run
# carries (git-ignored via the repository's info/exclude, which a worktree shares).
pack_binary() {
  mkdir -p .gpu-bin
  local exclude
  exclude="$(git rev-parse --git-path info/exclude)"
  grep -qx '/.gpu-bin/' "$exclude" 2>/dev/null || echo '/.gpu-bin/' >> "$exclude"
  cp "$1" ".gpu-bin/$2"
  strip ".gpu-bin/$2"
  xz -T2 -6 -f ".gpu-bin/$2"
}

# unxz_to SRC DEST: decompresses the xz file SRC into DEST with Python's lzma module.
unxz_to() {
  python3 -c "import lzma,shutil,sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2],'wb'))" "$1" "$2"
}

# use_cuda_runtime: puts the GPU machine's CUDA 13.0 libraries first on LD_LIBRARY_PATH (the
# binaries are linked against CUDA 13.0; see tools/cuda-toolchain.sh).
use_cuda_runtime() {
  export LD_LIBRARY_PATH="/usr/local/cuda-13.0/lib64:${LD_LIBRARY_PATH:-}"
}

# install_gsplat: gsplat 1.5.3 from .whl/ into /tmp/site, on PYTHONPATH, for the reference
# benchmarks. gsplat JIT-compiles its CUDA code on first use (~60 s) into TORCH_EXTENSIONS_DIR
# (default /tmp/torch_ext). A gsplat_cuda.so kept from an earlier run (.gpu-bin/gsplat_cuda.so.xz,
# same wheel, same image) is loaded instead: gsplat first tries `from gsplat import csrc`, which
# this shim points at the library.
install_gsplat() {
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/gsplat-*.whl
  export PYTHONPATH=/tmp/site TORCH_CUDA_ARCH_LIST=9.0
  export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-/tmp/torch_ext}"
  if [[ -f .gpu-bin/gsplat_cuda.so.xz ]]; then
    unxz_to .gpu-bin/gsplat_cuda.so.xz /tmp/gsplat_cuda.so
    cat > /tmp/site/gsplat/csrc.py <<'PY'
import importlib.util, sys
_spec = importlib.util.spec_from_file_location("gsplat_cuda", "/tmp/gsplat_cuda.so")
_mod = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_mod)
sys.modules[__name__] = _mod
PY
  fi
}
