#!/usr/bin/env bash
# Install what moekit needs to build and test, from Debian's packages. Idempotent: packages
# already present are not touched, so a second run takes a second. Works as root or with sudo.
set -euo pipefail

PKGS=(
  build-essential cmake ninja-build pkg-config git   # toolchain
  clang libclang-rt-14-dev                           # libFuzzer and sanitizer runtimes
  libjansson-dev                                     # JSON (configs, token files, server)
  libutf8proc-dev                                    # Unicode classes for the tokenizer
)
# Extra packages other parts of the project append here (one line each):
if [ -f "$(dirname "$0")/deps.txt" ]; then
  while read -r p _; do [ -n "$p" ] && [ "${p#\#}" = "$p" ] && PKGS+=("$p"); done < "$(dirname "$0")/deps.txt"
fi

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then  # (then the npm section below, which runs every time)

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "install-deps: need root or sudo to install: ${missing[*]}" >&2; exit 1; }
  SUDO="sudo"
fi
echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# npm: test clients pinned by a package-lock.json in a tests/ folder (tests/server: the official
# `openai` client; tests/interop: llama.cpp as node-llama-cpp bundles it, the reference build of
# ../shared/vectors). Installed when the folder's node_modules is missing; only npm's registry is
# used. Optional (per-platform) packages and install scripts are skipped: the lockfiles name the
# x86-64 Linux build directly.
root="$(cd "$(dirname "$0")/.." && pwd)"
for lock in "$root"/tests/*/package-lock.json; do
  [ -f "$lock" ] || continue
  dir="$(dirname "$lock")"
  [ -d "$dir/node_modules" ] && continue
  if ! command -v npm >/dev/null; then
    echo "install-deps: installing npm"
    $( [ "$(id -u)" -ne 0 ] && echo sudo ) apt-get install -y -qq --no-install-recommends npm
  fi
  echo "install-deps: npm ci --prefix ${dir#$root/}"
  npm ci --prefix "$dir" --no-audit --no-fund --loglevel=error --omit=optional --ignore-scripts
done
