#!/usr/bin/env bash
# The standard-KVM lane: runs part of skiff's test suite on an ordinary
# hardware-virtualization KVM (AMD SVM, Debian's Linux 6.1 kvm_amd), once
# with nested paging and once with shadow paging (npt=0), inside QEMU's
# TCG (which emulates SVM with NPT: -cpu max). Needs no KVM on the host.
#
#   tools/stdkvm/run.sh [TEST...]      default: $DEFAULT_TESTS below
#
# Environment: STDKVM_MODES ("npt shadow"), STDKVM_CPUS (1), STDKVM_THREADS (2),
# STDKVM_SKIP (libtest --skip names), STDKVM_FILTER (a libtest filter),
# STDKVM_TIMEOUT (per test binary, s), STDKVM_LIMIT (whole VM, s),
# STDKVM_OUT (work directory, target/stdkvm), STDKVM_CARRY (a directory whose
# files the tests find in $SKIFF_TEST_CARRY_IN; what they leave in
# $SKIFF_TEST_CARRY_OUT comes back in $STDKVM_OUT/carry-out: travel.sh),
# STDKVM_CARRY_MUST_RESTORE (carried snapshots named so must restore),
# STDKVM_NET (QEMU user-networking options, e.g. "hostfwd=tcp::7701-:7700":
# the VM gets an e1000 at 10.0.2.15 and reaches this host's loopback at
# 10.0.2.2; migrate.sh), STDKVM_ENV ("NAME=VALUE ..." exported to the tests).
# Prints one line per test and mode, then
# "stdkvm: N passed, M failed"; exits 1 if any failed or never ran.
# Debian packages: qemu-system-x86 busybox-static (tools/test.sh installs
# them); the kernel package is fetched with apt-get download into target/.
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$PWD
out=${STDKVM_OUT:-$repo/target/stdkvm}
DEFAULT_TESTS="core hostile function block snapshot pool bad_input control migrate"
# Too slow under TCG: 50 concurrent restores (a page-sharing measure) and
# 200 sequential warm/cold runs (restored_meta covers a restore's I/O).
# The lane has no network namespaces (iproute2's netns, ping): the
# migrated TAP guest runs on the host only. The accelerator sessions'
# moves (tests/migrate/accel.rs: hundreds of sgemm rounds, minutes each
# under TCG) test the agent's hand-over, which no KVM takes part in: host
# only.
DEFAULT_SKIP="fifty_concurrent_restores_share_the_snapshots_pages restored_echo_answers_as_a_cold_run
    a_guest_with_a_tap_keeps_its_mac_and_answers_ping_after_the_move
    a_tap_guest_resumed_in_doubt_takes_its_tap_back
    a_destination_that_cannot_claim_the_session a_remote_sgemm_loop_keeps_its_session
    a_session_on_a_local_plugin_refuses_the_move"
tests=${*:-$DEFAULT_TESTS}
modes=${STDKVM_MODES:-npt shadow}
mkdir -p "$out"

for tool in qemu-system-x86_64 busybox dpkg-deb python3; do
    command -v "$tool" >/dev/null || {
        echo "stdkvm: $tool is missing (apt-get install qemu-system-x86 busybox-static)" >&2
        exit 1
    }
done

# 1. Debian's kernel (vmlinuz, kvm.ko, kvm-amd.ko), unpacked into target/.
kernel=$out/kernel
if ! compgen -G "$kernel/boot/vmlinuz-*" >/dev/null; then
    pkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
    [ -n "$pkg" ] || { echo "stdkvm: apt-cache knows no linux-image-amd64 (apt-get update?)" >&2; exit 1; }
    rm -rf "$out/deb" && mkdir -p "$out/deb"
    (cd "$out/deb" && apt-get download "$pkg" 2>/dev/null)
    dpkg-deb -x "$out"/deb/"$pkg"_*.deb "$kernel.tmp"
    rm -rf "$kernel" && mv "$kernel.tmp" "$kernel" && rm -rf "$out/deb"
fi
vmlinuz=$(compgen -G "$kernel/boot/vmlinuz-*" | head -1)
moddir=$(compgen -G "$kernel/lib/modules/*/kernel" | head -1)

