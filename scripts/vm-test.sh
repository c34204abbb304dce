#!/usr/bin/env bash
# The .deb under a real systemd: builds the amd64 package with cargo-deb, boots a
# Debian bookworm guest that has no network interface at all, installs the
# package there with `apt install ./profilo-gateway_*.deb` and checks what a user
# meets, against the Django + SimpleJWT test server running inside the guest on
# its own 127.0.0.1 (scripts/vm-guest/checks.sh has the list).
#
#   scripts/vm-test.sh [--image-only]
#
# --image-only: only make sure the cached guest image exists (debootstrap when
# the package list changed), then exit; .ci/run starts it early, in the
# background, so that the VM step finds the image ready.
#
# Environment:
#   VM_TEST_PENDING   checks expected to fail until the feature they test lands,
#                     space-separated (default "": none; e.g. "reload" while SIGHUP
#                     handling was not in the daemon). Such a check prints PENDING, counts as
#                     neither passed nor failed; if it passes, it prints XPASS: take
#                     it off the list. VM_TEST_PENDING="" makes every check count.
#   VM_TEST_LINTIAN_PENDING  lintian tags tolerated for now (default ""):
#                     a tag whose fix has not landed yet.
#   VM_TEST_ACCEL     auto (default: KVM when it boots the guest kernel within a
#                     few seconds, else TCG), kvm or tcg.
#   VM_TEST_MIRROR    Debian mirror for debootstrap (default: the host's apt
#                     source for bookworm main).
#   VM_TEST_TIMEOUT   seconds the guest may run (default 1200: about 4 minutes
#                     on a quiet 2-core machine under TCG, far more on a busy one).
#   VM_TEST_REUSE_DEBS=1  skip the build, reuse the packages of the last run
#                     (to iterate on the guest's checks).
#   VM_TEST_TARGET_DIR  a cargo target dir whose release/profilo-gateway another
#                     step already built from this tree (.ci/run: the MSRV step's
#                     `cargo +MSRV build --release`): packaged as is, no second
#                     release build (the longest part of this script).
#
# What it installs when missing (Debian host, as root): debootstrap,
# qemu-system-x86, e2fsprogs, lintian (apt-get), cargo-deb (cargo install).
#
# Artefacts, all under target/vm/ (never in git):
#   rootfs-<key>/   the debootstrapped guest, reused while GUEST_PACKAGES and
#                   IMAGE_RECIPE below are unchanged (<key> is their hash)
#   debs/           the two packages (this version, and a higher one for the upgrade)
#   run/            disk.img, console.log (the guest's serial console),
#                   results.txt (its check lines, through a virtio serial port)
#
# A missing guest image is debootstrapped in the background while cargo builds,
# and the KVM probe runs while the disk image is written.
#
# Prints one line per check, the duration of each phase, and ends with
# `N passed, N failed`; exits 1 when a check failed.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

SUITE=bookworm
# The guest's packages. Changing this list (or IMAGE_RECIPE, for a change in
# build_rootfs) rebuilds the cached image. python3: the test server (Django,
# DRF, SimpleJWT and gunicorn come from the test venv, pure Python); dbus: the
# system bus that `systemd-analyze security` asks; adduser: the package's Depends.
GUEST_PACKAGES="systemd-sysv,udev,kmod,linux-image-cloud-amd64,adduser,dbus,python3"
IMAGE_RECIPE=1

PENDING=" ${VM_TEST_PENDING-} "
LINTIAN_PENDING=" ${VM_TEST_LINTIAN_PENDING-} "
ACCEL="${VM_TEST_ACCEL:-auto}"
GUEST_TIMEOUT="${VM_TEST_TIMEOUT:-1200}"
IMAGE_ONLY=0
for arg in "$@"; do
    case "$arg" in
        --image-only) IMAGE_ONLY=1 ;;
        -h | --help)
            sed -n '2,48p' "$0" | sed 's/^# \{0,1\}//'
            exit 0
            ;;
        *)
            echo "vm-test: unknown argument $arg (see --help)" >&2
            exit 2
            ;;
    esac
