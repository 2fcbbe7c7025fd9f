#!/usr/bin/env bash
# Builds the bootable test guest for real QEMU guests from Debian packages
# only: Debian's kernel (the package behind linux-image-amd64, fetched with
# apt-get download and cached) and an initramfs of busybox-static, the
# virtio modules the guest needs, /init and the static in-guest agent
# (guest/vm/).  Usage: scripts/guest-image.sh [OUTDIR]   (default build/vm)
#
# Outputs OUTDIR/vmlinuz, OUTDIR/initramfs.cpio.gz and OUTDIR/guest.env
# (KERNEL=, INITRD=, KVER=, for tests to source).  Idempotent: does nothing
# but print one line when the outputs are newer than their inputs.  The
# kernel is fetched once per OUTDIR and then reused, so every guest boots
# the same kernel; set MV_GUEST_KERNEL_PKG to pin another package.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=${1:-$root/build/vm}
mkdir -p "$out"
out=$(cd "$out" && pwd)
cache=$out/cache
log=$out/guest-image.log
# guests started in parallel each run this script: one builds, the others
# wait and then find everything up to date
if command -v flock >/dev/null; then
    exec 9>"$out/.lock"
    flock 9
fi
: >"$log"

die() { echo "guest-image: $*" >&2; exit 1; }
need_cmd() { # command package
    command -v "$1" >/dev/null 2>&1 ||
        die "'$1' not found: install the Debian package $2 (scripts/install-deps.sh)"
}
need_pkg() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed" ||
        die "the Debian package $1 is not installed (scripts/install-deps.sh)"
}

need_cmd apt-get apt
need_cmd apt-cache apt
need_cmd dpkg-deb dpkg
need_cmd cpio cpio
need_cmd gzip gzip
need_cmd gcc gcc
export PATH=$PATH:/sbin:/usr/sbin
need_cmd depmod kmod
need_pkg busybox-static
busybox=$(dpkg -L busybox-static | grep -m1 '/bin/busybox$') ||
    die "busybox-static installs no bin/busybox"
libc_a=$(gcc -print-file-name=libc.a)
[ -f "$libc_a" ] || die "no static libc (libc.a): install the Debian package libc6-dev"

