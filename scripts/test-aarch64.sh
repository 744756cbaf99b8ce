#!/usr/bin/env bash
# The aarch64 build, tested without an aarch64 machine: cross-compiles the kernels and their test
# (tests/kern/test_kern.c) with aarch64-linux-gnu-gcc, statically linked, and runs them under
# qemu user-mode emulation, so the NEON forms (level 3) are compiled with the project's warnings
# and compared with the scalar refs on every `make test`. Then, when it can, the engine against
# ../shared/vectors (tests/model/test_vectors.c, NEON and MOE_FORCE_REF=1): the same criteria as
# on x86-64, so the whole forward pass gives the reference logits on aarch64.
#
#   scripts/test-aarch64.sh [BUILD_DIR]      default build-aarch64 (git-ignored); nothing else is written
#
# Not through CMake: CMakeLists.txt requires every optional library (jansson, libcurl, sqlite,
# microhttpd, ...) at configure time and Debian has no arm64 cross package for them. The sources
# are globbed here and built by a generated build.ninja (incremental, header dependencies from
# -MMD): src/core + src/kern/{ref,cpu} for the kernel test; src/{fmt,model,sample,tok} on top for
# the engine. -std=c11 as in CMake matters: GNU C modes let GCC fuse a*b+c into an fma on aarch64
# (-ffp-contract=fast), which would change the ref's roundings.
#
# The engine needs jansson and utf8proc for arm64. Their Debian -dev packages (static .a inside)
# are fetched once with apt-get download into BUILD_DIR/sysroot, using a private apt state for
# arm64 in BUILD_DIR/apt: no `dpkg --add-architecture`, nothing installed on the system (Debian's
# registry is the one CI reaches). Without those packages or ../shared/vectors the run fails, as
# the x86-64 vector tests do; MOE_AARCH64_MODEL=0 leaves the engine test out on request. The
# kernel test always runs; it fails when any level differs from its ref or when the NEON level
# is not the one in use.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
B="${1:-build-aarch64}"
mkdir -p "$B"
B="$(cd "$B" && pwd)"
CC=aarch64-linux-gnu-gcc
AR=aarch64-linux-gnu-ar
QEMU="$(command -v qemu-aarch64-static || command -v qemu-aarch64 || true)"
MODEL="${MOE_AARCH64_MODEL:-1}"
SHARED="${MOE_SHARED:-$root/../shared}"
SHARED="$(cd "$SHARED" 2>/dev/null && pwd || echo "$SHARED")" # the tests run in $B
t_start=$(date +%s)

die() { echo "test-aarch64: $*" >&2; exit 1; }
command -v "$CC" >/dev/null || die "no $CC (apt-get install gcc-aarch64-linux-gnu libc6-dev-arm64-cross; make deps)"
[ -n "$QEMU" ] || die "no qemu-aarch64-static (apt-get install qemu-user-static; make deps)"
command -v ninja >/dev/null || die "no ninja (apt-get install ninja-build)"


