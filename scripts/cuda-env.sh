#!/usr/bin/env bash
# CUDA 13.0 build environment for `cargo build --features cuda`, from NVIDIA's PyPI wheels only
# (no system CUDA, no GPU, no nvidia-smi needed). See docs/cuda.md.
#
# Usage:
#   source scripts/cuda-env.sh DIR        # set up (first run: ~1.2 GB download) and export the vars
#   eval "$(scripts/cuda-env.sh DIR)"     # same, for a caller that runs it as a program
#   scripts/cuda-env.sh DIR               # set up and print the `export` lines
#
# DIR (created if missing) gets:
#   DIR/venv/                       a Python venv holding the pinned wheels (they install into
#                                   site-packages/nvidia/cu13/{bin,include,lib,nvvm})
#   DIR/cuda/                       a CUDA_PATH-like tree of symlinks into that folder:
#     bin/nvcc, bin/ptxas, ...      (each tool linked one by one: nvcc finds include/ and nvvm/
#                                   relative to the folder it was started from)
#     include/ nvvm/                -> the wheels' include/ (cuda.h, cccl, cublas, curand, nvrtc) and nvvm/
#     lib64/libcudart.so ...        unversioned link names for -lcudart -lcublas -lcublasLt -lcurand -lnvrtc
#     lib64/stubs/libcuda.so        a generated link-time stub of the driver library (no wheel ships
#                                   libcuda; its SONAME is libcuda.so.1, so binaries load the real driver)
#
# Environment knobs (export them before sourcing: bash undoes `VAR=x source ...` when source returns):
# CUDA_COMPUTE_CAP (default 90 = H100/H200), PYTHON (default python3),
# PIP_EXTRA (extra pip arguments, e.g. --no-index --find-links=WHEELDIR for an offline install).

