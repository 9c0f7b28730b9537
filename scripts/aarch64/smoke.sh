#!/usr/bin/env bash
# aarch64 smoke test: the package, installed from this repository's committed tree into a Debian arm64
# root run under qemu-user emulation, exports, runs the front and trains a few steps at pool6 and
# conv6/dw (`latent-replay doctor`); the same command then runs natively (x86_64) with the same
# package versions and compares every latent, loss, logit and trained array with the emulated ones.
#
#   scripts/aarch64/smoke.sh              # build or reuse the root, install, run, compare (root, network)
#   scripts/aarch64/smoke.sh --prepare    # only the host tools and the arm64 root (the slow, cached part)
#   scripts/aarch64/smoke.sh --fresh      # rebuild the cached root and virtual environments first
#
# A slow test (`python -m pytest -m slow tests/test_aarch64_smoke.py`), not a stage of .ci/run: CI starts
# on a machine without the cached root, and fresh this takes ~6 minutes on 2 cores (debootstrap and
# pip under emulation; emulated onnxruntime runs hundreds of times slower than native), ~2 with it.
# Environment: LR_ARM_SUITE (Debian suite, default bookworm: Python 3.11), LR_ARM_ROOT (the cached root,
# default /var/tmp/latent-replay-arm64-SUITE), LR_ARM_OUT (results, default ROOT.result), LR_ARM_RTOL
# (the comparison's tolerance, default 1e-4 of each array's largest value).
set -euo pipefail
REPO=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)
SUITE=${LR_ARM_SUITE:-bookworm}
ROOT=${LR_ARM_ROOT:-/var/tmp/latent-replay-arm64-$SUITE}
OUT=${LR_ARM_OUT:-$ROOT.result}
NATIVE=$ROOT.native-venv
RTOL=${LR_ARM_RTOL:-1e-4}
MIRROR=http://deb.debian.org/debian
JOB=(doctor --device cpu --threads 1 --layers pool6,conv6/dw --steps 3)
PREPARE_ONLY=0 FRESH=0
for arg in "$@"; do
    case $arg in
        --prepare) PREPARE_ONLY=1 ;;
        --fresh) FRESH=1 ;;
        -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
        *) echo "smoke.sh: error: unknown option $arg (see --help)" >&2; exit 2 ;;
    esac
done
[ "$(id -u)" = 0 ] || { echo "smoke.sh: error: needs root (debootstrap, chroot, mounts)" >&2; exit 2; }
export DEBIAN_FRONTEND=noninteractive
t0=$SECONDS
say() { printf '[%4d s] %s\n' $((SECONDS - t0)) "$*"; }

say "host tools: qemu-user-static, binfmt-support, debootstrap"
if ! command -v debootstrap >/dev/null || ! command -v qemu-aarch64-static >/dev/null \
        || ! command -v update-binfmts >/dev/null; then
    apt-get update -qq && apt-get install -y -qq qemu-user-static binfmt-support debootstrap >/dev/null
fi
mountpoint -q /proc/sys/fs/binfmt_misc || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
[ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] || update-binfmts --enable qemu-aarch64
grep -qx enabled /proc/sys/fs/binfmt_misc/qemu-aarch64 \
    || { echo "smoke.sh: error: the qemu-aarch64 binfmt handler is not enabled" >&2; exit 1; }

[ "$FRESH" = 0 ] || rm -rf "$ROOT" "$NATIVE"
if [ ! -e "$ROOT/.complete" ]; then
    say "debootstrap arm64 $SUITE -> $ROOT (cached for the next run)"
    rm -rf "$ROOT"
    debootstrap --arch=arm64 --variant=minbase --include=python3,python3-venv,ca-certificates \
        "$SUITE" "$ROOT" "$MIRROR" >/dev/null
    touch "$ROOT/.complete"
else
    say "reusing the arm64 root $ROOT"
fi
cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
cp /etc/ssl/certs/ca-certificates.crt "$ROOT/etc/ssl/certs/ca-certificates.crt"
# The chroot's own pip settings; `env -i` below keeps the host's PIP_* variables out.
printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\ndefault-timeout = 180\ndisable-pip-version-check = 1\n' \
    >"$ROOT/etc/pip.conf"
# qemu-user 7.2 passes the host's x86 /proc/cpuinfo through, and onnxruntime's CPU detection then
# crashes at import: the chroot sees an ARM one instead (two Cortex-A78AE cores, as on a Jetson Orin).
for cpu in 0 1; do
    printf 'processor\t: %d\nBogoMIPS\t: 62.50\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: 0xd42\nCPU revision\t: 1\n\n' "$cpu"