done

if [ "$(id -u)" -ne 0 ]; then
    # debootstrap, chroot and reading the guest's root-only files need root.
    exec sudo --preserve-env=VM_TEST_PENDING,VM_TEST_LINTIAN_PENDING,VM_TEST_ACCEL,VM_TEST_MIRROR,VM_TEST_TIMEOUT,VM_TEST_REUSE_DEBS,VM_TEST_TARGET_DIR,PATH,CARGO_HOME,RUSTUP_HOME \
        bash "$0" "$@"
fi

VM="$ROOT/target/vm"
RUN="$VM/run"
DEBS="$VM/debs"
mkdir -p "$VM" "$RUN" "$DEBS"

# ---- reporting ----------------------------------------------------------------
passed=0
failed=0
pending_seen=()
xpassed=()
phases=()
phase_name=""
phase_start=0

phase() {
    phase_end
    phase_name="$1"
    phase_start=$(date +%s)
    echo
    echo "=== vm-test: $1 ($(date -u +%H:%M:%S))"
}
phase_end() {
    if [ -n "$phase_name" ]; then
        local secs=$(($(date +%s) - phase_start))
        phases+=("$(printf '%-34s %4ds' "$phase_name" "$secs")")
        echo "--- $phase_name: ${secs}s"
        phase_name=""
    fi
}

# result PASS|FAIL NAME DETAIL: one line per check; a pending check is reported
# as such and not counted.
result() {
    local verdict="$1" name="$2" detail="$3"
    if [[ "$PENDING" == *" $name "* ]]; then
        if [ "$verdict" = PASS ]; then
            echo "XPASS   $name: $detail (listed in VM_TEST_PENDING but passes: take it off the list)"
            xpassed+=("$name")
        else
            echo "PENDING $name: $detail (expected to fail until its feature lands; not counted; VM_TEST_PENDING)"
            pending_seen+=("$name")
        fi
        return
    fi
    if [ "$verdict" = PASS ]; then
        passed=$((passed + 1))
        echo "PASS    $name: $detail"
    else
        failed=$((failed + 1))
        echo "FAIL    $name: $detail"
    fi
}

