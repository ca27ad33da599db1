#!/usr/bin/env bash
# `splatforge generate` end to end on the GPU machine, profile by profile and stage by stage,
# with full-size random-weight MVDream (the real weights cannot be downloaded there; the time
# of every operation depends on the shapes, not the values):
#   1. unpack the CUDA build of splatforge from .gpu-bin/splatforge.xz, put cuDNN's
#      libcudnn.so.9 on LD_LIBRARY_PATH (torch's wheel in the python environment, else a search);
#   2. `splatforge models make-random DIR --size full --dtype bf16` (MVDream sd-v2.1-base-4view's
#      architecture, ~1.29 B parameters, 2.6 GB), timed; kept in /tmp for a later run on the
#      same (warm) machine;
#   3. per profile: `splatforge generate --profile P --repeat N --warm-up --json` (models loaded
#      once, one warm-up generation, then N timed runs with seeds 0..N-1); JSON lines (stage
#      times in ms, load and warm-up ms, Gaussians, GPU memory, latents finite) to
#      $OUT/P.jsonl and $OUT/e2e.jsonl, stderr to $OUT/P.log; a failing profile is recorded in
#      $OUT/failures.txt and the next one runs;
#   4. each PLY checked: `splatforge validate --json` ($OUT/P.validate.json) and
#      `splatforge inspect --json` ($OUT/P.inspect.json);
#   5. a summary table (median of the timed runs per stage) to stdout and $OUT/summary.md.
# Results go to $OUT (the device tool's output folder), else ./gpu-out. Exit status: 0 when every
# profile ran and validated, else 1.
#
# Build here first (no cargo on the GPU machine), then run there:
#   tools/cuda-toolchain.sh && source .cuda/env.sh
#   CARGO_TARGET_DIR=target-cuda cargo build --release -p splatforge --features cuda   # or cudnn
#   tools/gpu-pipeline.sh --pack    # strip + xz into .gpu-bin/splatforge.xz (git-ignored)
#   device run, carry [".gpu-bin"]:  tools/gpu-pipeline.sh
#
# Time (the device tool allows 10 minutes a command): unpacking and the model write take well
# under a minute; each profile pays a process start, a 2.6 GB load and a warm-up before its
# timed runs. The profiles run cheapest first and `quality` (SDS) last, each under `timeout`
# with what is left of DEADLINE_S, so the summary is always written; a profile cut off is
# recorded as a failure (status 124).
#
# Options (environment):
#   PROFILES="speed balanced memory quality"  REPEAT=3 (timed runs per profile)
#   PROMPT="a red chair"  DEVICE=cuda:0  SIZE=full (or tiny)  DTYPE=bf16  MODELS=/tmp/... (folder)
#   DEADLINE_S=540 (seconds from the start after which no profile runs)  MIN_GAUSSIANS=7000
#   GENERATE_ARGS="--set fit.iters=100 ..." (more flags for every `generate`)
#   BIN=path (an unpacked splatforge instead of .gpu-bin/splatforge.xz)
#   CPU_SMOKE=1: a check of this script on a machine without a GPU, with the CPU build:
#     BIN=target/release/splatforge SIZE=tiny PROFILES=development DEVICE=cpu REPEAT=2
#     MIN_GAUSSIANS=0 (each still overridable), e.g.
#     cargo build --release -p splatforge && CPU_SMOKE=1 OUT=/tmp/smoke tools/gpu-pipeline.sh
set -uo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=tools/gpu-common.sh
source tools/gpu-common.sh

if [[ "${1:-}" == "--pack" ]]; then
  set -e
  pack_binary "${CARGO_TARGET_DIR:-target-cuda}/release/splatforge" splatforge
  ls -la .gpu-bin
  exit 0
fi

START=$SECONDS
log() { echo "[$(date +%H:%M:%S) +$((SECONDS - START))s] $*"; }

if [[ -n "${CPU_SMOKE:-}" ]]; then
  : "${BIN:=$PWD/target/release/splatforge}" "${SIZE:=tiny}" "${PROFILES:=development}" "${DEVICE:=cpu}"
  : "${REPEAT:=2}" "${MIN_GAUSSIANS:=0}"
