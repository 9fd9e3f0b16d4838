#!/usr/bin/env bash
# Side-by-side backbone timing: libdspnet (`dspnet bench`) vs PyTorch (tests/bench/pytorch_backbone.py), same
# machine, same thread count, alternating runs so that drifting machine load hits both alike. Prints each
# round's medians and the median of the per-round ratios (ours / PyTorch; below 1 means we are faster).
#
# Not part of CI. Needs a release build and a Python with torch + torchvision, e.g.
#   cargo build --release
#   python3 -m venv /tmp/torchvenv && /tmp/torchvenv/bin/pip install torch torchvision
#   PYTHON=/tmp/torchvenv/bin/python tests/bench/compare.sh --rounds 5 --reps 5 --threads 2
#
# Options: --rounds N (5), --reps R timed passes per run (5), --threads T (2), --size S (256),
#          --depth D (101), --batch B (1), --channels-last (also time PyTorch with torch.channels_last),
#          --weights FILE (ours; PyTorch uses random weights either way, speed does not depend on them).
# Environment: PYTHON (default /tmp/torchvenv/bin/python if present, else python3),
#              DSPNET (default target/release/dspnet).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS=5 REPS=5 THREADS=2 SIZE=256 DEPTH=101 BATCH=1 CL=0 WEIGHTS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) ROUNDS=$2; shift 2 ;;
    --reps) REPS=$2; shift 2 ;;
    --threads) THREADS=$2; shift 2 ;;
    --size) SIZE=$2; shift 2 ;;
    --depth) DEPTH=$2; shift 2 ;;
    --batch) BATCH=$2; shift 2 ;;
    --channels-last) CL=1; shift ;;
    --weights) WEIGHTS=(--weights "$2"); shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
if [ -z "${PYTHON:-}" ]; then
  if [ -x /tmp/torchvenv/bin/python ]; then PYTHON=/tmp/torchvenv/bin/python; else PYTHON=python3; fi
fi
DSPNET=${DSPNET:-target/release/dspnet}
[ -x "$DSPNET" ] || { echo "no $DSPNET: run cargo build --release first" >&2; exit 2; }
"$PYTHON" -c "import torch, torchvision" 2>/dev/null || { echo "$PYTHON has no torch/torchvision (see the header of this script)" >&2; exit 2; }

export RAYON_NUM_THREADS=$THREADS OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
ours() { "$DSPNET" bench --json --depth "$DEPTH" --size "$SIZE" --slices $((REPS * BATCH)) --batch "$BATCH" ${WEIGHTS[@]+"${WEIGHTS[@]}"} > "$OUT/ours.$1.json"; }
torch_run() { "$PYTHON" tests/bench/pytorch_backbone.py --depth "$DEPTH" --size "$SIZE" --batch "$BATCH" --threads "$THREADS" --reps "$REPS" $2 > "$OUT/$1.json"; }
for r in $(seq 1 "$ROUNDS"); do
  if [ $((r % 2)) -eq 1 ]; then ours "$r"; torch_run "torch.$r" ""; else torch_run "torch.$r" ""; ours "$r"; fi
  if [ "$CL" = 1 ]; then torch_run "torchcl.$r" "--channels-last"; fi
done
"$PYTHON" - "$OUT" "$ROUNDS" "$CL" <<'PY'
import json, os, statistics, sys
out, rounds, cl = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
load = lambda n: json.load(open(os.path.join(out, n)))
rows, ratios, ratios_cl = [], [], []
for r in range(1, rounds + 1):
    o, t = load(f"ours.{r}.json"), load(f"torch.{r}.json")
    row = [r, o["backbone_ms_per_slice"], t["backbone_ms_per_slice"], o.get("backbone_cpu_ms_per_slice") or float("nan"), t.get("backbone_cpu_ms_per_slice") or float("nan")]
    ratios.append(row[1] / row[2])
    if cl:
        c = load(f"torchcl.{r}.json")
        row.append(c["backbone_ms_per_slice"])
        ratios_cl.append(row[1] / row[5])
    rows.append(row)
o, t = load("ours.1.json"), load("torch.1.json")
print(f"backbone ResNet-{o['depth']} {o['size']}x{o['size']}, batch {o.get('batch', 1)}, threads ours {o['threads']} / torch {t['threads']}, "
      f"ours {o.get('backend', '?')} ({' '.join(o['cpu_features'])}), torch {t['torch']} ({t['cpu_capability']})")
print("wall time per slice (median of each run); CPU time = all threads (exact work with 1 thread; torch's OpenMP threads spin)")
print("round   ours ms   torch ms" + ("   torch channels_last ms" if cl else "") + "   ours/torch   | ours CPU ms   torch CPU ms")
for row in rows:
    print(f"{row[0]:5d}   {row[1]:7.1f}   {row[2]:8.1f}" + (f"   {row[5]:23.1f}" if cl else "") + f"   {row[1] / row[2]:10.3f}   | {row[3]:11.1f}   {row[4]:12.1f}")
med = lambda i: statistics.median(r[i] for r in rows)
print(f"median: ours {med(1):.1f} ms/slice, torch {med(2):.1f} ms/slice, ratio ours/torch {statistics.median(ratios):.3f}"
      + (f", ours/torch-channels_last {statistics.median(ratios_cl):.3f}" if cl else "")
      + f"; CPU ms ours {med(3):.1f}, torch {med(4):.1f}, ratio {med(3) / med(4):.3f}")
best_o = min(min(load(f"ours.{r}.json")["backbone_ms_all"]) for r in range(1, rounds + 1))
best_t = min(load(f"torch.{r}.json")["min_ms_per_slice"] for r in range(1, rounds + 1))
line = f"best single pass (least disturbed by other load): ours {best_o:.1f} ms, torch {best_t:.1f} ms, ratio {best_o / best_t:.3f}"
if cl:
    best_c = min(load(f"torchcl.{r}.json")["min_ms_per_slice"] for r in range(1, rounds + 1))
    line += f"; torch channels_last {best_c:.1f} ms, ratio {best_o / best_c:.3f}"
print(line)
print(f"peak RSS ours {max(load(f'ours.{r}.json')['peak_rss_mb'] or 0 for r in range(1, rounds + 1)):.0f} MB")
PY
