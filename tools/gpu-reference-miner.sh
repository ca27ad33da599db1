#!/usr/bin/env bash
# The `reference-miner` suite of tools/gpu-suite.sh (issue 18, item 2): ours against the 404
# reference miner's text → 3D (three-gen-subnet generation/: DreamGaussian + MVDream SDS, its own
# code from .gpu-ref/three-gen, tools/three-gen-ref.sh) at the same settings, on full-size random
# MVDream, as ours/theirs per stage and in total (goal: ours ≥ 10× faster). Per variant
# (MINER_VARIANTS, default "fast"; "fast text_mv" for both):
#
#  fast: the seeds' text_mv_fast (iters 250, batch 4, 4000 points, guidance 50, ref_size 128);
#    ours `generate --profile reference-fast`;
#  text_mv: the shipped configs/text_mv.yaml (1000 iterations, batch 1, 5000 points); ours
#    `generate --profile reference-text-mv`.
#
# Ours: `splatforge generate --prompt PROMPT --profile P --warm-up --repeat OURS_REPEAT --json`
# on /tmp/splatforge-models/mvdream-full-bf16 (`models make-random --size full --dtype bf16`,
# written unless there; the pipeline and service suites use the same folder; the profiles run
# it in fp32, as the miner does) into $OUT/ours-VARIANT.jsonl; with OURS_FP16=1 (default) again
# with `--set diffusion.precision=fp16` (our products' precision) into ours-VARIANT-fp16.jsonl.
# Theirs: tools/reference_miner.py on /tmp/mvdream-ref/sd-v2.1-base-4view.pt (the official model
# with torch's default initialisation, torch.save'd on first use: 5.2 GB, tens of seconds),
# MINER_REPEAT timed requests after a 10-iteration warm-up, --ours for each of our files; its
# tables end $OUT/stdout.log, its report is $OUT/reference.json.
#
# Time (estimates, not measured): the fast variant about 5 minutes with the writes; text_mv
# (1000 iterations a side, fp32) about as long again: on a cold machine run one variant a call
# (MINER_VARIANTS=fast, then MINER_VARIANTS=text_mv MINER_REPEAT=1: a warm machine keeps /tmp).
# gsplat compiles its CUDA code in the miner's warm-up (~60 s) unless .gpu-bin/gsplat_cuda.so.xz
# is carried (gpu-common.sh's install_gsplat).
#
# Env: MINER_VARIANTS, MINER_PROMPT ("a red chair"), MINER_REPEAT (2), OURS_REPEAT (3: the first
# run is dropped as the warm-up), OURS_FP16 (1), MINER_ATTENTION (xformers-sdpa; plain: the
# miner's fallback without xformers), OUT. Needs /tmp/splatforge and the wheels on PYTHONPATH
# (gpu-suite.sh does both).
set -euo pipefail
OUT="${OUT:-$PWD/reference-miner-out}"
PROMPT="${MINER_PROMPT:-a red chair}"
MV=/tmp/splatforge-models/mvdream-full-bf16
CKPT=/tmp/mvdream-ref/sd-v2.1-base-4view.pt
mkdir -p "$OUT"
[[ -f $MV/model_index.json ]] || /tmp/splatforge models make-random $MV --size full --dtype bf16
ours() {  # variant profile suffix [generate args...]
  local v=$1 profile=$2 suffix=$3; shift 3
  /tmp/splatforge generate --prompt "$PROMPT" --models $MV --profile "$profile" --warm-up \
    --repeat "${OURS_REPEAT:-3}" --json -o "/tmp/reference-$v$suffix.ply" "$@" \
    > "$OUT/ours-$v$suffix.jsonl" 2> "$OUT/ours-$v$suffix.stderr" || { tail -5 "$OUT/ours-$v$suffix.stderr"; return 1; }
  /tmp/splatforge validate "/tmp/reference-$v$suffix.ply" | tail -1 || true  # random weights: may fail, say so
  args+=(--ours "$v=$OUT/ours-$v$suffix.jsonl")
}
args=()
for v in ${MINER_VARIANTS:-fast}; do
  case "$v" in
    fast) profile=reference-fast ;;
    text_mv) profile=reference-text-mv ;;
    *) echo "unknown variant $v (fast, text_mv)"; exit 2 ;;
  esac
  ours "$v" "$profile" ""
  [[ "${OURS_FP16:-1}" == 0 ]] || ours "$v" "$profile" -fp16 --set diffusion.precision=fp16 --set diffusion.vae_precision=fp16
  args+=(--variant "$v")
done
python3 tools/reference_miner.py --checkpoint "$CKPT" --write-checkpoint --prompt "$PROMPT" \
  --repeat "${MINER_REPEAT:-2}" --attention "${MINER_ATTENTION:-xformers-sdpa}" "${args[@]}" \
  --json "$OUT/reference.json" 2> "$OUT/reference.stderr" || { tail -30 "$OUT/reference.stderr"; exit 1; }
