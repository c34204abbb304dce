#!/usr/bin/env bash
# Docker-free cross build of profilo-gateway for Raspberry Pi OS.
#
#   scripts/cross-build.sh [--deb] [TARGET...]
#
# TARGET: aarch64-unknown-linux-gnu (64-bit Pi OS) and/or
#         armv7-unknown-linux-gnueabihf (32-bit Pi OS, Pi 2 and later);
#         default: both. Short names: aarch64 / arm64, armv7 / armhf.
# --deb:  also package each build with cargo-deb ($CARGO_TARGET_DIR/debian/*.deb).
#
# Installs what is missing (Debian/Ubuntu host): the cross gcc and libc
# headers, qemu-user-static (used by scripts/cross-test.sh), the rustup
# targets. Builds `--release` into $CARGO_TARGET_DIR (default target/cross, so
# that it never waits on the lock of a native build in target/) and prints the
# time taken and the stripped binary size.
#
# armv6 (arm-unknown-linux-gnueabihf, Pi Zero / 1) is not possible here:
# rustup cannot install its std on this machine and Debian's armhf toolchain
# is ARMv7. Use `cross build --release --target arm-unknown-linux-gnueabihf`
# (Docker, see cross.toml).
set -euo pipefail

cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target/cross}"
. scripts/lib/cross-env.sh

deb=0
targets=()
for arg in "$@"; do
    case "$arg" in
        --deb) deb=1 ;;
        aarch64 | arm64) targets+=(aarch64-unknown-linux-gnu) ;;
        armv7 | armhf) targets+=(armv7-unknown-linux-gnueabihf) ;;
        -h | --help)
            sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'
            exit 0
            ;;
        -*)
            echo "unknown option $arg (see --help)" >&2
            exit 2
            ;;
        *) targets+=("$arg") ;;
    esac
done
if [ ${#targets[@]} -eq 0 ]; then
    targets=("${CROSS_DEFAULT_TARGETS[@]}")
fi

ensure_target() {
    local target="$1"
    case "$target" in
        arm-unknown-linux-gnueabihf)
            echo "armv6 ($target) cannot be built without Docker: use" >&2
            echo "  cross build --release --target $target" >&2
            exit 2
            ;;
    esac
    require_supported_target "$target"
    install_cross_packages "$target"
    if ! rustup target list --installed | grep -qx "$target"; then
        echo "==> rustup target add $target"
        rustup target add "$target"
    fi
    export_cross_toolchain "$target"
}

if [ $deb -eq 1 ] && ! command -v cargo-deb >/dev/null; then
    echo "==> cargo install cargo-deb --locked"
    cargo install cargo-deb --locked
fi

summary=()
for target in "${targets[@]}"; do
    ensure_target "$target"
    echo "==> cargo build --release --target $target"
    start=$(date +%s)
    cargo build --release --locked --target "$target"
    secs=$(($(date +%s) - start))
    bin="$CARGO_TARGET_DIR/$target/release/profilo-gateway"
    size=$(stat -c %s "$bin")
    glibc=$("$(gcc_prefix "$target")-objdump" -T "$bin" 2>/dev/null |
        grep -o 'GLIBC_[0-9.]*' | sort -uV | tail -1 || true)
    line="$target: ${secs}s, $bin $size bytes ($((size / 1024)) KiB), needs ${glibc:-?}"
    if [ $deb -eq 1 ]; then
        # The man page and the completions (examples/gen_docs.rs, run on the host) go where
        # the assets list of Cargo.toml expects them, whatever the target.
        cargo run --quiet --locked --example gen_docs -- target/gen-docs >/dev/null
        # cargo-deb prints the path of the package it wrote.
        pkg=$(cargo deb --no-build --no-strip --target "$target" | tail -1)
        line="$line; package $pkg"
    fi
    echo "    $line"
    summary+=("$line")
done

echo
echo "cross builds:"
printf '  %s\n' "${summary[@]}"
