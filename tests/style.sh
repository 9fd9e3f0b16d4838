#!/usr/bin/env bash
# The checks that keep the code easy to enter, each one pass or fail: Rust formatting (rustfmt.toml, the
# fuzz crate included), Python formatting (ruff.toml), clippy with warnings as errors on every target, and
# the library built without default features carrying none of the command-line tool's dependencies.
# Prints "N passed, M failed" for tests/run-all.sh's sum.
set -uo pipefail
cd "$(dirname "$0")/.."
passed=0
failed=0
check() {
  local name=$1
  shift
  if "$@"; then
    echo "style: $name ok"
    passed=$((passed + 1))
  else
    echo "style: $name FAILED"
    failed=$((failed + 1))
  fi
}
lean_library() {
  local tree
  tree=$(cargo tree --no-default-features -e normal --prefix none) || return 1
  if grep -E '^(clap|indicatif|png|csv) ' <<<"$tree"; then
    echo "the library without default features depends on the command-line tool's crates (above)"
    return 1
  fi
}
check "cargo fmt --check" cargo fmt --check
check "rustfmt --check (fuzz crate)" rustfmt --check --edition 2021 fuzz/harness.rs fuzz/fuzz_targets/*.rs
check "ruff format --check" python3 -m ruff format --check --quiet .
check "cargo clippy -D warnings" cargo clippy --quiet --all-targets -- -D warnings
check "cargo clippy -D warnings (library, no default features)" cargo clippy --quiet --lib --no-default-features -- -D warnings
check "library without the CLI's dependencies" lean_library
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
