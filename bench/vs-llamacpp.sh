#!/usr/bin/env bash
# Benchmark: moekit against llama.cpp on the same GGUF file and the same threads, in interleaved
# rounds (this machine's bandwidth drifts by tens of percent within minutes, so each round runs
# both back to back and the figures to compare are the per-round ratios).
#
# llama.cpp is the build the interop tests use: node-llama-cpp (tests/interop, installed by
# scripts/install-deps.sh from npm) ships its llama.cpp source as a git bundle. The first run
# builds llama-bench and llama-batched-bench from it into BUILD_DIR/llamacpp (cmake, g++; about
# 10 minutes on 2 cores; nothing is downloaded), with -march=native like moekit's build.
#
# Per round:
#   moekit:    moe bench -m MODEL -p 512 -n 64 -t T -r 1 --batch 1,4,16 --json
#   llama.cpp: llama-bench -m MODEL -p 512 -n 64 -t T -r 1 -o json   (pp512, tg64)
#              llama-batched-bench -m MODEL -npp 1 -ntg 64 -npl 1,4,16 -t T -tb T   (S_TG of each)
# and llama.cpp's tg as a share of moekit's decode roofline in the same round (moekit's probe and
# active bytes; both read the same weights per token).
#
# usage: bench/vs-llamacpp.sh [-m MODEL] [-t THREADS] [-r ROUNDS] [-b BUILD_DIR]
#   MODEL defaults to models/bench-v2lite-4L-q8_0.gguf (made by `make bench` if missing).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
model="$root/models/bench-v2lite-4L-q8_0.gguf"
threads=2
rounds=3
build="$root/build"
while [ $# -gt 0 ]; do
  case "$1" in
    -m) model="$2"; shift 2 ;;
    -t) threads="$2"; shift 2 ;;
    -r) rounds="$2"; shift 2 ;;
    -b) build="$2"; shift 2 ;;
    -h|--help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "vs-llamacpp: unknown option '$1' (see --help)" >&2; exit 2 ;;
  esac
done
moe="$build/moe"
[ -x "$moe" ] || { echo "vs-llamacpp: $moe not found: run make first" >&2; exit 1; }
if [ ! -f "$model" ]; then
  echo "vs-llamacpp: making $model (moe init --preset bench-v2lite-4L --dtype q8_0)" >&2
  mkdir -p "$(dirname "$model")"
  "$moe" init --preset bench-v2lite-4L --dtype q8_0 -o "$model" >&2
fi
command -v node >/dev/null || { echo "vs-llamacpp: needs node (scripts/install-deps.sh installs it)" >&2; exit 1; }

# llama.cpp from the npm package's source bundle
bundle="$root/tests/interop/node_modules/node-llama-cpp/llama/gitRelease.bundle"
lc="$build/llamacpp"
if [ ! -x "$lc/build/bin/llama-bench" ] || [ ! -x "$lc/build/bin/llama-batched-bench" ]; then
  [ -f "$bundle" ] || { echo "vs-llamacpp: $bundle missing: run scripts/install-deps.sh" >&2; exit 1; }
  echo "vs-llamacpp: building llama.cpp's llama-bench from $bundle into $lc (once, ~10 min)" >&2
  rm -rf "$lc/src"
  mkdir -p "$lc"
  git clone -q "$bundle" "$lc/src" 2>/dev/null
  cmake -S "$lc/src" -B "$lc/build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DLLAMA_CURL=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_OPENSSL=OFF >"$lc/configure.log" 2>&1 ||
    { echo "vs-llamacpp: cmake failed, see $lc/configure.log" >&2; exit 1; }
  cmake --build "$lc/build" -j"$(nproc)" --target llama-bench llama-batched-bench >"$lc/build.log" 2>&1 ||
    { echo "vs-llamacpp: build failed, see $lc/build.log" >&2; exit 1; }
fi
lb="$lc/build/bin/llama-bench"
lbb="$lc/build/bin/llama-batched-bench"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
echo "model $model, $threads threads, $rounds rounds (moekit: $(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo '?'))"
for r in $(seq 1 "$rounds"); do
  "$moe" bench -m "$model" -p 512 -n 64 -t "$threads" -r 1 --batch 1,4,16 --json >"$work/moe.$r.json" 2>/dev/null
  "$lb" -m "$model" -p 512 -n 64 -t "$threads" -r 1 -o json >"$work/lb.$r.json" 2>/dev/null
  "$lbb" -m "$model" -c 2048 -b 2048 -ub 512 -npp 1 -ntg 64 -npl 1,4,16 -t "$threads" -tb "$threads" \
    --output-format jsonl 2>/dev/null | grep '^{' >"$work/lbb.$r.jsonl"
done
node - "$work" "$rounds" <<'JS'
const fs = require('fs');
const [dir, rounds] = [process.argv[2], +process.argv[3]];
const med = (v) => { const s = [...v].sort((a, b) => a - b), n = s.length; return n % 2 ? s[(n - 1) / 2] : (s[n / 2 - 1] + s[n / 2]) / 2; };
const cols = ['pp512', 'tg64', 'b1', 'b4', 'b16'];
const ratio = Object.fromEntries(cols.map((c) => [c, []]));
const lcroof = [], moeroof = [];
const f = (x) => x.toFixed(1).padStart(8);
console.log('round  ' + cols.map((c) => ('moe ' + c).padStart(10) + ('llama ' + c).padStart(12) + '   x').join(''));
for (let r = 1; r <= rounds; r++) {
  const m = JSON.parse(fs.readFileSync(`${dir}/moe.${r}.json`));
  const lb = JSON.parse(fs.readFileSync(`${dir}/lb.${r}.json`));
  const lbb = fs.readFileSync(`${dir}/lbb.${r}.jsonl`, 'utf8').trim().split('\n').map((l) => JSON.parse(l));
  const mb = Object.fromEntries(m.batch.map((b) => [b.n, b.tg]));
  const lbt = Object.fromEntries(lbb.map((b) => [b.pl, b.speed_tg]));
  const moev = { pp512: m.pp, tg64: m.tg, b1: mb[1], b4: mb[4], b16: mb[16] };
  const lcv = {
    pp512: lb.find((x) => x.n_prompt === 512 && x.n_gen === 0).avg_ts,
    tg64: lb.find((x) => x.n_prompt === 0 && x.n_gen === 64).avg_ts,
    b1: lbt[1], b4: lbt[4], b16: lbt[16],
  };
  let line = String(r).padEnd(7);
  for (const c of cols) {
    ratio[c].push(moev[c] / lcv[c]);
    line += f(moev[c]).padStart(10) + f(lcv[c]).padStart(12) + (moev[c] / lcv[c]).toFixed(2).padStart(6);
  }
  console.log(line);
  /* llama.cpp's decode against moekit's roofline of the same round (probe, active bytes) */
  const limit = (m.bandwidth_gbs * 1e9) / m.active_bytes_per_token;
  lcroof.push((100 * lcv.tg64) / limit);
  moeroof.push(m.roofline_pct);
}
console.log('median moekit / llama.cpp: ' + cols.map((c) => `${c} ${med(ratio[c]).toFixed(2)}x`).join(', '));
console.log(`decode as % of the roofline (moekit's probe and active bytes): moekit ${med(moeroof).toFixed(1)} %, ` +
  `llama.cpp ${med(lcroof).toFixed(1)} %`);
JS
