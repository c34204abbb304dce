# shellcheck shell=bash
# The cross toolchain of scripts/cross-build.sh and scripts/cross-test.sh, written
# once: the default Pi targets, Debian's cross gcc/libc headers/qemu-user-static
# installed when missing, and the variables cargo and the cc crate read to use them.
# Sourced (after `set -euo pipefail`), never run.

# shellcheck disable=SC2034 # read by the scripts that source this file
CROSS_DEFAULT_TARGETS=(aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf)

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

apt_updated=0
apt_install() {
    if [ $apt_updated -eq 0 ]; then
        $SUDO apt-get update -qq
        apt_updated=1
    fi
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# target -> gcc prefix (fails for a target this toolchain does not cover)
gcc_prefix() {
    case "$1" in
        aarch64-unknown-linux-gnu) echo aarch64-linux-gnu ;;
        armv7-unknown-linux-gnueabihf) echo arm-linux-gnueabihf ;;
        *) return 1 ;;
    esac
}
# target -> Debian packages of its cross gcc and libc headers
debian_packages() {
    case "$1" in
        aarch64-unknown-linux-gnu) echo gcc-aarch64-linux-gnu libc6-dev-arm64-cross ;;
        armv7-unknown-linux-gnueabihf) echo gcc-arm-linux-gnueabihf libc6-dev-armhf-cross ;;
    esac
}
# target -> the qemu-user binary that runs it
qemu_static() {
    case "$1" in
        aarch64-*) echo qemu-aarch64-static ;;
        arm*) echo qemu-arm-static ;;
    esac
}

# Exits 2 on a target gcc_prefix does not know.
require_supported_target() {
    if ! gcc_prefix "$1" >/dev/null; then
        echo "unsupported target $1 (aarch64-unknown-linux-gnu, armv7-unknown-linux-gnueabihf)" >&2
        exit 2
    fi
}

# Installs the cross gcc, libc headers and qemu-user-static of a target when missing.
install_cross_packages() {
    local target="$1" prefix
    prefix="$(gcc_prefix "$target")"
    local missing=()
    if ! command -v "$prefix-gcc" >/dev/null || [ ! -d "/usr/$prefix/include" ]; then
        read -r -a missing <<<"$(debian_packages "$target")"
    fi
    command -v "$(qemu_static "$target")" >/dev/null || missing+=(qemu-user-static)
    if [ ${#missing[@]} -gt 0 ]; then
        echo "==> installing ${missing[*]}"
        apt_install "${missing[@]}"
    fi
}

# Points cargo's linker and the cc crate's CC/AR for a target at its cross gcc.
export_cross_toolchain() {
    local target="$1" prefix var lower
    prefix="$(gcc_prefix "$target")"
    var="$(echo "$target" | tr 'a-z-' 'A-Z_')"
    lower="$(echo "$target" | tr '-' '_')"
    export "CARGO_TARGET_${var}_LINKER=$prefix-gcc"
    export "CC_${lower}=$prefix-gcc"
    export "AR_${lower}=$prefix-ar"
}
