#!/usr/bin/env bash
# Fuzz every target for SECONDS each (default 300), then minimise its corpus into fuzz/corpus/TARGET and print
# one line of figures per target (executions, coverage, corpus size, crashes). Needs nightly and cargo-fuzz
# (`cargo install cargo-fuzz`); seeds come from fuzz/make_seeds.py. Crashes land in fuzz/artifacts/TARGET:
# fix them, then copy the input to fuzz/regressions/TARGET so that `cargo test --test fuzz_corpus` replays it.
# Usage: fuzz/run.sh [SECONDS] [TARGET ...]
set -uo pipefail
cd "$(dirname "$0")"
secs=${1:-300}; shift || true
targets=${*:-nifti nifti_gz nrrd nrrd_detached seg_nrrd dicom safetensors pth capi}
python3 make_seeds.py .. >/dev/null
cargo +nightly fuzz build -O -a
mkdir -p logs
for t in $targets; do
  mkdir -p "corpus/$t" "artifacts/$t"
  # -malloc_limit_mb: no input of a few KB justifies a 256 MB allocation (a header claiming 2^40 voxels must
  # be refused before allocating).
  cargo +nightly fuzz run -O -a "$t" "corpus/$t" "seeds/$t" -- -max_total_time="$secs" -rss_limit_mb=2048 \
    -malloc_limit_mb=256 -timeout=20 -print_final_stats=1 -artifact_prefix="artifacts/$t/" > "logs/$t.log" 2>&1
  rc=$?
  cargo +nightly fuzz cmin -O -a "$t" "corpus/$t" -- -rss_limit_mb=2048 > "logs/$t.cmin.log" 2>&1
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "logs/$t.log")
  cov=$(grep -o 'DONE *cov: [0-9]*' "logs/$t.log" | grep -o '[0-9]*$')
  half=$(awk -v e="$execs" '/^#[0-9]+.*cov: /{n=substr($1,2)+0; if (n<=e/2) {for(i=1;i<=NF;i++) if($i=="cov:") c=$(i+1)}} END{print c}' "logs/$t.log")
  echo "$t: rc $rc, $execs executions, coverage $half at half time -> $cov at the end, corpus $(ls "corpus/$t" | wc -l) files, crashes $(ls "artifacts/$t" | wc -l)"
done
