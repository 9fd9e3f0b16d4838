#!/usr/bin/env bash
# Tests of dspnet.mitk on the real MITK runtime: a fresh Python 3.12 venv (mitk-python needs >= 3.12) with
# `pip install ./python`, mitk-python and pytest from PyPI; then pytest tests/mitk on the installed package.
# PYTHON312 selects the interpreter (default: python3.12 on PATH, else pyenv's 3.12). Ends with pytest's summary.
set -euo pipefail
cd "$(dirname "$0")/../.."
root="$PWD"
target="${CARGO_TARGET_DIR:-$root/target}"
case "$target" in /*) ;; *) target="$root/$target" ;; esac
export CARGO_TARGET_DIR="$target"
if [ -z "${PYTHON312:-}" ]; then
  # pyenv's own 3.12 first: its python3.12 shim fails unless 3.12 is a selected version.
  for cand in $(ls -d "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.12*/bin/python3.12 2>/dev/null | sort -r) $(command -v python3.12 || true); do
    if "$cand" --version >/dev/null 2>&1; then PYTHON312="$cand"; break; fi
  done
fi
if [ -z "${PYTHON312:-}" ] || ! "$PYTHON312" --version >/dev/null 2>&1; then
  echo "tests/mitk/run.sh: no Python 3.12 (set PYTHON312); mitk-python needs it" >&2
  exit 1
fi

echo "== building libdspnet and the dspnet tool (cargo build --release)"
cargo build --release
work="$target/mitk-tests"
rm -rf "$work"
mkdir -p "$work"
echo "== fresh venv ($("$PYTHON312" --version)), pip install ./python mitk-python pytest"
"$PYTHON312" -m venv "$work/venv"
"$work/venv/bin/python" -m pip install --quiet --upgrade pip
"$work/venv/bin/python" -m pip install --quiet "$root/python" "mitk-python>=2026.6" "pytest>=7"
weights="$work/synthetic-resnet50.safetensors"
"$target/release/dspnet" synthetic-weights --depth 50 -o "$weights" >/dev/null
export DSPNET_CLI="$target/release/dspnet" DSPNET_TEST_WEIGHTS="$weights" PYTHONDONTWRITEBYTECODE=1
unset DSPNET_LIBRARY DSPNET_WEIGHTS
echo "== pytest tests/mitk (installed package, real MITK)"
cd "$work"
exec "$work/venv/bin/python" -m pytest -p no:cacheprovider -q -rs --rootdir "$root/tests/mitk" "$root/tests/mitk"
