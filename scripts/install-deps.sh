#!/usr/bin/env bash
# Installs the Debian packages memvisor builds and tests with.  Idempotent:
# does nothing when everything is present.  Needs root (or sudo) only when
# something is missing.
set -euo pipefail

packages=(build-essential cmake pkg-config libjson-c-dev libcmocka-dev
          liblz4-dev libzstd-dev libxxhash-dev
          valgrind    # test_protocol.valgrind
          clang       # make build-matrix, and the libFuzzer target fuzz_protocol
          # real QEMU guests (scripts/guest-image.sh, scripts/run-guest.sh):
          # the emulator, the guest's userland, the initramfs tools, and
          # kmod's depmod for the Debian kernel's modules.dep
          qemu-system-x86 busybox-static cpio kmod libc6-dev)

missing=()
for p in "${packages[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$p")
    fi
done
[ ${#missing[@]} -eq 0 ] && exit 0

echo "memvisor: installing ${missing[*]}"
sudo=""
[ "$(id -u)" -ne 0 ] && sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