_dspnet_cuda_env() (
    set -euo pipefail
    log() { echo "cuda-env: $*" >&2; }

    # CUDA 13.0 Update 2: the exact set pinned by the `cuda-toolkit==13.0.2` metapackage on PyPI.
    # The GPU machines run driver 580 (CUDA 13.0), so nothing newer than 13.0.x.
    local pins=(
        nvidia-cuda-nvcc==13.0.88
        nvidia-cuda-crt==13.0.88
        nvidia-nvvm==13.0.88
        nvidia-cuda-runtime==13.0.96
        nvidia-cuda-cccl==13.0.85
        nvidia-cuda-nvrtc==13.0.88
        nvidia-cublas==13.1.0.3
        nvidia-curand==10.4.0.35
    )

    local dir="${1:-}"
    if [[ -z "$dir" ]]; then
        log "usage: source scripts/cuda-env.sh DIR   (or: eval \"\$(scripts/cuda-env.sh DIR)\")"
        return 2
    fi
    mkdir -p "$dir"
    dir="$(cd "$dir" && pwd)"
    local venv="$dir/venv" cuda="$dir/cuda"

    # 1. venv + pinned wheels (skipped when the stamp says this exact set is installed).
    local stamp="$venv/.dspnet-cuda-pins"
    if [[ ! -f "$stamp" || "$(cat "$stamp")" != "${pins[*]}" ]]; then
        [[ -x "$venv/bin/python" ]] || { log "creating venv $venv"; "${PYTHON:-python3}" -m venv "$venv"; }
        log "installing ${pins[*]}"
        # shellcheck disable=SC2086
        "$venv/bin/python" -m pip install --disable-pip-version-check -q --only-binary=:all: ${PIP_EXTRA:-} "${pins[@]}" >&2
        echo "${pins[*]}" >"$stamp"
    fi
    local root
    root="$("$venv/bin/python" -c 'import os, nvidia; print(os.path.join(list(nvidia.__path__)[0], "cu13"))')"
    [[ -x "$root/bin/nvcc" && -f "$root/include/cuda.h" && -f "$root/lib/libcudart.so.13" ]] \
        || { log "unexpected wheel layout under $root"; return 1; }

    # 2. CUDA_PATH-like tree, rebuilt when missing or made for another venv/pin set (not on every
    #    call: a build running beside this must not see it vanish).
    if [[ -f "$cuda/.dspnet-made-for" && "$(cat "$cuda/.dspnet-made-for")" == "$root ${pins[*]}" \
          && -x "$cuda/bin/nvcc" && -f "$cuda/lib64/stubs/libcuda.so" ]]; then
        log "reusing $cuda"
    else
        rm -rf "$cuda.tmp"
        mkdir -p "$cuda.tmp/bin" "$cuda.tmp/lib64/stubs"
        local f
        for f in "$root"/bin/*; do ln -s "$f" "$cuda.tmp/bin/"; done
        ln -s "$root/include" "$cuda.tmp/include"
        ln -s "$root/nvvm" "$cuda.tmp/nvvm"
        for f in "$root"/lib/*.so.* "$root"/lib/*.a; do ln -s "$f" "$cuda.tmp/lib64/"; done
        local lib so
        for lib in cudart cublas cublasLt curand nvrtc; do
            so="$(cd "$root/lib" && ls "lib$lib.so."* | grep -E "^lib$lib\.so\.[0-9]+$" | head -n1)"
            [[ -n "$so" ]] || { log "lib$lib.so.N missing in $root/lib"; return 1; }
            ln -s "$so" "$cuda.tmp/lib64/lib$lib.so"
        done

        # 3. Link-time stub of the driver library libcuda (cudarc's `driver` feature links -lcuda).
        #    Every cu* function that cuda.h declares (all API versions: _v2.., _ptsz/_ptds) becomes an
        #    exported function returning CUDA_ERROR_STUB_LIBRARY (34). SONAME libcuda.so.1 = the driver's.
        local gen="$cuda.tmp/lib64/stubs/gen"
        mkdir -p "$gen"
        echo '#include <cuda.h>' >"$gen/decl.c"
        : >"$gen/aux.txt"
        local defs
        for defs in "" "-D__CUDA_API_VERSION_INTERNAL" "-DCUDA_API_PER_THREAD_DEFAULT_STREAM"; do
            # shellcheck disable=SC2086
            ${CC:-cc} $defs -I"$root/include" -aux-info "$gen/aux.part" -fsyntax-only "$gen/decl.c"
            cat "$gen/aux.part" >>"$gen/aux.txt"
        done
        grep '/cuda\.h:' "$gen/aux.txt" | sed -E 's/^[^*]*\*\/ *//' \
            | grep -oE '\bcu[A-Za-z0-9_]+ *\(' | tr -d ' (' | sort -u >"$gen/symbols.txt"
        [[ $(wc -l <"$gen/symbols.txt") -gt 300 ]] || { log "too few driver symbols parsed from cuda.h"; return 1; }
        awk '{ printf "int %s(void) { return 34; }\n", $1 }' "$gen/symbols.txt" >"$gen/libcuda_stub.c"
        ${CC:-cc} -shared -fPIC -O0 -Wl,-soname,libcuda.so.1 -o "$cuda.tmp/lib64/stubs/libcuda.so" "$gen/libcuda_stub.c"
        ln -s libcuda.so "$cuda.tmp/lib64/stubs/libcuda.so.1"
        rm -f "$gen/aux.part" "$gen/decl.c"
        echo "$root ${pins[*]}" >"$cuda.tmp/.dspnet-made-for"
        rm -rf "$cuda"
        mv "$cuda.tmp" "$cuda"
    fi

    local ver
    ver="$("$cuda/bin/nvcc" --version | sed -nE 's/.*release ([0-9]+)\.([0-9]+),.*/\1 \2/p')"
    [[ "$ver" == "13 0" ]] || { log "nvcc reports '$ver', expected 13 0"; return 1; }
    log "nvcc $("$cuda/bin/nvcc" --version | tail -n1) at $cuda/bin/nvcc"

    # 4. The variables (printed; the caller exports or evals them).
    cat <<EOF
export CUDA_HOME='$cuda'
export CUDA_PATH='$cuda'
export CUDA_ROOT='$cuda'
export NVCC='$cuda/bin/nvcc'
export CUDARC_CUDA_VERSION=13000
export CUDA_COMPUTE_CAP='${CUDA_COMPUTE_CAP:-90}'
export PATH='$cuda/bin':"\$PATH"
export LIBRARY_PATH='$cuda/lib64:$cuda/lib64/stubs'\${LIBRARY_PATH:+:\$LIBRARY_PATH}
export DSPNET_CUDA_LIBS='$cuda/lib64'
EOF
)

if [[ "${BASH_SOURCE[0]}" != "$0" ]]; then
    # Sourced: export into the caller's shell without leaking set -e.
    if _dspnet_cuda_env_out="$(_dspnet_cuda_env "$@")"; then
        eval "$_dspnet_cuda_env_out"
        echo "$_dspnet_cuda_env_out" | sed 's/^/cuda-env: /' >&2
        unset _dspnet_cuda_env_out
    else
        unset _dspnet_cuda_env_out
        return 1
    fi
else
    _dspnet_cuda_env "$@"
fi