finish() {
    phase_end
    echo
    echo "vm-test phases:"
    printf '  %s\n' "${phases[@]}"
    if [ ${#pending_seen[@]} -gt 0 ]; then
        echo "pending (expected to fail, not counted): ${pending_seen[*]}"
    fi
    if [ ${#xpassed[@]} -gt 0 ]; then
        echo "pending but passing (take off VM_TEST_PENDING): ${xpassed[*]}"
    fi
    echo "vm-test artefacts: $RUN (console.log, results.txt)"
    echo "$passed passed, $failed failed"
    if [ "$failed" -gt 0 ]; then exit 1; fi
    exit 0
}

# ---- tools ----------------------------------------------------------------------
phase "tools"
need_apt=()
command -v debootstrap >/dev/null 2>&1 || need_apt+=(debootstrap)
command -v qemu-system-x86_64 >/dev/null 2>&1 || need_apt+=(qemu-system-x86)
command -v mkfs.ext4 >/dev/null 2>&1 || need_apt+=(e2fsprogs)
command -v debugfs >/dev/null 2>&1 || need_apt+=(e2fsprogs)
command -v lintian >/dev/null 2>&1 || need_apt+=(lintian)
if [ ${#need_apt[@]} -gt 0 ]; then
    echo "apt-get install ${need_apt[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi
if ! command -v cargo-deb >/dev/null 2>&1; then
    echo "cargo install cargo-deb --locked"
    cargo install cargo-deb --locked
fi

# ---- guest image --------------------------------------------------------------------
key="$(printf '%s\n' "$SUITE" "$GUEST_PACKAGES" "$IMAGE_RECIPE" | sha256sum | cut -c1-12)"
ROOTFS="$VM/rootfs-$key"

mirror() {
    if [ -n "${VM_TEST_MIRROR:-}" ]; then
        echo "$VM_TEST_MIRROR"
        return
    fi
    # The host's own Debian source for the suite (no mirror is named here).
    # shellcheck disable=SC2016 # apt's own $(FIELD) syntax
    apt-get indextargets --format '$(REPO_URI) $(RELEASE) $(COMPONENT) $(CREATED_BY)' 2>/dev/null |
        awk -v s="$SUITE" '$2 == s && $3 == "main" && $4 == "Packages" { print $1; exit }'
}

# debootstrap mounts /proc and /sys inside the target while it configures; an
# interrupted run may leave them mounted. Never delete through a mount.
unmount_under() {
    local mnt
    findmnt -rn -o TARGET 2>/dev/null | awk -v d="$1" 'index($0, d "/") == 1' | sort -r |
        while read -r mnt; do umount -l "$mnt" || true; done
}

build_rootfs() {
    local m tmp
    m="$(mirror)"
    if [ -z "$m" ]; then
        echo "vm-test: no apt source for $SUITE main on this host: set VM_TEST_MIRROR" >&2
        exit 1
    fi
    tmp="$ROOTFS.tmp"
    unmount_under "$tmp"
    rm -rf --one-file-system "$tmp"
    echo "debootstrap --variant=minbase $SUITE (packages: $GUEST_PACKAGES)"
    mkdir -p "$VM/debootstrap-cache"
    debootstrap --variant=minbase --include="$GUEST_PACKAGES" --cache-dir="$VM/debootstrap-cache" \
        "$SUITE" "$tmp" "$m" \
        >"$VM/debootstrap.log" 2>&1 || {
        tail -20 "$VM/debootstrap.log" >&2
        echo "vm-test: debootstrap failed (log: $VM/debootstrap.log)" >&2
        exit 1
    }
    # Nothing in the guest may wait for a network or a timer: no apt downloads,
    # no periodic jobs during the checks.
    local unit
    for unit in apt-daily.timer apt-daily-upgrade.timer dpkg-db-backup.timer fstrim.timer \
        e2scrub_all.timer systemd-networkd-wait-online.service getty@tty1.service; do
        ln -sf /dev/null "$tmp/etc/systemd/system/$unit"
    done
    rm -rf "$tmp/var/cache/apt/archives"/*.deb "$tmp/var/lib/apt/lists"/*_Packages
    echo vmtest >"$tmp/etc/hostname"
    # Caches of other package lists go; this one takes their place.
    local old
    for old in "$VM"/rootfs-*; do
        [ "$old" = "$tmp" ] || { unmount_under "$old"; rm -rf --one-file-system "$old"; }
    done
    mv "$tmp" "$ROOTFS"
    touch "$ROOTFS/.vm-test-complete"
}

# Started now, waited for after the build: debootstrap is mostly one core and the
# network, the release build's LTO link one core too.
if [ $IMAGE_ONLY = 1 ]; then
    phase "guest image (debootstrap, cached)"
    if [ -f "$ROOTFS/.vm-test-complete" ]; then echo "cached: $ROOTFS"; else build_rootfs; fi
    phase_end
    echo "vm-test --image-only: $ROOTFS ready"
    exit 0
fi
image_pid=""
if [ ! -f "$ROOTFS/.vm-test-complete" ]; then
    echo "guest image: debootstrap in the background (log: $VM/image.log)"
    (
        start=$(date +%s)
        build_rootfs
        echo "$(($(date +%s) - start))" >"$VM/image.secs"
    ) >"$VM/image.log" 2>&1 &
    image_pid=$!
fi

# ---- packages ---------------------------------------------------------------------
phase "build: release binary and two .debs"
if [ "${VM_TEST_REUSE_DEBS:-0}" = 1 ] && [ -f "$DEBS/old" ] && [ -f "$DEBS/new" ]; then
    DEB1="$(cat "$DEBS/old")"
    DEB2="$(cat "$DEBS/new")"
    echo "VM_TEST_REUSE_DEBS=1: the packages of the last run"
else
    if [ -n "${VM_TEST_TARGET_DIR:-}" ]; then
        # cargo-deb reads target/release/ paths from CARGO_TARGET_DIR.
        export CARGO_TARGET_DIR="$VM_TEST_TARGET_DIR"
        if [ ! -x "$CARGO_TARGET_DIR/release/profilo-gateway" ]; then
            echo "vm-test: VM_TEST_TARGET_DIR=$VM_TEST_TARGET_DIR has no release/profilo-gateway: build it first" >&2
            exit 1
        fi
        echo "VM_TEST_TARGET_DIR: packaging $CARGO_TARGET_DIR/release/profilo-gateway (built by the caller)"
    else
        nice cargo build --release --locked
    fi
    # The man page and the completions the package installs (Cargo.toml's assets).
    CARGO_TARGET_DIR=target cargo run --quiet --locked --example gen_docs -- target/gen-docs >/dev/null
    rm -f "$DEBS"/*.deb "$DEBS/old" "$DEBS/new"
    # cargo-deb prints the path of the package it wrote.
    DEB1="$(cargo deb --no-build --no-strip --output "$DEBS" | tail -1)"
    # The upgrade: the same tree under a higher version, as a release would be.
    DEB2="$(cargo deb --no-build --no-strip --deb-version "$(dpkg-deb -f "$DEB1" Version)+vmtest" \
        --output "$DEBS" | tail -1)"
    echo "$DEB1" >"$DEBS/old"
    echo "$DEB2" >"$DEBS/new"
fi
V1="$(dpkg-deb -f "$DEB1" Version)"
V2="$(dpkg-deb -f "$DEB2" Version)"
echo "packages: $DEB1 ($V1), $DEB2 ($V2)"

phase "lintian"
lintian_out="$(lintian --tag-display-limit 0 "$DEB1" 2>&1 || true)"
while IFS= read -r line; do echo "  $line"; done <<<"$lintian_out"
# "E: pkg: tag ..." and "W: pkg: tag ..." lines; tags in LINTIAN_PENDING are
# tolerated for now and said so.
bad=()
tolerated=()
while read -r sev _pkg tag _rest; do
    case "$sev" in
        E: | W:)
            if [[ "$LINTIAN_PENDING" == *" $tag "* ]]; then
                tolerated+=("$tag")
            else
                bad+=("${sev%:} $tag")
            fi
            ;;
    esac
done <<<"$lintian_out"
if [ ${#bad[@]} -eq 0 ]; then
    note="no error, no warning"
    if [ ${#tolerated[@]} -gt 0 ]; then
        note="$note (tolerated until their change lands: ${tolerated[*]}; VM_TEST_LINTIAN_PENDING)"
    fi
    result PASS lintian "$note"
else
    result FAIL lintian "${bad[*]}"
fi

phase "guest image (debootstrap, cached)"
if [ -n "$image_pid" ]; then
    if ! wait "$image_pid"; then
        tail -20 "$VM/image.log" >&2
        exit 1
    fi
    echo "built: $ROOTFS in $(cat "$VM/image.secs")s, alongside the build"
    phases+=("$(printf '  %-32s %4ds' "debootstrap (background)" "$(cat "$VM/image.secs")")")
else
    echo "cached: $ROOTFS"
fi
kernels=("$ROOTFS"/boot/vmlinuz-*)
KERNEL="${kernels[-1]}"
INITRD="$ROOTFS/boot/initrd.img-${KERNEL##*/vmlinuz-}"

# ---- accelerator ----------------------------------------------------------------------
qemu_base=(qemu-system-x86_64 -nodefaults -no-user-config -nic none -display none
    -monitor none -no-reboot)
kvm_works() {
    [ -r /dev/kvm ] && [ -w /dev/kvm ] || return 1
    # The guest kernel itself, to its panic for want of a root file system:
    # proves that KVM runs this kernel here (it hung or aborted on some hosts).
    local out
    out="$(timeout -k 2 10 "${qemu_base[@]}" -accel kvm -cpu host -m 256 -serial stdio \
        -kernel "$KERNEL" -append "console=ttyS0 panic=-1 root=/dev/vm-test-none" 2>&1 || true)"
    grep -q "Kernel panic" <<<"$out"
}
rm -f "$RUN/kvm-probe"
probe_pid=""
if [ "$ACCEL" = auto ]; then
    # Alongside the disk image: the probe waits up to 10 s where KVM hangs.
    (if kvm_works; then echo works; else echo no; fi >"$RUN/kvm-probe") &
    probe_pid=$!
fi

# ---- disk ---------------------------------------------------------------------------
phase "disk image (payload + mkfs.ext4 -d)"
venv_site() {
    local sites=("$ROOT"/tests/server/.venv/lib/python3*/site-packages)
    [ -d "${sites[0]}" ] && echo "${sites[0]}"
}
VENV_SITE="$(venv_site || true)"
if [ -z "$VENV_SITE" ] || [ ! -f "$ROOT/tests/server/template.sqlite3" ]; then
    bash scripts/setup-test-env.sh
    VENV_SITE="$(venv_site)"
fi
pythons=("$ROOTFS"/usr/lib/python3.[0-9]*)
guest_py="$(basename "${pythons[-1]}")"
if [ "$(basename "$(dirname "$VENV_SITE")")" != "$guest_py" ]; then
    echo "vm-test: the test venv is $(basename "$(dirname "$VENV_SITE")"), the guest has $guest_py:" \
        "its pure-Python packages may not fit (rebuild the venv with PYTHON=$guest_py)" >&2
fi

# The test server's pure-Python packages (Django, DRF, SimpleJWT, gunicorn and
# their dependencies, not pip or setuptools), byte-compiled here once per
# requirements.txt (the same Python 3 minor version as the guest's): compiling
# Django inside an emulated guest takes the better part of a minute.
site_key="$( (cat tests/server/requirements.txt; echo "$guest_py") | sha256sum | cut -c1-12)"
SITE="$VM/site-packages-$site_key"
if [ ! -f "$SITE/.vm-test-complete" ]; then
    rm -rf "$VM"/site-packages-*
    mkdir -p "$SITE"
    for d in "$VENV_SITE"/*; do
        case "$(basename "$d")" in
            pip | pip-* | setuptools | setuptools-* | _distutils_hack | pkg_resources | \
                distutils-precedence.pth | __pycache__) ;;
            *) cp -r "$d" "$SITE/" ;;
        esac
    done
    find "$SITE" -name __pycache__ -prune -exec rm -rf {} +
    nice python3 -m compileall -q -j 0 --invalidation-mode unchecked-hash "$SITE" >/dev/null
    touch "$SITE/.vm-test-complete"
fi

P="$ROOTFS/opt/vm-test"
rm -rf "$P" "$ROOTFS/var/log/vm-test-results"
mkdir -p "$P/debs" "$P/server"
cp "$DEB1" "$DEB2" "$P/debs/"
printf 'V1=%q\nV2=%q\nDEB1=%q\nDEB2=%q\n' "$V1" "$V2" "$(basename "$DEB1")" "$(basename "$DEB2")" >"$P/versions"
cp scripts/vm-guest/checks.sh "$P/"
chmod 755 "$P/checks.sh"
cp -al "$SITE" "$P/site-packages"
cp -r tests/server/manage.py tests/server/profilo_server tests/server/readings \
    tests/server/template.sqlite3 "$P/server/"
find "$P/server" -name __pycache__ -prune -exec rm -rf {} +
python3 -m compileall -q --invalidation-mode unchecked-hash "$P/server" >/dev/null
cp scripts/vm-guest/vm-test.service scripts/vm-guest/vm-test-server.service "$ROOTFS/etc/systemd/system/"
ln -sf ../vm-test.service "$ROOTFS/etc/systemd/system/multi-user.target.wants/vm-test.service"
# The server starts with the boot; the checks wait for it.
ln -sf ../vm-test-server.service "$ROOTFS/etc/systemd/system/multi-user.target.wants/vm-test-server.service"

DISK="$RUN/disk.img"
rm -f "$DISK" "$RUN/console.log" "$RUN/results.txt"
size_mb=$(($(du -sm "$ROOTFS" | cut -f1) + 768))
truncate -s "${size_mb}M" "$DISK"
mkfs.ext4 -q -F -L vm-test -E lazy_itable_init=1,lazy_journal_init=1 -d "$ROOTFS" "$DISK"
echo "disk: $DISK (${size_mb} MiB, sparse)"

phase "accelerator probe (the rest of it)"
[ -z "$probe_pid" ] || wait "$probe_pid"
case "$ACCEL" in
    kvm) accel=(-accel kvm -cpu host) ;;
    tcg) accel=(-accel tcg -cpu max) ;;
    auto)
        if [ "$(cat "$RUN/kvm-probe")" = works ]; then
            accel=(-accel kvm -cpu host)
        else
            accel=(-accel tcg -cpu max)
        fi
        ;;
    *)
        echo "vm-test: VM_TEST_ACCEL=$ACCEL: want auto, kvm or tcg" >&2
        exit 2
        ;;
esac
echo "accelerator: ${accel[*]}"

# ---- the guest ---------------------------------------------------------------------------
phase "guest: boot and checks (${accel[1]})"
set +e
timeout -k 10 "$GUEST_TIMEOUT" "${qemu_base[@]}" "${accel[@]}" -m 1024 -smp 2 \
    -kernel "$KERNEL" -initrd "$INITRD" \
    -append "root=/dev/vda rw console=ttyS0 quiet systemd.show_status=0 panic=-1" \
    -drive "file=$DISK,format=raw,if=virtio,cache=unsafe" \
    -serial "file:$RUN/console.log" \
    -device virtio-serial-pci \
    -chardev "file,id=results,path=$RUN/results.txt" \
    -device virtserialport,chardev=results,name=vm-test
qemu_rc=$?
set -e
if [ $qemu_rc -eq 124 ]; then
    echo "vm-test: the guest did not power off within ${GUEST_TIMEOUT}s (VM_TEST_TIMEOUT)"
fi

# The virtio port is the live channel; the copy in the image is read when the
# port did not come up.
results="$(cat "$RUN/results.txt" 2>/dev/null || true)"
if ! grep -q '^END' <<<"$results"; then
    from_disk="$(debugfs -R "cat /var/log/vm-test-results" "$DISK" 2>/dev/null || true)"
    if [ "$(wc -l <<<"$from_disk")" -gt "$(wc -l <<<"$results")" ]; then
        results="$from_disk"
    fi
fi
guest_times=()
while IFS= read -r line; do
    case "$line" in
        PASS\ * | FAIL\ *)
            rest="${line#* }"
            result "${line%% *}" "${rest%%: *}" "${rest#*: }"
            ;;
        TIME\ *) guest_times+=("${line#TIME }") ;;
        "#"*) echo "        $line" ;;
    esac
done <<<"$results"
if grep -q '^END' <<<"$results"; then
    result PASS guest-finished "every guest check ran, the guest powered off (qemu exit $qemu_rc)"
else
    result FAIL guest-finished "the guest stopped before the end of its checks (qemu exit $qemu_rc); console:"
    tail -40 "$RUN/console.log" 2>/dev/null | sed 's/^/        | /'
fi
phase_end
for t in "${guest_times[@]}"; do
    phases+=("$(printf '  guest: %-25s %4ss' "${t% *}" "${t##* }")")
done

finish
