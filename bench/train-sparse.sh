#!/usr/bin/env bash
# Benchmark: tokens/s of sparse (lazy, exact) versus dense expert updates in `moe train`, on a
# shape where most experts are idle each step (64 experts, top-2, 64 tokens per step: about 3/4
# of the (layer, expert) pairs get no token). Rounds interleave the modes so machine drift hits
# all three alike; the figure per run is the median tokens/s of its second half of steps.
# usage: bench/train-sparse.sh [BUILD_DIR] [ROUNDS] [STEPS]
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
build="${1:-$root/build}"
rounds="${2:-3}"
steps="${3:-80}"
moe="$build/moe"
[ -x "$moe" ] || { echo "train-sparse: $moe not found (build first)" >&2; exit 1; }
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cat "$root"/docs/*.md "$root"/README.md > "$work/text.txt"
cat > "$work/shape.json" <<'JSON'
{"preset": "tiny", "n_layer": 3, "n_layer_dense": 1, "n_embd": 128, "n_expert": 64, "n_expert_used": 2,
 "n_expert_shared": 1, "n_ff_exp": 128, "n_group": 0, "n_group_used": 0}
JSON
for mode in dense exact lazy; do
  cat > "$work/$mode.yaml" <<YAML
model: {init: {config: $work/shape.json, seed: 1}}
data: {text: $work/text.txt, tokens: $work/corpus.tok, seq_len: 32, batch_size: 2}
optim: {steps: $steps, warmup: 5, lr: 1e-3, mode: $mode, threads: 1}
output: {dir: $work/out-$mode, log_every: 1000}
YAML
done
# tokenize once (the first run writes the corpus), untimed
"$moe" train --config "$work/lazy.yaml" --steps 1 --quiet >/dev/null 2>&1
median_second_half() { # loss.csv: tokens_per_s is the last column
  local n
  n=$(($(wc -l < "$1") - 1))
  tail -n +2 "$1" | tail -n $((n - n / 2)) | awk -F, '{ print $NF }' | sort -g |
    awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
declare -A sum
printf "%-6s" "round"; for mode in dense exact lazy; do printf " %12s" "$mode"; done; echo
for r in $(seq 1 "$rounds"); do
  printf "%-6s" "$r"
  for mode in dense exact lazy; do
    rm -rf "$work/out-$mode"
    "$moe" train --config "$work/$mode.yaml" --quiet >/dev/null 2>&1
    tps=$(median_second_half "$work/out-$mode/loss.csv")
    sum[$mode]=$(awk -v a="${sum[$mode]:-0}" -v b="$tps" 'BEGIN { print a + b }')
    printf " %12.0f" "$tps"
  done
  echo
done
d=${sum[dense]}
printf "mean   %12.0f %12.0f %12.0f tokens/s\n" "$(awk -v s="$d" -v r="$rounds" 'BEGIN{print s/r}')" \
  "$(awk -v s="${sum[exact]}" -v r="$rounds" 'BEGIN{print s/r}')" "$(awk -v s="${sum[lazy]}" -v r="$rounds" 'BEGIN{print s/r}')"
printf "vs dense %10s %11.2fx %11.2fx\n" "1.00x" "$(awk -v a="${sum[exact]}" -v b="$d" 'BEGIN{print a/b}')" \
  "$(awk -v a="${sum[lazy]}" -v b="$d" 'BEGIN{print a/b}')"
