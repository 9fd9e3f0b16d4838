#!/usr/bin/env bash
# End-to-end check of libdspnet's C ABI, C++ header and CMake/pkg-config package.
#
#   bash tests/capi/run.sh              run everything; the last line is "N passed, M failed"
#   bash tests/capi/run.sh --update-header   regenerate include/dspnet.h in place and exit
#
# Steps: tool versions; header freshness (cbindgen 0.29.4, byte for byte); synthetic weights; CMake package
# build + install into a temporary prefix, then moved (relocatable); SONAME, exported symbols, installed
# files; C consumer (CMake: shared and static; pkg-config), C++ consumer, ITK consumer, the README's C
# example; the C and C++ consumers under valgrind (no errors, no definite leaks).
#
# Needs: cargo, cmake >= 3.16, pkg-config, valgrind, cc/c++, ITK 5 (libinsighttoolkit5-dev), cbindgen 0.29.4.
# Environment: DSPNET_CAPI_KEEP=1 keeps the scratch folder; DSPNET_CAPI_VALGRIND=full also runs a real
# two-slice segmentation under valgrind (slow: about 10 minutes on 2 cores; the default runs every error
# path plus a segmentation whose extent is the support slice itself, so no backbone pass).
# Exit status: 0 when every step passed.

set -u
set -o pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT" || exit 2
CBINDGEN_VERSION=0.29.4

regen_header() {
    cbindgen --config cbindgen.toml --output "$1" src/capi/mod.rs
}

if [ "${1:-}" = "--update-header" ]; then
    regen_header include/dspnet.h && echo "include/dspnet.h regenerated"
    exit $?
fi

T_START=$(date +%s)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/dspnet-capi.XXXXXX")
mkdir -p "$WORK/log"
cleanup() { if [ "${DSPNET_CAPI_KEEP:-0}" = 1 ]; then echo "kept $WORK"; else rm -rf "$WORK"; fi; }
trap cleanup EXIT

PASSED=0
FAILED=0
FAILED_STEPS=()
JOBS=$(nproc 2>/dev/null || echo 2)
PREFIX="$WORK/prefix"          # where consumers find the package (after the move)
WEIGHTS="$WORK/weights-r50-layer3.safetensors"
DATA="$ROOT/tests/capi/data"
VALGRIND=(valgrind --error-exitcode=1 --leak-check=full --errors-for-leak-kinds=definite --show-leak-kinds=definite)
export RAYON_NUM_THREADS=${RAYON_NUM_THREADS:-2}

# step NAME COMMAND...: run, log to $WORK/log/NAME.log, count; print the log tail on failure.
step() {
    local name=$1
    shift
    local log="$WORK/log/$name.log" t0
    t0=$(date +%s)
    if "$@" >"$log" 2>&1; then
        PASSED=$((PASSED + 1))
        printf 'PASS %-24s %4ss\n' "$name" $(($(date +%s) - t0))
    else
        FAILED=$((FAILED + 1))
        FAILED_STEPS+=("$name")
        printf 'FAIL %-24s %4ss  (log: %s)\n' "$name" $(($(date +%s) - t0)) "$log"
        tail -n 40 "$log" | sed 's/^/     | /'
    fi
}

# Print the valgrind verdict lines of a log.
valgrind_summary() {
    grep -E "ERROR SUMMARY|definitely lost|indirectly lost|possibly lost|still reachable" "$WORK/log/$1.log" | sed 's/^==[0-9]*== /     /'
}

check_tools() {
    local missing=0 t
    for t in cargo cmake pkg-config valgrind cc c++ readelf nm cbindgen; do
        command -v "$t" >/dev/null || { echo "missing tool: $t"; missing=1; }
    done
    [ $missing = 0 ] || return 1
    cbindgen --version
    cbindgen --version | grep -qx "cbindgen $CBINDGEN_VERSION" ||
        { echo "cbindgen $CBINDGEN_VERSION required: cargo install cbindgen --version $CBINDGEN_VERSION --locked"; return 1; }
    cmake --version | head -1
    valgrind --version
}

check_header() {
    regen_header "$WORK/dspnet.h" || return 1
    if ! cmp -s include/dspnet.h "$WORK/dspnet.h"; then
        echo "include/dspnet.h is stale: run 'bash tests/capi/run.sh --update-header' and commit it"
        diff -u include/dspnet.h "$WORK/dspnet.h" | head -80
        return 1
    fi
    echo "include/dspnet.h matches cbindgen $CBINDGEN_VERSION output"
}

make_weights() {
    cargo run --release --quiet --bin dspnet -- synthetic-weights --seed 1 --depth 50 --features layer3 -o "$WEIGHTS"
}

# Build and install with the CMake package, then move the prefix: consumers only work if it is relocatable.
install_package() {
    cmake -S cmake -B "$WORK/build-package" -DCMAKE_INSTALL_PREFIX="$WORK/stage" &&
        cmake --build "$WORK/build-package" -j "$JOBS" &&
        cmake --install "$WORK/build-package" &&
        mv "$WORK/stage" "$PREFIX" &&
        find "$PREFIX" | sort
}

