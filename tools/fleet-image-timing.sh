#!/usr/bin/env bash
# Per-job times of image jobs on the tiny random-weight TRELLIS models, single-host
# `serve` against the fleet (`worker` + `serve --redis`), through 404's competition route:
# N requests to each, alternating between the two (after one untimed each), so that a
# change in the machine's load falls on both; the same picture and seeds on both.
# Prints each side's median wall time per request and, for the fleet, the medians of the
# stages the front end reports in X-Stage-Timings (queue_wait: submitted → started;
# worker_encode: the worker's PLY; result_fetch: finished → the front end holding the
# decoded splat). The models are tiny, so the queue's share is what this shows; a GPU
# asset's time is a parameter (README, "Scale, on paper").
#
#   tools/fleet-image-timing.sh [BIN] [IMAGE] [N]
# BIN: the splatforge binary (default target/release/splatforge, else target/debug);
# IMAGE: default ../shared/fixtures/ghost_rgba.png; N: default 10.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-target/release/splatforge}
[ -x "$bin" ] || bin=target/debug/splatforge
image=${2:-../shared/fixtures/ghost_rgba.png}
n=${3:-10}
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

"$bin" models make-random --family trellis --size tiny "$work/trellis" >/dev/null
redis_port=$(free_port)
redis-server --bind 127.0.0.1 --port "$redis_port" --save '' --appendonly yes --dir "$work" \
  --daemonize no >/dev/null &
pids+=($!)
url=redis://127.0.0.1:$redis_port/0

# Starts `splatforge serve ARGS…` on a free port, sets $port, returns once /health is 200.
serve() {
  port=$(free_port)
  "$bin" serve --host 127.0.0.1 --port "$port" --profile image-development "$@" \
    2>>"$work/serve.log" &
  pids+=($!)
  until curl -sf "http://127.0.0.1:$port/health" >/dev/null; do sleep 0.2; done
}

# One request with `seed`; prints a line: wall seconds, then the X-Stage-Timings header.
request() {
  curl -sf -D "$work/head" -o /dev/null -w '%{time_total} ' \
    -F prompt_image_file=@"$image" -F seed="$2" "http://127.0.0.1:$1/generate"
  tr -d '\r' <"$work/head" | sed -n 's/^x-stage-timings: //Ip'
}

median() { sort -g | awk '{v[NR]=$1} END {print (NR%2 ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2)}'; }
stage() { sed -n "s/.*[ ,]\?$1=\([0-9.]*\).*/\1/p" | median; }

serve --models "$work/trellis"
single=$port
"$bin" worker --redis "$url" --profile image-development --models "$work/trellis" \
  --results-dir "$work/results" 2>>"$work/worker.log" &
pids+=($!)
serve --redis "$url"
fleet=$port
request "$single" 0 >/dev/null
request "$fleet" 0 >/dev/null
for seed in $(seq 1 "$n"); do
  request "$single" "$seed" >>"$work/single"
  request "$fleet" "$seed" >>"$work/fleet"
done

echo "$n competition requests each, $(basename "$image"), $bin, $(nproc) cores"
printf 'single-host: median %.1f ms a request\n' "$(cut -d' ' -f1 "$work/single" | median | awk '{print $1*1000}')"
printf 'fleet:       median %.1f ms a request\n' "$(cut -d' ' -f1 "$work/fleet" | median | awk '{print $1*1000}')"
for s in queue_wait worker_encode result_fetch; do
  printf '  %-14s median %.2f ms\n' "$s" "$(stage "$s" <"$work/fleet" | awk '{print $1*1000}')"
done
