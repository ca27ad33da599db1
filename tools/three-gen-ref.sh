#!/usr/bin/env bash
# Extracts the 404 reference miner's text → 3D code (404-Repo/three-gen-subnet, MIT) into the
# git-ignored .gpu-ref/three-gen/generation, for tools/reference_miner.py (suite reference-miner
# of tools/gpu-suite.sh). Nothing of it is committed here: it is read from a local clone at run
# time, as .gpu-ref/trellis-ref is. Only what the text path imports: DreamGaussianLib, configs,
# the MVDream and ImageDream packages (ModelsPreLoader imports ImageDream's module too), the
# licences; not data/ (pictures), serve.py's FastAPI app or the ImageDream assets (~0.5 MiB left).
#
#   tools/three-gen-ref.sh [GIT_DIR]   # default $THREE_GEN_GIT or /work/.mirror/404-Repo+three-gen-subnet/repo
#
# Re-running replaces the folder; .gpu-ref/three-gen/COMMIT names the commit extracted
# (REV, default HEAD; the notes and profiles were written against 5fc61f1).
set -euo pipefail
cd "$(dirname "$0")/.."
GIT_DIR="${1:-${THREE_GEN_GIT:-/work/.mirror/404-Repo+three-gen-subnet/repo}}"
REV="${REV:-HEAD}"
exclude="$(git rev-parse --git-path info/exclude)"
grep -qx '/.gpu-ref/' "$exclude" 2>/dev/null || echo '/.gpu-ref/' >> "$exclude"
DEST=.gpu-ref/three-gen
rm -rf "$DEST"; mkdir -p "$DEST"
git -C "$GIT_DIR" archive "$REV" generation/DreamGaussianLib generation/configs \
  generation/extras/MVDream/mvdream generation/extras/MVDream/LICENSE-CODE \
  generation/extras/ImageDream/imagedream generation/extras/ImageDream/LICENSE-CODE \
  generation/LICENSE generation/LICENSE_GAUSSIAN_SPLATTING.md generation/serve.py generation/requirements.txt \
  | tar -x -C "$DEST"
git -C "$GIT_DIR" rev-parse "$REV" > "$DEST/COMMIT"
du -sh "$DEST"; echo "commit $(cat "$DEST/COMMIT")"