sudo=""
[ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null && sudo="sudo"

# ---- kernel -------------------------------------------------------------
# Modules the guest needs and this kernel does not build in: virtio-pci (the
# transport of every virtio device QEMU gives the guest) and virtio-balloon
# (the balloon and free page reporting).  The control channel is the second
# 16550 serial port, built in (CONFIG_SERIAL_8250=y): no virtio_console.
want_modules=(virtio_pci virtio_balloon)
# The real package behind the metapackage; an already cached kernel is used
# when apt cannot say (no package lists, offline).
resolve_kpkg() {
    apt-cache depends linux-image-amd64 2>>"$log" |
        awk '$1 == "Depends:" && $2 ~ /^linux-image-/ { print $2; exit }'
}
kpkg=${MV_GUEST_KERNEL_PKG:-}
[ -n "$kpkg" ] || kpkg=$(resolve_kpkg || true)
mkdir -p "$cache"
did=()
if [ -z "$kpkg" ]; then
    cached=$(ls -t "$cache"/linux-image-*.deb 2>/dev/null | head -1 || true)
    if [ -n "$cached" ]; then
        kpkg=$(basename "$cached" | cut -d_ -f1)
    else
        $sudo apt-get update -q >>"$log" 2>&1 || true
        kpkg=$(resolve_kpkg || true)
        [ -n "$kpkg" ] ||
            die "cannot resolve linux-image-amd64 to a kernel package (apt-cache depends; see $log)"
    fi
fi
deb=$(ls -t "$cache/${kpkg}"_*.deb 2>/dev/null | head -1 || true)
if [ -z "$deb" ]; then
    if ! (cd "$cache" && apt-get download -q "$kpkg" >>"$log" 2>&1); then
        $sudo apt-get update -q >>"$log" 2>&1 ||
            die "apt-get update failed (see $log)"
        (cd "$cache" && apt-get download -q "$kpkg" >>"$log" 2>&1) ||
            die "apt-get download $kpkg failed: the Debian package $kpkg is not available (see $log)"
    fi
    deb=$(ls -t "$cache/${kpkg}"_*.deb 2>/dev/null | head -1)
    [ -n "$deb" ] || die "apt-get download $kpkg left no .deb in $cache"
    did+=("downloaded $(basename "$deb")")
fi

kroot=$out/kernel
stamp="$(basename "$deb") ${want_modules[*]}"
fresh=0
if [ ! -f "$kroot/.from" ] || [ "$(cat "$kroot/.from")" != "$stamp" ] ||
   [ "$deb" -nt "$kroot/.from" ]; then
    rm -rf "$kroot"
    mkdir -p "$kroot"
    dpkg-deb -x "$deb" "$kroot" || die "dpkg-deb -x $deb failed"
    fresh=1
    did+=("extracted $kpkg")
fi
moddir=$(ls -d "$kroot"/lib/modules/* "$kroot"/usr/lib/modules/* 2>/dev/null | head -1 || true)
[ -n "$moddir" ] || die "$kpkg ships no lib/modules/<version>"
kver=$(basename "$moddir")
vmlinuz=$(ls "$kroot"/boot/vmlinuz-"$kver" 2>/dev/null || true)
[ -n "$vmlinuz" ] || die "$kpkg ships no boot/vmlinuz-$kver"
if [ ! -f "$moddir/modules.dep" ]; then
    # the package leaves modules.dep to its postinst; make it here
    depmod -b "${moddir%/lib/modules/*}" "$kver" >>"$log" 2>&1 ||
        die "depmod failed for $kver (see $log)"
fi
# modules, resolved through modules.dep into load order
declare -A loaded=()
order=()
builtin_has() { grep -qE "(^|/)$1\.ko(\.[a-z]+)?\$" "$moddir/modules.builtin"; }
dep_line() { grep -E "(^|/)$1\.ko(\.[a-z]+)?:" "$moddir/modules.dep" | head -1; }
add_path() { # a path relative to moddir: its dependencies first
    local p=$1 line deps i
    [ -n "${loaded[$p]:-}" ] && return 0
    line=$(grep -E "^$(printf '%s' "$p" | sed 's/[.]/\\./g'):" "$moddir/modules.dep" | head -1)
    read -ra deps <<<"${line#*:}"
    for ((i = ${#deps[@]} - 1; i >= 0; i--)); do
        add_path "${deps[$i]}"
    done
    loaded[$p]=1
    order+=("$p")
}
for m in "${want_modules[@]}"; do
    if builtin_has "$m"; then
        continue
    fi
    line=$(dep_line "$m")
    [ -n "$line" ] || die "module $m is neither built into $kver nor in modules.dep"
    add_path "${line%%:*}"
done
if [ $fresh -eq 1 ]; then
    # keep only what the image takes: the package is ~400 MB unpacked
    keep=$(printf '%s\n' "${order[@]}")
    (cd "$moddir" && find kernel -type f | LC_ALL=C sort |
        grep -vxF -f <(printf '%s\n' "$keep") | xargs -r rm -f)
    find "$moddir/kernel" -type d -empty -delete
    rm -rf "${kroot:?}/usr/share" "${kroot:?}"/boot/System.map-*
    printf '%s\n' "$stamp" >"$kroot/.from"
fi
if [ ! -f "$out/vmlinuz" ] || [ "$vmlinuz" -nt "$out/vmlinuz" ] ||
   ! cmp -s "$vmlinuz" "$out/vmlinuz"; then
    cp "$vmlinuz" "$out/vmlinuz.tmp" && mv "$out/vmlinuz.tmp" "$out/vmlinuz"
    did+=("vmlinuz")
fi

# ---- initramfs ------------------------------------------------------------
srcdir=$root/guest/vm
initrd=$out/initramfs.cpio.gz
inputs=("${BASH_SOURCE[0]}" "$srcdir" "$srcdir"/* "$busybox" "$kroot/.from")
stale=0
if [ ! -f "$initrd" ]; then
    stale=1
else
    for f in "${inputs[@]}"; do
        [ "$f" -nt "$initrd" ] && { stale=1; break; }
    done
fi

nmods=0
if [ $stale -eq 1 ]; then
    stage=$out/initramfs-root
    rm -rf "$stage"
    mkdir -p "$stage"/{bin,sbin,usr/bin,usr/sbin,etc,proc,sys,dev,tmp,root,lib/modules/"$kver"}

    # busybox and its applets
    cp "$busybox" "$stage/bin/busybox"
    "$busybox" --list-full | while read -r applet; do
        [ "$applet" = bin/busybox ] || [ -e "$stage/$applet" ] ||
            ln -s /bin/busybox "$stage/$applet"
    done

    : >"$stage/etc/mv-modules"
    for p in "${order[@]}"; do
        plain=${p%.xz}; plain=${plain%.zst}; plain=${plain%.gz}
        mkdir -p "$(dirname "$stage/lib/modules/$kver/$plain")"
        case $p in
        *.xz) need_cmd xz xz-utils; xz -dc "$moddir/$p" >"$stage/lib/modules/$kver/$plain" ;;
        *.zst) need_cmd zstd zstd; zstd -qdc "$moddir/$p" >"$stage/lib/modules/$kver/$plain" ;;
        *.gz) gzip -dc "$moddir/$p" >"$stage/lib/modules/$kver/$plain" ;;
        *) cp "$moddir/$p" "$stage/lib/modules/$kver/$plain" ;;
        esac
        echo "/lib/modules/$kver/$plain" >>"$stage/etc/mv-modules"
        nmods=$((nmods + 1))
    done

    # /init and the agent
    install -m 0755 "$srcdir/init" "$stage/init"
    gcc -static -std=gnu11 -D_GNU_SOURCE -Wall -Wextra -Werror -O2 -s \
        -o "$stage/bin/mvguest" \
        "$srcdir/mvguest.c" "$srcdir/reply.c" "$srcdir/workloads.c" \
        "$srcdir/verify.c" "$srcdir/memcmds.c" >>"$log" 2>&1 ||
        { cat "$log" >&2; die "compiling the guest agent failed"; }

    (cd "$stage" && find . -mindepth 1 | LC_ALL=C sort |
        cpio -o -H newc -R 0:0 --quiet | gzip -6 -n) >"$initrd.tmp" ||
        die "cpio/gzip failed"
    mv "$initrd.tmp" "$initrd"
    rm -rf "$stage"
    did+=("initramfs ($((($(stat -c %s "$initrd") + 1023) / 1024)) KiB, $nmods modules)")
fi

env_new="KERNEL=$out/vmlinuz
INITRD=$initrd
KVER=$kver
KERNEL_PKG=$kpkg"
if [ ! -f "$out/guest.env" ] || [ "$(cat "$out/guest.env")" != "$env_new" ]; then
    printf '%s\n' "$env_new" >"$out/guest.env"
    did+=("guest.env")
fi

if [ ${#did[@]} -eq 0 ]; then
    echo "guest-image: up to date ($kver) in $out"
else
    msg=$(printf '%s; ' "${did[@]}")
    echo "guest-image: ${msg%; } for $kver in $out"
fi
