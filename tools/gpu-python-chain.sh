#!/usr/bin/env bash
# The `python-chain` suite of tools/gpu-suite.sh (issue 13): ours against the Python chain 404's
# base miner runs (diffusers FLUX.1-schnell → official BiRefNet → official TRELLIS → save_ply,
# tools/python_chain_reference.py) on the same full-size random weights and steps, per stage and
# in total, as ours/chain. Parts (CHAIN_PARTS, default "image text"), in this order for disk:
#
#  image: the image suite's photo (/tmp/photo_1024.png, gpu-suite.sh's photo_1024) and its
#    calibrated TRELLIS folder (/tmp/trellis-photo, reused when there, else calibrated_trellis);
#    ours `generate --image --profile image-quality --repeat OURS_REPEAT --json` into
#    $OUT/ours-image.jsonl, then the chain with --image on the same folder ($OUT/chain-image.json).
#    The folder is removed afterwards when the text part follows (disk).
#  text: tools/gpu-text.sh at TEXT_SIDES=$CHAIN_SIDE (default 1024) with TEXT_REPEAT=$OURS_REPEAT
#    into $OUT/text/: it writes /tmp/flux-full (33.7 GB) unless a finished one is there, and
#    calibrates /tmp/trellis-text-$CHAIN_SIDE unless a finished one is there (it keeps it), then
#    times ours (`generate --prompt "a red chair" --profile text-image-quality --set
#    flux.width/height=SIDE --repeat N --json`); then the chain on the same FLUX and TRELLIS
#    folders, same prompt text (our flux_prompt), seed 42 and steps ($OUT/chain-text-SIDE.json).
#
# Disk: FLUX 33.7 GB + at most two TRELLIS folders of ~4 GB at a time (see gpu-text.sh).
# Time: the chain loads FLUX again (from the page cache when ours just read it); on a cold
# machine the FLUX write alone takes minutes, so split over calls when needed (CHAIN_PARTS=image,
# then CHAIN_PARTS=text: a warm machine keeps /tmp).
#
# Env: CHAIN_PARTS, CHAIN_SIDE (1024), CHAIN_REPEAT (2: timed chain runs after its warm-up),
# OURS_REPEAT (3: ours' runs; its first is dropped as the warm-up), CHAIN_MATTE_DTYPE (fp16, the
# base miner's; bf16 is ours), VOXELS (20000), OUT (results; default ./python-chain-out).
# Needs /tmp/splatforge, the wheels installed on PYTHONPATH (gpu-suite.sh does both) and
# calibrated_trellis exported (gpu-suite.sh) for the image part.
set -euo pipefail
OUT="${OUT:-$PWD/python-chain-out}"
SIDE="${CHAIN_SIDE:-1024}"
PARTS="${CHAIN_PARTS:-image text}"
mkdir -p "$OUT"
chain() {  # the chain's arguments...; its stderr into $OUT/chain.stderr
  python3 tools/python_chain_reference.py --repeat "${CHAIN_REPEAT:-2}" --seed 42 --matte birefnet \
    --matte-dtype "${CHAIN_MATTE_DTYPE:-fp16}" "$@" 2>> "$OUT/chain.stderr" \
    || { tail -20 "$OUT/chain.stderr"; return 1; }
}
for part in $PARTS; do
  case "$part" in
    image)
      M=/tmp/trellis-photo; P=/tmp/photo_1024.png
      [[ -d $M ]] || calibrated_trellis $M $P
      /tmp/splatforge generate --image $P --models $M --profile image-quality --repeat "${OURS_REPEAT:-3}" \
        --json -o /tmp/photo.ply > "$OUT/ours-image.jsonl" 2> "$OUT/ours-image.stderr"
      chain --image $P --trellis $M --ours "$OUT/ours-image.jsonl" --save-views "$OUT/views-image" \
        --json "$OUT/chain-image.json"
      [[ " $PARTS " != *" text "* ]] || rm -rf $M
      ;;
    text)
      env SPLATFORGE=/tmp/splatforge SIZE=full WORKDIR=/tmp OUT="$OUT/text" TEXT_SIDES="$SIDE" \
        TEXT_REPEAT="${OURS_REPEAT:-3}" tools/gpu-text.sh
      chain --flux /tmp/flux-full --trellis "/tmp/trellis-text-$SIDE" --prompt "a red chair" --side "$SIDE" \
        --steps 4 --ours "$OUT/text/text-$SIDE.jsonl" --save-views "$OUT/views-text-$SIDE" \
        --json "$OUT/chain-text-$SIDE.json"
      ;;
    *) echo "unknown part $part (image, text)"; exit 2 ;;
  esac
done
