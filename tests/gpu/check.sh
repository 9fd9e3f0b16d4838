#!/usr/bin/env bash
# GPU check for the CUDA build of dspnet. Two halves (docs/cuda.md §6):
#
#   tests/gpu/check.sh stage [BUNDLE]   on the build machine (cargo, no GPU): builds the CUDA `dspnet`
#                                       binary and the golden test binary into CARGO_TARGET_DIR (default
#                                       target/cuda) and copies them to BUNDLE (default target/gpu-bundle,
#                                       ignored by git). Needs the env from `source scripts/cuda-env.sh DIR`.
#   tests/gpu/check.sh [run] [BUNDLE]   on the GPU machine (no cargo, no network): finds the CUDA 13
#                                       libraries in the Python environment's nvidia/*/lib folders, puts
#                                       them on LD_LIBRARY_PATH, then runs
#                                         dspnet bench --device cuda --json   (and --device cpu --json)
#                                         the golden test binary, DSPNET_TEST_DEVICE=cuda then =cpu
#                                       Results go to $OUT (or BUNDLE/results): *.json, *.log, summary.txt.
#                                       Run it from the repository root: the golden fixtures are read
#                                       from tests/fixtures/golden (or DSPNET_GOLDEN_DIR).
#
# Exit status of `run`: 0 when every step passed, 1 when a step failed, 2 when the environment is
# unusable (no GPU driver, missing CUDA libraries, missing bundle).
#
# Knobs: BENCH_ARGS (default "--size 256 --slices 5"), DSPNET_CUDA_LIBS (extra library folder searched
# first), PYTHON (interpreter whose site-packages are searched; default: python3 and python on PATH),
# STEP_TIMEOUT (seconds per step, default 240).
#
# Golden device switch: tests/golden.rs picks its device from DSPNET_TEST_DEVICE (cpu, cuda, cuda:N).
# check.sh greps the binary for that name; a golden binary built before the switch existed is run once,
# on the CPU, which only proves that the CUDA-linked test binary loads and passes there.
#
# Example (device tool; the bundle is ~30 MB, under the 64 MiB carry limit):
#   run(command="bash tests/gpu/check.sh run target/gpu-bundle", carry=["target/gpu-bundle"], timeout_s=420)
set -uo pipefail

mode="run"
case "${1:-}" in
    stage | run) mode="$1"; shift ;;
esac
bundle="${1:-target/gpu-bundle}"

# ---------------------------------------------------------------------------------------------- stage
if [[ "$mode" == "stage" ]]; then
    set -e
    : "${CUDA_HOME:?source scripts/cuda-env.sh DIR first}"
    export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target/cuda}"
    nice -n 19 cargo build --release --features cuda --bin dspnet
    golden="$(nice -n 19 cargo test --release --features cuda --test golden --no-run --message-format=json \
        | python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("target", {}).get("name") == "golden" and m.get("executable"):
        print(m["executable"])')"
    [[ -x "$golden" ]] || { echo "stage: golden test binary not found" >&2; exit 1; }
    rm -rf "$bundle" && mkdir -p "$bundle"
    cp "$CARGO_TARGET_DIR/release/dspnet" "$bundle/dspnet"
    cp "$golden" "$bundle/golden"
    strip --strip-debug "$bundle/dspnet" "$bundle/golden" 2>/dev/null || true
    {
        echo "git: $(git rev-parse --short HEAD 2>/dev/null)$(git diff --quiet 2>/dev/null || echo ' (dirty)')"
        echo "built: $(date -u +%FT%TZ) on $(uname -m)"
        echo "nvcc: $("$CUDA_HOME/bin/nvcc" --version | tail -n1)"
        echo "CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-} CUDARC_CUDA_VERSION=${CUDARC_CUDA_VERSION:-}"
        echo "needs:"; readelf -d "$bundle/dspnet" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/  \1/p'
    } >"$bundle/MANIFEST"
    cat "$bundle/MANIFEST"
    du -sh "$bundle"/*
    echo "stage: carry '$bundle' to the GPU machine and run: bash tests/gpu/check.sh run $bundle"
    exit 0
fi

# ------------------------------------------------------------------------------------------------ run
out="${OUT:-$bundle/results}"
mkdir -p "$out"
summary="$out/summary.txt"
: >"$summary"
say() { echo "$*" | tee -a "$summary"; }
status=0
fail() { say "FAIL: $*"; status=1; }

for f in dspnet golden; do
    [[ -x "$bundle/$f" ]] || { say "ENV: $bundle/$f missing (run 'tests/gpu/check.sh stage' on the build machine and carry $bundle)"; exit 2; }
done
[[ -f "$bundle/MANIFEST" ]] && { say "bundle:"; sed 's/^/  /' "$bundle/MANIFEST" | tee -a "$summary"; }

# 1. GPU and driver.
if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,driver_version,compute_cap,memory.total --format=csv,noheader 2>&1 | sed 's/^/gpu: /' | tee -a "$summary"
else
    say "gpu: nvidia-smi not on PATH"
fi
# The driver's libcuda.so.1: in the ld cache on most hosts; on container images often only in a mounted
# driver folder (this workplace's GPU image: /usr/local/nvidia, read-only), which then goes on the path.
driver_dir=""
if ! ldconfig -p 2>/dev/null | grep -q 'libcuda\.so\.1'; then
    for d in /usr/local/nvidia/lib64 /usr/local/nvidia/lib /usr/lib/x86_64-linux-gnu /usr/lib64 /usr/lib/wsl/lib; do
        if [[ -e "$d/libcuda.so.1" ]]; then driver_dir="$d"; break; fi
    done
    say "driver: libcuda.so.1 not in the ld cache; ${driver_dir:+using $driver_dir}${driver_dir:-not found in the usual folders}"
fi

# 2. CUDA runtime libraries from the Python environment(s): every nvidia/*/lib folder.
libdirs=()
[[ -n "${DSPNET_CUDA_LIBS:-}" ]] && libdirs+=("$DSPNET_CUDA_LIBS")
pys=()
if [[ -n "${PYTHON:-}" ]]; then pys=("$PYTHON"); else
    for p in python3 python; do command -v "$p" >/dev/null && pys+=("$(command -v "$p")"); done