fi
PROFILES="${PROFILES:-speed balanced memory quality}"
REPEAT="${REPEAT:-3}"
PROMPT="${PROMPT:-a red chair}"
DEVICE="${DEVICE:-cuda:0}"
SIZE="${SIZE:-full}"
DTYPE="${DTYPE:-bf16}"
MODELS="${MODELS:-/tmp/splatforge-models/mvdream-$SIZE-$DTYPE}"
DEADLINE_S="${DEADLINE_S:-540}"
MIN_GAUSSIANS="${MIN_GAUSSIANS:-7000}"
OUT="${OUT:-$PWD/gpu-out}"
mkdir -p "$OUT"
: > "$OUT/e2e.jsonl"
: > "$OUT/failures.txt"
status=0
fail() {  # profile, step, exit status
  echo "$1 $2 exit=$3" >> "$OUT/failures.txt"
  log "FAILED: $1 $2 (exit status $3)"
  status=1
}

# ---- 1. binary and libraries ------------------------------------------------------------------
use_cuda_runtime
if [[ -z "${BIN:-}" ]]; then
  BIN=/tmp/splatforge
  log "unpacking .gpu-bin/splatforge.xz"
  unxz_to .gpu-bin/splatforge.xz "$BIN" \
    || { log "cannot unpack .gpu-bin/splatforge.xz (run tools/gpu-pipeline.sh --pack here first)"; exit 1; }
  chmod +x "$BIN"
fi
[[ -x "$BIN" ]] || { log "no splatforge binary at $BIN"; exit 1; }

# cuDNN (a build with the `cudnn` feature links libcudnn.so.9): torch's wheel, else a search.
cudnn_dir="$(python3 - 2>/dev/null <<'PY'
import os, nvidia.cudnn as m
f = getattr(m, "__file__", None)
print(os.path.join(os.path.dirname(f) if f else list(m.__path__)[0], "lib"))
PY
)"
if [[ -z "$cudnn_dir" || ! -f "$cudnn_dir/libcudnn.so.9" ]]; then
  site="$(python3 -c 'import site; print(" ".join(site.getsitepackages()))' 2>/dev/null)"
  # shellcheck disable=SC2086  # $site: several folders
  cudnn_lib="$(find /usr/local/cuda-13.0 $site /usr/lib /usr/local/lib /opt -name libcudnn.so.9 2>/dev/null | head -1)"
  cudnn_dir="${cudnn_lib:+$(dirname "$cudnn_lib")}"
fi
if [[ -n "$cudnn_dir" ]]; then
  log "cuDNN: $cudnn_dir/libcudnn.so.9"
  export LD_LIBRARY_PATH="$cudnn_dir:$LD_LIBRARY_PATH"
else
  log "cuDNN: libcudnn.so.9 not found (only a build with the cudnn feature needs it)"
fi
missing="$(ldd "$BIN" 2>/dev/null | grep 'not found')"
if [[ -n "$missing" ]]; then
  log "the binary lacks shared libraries:"; echo "$missing"; exit 1
fi
ldd "$BIN" | grep -E 'libcud|libcublas|libnvrtc|libcurand' | sed 's/^/  /'

if command -v nvidia-smi > /dev/null; then
  nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used,clocks.sm,clocks.max.sm,temperature.gpu \
    --format=csv | tee "$OUT/nvidia-smi.csv"
else
  log "no nvidia-smi on this machine"
fi

# ---- 2. random-weight models ------------------------------------------------------------------
if [[ -f "$MODELS/model_index.json" ]]; then
  log "models: reusing $MODELS"
else
  log "models: writing $SIZE MVDream ($DTYPE) to $MODELS"
  t0=$SECONDS
  "$BIN" models make-random "$MODELS" --size "$SIZE" --dtype "$DTYPE" 2>&1 | tee "$OUT/make-random.log"
  rc=$?
  if ((rc != 0)); then
    fail models make-random "$rc"
    exit 1
  fi
  log "models: written in $((SECONDS - t0)) s"
fi
du -sh "$MODELS"

