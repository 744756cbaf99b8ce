#!/usr/bin/env bash
# Run every libFuzzer target of a MOE_FUZZ build for a bounded time.
#   scripts/run-fuzz.sh BUILD_DIR        (FUZZ_SECONDS per target, default 30)
# Each target fuzz_<kind> starts from tests/corpus/<kind> (checked-in broken files) plus valid
# seeds written by BUILD_DIR/gen_<kind>_corpus, all copied into a temporary folder: nothing
# is written to the source tree. A crash, sanitizer report or timeout fails the run; the
# input that caused it is kept under BUILD_DIR/fuzz-artifacts/. Last line:
#   fuzz: N passed, M failed
set -euo pipefail

build=${1:?usage: scripts/run-fuzz.sh BUILD_DIR}
secs=${FUZZ_SECONDS:-30}
src=$(cd "$(dirname "$0")/.." && pwd)
build=$(cd "$build" && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/moe-fuzz.XXXXXX")
trap 'rm -rf "$work"' EXIT
artifacts="$build/fuzz-artifacts"
mkdir -p "$artifacts"

pass=0
fail=0
found=0
for bin in "$build"/fuzz_*; do
  [ -f "$bin" ] && [ -x "$bin" ] || continue
  found=1
  name=$(basename "$bin")
  kind=${name#fuzz_}
  corpus="$work/corpus-$kind"
  mkdir -p "$corpus"
  if [ -d "$src/tests/corpus/$kind" ]; then
    cp "$src/tests/corpus/$kind"/* "$corpus"/ 2>/dev/null || true
  fi
  if [ -x "$build/gen_${kind}_corpus" ]; then
    "$build/gen_${kind}_corpus" seeds "$corpus" >/dev/null
  fi
  n_seed=$(find "$corpus" -type f | wc -l)
  args=(-max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -max_len=65536 -print_final_stats=1
        -artifact_prefix="$artifacts/$name-")
  [ -f "$src/tests/fuzz/$kind.dict" ] && args+=(-dict="$src/tests/fuzz/$kind.dict")
  log="$work/$name.log"
  echo "fuzz: $name for ${secs}s from $n_seed seed files"
  if ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 "$bin" "${args[@]}" "$corpus" >"$log" 2>&1; then
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 || true)
    n_out=$(find "$corpus" -type f | wc -l)
    echo "fuzz: $name ok: ${runs:-?} runs in ${secs}s (${rate:-?} exec/s), $cov, corpus $n_seed -> $n_out files"
    pass=$((pass + 1))
  else
    echo "fuzz: $name FAILED; last lines of its log:" >&2
    tail -n 60 "$log" >&2
    echo "fuzz: the input that failed is under $artifacts/" >&2
    fail=$((fail + 1))
  fi
done
if [ "$found" = 0 ]; then
  echo "fuzz: no fuzz_* targets in $build (configure with CC=clang -DMOE_FUZZ=ON, build fuzz_all)" >&2
  fail=1
fi
echo "fuzz: $pass passed, $fail failed"
[ "$fail" = 0 ]