fi
for py in "${pys[@]}"; do
    while IFS= read -r sp; do
        for d in "$sp"/nvidia/*/lib; do [[ -d "$d" ]] && libdirs+=("$d"); done
    done < <("$py" -c 'import site, sys
paths = list(getattr(site, "getsitepackages", lambda: [])()) + [site.getusersitepackages()] + sys.path
print("\n".join(dict.fromkeys(p for p in paths if p)))' 2>/dev/null)
done
# De-duplicate, keep order.
declare -A seen=()
uniq_dirs=()
for d in "${libdirs[@]}"; do
    r="$(readlink -f "$d")"
    [[ -n "${seen[$r]:-}" ]] && continue
    seen[$r]=1
    uniq_dirs+=("$r")
done
[[ -n "$driver_dir" ]] && uniq_dirs+=("$driver_dir")
if ((${#uniq_dirs[@]})); then
    LD_LIBRARY_PATH="$(IFS=:; echo "${uniq_dirs[*]}")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    export LD_LIBRARY_PATH
fi
say "python: ${pys[*]:-none}"
say "nvidia lib folders: ${#uniq_dirs[@]}"
for d in "${uniq_dirs[@]}"; do say "  $d"; done

# 3. Does every NEEDED library resolve?
ldd "$bundle/dspnet" >"$out/ldd-dspnet.txt" 2>&1
ldd "$bundle/golden" >"$out/ldd-golden.txt" 2>&1
say "ldd dspnet:"
sed 's/^/  /' "$out/ldd-dspnet.txt" | grep -E 'cuda|cublas|curand|nvrtc|not found' | tee -a "$summary"
if grep -q 'not found' "$out/ldd-dspnet.txt" "$out/ldd-golden.txt"; then
    say "ENV: unresolved libraries above. The build needs CUDA 13 sonames (libcudart.so.13, libcublas.so.13,"
    say "     libcublasLt.so.13, libcurand.so.10, libnvrtc.so.13) and the driver's libcuda.so.1."
    say "     pip install nvidia-cuda-runtime==13.0.96 nvidia-cublas==13.1.0.3 nvidia-curand==10.4.0.35 nvidia-cuda-nvrtc==13.0.88"
    say "     (or set DSPNET_CUDA_LIBS to a folder holding them)."
    exit 2
fi

export RUST_BACKTRACE=0
timeout_s="${STEP_TIMEOUT:-240}"
step() { # name, then command; stdout -> $out/name.out, stderr -> $out/name.log
    local name="$1"; shift
    local t0=$SECONDS rc
    timeout "$timeout_s" "$@" >"$out/$name.out" 2>"$out/$name.log"
    rc=$?
    say "$name: rc=$rc in $((SECONDS - t0)) s"
    return $rc
}

# 4. Benchmarks (JSON on stdout).
read -r -a bench_args <<<"${BENCH_ARGS:---size 256 --slices 5}"
for dev in cuda cpu; do
    if step "bench-$dev" "$bundle/dspnet" bench --device "$dev" --json "${bench_args[@]}"; then
        cp "$out/bench-$dev.out" "$out/bench-$dev.json"
        sed 's/^/  /' "$out/bench-$dev.json" | tee -a "$summary"
    else
        fail "bench --device $dev"; tail -n 20 "$out/bench-$dev.log" | sed 's/^/  /' | tee -a "$summary"
    fi
done
if [[ -s "$out/bench-cuda.json" && -s "$out/bench-cpu.json" ]]; then
    python3 - "$out/bench-cuda.json" "$out/bench-cpu.json" <<'EOF' 2>/dev/null | tee -a "$summary"
import json, sys
g, c = (json.load(open(p)) for p in sys.argv[1:3])
for k, v in g.items():
    if isinstance(v, (int, float)) and isinstance(c.get(k), (int, float)) and v:
        print(f"  {k}: cuda {v:.4g} vs cpu {c[k]:.4g}  (cpu/cuda {c[k] / v:.2f}x)")
EOF
fi

# 5. Golden parity. Fixtures travel with the work tree (tests/fixtures/golden).
golden_dir="${DSPNET_GOLDEN_DIR:-$PWD/tests/fixtures/golden}"
if grep -aq DSPNET_TEST_DEVICE "$bundle/golden"; then
    say "golden: the binary reads DSPNET_TEST_DEVICE: runs on cuda, then on cpu"
    golden_devs=(cuda cpu)
else
    say "golden: the binary has no device switch (no DSPNET_TEST_DEVICE in it): one run, on the CPU"
    golden_devs=(cpu)
fi
for dev in "${golden_devs[@]}"; do
    if step "golden-$dev" env DSPNET_TEST_DEVICE="$dev" DSPNET_GOLDEN_DIR="$golden_dir" \
        "$bundle/golden" --nocapture --test-threads=1; then
        grep -E 'test result|rel-L2|flips' "$out/golden-$dev.out" | tail -n 20 | sed 's/^/  /' | tee -a "$summary"
    else
        fail "golden on $dev"; tail -n 30 "$out/golden-$dev.out" "$out/golden-$dev.log" | sed 's/^/  /' | tee -a "$summary"
    fi
done

say "result: $([[ $status == 0 ]] && echo PASS || echo FAIL) (files in $out)"
exit $status
