#!/usr/bin/env bash
# Every test of libdspnet: the Rust suites (golden parity, engine, IO, volume pipeline, CLI), the C ABI
# with real C/C++/ITK consumers under valgrind, the 3D Slicer extension on slicer-core, and the Python
# package (pip install ./python into a fresh venv) with its Dask cluster test, and dspnet.mitk on the real
# MITK runtime (mitk-python, Python 3.12 venv).
# Installs missing test tools first (scripts/install-test-deps.sh; needs root on a fresh machine).
# The last line sums the tests of all of them: "N passed, M failed".
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-test-deps.sh || { echo "could not install the test tools"; exit 1; }
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
echo "== Code style and structure (rustfmt, ruff format, clippy -D warnings, a library without the CLI)"
bash tests/style.sh 2>&1 | tee -a "$log" || status=1
echo "== Rust test suites (cargo test --release)"
cargo test --release --no-fail-fast 2>&1 | tee -a "$log" || status=1
echo "== C ABI, C++ header, CMake package and consumers (tests/capi/run.sh)"
bash tests/capi/run.sh 2>&1 | tee -a "$log" || status=1
echo "== 3D Slicer extension on slicer-core (tests/slicer/run.sh)"
bash tests/slicer/run.sh 2>&1 | tee -a "$log" || status=1
echo "== Python package in a fresh venv, with Dask (tests/python/run.sh)"
bash tests/python/run.sh 2>&1 | tee -a "$log" || status=1
echo "== MITK on the real mitk-python runtime, Python 3.12 venv (tests/mitk/run.sh)"
bash tests/mitk/run.sh 2>&1 | tee -a "$log" || status=1
# Sum cargo's "test result: ok. N passed; M failed", the C ABI driver's "N passed, M failed" and
# pytest's "N passed" / "M failed".
read -r passed failed < <(awk '
  /^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } next }
  /^[0-9]+ passed, [0-9]+ failed$/ { p += $1; f += $3; next }
  /^=* *[0-9]+ (passed|failed)/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
  END { print p + 0, f + 0 }' "$log")
[ "$failed" -gt 0 ] && status=1
echo "$passed passed, $failed failed"
exit $status
