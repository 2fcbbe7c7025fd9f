#!/usr/bin/env bash
# Installs the current build into a scratch prefix and builds and runs
# examples/embed.c against the installed package, as a user would:
#   pkg_config         cc embed.c $(pkg-config --cflags --libs memvisor),
#                      the shared library (and checks that it exports only
#                      the public mv_ API and carries the soname)
#   pkg_config_static  cc -static embed.c $(pkg-config --static ...)
#   cmake_package      find_package(memvisor), both targets
# usage: install_test.sh MODE BUILD_DIR SOURCE_DIR CC [SANITIZER_FLAGS]
#
# In the sanitizer builds the installed library is instrumented, so the
# program must be linked with the same -fsanitize flags (passed as
# SANITIZER_FLAGS); pkg_config_static is skipped there: the sanitizer
# runtimes cannot be linked into a -static executable.
set -euo pipefail

mode=$1 build=$2 src=$3 cc=$4 san=${5:-}
example=$src/examples/embed.c

tmp=$(mktemp -d "${TMPDIR:-/tmp}/memvisor-install.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
prefix=$tmp/prefix

if [ "$mode" = pkg_config_static ] && [ -n "$san" ]; then
    echo "SKIP: a sanitizer build's library needs the sanitizer runtime, which" \
         "cannot be linked into a -static program (pkg_config and" \
         "cmake_package still link it, statically too)"
    exit 77
fi

cmake --install "$build" --prefix "$prefix" >"$tmp/install.log" ||
    { cat "$tmp/install.log"; exit 1; }

libdir=$(dirname "$(find "$prefix" -name memvisor.pc -path '*/pkgconfig/*')")/..
libdir=$(cd "$libdir" && pwd)
export PKG_CONFIG_PATH=$libdir/pkgconfig
export LD_LIBRARY_PATH=$libdir
run() { echo "+ $*"; "$@"; }

case $mode in
pkg_config)
    for f in include/memvisor.h bin/memvisor sbin/memvisord \
             share/man/man1/memvisor.1 share/man/man8/memvisord.8; do
        [ -e "$prefix/$f" ] || { echo "not installed: $f"; exit 1; }
    done
    so=$(readlink -f "$libdir/libmemvisor.so")
    [ "$(basename "$so")" = "libmemvisor.so.$(pkg-config --modversion memvisor)" ] ||
        { echo "libmemvisor.so points at $so"; exit 1; }
    soname=$(objdump -p "$so" | awk '$1 == "SONAME" { print $2 }')
    [ "$soname" = libmemvisor.so.0 ] || { echo "soname: '$soname'"; exit 1; }
    # Only the public API leaves the shared library.
    extra=$(nm -D --defined-only "$so" | awk '{ print $3 }' |
            grep -v '^mv_[a-z]' | grep -v '^_\(init\|fini\|edata\|end\|_bss_start\)$' || true)
    [ -z "$extra" ] || { echo "exported beyond the public API:"; echo "$extra"; exit 1; }
    # ... and all of it: every function memvisor.h declares (a declaration
    # without MV_API would be hidden).
    declared=$(grep -v '^static inline' "$prefix/include/memvisor.h" |
               sed -n 's/^\(MV_API \)\?[a-z][a-z0-9_ ]* \**\(mv_[a-z0-9_]*\)(.*/\2/p' | sort)
    exported=$(nm -D --defined-only "$so" | awk '{ print $3 }' | grep '^mv_' | sort)
    [ -n "$declared" ] && [ "$declared" = "$exported" ] ||
        { echo "declared in memvisor.h but not exported, or the reverse:";
          diff <(echo "$declared") <(echo "$exported"); exit 1; }
    case $(nm -D --defined-only "$so") in
    *" mv__"*) echo "internal mv__ functions exported"; exit 1;;
    esac
    # Nothing of memvisor's build flags reaches the consumer.
    flags="$(pkg-config --cflags --libs --static memvisor)"
    case $flags in *-W*|*-fsanitize*|*-D*) echo "pkg-config leaks flags: $flags"; exit 1;; esac
    run "$cc" $san -o "$tmp/embed" "$example" $(pkg-config --cflags --libs memvisor)
    linked=$(ldd "$tmp/embed")
    case $linked in *"libmemvisor.so.0 => $libdir/"*) ;;
    *) echo "not linked with the installed libmemvisor.so.0:"; echo "$linked"; exit 1;;
    esac
    run "$tmp/embed"
    ;;
pkg_config_static)
    run "$cc" -static -o "$tmp/embed" "$example" $(pkg-config --static --cflags --libs memvisor)
    ! ldd "$tmp/embed" >/dev/null 2>&1 || { echo "not a static executable"; exit 1; }
    run "$tmp/embed"
    ;;
cmake_package)
    run cmake -S "$src/tests/install" -B "$tmp/consumer" -DCMAKE_C_COMPILER="$cc" \
        -DCMAKE_PREFIX_PATH="$prefix" -DMV_EXAMPLE="$example" \
        -DCMAKE_C_FLAGS="$san" -DCMAKE_EXE_LINKER_FLAGS="$san" >"$tmp/cmake.log" ||
        { cat "$tmp/cmake.log"; exit 1; }
    cmake --build "$tmp/consumer" >"$tmp/build.log" 2>&1 || { cat "$tmp/build.log"; exit 1; }
    for t in embed_shared embed_static; do
        ! grep -e '-Wshadow\|-Werror\|-fvisibility\|-D_GNU_SOURCE' \
            "$tmp/consumer/CMakeFiles/$t.dir/flags.make" ||
            { echo "$t: memvisor's build flags leaked into the consumer"; exit 1; }
    done
    linked=$(ldd "$tmp/consumer/embed_shared")
    case $linked in *"libmemvisor.so.0 => $libdir/"*) ;;
    *) echo "embed_shared: not the installed libmemvisor.so.0:"; echo "$linked"; exit 1;;
    esac
    case $(ldd "$tmp/consumer/embed_static") in
    *libmemvisor*) echo "embed_static: linked with the shared library"; exit 1;;
    esac
    run "$tmp/consumer/embed_shared"
    run "$tmp/consumer/embed_static"
    ;;
*)
    echo "unknown mode $mode"; exit 2;;
esac
echo "install.$mode: ok"
