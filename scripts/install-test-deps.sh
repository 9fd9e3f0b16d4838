#!/usr/bin/env bash
# Installs what the full test suite needs beyond the Rust toolchain (Debian 12, as root):
# CMake, pkg-config, valgrind and ITK for the C/C++ consumers; the pinned cbindgen for the header check;
# PyPI's slicer-core and friends for the Slicer extension's tests; ruff for the Python format check. Idempotent: skips what is there.
set -euo pipefail
CBINDGEN_VERSION=0.29.4
need_apt=()
for pair in cmake:cmake pkg-config:pkg-config valgrind:valgrind; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || need_apt+=("${pair##*:}")
done
[ -d /usr/include/ITK-5.2 ] || [ -n "$(ls -d /usr/include/ITK-5* 2>/dev/null)" ] || need_apt+=(libinsighttoolkit5-dev)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "installing Debian packages: ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi
if ! cbindgen --version 2>/dev/null | grep -qx "cbindgen $CBINDGEN_VERSION"; then
  echo "installing cbindgen $CBINDGEN_VERSION"
  cargo install cbindgen --version "$CBINDGEN_VERSION" --locked --quiet
fi
RUFF_VERSION=0.17.6
if ! python3 -m ruff --version 2>/dev/null | grep -qx "ruff $RUFF_VERSION"; then
  echo "installing ruff $RUFF_VERSION (the Python formatter)"
  python3 -m pip install --quiet "ruff==$RUFF_VERSION"
fi
if ! python3 -c "import slicer, numpy, nrrd, slicerio, pytest; slicer.vtkMRMLScene" >/dev/null 2>&1; then
  echo "installing slicer-core and the Python test packages"
  python3 -m pip install --quiet "slicer-core==5.13.31053.0" "numpy>=1.24" "pynrrd==1.1.3" "slicerio==1.4.0" "pytest>=7"
fi