# 2. The test binaries as `cargo test` builds them (same profile, so no
# second build); they embed absolute paths (the skiff binary, the guests'
# directory), so the VM gets them at the same paths.
cargo test --workspace --no-run --message-format=json 2>/dev/null >"$out/build.json"
python3 - "$out/build.json" $tests >"$out/tests.txt" <<'PY'
import json, sys
want = sys.argv[2:]
found = {}
for line in open(sys.argv[1]):
    m = json.loads(line)
    t = m.get("target", {})
    for k, v in m.get("env", []):
        if k == "SKIFF_GUEST_DIR":  # guest-images' build script says where
            found["@guests"] = v
    if m.get("reason") == "compiler-artifact" and m.get("executable") \
            and t.get("kind") == ["test"] and t.get("name") in want:
        found[t["name"]] = m["executable"]
missing = [w for w in want if w not in found]
if missing:
    sys.exit(f"stdkvm: no test binary named {missing}")
for w in ["@guests"] + want:
    print(w, found[w])
PY
skiff=$repo/target/debug/skiff

# 3. The initramfs: busybox, kvm's modules, skiff, the tests, the guests
# and every shared library they load.
root=$out/root
rm -rf "$root" && mkdir -p "$root"/{bin,dev,proc,sys,tmp,stdkvm}
cp "$(command -v busybox)" "$root/bin/busybox"
cp tools/stdkvm/init "$root/init"
put() { # copies $1 to the same path under $root, stripped if it can be
    mkdir -p "$root$(dirname "$1")"
    strip -o "$root$1" "$1" 2>/dev/null || cp -L "$1" "$root$1"
}
# kvm-amd and the modules it needs, in load order (from their depends=).
order=()
add_module() {
    local f deps d
    f=$(find "$moddir" -name "$1.ko" -o -name "$(tr _ - <<<"$1").ko" | head -1)
    [ -n "$f" ] || { echo "stdkvm: module $1 not in $moddir" >&2; exit 1; }
    deps=$(grep -a -o 'depends=[a-z0-9_,-]*' "$f" | head -1 | cut -d= -f2)
    for d in ${deps//,/ }; do add_module "$d"; done
    local name; name=$(basename "$f" .ko)
    [[ " ${order[*]} " == *" $name "* ]] || { order+=("$name"); cp "$f" "$root/stdkvm/"; }
}
add_module kvm-amd
[ -z "${STDKVM_NET:-}" ] || add_module e1000
printf '%s\n' "${order[@]}" | grep -v '^kvm-amd$' >"$root/stdkvm/modules"
bins=("$skiff")
guests=$(awk '$1 == "@guests" {print $2}' "$out/tests.txt")
sed -i '/^@guests /d' "$out/tests.txt"
while read -r _ path; do bins+=("$path"); done <"$out/tests.txt"
for b in "${bins[@]}"; do
    put "$b"
    ldd "$b" | grep -o '/[^ ]*' | while read -r lib; do
        [ -e "$root$lib" ] || { mkdir -p "$root$(dirname "$lib")"; cp -L "$lib" "$root$lib"; }
    done
done
# tests/gdb.rs and tests/dumpcore.rs drive Debian's gdb (apt-get install gdb).
if grep -qE '^(gdb|dumpcore) ' "$out/tests.txt"; then
    gdb=$(command -v gdb) || { echo "stdkvm: gdb is missing (apt-get install gdb)" >&2; exit 1; }
    # At its own path (it finds Python's prefix from it), on PATH as /bin/gdb.
    mkdir -p "$root/usr/bin" && cp -L "$gdb" "$root/usr/bin/gdb" && ln -sf /usr/bin/gdb "$root/bin/gdb"
    ldd "$gdb" | grep -o '/[^ ]*' | while read -r lib; do
        [ -e "$root$lib" ] || { mkdir -p "$root$(dirname "$lib")"; cp -L "$lib" "$root$lib"; }
    done
    # gdb embeds Python: its standard library and gdb's own data directory.
    # (Debian's Python, the one gdb links, not whichever python3 is on PATH.)
    py=$(/usr/bin/python3 -c 'import sysconfig; print(sysconfig.get_path("stdlib"))')
    for d in "$py" /usr/share/gdb; do
        mkdir -p "$root$d" && (cd "$d" && tar -c --exclude=__pycache__ --exclude=test \
            --exclude=dist-packages --exclude=site-packages . ) | tar -x -C "$root$d"
    done
fi
mkdir -p "$root$guests" && cp "$guests"/*.hvt "$root$guests/"
cp "$out/tests.txt" "$root/stdkvm/tests"
if [ -n "${STDKVM_CARRY:-}" ]; then
    mkdir -p "$root/stdkvm/carry-in" && cp "$STDKVM_CARRY"/* "$root/stdkvm/carry-in/"
fi
cat >"$root/stdkvm/config" <<CFG
MODES="$modes"
THREADS=${STDKVM_THREADS:-2}
PER_TEST_TIMEOUT=${STDKVM_TIMEOUT:-600}
CARRY=${STDKVM_CARRY:+1}
MUST_RESTORE=${STDKVM_CARRY_MUST_RESTORE:-}
NET=${STDKVM_NET:+1}
TEST_ENV="${STDKVM_ENV:-}"
FILTER="${STDKVM_FILTER:-} $(for s in ${STDKVM_SKIP-$DEFAULT_SKIP}; do printf -- '--skip %s ' "$s"; done)"
CFG
(cd "$root" && find . | busybox cpio -o -H newc 2>/dev/null) >"$out/initramfs.cpio"

# 4. Boot it and run the tests: TCG (no host KVM needed), one vCPU (on a
# shared 2-core host a second one mostly spins on locks its descheduled
# sibling holds); the whole run is bounded.
log=$out/console.log
echo "stdkvm: booting $(basename "$vmlinuz") under TCG ($modes): $tests"
start=$SECONDS
nic=none
[ -z "${STDKVM_NET:-}" ] || nic="user,model=e1000,$STDKVM_NET"
qemu-system-x86_64 -accel tcg,thread=multi -cpu max \
    -smp "${STDKVM_CPUS:-1}" -m 4G -display none -monitor none -serial "file:$log" \
    -no-reboot -nic "$nic" -kernel "$vmlinuz" -initrd "$out/initramfs.cpio" \
    -append "console=ttyS0 quiet panic=-1 tsc=reliable" </dev/null &
qemu=$!
# The VM never outlives this script (Ctrl-C, CI's own timeout, the limit).
trap 'kill $qemu 2>/dev/null || true' EXIT
deadline=$((SECONDS + ${STDKVM_LIMIT:-2400}))
while kill -0 $qemu 2>/dev/null; do
    if [ $SECONDS -gt "$deadline" ]; then
        echo "stdkvm: the VM ran past STDKVM_LIMIT; killed" >&2
        kill $qemu
    fi
    sleep 1
done
wait $qemu || true
echo "stdkvm: VM ran $((SECONDS - start)) s; console in $log"
# Files the tests carried out, base64 between marker lines on the console.
if [ -n "${STDKVM_CARRY:-}" ]; then
    rm -rf "$out/carry-out" && mkdir -p "$out/carry-out"
    python3 - "$log" "$out/carry-out" <<'PY'
import base64, os, sys
name, data = None, []
for l in open(sys.argv[1], errors="replace").read().replace("\r", "").splitlines():
    if l.startswith("@@stdkvm file "):
        name, data = os.path.basename(l.split(" ", 2)[2]), []
    elif l == "@@stdkvm endfile" and name:
        open(os.path.join(sys.argv[2], name), "wb").write(base64.b64decode("".join(data)))
        name = None
    elif name:
        data.append(l.strip())
PY
fi

# 5. One line per test and mode; a binary that ended without its results
# (crash, timeout) or a mode that never ran counts as a failure.
python3 - "$log" "$modes" $tests <<'PY'
import re, sys
log, modes, names = sys.argv[1], sys.argv[2].split(), sys.argv[3:]
lines = open(log, errors="replace").read().replace("\r", "").splitlines()
passed = failed = 0
ran = set()
cur = None
for l in lines:
    m = re.match(r"@@stdkvm (begin|end) (\S+) (\S+)(?: rc=(\d+))?", l)
    if m:
        kind, mode, name, rc = m.groups()
        if kind == "begin":
            cur, results, body = (mode, name), 0, []
        else:
            ran.add((mode, name))
            if rc != "0":
                print(f"stdkvm {mode} {name}: binary exited {rc}; its output:")
                print("\n".join("    " + b for b in body))
                if results == 0:
                    failed += 1
            cur = None
        continue
    if cur:
        body.append(l)
    m = re.match(r"test (\S+) \.\.\. (ok|FAILED|ignored)", l)
    if cur and m:
        results += 1
        print(f"stdkvm {cur[0]} {cur[1]}::{m.group(1)} {m.group(2)}")
        if m.group(2) == "ok":
            passed += 1
        elif m.group(2) == "FAILED":
            failed += 1
for mode in modes:
    for name in names:
        if (mode, name) not in ran:
            print(f"stdkvm {mode} {name}: never ran")
            failed += 1
print(f"stdkvm: {passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
PY
