#!/usr/bin/env bash
# The `text` suite of tools/gpu-suite.sh: `splatforge generate --prompt "a red chair" --profile
# text-image-quality` (FLUX.1-schnell 4 steps → BiRefNet matte → TRELLIS → PLY) timed on full-size
# random weights, at each FLUX side of TEXT_SIDES.
#
#  1. FLUX.1-schnell with random bf16 weights (`models make-random --family flux`, 33.7 GB,
#     streamed), into $WORKDIR/flux-$SIZE, unless a finished one is there (make-random renames the
#     folder into place only when complete): a warm machine keeps it between device calls, so the
#     sides can be split over calls (TEXT_SIDES=512, then TEXT_SIDES=1024) when one call's 10 minutes are
#     too few. The write's time is printed and saved in $OUT/flux-write.txt.
#  2. Per side: a TRELLIS folder calibrated so that TRELLIS sees about VOXELS occupied voxels on
#     this prompt, kept as $WORKDIR/trellis-text-$SIDE until another side starts (one kept at a
#     time; reused when a finished one is there, and by tools/gpu-python-chain.sh). Random
#     weights occupy about half of the 64³ grid, real assets a few percent, and stage 2's cost
#     follows the count. The calibration image is the cut-out the random matte makes
#     of FLUX's picture at this side (seed 42, the profile's), which a first short run (1 + 1
#     TRELLIS steps, uncalibrated TRELLIS) saves; it differs per side, hence one folder per side.
#  3. Per profile of TEXT_PROFILES (default text-image-quality; e.g. "text-image-quality
#     text-image-speed"), TEXT_REPEAT runs after one load, --json, into $OUT/text-$SIDE.jsonl
#     (text-$SIDE-PROFILE.jsonl for the others); then per-stage medians. The folder is calibrated
#     on text-image-quality's cut-out (BiRefNet); another profile's matte may cut a little
#     differently, so its voxel counts (shown per run) differ a little.
#     `--repeat` gives run k the seed 42 + k − 1, so the FLUX picture (and the voxel count, shown
#     per run) differs between runs.
#
# Disk: FLUX 33.7 GB + two TRELLIS folders of ~4 GB (the uncalibrated one is removed at the end,
# the calibrated one of the last side kept); the other suites' TRELLIS folders are removed first.
#
# Env: SPLATFORGE (default /tmp/splatforge), SIZE (full; tiny tries these command lines on the
# CPU in minutes, with VOXELS small: the tiny grid is 16³), TEXT_SIDES ("512 1024"), TEXT_PROFILES
# (text-image-quality), TEXT_REPEAT (3),
# VOXELS (20000), WORKDIR (/tmp), OUT (results; default ./text-out).
set -euo pipefail
SF="${SPLATFORGE:-/tmp/splatforge}"
SIZE="${SIZE:-full}"
W="${WORKDIR:-/tmp}"
OUT="${OUT:-$PWD/text-out}"
PROMPT="a red chair"
F="$W/flux-$SIZE"
U="$W/trellis-text-uncalibrated"
M="$W/trellis-text"
mkdir -p "$OUT"
# summarise JSONL: runs, load time, voxels per run, per-stage and total medians.
summarise() {
  python3 - "$1" <<'PY'
import json, statistics, sys
for path in sys.argv[1:]:
    runs = [json.loads(l) for l in open(path) if l.startswith("{")]
    if not runs:
        print(f"{path}: no runs"); continue
    med = lambda xs: statistics.median(xs)
    print(f"{path}: {len(runs)} runs on {runs[0]['device']}, load {runs[0]['load_ms'] / 1e3:.1f} s, "
          f"voxels {[r['voxels'] for r in runs]}")
    for stage in runs[0]["stages_ms"]:
        print(f"  {stage:<22} {med([r['stages_ms'].get(stage, 0) for r in runs]):>10.1f} ms")
    print(f"  {'total':<22} {med([r['total_ms'] for r in runs]):>10.1f} ms (median)")
PY
}
rm -rf "$W/trellis-full" "$W/trellis-photo" "$W/trellis-uncalibrated" "$U" "$M"
df -h "$W" | tail -1
if [[ -f "$F/model_index.json" ]]; then
  echo "reusing $F"
else
  t0=$SECONDS
  "$SF" models make-random --family flux --size "$SIZE" --dtype bf16 "$F" | tee "$OUT/flux-write.txt"
  echo "FLUX write: $((SECONDS - t0)) s wall" | tee -a "$OUT/flux-write.txt"
fi
du -sh "$F"
for side in ${TEXT_SIDES:-512 1024}; do
  flux_side=(--set "flux.width=$side" --set "flux.height=$side")
  K="$W/trellis-text-$side"
  # One kept folder at a time: another side's goes (disk).
  for kept in "$W"/trellis-text-[0-9]*; do [[ "$kept" == "$K" || ! -d "$kept" ]] || rm -rf "$kept"; done
  if [[ -d "$K" ]]; then
    echo "reusing $K"
  else
    [[ -d "$U" ]] || "$SF" models make-random --family trellis --size "$SIZE" "$U" | tail -1
    rm -rf "$M" "$W/cut-$side"
    "$SF" generate --prompt "$PROMPT" --flux "$F" --models "$U" --profile text-image-quality \
      "${flux_side[@]}" --ss-steps 1 --slat-steps 1 --save-views "$W/cut-$side" -o "$W/cut.ply" > /dev/null
    cp "$W/cut-$side/flux.png" "$OUT/flux-$side.png"
    cp "$W/cut-$side/cutout.png" "$OUT/cutout-$side.png"
    "$SF" models make-random --family trellis --size "$SIZE" "$M" --voxels "${VOXELS:-20000}" \
      --calibration-image "$W/cut-$side/cutout.png" | tail -1
    mv "$M" "$K"  # exists only complete
  fi
  for profile in ${TEXT_PROFILES:-text-image-quality}; do
    name="text-$side"; [[ "$profile" == text-image-quality ]] || name="text-$side-$profile"
    "$SF" generate --prompt "$PROMPT" --flux "$F" --models "$K" --profile "$profile" \
      "${flux_side[@]}" --repeat "${TEXT_REPEAT:-3}" --json -o "$W/text.ply" \
      > "$OUT/$name.jsonl" 2> "$OUT/$name.stderr"
    summarise "$OUT/$name.jsonl"
  done
  df -h "$W" | tail -1
done
rm -rf "$U"