# ---- 3. generate, profile by profile ---------------------------------------------------------
for p in $PROFILES; do
  left=$((DEADLINE_S - (SECONDS - START)))
  if ((left < 20)); then
    fail "$p" "skipped (deadline DEADLINE_S=$DEADLINE_S reached)" 124
    continue
  fi
  log "== $p: generate --repeat $REPEAT --warm-up on $DEVICE (at most $left s)"
  # shellcheck disable=SC2086  # GENERATE_ARGS: several words
  timeout --kill-after=10 "$left" "$BIN" generate --prompt "$PROMPT" --profile "$p" --models "$MODELS" \
    --device "$DEVICE" --repeat "$REPEAT" --warm-up --json -o "$OUT/$p.ply" ${GENERATE_ARGS:-} \
    > "$OUT/$p.jsonl" 2> "$OUT/$p.log"
  rc=$?
  cat "$OUT/$p.jsonl" >> "$OUT/e2e.jsonl"
  grep -E '^(loaded|warmed)' "$OUT/$p.log" | sed 's/^/  /'
  python3 - "$OUT/$p.jsonl" <<'PY'
import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line)
    order = ["diffusion", "alpha", "init", "fit", "sds", "normalize"]
    st = r["stages_ms"]
    stages = " ".join(f"{k} {st[k]:.0f}" for k in sorted(st, key=lambda k: (k not in order, order.index(k) if k in order else 0, k)))
    print(f'  run {r["run"]}/{r["runs"]} seed {r["seed"]}: total {r["total_ms"]:.0f} ms ({stages}), '
          f'{r["gaussians"]} Gaussians, latents finite {r["latents_finite"]}')
PY
  if ((rc != 0)); then
    fail "$p" generate "$rc"
    tail -5 "$OUT/$p.log"
    continue
  fi

  # ---- 4. check the output --------------------------------------------------------------------
  "$BIN" validate "$OUT/$p.ply" --min-gaussians "$MIN_GAUSSIANS" --json > "$OUT/$p.validate.json" \
    || fail "$p" validate $?
  "$BIN" inspect "$OUT/$p.ply" --json > "$OUT/$p.inspect.json" || fail "$p" inspect $?
  python3 - "$OUT/$p.validate.json" <<'PY'
import json, sys
v = json.load(open(sys.argv[1]))
bad = [f'{c["name"]}: {c["detail"]}' for c in v["checks"] if not c["passed"]]
print(f'  validate: {"passed" if v["passed"] else "FAILED"}, {v["gaussians"]} Gaussians' + ("".join("\n    " + b for b in bad)))
PY
done

# ---- 5. summary -------------------------------------------------------------------------------
log "== summary (median of the timed runs, ms)"
python3 - "$OUT" <<'PY' | tee "$OUT/summary.md"
import json, os, statistics, sys
out = sys.argv[1]
rows = [json.loads(l) for l in open(os.path.join(out, "e2e.jsonl")) if l.strip()]
profiles = list(dict.fromkeys(r["profile"] for r in rows))
stages = list(dict.fromkeys(s for r in rows for s in r["stages_ms"]))
order = ["diffusion", "alpha", "init", "fit", "sds", "normalize"]
stages = [s for s in order if s in stages] + [s for s in stages if s not in order]
print("| profile | runs | " + " | ".join(stages) + " | total | load | warm-up | Gaussians | GPU mem used GiB | finite | valid |")
print("|---|---|" + "---|" * (len(stages) + 7))
for p in profiles:
    rs = [r for r in rows if r["profile"] == p]
    med = lambda f: statistics.median(f(r) for r in rs)
    cells = [f'{med(lambda r: r["stages_ms"].get(s, 0.0)):.0f}' for s in stages]
    mem = [r["device_memory_used_bytes"] for r in rs if r["device_memory_used_bytes"] is not None]
    mem = f"{max(mem) / 2**30:.1f}" if mem else "-"
    try:
        valid = json.load(open(os.path.join(out, f"{p}.validate.json")))["passed"]
    except (OSError, ValueError):
        valid = None
    finite = all(r["latents_finite"] for r in rs)
    print(f"| {p} | {len(rs)} | " + " | ".join(cells) + f' | {med(lambda r: r["total_ms"]):.0f} | '
          f'{rs[0]["load_ms"]:.0f} | {rs[0]["warm_up_ms"] or 0:.0f} | {rs[-1]["gaussians"]} | {mem} | {finite} | {valid} |')
PY
if [[ -s "$OUT/failures.txt" ]]; then
  log "failures:"; cat "$OUT/failures.txt"
fi
log "done (exit status $status)"
exit $status
