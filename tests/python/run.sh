#!/usr/bin/env bash
# Tests of the dspnet Python package (python/): installs it with `pip install ./python` into a fresh venv
# (with SimpleITK, nibabel, distributed and pytest from PyPI), then runs tests/python against the
# installed copy: numpy API, SimpleITK/nibabel helpers, sessions, and Dask on a real LocalCluster.
# PYTHON selects the interpreter (default python3). Ends with pytest's own summary line.
set -euo pipefail
cd "$(dirname "$0")/../.."
root="$PWD"
PYTHON="${PYTHON:-python3}"
target="${CARGO_TARGET_DIR:-$root/target}"
case "$target" in /*) ;; *) target="$root/$target" ;; esac
export CARGO_TARGET_DIR="$target"

echo "== building libdspnet and the dspnet tool (cargo build --release)"
cargo build --release

work="$target/python-tests"
rm -rf "$work"
mkdir -p "$work"
venv="$work/venv"
echo "== fresh venv ($("$PYTHON" --version)), pip install ./python and the test packages"
"$PYTHON" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet "$root/python" "pytest>=7" "SimpleITK>=2.2" "nibabel>=4" "distributed>=2023.1"

weights="$work/synthetic-resnet50.safetensors"
"$target/release/dspnet" synthetic-weights --depth 50 -o "$weights" >/dev/null
export DSPNET_CLI="$target/release/dspnet"
export DSPNET_TEST_WEIGHTS="$weights"
export PYTHONDONTWRITEBYTECODE=1
unset DSPNET_LIBRARY DSPNET_WEIGHTS

echo "== pytest tests/python (installed package)"
# From outside the checkout, so that `import dspnet` is the installed package, not python/dspnet.
cd "$work"
exec "$venv/bin/python" -m pytest -p no:cacheprovider -q -rs --rootdir "$root/tests/python" "$root/tests/python"