# jansson + utf8proc for arm64 from Debian, unpacked under $B/sysroot (once)
fetch_sysroot() {
    local s="$B/sysroot" a="$B/apt"
    [ -f "$s/.complete" ] && return 0
    command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null || return 1
    rm -rf "$s" "$a"
    mkdir -p "$a/state/lists/partial" "$a/cache/archives/partial" "$a/debs" "$s"
    local o=(-q -o Dir::State="$a/state" -o Dir::Cache="$a/cache" -o Dir::State::status=/dev/null
             -o APT::Architecture=arm64 -o APT::Architectures=arm64)
    [ "$(id -u)" -eq 0 ] && o+=(-o APT::Sandbox::User=root) # as root apt drops to _apt, who cannot write here
    echo "test-aarch64: fetching libjansson-dev:arm64 and libutf8proc-dev:arm64 (apt-get download, private state in $a)"
    apt-get "${o[@]}" update >"$a/log" 2>&1 &&
        (cd "$a/debs" && apt-get "${o[@]}" download libjansson-dev:arm64 libutf8proc-dev:arm64) >>"$a/log" 2>&1 ||
        { tail -3 "$a/log" >&2; return 1; }
    for d in "$a"/debs/*.deb; do dpkg-deb -x "$d" "$s"; done
    [ -f "$s/usr/lib/aarch64-linux-gnu/libjansson.a" ] && [ -f "$s/usr/lib/aarch64-linux-gnu/libutf8proc.a" ] || return 1
    touch "$s/.complete"
}

model=0
if [ "$MODEL" != 0 ]; then
    if [ ! -d "$SHARED/vectors/models" ]; then
        die "no $SHARED/vectors/models: the engine test needs ../shared (set MOE_SHARED; MOE_AARCH64_MODEL=0 leaves it out)"
    elif ! fetch_sysroot; then
        die "could not fetch the arm64 jansson/utf8proc packages from Debian (see $B/apt/log; MOE_AARCH64_MODEL=0 leaves the engine test out)"
    else
        model=1
    fi
fi

# ---- build.ninja (regenerated every run: new source files join; ninja rebuilds what changed)
esc() { printf '%s' "$1" | sed 's/[$ :]/$&/g'; }
cflags="-std=c11 -O2 -march=armv8-a -Wall -Wextra -Wshadow -Wno-unused-parameter -fno-strict-aliasing
 -Wno-format-truncation -Werror -D_GNU_SOURCE -I$(esc "$root/include") -I$(esc "$root/src") -I$(esc "$root/tests")"
cflags="$(echo $cflags)"
objs() { # $1: variable for the object list, $2: extra flags; then sources
    local var=$1 xf=$2 src o list=""
    shift 2
    for src in "$@"; do
        o="obj/${src#"$root"/}"
        o="${o%.c}.o"
        echo "build $(esc "$o"): cc $(esc "$src")" >>"$B/build.ninja.tmp"
        [ -n "$xf" ] && echo "  xflags = $xf" >>"$B/build.ninja.tmp"
        list="$list $(esc "$o")"
    done
    printf -v "$var" '%s' "$list"
}
{
    echo "# generated by scripts/test-aarch64.sh"
    echo "cflags = $cflags"
    echo "rule cc"
    echo "  command = $CC -MMD -MF \$out.d \$cflags \$xflags -c \$in -o \$out"
    echo "  depfile = \$out.d"
    echo "  deps = gcc"
    echo "  description = CC \$out"
    echo "rule ar"
    echo "  command = rm -f \$out && $AR rcs \$out \$in"
    echo "  description = AR \$out"
    echo "rule link"
    echo "  command = $CC -static -o \$out \$in \$libs"
    echo "  description = LINK \$out"
} >"$B/build.ninja.tmp"
shopt -s nullglob
objs kern_objs "" "$root"/src/core/*.c "$root"/src/kern/ref/*.c "$root"/src/kern/cpu/*.c
objs test_kern_obj "" "$root/tests/kern/test_kern.c"
{
    echo "build libkern.a: ar$kern_objs"
    echo "build test_kern: link$test_kern_obj libkern.a"
    echo "  libs = -lm -pthread"
} >>"$B/build.ninja.tmp"
targets=(test_kern)
if [ "$model" = 1 ]; then
    sys="$(esc "$B/sysroot/usr")" # jansson.h, utf8proc.h and their .a
    objs engine_objs "-isystem $sys/include" "$root"/src/fmt/*.c "$root"/src/model/*.c "$root"/src/sample/*.c \
        "$root"/src/tok/*.c
    objs test_vec_obj "-isystem $sys/include" "$root/tests/model/test_vectors.c"
    {
        echo "build libengine.a: ar$engine_objs"
        echo "build test_vectors: link$test_vec_obj libengine.a libkern.a"
        echo "  libs = -L$sys/lib/aarch64-linux-gnu -ljansson -lutf8proc -lm -pthread"
    } >>"$B/build.ninja.tmp"
    targets+=(test_vectors)
fi
mv "$B/build.ninja.tmp" "$B/build.ninja"
ninja -C "$B" ${JOBS:+-j "$JOBS"} "${targets[@]}"
t_built=$(date +%s)

# ---- run under qemu (the ref/NEON choice is the tests' own: no MOE_FORCE_REF / MOE_INT8 from outside).
# Pinned to one host CPU: qemu translates a store-release as barrier + store and a load-acquire as
# load + barrier, so on an x86-64 host's cores a store-release followed by a load-acquire (STLR;
# LDAR: a C11 seq_cst store then load) may be reordered by the store buffer, which ARMv8 forbids.
# The thread pool's sleep/wake handshake relies on that order, and unpinned runs hung now and then
# (the caller asleep with done = n-1, the worker having read caller_sleep = 0). Threads sharing one
# core cannot observe the reordering. So qemu checks the arithmetic and the code paths, not the
# ARM memory model; the timeout (MOE_AARCH64_TIMEOUT seconds per run) turns any hang into a failure.
cpu="$(awk '/^Cpus_allowed_list/ { split($2, a, /[,-]/); print a[1] }' /proc/self/status)"
pin=(taskset -c "${cpu:-0}")
command -v taskset >/dev/null || die "no taskset (util-linux)"
tmo="${MOE_AARCH64_TIMEOUT:-600}"
run() { # name, what, then the command's environment and arguments; the whole log for kern or a failure
    local name=$1 what=$2 t0 rc=0
    shift 2
    t0=$(date +%s)
    (cd "$B" && env -u MOE_FORCE_REF -u MOE_INT8 "$@") >"$B/$name.log" 2>&1 || rc=$?
    [ $rc -eq 124 ] && echo "test-aarch64: $what: timed out after $tmo s" >>"$B/$name.log"
    if [ $rc -ne 0 ] || [ "$name" = kern ]; then
        sed 's/^/  /' "$B/$name.log"
    fi
    echo "test-aarch64: $what: $(tail -n 1 "$B/$name.log"), exit $rc, $(( $(date +%s) - t0 )) s (log: $B/$name.log)"
    return $rc
}
fail=0
run kern "tests/kern/test_kern.c" timeout "$tmo" "${pin[@]}" "$QEMU" ./test_kern || fail=1
grep -qx "simd: neon" "$B/kern.log" || { echo "test-aarch64: the kernel test did not run at the NEON level" >&2; fail=1; }
if [ "$model" = 1 ]; then
    run vectors "tests/model/test_vectors.c" MOE_SHARED="$SHARED" timeout "$tmo" "${pin[@]}" "$QEMU" ./test_vectors ||
        fail=1
    run vectors_ref "tests/model/test_vectors.c, MOE_FORCE_REF=1" MOE_SHARED="$SHARED" MOE_FORCE_REF=1 \
        timeout "$tmo" "${pin[@]}" "$QEMU" ./test_vectors || fail=1
fi
echo "test-aarch64: build $((t_built - t_start)) s, total $(( $(date +%s) - t_start )) s: $([ $fail = 0 ] && echo passed || echo FAILED)"
exit $fail