check_package() {
    local ok=0 lib="$PREFIX/lib" soname exported declared version
    soname=$(readelf -d "$lib/libdspnet.so.1" | sed -n 's/.*Library soname: \[\(.*\)\].*/\1/p')
    echo "SONAME: $soname"
    [ "$soname" = "libdspnet.so.1" ] || { echo "SONAME should be libdspnet.so.1"; ok=1; }
    [ "$(readlink "$lib/libdspnet.so")" = "libdspnet.so.1" ] || { echo "libdspnet.so should link to libdspnet.so.1"; ok=1; }
    exported=$(nm -D --defined-only "$lib/libdspnet.so.1" | awk '$2 ~ /^[TDBRV]$/ {print $3}' | sort)
    declared=$(grep -oE '\bdspnet_[a-z_]+\(' include/dspnet.h | tr -d '(' | sort -u)
    echo "exported: $(echo "$exported" | tr '\n' ' ')"
    [ "$exported" = "$declared" ] || { echo "exported symbols differ from the functions in dspnet.h:"; diff <(echo "$declared") <(echo "$exported"); ok=1; }
    cmp -s include/dspnet.h "$PREFIX/include/dspnet.h" || { echo "installed dspnet.h differs"; ok=1; }
    cmp -s include/dspnet.hpp "$PREFIX/include/dspnet.hpp" || { echo "installed dspnet.hpp differs"; ok=1; }
    for f in lib/libdspnet.a lib/cmake/dspnet/dspnetConfig.cmake lib/cmake/dspnet/dspnetConfigVersion.cmake lib/pkgconfig/dspnet.pc; do
        [ -f "$PREFIX/$f" ] || { echo "missing $f"; ok=1; }
    done
    version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
    echo "pkg-config: $(PKG_CONFIG_PATH="$lib/pkgconfig" pkg-config --modversion dspnet) $(PKG_CONFIG_PATH="$lib/pkgconfig" pkg-config --cflags --libs dspnet)"
    [ "$(PKG_CONFIG_PATH="$lib/pkgconfig" pkg-config --modversion dspnet)" = "$version" ] || { echo "pc version != $version"; ok=1; }
    grep -q "SameMajorVersion\|CVF_VERSION_MAJOR" "$PREFIX/lib/cmake/dspnet/dspnetConfigVersion.cmake" || { echo "not SameMajorVersion"; ok=1; }
    return $ok
}

build_consumer() { # NAME SOURCE_DIR
    cmake -S "$2" -B "$WORK/build-$1" -DCMAKE_PREFIX_PATH="$PREFIX" -DCMAKE_BUILD_TYPE=RelWithDebInfo &&
        cmake --build "$WORK/build-$1" -j "$JOBS"
}

build_c_pkgconfig() {
    local pc="$PREFIX/lib/pkgconfig"
    # shellcheck disable=SC2046
    cc -std=c99 -Wall -Wextra -Wpedantic -Werror $(PKG_CONFIG_PATH="$pc" pkg-config --cflags dspnet) \
        tests/capi/c/capi_test.c -o "$WORK/capi_test_pkgconfig" \
        $(PKG_CONFIG_PATH="$pc" pkg-config --libs dspnet) -lpthread -lm \
        -Wl,-rpath,"$(PKG_CONFIG_PATH="$pc" pkg-config --variable=libdir dspnet)"
}

readme_example() {
    local pc="$PREFIX/lib/pkgconfig"
    awk '/<!-- capi-example:begin -->/ {f = 1; next} /<!-- capi-example:end -->/ {f = 0} f' README.md | sed '/^```/d' >"$WORK/example.c"
    [ -s "$WORK/example.c" ] || { echo "no example between the capi-example markers in README.md"; return 1; }
    wc -l "$WORK/example.c"
    # shellcheck disable=SC2046
    cc -std=c99 -Wall -Wextra -Wpedantic -Werror $(PKG_CONFIG_PATH="$pc" pkg-config --cflags dspnet) "$WORK/example.c" \
        -o "$WORK/example" $(PKG_CONFIG_PATH="$pc" pkg-config --libs dspnet) -Wl,-rpath,"$PREFIX/lib" &&
        "$WORK/example" "$WEIGHTS" | tee "$WORK/example.out" &&
        grep -qE '^[1-9][0-9]* voxels labelled$' "$WORK/example.out"
}

run_itk() {
    "$WORK/build-itk/itk_segment" "$WEIGHTS" tests/data/ct-liver/image.nii.gz tests/data/ct-liver/labels.nii.gz "$WORK/itk-out.nii.gz" 64
}

VG_MODE=light
[ "${DSPNET_CAPI_VALGRIND:-}" = full ] && VG_MODE=quick

echo "libdspnet C ABI checks in $WORK"
step tools check_tools
step header-fresh check_header
step weights make_weights
step package-install install_package
step package-contents check_package
step c-build build_consumer c tests/capi/c
step c-shared "$WORK/build-c/capi_test_shared" "$WEIGHTS" "$DATA" full
step c-static "$WORK/build-c/capi_test_static" "$WEIGHTS" "$DATA" quick
step c-pkgconfig-build build_c_pkgconfig
step c-pkgconfig "$WORK/capi_test_pkgconfig" "$WEIGHTS" "$DATA" errors
step cpp-build build_consumer cpp tests/capi/cpp
step cpp "$WORK/build-cpp/capi_test_cpp" "$WEIGHTS" "$DATA" quick
step c-valgrind env RAYON_NUM_THREADS=1 "${VALGRIND[@]}" "$WORK/build-c/capi_test_shared" "$WEIGHTS" "$DATA" "$VG_MODE"
valgrind_summary c-valgrind
step cpp-valgrind env RAYON_NUM_THREADS=1 "${VALGRIND[@]}" "$WORK/build-cpp/capi_test_cpp" "$WEIGHTS" "$DATA" "$VG_MODE"
valgrind_summary cpp-valgrind
step itk-build build_consumer itk tests/capi/itk
step itk run_itk
step readme-example readme_example

echo "total $(($(date +%s) - T_START))s"
[ $FAILED = 0 ] || echo "failed steps: ${FAILED_STEPS[*]}"
echo "$PASSED passed, $FAILED failed"
[ $FAILED = 0 ]
