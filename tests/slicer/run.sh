#!/usr/bin/env bash
# Tests of the 3D Slicer extension (slicer-extension/) on real Slicer code, without Slicer:
# the extension's logic runs on MRML nodes from PyPI's slicer-core (Kitware's MRML and module logic
# without Qt), and its results are compared voxel for voxel with `dspnet segment`.
#
# Needs cargo and a CPython 3.10 to 3.13 (slicer-core 5.13 has manylinux_2_28 wheels for those) with:
#   python3 -m pip install "slicer-core==5.13.31053.0" "numpy>=1.24" "pynrrd==1.1.3" "slicerio==1.4.0" "pytest>=7"
# This script installs nothing: it builds the library, checks the imports, and runs pytest.
# PYTHON selects the interpreter (default: python3). Ends with pytest's own summary line.
set -euo pipefail
cd "$(dirname "$0")/../.."
root="$PWD"
PYTHON="${PYTHON:-python3}"
target="${CARGO_TARGET_DIR:-$root/target}"
case "$target" in /*) ;; *) target="$root/$target" ;; esac

echo "== building libdspnet and the dspnet tool (cargo build --release)"
cargo build --release

for f in "$target/release/libdspnet.so" "$target/release/dspnet"; do
  if [ ! -e "$f" ]; then
    echo "tests/slicer/run.sh: $f was not built" >&2
    exit 1
  fi
done

echo "== checking the Python test environment ($PYTHON)"
if ! "$PYTHON" - <<'PY'
import importlib, sys
missing = []
for name in ("numpy", "nrrd", "slicerio", "pytest", "slicer"):
    try:
        importlib.import_module(name)
    except Exception as e:  # ImportError, or a broken binary wheel
        missing.append(f"{name} ({e.__class__.__name__}: {e})")
if not missing:
    import slicer
    for attr in ("vtkMRMLScene", "vtkMRMLSegmentationNode", "vtkSlicerSegmentationsModuleLogic"):
        if not hasattr(slicer, attr):
            missing.append(f"slicer.{attr} (is PyPI's slicer-core installed? an unrelated 'slicer' package shadows it)")
if missing:
    print("missing: " + "; ".join(missing), file=sys.stderr)
    print('install with: python3 -m pip install "slicer-core==5.13.31053.0" "numpy>=1.24" "pynrrd==1.1.3" '
          '"slicerio==1.4.0" "pytest>=7"', file=sys.stderr)
    sys.exit(1)
import numpy, slicerio
from importlib.metadata import version
print(f"python {sys.version.split()[0]}, slicer-core {version('slicer-core')}, numpy {numpy.__version__}, "
      f"pynrrd {version('pynrrd')}, slicerio {version('slicerio')}, pytest {version('pytest')}")
PY
then
  exit 1
fi

work="$target/slicer-tests"
rm -rf "$work"
mkdir -p "$work/run"
weights="$work/synthetic-resnet50.safetensors"
"$target/release/dspnet" synthetic-weights --depth 50 -o "$weights" >/dev/null

export DSPNET_LIBRARY="$target/release/libdspnet.so"
export DSPNET_CLI="$target/release/dspnet"
export DSPNET_TEST_WEIGHTS="$weights"
export DSPNET_SOURCE_DIR="$root"
export FEWSHOT_TEST_WORKDIR="$work/run"
export PYTHONDONTWRITEBYTECODE=1
unset DSPNET_WEIGHTS

echo "== pytest slicer-extension/FewShotSegment/Testing/Python"
exec "$PYTHON" -m pytest -p no:cacheprovider -q -rs slicer-extension/FewShotSegment/Testing/Python