done >"$ROOT/arm-cpuinfo"

in_root() {  # CMD...: inside the root, in a private mount namespace (its mounts vanish with it), clean env
    unshare --mount --propagation private /bin/bash -c 'set -e; R=$0
        mount -t proc proc "$R/proc"; mount --bind "$R/arm-cpuinfo" "$R/proc/cpuinfo"
        mount --rbind /dev "$R/dev"; mount --rbind /sys "$R/sys"
        exec env -i HOME=/root LANG=C.UTF-8 PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
            chroot "$R" "$@"' "$ROOT" "$@"
}
[ "$(in_root uname -m)" = aarch64 ] || { echo "smoke.sh: error: the root does not run as aarch64" >&2; exit 1; }
[ "$PREPARE_ONLY" = 0 ] || { say "prepared"; exit 0; }

say "the committed tree ($(git -C "$REPO" rev-parse --short HEAD)) -> $ROOT/src"
rm -rf "$ROOT/src" && mkdir -p "$ROOT/src"
git -C "$REPO" archive HEAD | tar -x -C "$ROOT/src"
# The dependencies are cached in /venv while setup.py is unchanged; the package itself is always reinstalled.
KEY="$SUITE $(sha256sum "$ROOT/src/setup.py" | cut -c1-16)"
if [ "$(cat "$ROOT/venv.key" 2>/dev/null)" != "$KEY" ]; then
    say "pip install .[cpu] (aarch64, emulated)"
    in_root /bin/bash -c 'rm -rf /venv && python3 -m venv /venv && /venv/bin/pip install -q "/src[cpu]"'
    echo "$KEY" >"$ROOT/venv.key"
else
    say "pip install --no-deps . (aarch64; dependencies cached in /venv)"
    in_root /venv/bin/pip install -q --no-deps --force-reinstall /src
fi
in_root /venv/bin/pip freeze --exclude latent-replay >"$ROOT/freeze.txt"

rm -rf "$OUT" && mkdir -p "$OUT" && rm -rf "$ROOT/tmp/smoke" && mkdir -p "$ROOT/tmp/smoke"
say "latent-replay ${JOB[*]} (aarch64, emulated)"
a=$SECONDS
in_root /venv/bin/latent-replay "${JOB[@]}" --json /tmp/smoke/arm.json --arrays /tmp/smoke/arm.npz
ARM_S=$((SECONDS - a))
cp "$ROOT/tmp/smoke/arm.json" "$ROOT/tmp/smoke/arm.npz" "$OUT/"

PYV=$(in_root /venv/bin/python -c 'import sys; print("%d.%d" % sys.version_info[:2])')
HOSTPY=$(ls -d /root/.pyenv/versions/"$PYV".*/bin/python 2>/dev/null | tail -1 || true)
[ -n "$HOSTPY" ] || HOSTPY=$(command -v "python$PYV" || true)
[ -n "$HOSTPY" ] || { echo "smoke.sh: error: no native Python $PYV to compare with" >&2; exit 1; }
FKEY=$(sha256sum "$ROOT/freeze.txt" | cut -c1-16)
if [ "$(cat "$NATIVE/freeze.key" 2>/dev/null)" != "$FKEY" ]; then
    say "native venv, the aarch64 versions ($HOSTPY)"
    rm -rf "$NATIVE" && "$HOSTPY" -m venv "$NATIVE"
    "$NATIVE/bin/pip" install -q -c "$ROOT/freeze.txt" "$ROOT/src[cpu]" 2>&1 | grep -v '^WARNING: Location' || true
    echo "$FKEY" >"$NATIVE/freeze.key"
else
    "$NATIVE/bin/pip" install -q --no-deps --force-reinstall "$ROOT/src" 2>&1 | grep -v '^WARNING: Location' || true
fi

say "latent-replay ${JOB[*]} (x86_64, native), compared with aarch64 at rtol $RTOL"
a=$SECONDS
set +e
"$NATIVE/bin/latent-replay" "${JOB[@]}" --json "$OUT/native.json" --arrays "$OUT/native.npz" \
    --compare "$OUT/arm.npz" --rtol "$RTOL" | tee "$OUT/compare.txt"
rc=${PIPESTATUS[0]}
set -e
NATIVE_S=$((SECONDS - a))
say "aarch64 job ${ARM_S} s, native ${NATIVE_S} s, total $((SECONDS - t0)) s; results in $OUT"
[ "$rc" = 0 ] && say "aarch64 matches x86_64 within rtol $RTOL" || say "aarch64 DIFFERS from x86_64 (rc $rc)"
exit "$rc"
