#!/usr/bin/env bash
# Runs the test suite built for the Raspberry Pi targets under qemu-user.
#
#   scripts/cross-test.sh [TARGET...]
#
# TARGET: aarch64-unknown-linux-gnu and/or armv7-unknown-linux-gnueabihf
#         (short: aarch64 / arm64, armv7 / armhf); default: both.
#
# Runs the library's unit tests (`cargo test --lib`) and the integration tests
# that need neither the Django test server nor systemd (`--test sensors_set`),
# then the cross-built `profilo-gateway` binary itself (`--version`,
# `config check`, `sensors read` of the simulated sensor), through
#   qemu-aarch64-static -L /usr/aarch64-linux-gnu      (aarch64)
#   qemu-arm-static     -L /usr/arm-linux-gnueabihf    (armv7)
# set as CARGO_TARGET_<TRIPLE>_RUNNER. CROSS_TEST_ARGS replaces the integration
# test selection (default "--test sensors_set"; integration tests that start the
# Django server or call systemd-analyze are not meant for this).
# Debian's cross gcc, the libc headers and qemu-user-static are installed
# (apt-get) when missing.
#
# CROSS_TEST_BUILD_ONLY: targets (space-separated, full triples) only built
# (`cargo build`: the library and the binary, linked) and whose binary is run
# under qemu as below, without the unit tests (.ci/run: aarch64, whose 64-bit
# code the x86_64 host's own test run already covers; armv7, 32-bit, runs them).
#
# A target whose rust-std is missing and cannot be fetched by rustup is
# reported as SKIPPED (exit 0) unless CROSS_STRICT=1.
#
# Prints, per target, the time to build the test binaries and to run them.
set -euo pipefail

cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target/cross}"
. scripts/lib/cross-env.sh

targets=()
for arg in "$@"; do
    case "$arg" in
        aarch64 | arm64) targets+=(aarch64-unknown-linux-gnu) ;;
        armv7 | armhf) targets+=(armv7-unknown-linux-gnueabihf) ;;
        -h | --help)
            sed -n '2,28p' "$0" | sed 's/^# \{0,1\}//'
            exit 0
            ;;
        *) targets+=("$arg") ;;
    esac
done
if [ ${#targets[@]} -eq 0 ]; then
    targets=("${CROSS_DEFAULT_TARGETS[@]}")
fi

read -r -a extra <<<"${CROSS_TEST_ARGS:---test sensors_set}"
summary=()
for target in "${targets[@]}"; do
    require_supported_target "$target"
    prefix="$(gcc_prefix "$target")" qemu="$(qemu_static "$target")"
    install_cross_packages "$target"
    if ! rustup target list --installed | grep -qx "$target"; then
        if ! rustup target add "$target"; then
            # rustup's download server may be out of reach (CI machines reach
            # only the package registries). Say so loudly; fail only when asked.
            echo "SKIPPED $target: its rust-std is not installed and rustup cannot fetch it" >&2
            if [ "${CROSS_STRICT:-0}" = 1 ]; then exit 1; fi
            summary+=("$target: SKIPPED (rust-std not installable here)")
            continue
        fi
    fi

    export_cross_toolchain "$target"
    export "CARGO_TARGET_$(echo "$target" | tr 'a-z-' 'A-Z_')_RUNNER=$qemu -L /usr/$prefix"

    build_only=0
    [[ " ${CROSS_TEST_BUILD_ONLY:-} " == *" $target "* ]] && build_only=1
    start=$(date +%s)
    if [ $build_only = 1 ]; then
        echo "==> cargo build --target $target (CROSS_TEST_BUILD_ONLY: no unit tests)"
        cargo build --locked --target "$target"
    else
        echo "==> cargo test --no-run --target $target --lib ${extra[*]}"
        cargo test --locked --no-run --target "$target" --lib "${extra[@]}"
    fi
    build_secs=$(($(date +%s) - start))

    run_secs=0
    if [ $build_only = 0 ]; then
        echo "==> cargo test --target $target --lib ${extra[*]} (under $qemu)"
        start=$(date +%s)
        cargo test --locked --target "$target" --lib "${extra[@]}"
        run_secs=$(($(date +%s) - start))
    fi

    # The binary as a user meets it: it starts, parses its defaults, reads a sensor.
    bin="$CARGO_TARGET_DIR/$target/debug/profilo-gateway"
    echo "==> $bin under $qemu"
    home="$(mktemp -d)"
    HOME="$home" $qemu -L "/usr/$prefix" "$bin" --version
    HOME="$home" $qemu -L "/usr/$prefix" "$bin" config check >/dev/null
    HOME="$home" $qemu -L "/usr/$prefix" "$bin" sensors read --json
    rm -rf "$home"

    if [ $build_only = 1 ]; then
        summary+=("$target: build ${build_secs}s, unit tests not run (CROSS_TEST_BUILD_ONLY), binary run under qemu")
    else
        summary+=("$target: build ${build_secs}s, run under qemu ${run_secs}s")
    fi
done

echo
echo "cross tests:"
printf '  %s\n' "${summary[@]}"
